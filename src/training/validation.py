"""The validation set built from normal training images (HiAD ``val_config``), some given a synthetic defect
(``src/data/synthesizers.py``).

``build_validation_set`` holds out a seeded share of the normal training images and gives a share of them a
synthetic anomaly (HiAD's way), or, with a share of 0, draws ``val_images`` that stay in the banks and uses each
twice: as it is and with a synthetic anomaly. So 10 training images give 10 normal and 10 anomalous validation
images, whatever the tile plan. Those in the banks are scored without their own bank entries (leave-own-out), or,
with ``folds``, without the entries of every training image in their fold: real textures overlap from image to
image, so only surface the bank has not seen predicts the false alarms of new images. The anomalies go
round-robin over the synthesizers; images are loaded and altered only when an item is loaded, so a large
validation set costs no memory until used.
"""
import os
from dataclasses import dataclass

import numpy as np

from src.config.hr import ValidationSettings
from src.data.sample import Sample, check_array
from src.data.synthesizers import as_synthesizer
from src.utils.checks import positive_int
from src.utils.errors import InputError
from src.utils.io import sha256_of


@dataclass(frozen=True, eq=False)   # eq=False: the source may be an array, which has no boolean ==
class ValidationItem:
    """One validation image: normal training image ``source_index`` of the inputs, altered by ``synthesizer``
    (None: left normal) with ``numpy.random.default_rng([seed, source_index])``; ``in_bank``: the image also
    trains the banks (then it is scored without its own entries, or with ``fold`` (its number) without those of
    every training image in ``fold_sources``: ``excluded_sources``)."""
    source_index: int
    source: object   # the HxWx3 uint8 array or Sample it comes from
    synthesizer: object
    seed: int
    in_bank: bool = False
    fold: int = None
    fold_sources: tuple = None   # the training positions of its fold, sorted, its own included

    @property
    def label(self):
        return 0 if self.synthesizer is None else 1

    @property
    def excluded_sources(self):
        """The training images (sorted positions) whose bank entries its scores must not use, or None."""
        if not self.in_bank:
            return None
        return (self.source_index,) if self.fold_sources is None else self.fold_sources

    def load(self):
        """(HxWx3 uint8 image, HxW uint8 0/1 mask); the same every call."""
        image = self.source.load_image() if isinstance(self.source, Sample) else self.source
        if self.synthesizer is None:
            return image.copy(), np.zeros(image.shape[:2], np.uint8)
        return self.synthesizer(image, np.random.default_rng([self.seed, self.source_index]))

    def to_sample(self):
        """The loaded item as an in-memory Sample (mask given only for a synthetic anomaly)."""
        image, mask = self.load()
        return Sample(image, mask if self.label else None, label=self.label)

    def describe(self):
        """JSON-ready record of where the item comes from."""
        name = None if self.synthesizer is None else getattr(self.synthesizer, "name", repr(self.synthesizer))
        record = {"source_index": self.source_index, "label": self.label, "synthesizer": name, "in_bank": self.in_bank}
        if self.fold is not None:   # leave-own-out items keep the record (and the banks' fingerprints) they had
            record.update(fold=self.fold, excluded_sources=list(self.fold_sources))
        return record


@dataclass(frozen=True, eq=False)
class LabelledItem:
    """A real labelled validation image (``--val_dir``): a Sample, normal or with a defect, with or without mask."""
    sample: Sample
    excluded_sources = None   # not in the banks

    @property
    def label(self):
        return self.sample.label

    def load(self):
        return self.sample.load_image(), self.sample.load_mask()

    def describe(self):
        return {"path": self.sample.image_path, "sha256": sha256_of(self.sample.image_path), "label": self.label,
                "defect_type": self.sample.defect_type, "mask": self.sample.mask_path}


@dataclass(frozen=True)
class ValidationSet:
    train_indices: list   # inputs left for training, ascending
    items: list           # ValidationItems, in ascending (source_index, label)
    held_out: bool        # True: the items' images are not in the banks; False: they are (scored without some entries)
    folds: list = None    # with folds: the sorted training positions of each fold


