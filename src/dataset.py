"""MVTec-AD layout: sorted file lists, image loading and the 256 -> centre-crop 224 -> normalise transform.

Layout: ``<root>/<category>/train/good/*.png``, ``<root>/<category>/test/<type>/*.png``,
``<root>/<category>/ground_truth/<type>/<name>_mask.png``. Nothing is ever written here.
"""
import os
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError

from src.errors import InputError

MVTEC_CATEGORIES = ("bottle", "cable", "capsule", "carpet", "grid", "hazelnut", "leather", "metal_nut",
                    "pill", "screw", "tile", "toothbrush", "transistor", "wood", "zipper")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


@dataclass(frozen=True)
class Sample:
    """One image of the dataset; ``mask_path`` is None for normal images."""
    image_path: str
    defect_type: str
    label: int
    mask_path: str = None


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
    samples = [Sample(path, "good", 0) for path in _images_in(folder)]
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
                samples.append(Sample(path, defect_type, 0))
                continue
            stem = os.path.splitext(os.path.basename(path))[0]
            mask = os.path.join(gt_dir, defect_type, f"{stem}_mask.png")
            if not os.path.isfile(mask):
                raise InputError(mask, f"ground-truth mask missing for {path}")
            samples.append(Sample(path, defect_type, 1, mask))
    if not samples:
        raise InputError(test_dir, "no test images")
    return samples


def open_image(path, mode):
    """Decode fully (so truncated files fail here) and convert to ``mode``."""
    if not os.path.isfile(path):
        raise InputError(path, "file not found")
    try:
        with Image.open(path) as img:
            img.load()
            if mode == "L" and img.mode in ("I;16", "I;16B", "I"):
                img = img.point(lambda v: v > 0 and 255)  # 16-bit masks: any non-zero is defect
            return img.convert(mode)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise InputError(path, f"unreadable image ({exc})") from None


def _resize_shorter(img, size, resample):
    w, h = img.size
    if w <= h:
        new = (size, max(1, round(h * size / w)))
    else:
        new = (max(1, round(w * size / h)), size)
    return img.resize(new, resample)


def _center_crop(img, size):
    w, h = img.size
    left, top = (w - size) // 2, (h - size) // 2
    return img.crop((left, top, left + size, top + size))


class Transform:
    """Shorter side to ``resize`` (bilinear), centre crop ``imagesize``, ImageNet normalisation."""

    def __init__(self, resize=256, imagesize=224, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)):
        self.resize, self.imagesize = int(resize), int(imagesize)
        self.mean = np.asarray(mean, np.float32).reshape(3, 1, 1)
        self.std = np.asarray(std, np.float32).reshape(3, 1, 1)

    @classmethod
    def from_config(cls, data_config):
        return cls(data_config["resize"], data_config["imagesize"], data_config["mean"], data_config["std"])

    def rgb(self, path):
        """The resized, cropped RGB image as uint8 HxWx3 (for pictures)."""
        img = _center_crop(_resize_shorter(open_image(path, "RGB"), self.resize, Image.BILINEAR), self.imagesize)
        return np.asarray(img, np.uint8)

    def image(self, path):
        """Normalised float32 CHW tensor."""
        chw = self.rgb(path).transpose(2, 0, 1).astype(np.float32) / 255.0
        return (chw - self.mean) / self.std

    def mask(self, sample):
        """Binary uint8 mask (0/1) on the crop; zeros for normal images."""
        if sample.mask_path is None:
            return np.zeros((self.imagesize, self.imagesize), np.uint8)
        mask = open_image(sample.mask_path, "L")
        with Image.open(sample.image_path) as img:
            image_size = img.size
        if mask.size != image_size:
            raise InputError(sample.mask_path, f"mask size {mask.size[0]}x{mask.size[1]} differs from its image "
                                               f"{image_size[0]}x{image_size[1]} ({sample.image_path})")
        mask = _center_crop(_resize_shorter(mask, self.resize, Image.NEAREST), self.imagesize)
        return (np.asarray(mask) > 0).astype(np.uint8)


def batches(samples, batch_size):
    for start in range(0, len(samples), batch_size):
        yield samples[start:start + batch_size]
