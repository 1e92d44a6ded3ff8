"""Inference speed of the patch-feature network: C++ runner vs MindSpore Python (graph mode) vs PyTorch CPU.

For each backbone (WideResNet50-2 layer2+layer3, MobileNetV2 features.6+features.13, both with the PatchCore
local aggregation) and input size (224x224 and the 512x512 tile), one image per call:

* MindSpore: ``src.patchcore.extractor.build_extractor`` in GRAPH_MODE (BatchNorm folded into the convolutions,
  as for train/eval/export), ``net(x).asnumpy()``.
* C++: the same network exported (``mindspore.export`` + ``src.deploy.mindir_v1``) and run by
  ascend310_infer/build/patchcore_infer on copies of the input; latency.json's per-input predict time.
* PyTorch: benchmarks/torch_reference.py's architectures (eager, with their BatchNorm layers) run up to the
  deepest tap, with the MindSpore weights copied in before folding and the aggregation as the same
  (depthwise / grouped) convolutions and channel sums, under torch.inference_mode().
* PyTorch with the reference aggregation (informational): the same torch backbone followed by the authors'
  aggregation as the original implementation runs it, benchmarks/torch_reference.py's ``literal_reference``
  (unfold, resize of the deeper layer's patches, adaptive average pooling to the embedding dimensions); it is
  the generic chain our convolutions are derived from, so it applies to both backbones. It shows the speed
  against the original PatchCore; the targets are judged against the PyTorch baseline above, which runs our
  aggregation and so is the strongest torch.

The machine may be shared, so they are measured in interleaved rounds (MindSpore, C++, PyTorch, PyTorch
with the reference aggregation, MindSpore, ...) rather than one after the other, each round with 2 untimed
warm-up calls, and the time per image is the minimum over all timed calls: the least disturbed run.
MindSpore and PyTorch (both variants) each live in their own child process for the whole measurement, with
the same thread count as the runner. The outputs of C++ and of both PyTorch variants are compared with
MindSpore's (max relative difference, printed and in the JSON), to show that the same computation is timed.
Weights are seeded random: speed does not depend on their values.

    .venv/bin/python -m benchmarks.bench_infer                  # both backbones at 224 and 512, 3 rounds x 5
    .venv/bin/python -m benchmarks.bench_infer --backbones mobilenet_v2 --sizes 224 --rounds 1
"""
import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from importlib.metadata import version
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


def bench_input(size):
    return np.random.default_rng(0).standard_normal((1, 3, size, size), dtype=np.float32)


def relative_difference(output, workdir):
    reference = np.load(Path(workdir) / "reference.npy")
    if output.shape != reference.shape:
        raise SystemExit(f"output shape {output.shape} differs from MindSpore's {reference.shape}")
    return float(np.abs(output - reference).max() / np.abs(reference).max())


# --- children: set up once, then answer each stdin line "N" with N timings ---

def serve(calls, ready_info):
    """``calls``: {name: function}; each request "N" is answered with {name: N timings}, one name after the other.

    Protocol lines start with PROTOCOL_PREFIX, so whatever a library prints to stdout is ignored.
    """
    print(PROTOCOL_PREFIX + json.dumps(ready_info), flush=True)
    for line in sys.stdin:
        print(PROTOCOL_PREFIX + json.dumps({name: timed_calls(call, int(line)) for name, call in calls.items()}),
              flush=True)


