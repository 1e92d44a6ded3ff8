"""Small defects on real photographs at 1024x1024: the tiled defaults on textures they were tuned on and not.

Photographs: four real photographs that Debian packages ship (``PHOTOS``: package, file, sha256, author and
licence). Each is fetched once with ``apt-get download`` into ``--cache`` and checked against its sha256.
scikit-image's brick, grass and gravel are not used: they are kept for an independent check.

Parts: ``tuning`` (wood, embossed) is what defaults may be chosen on; ``heldout`` (bark, moss) is what they are
reported on, never tuned on.

Images: every photograph's usable area is cut in two disjoint parts. Training images are 1024x1024 crops at
seeded random places of the training part; test images are crops of the test part, which no training image
touches, so a good test image is new surface, not a copy of a training crop. Defective test images carry one
defect of 6-24 px (the demo's defect painters: scratch, stain, fold, color, contamination) and its exact mask.

Per texture: train.py with ``--config`` (configs/hr_patchcore.yaml; ``-o`` overrides pass through), eval.py,
then one row: image and pixel AUROC, pixel AP, PRO, each defect type's margin over the highest good image,
recall and false alarms at the persisted threshold, training seconds and evaluation seconds per image
(network, scoring, metrics and pictures). Rows and their mean go to ``--json``.

    .venv/bin/python -m benchmarks.bench_realphoto --part tuning           # ~3 min on 2 cores
    .venv/bin/python -m benchmarks.bench_realphoto --part heldout -o hr.stride=384
"""
import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np

import src  # noqa: F401  (environment set-up first)
from src.data.synthetic import DEFECT_TYPES, add_defect, write_item
from src.evaluation.metrics import format_table
from src.utils.io import read_json, sha256_of, staged_folder, write_json
from benchmarks.cli_runs import run_cli

ROOT = Path(__file__).resolve().parents[1]
IMAGE_SIZE = 1024
DEFECT_PX = (6.0, 24.0)
# area and the two parts as (x0, y0, x1, y1) in the photograph's pixels; both parts hold a 1024 crop.
PHOTOS = {
    "wood": dict(
        part="tuning", package="mate-backgrounds", version="1.26.0-1",
        file="usr/share/backgrounds/mate/nature/Wood.jpg",
        sha256="19c78500ac00a622e19907ab9cc7d06d46fe08c4a6142759a84195696150ec07",
        author="Jean-François Fortin Tam, 2008", licence="GPL-2+",
        what="weathered wooden planks; the top 700 rows are out of focus and left out",
        test=(0, 704, 1280, 1920), train=(1280, 704, 2560, 1920)),
    "embossed": dict(
        part="tuning", package="lomiri-wallpapers-16.04", version="20.04.0-2",
        file="usr/share/backgrounds/analogpattern_by_Peter_Nerlich.jpg",
        sha256="15372488a192b2be2eafc67bd3ed31cbfca19abe3929e925607fcbc9cb4d4202",
        author="Peter Nerlich, 2018", licence="CC-BY-SA-4.0",
        what="embossed, leather-like surface under coloured light",
        test=(0, 0, 2880, 1088), train=(0, 1088, 2880, 2160)),
    "bark": dict(
        part="heldout", package="lomiri-wallpapers-20.04", version="20.04.0-2",
        file="usr/share/backgrounds/Kleiber_by_Lukas_Baubkus.jpg",
        sha256="6572410c09f4492c74ccadde133565a14c0161617d5917d4c820c66d65a44ba7",
        author="Lukas Baubkus, 2021", licence="CC-BY-SA-3.0",
        what="tree bark; the trunk's left 2100 columns (the bird and background to its right left out)",
        test=(0, 0, 2100, 1280), train=(0, 1280, 2100, 3391)),
    "moss": dict(
        part="heldout", package="plasma-workspace-wallpapers", version="4:5.27.5-2",
        file="usr/share/wallpapers/OneStandsOut/contents/images/2560x1600.jpg",
        sha256="cb507baf1dafdcae362264f3aba9483ed4be5f6c9fdd770f0ec0920c6d9e80fd",
        author="Risto Saukonpää (KDE 'One Stands Out')",
        licence="LGPL-3 (metadata.json); GPL-2+ (Debian copyright, Files: *)",
        what="moss from above; the bottom 450 rows (soil) are left out",
        test=(0, 0, 1280, 1150), train=(1280, 0, 2560, 1150)),
}
COLUMNS = ["texture", "image_auroc", "pixel_auroc", "pixel_ap", "pro", "worst_margin", "image_recall", "image_fpr",
           "train_s", "s_per_image"]


def fetch_photo(name, cache):
    """Path of ``name``'s photograph in ``cache``, fetched from its Debian package when missing; sha256 checked."""
    spec = PHOTOS[name]
    target = Path(cache) / f"{name}{Path(spec['file']).suffix}"
    if not target.is_file():
        Path(cache).mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory() as work:
            fetched = subprocess.run(["apt-get", "download", f"{spec['package']}={spec['version']}"], cwd=work,
                                     capture_output=True, text=True)
            debs = list(Path(work).glob("*.deb"))
            if fetched.returncode != 0 or not debs:
                sys.exit(f"{spec['package']}={spec['version']}: apt-get download failed: "
                         f"{(fetched.stderr or fetched.stdout).strip().splitlines()[-1:]}")
            subprocess.run(["dpkg-deb", "-x", str(debs[0]), os.path.join(work, "x")], check=True)
            os.replace(os.path.join(work, "x", spec["file"]), target)
    if sha256_of(target) != spec["sha256"]:
        sys.exit(f"{target}: sha256 differs from the recorded one; delete it to fetch it again")
    return target


