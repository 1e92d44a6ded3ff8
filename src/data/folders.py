"""Images in any folder layout: a folder of good images (searched recursively), a test folder with ``good/`` and
one folder per defect type, and optional masks. File lists are sorted; nothing is ever written here.

Masks of a test image ``TEST/<type>/<path>/<stem>.<ext>`` are looked up as ``MASKS/<type>/<path>/<stem>_mask.png``
(MVTec AD's name) or ``MASKS/<type>/<path>/<stem>.png``.
"""
import os

from src.data.sample import IMAGE_EXTENSIONS, Sample
from src.utils.errors import InputError


def images_below(folder):
    """Every image file below ``folder`` (hidden files and folders skipped), sorted by path."""
    found = []
    for parent, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [os.path.join(parent, name) for name in files
                  if name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith(".")]
    return sorted(found)


def folder_train_samples(train_dir):
    """The good images below ``train_dir``."""
    if not os.path.isdir(train_dir):
        raise InputError(train_dir, "training folder not found")
    samples = [Sample(path, label=0, defect_type="good") for path in images_below(train_dir)]
    if not samples:
        raise InputError(train_dir, f"no training images ({', '.join(IMAGE_EXTENSIONS)}) below the folder")
    return samples


def mask_of(mask_dir, defect_type, relative):
    stem = os.path.splitext(relative)[0]
    for candidate in (f"{stem}_mask.png", f"{stem}.png"):
        path = os.path.join(mask_dir, defect_type, candidate)
        if os.path.isfile(path):
            return path
    return None


def folder_test_samples(test_dir, mask_dir=None):
    """Labelled test images: ``test_dir/good/**`` normal, every other ``test_dir/<type>/**`` anomalous of that type.
    With ``mask_dir`` every anomalous image needs its mask (an InputError names the first missing one);
    without, there are no masks (image metrics only)."""
    if not os.path.isdir(test_dir):
        raise InputError(test_dir, "test folder not found")
    samples = []
    for defect_type in sorted(os.listdir(test_dir)):
        folder = os.path.join(test_dir, defect_type)
        if not os.path.isdir(folder) or defect_type.startswith("."):
            continue
        for path in images_below(folder):
            if defect_type == "good":
                samples.append(Sample(path, label=0, defect_type=defect_type))
                continue
            mask = None
            if mask_dir is not None:
                relative = os.path.relpath(path, folder)
                mask = mask_of(mask_dir, defect_type, relative)
                if mask is None:
                    expected = os.path.join(mask_dir, defect_type, os.path.splitext(relative)[0] + "_mask.png")
                    raise InputError(expected, f"ground-truth mask missing for {path}")
            samples.append(Sample(path, mask, label=1, defect_type=defect_type))
    if not samples:
        raise InputError(test_dir, "no test images (expected good/ and one folder per defect type)")
    return samples
