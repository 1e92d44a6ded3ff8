"""Core benchmark: feature throughput (MindSpore vs PyTorch), the oneDNN ISA default, coreset, end-to-end training.

Prints a table per part and writes benchmarks/results/core.json. Not a test: numbers, not assertions.
    .venv/bin/python benchmarks/bench_core.py [--quick] [--skip-coreset] [--skip-train]
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]

import src  # noqa: E402,F401  (sets ONEDNN_MAX_CPU_ISA before mindspore loads)
from src.io_utils import write_json  # noqa: E402

DEFAULT_JSON = os.path.join(ROOT, "benchmarks", "results", "core.json")
PY = sys.executable

# One 224x224 WRN50+aggregation forward in a fresh process, so the ISA variable is read at load time.
ONE_FORWARD = r"""
import sys, time; sys.path.insert(0, sys.argv[1])
import src, numpy as np, mindspore as ms
from src.config import load_config
from src.patchcore import build_extractor
ms.set_context(mode=ms.GRAPH_MODE)
ext, _ = build_extractor(load_config()["patch"], None, 0)
x = ms.Tensor(np.zeros((1, 3, 224, 224), np.float32))
ext(x).asnumpy()
t = time.perf_counter(); ext(x).asnumpy(); print(time.perf_counter() - t)
"""


def timed(fn, repeats):
    fn()  # warm-up (graph compile, allocator)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def bench_isa():
    rows = {}
    for isa in ("ALL", "AVX2"):
        env = dict(os.environ, ONEDNN_MAX_CPU_ISA=isa)
        out = subprocess.run([PY, "-c", ONE_FORWARD, ROOT], env=env, capture_output=True, text=True, timeout=900)
        rows[isa] = float(out.stdout.strip().splitlines()[-1])
    print(f"\n[oneDNN ISA] WRN50+aggregation 224x224 forward: ONEDNN_MAX_CPU_ISA=ALL {rows['ALL']:.3f} s, "
          f"AVX2 (project default) {rows['AVX2']:.3f} s, ratio {rows['ALL'] / rows['AVX2']:.1f}x")
    return {"seconds_isa_all": rows["ALL"], "seconds_isa_avx2": rows["AVX2"], "ratio": rows["ALL"] / rows["AVX2"]}


def bench_throughput(batch_sizes, repeats):
    import numpy as np
    import mindspore as ms
    import torch
    from torch_reference import TorchWideResNet50_2, literal_reference, randomize_batch_norm_stats

    from src.config import load_config
    from src.patchcore import build_extractor
    from src.pthtockpt import convert

    torch.set_num_threads(os.cpu_count() or 1)
    torch.manual_seed(0)
    reference = TorchWideResNet50_2().eval()
    randomize_batch_norm_stats(reference, 0)
    patch = load_config()["patch"]
    with tempfile.TemporaryDirectory() as tmp:  # the same weights on both sides, through the converter
        pth = os.path.join(tmp, "wrn50.pth")
        torch.save({k: v for k, v in reference.state_dict().items() if not k.startswith(("layer4", "fc"))}, pth)
        ckpt = convert(pth, "wideresnet50", os.path.join(tmp, "wrn50.ckpt"), layers=["layer2", "layer3"])
        ms.set_context(mode=ms.GRAPH_MODE)
        extractor, _ = build_extractor(patch, ckpt, 0)
    results = []
    for bs in batch_sizes:
        images = np.random.default_rng(0).standard_normal((bs, 3, 224, 224)).astype(np.float32)
        ms_images, torch_images = ms.Tensor(images), torch.from_numpy(images)

        def torch_backbone():
            # Up to layer3, like the MindSpore backbone (reference.taps would run layer4 as well).
            with torch.no_grad():
                x = reference.maxpool(reference.relu(reference.bn1(reference.conv1(torch_images))))
                taps = {}
                for name in ("layer1", "layer2", "layer3"):
                    x = taps[name] = getattr(reference, name)(x)
                return taps

        def torch_forward():
            with torch.no_grad():
                taps = torch_backbone()
                return literal_reference([taps["layer2"], taps["layer3"]], 3, 1024, 1024)

        row = {"batch_size": bs,
               "mindspore_images_per_s": bs / timed(lambda: extractor(ms_images).asnumpy(), repeats),
               "mindspore_backbone_images_per_s": bs / timed(lambda: [t.asnumpy() for t in
                                                                      extractor.backbone(ms_images)], repeats),
               "torch_images_per_s": bs / timed(torch_forward, repeats),
               "torch_backbone_images_per_s": bs / timed(torch_backbone, repeats)}
        row["ratio"] = row["mindspore_images_per_s"] / row["torch_images_per_s"]
        row["backbone_ratio"] = row["mindspore_backbone_images_per_s"] / row["torch_backbone_images_per_s"]
        results.append(row)
    print("\n[throughput] WRN50-2 layer2+layer3 + PatchCore aggregation, 224x224, images/s (best of "
          f"{repeats}); MindSpore with BatchNorm folded (build_extractor), torch {torch.__version__} eager "
          "with BatchNorm, up to layer3, with the reference's unfold/pool aggregation")
    print(f"{'batch':>5} | {'MindSpore':>9} | {'PyTorch':>8} | {'ratio':>5} | {'MS backbone':>11} | "
          f"{'PT backbone':>11} | {'ratio':>5}")
    for r in results:
        print(f"{r['batch_size']:>5} | {r['mindspore_images_per_s']:>9.2f} | {r['torch_images_per_s']:>8.2f} | "
              f"{r['ratio']:>5.2f} | {r['mindspore_backbone_images_per_s']:>11.2f} | "
              f"{r['torch_backbone_images_per_s']:>11.2f} | {r['backbone_ratio']:>5.2f}")
    return results


def bench_coreset(n):
    out = os.path.join(tempfile.mkdtemp(), "coreset.json")
    subprocess.run([PY, os.path.join(ROOT, "benchmarks", "bench_coreset.py"), "--n", str(n), "--json", out],
                   check=True, timeout=3600)
    with open(out, "r", encoding="utf-8") as f:
        return json.load(f)


def bench_train(num_images):
    from src.synthetic import generate_category
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
            result = json.load(f)
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
    args = parser.parse_args()
    report = {"cpu_count": os.cpu_count(), "onednn_isa": bench_isa()}
    report["throughput"] = bench_throughput([1, 4] if args.quick else [1, 8], 2 if args.quick else 3)
    if not args.skip_coreset:
        report["coreset"] = bench_coreset(20_000 if args.quick else 200_000)
    if not args.skip_train:
        report["train"] = bench_train(20 if args.quick else 250)
    write_json(args.json, report)
    print(f"\nwritten {args.json}")


if __name__ == "__main__":
    main()
