"""Core benchmark: feature throughput (MindSpore vs PyTorch), the oneDNN ISA default, coreset, end-to-end training.

Prints a table per part and writes benchmarks/results/core.json. Not a test: numbers, not assertions.
    .venv/bin/python -m benchmarks.bench_core [--quick] [--skip-coreset] [--skip-train]

Feature throughput: MindSpore runs in this process, which imports ``src`` first and so runs with
ONEDNN_MAX_CPU_ISA=AVX2 (MindSpore's bundled oneDNN needs it on AVX-512 CPUs, see the ISA part). PyTorch runs
in child processes of its own whose environment has no ONEDNN_MAX_CPU_ISA and which never import ``src`` or
mindspore: torch has its own oneDNN, which would otherwise inherit MindSpore's workaround (capped, torch was
~8% slower at batch 8, which flattered MindSpore's ratio); so torch runs with its default ISA. Both sides get
the same weights (a seeded torch reference with random BatchNorm statistics, through ``src.backbones.torch_checkpoint``) and the
same input, and each torch child first checks that its output matches MindSpore's (max relative difference,
printed and in the JSON), so that the same computation is timed. As in bench_infer.py, the two are measured in
interleaved rounds (MindSpore in this process, then a fresh torch child), each call series after untimed
warm-up calls, and images/s comes from the fastest call.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

from benchmarks.bench_infer import PROTOCOL_PREFIX, make_tap_maps, relative_difference, timed_calls, torch_stages

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_JSON = os.path.join(ROOT, "benchmarks", "results", "core.json")
PY = sys.executable
MAX_REL_DIFF = 1e-3  # torch vs MindSpore output: float rounding (folded vs eager BatchNorm), not another network

# One 224x224 WRN50+aggregation forward in a fresh process, so the ISA variable is read at load time.
ONE_FORWARD = r"""
import time
import src, numpy as np, mindspore as ms
from src.config.loader import load_config
from src.patchcore.extractor import build_extractor
ms.set_context(mode=ms.GRAPH_MODE)
ext, _ = build_extractor(load_config().patch.to_dict(), None, 0)
x = ms.Tensor(np.zeros((1, 3, 224, 224), np.float32))
ext(x).asnumpy()
t = time.perf_counter(); ext(x).asnumpy(); print(time.perf_counter() - t)
"""


def bench_isa():
    rows = {}
    for isa in ("ALL", "AVX2"):
        env = dict(os.environ, ONEDNN_MAX_CPU_ISA=isa)
        # cwd: ``python -c`` finds ``src`` in its current folder
        out = subprocess.run([PY, "-c", ONE_FORWARD], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
        rows[isa] = float(out.stdout.strip().splitlines()[-1])
    print(f"\n[oneDNN ISA] WRN50+aggregation 224x224 forward: ONEDNN_MAX_CPU_ISA=ALL {rows['ALL']:.3f} s, "
          f"AVX2 (project default) {rows['AVX2']:.3f} s, ratio {rows['ALL'] / rows['AVX2']:.1f}x")
    return {"seconds_isa_all": rows["ALL"], "seconds_isa_avx2": rows["AVX2"], "ratio": rows["ALL"] / rows["AVX2"]}


def run_torch_child(task, workdir, batch_size=0, repeats=0):
    """This module as a torch child, without ONEDNN_MAX_CPU_ISA (torch's default ISA); its protocol line, parsed."""
    env = {k: v for k, v in os.environ.items() if k != "ONEDNN_MAX_CPU_ISA"}
    command = [PY, "-m", "benchmarks.bench_core", "--torch-child", task, "--workdir", workdir,
               "--batch-size", str(batch_size), "--repeats", str(repeats)]
    out = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=3600)
    lines = [line for line in out.stdout.splitlines() if line.startswith(PROTOCOL_PREFIX)]
    if out.returncode != 0 or not lines:
        raise SystemExit(f"torch child ({task}, batch {batch_size}) failed:\n{out.stderr[-3000:]}")
    return json.loads(lines[-1][len(PROTOCOL_PREFIX):])


