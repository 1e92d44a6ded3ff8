"""Dataset check (PaddleX's ``check_dataset``): what a category's folders hold and what is wrong with them.

``check_dataset(train_dir, test_dir, mask_dir)`` reads every image and mask once and returns a report: per split
and defect type the image count, sizes, modes and bit depths; and every problem with its path: unreadable or
truncated files, missing masks, masks of another size than their image, masks that are not binary, duplicate
images (same content) and test images that are also training images. It also gives two pictures: a histogram of
the image sizes and a grid of a few (seeded) random samples with their masks outlined.
"""
import collections
import os

import cv2
import numpy as np
from PIL import Image

from src.data.folders import mask_of, images_below
from src.data.sample import Sample, binary_pixels, raw_pixels
from src.utils.errors import InputError
from src.utils.io import sha256_of

BIT_DEPTHS = {"1": 1, "L": 8, "P": 8, "RGB": 8, "RGBA": 8, "LA": 8, "CMYK": 8, "I;16": 16, "I;16B": 16, "I;16L": 16,
              "I": 32, "F": 32}


def _header(path):
    with Image.open(path) as img:
        return img.size, img.mode


def _inspect_image(path, problems):
    """(size, mode) of a readable image, else None (the problem recorded)."""
    try:
        Sample(path).load_image()   # a full decode: truncated files fail here
        return _header(path)
    except InputError as exc:
        problems.append({"path": path, "problem": exc.problem})
    except OSError as exc:
        problems.append({"path": path, "problem": f"unreadable image ({exc})"})
    return None


def _inspect_mask(mask, image_path, image_size, problems):
    try:
        raw = raw_pixels(mask)
    except InputError as exc:
        problems.append({"path": mask, "problem": exc.problem})
        return
    if (raw.shape[1], raw.shape[0]) != tuple(image_size):
        problems.append({"path": mask, "problem": f"mask size {raw.shape[1]}x{raw.shape[0]} differs from its image "
                                                  f"{image_size[0]}x{image_size[1]} ({image_path})"})
    values = np.unique(raw)
    if len(values) > 2 or (len(values) == 2 and values[0] != 0):
        problems.append({"path": mask, "problem": f"mask is not binary ({len(values)} distinct values, e.g. "
                                                  f"{', '.join(str(v) for v in values[:4])})"})


def check_dataset(train_dir, test_dir=None, mask_dir=None, samples_in_grid=8, seed=0):
    """(report, pictures): see the module docstring. ``pictures``: {"sizes": RGB histogram, "samples": RGB grid}."""
    problems, groups, hashes, grid = [], {}, collections.defaultdict(list), []
    splits = [("train", "good", images_below(train_dir))] if os.path.isdir(train_dir) else []
    if not splits:
        problems.append({"path": train_dir, "problem": "training folder not found"})
    if test_dir is not None:
        if not os.path.isdir(test_dir):
            problems.append({"path": test_dir, "problem": "test folder not found"})
        else:
            splits += [("test", kind, images_below(os.path.join(test_dir, kind))) for kind in sorted(os.listdir(test_dir))
                       if os.path.isdir(os.path.join(test_dir, kind)) and not kind.startswith(".")]
    for split, kind, paths in splits:
        entry = groups.setdefault(split, {}).setdefault(kind, {"count": 0, "sizes": {}, "modes": {}, "bit_depths": {}})
        if not paths:
            problems.append({"path": os.path.join(test_dir if split == "test" else train_dir, kind)
                             if split == "test" else train_dir, "problem": "no images"})
        for path in paths:
            entry["count"] += 1
            header = _inspect_image(path, problems)
            if header is None:
                continue
            (width, height), mode = header
            for key, value in (("sizes", f"{width}x{height}"), ("modes", mode),
                               ("bit_depths", str(BIT_DEPTHS.get(mode, "unknown")))):
                entry[key][value] = entry[key].get(value, 0) + 1
            hashes[sha256_of(path)].append((split, path))
            mask = None
            if split == "test" and kind != "good" and mask_dir is not None:
                mask = mask_of(mask_dir, kind, os.path.relpath(path, os.path.join(test_dir, kind)))
                if mask is None:
                    problems.append({"path": path, "problem": f"ground-truth mask missing (looked in "
                                                              f"{os.path.join(mask_dir, kind)})"})
                else:
                    _inspect_mask(mask, path, (width, height), problems)
            grid.append((path, mask, kind))
    for copies in hashes.values():
        if len(copies) > 1:
            paths = [path for _, path in copies]
            for split, path in copies[1:]:
                problems.append({"path": path, "problem": f"duplicate of {paths[0]} (same content)"})
            if {"train", "test"} <= {split for split, _ in copies}:
                test_copy = next(path for split, path in copies if split == "test")
                train_copy = next(path for split, path in copies if split == "train")
                problems.append({"path": test_copy, "problem": f"test image is also a training image ({train_copy})"})
    report = {"check_pass": not problems, "train_dir": train_dir, "test_dir": test_dir, "mask_dir": mask_dir,
              "splits": groups, "problems": problems}
    chosen = [grid[k] for k in sorted(np.random.default_rng(seed).permutation(len(grid))[:samples_in_grid])]
    return report, {"sizes": size_histogram(groups), "samples": sample_grid(chosen)}


def size_histogram(groups, height=360, width=640):
    """RGB uint8 bar chart: how many images have each size, over all splits."""
    counts = collections.Counter()
    for kinds in groups.values():
        for entry in kinds.values():
            counts.update(entry["sizes"])
    canvas = np.full((height, width, 3), 255, np.uint8)
    cv2.putText(canvas, "images per size", (10, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 0, 0), 1, cv2.LINE_AA)
    if counts:
        sizes = sorted(counts, key=lambda s: tuple(int(v) for v in s.split("x")))
        bar_width = min(90, max(4, (width - 40) // len(sizes) - 6))
        top = max(counts.values())
        for position, size in enumerate(sizes):
            x = 20 + position * (bar_width + 6)
            bar = int((height - 110) * counts[size] / top)
            cv2.rectangle(canvas, (x, height - 60 - bar), (x + bar_width, height - 60), (70, 110, 200), -1)
            cv2.putText(canvas, str(counts[size]), (x, height - 66 - bar), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0),
                        1, cv2.LINE_AA)
            cv2.putText(canvas, size, (x, height - 40 + 14 * (position % 2)), cv2.FONT_HERSHEY_SIMPLEX, 0.4,
                        (0, 0, 0), 1, cv2.LINE_AA)
    return canvas


def sample_grid(chosen, cell=192, columns=4):
    """RGB uint8 grid of (path, mask or None, defect type): each image shrunk to ``cell`` pixels, its mask outlined
    in red, its type written on it (unreadable ones are left grey)."""
    rows = max(1, -(-len(chosen) // columns))
    canvas = np.full((rows * cell, columns * cell, 3), 200, np.uint8)
    for position, (path, mask, kind) in enumerate(chosen):
        try:
            image = cv2.resize(Sample(path).load_image(), (cell, cell), interpolation=cv2.INTER_AREA)
            if mask is not None:
                outline = cv2.resize(binary_pixels(raw_pixels(mask)), (cell, cell), interpolation=cv2.INTER_NEAREST)
                contours, _ = cv2.findContours(outline, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
                cv2.drawContours(image, contours, -1, (255, 0, 0), 2)
        except (InputError, OSError, cv2.error):
            continue
        cv2.putText(image, kind, (6, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (255, 255, 255), 2, cv2.LINE_AA)
        y, x = (position // columns) * cell, (position % columns) * cell
        canvas[y:y + cell, x:x + cell] = image
    return canvas
