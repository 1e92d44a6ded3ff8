"""MVTec-AD layout: sorted lists of the category's training and test images as ``Sample``s.

Layout: ``<root>/<category>/train/good/*.png``, ``<root>/<category>/test/<type>/*.png``,
``<root>/<category>/ground_truth/<type>/<name>_mask.png``. Nothing is ever written here.
"""
import os

from src.data.sample import IMAGE_EXTENSIONS, Sample
from src.utils.errors import InputError

MVTEC_CATEGORIES = ("bottle", "cable", "capsule", "carpet", "grid", "hazelnut", "leather", "metal_nut",
                    "pill", "screw", "tile", "toothbrush", "transistor", "wood", "zipper")


def _images_in(folder):
    return sorted(os.path.join(folder, name) for name in os.listdir(folder)
                  if name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith("."))


def category_root(dataset_path, category):
    if not os.path.isdir(dataset_path):
        raise InputError(dataset_path, "dataset path not found")
    root = os.path.join(dataset_path, category)
    if not os.path.isdir(root):
        known = sorted(d for d in os.listdir(dataset_path) if os.path.isdir(os.path.join(dataset_path, d)))
        raise InputError(root, f"unknown category '{category}' (found: {', '.join(known) or 'none'})")
    return root


def list_train_samples(dataset_path, category):
    folder = os.path.join(category_root(dataset_path, category), "train", "good")
    if not os.path.isdir(folder):
        raise InputError(folder, "missing train/good folder")
    samples = [Sample(path, label=0, defect_type="good") for path in _images_in(folder)]
    if not samples:
        raise InputError(folder, "no training images (train/good is empty)")
    return samples


def list_test_samples(dataset_path, category):
    test_dir = os.path.join(category_root(dataset_path, category), "test")
    if not os.path.isdir(test_dir):
        raise InputError(test_dir, "missing test folder")
    gt_dir = os.path.join(os.path.dirname(test_dir), "ground_truth")
    samples = []
    for defect_type in sorted(os.listdir(test_dir)):
        folder = os.path.join(test_dir, defect_type)
        if not os.path.isdir(folder):
            continue
        for path in _images_in(folder):
            if defect_type == "good":
                samples.append(Sample(path, label=0, defect_type=defect_type))
                continue
            stem = os.path.splitext(os.path.basename(path))[0]
            mask = os.path.join(gt_dir, defect_type, f"{stem}_mask.png")
            if not os.path.isfile(mask):
                raise InputError(mask, f"ground-truth mask missing for {path}")
            samples.append(Sample(path, mask, label=1, defect_type=defect_type))
    if not samples:
        raise InputError(test_dir, "no test images")
    return samples