def torch_child(task, workdir, batch_size, repeats):
    """``weights``: write the reference weights; ``time``: check the output against MindSpore's, time the calls."""
    import numpy as np
    import torch
    from benchmarks.torch_reference import literal_reference, randomize_batch_norm_stats

    torch.set_num_threads(os.cpu_count() or 1)
    # Seeded, so every child builds the same weights; the output check below confirms it.
    torch.manual_seed(0)
    reference, stages = torch_stages("wideresnet50")
    reference.eval()
    randomize_batch_norm_stats(reference, 0)
    if task == "weights":
        torch.save(reference.state_dict(), os.path.join(workdir, "wrn50.pth"))
        print(PROTOCOL_PREFIX + json.dumps({"torch": torch.__version__}), flush=True)
        return 0
    with open(os.path.join(workdir, "patch.json"), "r", encoding="utf-8") as f:
        patch = json.load(f)
    tap_maps = make_tap_maps(stages, patch["layers_to_extract_from"])
    folder = os.path.join(workdir, f"batch{batch_size}")
    images = torch.from_numpy(np.load(os.path.join(folder, "input.npy")))

    def torch_backbone():
        with torch.no_grad():
            return tap_maps(images)

    def torch_forward():
        with torch.no_grad():
            return literal_reference(tap_maps(images), patch["merge_size"], patch["pretrain_embed_dimension"],
                                     patch["target_embed_dimension"])

    diff = relative_difference(torch_forward(), folder)
    if not diff <= MAX_REL_DIFF:
        raise SystemExit(f"torch output differs from MindSpore's: max relative difference {diff:.2e}")
    print(PROTOCOL_PREFIX + json.dumps({"max_rel_diff": diff, "torch": timed_calls(torch_forward, repeats),
                                        "torch_backbone": timed_calls(torch_backbone, repeats)}), flush=True)
    return 0


def bench_throughput(batch_sizes, rounds, repeats):
    import numpy as np
    import mindspore as ms

    from src.config.loader import load_config
    from src.patchcore.aggregation import to_patch_rows
    from src.utils.io import write_json
    from src.patchcore.extractor import build_extractor
    from src.backbones.torch_checkpoint import convert

    patch = load_config().patch.to_dict()
    results = []
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bench_core_") as tmp:
        torch_version = run_torch_child("weights", tmp)["torch"]  # the same weights on both sides, via the converter
        ckpt = convert(os.path.join(tmp, "wrn50.pth"), "wideresnet50", os.path.join(tmp, "wrn50.ckpt"),
                       layers=patch["layers_to_extract_from"])
        write_json(os.path.join(tmp, "patch.json"), patch)
        ms.set_context(mode=ms.GRAPH_MODE)
        extractor, _ = build_extractor(patch, ckpt, 0)
        for bs in batch_sizes:
            images = np.random.default_rng(0).standard_normal((bs, 3, 224, 224)).astype(np.float32)
            ms_images = ms.Tensor(images)
            folder = os.path.join(tmp, f"batch{bs}")
            os.mkdir(folder)
            np.save(os.path.join(folder, "input.npy"), images)
            np.save(os.path.join(folder, "reference.npy"), to_patch_rows(extractor(ms_images).asnumpy())[0])

            def mindspore_forward():
                return extractor(ms_images).asnumpy()

            def mindspore_backbone():
                return [t.asnumpy() for t in extractor.backbone(ms_images)]

            times = {"mindspore": [], "mindspore_backbone": [], "torch": [], "torch_backbone": []}
            diffs = []
            for _ in range(rounds):
                times["mindspore"] += timed_calls(mindspore_forward, repeats)
                times["mindspore_backbone"] += timed_calls(mindspore_backbone, repeats)
                child = run_torch_child("time", tmp, bs, repeats)
                times["torch"] += child["torch"]
                times["torch_backbone"] += child["torch_backbone"]
                diffs.append(child["max_rel_diff"])
            row = {"batch_size": bs, **{f"{name}_images_per_s": 1000.0 * bs / min(t) for name, t in times.items()}}
            row["ratio"] = row["mindspore_images_per_s"] / row["torch_images_per_s"]
            row["backbone_ratio"] = row["mindspore_backbone_images_per_s"] / row["torch_backbone_images_per_s"]
            row["torch_max_rel_diff"] = max(diffs)
            results.append(row)
    load_after = os.getloadavg()[0]
    print("\n[throughput] WRN50-2 layer2+layer3 + PatchCore aggregation, 224x224, images/s (fastest of "
          f"{rounds} x {repeats} calls, interleaved rounds); MindSpore with BatchNorm folded (build_extractor), "
          f"torch {torch_version} eager with BatchNorm, up to layer3, with the reference's unfold/pool aggregation, "
          "in its own process with its default oneDNN ISA")
    print(f"{'batch':>5} | {'MindSpore':>9} | {'PyTorch':>8} | {'ratio':>5} | {'MS backbone':>11} | "
          f"{'PT backbone':>11} | {'ratio':>5}")
    for r in results:
        print(f"{r['batch_size']:>5} | {r['mindspore_images_per_s']:>9.2f} | {r['torch_images_per_s']:>8.2f} | "
              f"{r['ratio']:>5.2f} | {r['mindspore_backbone_images_per_s']:>11.2f} | "
              f"{r['torch_backbone_images_per_s']:>11.2f} | {r['backbone_ratio']:>5.2f}")
    print(f"torch output vs MindSpore's: max relative difference {max(r['torch_max_rel_diff'] for r in results):.1e}; "
          f"1-minute load average before/after: {load_before:.2f} / {load_after:.2f} on {os.cpu_count()} cores")
    return results, {"before": load_before, "after": load_after}


