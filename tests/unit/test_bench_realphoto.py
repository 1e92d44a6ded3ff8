"""The real-photo benchmark's data (benchmarks/bench_realphoto.py): test crops never touch the training part,
masks are exactly the changed pixels, the set is reproducible, and a photograph that is not the recorded one
is refused. The photographs themselves come from Debian packages and are fetched only when the benchmark runs."""
import json

import cv2
import numpy as np
import pytest

from benchmarks import bench_realphoto

SIZE = 96


@pytest.fixture()
def photo(tmp_path, monkeypatch):
    """A 300 x 200 "photograph" of smooth noise, registered as texture ``fake`` with disjoint parts."""
    rng = np.random.default_rng(0)
    image = cv2.GaussianBlur(rng.integers(0, 256, (200, 300, 3)).astype(np.uint8), (0, 0), 2)
    path = tmp_path / "fake.png"
    cv2.imwrite(str(path), image)
    spec = dict(part="tuning", package="none", version="0", file="fake.png", sha256="0" * 64, author="test",
                licence="none", what="noise", test=(0, 0, 130, 200), train=(130, 0, 300, 200))
    monkeypatch.setitem(bench_realphoto.PHOTOS, "fake", spec)
    return path, cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def read(path):
    return cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def test_crops_come_from_their_part_and_masks_are_the_changed_pixels(tmp_path, photo):
    path, pixels = photo
    category = bench_realphoto.generate("fake", path, tmp_path / "data", 3, 2, 1, seed=0, size=SIZE)
    folder = tmp_path / "data" / category
    generation = json.loads((folder / "generation.json").read_text())
    assert generation["source"]["licence"] == "none" and generation["image_size"] == SIZE
    assert len(generation["files"]) == 3 + 2 + len(bench_realphoto.DEFECT_TYPES)
    for entry in generation["files"]:
        x, y = entry["crop_xy"]
        x0, y0, x1, y1 = bench_realphoto.PHOTOS["fake"]["train" if entry["image"].startswith("train/") else "test"]
        assert x0 <= x and x + SIZE <= x1 and y0 <= y and y + SIZE <= y1, entry
        image, clean = read(folder / entry["image"]), pixels[y:y + SIZE, x:x + SIZE]
        changed = (image != clean).any(axis=-1)
        if "mask" in entry:
            mask = cv2.imread(str(folder / entry["mask"]), cv2.IMREAD_GRAYSCALE) > 0
            assert mask.any() and np.array_equal(changed, mask), entry["image"]
            assert bench_realphoto.DEFECT_PX[0] <= entry["defect"]["size_px"] <= bench_realphoto.DEFECT_PX[1]
        else:
            assert not changed.any(), entry["image"]
    # No test crop overlaps the training part (x >= 130 here).
    assert all(e["crop_xy"][0] + SIZE <= 130 for e in generation["files"] if e["image"].startswith("test/"))


def test_the_same_seed_writes_the_same_bytes(tmp_path, photo):
    path, _ = photo
    digests = []
    for run in ("a", "b"):
        folder = tmp_path / run / bench_realphoto.generate("fake", path, tmp_path / run, 2, 1, 1, seed=3, size=SIZE)
        digests.append({p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*.png"))})
    assert digests[0] == digests[1] and len(digests[0]) == 2 + 1 + 2 * len(bench_realphoto.DEFECT_TYPES)


def test_a_photograph_that_is_not_the_recorded_one_is_refused(tmp_path, photo):
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "fake.png").write_bytes(b"not the photograph")
    with pytest.raises(SystemExit, match="fake.png: sha256 differs"):
        bench_realphoto.fetch_photo("fake", cache)