def mindspore_child(backbone, size, workdir, max_inputs):
    """Also writes for the others: the exported models, input copies, reference output and weights."""
    import src  # noqa: F401  (oneDNN ISA before mindspore loads)
    import mindspore as ms

    from src.config.loader import load_config
    from src.backbones.folding import fold_batchnorm
    from src.deploy.mindir_v1 import convert_mindir_to_v1
    from src.backbones.networks import DEFAULT_LAYERS
    from src.patchcore.extractor import build_extractor
    from src.backbones.torch_checkpoint import torch_name

    ms.set_context(mode=ms.GRAPH_MODE)
    layers = DEFAULT_LAYERS[backbone]
    patch = load_config(overrides=[f"backbone_name={backbone}",
                                   f"layers_to_extract_from=[{','.join(layers)}]"]).patch.to_dict()
    extractor, _ = build_extractor(patch, seed=0, fold_bn=False)
    # Inside the extractor, parameter names carry the cell prefix "backbone.". torch gets the unfolded
    # parameters: its baseline is the eager model with BatchNorm layers.
    weights = {torch_name(p.name.removeprefix("backbone.")): p.asnumpy() for p in extractor.backbone.get_parameters()}
    fold_batchnorm(extractor.backbone)  # what build_extractor does by default
    aggregation = extractor.aggregation
    if not aggregation.concat_only:
        raise SystemExit(f"{backbone}: the torch baseline covers aggregations that are a plain concatenation")
    x = bench_input(size)
    tensor = ms.Tensor(x)
    workdir = Path(workdir)
    np.save(workdir / "reference.npy", extractor(tensor).asnumpy())
    ms.export(extractor, tensor, file_name=str(workdir / "model"), file_format="MINDIR")
    convert_mindir_to_v1(workdir / "model.mindir", workdir / "model_lite.mindir")
    (workdir / "inputs").mkdir()
    for i in range(max_inputs):
        np.save(workdir / "inputs" / f"img_{i:03d}.npy", x)
    weights.update({f"aggregation.{k}.weight": conv.weight.asnumpy() for k, conv in enumerate(aggregation.convs)})
    np.savez(workdir / "weights.npz", **weights)
    (workdir / "torch_model.json").write_text(json.dumps(
        {"layers": layers, "groups": [conv.group for conv in aggregation.convs],
         "channel_sums": list(aggregation.channel_sums),
         **{key: patch[key] for key in ("merge_size", "pretrain_embed_dimension", "target_embed_dimension")}}))
    serve({"mindspore": lambda: extractor(tensor).asnumpy()}, {})


def torch_stages(backbone):
    """(net, [(tap name, module)] in network order) from the torch reference architectures."""
    from torch import nn as tnn
    from benchmarks.torch_reference import TorchMobileNetV2, TorchWideResNet50_2
    if backbone == "wideresnet50":
        net = TorchWideResNet50_2()
        return net, [("stem", tnn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool))] + \
            [(name, getattr(net, name)) for name in ("layer1", "layer2", "layer3", "layer4")]
    net = TorchMobileNetV2()
    return net, [(f"features.{i}", block) for i, block in enumerate(net.features)]


def make_tap_maps(stages, taps):
    """x -> [the output of each of ``taps``], running ``stages`` ([(name, module)] in network order) only up to
    the deepest tap, as MindSpore's backbone does."""
    stages = stages[:max(i for i, (name, _) in enumerate(stages) if name in taps) + 1]

    def tap_maps(x):
        found = {}
        for name, stage in stages:
            x = found[name] = stage(x)
        return [found[tap] for tap in taps]

    return tap_maps


