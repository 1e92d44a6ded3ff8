"""Tiled high-resolution PatchCore vs the same PatchCore on the whole image downscaled to 224x224.

Data: a generated 2048x2048 leather category (10 train, 5 normal + 5 defective test images, defects from
a few pixels up). Tiled model: train.py / eval.py with configs/hr_patchcore.yaml (512-pixel tiles, A2O,
thumbnail branch, validation-based normalisation). Downscaled model: the same backbone, layers and feature
dimensions on the whole image resized (area averaging) to 224x224, coreset of ``--plain_percentage``
(the plain path's 10% by default: its bank is small anyway). Both are evaluated alike: the downscaled
model's map is upsampled bilinearly to full resolution, then both go through the same evaluators, with
pixel metrics at ``--eval_resize`` and the ground truth max-pooled, so a defect of a few pixels still
counts. With ``--cpp_acc`` (postprocess.py's acc_<CATEGORY>.json of the exported tiled model run by the C++
runner, scripts/run_infer_cpp.sh) a third row shows the deployed model; its eval_s is the runner's own time
(model loads, network and patch scoring of every tile and thumbnail), without pre- and post-processing.
Prints the rows side by side, then the BLAS kernels loaded, the large-sgemm rate and the kNN rate on one tile's
scoring shape (the bank search's share of sgemm), and writes them to ``--json``.

    .venv/bin/python -m benchmarks.bench_hr                                    # everything, ~5 min on 2 cores
    .venv/bin/python -m benchmarks.bench_hr --hr_model demo_output/hr/models/synthetic_leather_2k \\
        --data_root demo_output/hr/data                                       # reuse a trained, evaluated model
"""
import argparse
import json
import os
import sys
import time
from pathlib import Path

import cv2
import numpy as np

import src  # noqa: F401  (environment set-up first)
from src.utils.io import read_json, write_json
from src.evaluation.metrics import format_table
from benchmarks.cli_runs import run_cli

ROOT = Path(__file__).resolve().parents[1]
COLUMNS = ["model", "image_auroc", "pixel_auroc", "pixel_ap", "pixel_f1", "pro", "tnr_at_fnr_5", "tpr_at_fpr_5",
           "worst_margin", "train_s", "eval_s"]
DEFAULT_JSON = ROOT / "benchmarks" / "results" / "hr.json"


def generate(data_root, category, size, seed):
    from src.data.synthetic import generate_category
    if not (Path(data_root) / category).is_dir():
        generate_category(str(data_root), category=category, texture="leather", image_size=(size, size), n_train=10,
                          n_test_good=5, n_test_defect_per_type=1, seed=seed, min_defect_px=3, max_defect_px=80)


def tiled_row(args, data_root):
    """Metrics of the tiled model: trained and evaluated here, or read from ``--hr_model``."""
    folder = Path(args.hr_model) if args.hr_model else Path(args.work_dir) / "models" / args.category
    timings = {}
    if not args.hr_model:
        common = ["--dataset_path", str(data_root), "--category", args.category, "--output_dir", str(folder.parent),
                  "--pre_ckpt_path", args.pre_ckpt_path, "--seed", str(args.seed)]
        timings["train_s"], stdout = run_cli("train.py", [*common, "--config", str(ROOT / "configs" /
                                                                                  "hr_patchcore.yaml")])
        print(stdout.strip().splitlines()[-1])
        timings["eval_s"], _ = run_cli("eval.py", [*common, "-o", f"eval_resize={args.eval_resize}"])
    model = read_json(folder / "model.json", "model")
    metrics = read_json(folder / "eval" / "metrics.json", "evaluation metrics")
    hr = model["config"]["hr"]
    evaluation = read_json(folder / "eval" / "results.json", "evaluation results")
    return dict(model=f"tiled {hr['patch_size']}px, {hr['task_generator']}", **metrics,
                train_s=timings.get("train_s", model["seconds"]),
                eval_s=timings.get("eval_s", evaluation["seconds"])), model


def cpp_row(acc_path):
    """The exported tiled model's row from postprocess.py's acc_<CATEGORY>.json."""
    acc = read_json(acc_path, "C++ runner results")
    latency = acc.get("latency")
    runner_s = None if not latency else (latency["model_load_ms"] + latency["total_ms"]) / 1000
    return dict(model="tiled, exported, C++ runner", **acc["metrics"], train_s=None, eval_s=runner_s)


