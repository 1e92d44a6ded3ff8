"""Inference speed of the patch-feature network: C++ runner vs MindSpore Python (graph mode) vs PyTorch CPU.

For each backbone (WideResNet50-2 layer2+layer3, MobileNetV2 features.6+features.13, both with the PatchCore
local aggregation) and input size (224x224 and the 512x512 tile), one image per call:

* MindSpore: ``src.patchcore.build_extractor`` in GRAPH_MODE, ``net(x).asnumpy()``.
* C++: the same network exported (``mindspore.export`` + ``src.mindir_compat``) and run by
  ascend310_infer/build/patchcore_infer on N copies of the input; its latency.json's per-input predict time.
* PyTorch: tests/torch_reference.py's architectures run up to the deepest tap, with the MindSpore weights
  copied in and the aggregation as the same grouped convolutions; torch.inference_mode().

Each framework runs in its own child process with the same thread count; the time per image is the
minimum of N calls after warm-up (the machine is shared: the minimum is the least disturbed run). The
outputs of C++ and PyTorch are compared with MindSpore's to show that the same computation is timed.
Weights are seeded random: speed does not depend on their values.

    .venv/bin/python benchmarks/bench_infer.py                      # both backbones, 224 and 512, N=10
    .venv/bin/python benchmarks/bench_infer.py --sizes 224 --repeats 5 --backbones mobilenet_v2
"""
import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RUNNER = ROOT / "ascend310_infer" / "build" / "patchcore_infer"
DEFAULT_JSON = ROOT / "benchmarks" / "results" / "infer.json"
TARGETS = {"cpp_vs_mindspore": 2.0, "cpp_vs_torch": 1.8}
WARMUP = 2
PROTOCOL_PREFIX = "BENCH "


def timed_calls(call, repeats):
    """Milliseconds of ``repeats`` calls, after WARMUP untimed ones."""
    for _ in range(WARMUP):
        call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append((time.perf_counter() - start) * 1000.0)
    return times


def serve(call, ready_info):
    """Child protocol on stdin/stdout: announce readiness, then answer each line "N" with N timings.

    Protocol lines start with PROTOCOL_PREFIX, so anything a library prints to stdout is ignored.
    """
    print(PROTOCOL_PREFIX + json.dumps(ready_info), flush=True)
    for line in sys.stdin:
        print(PROTOCOL_PREFIX + json.dumps(timed_calls(call, int(line))), flush=True)


# --- child: MindSpore (also writes the models, inputs, reference output and weights for the others) ---

def mindspore_worker(backbone, size, repeats, workdir):
    sys.path.insert(0, str(ROOT))
    import src  # noqa: F401  (oneDNN ISA before mindspore loads)
    import mindspore as ms

    from src.config import load_config
    from src.mindir_compat import convert_mindir_to_v1
    from src.model import DEFAULT_LAYERS
    from src.patchcore import build_extractor
    from src.pthtockpt import torch_name

    ms.set_context(mode=ms.GRAPH_MODE)
    layers = DEFAULT_LAYERS[backbone]
    patch = load_config(overrides=[f"backbone_name={backbone}",
                                   f"layers_to_extract_from=[{','.join(layers)}]"])["patch"]
    extractor, _ = build_extractor(patch, seed=0)
    x = np.random.default_rng(0).standard_normal((1, 3, size, size), dtype=np.float32)
    tensor = ms.Tensor(x)
    best, times = min_time_ms(lambda: extractor(tensor).asnumpy(), repeats)

    workdir = Path(workdir)
    np.save(workdir / "reference.npy", extractor(tensor).asnumpy())
    ms.export(extractor, tensor, file_name=str(workdir / "model"), file_format="MINDIR")
    convert_mindir_to_v1(workdir / "model.mindir", workdir / "model_lite.mindir")
    inputs = workdir / "inputs"
    inputs.mkdir()
    for i in range(WARMUP + repeats):
        np.save(inputs / f"img_{i:03d}.npy", x)
    aggregation = extractor.aggregation
    if not aggregation.concat_only:
        raise SystemExit(f"{backbone}: the torch baseline covers aggregations that are a plain concatenation")
    # Inside the extractor, parameter names carry the cell prefix "backbone.".
    weights = {torch_name(p.name.removeprefix("backbone.")): p.asnumpy() for p in extractor.backbone.get_parameters()}
    weights.update({f"aggregation.{k}.weight": conv.weight.asnumpy() for k, conv in enumerate(aggregation.convs)})
    np.savez(workdir / "weights.npz", **weights)
    (workdir / "torch_model.json").write_text(json.dumps(
        {"backbone": backbone, "layers": layers, "groups": [conv.group for conv in aggregation.convs]}))
    return {"min_ms": best, "times_ms": times}


