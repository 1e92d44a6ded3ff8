"""MVTec-AD layout: sorted lists of the category's training and test images as ``Sample``s.

Layout: ``<root>/<category>/train/good/*.png``, ``<root>/<category>/test/<type>/*.png``,
``<root>/<category>/ground_truth/<type>/<name>_mask.png``. Nothing is ever written here.
"""
import os

from src.data.folders import folder_test_samples, images_below
from src.data.sample import Sample
from src.utils.errors import InputError

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
    samples = [Sample(path, label=0, defect_type="good") for path in images_below(folder)]
    if not samples:
        raise InputError(folder, "no training images (train/good is empty)")
    return samples


def list_test_samples(dataset_path, category):
    root = category_root(dataset_path, category)
    test_dir = os.path.join(root, "test")
    if not os.path.isdir(test_dir):
        raise InputError(test_dir, "missing test folder")
    return folder_test_samples(test_dir, os.path.join(root, "ground_truth"))
