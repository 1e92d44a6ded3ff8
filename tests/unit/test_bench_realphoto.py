"""The real-photo benchmark's data (benchmarks/bench_realphoto.py): the photographs' train, field and check areas are
disjoint, inside the (enlarged) photograph and leave its unusable parts out; crops come from their area, masks are
exactly the changed pixels, the halves are named, the set is reproducible and never reused with other counts; the
row's decision columns; and a photograph that is not the recorded one is refused. The photographs themselves come
from Debian packages and are fetched only when the benchmark runs."""
import json

import cv2
import numpy as np
import pytest
from scipy.stats import binomtest

from benchmarks import bench_realphoto
from src.evaluation.metrics import format_table

SIZE = 96
N_TYPES = len(bench_realphoto.DEFECT_TYPES)
# Each photograph's usable surface as shipped (x0, y0, x1, y1): the parts left out must stay out once enlarged.
USABLE = {"wood": (0, 704, 2560, 1920), "embossed": (0, 0, 2880, 2160), "bark": (0, 0, 2100, 3391),
          "moss": (0, 0, 2560, 1150)}


@pytest.fixture()
def photo(tmp_path, monkeypatch):
    """A 200 x 120 "photograph" of smooth noise, registered as texture ``fake``, enlarged 1.5 times to 300 x 180 and
    cut in three columns; returns its path and the enlarged pixels (RGB)."""
    rng = np.random.default_rng(0)
    image = cv2.GaussianBlur(rng.integers(0, 256, (120, 200, 3)).astype(np.uint8), (0, 0), 2)
    path = tmp_path / "fake.png"
    cv2.imwrite(str(path), image)
    spec = dict(part="tuning", package="none", version="0", file="fake.png", sha256="0" * 64, author="test",
                licence="none", what="noise", shape=(120, 200), scale=1.5,
                train=(200, 0, 300, 180), field=(0, 0, 100, 180), check=(100, 0, 200, 180))
    monkeypatch.setitem(bench_realphoto.PHOTOS, "fake", spec)
    enlarged = cv2.resize(cv2.cvtColor(image, cv2.COLOR_BGR2RGB), (300, 180), interpolation=cv2.INTER_CUBIC)
    return path, enlarged


def read(path):
    return cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


@pytest.mark.parametrize("name", sorted(USABLE))
def test_the_areas_are_disjoint_inside_the_usable_surface_and_hold_a_crop(name):
    spec = bench_realphoto.PHOTOS[name]
    assert bench_realphoto.area_faults(spec) == []
    x0, y0, x1, y1 = (round(v * spec["scale"]) for v in USABLE[name])
    for area in bench_realphoto.AREAS:
        ax0, ay0, ax1, ay1 = spec[area]
        assert x0 <= ax0 and y0 <= ay0 and ax1 <= x1 and ay1 <= y1, (area, spec[area])


def test_area_faults_names_an_area_outside_too_small_or_overlapping():
    spec = dict(shape=(100, 200), scale=2.0, train=(0, 0, 100, 200), field=(50, 0, 150, 200), check=(300, 0, 401, 90))
    faults = bench_realphoto.area_faults(spec, size=100)
    assert faults == ["check (300, 0, 401, 90) is not inside the 400x200 photograph",
                      "check (300, 0, 401, 90) holds no 100x100 crop",
                      "train (0, 0, 100, 200) and field (50, 0, 150, 200) overlap"]


def test_crops_come_from_their_area_and_masks_are_the_changed_pixels(tmp_path, photo):
    path, pixels = photo
    category = bench_realphoto.generate("fake", path, tmp_path / "data", 3, 2, 1, seed=0, size=SIZE)
    folder = tmp_path / "data" / category
    generation = json.loads((folder / "generation.json").read_text())
    assert generation["source"]["licence"] == "none" and generation["image_size"] == SIZE
    assert (generation["n_train"], generation["n_test_good"], generation["n_test_defect"]) == (3, 2, 1)
    assert len(generation["files"]) == 3 + 2 * (2 + N_TYPES)
    assert len({entry["image"] for entry in generation["files"]}) == len(generation["files"])   # unique names
    for entry in generation["files"]:
        x, y = entry["crop_xy"]
        x0, y0, x1, y1 = bench_realphoto.PHOTOS["fake"][entry["half"]]
        assert x0 <= x and x + SIZE <= x1 and y0 <= y and y + SIZE <= y1, entry
        assert entry["image"].startswith("train/") == (entry["half"] == "train")
        image, clean = read(folder / entry["image"]), pixels[y:y + SIZE, x:x + SIZE]
        changed = (image != clean).any(axis=-1)
        if "mask" in entry:
            mask = cv2.imread(str(folder / entry["mask"]), cv2.IMREAD_GRAYSCALE) > 0
            assert mask.any() and np.array_equal(changed, mask), entry["image"]
            assert bench_realphoto.DEFECT_PX[0] <= entry["defect"]["size_px"] <= bench_realphoto.DEFECT_PX[1]
        else:
            assert not changed.any(), entry["image"]


def test_halves_name_each_halfs_test_files(tmp_path, photo):
    path, _ = photo
    category = bench_realphoto.generate("fake", path, tmp_path, 2, 3, 2, seed=1, size=SIZE)
    parts = bench_realphoto.halves(tmp_path / category)
    assert sorted(parts) == ["check", "field"] and not set(parts["field"]) & set(parts["check"])
    for paths in parts.values():
        assert paths == sorted(paths)
        assert sum(p.startswith("test/good/") for p in paths) == 3 and len(paths) == 3 + 2 * N_TYPES
    assert parts["field"][:3] == ["test/color/000.png", "test/color/001.png", "test/contamination/000.png"]
    assert [p for p in parts["check"] if p.startswith("test/good/")] == [f"test/good/{i:03d}.png" for i in (3, 4, 5)]
    on_disk = {p.relative_to(tmp_path / category).as_posix() for p in (tmp_path / category / "test").rglob("*.png")}
    assert on_disk == set(parts["field"]) | set(parts["check"])