def downscaled_row(args, data_root, patch_config, data):
    """Train and evaluate the same PatchCore on whole images resized to ``args.size`` x ``args.size``: a one-tile
    model of the ``Resize`` view (no tiles, no thumbnail, the maximum patch score), in a temporary folder.

    ``patch_config`` and ``data`` (input mean and std): the tiled model's, so only the input size differs.
    """
    import tempfile

    from src.app.cli import set_device
    from src.data.mvtec import list_test_samples, list_train_samples
    from src.data.sample import Resize
    from src.evaluation.evaluate import default_evaluators, evaluate_maps, with_decisions
    from src.inference.model import Model
    from src.tiling.plan import MultiResolutionHRImageSpliter
    from src.tiling.tasks import A2OTaskGenerator
    from src.training.hiad import HRTrainer
    set_device("CPU", 0)
    side = args.size
    view = Resize((side, side))
    train = [sample.with_view(view) for sample in list_train_samples(str(data_root), args.category)]
    plan = MultiResolutionHRImageSpliter((side, side), side)
    config = {"patch": dict(patch_config, percentage=args.plain_percentage),
              "data": {"mean": data["mean"], "std": data["std"]}, "image_score": {"policy": "max"}}
    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        trainer = HRTrainer(batch_size=4, tasks=A2OTaskGenerator().create_tasks(train, plan), config=config,
                            checkpoint_root=folder, log_root=os.path.join(folder, "logs"), vis_root=None)
        meta = trainer.train(train, pre_ckpt_path=args.pre_ckpt_path, seed=args.seed)
        plain_bank = meta["jobs"]["task_0"]["bank_size"]
        train_s = time.perf_counter() - started
        started = time.perf_counter()
        samples = list_test_samples(str(data_root), args.category)
        scores, maps, masks = [], [], []
        for sample, _, score, amap in Model.load(folder, args.pre_ckpt_path).predict_samples(samples):
            mask = sample.with_view(None).load_mask()   # full resolution: the map is upsampled to it
            scores.append(score)
            maps.append(cv2.resize(amap, (mask.shape[1], mask.shape[0]), interpolation=cv2.INTER_LINEAR))
            masks.append(mask)
    labels = np.asarray([sample.label for sample in samples])
    evaluators = with_decisions(default_evaluators(args.eval_resize), None, [s.defect_type for s in samples],
                                args.eval_resize)   # the operating points; this model sets no threshold
    metrics = evaluate_maps(evaluators, np.asarray(scores), labels, maps, masks)
    return dict(model=f"whole image at {side}x{side}", **metrics, train_s=train_s,
                eval_s=time.perf_counter() - started), plain_bank


def blas_rates(bank_rows, dim, queries=4096, repeats=3):
    """The BLAS kernels loaded here, the large-sgemm rate (numpy, 2048^3) and the kNN rate on one tile's
    scoring shape (faiss IndexFlatL2, ``queries`` x ``bank_rows`` x ``dim``): best of ``repeats``, GFLOP/s."""
    import faiss
    from src.utils.blas import kernels
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((2048, 2048), dtype=np.float32) for _ in range(2))
    bank = rng.standard_normal((bank_rows, dim), dtype=np.float32)
    tile = rng.standard_normal((queries, dim), dtype=np.float32)
    index = faiss.IndexFlatL2(dim)
    index.add(bank)

    def best(work):
        work()
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            work()
            times.append(time.perf_counter() - started)
        return min(times)

    sgemm = 2 * 2048 ** 3 / best(lambda: a @ b) / 1e9
    knn = 2 * queries * bank_rows * dim / best(lambda: index.search(tile, 1)) / 1e9
    return {"kernels": {os.path.basename(path): name for path, name in kernels().items()},
            "sgemm_gflops": sgemm, "knn_gflops": knn, "knn_over_sgemm": knn / sgemm,
            "knn_shape": [queries, bank_rows, dim]}