def bench_coreset(n):
    out = os.path.join(tempfile.mkdtemp(), "coreset.json")
    subprocess.run([PY, "-m", "benchmarks.bench_coreset", "--n", str(n), "--json", out], cwd=ROOT, check=True,
                   timeout=3600)
    with open(out, "r", encoding="utf-8") as f:
        return json.load(f)


def bench_train(num_images):
    from src.data.synthetic import generate_category
    with tempfile.TemporaryDirectory() as tmp:
        generate_category(os.path.join(tmp, "data"), category="bench", texture="leather", image_size=(256, 256),
                          n_train=num_images, n_test_good=1, n_test_defect_per_type=1,
                          defect_types=("scratch",), seed=0)
        t = time.perf_counter()
        subprocess.run([PY, os.path.join(ROOT, "train.py"), "--dataset_path", os.path.join(tmp, "data"),
                        "--category", "bench", "--output_dir", os.path.join(tmp, "out")],
                       check=True, capture_output=True, timeout=3600)
        seconds = time.perf_counter() - t
        with open(os.path.join(tmp, "out", "bench", "train_result.json"), "r", encoding="utf-8") as f:
            result = json.load(f)["jobs"]["task_0"]
    print(f"\n[end-to-end] train.py on a generated {num_images}-image 224x224 category (10% coreset): "
          f"{seconds:.1f} s wall (features {result['feature_seconds']:.1f} s, coreset "
          f"{result['coreset_seconds']:.1f} s, {result['num_patches']} patches -> {result['bank_size']})")
    return dict(result, wall_seconds=seconds, num_images=num_images)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument("--skip-coreset", action="store_true")
    parser.add_argument("--skip-train", action="store_true")
    parser.add_argument("--json", default=DEFAULT_JSON)
    parser.add_argument("--torch-child", choices=["weights", "time"], help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    parser.add_argument("--batch-size", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--repeats", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.torch_child:
        return torch_child(args.torch_child, args.workdir, args.batch_size, args.repeats)

    # Importing src sets ONEDNN_MAX_CPU_ISA=AVX2 here, before mindspore loads; the torch children never import it.
    from src.utils.io import write_json

    report = {"cpu_count": os.cpu_count(), "onednn_isa": bench_isa()}
    report["throughput"], report["throughput_load_average_1min"] = bench_throughput(
        [1, 4] if args.quick else [1, 8], 1 if args.quick else 3, 2 if args.quick else 3)
    if not args.skip_coreset:
        report["coreset"] = bench_coreset(20_000 if args.quick else 200_000)
    if not args.skip_train:
        report["train"] = bench_train(20 if args.quick else 250)
    write_json(args.json, report)
    print(f"\nwritten {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