def test_the_same_seed_writes_the_same_bytes(tmp_path, photo):
    path, _ = photo
    digests = []
    for run, seed in (("a", 3), ("b", 3), ("c", 4)):
        folder = tmp_path / run / bench_realphoto.generate("fake", path, tmp_path / run, 2, 1, 1, seed=seed, size=SIZE)
        digests.append({p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*.png"))})
    assert digests[0] == digests[1] and len(digests[0]) == 2 + 2 * (1 + 2 * N_TYPES)
    assert digests[0] != digests[2]


def test_a_set_is_reused_only_with_the_same_settings(tmp_path, photo, monkeypatch):
    path, _ = photo
    generate, generated = bench_realphoto.generate, []

    def counting(name, photo_path, root, *settings, **options):
        generated.append(settings)
        return generate(name, photo_path, root, *settings, **options)

    monkeypatch.setattr(bench_realphoto, "fetch_photo", lambda name, cache: path)
    monkeypatch.setattr(bench_realphoto, "generate", counting)

    def prepare(*counts):
        return bench_realphoto.prepared("fake", tmp_path, "cache", *counts, seed=0, size=SIZE)

    first, category = prepare(2, 1, 1)
    assert prepare(2, 1, 1) == (first, category) and generated == [(2, 1, 1, 0, SIZE)]   # the same settings: reused
    other, _ = prepare(2, 2, 1)
    assert other != first and generated[-1] == (2, 2, 1, 0, SIZE)                       # other counts: their own set
    assert json.loads((other / category / "generation.json").read_text())["n_test_good"] == 2
    record = first / category / "generation.json"
    record.write_text(json.dumps(dict(json.loads(record.read_text()), n_test_good=5)))
    prepare(2, 1, 1)
    assert len(generated) == 3 and json.loads(record.read_text())["n_test_good"] == 1    # a record that differs
    assert len(bench_realphoto.halves(first / category)["check"]) == 1 + N_TYPES


def test_measured_rates_per_half_and_overall():
    def entry(path, label, flagged):
        return dict(path=f"realphoto_x/{path}", defect_type="good" if not label else "stain", label=label,
                    image_score=0.5, predicted_anomalous=flagged)
    scores = [entry("test/good/000.png", 0, True), entry("test/good/001.png", 0, False),
              entry("test/stain/000.png", 1, True), entry("test/good/002.png", 0, False),
              entry("test/stain/001.png", 1, False)]
    parts = {"field": ["test/good/000.png", "test/good/001.png", "test/stain/000.png"],
             "check": ["test/good/002.png", "test/stain/001.png"]}
    assert bench_realphoto.measured_rates(scores, parts, "realphoto_x") == dict(
        fa_rate_field=0.5, recall_field=1.0, fa_rate_check=0.0, recall_check=0.0, fa_rate=1 / 3, recall=0.5)
    with pytest.raises(SystemExit, match="not the generated test images"):
        bench_realphoto.measured_rates(scores[:-1], parts, "realphoto_x")


def test_the_predicted_false_alarm_rate_counts_a_score_at_the_threshold_and_has_its_wilson_interval():
    items = [dict(label=0, score=s) for s in (0.1, 0.2, 0.3, 0.5, 0.9)] + [dict(label=1, score=0.1)]
    meta = dict(validation=dict(items=items), thresholds=dict(image=0.5, pixel=0.7))
    predicted = bench_realphoto.predicted_false_alarms(meta)
    interval = binomtest(2, 5).proportion_ci(method="wilson")
    assert predicted == dict(val_fa_rate=0.4, val_fa_low=pytest.approx(interval.low),
                             val_fa_high=pytest.approx(interval.high), val_normal=5)
    assert bench_realphoto.predicted_false_alarms(dict(meta, validation=dict(items=items[-1:])))["val_fa_rate"] is None


def test_the_table_shows_the_key_columns_within_120_characters():
    row = dict(texture="embossed", image_auroc=0.6312345, pixel_auroc=0.7312345, recall=0.95, fa_rate_field=1 / 3,
               review_share=0.2, wrong_outside_review=0.05,
               fa_rate_check=0.7, fa_rate=0.5166, val_fa_rate=0.1, val_fa_low=0.0277, val_fa_high=0.3010,
               fa_inside=False, train_s=70.1)
    mean = bench_realphoto.mean_of([row, dict(row, fa_inside=True, fa_rate_check=None)])
    assert mean["fa_inside"] == 0.5 and mean["fa_rate_check"] == 0.7 and "texture" not in mean
    table = format_table([bench_realphoto.table_row("embossed", row), bench_realphoto.table_row("mean", mean)],
                         bench_realphoto.COLUMNS)
    assert max(map(len, table.splitlines())) <= 120
    cells = [[cell.strip() for cell in line.split("|")[1:-1]] for line in table.splitlines()]
    assert cells[0] == bench_realphoto.COLUMNS
    assert cells[2] == ["embossed", "0.63", "0.95", "0.33", "0.7", "0.52", "0.10 (0.03-0.30)", "0", "0.2", "0.05"]
    assert cells[3] == ["mean", "0.63", "0.95", "0.33", "0.7", "0.52", "0.1", "0.5", "0.2", "0.05"]


def test_a_photograph_that_is_not_the_recorded_one_is_refused(tmp_path, photo):
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "fake.png").write_bytes(b"not the photograph")
    with pytest.raises(SystemExit, match="fake.png: sha256 differs"):
        bench_realphoto.fetch_photo("fake", cache)