def search_comparison(args, data_root, folder):
    """eval.py with ``args.search``, then with the exact search (which leaves its eval/ folder, as training's
    evaluation did): the metrics of both and the largest relative image-score difference."""
    common = ["--dataset_path", str(data_root), "--category", args.category, "--output_dir", str(folder.parent),
              "--pre_ckpt_path", args.pre_ckpt_path, "--seed", str(args.seed), "-o", f"eval_resize={args.eval_resize}"]
    results = {}
    for kind, search in (("fast", args.search), ("exact", "exact")):
        run_cli("eval.py", [*common, "-o", f"search={json.dumps(search)}"])
        results[kind] = {name: read_json(folder / "eval" / name, name) for name in ("metrics.json", "scores.json")}
    fast, exact = results["fast"], results["exact"]
    differences = [abs(a["image_score"] - b["image_score"]) / abs(b["image_score"])
                   for a, b in zip(fast["scores.json"], exact["scores.json"])]
    return {"search": args.search, **{f"{key}_{kind}": result["metrics.json"][key] for key in
                                       ("image_auroc", "pixel_auroc") for kind, result in (("exact", exact),
                                                                                           ("fast", fast))},
            "max_relative_image_score_difference": max(differences)}


def python_per_image(folder, data_root, category, pre_ckpt_path, images=5, search="exact"):
    """Model.predict (what predict.py runs, without its files) on the first ``images`` test images after one
    warm-up: seconds per image, split as Model.timings splits them, and the scoring FLOPs per image; the warm-up
    image's seconds and the network compile in it, apart."""
    from src.backbones.networks import feature_grid
    from src.data.sample import HRSample
    from src.inference.model import Model
    from src.utils.device import set_device
    set_device("CPU", 0)
    model = Model.load(str(folder), pre_ckpt_path=pre_ckpt_path)
    for detector in model.detectors.values():
        detector.bank.use_search(search)
    paths = sorted(str(p) for p in (Path(data_root) / category / "test").glob("*/*.png"))[:images + 1]
    pictures = [HRSample(path).load_image() for path in paths]
    warm_up = time.perf_counter()
    model.predict(pictures[0])
    warm_up = time.perf_counter() - warm_up
    model.timings = dict.fromkeys(model.timings, 0.0)
    started = time.perf_counter()
    for picture in pictures[1:]:
        model.predict(picture)
    count = len(pictures) - 1
    flops = 0
    for task, tiles in model.assignment(pictures[0]):
        bank = model.detectors[task.name].bank
        patch = model.detectors[task.name].patch_config
        grid = feature_grid(patch["backbone_name"], patch["layers_to_extract_from"], tiles[0].input_size)
        flops += 2 * len(tiles) * grid[0] * grid[1] * len(bank) * bank.dimension
    return {"seconds": (time.perf_counter() - started) / count,
            **{f"{part}_s": seconds / count for part, seconds in model.timings.items()},
            "scoring_gflop": flops / 1e9, "images": count, "first_image_s": warm_up,
            "compile_s": model.compile_seconds}