# --- child: PyTorch ---

def torch_stages(backbone):
    """[(tap name, module)] in network order, from the reference architectures of tests/torch_reference.py."""
    sys.path.insert(0, str(ROOT / "tests"))
    from torch import nn as tnn
    from torch_reference import TorchMobileNetV2, TorchWideResNet50_2
    if backbone == "wideresnet50":
        net = TorchWideResNet50_2()
        return net, [("stem", tnn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool))] + \
            [(name, getattr(net, name)) for name in ("layer1", "layer2", "layer3", "layer4")]
    net = TorchMobileNetV2()
    return net, [(f"features.{i}", block) for i, block in enumerate(net.features)]


def torch_worker(backbone, size, repeats, workdir, threads):
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(threads)
    workdir = Path(workdir)
    spec = json.loads((workdir / "torch_model.json").read_text())
    net, stages = torch_stages(backbone)
    weights = dict(np.load(workdir / "weights.npz"))
    aggregation_weights = [torch.from_numpy(weights.pop(f"aggregation.{k}.weight")) for k in range(len(spec["groups"]))]
    unknown = sorted(set(weights) - set(net.state_dict()))
    if unknown:
        raise SystemExit(f"MindSpore parameters without a torch counterpart: {unknown[:3]}")
    net.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()}, strict=False)
    net.eval()
    taps = spec["layers"]
    last = max(i for i, (name, _) in enumerate(stages) if name in taps)

    def forward(x):
        found = {}
        for name, stage in stages[:last + 1]:
            x = stage(x)
            found[name] = x
        features = [F.conv2d(found[tap], w, padding=w.shape[-1] // 2, groups=g)
                    for tap, w, g in zip(taps, aggregation_weights, spec["groups"])]
        grid = features[0].shape[2:]
        return torch.cat([features[0]] + [F.interpolate(f, size=grid, mode="bilinear", align_corners=False)
                                          for f in features[1:]], dim=1)

    x = torch.from_numpy(np.random.default_rng(0).standard_normal((1, 3, size, size), dtype=np.float32))
    with torch.inference_mode():
        best, times = min_time_ms(lambda: forward(x), repeats)
        output = forward(x).numpy()
    return {"min_ms": best, "times_ms": times, "max_rel_diff": relative_difference(output, workdir)}


def relative_difference(output, workdir):
    reference = np.load(Path(workdir) / "reference.npy")
    if output.shape != reference.shape:
        raise SystemExit(f"output shape {output.shape} differs from MindSpore's {reference.shape}")
    return float(np.abs(output - reference).max() / np.abs(reference).max())


# --- parent ---

def run_child(kind, backbone, size, args, workdir, drop_env=()):
    env = {k: v for k, v in os.environ.items() if k not in drop_env}
    command = [sys.executable, __file__, "--child", kind, "--backbones", backbone, "--sizes", str(size),
               "--repeats", str(args.repeats), "--threads", str(args.threads), "--workdir", str(workdir)]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=3600)
    if result.returncode != 0:
        raise SystemExit(f"{kind} child failed for {backbone} {size}:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def run_cpp(workdir, threads):
    results = Path(workdir) / "results"
    command = [str(RUNNER), "--mindir_path", str(Path(workdir) / "model_lite.mindir"), "--input_path",
               str(Path(workdir) / "inputs"), "--result_path", str(results), "--threads", str(threads)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=3600)
    if result.returncode != 0:
        raise SystemExit(f"patchcore_infer failed: {result.stderr.strip()}")
    latency = json.loads((results / "latency.json").read_text())
    times = [entry["predict_ms"] for entry in latency["per_input"]][WARMUP:]
    return {"min_ms": min(times), "times_ms": times, "model_load_ms": latency["model_load_ms"],
            "max_rel_diff": relative_difference(np.load(results / "img_000_0.npy"), workdir)}


def measure(backbone, size, args):
    with tempfile.TemporaryDirectory(prefix="bench_infer_") as workdir:
        mindspore = run_child("mindspore", backbone, size, args, workdir)
        cpp = run_cpp(workdir, args.threads)
        # torch's own oneDNN is not affected by the MindSpore workaround; give it its default ISA.
        torch = run_child("torch", backbone, size, args, workdir, drop_env=("ONEDNN_MAX_CPU_ISA",))
    row = {"backbone": backbone, "size": size, "cpp": cpp, "mindspore": mindspore, "torch": torch}
    for name in ("cpp", "mindspore", "torch"):
        row[name]["images_per_s"] = 1000.0 / row[name]["min_ms"]
    row["cpp_vs_mindspore"] = mindspore["min_ms"] / cpp["min_ms"]
    row["cpp_vs_torch"] = torch["min_ms"] / cpp["min_ms"]
    row["targets_met"] = all(row[key] >= target for key, target in TARGETS.items())
    return row


def table(rows):
    header = ["backbone", "size", "C++ img/s", "MindSpore img/s", "PyTorch img/s", "C++/MindSpore", "C++/PyTorch",
              "C++ vs MS / torch diff", "targets"]
    lines = [header]
    for r in rows:
        lines.append([r["backbone"], f"{r['size']}x{r['size']}", f"{r['cpp']['images_per_s']:.2f}",
                      f"{r['mindspore']['images_per_s']:.2f}", f"{r['torch']['images_per_s']:.2f}",
                      f"{r['cpp_vs_mindspore']:.2f}x", f"{r['cpp_vs_torch']:.2f}x",
                      f"{r['cpp']['max_rel_diff']:.1e} / {r['torch']['max_rel_diff']:.1e}",
                      "met" if r["targets_met"] else "MISSED"])
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    text = [" | ".join(cell.ljust(w) for cell, w in zip(line, widths)) for line in lines]
    text.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(text)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbones", nargs="+", default=["wideresnet50", "mobilenet_v2"],
                        choices=["wideresnet50", "mobilenet_v2"])
    parser.add_argument("--sizes", nargs="+", type=int, default=[224, 512])
    parser.add_argument("--repeats", type=int, default=10, help="timed calls per measurement (after 2 warm-up)")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--json", default=str(DEFAULT_JSON))
    parser.add_argument("--child", choices=["mindspore", "torch"], help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        backbone, size = args.backbones[0], args.sizes[0]
        if args.child == "mindspore":
            result = mindspore_worker(backbone, size, args.repeats, args.workdir)
        else:
            result = torch_worker(backbone, size, args.repeats, args.workdir, args.threads)
        print(json.dumps(result))
        return 0

    if not RUNNER.is_file():
        raise SystemExit(f"{RUNNER} not found: build it with 'bash ascend310_infer/build.sh'")
    load_before = os.getloadavg()
    rows = []
    for backbone in args.backbones:
        for size in args.sizes:
            print(f"measuring {backbone} at {size}x{size} ...", file=sys.stderr, flush=True)
            rows.append(measure(backbone, size, args))
    print(table(rows))
    print(f"\n{args.threads} threads each, min of {args.repeats} calls after {WARMUP} warm-up, batch 1; "
          f"targets: C++ >= {TARGETS['cpp_vs_mindspore']}x MindSpore Python and >= {TARGETS['cpp_vs_torch']}x "
          f"PyTorch. Load average before/after: {load_before[0]:.2f} / {os.getloadavg()[0]:.2f}")
    from importlib.metadata import version
    report = {"threads": args.threads, "repeats": args.repeats, "warmup": WARMUP, "targets": TARGETS,
              "machine": {"cpu_count": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                          "load_average_before": load_before, "load_average_after": os.getloadavg()},
              "versions": {name: version(name) for name in ("mindspore", "torch", "numpy")},
              "results": rows}
    sys.path.insert(0, str(ROOT))
    from src.io_utils import write_json
    write_json(args.json, report)
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