def torch_child(backbone, size, workdir, threads):
    import torch
    import torch.nn.functional as F
    from benchmarks.torch_reference import literal_reference

    torch.set_num_threads(threads)
    workdir = Path(workdir)
    spec = json.loads((workdir / "torch_model.json").read_text())
    net, stages = torch_stages(backbone)
    weights = dict(np.load(workdir / "weights.npz"))
    kernels = [torch.from_numpy(weights.pop(f"aggregation.{k}.weight")) for k in range(len(spec["groups"]))]
    unknown = sorted(set(weights) - set(net.state_dict()))
    if unknown:
        raise SystemExit(f"MindSpore parameters without a torch counterpart: {unknown[:3]}")
    net.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()}, strict=False)
    net.eval()
    tap_maps = make_tap_maps(stages, spec["layers"])

    def aggregate(x, kernel, groups, channel_sum):
        out = F.conv2d(x, kernel, padding=kernel.shape[-1] // 2, groups=groups)
        if channel_sum > 1:
            b, c, h, w = out.shape
            out = out.reshape(b, c // channel_sum, channel_sum, h, w).sum(dim=2)
        return out

    def forward(x):
        features = [aggregate(layer, kernel, groups, channel_sum) for layer, kernel, groups, channel_sum
                    in zip(tap_maps(x), kernels, spec["groups"], spec["channel_sums"])]
        grid = features[0].shape[2:]
        return torch.cat([features[0]] + [F.interpolate(f, size=grid, mode="bilinear", align_corners=False)
                                          for f in features[1:]], dim=1)

    def forward_reference_aggregation(x):
        """[h*w, D] patch rows (numpy), by the authors' unfold / adaptive-pool aggregation."""
        return literal_reference(tap_maps(x), spec["merge_size"], spec["pretrain_embed_dimension"],
                                 spec["target_embed_dimension"])

    x = torch.from_numpy(bench_input(size))
    with torch.inference_mode():
        output = forward(x).numpy()
        rows = forward_reference_aggregation(x)  # back to MindSpore's [1, D, h, w] to compare
        rows = rows.reshape(1, *output.shape[2:], rows.shape[1]).transpose(0, 3, 1, 2)
        serve({"torch": lambda: forward(x), "torch_ref_agg": lambda: forward_reference_aggregation(x)},
              {"max_rel_diff": relative_difference(output, workdir),
               "ref_agg_max_rel_diff": relative_difference(rows, workdir)})


# --- parent ---

class Child:
    """A measuring child process; its stderr goes to a file so that a chatty library cannot block it."""

    def __init__(self, kind, backbone, size, args, workdir, drop_env=()):
        self.kind = kind
        self.log_path = Path(workdir) / f"{kind}.log"
        env = {k: v for k, v in os.environ.items() if k not in drop_env}
        command = [sys.executable, "-m", "benchmarks.bench_infer", "--child", kind, "--backbones", backbone,
                   "--sizes", str(size), "--threads", str(args.threads), "--repeats", str(args.repeats),
                   "--workdir", str(workdir)]
        with open(self.log_path, "w", encoding="utf-8") as log:
            self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log,
                                            text=True, cwd=ROOT, env=env)
        self.ready = self._answer()

    def _answer(self):
        for line in self.process.stdout:
            if line.startswith(PROTOCOL_PREFIX):
                return json.loads(line[len(PROTOCOL_PREFIX):])
        self.process.wait()
        raise SystemExit(f"{self.kind} child failed:\n{self.log_path.read_text()[-3000:]}")

    def time(self, repeats):
        self.process.stdin.write(f"{repeats}\n")
        self.process.stdin.flush()
        return self._answer()

    def close(self):
        self.process.stdin.close()
        self.process.wait(timeout=60)


def run_cpp(workdir, threads):
    """One runner process over the WARMUP + repeats input copies: (timed predict ms, model load ms, max rel diff)."""
    workdir = Path(workdir)
    results = workdir / "results"
    command = [str(RUNNER), "--mindir_path", str(workdir / "model_lite.mindir"), "--input_path",
               str(workdir / "inputs"), "--result_path", str(results), "--threads", str(threads)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=3600)
    if result.returncode != 0:
        raise SystemExit(f"patchcore_infer failed: {result.stderr.strip()}")
    latency = json.loads((results / "latency.json").read_text())
    times = [entry["predict_ms"] for entry in latency["per_input"]][WARMUP:]
    return times, latency["model_load_ms"], relative_difference(np.load(results / "img_000_0.npy"), workdir)


def summary(times):
    return {"min_ms": min(times), "median_ms": float(np.median(times)), "images_per_s": 1000.0 / min(times),
            "times_ms": [round(t, 3) for t in times]}


def measure(backbone, size, args):
    times = {"mindspore": [], "cpp": [], "torch": [], "torch_ref_agg": []}
    with tempfile.TemporaryDirectory(prefix="bench_infer_") as workdir:
        mindspore = Child("mindspore", backbone, size, args, workdir)
        # torch's own oneDNN is not affected by MindSpore's ISA workaround: give it its default.
        torch = Child("torch", backbone, size, args, workdir, drop_env=("ONEDNN_MAX_CPU_ISA",))
        try:
            for _ in range(args.rounds):
                times["mindspore"] += mindspore.time(args.repeats)["mindspore"]
                cpp_times, load_ms, cpp_diff = run_cpp(workdir, args.threads)
                times["cpp"] += cpp_times
                for name, torch_times in torch.time(args.repeats).items():  # ours, then the reference aggregation
                    times[name] += torch_times
        finally:
            mindspore.close()
            torch.close()
    row = {"backbone": backbone, "size": size, **{name: summary(t) for name, t in times.items()}}
    row["cpp"].update(model_load_ms=load_ms, max_rel_diff=cpp_diff)
    row["torch"]["max_rel_diff"] = torch.ready["max_rel_diff"]
    row["torch_ref_agg"]["max_rel_diff"] = torch.ready["ref_agg_max_rel_diff"]
    row["cpp_vs_mindspore"] = row["mindspore"]["min_ms"] / row["cpp"]["min_ms"]
    row["cpp_vs_torch"] = row["torch"]["min_ms"] / row["cpp"]["min_ms"]
    row["cpp_vs_torch_ref_agg"] = row["torch_ref_agg"]["min_ms"] / row["cpp"]["min_ms"]  # informational, no target
    row["targets_met"] = all(row[key] >= target for key, target in TARGETS.items())
    return row


def table(rows):
    header = ["backbone", "size", "C++ img/s (ms)", "MindSpore img/s (ms)", "PyTorch img/s (ms)", "C++/MS",
              "C++/torch", "targets", "info: torch ref agg img/s (ms)", "C++/torch ref agg",
              "rel. diff C++ | torch | torch ref agg"]

    def speed(entry):
        return f"{entry['images_per_s']:.2f} ({entry['min_ms']:.1f})"

    lines = [header] + [[r["backbone"], f"{r['size']}x{r['size']}", speed(r["cpp"]), speed(r["mindspore"]),
                         speed(r["torch"]), f"{r['cpp_vs_mindspore']:.2f}x", f"{r['cpp_vs_torch']:.2f}x",
                         "met" if r["targets_met"] else "MISSED", speed(r["torch_ref_agg"]),
                         f"{r['cpp_vs_torch_ref_agg']:.2f}x",
                         " | ".join(f"{r[name]['max_rel_diff']:.1e}" for name in ("cpp", "torch", "torch_ref_agg"))]
                        for r in rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    text = [" | ".join(cell.ljust(w) for cell, w in zip(line, widths)) for line in lines]
    text.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(text)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbones", nargs="+", default=["wideresnet50", "mobilenet_v2"],
                        choices=["wideresnet50", "mobilenet_v2"])
    parser.add_argument("--sizes", nargs="+", type=int, default=[224, 512])
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per framework and round (default 5)")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--json", default=str(DEFAULT_JSON))
    parser.add_argument("--child", choices=["mindspore", "torch"], help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child == "mindspore":
        return mindspore_child(args.backbones[0], args.sizes[0], args.workdir, WARMUP + args.repeats)
    if args.child == "torch":
        return torch_child(args.backbones[0], args.sizes[0], args.workdir, args.threads)

    if not RUNNER.is_file():
        raise SystemExit(f"{RUNNER} not found: build it with 'bash ascend310_infer/build.sh'")
    load_before = os.getloadavg()
    rows = []
    for backbone in args.backbones:
        for size in args.sizes:
            print(f"measuring {backbone} at {size}x{size} ...", file=sys.stderr, flush=True)
            rows.append(measure(backbone, size, args))
    load_after = os.getloadavg()
    print(table(rows))
    print(f"\nimages/s from the fastest of {args.rounds} x {args.repeats} calls (batch 1, {args.threads} threads each, "
          f"interleaved rounds); targets C++ >= {TARGETS['cpp_vs_mindspore']}x MindSpore Python and >= "
          f"{TARGETS['cpp_vs_torch']}x PyTorch (with our aggregation: the strongest torch). Informational, no "
          "target: \"torch ref agg\", the same torch backbone with the authors' unfold / adaptive-pool aggregation "
          f"(benchmarks/torch_reference.py literal_reference). 1-minute load average before/after: "
          f"{load_before[0]:.2f} / {load_after[0]:.2f} on {os.cpu_count()} cores.")
    from src.utils.io import write_json
    write_json(args.json, {
        "threads": args.threads, "rounds": args.rounds, "repeats": args.repeats, "warmup": WARMUP,
        "targets": TARGETS,
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                    "load_average_before": load_before, "load_average_after": load_after},
        "versions": {name: version(name) for name in ("mindspore", "torch", "numpy")},
        "results": rows})
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
