"""Small defects on real photographs at 1024x1024: the tiled defaults on textures they were tuned on and not.

Photographs: four real photographs that Debian packages ship (``PHOTOS``: package, file, sha256, author and
licence). Each is fetched once with ``apt-get download`` into ``--cache`` and checked against its sha256.
scikit-image's brick, grass and gravel are not used: they are kept for an independent check.

Parts: ``tuning`` (wood, embossed) is what defaults may be chosen on; ``heldout`` (bark, moss) is what they are
reported on, never tuned on.

Areas: every photograph's usable surface is cut in three pairwise disjoint areas, each holding a 1024x1024 crop:
``train``, ``field`` and ``check``. A photograph too small for three is first enlarged as a whole by its ``scale``
(cv2.resize, INTER_CUBIC; 1.0 when it fits as it is), and its areas are in the enlarged photograph's pixels: wood
(x1.25) and moss (x1.4) in three columns, bark in three rows of its trunk, embossed in a training row above the two
halves of a second row (``PHOTOS`` says why). Training images are crops at seeded random places of ``train``. The
test images come in two halves of new surface that no training crop touches and that share none with each other:
crops of ``field`` and crops of ``check``, each half with its good images and its defective ones (one defect of 6-24
px, the demo's defect painters: scratch, stain, fold, color, contamination, with its exact mask). The halves are for
teaching the model what is OK from one half of the surface (field) and measuring on the other (check); ``halves``
names each half's files (the MVTec layout is kept: test/good, test/<defect>, ground_truth; file numbers run on
across the halves). ``generation.json`` records every file's area (``half``: train, field or check) and crop corner.
By default 16 training images and per half 10 good and 2 per defect type: 20 good and 20 defective test images.

Data: ``--work_dir``/data/train<n>-good<n>-defect<n>-seed<n>/realphoto_<texture>, generated when missing or
when its generation.json records other settings, so a set is never reused with other counts. Models go to
``--work_dir``/models[-<tag>], results to benchmarks/results/realphoto_<part>[-<tag>].json: runs with other
settings (counts, ``-o`` overrides) under their own ``--tag`` keep each other's models.

Per texture: train.py with ``--config`` (configs/hr_patchcore.yaml; ``-o`` overrides pass through), eval.py,
then one row: eval.py's metrics (image and pixel AUROC, pixel AP, PRO, each defect type's margin over the
highest good image, recall and false alarms at the persisted threshold, the review band's ``review_share`` and
``wrong_outside_review``, ...); per half and overall, from eval.py's
per-image decisions (scores.json), ``fa_rate`` (share of good images labelled NG) and ``recall`` (share of
defective ones labelled NG): ``fa_rate_field``, ``recall_field``, ``fa_rate_check``, ``recall_check``,
``fa_rate``, ``recall``; the false-alarm rate training predicted, that of its validation normals at its image
threshold (model.json), with its 95% Wilson interval: ``val_fa_rate``, ``val_fa_low``, ``val_fa_high``
(``val_normal`` images); ``fa_inside``, whether the measured ``fa_rate`` lies in that interval; training seconds
and evaluation seconds per image (network, scoring, metrics and pictures). The table shows the key columns;
every row and the rows' means go to ``--json``.

    .venv/bin/python -m benchmarks.bench_realphoto --part tuning           # minutes on 2 cores
    .venv/bin/python -m benchmarks.bench_realphoto --part heldout -o hr.stride=384 --tag stride384
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np

import src  # noqa: F401  (environment set-up first)
from src.data.synthetic import DEFECT_TYPES, add_defect, write_item
from src.decisions.thresholds import flagged
from src.evaluation.metrics import format_table
from src.utils.io import read_json, sha256_of, staged_folder, write_json
from benchmarks.cli_runs import run_cli

ROOT = Path(__file__).resolve().parents[1]
IMAGE_SIZE = 1024
DEFECT_PX = (6.0, 24.0)
AREAS = ("train", "field", "check")
HALVES = AREAS[1:]
# shape: the photograph's (height, width) as shipped. scale: the whole photograph is enlarged by it first (INTER_CUBIC)
# when its usable surface is too small for three areas that hold a 1024 crop each with room to place it (the smallest
# in steps of 0.05; 1.0 where they fit as shipped). train, field, check: the areas as (x0, y0, x1, y1) in the enlarged
# photograph's pixels, pairwise disjoint (area_faults).
PHOTOS = {
    "wood": dict(
        part="tuning", package="mate-backgrounds", version="1.26.0-1",
        file="usr/share/backgrounds/mate/nature/Wood.jpg",
        sha256="19c78500ac00a622e19907ab9cc7d06d46fe08c4a6142759a84195696150ec07",
        author="Jean-François Fortin Tam, 2008", licence="GPL-2+",
        what="weathered wooden planks; the top 704 rows (880 enlarged) are out of focus and left out",
        # 1216 usable rows hold one crop, so three columns side by side, 3 x 1024 wide: 1.2 would leave no room to
        # place a crop. The groove between two planks runs through the right column (train, so training sees it), a
        # little through the middle one and not through the left one.
        shape=(1920, 2560), scale=1.25,
        train=(2133, 880, 3200, 2400), field=(1066, 880, 2133, 2400), check=(0, 880, 1066, 2400)),
    "embossed": dict(
        part="tuning", package="lomiri-wallpapers-16.04", version="20.04.0-2",
        file="usr/share/backgrounds/analogpattern_by_Peter_Nerlich.jpg",
        sha256="15372488a192b2be2eafc67bd3ed31cbfca19abe3929e925607fcbc9cb4d4202",
        author="Peter Nerlich, 2018", licence="CC-BY-SA-4.0",
        what="embossed, leather-like surface under coloured light",
        # two rows of crops fit as it is: the top row (all the colours, green left to purple right) trains, the
        # bottom row's left (green) and right (blue-grey) halves are field and check; they differ in hue (three
        # full-width rows would need x1.45).
        shape=(2160, 2880), scale=1.0,
        train=(0, 0, 2880, 1080), field=(0, 1080, 1440, 2160), check=(1440, 1080, 2880, 2160)),
    "bark": dict(
        part="heldout", package="lomiri-wallpapers-20.04", version="20.04.0-2",
        file="usr/share/backgrounds/Kleiber_by_Lukas_Baubkus.jpg",
        sha256="6572410c09f4492c74ccadde133565a14c0161617d5917d4c820c66d65a44ba7",
        author="Lukas Baubkus, 2021", licence="CC-BY-SA-3.0",
        what="tree bark; the trunk's left 2100 columns (the bird and background to its right left out)",
        # the trunk is tall: three rows of it, the middle one training.
        shape=(3391, 6028), scale=1.0,
        train=(0, 1130, 2100, 2261), field=(0, 0, 2100, 1130), check=(0, 2261, 2100, 3391)),
    "moss": dict(
        part="heldout", package="plasma-workspace-wallpapers", version="4:5.27.5-2",
        file="usr/share/wallpapers/OneStandsOut/contents/images/2560x1600.jpg",
        sha256="cb507baf1dafdcae362264f3aba9483ed4be5f6c9fdd770f0ec0920c6d9e80fd",
        author="Risto Saukonpää (KDE 'One Stands Out')",
        licence="LGPL-3 (metadata.json); GPL-2+ (Debian copyright, Files: *)",
        what="moss from above; the bottom 450 rows (soil) are left out",
        # 1150 usable rows hold one crop, so three columns. The one orange shoot (columns 1540-1795 as shipped)
        # stays in the training column, since a good test image showing it would hold a real anomaly: the two test
        # columns left of it need 1540 x scale >= 2 x 1024 and some room, so 1.4 (1.25 would cut the shoot between
        # two areas, 1.35 leaves 7 pixels between the shoot and the check column).
        shape=(1600, 2560), scale=1.4,
        train=(2120, 0, 3584, 1610), field=(0, 0, 1060, 1610), check=(1060, 0, 2120, 1610)),
}
COLUMNS = ["texture", "auroc", "recall", "fa_field", "fa_check", "fa", "val_fa (95%)", "inside",
           "review", "wrong"]


def area_faults(spec, size=IMAGE_SIZE):
    """What is wrong with ``spec``'s areas (empty when nothing): each must lie inside the enlarged photograph and
    hold a ``size`` crop, and no two may overlap."""
    height, width = (round(side * spec["scale"]) for side in spec["shape"])
    faults = []
    for name in AREAS:
        x0, y0, x1, y1 = spec[name]
        if not (0 <= x0 and 0 <= y0 and x1 <= width and y1 <= height):
            faults.append(f"{name} {spec[name]} is not inside the {width}x{height} photograph")
        if x1 - x0 < size or y1 - y0 < size:
            faults.append(f"{name} {spec[name]} holds no {size}x{size} crop")
    for i, first in enumerate(AREAS):
        for second in AREAS[i + 1:]:
            (ax0, ay0, ax1, ay1), (bx0, by0, bx1, by1) = spec[first], spec[second]
            if ax0 < bx1 and bx0 < ax1 and ay0 < by1 and by0 < ay1:
                faults.append(f"{first} {spec[first]} and {second} {spec[second]} overlap")
    return faults


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


def enlarged_photo(photo_path, spec):
    """The photograph as RGB, enlarged by ``spec``'s scale."""
    photo = cv2.cvtColor(cv2.imread(str(photo_path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    if photo.shape[:2] != tuple(spec["shape"]):
        raise ValueError(f"{photo_path}: {photo.shape[:2]} pixels, not the recorded {spec['shape']}")
    if spec["scale"] == 1.0:
        return photo
    height, width = (round(side * spec["scale"]) for side in spec["shape"])
    return cv2.resize(photo, (width, height), interpolation=cv2.INTER_CUBIC)


def _crop(photo, area, size, rng):
    x0, y0, x1, y1 = area
    x = int(rng.integers(x0, x1 - size + 1))
    y = int(rng.integers(y0, y1 - size + 1))
    return np.ascontiguousarray(photo[y:y + size, x:x + size]), [x, y]


def _jobs(n_train, n_test_good, n_test_defect):
    """(area, folder, split code, file number, defect type or None) of every image. The split codes (the random
    stream of each area's good images and of each of its defect types) differ between the halves; file numbers run
    on from the field half to the check half, so no two files share a name."""
    jobs = [("train", "train/good", 0, i, None) for i in range(n_train)]
    for h, half in enumerate(HALVES):
        good = 1 + h * (1 + len(DEFECT_TYPES))
        jobs += [(half, "test/good", good, h * n_test_good + i, None) for i in range(n_test_good)]
        jobs += [(half, f"test/{defect}", good + 1 + k, h * n_test_defect + i, defect)
                 for k, defect in enumerate(DEFECT_TYPES) for i in range(n_test_defect)]
    return jobs


def _settings(name, n_train, n_test_good, n_test_defect, seed, size):
    """What a generated category depends on, as generation.json records it."""
    return dict(generator="benchmarks/bench_realphoto.py", category=f"realphoto_{name}", source=PHOTOS[name],
                image_size=size, seed=seed, defect_px=list(DEFECT_PX), n_train=n_train, n_test_good=n_test_good,
                n_test_defect=n_test_defect)


def generate(name, photo_path, root, n_train, n_test_good, n_test_defect, seed, size=IMAGE_SIZE):
    """Write ``root/realphoto_<name>`` in the MVTec AD layout (``size`` x ``size`` crops): ``n_train`` training
    images, and per half (field, check) ``n_test_good`` good ones and ``n_test_defect`` per defect type, with
    ``generation.json`` naming the photograph, the settings and every file's area and crop corner."""
    spec = PHOTOS[name]
    faults = area_faults(spec, size)
    if faults:
        raise ValueError(f"{name}: " + "; ".join(faults))
    settings = _settings(name, n_train, n_test_good, n_test_defect, seed, size)
    photo = enlarged_photo(photo_path, spec)
    files = []
    with staged_folder(os.path.join(root, settings["category"])) as stage:
        for area, folder, split, index, defect_type in _jobs(n_train, n_test_good, n_test_defect):
            rng = np.random.default_rng([seed, sorted(PHOTOS).index(name), split, index])
            image, corner = _crop(photo, spec[area], size, rng)
            defect = None
            if defect_type is not None:
                # "photo" is no generated texture: a contamination is any of the generated ones.
                image, *defect = add_defect(image, defect_type, rng, *DEFECT_PX, texture="photo")
            files.append(dict(write_item(stage, folder, index, image, defect), half=area, crop_xy=corner))
        write_json(os.path.join(stage, "generation.json"), dict(settings, files=files))
    return settings["category"]


def prepared(name, work_dir, cache, n_train, n_test_good, n_test_defect, seed, size=IMAGE_SIZE):
    """(data root, category) of ``name``'s set with these settings under ``work_dir``/data, generated unless its
    generation.json records exactly these settings (the folder is named by the counts and seed, so sets with other
    counts live side by side)."""
    root = Path(work_dir) / "data" / f"train{n_train}-good{n_test_good}-defect{n_test_defect}-seed{seed}"
    settings = _settings(name, n_train, n_test_good, n_test_defect, seed, size)
    record = root / settings["category"] / "generation.json"
    recorded = json.loads(record.read_text()) if record.is_file() else {}
    if {key: recorded.get(key) for key in settings} != json.loads(json.dumps(settings)):   # tuples as JSON lists
        generate(name, fetch_photo(name, cache), root, n_train, n_test_good, n_test_defect, seed, size)
    return root, settings["category"]


def halves(category_root):
    """{"field": [paths], "check": [paths]}: each test half's files relative to ``category_root`` (sorted), as its
    generation.json records them."""
    files = read_json(os.path.join(category_root, "generation.json"), "real-photo generation record")["files"]
    return {half: sorted(entry["image"] for entry in files if entry["half"] == half) for half in HALVES}


def _rates(entries):
    """(share of good entries labelled NG, share of defective ones labelled NG), None where there are none."""
    good = [entry["predicted_anomalous"] for entry in entries if entry["label"] == 0]
    defective = [entry["predicted_anomalous"] for entry in entries if entry["label"] == 1]
    return (float(np.mean(good)) if good else None), (float(np.mean(defective)) if defective else None)


def measured_rates(scores, parts, category):
    """fa_rate and recall per half and overall from eval.py's ``scores`` (scores.json: paths relative to the data
    root, ``category``/...) and the halves ``parts`` (:func:`halves`)."""
    by_path = {os.path.relpath(entry["path"], category): entry for entry in scores}
    if sorted(by_path) != sorted(path for paths in parts.values() for path in paths):
        sys.exit(f"{category}: eval.py's scored images are not the generated test images")
    row = {}
    for half, paths in parts.items():
        row[f"fa_rate_{half}"], row[f"recall_{half}"] = _rates([by_path[path] for path in paths])
    row["fa_rate"], row["recall"] = _rates(scores)
    return row


def predicted_false_alarms(meta):
    """The false-alarm rate training predicted: that of the validation normals in ``meta`` (model.json) at its
    image threshold, with its 95% Wilson interval (as src/training/thresholds.py's ``rate``)."""
    normal = [item["score"] for item in meta["validation"]["items"] if item["label"] == 0]
    if not normal:
        return dict(val_fa_rate=None, val_fa_low=None, val_fa_high=None, val_normal=0)
    from scipy.stats import binomtest
    hits = int(flagged(np.asarray(normal), meta["thresholds"]["image"]).sum())
    interval = binomtest(hits, len(normal)).proportion_ci(method="wilson")
    return dict(val_fa_rate=hits / len(normal), val_fa_low=float(interval.low), val_fa_high=float(interval.high),
                val_normal=len(normal))


def texture_row(name, args):
    """Train and evaluate the tiled model on ``name``'s category; one row of metrics, decisions and costs."""
    data, category = prepared(name, args.work_dir, args.cache, args.n_train, args.n_test_good, args.n_test_defect,
                              args.seed)
    models = Path(args.work_dir) / ("models" + (f"-{args.tag}" if args.tag else ""))
    common = ["--dataset_path", str(data), "--category", category, "--output_dir", str(models),
              "--pre_ckpt_path", args.pre_ckpt_path, "--seed", str(args.seed)]
    overrides = [item for override in args.override for item in ("-o", override)]
    train_s, _ = run_cli("train.py", [*common, "--config", args.config, *overrides])
    eval_s, _ = run_cli("eval.py", common)
    metrics = read_json(models / category / "eval" / "metrics.json", "evaluation metrics")
    scores = read_json(models / category / "eval" / "scores.json", "per-image scores")
    row = dict(texture=name, part=PHOTOS[name]["part"], **metrics,
               **measured_rates(scores, halves(data / category), category),
               **predicted_false_alarms(read_json(models / category / "model.json", "model")))
    row["fa_inside"] = (None if row["val_fa_low"] is None or row["fa_rate"] is None
                        else row["val_fa_low"] <= row["fa_rate"] <= row["val_fa_high"])
    n_test = len(HALVES) * (args.n_test_good + args.n_test_defect * len(DEFECT_TYPES))
    return dict(row, train_s=train_s, s_per_image=eval_s / n_test)


def mean_of(rows):
    """Per numeric entry of the rows (fa_inside counts as 0/1: the share inside), the mean of its defined values;
    not of the interval bounds, whose means bound nothing."""
    keys = dict.fromkeys(key for row in rows for key, value in row.items()
                         if isinstance(value, (int, float)) and key not in ("val_fa_low", "val_fa_high"))
    means = {}
    for key in keys:
        values = [row[key] for row in rows if row.get(key) is not None]
        means[key] = float(np.mean(values)) if values else None
    return means


def table_row(texture, row):
    """``row``'s key columns (COLUMNS) for the printed table, two decimals."""
    def shown(key):
        return None if row.get(key) is None else round(float(row[key]), 2)
    predicted = shown("val_fa_rate")
    if predicted is not None and row.get("val_fa_low") is not None:
        predicted = f"{predicted:.2f} ({row['val_fa_low']:.2f}-{row['val_fa_high']:.2f})"
    return dict(texture=texture, auroc=shown("image_auroc"),
                recall=shown("recall"), fa_field=shown("fa_rate_field"), fa_check=shown("fa_rate_check"),
                fa=shown("fa_rate"), inside=shown("fa_inside"), **{"val_fa (95%)": predicted},
                review=shown("review_share"), wrong=shown("wrong_outside_review"))


def data_arguments(description):
    """The argument parser of a benchmark on this set: which textures, where, with which counts and settings."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--part", choices=["tuning", "heldout", "all", *PHOTOS], default="tuning",
                        help="a part, all textures, or one texture")
    parser.add_argument("--work_dir", default=str(ROOT / "output" / "realphoto"), help="data and models")
    parser.add_argument("--cache", default=os.path.expanduser("~/.cache/patchcore-realphoto"),
                        help="where the photographs are kept once fetched")
    parser.add_argument("--config", default=str(ROOT / "configs" / "hr_patchcore.yaml"))
    parser.add_argument("-o", "--override", action="append", default=[], help="passed to train.py")
    parser.add_argument("--pre_ckpt_path", default=str(ROOT / "pretrained" / "mobilenet_v2_imagenet.ckpt"))
    parser.add_argument("--n_train", type=int, default=16)
    parser.add_argument("--n_test_good", type=int, default=10, help="good test images per half")
    parser.add_argument("--n_test_defect", type=int, default=2, help="test images per defect type per half")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tag", default=None, help="names this run's models folder (models-TAG) and JSON, so runs "
                                                    "with other settings keep theirs")
    return parser


def textures(part):
    """The textures ``part`` (a part, "all" or a texture's name) names."""
    return [name for name, spec in PHOTOS.items() if part in ("all", spec["part"], name)]


def main():
    parser = data_arguments(__doc__.strip().splitlines()[0])
    parser.add_argument("--json", default=None, help="default benchmarks/results/realphoto_<part>[-<tag>].json")
    args = parser.parse_args()
    names = textures(args.part)
    rows = [texture_row(name, args) for name in names]
    mean = mean_of(rows)
    print(format_table([table_row(row["texture"], row) for row in rows] + [table_row("mean", mean)], COLUMNS))
    suffix = f"-{args.tag}" if args.tag else ""
    path = args.json or str(ROOT / "benchmarks" / "results" / f"realphoto_{args.part}{suffix}.json")
    write_json(path, dict(part=args.part, tag=args.tag, config=args.config, overrides=args.override,
                          counts=dict(n_train=args.n_train, n_test_good=args.n_test_good,
                                      n_test_defect=args.n_test_defect, seed=args.seed),
                          rows=rows, mean=mean, sources={n: PHOTOS[n] for n in names}))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