def split_folds(count, folds, seed):
    """[sorted tuple of positions] per fold: positions 0..``count``-1 in ``folds`` folds as equal as possible, by a
    permutation from the first child stream of ``seed`` (the validation draw keeps the seed's own stream)."""
    if folds > count:
        raise InputError("val_config.folds", f"{folds} folds for {count} training images: at most one fold per image")
    rng = np.random.default_rng(np.random.SeedSequence(seed).spawn(1)[0])
    return [tuple(sorted(int(position) for position in fold))
            for fold in np.array_split(rng.permutation(count), folds)]


def build_validation_set(images_or_samples, synthesizers, val_sample_ratio=ValidationSettings.val_sample_ratio,
                         seed=0, anomaly_ratio=ValidationSettings.anomaly_ratio, max_items=None,
                         val_images=ValidationSettings.val_images, folds=ValidationSettings.folds):
    """Choose validation images among the normal training images, deterministically from ``seed``.

    ``images_or_samples``: HxWx3 uint8 arrays, Samples or image paths. With ``val_sample_ratio`` > 0 (HiAD's
    ``val_sample_ratio``) that share of them, rounded, at least one and never all, is held out of training;
    ``max_items`` caps that number (e.g. HiAD's ``max_patch_number`` // tiles per image); ``anomaly_ratio``
    (HiAD's ``p``) of them, rounded, get a synthetic anomaly, with 0 < anomaly_ratio < 1 and at least two
    validation images at least one of each label. With ``val_sample_ratio`` 0 nothing is held out (every image
    trains the bank, as in the reference): ``val_images`` of them (at most ``max_items``) are drawn, and each is
    a normal validation item and, when ``anomaly_ratio`` > 0, also an anomalous one (``anomaly_ratio`` 1: only
    the anomalous); their scores are computed without their own bank entries or, with ``folds`` (>= 2, at most
    one per image), without those of every image in their fold (``split_folds``; the draw is the same). The
    anomalous items cycle through ``synthesizers`` (objects, names or config dicts) in a seeded order, so each is
    used about equally.
    """
    sources = [Sample(s) if isinstance(s, (str, os.PathLike)) else s for s in images_or_samples]
    for position, source in enumerate(sources):
        if not isinstance(source, Sample):
            check_array(source, f"image {position}", (3,))
    held_out = val_sample_ratio != 0
    if held_out and len(sources) < 2:
        raise InputError("val_sample_ratio", f"holding out validation images needs at least 2 normal images, "
                                              f"got {len(sources)}")
    synthesizers = [as_synthesizer(s) for s in synthesizers]   # built once; the settings' check passes objects
    ValidationSettings(tuple(synthesizers), val_sample_ratio, anomaly_ratio, None, val_images,
                       folds=folds)   # checks them
    positive_int(max_items, "max_items", optional=True)
    if anomaly_ratio > 0 and not synthesizers:
        raise InputError("anomaly_syn_fn", "anomaly_ratio > 0 needs at least one synthesizer")

    rng = np.random.default_rng(seed)
    if held_out:
        n_val = min(len(sources) - 1, max(1, round(val_sample_ratio * len(sources))), max_items or len(sources))
    else:
        n_val = min(len(sources), val_images or len(sources), max_items or len(sources))
    chosen = [int(index) for index in rng.permutation(len(sources))[:n_val]]
    order = rng.permutation(len(synthesizers)) if synthesizers else []

    def synthesizer(k):
        return synthesizers[order[k % len(order)]]

    if held_out:
        n_anomalous = round(anomaly_ratio * n_val)
        if 0 < anomaly_ratio < 1 and n_val >= 2:
            n_anomalous = min(max(n_anomalous, 1), n_val - 1)
        pairs = [(index, synthesizer(k) if k < n_anomalous else None) for k, index in enumerate(chosen)]
    else:   # every drawn image as it is and with an anomaly: as many of each as images drawn
        pairs = [(index, None) for index in chosen if anomaly_ratio < 1]
        pairs += [(index, synthesizer(k)) for k, index in enumerate(chosen) if anomaly_ratio > 0]
    pairs.sort(key=lambda pair: (pair[0], pair[1] is not None))
    fold_list = None if folds is None else split_folds(len(sources), folds, seed)
    fold_of = {index: (k, fold) for k, fold in enumerate(fold_list or []) for index in fold}
    items = [ValidationItem(index, sources[index], syn, seed, not held_out, *fold_of.get(index, (None, None)))
             for index, syn in pairs]
    train = [index for index in range(len(sources)) if not held_out or index not in dict(pairs)]
    return ValidationSet(train, items, held_out, fold_list)
