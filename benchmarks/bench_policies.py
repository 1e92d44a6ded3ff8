"""Image-score policies side by side: max, window_max, topk_mean and reweighted on the same patch-score grids.

Parts: the four generated textures (leather, fabric, wood, tile) at 256 pixels, each trained here with
configs/mobilenet_v2.yaml (ImageNet MobileNetV2, 40 training images; 20 good and 5 x 4 defective test images,
so every operating point is defined); ``--hr_textures`` at 2048x2048, trained here with configs/hr_patchcore.yaml
(10 training images, 10 good and 5 x 2 defective test images, defects from 3 to 80 pixels, as the HR demo's);
and with ``--hr_model`` a trained tiled model (the 2048x2048 demo's).
Each test image's grids are computed once (with the max-cell weights the reweighted policy needs); every
policy then scores the same grids, so the rows differ by the policy alone. Per part and policy: image AUROC,
the operating points (``src.evaluation.metrics.operating_points``) and the worst defect type's margin in
standard deviations of the good images' scores (scores of different policies have different scales).

    .venv/bin/python -m benchmarks.bench_policies                  # the four textures, ~1 min on 2 cores
    .venv/bin/python -m benchmarks.bench_policies --hr_textures wood \\
        --hr_model demo_output/hr/models/synthetic_leather_2k --hr_data demo_output/hr/data   # ~4 min
"""
import argparse
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

import src  # noqa: F401  (environment set-up first)
from src.evaluation.metrics import format_table, image_auroc, operating_points
from src.utils.io import write_json

ROOT = Path(__file__).resolve().parents[1]
TEXTURES = ("leather", "fabric", "wood", "tile")
POLICIES = ({"policy": "max"}, {"policy": "window_max"}, {"policy": "topk_mean", "k": 10},
            {"policy": "reweighted", "num_nn": 9})
COLUMNS = ["part", "policy", "image_auroc", "tnr_at_fnr_1", "tnr_at_fnr_5", "tpr_at_fpr_1", "tpr_at_fpr_5",
           "worst_margin_sd"]
DEFAULT_JSON = ROOT / "benchmarks" / "results" / "policies.json"


def run(script, *args):
    result = subprocess.run([sys.executable, str(ROOT / script), *map(str, args)], cwd=ROOT, capture_output=True,
                            text=True)
    if result.returncode != 0:
        sys.exit(f"{script} failed:\n{result.stderr[-2000:]}")


def trained_texture(work_dir, texture, pre_ckpt_path, seed):
    """(model folder, dataset root, category) of one generated texture, generated and trained once."""
    category = f"synthetic_{texture}"
    data = work_dir / "data"
    if not (data / category).is_dir():
        run("generate_data.py", "--output_path", data, "--category", category, "--texture", texture,
            "--image_size", 256, "--n_train", 40, "--n_test_good", 20, "--n_test_defect", 4, "--seed", seed)
    if not (work_dir / "models" / category / "model.json").is_file():
        run("train.py", "--dataset_path", data, "--category", category, "--output_dir", work_dir / "models",
            "--config", ROOT / "configs" / "mobilenet_v2.yaml", "--pre_ckpt_path", pre_ckpt_path, "--seed", seed)
    return work_dir / "models" / category, data, category


def trained_hr_texture(work_dir, texture, pre_ckpt_path, seed):
    """(model folder, dataset root, category) of one generated 2048x2048 texture, generated and trained once."""
    from src.data.synthetic import generate_category
    category = f"synthetic_{texture}_2k"
    data = work_dir / "data"
    if not (data / category).is_dir():
        generate_category(str(data), category=category, texture=texture, image_size=(2048, 2048), n_train=10,
                          n_test_good=10, n_test_defect_per_type=2, seed=seed, min_defect_px=3, max_defect_px=80)
    if not (work_dir / "models" / category / "model.json").is_file():
        run("train.py", "--dataset_path", data, "--category", category, "--output_dir", work_dir / "models",
            "--config", ROOT / "configs" / "hr_patchcore.yaml", "--pre_ckpt_path", pre_ckpt_path, "--seed", seed)
    return work_dir / "models" / category, data, category