def main():
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--data_root", default=None, help="dataset root (default: WORK_DIR/data, generated)")
    parser.add_argument("--work_dir", default=str(ROOT / "output" / "bench_hr"))
    parser.add_argument("--category", default="synthetic_leather_2k")
    parser.add_argument("--image_size", type=int, default=2048, help="side of the generated images")
    parser.add_argument("--hr_model", default=None, help="a trained and evaluated tiled model folder to reuse")
    parser.add_argument("--pre_ckpt_path", default=str(ROOT / "pretrained" / "mobilenet_v2_imagenet.ckpt"))
    parser.add_argument("--size", type=int, default=224, help="input side of the downscaled model")
    parser.add_argument("--plain_percentage", type=float, default=0.1)
    parser.add_argument("--eval_resize", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cpp_acc", default=None, help="acc_<CATEGORY>.json of the exported tiled model run by "
                                                        "scripts/run_infer_cpp.sh: adds its row")
    parser.add_argument("--search", type=json.loads, default={"kind": "pca_refine", "dimension": 64, "candidates": 4},
                        help="the faster search compared with the exact one (JSON, as postprocess.search)")
    parser.add_argument("--json", default=str(DEFAULT_JSON))
    args = parser.parse_args()
    if not os.path.isfile(args.pre_ckpt_path):
        sys.exit(f"error: {args.pre_ckpt_path}: backbone checkpoint not found (bash scripts/get_mobilenet_weights.sh)")
    data_root = Path(args.data_root or Path(args.work_dir) / "data")
    generate(data_root, args.category, args.image_size, args.seed)

    tiled, model = tiled_row(args, data_root)
    downscaled, plain_bank = downscaled_row(args, data_root, model["config"]["patch"], model["data"])
    rows = [tiled] + ([cpp_row(args.cpp_acc)] if args.cpp_acc else []) + [downscaled]
    print(format_table([{k: (round(v, 1) if k.endswith("_s") and v is not None else v) for k, v in row.items()}
                        for row in rows], COLUMNS))
    memory = model.get("memory") or {}
    if memory:
        largest = memory["largest_job_estimate"]
        print(f"tiled model training: peak RSS {memory['peak_rss_bytes'] / 2**20:.0f} MiB, estimate "
              f"{memory['estimate_bytes'] / 2**20:.0f} MiB (projected features + bank of the largest task: "
              f"{(largest['projected_features'] + largest['bank']) / 2**20:.0f} MiB)")
    folder = Path(args.hr_model or Path(args.work_dir) / "models" / args.category)
    bank = read_json(folder / "task_0" / "bank.json", "bank")
    python = python_per_image(folder, data_root, args.category, args.pre_ckpt_path)
    fast = python_per_image(folder, data_root, args.category, args.pre_ckpt_path, search=args.search)
    comparison = search_comparison(args, data_root, folder)
    rates = blas_rates(bank["bank_size"], bank["dimension"])
    print(f"BLAS kernels: {', '.join(f'{lib}: {name}' for lib, name in rates['kernels'].items())}; sgemm 2048^3 "
          f"{rates['sgemm_gflops']:.0f} GFLOP/s, kNN {'x'.join(map(str, rates['knn_shape']))} "
          f"{rates['knn_gflops']:.0f} GFLOP/s ({rates['knn_over_sgemm']:.2f} of sgemm)")
    floor = python["network_s"] + python["scoring_gflop"] / rates["sgemm_gflops"]
    print(f"per {args.image_size}x{args.image_size} image, Python (Model.predict, {python['images']} images): "
          f"{python['seconds']:.2f} s = network {python['network_s']:.2f} + scoring {python['scoring_s']:.2f} "
          f"({python['scoring_gflop']:.0f} GFLOP, {python['scoring_gflop'] / python['scoring_s']:.0f} GFLOP/s) + map "
          f"{python['map_s']:.2f}; floor {floor:.2f} s (that network time + the scoring FLOPs at the sgemm rate); "
          f"apart: the first image {python['first_image_s']:.2f} s, of which network compile "
          f"{python['compile_s']:.2f} s")
    print(f"per image, Python with search {json.dumps(args.search)}: {fast['seconds']:.2f} s = network "
          f"{fast['network_s']:.2f} + scoring {fast['scoring_s']:.2f} + map {fast['map_s']:.2f} (exact: "
          f"{python['seconds']:.2f} s, {python['seconds'] / fast['seconds']:.2f}x); image AUROC "
          f"{comparison['image_auroc_fast']:.4f} (exact {comparison['image_auroc_exact']:.4f}), pixel AUROC "
          f"{comparison['pixel_auroc_fast']:.4f} (exact {comparison['pixel_auroc_exact']:.4f}), largest relative "
          f"image-score difference {comparison['max_relative_image_score_difference']:.2e}")
    acc = read_json(args.cpp_acc, "C++ runner results") if args.cpp_acc else {}
    latency, images = acc.get("latency"), len(acc.get("scores", []))
    if latency:
        print(f"per image, C++ runner: {latency['total_ms'] / images / 1000:.2f} s = network "
              f"{latency['network_ms'] / images / 1000:.2f} + scoring {latency['scoring_ms'] / images / 1000:.2f} "
              f"({python['scoring_gflop'] * images / (latency['scoring_ms'] / 1000 or 1):.0f} GFLOP/s; "
              f"OpenBLAS {'/'.join(latency.get('openblas_cores', [])) or 'unknown'}), model loads not counted")
    write_json(args.json, {"rows": rows, "blas": rates, "python_per_image": python, "python_per_image_fast": fast,
                           "search_comparison": comparison, "data_root": str(data_root),
                           "category": args.category,
                           "eval_resize": args.eval_resize, "downscaled_bank_size": plain_bank,
                           "tiled_memory": memory, "tiled_jobs": model["jobs"]})
    print(f"written to {args.json}")


if __name__ == "__main__":
    main()