def _crop(photo, area, size, rng):
    x0, y0, x1, y1 = area
    x = int(rng.integers(x0, x1 - size + 1))
    y = int(rng.integers(y0, y1 - size + 1))
    return np.ascontiguousarray(photo[y:y + size, x:x + size]), [x, y]


def generate(name, photo_path, root, n_train, n_test_good, n_test_defect_per_type, seed, size=IMAGE_SIZE):
    """Write ``root/realphoto_<name>`` in the MVTec AD layout (``size`` x ``size`` crops), with ``generation.json``
    naming the photograph and every crop's corner in it."""
    spec = PHOTOS[name]
    category = f"realphoto_{name}"
    photo = cv2.cvtColor(cv2.imread(str(photo_path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    jobs = [("train/good", 0, i, None) for i in range(n_train)]
    jobs += [("test/good", 1, i, None) for i in range(n_test_good)]
    jobs += [(f"test/{d}", 2 + k, i, d) for k, d in enumerate(DEFECT_TYPES) for i in range(n_test_defect_per_type)]
    files = []
    with staged_folder(os.path.join(root, category)) as stage:
        for folder, split, index, defect_type in jobs:
            rng = np.random.default_rng([seed, sorted(PHOTOS).index(name), split, index])
            image, corner = _crop(photo, spec["train" if split == 0 else "test"], size, rng)
            defect = None
            if defect_type is not None:
                # "photo" is no generated texture: a contamination is any of the generated ones.
                image, *defect = add_defect(image, defect_type, rng, *DEFECT_PX, texture="photo")
            files.append(dict(write_item(stage, folder, index, image, defect), crop_xy=corner))
        write_json(os.path.join(stage, "generation.json"), dict(
            generator="benchmarks/bench_realphoto.py", category=category, source=spec, image_size=size,
            seed=seed, defect_px=list(DEFECT_PX), files=files))
    return category


def texture_row(name, args):
    """Train and evaluate the tiled model on ``name``'s category; one row of metrics and costs."""
    data = Path(args.work_dir) / "data"
    category = f"realphoto_{name}"
    if not (data / category).is_dir():
        generate(name, fetch_photo(name, args.cache), data, args.n_train, args.n_test_good, args.n_test_defect,
                 args.seed)
    common = ["--dataset_path", str(data), "--category", category, "--output_dir", str(Path(args.work_dir) / "models"),
              "--pre_ckpt_path", args.pre_ckpt_path, "--seed", str(args.seed)]
    overrides = [item for override in args.override for item in ("-o", override)]
    train_s, _ = run_cli("train.py", [*common, "--config", args.config, *overrides])
    eval_s, _ = run_cli("eval.py", common)
    metrics = read_json(Path(args.work_dir) / "models" / category / "eval" / "metrics.json", "evaluation metrics")
    n_test = args.n_test_good + args.n_test_defect * len(DEFECT_TYPES)
    return dict(texture=name, part=PHOTOS[name]["part"], **metrics, train_s=train_s, s_per_image=eval_s / n_test)


def main():
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--part", choices=["tuning", "heldout", "all", *PHOTOS], default="tuning",
                        help="a part, all textures, or one texture")
    parser.add_argument("--work_dir", default=str(ROOT / "output" / "realphoto"), help="data and models")
    parser.add_argument("--cache", default=os.path.expanduser("~/.cache/patchcore-realphoto"),
                        help="where the photographs are kept once fetched")
    parser.add_argument("--config", default=str(ROOT / "configs" / "hr_patchcore.yaml"))
    parser.add_argument("-o", "--override", action="append", default=[], help="passed to train.py")
    parser.add_argument("--pre_ckpt_path", default=str(ROOT / "pretrained" / "mobilenet_v2_imagenet.ckpt"))
    parser.add_argument("--n_train", type=int, default=16)
    parser.add_argument("--n_test_good", type=int, default=10)
    parser.add_argument("--n_test_defect", type=int, default=4, help="test images per defect type")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="default benchmarks/results/realphoto_<part>.json")
    args = parser.parse_args()
    names = [n for n, spec in PHOTOS.items() if args.part in ("all", spec["part"], n)]
    rows = [texture_row(name, args) for name in names]
    mean = {key: float(np.mean([row[key] for row in rows])) for key in COLUMNS[1:]}
    print(format_table([{k: row[k] for k in COLUMNS} for row in rows] + [dict(texture="mean", **mean)], COLUMNS))
    path = args.json or str(ROOT / "benchmarks" / "results" / f"realphoto_{args.part}.json")
    write_json(path, dict(part=args.part, config=args.config, overrides=args.override, rows=rows, mean=mean,
                          sources={n: PHOTOS[n] for n in names}))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