def policy_rows(part, model_dir, data_root, category, pre_ckpt_path):
    """One row per policy, every policy scoring the same grids; and the seconds the grids took."""
    from src.data.mvtec import list_test_samples
    from src.inference.model import Model
    from src.patchcore.scoring import ImageScorer, build_image_score
    from src.backbones.networks import feature_strides
    model = Model.load(str(model_dir), pre_ckpt_path)
    patch = next(iter(model.detectors.values())).patch_config
    stride = feature_strides(patch["backbone_name"], patch["layers_to_extract_from"])[0]   # window_max's default
    model.scorer.policy = build_image_score(POLICIES[-1])   # the grids with the max-cell weights
    samples = [model.prepare(sample) for sample in list_test_samples(str(data_root), category)]
    started = time.perf_counter()
    grids = [model.grids([sample.load_image()])[0] for sample in samples]
    seconds = time.perf_counter() - started
    labels = np.array([sample.label for sample in samples])
    types = [sample.defect_type for sample in samples]
    rows = []
    for spec in POLICIES:
        policy = build_image_score(spec, feature_stride=stride)
        scorer = ImageScorer(model.scorer.image_size, policy, model.scorer.thumbnail_merge,
                             model.scorer.gaussian_sigma)
        scores = np.array([scorer(tiles, thumbnail, weights)[0] for tiles, thumbnail, weights in grids])
        points = operating_points(scores, labels, defect_types=types)
        spread = float(np.std(scores[labels == 0])) or 1.0
        rows.append({"part": part, "policy": "{policy}".format(**spec) + "".join(
            f" {k}={v}" for k, v in policy.options().items()), "image_auroc": image_auroc(scores, labels),
            **{key: points[key] for key in COLUMNS[3:7]}, "worst_margin_sd": points["worst_margin"] / spread,
            "margin_per_defect_type": points["margin_per_defect_type"]})
    return rows, seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work_dir", default=str(ROOT / "output" / "bench_policies"))
    parser.add_argument("--pre_ckpt_path", default=str(ROOT / "pretrained" / "mobilenet_v2_imagenet.ckpt"))
    parser.add_argument("--textures", default=",".join(TEXTURES))
    parser.add_argument("--hr_textures", default="", help="comma-separated textures to train at 2048x2048")
    parser.add_argument("--hr_model", default=None, help="a trained tiled model folder")
    parser.add_argument("--hr_data", default=None, help="its dataset root")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=str(DEFAULT_JSON))
    args = parser.parse_args()
    from src.utils.device import set_device
    set_device("CPU", 0)
    work_dir = Path(args.work_dir)
    parts = [(texture, *trained_texture(work_dir, texture, args.pre_ckpt_path, args.seed))
             for texture in args.textures.split(",") if texture]
    parts += [(f"{texture} 2048² (tiled)", *trained_hr_texture(work_dir, texture, args.pre_ckpt_path, args.seed))
              for texture in args.hr_textures.split(",") if texture]
    if args.hr_model:
        hr_model = Path(args.hr_model)
        parts.append((f"{hr_model.name} (tiled)", hr_model, Path(args.hr_data), hr_model.name))
    rows = []
    for part, model_dir, data_root, category in parts:
        part_rows, seconds = policy_rows(part, model_dir, data_root, category, args.pre_ckpt_path)
        print(f"{part}: grids of {category}'s test images in {seconds:.1f} s", flush=True)
        rows += part_rows
    print(format_table(rows, COLUMNS))
    write_json(args.json, {"rows": rows, "policies": list(POLICIES)})
    print(f"written to {args.json}")


if __name__ == "__main__":
    main()
