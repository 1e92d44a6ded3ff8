"""Training-time augmentation for textures: each training image also trains the banks flipped or rotated.

A texture's normal look does not depend on its orientation, while a few training images cover only a few of its
orientations; a flipped or rotated copy is normal surface the bank would otherwise not hold. ``data.train_augment``
names the copies (``TRAIN_AUGMENTATIONS``); validation and test images are never augmented. A 90 or 270 degree
rotation swaps width and height, so it needs square images.
"""
import numpy as np

from src.utils.errors import InputError
from src.utils.registry import Registry

TRAIN_AUGMENTATIONS = Registry("data.train_augment", "augmentation", {
    "hflip": lambda image: image[:, ::-1],
    "vflip": lambda image: image[::-1],
    "rot90": lambda image: np.rot90(image, 1),
    "rot180": lambda image: np.rot90(image, 2),
    "rot270": lambda image: np.rot90(image, 3),
})
SWAPS_SIDES = ("rot90", "rot270")


def check_augmentations(names):
    """The tuple of canonical names of a ``data.train_augment`` list (None or empty: none); InputError else."""
    if names is None:
        return ()
    if not isinstance(names, (list, tuple)) or len(set(names)) != len(names):
        raise InputError("data.train_augment", f"must be a list of distinct names, got {names!r}")
    return tuple(TRAIN_AUGMENTATIONS.canonical(name) for name in names)


def check_image_shape(names, image_size):
    """InputError when a rotation of ``names`` would change the (w, h) ``image_size``."""
    swapping = [name for name in names if name in SWAPS_SIDES]
    if swapping and image_size[0] != image_size[1]:
        raise InputError("data.train_augment", f"{swapping[0]} needs square images, the model's are "
                                               f"{image_size[0]}x{image_size[1]}")


def augmented(image, names):
    """``image`` (HxWxC) as it is, then each copy ``names`` asks for, contiguous."""
    return [image] + [np.ascontiguousarray(TRAIN_AUGMENTATIONS[name](image)) for name in names]
