"""The settings of the ``hr`` section (high-resolution mode), its thumbnail branch and the validation set, typed
and checked once: defaults of the config file live in ``configs/patchcore.yaml``; the defaults of a HiAD-style
``val_config`` mapping are the fields' own.

Everything a bad config can get wrong is caught here when the config is loaded, before any image is read or any
output written: tile sizes (including ``patch_size`` larger than ``image_size``), ``fusion_weights`` against
``ds_factors``, the task generator's name and parameters, the thumbnail and validation settings.
"""
from dataclasses import dataclass, field

from src.data.sample import as_width_height
from src.data.synthesizers import as_synthesizer
from src.tiling.plan import MultiResolutionHRImageSpliter, check_fusion_weights
from src.tiling.tasks import build_task_generator
from src.utils.checks import positive_int
from src.utils.errors import InputError

THUMBNAIL_MERGES = ("max", "mean")
# Patch-section keys the thumbnail branch may set differently from the tile branch.
THUMBNAIL_PATCH_KEYS = {"backbone_name", "layers_to_extract_from", "merge_size", "percentage",
                        "pretrain_embed_dimension", "target_embed_dimension", "sampler", "anomaly_scorer_num_nn",
                        "reference_bn_update"}


def _number_in(value, name, low, high, high_open):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high or \
            (high_open and value == high):
        raise InputError(name, f"must be in [{low}, {high}{')' if high_open else ']'}, got {value!r}")
    return value


@dataclass(frozen=True)
class ValidationSettings:
    """HiAD's ``val_config``: validation images among the normal training images, ``anomaly_ratio`` of them given a
    synthetic defect by ``synthesizers`` (``src/training/validation.py``); ``evaluators`` score them after training.
    ``folds`` (with ``val_sample_ratio`` 0): the validation images in the banks are scored without the entries of
    every training image in their fold, not only their own (None). Numbers are kept as given (model.json records
    them)."""
    synthesizers: tuple = ()   # ``anomaly_syn_fn``: names, config dicts or synthesizer objects
    val_sample_ratio: float = 0.2
    anomaly_ratio: float = 0.5
    max_patch_number: int = None
    val_images: int = 10
    evaluators: tuple = None
    folds: int = None

    KEYS = {"anomaly_syn_fn": "synthesizers", "val_sample_ratio": "val_sample_ratio", "anomaly_ratio": "anomaly_ratio",
            "max_patch_number": "max_patch_number", "val_images": "val_images", "evaluators": "evaluators",
            "folds": "folds"}

    def __post_init__(self):
        for spec in self.synthesizers:
            as_synthesizer(spec)
        _number_in(self.val_sample_ratio, "val_config.val_sample_ratio", 0, 1, True)
        _number_in(self.anomaly_ratio, "val_config.anomaly_ratio", 0, 1, False)
        positive_int(self.max_patch_number, "val_config.max_patch_number", optional=True)
        positive_int(self.val_images, "val_config.val_images", optional=True)
        if positive_int(self.folds, "val_config.folds", optional=True) is not None:
            if self.folds < 2:
                raise InputError("val_config.folds", "must be at least 2 (null: each image without its own "
                                                     f"entries), got {self.folds}")
            if self.val_sample_ratio != 0:
                raise InputError("val_config.folds", "needs val_sample_ratio 0: held-out validation images are "
                                                     "not in the banks")

    @classmethod
    def from_dict(cls, val_config):
        """The settings of a ``val_config`` mapping (None: no validation); settings pass through."""
        if val_config is None or isinstance(val_config, cls):
            return val_config
        if not isinstance(val_config, dict):
            raise InputError("val_config", f"must be a mapping, got {val_config!r}")
        unknown = set(val_config) - set(cls.KEYS)
        if unknown:
            raise InputError("val_config", f"unknown entries {sorted(unknown)} "
                                           f"(known: {', '.join(sorted(cls.KEYS))})")
        given = {cls.KEYS[key]: value for key, value in val_config.items()}
        synthesizers = given.get("synthesizers") or []
        given["synthesizers"] = tuple(synthesizers) if isinstance(synthesizers, (list, tuple)) else (synthesizers,)
        return cls(**given)


@dataclass(frozen=True)
class ThumbnailSettings:
    """``hr.thumbnail``: the whole image at ``size`` = (w, h) with a bank of its own, merged by ``merge``;
    ``patch`` holds the patch entries it sets differently from the tiles."""
    size: tuple
    merge: str = "max"
    patch: dict = field(default_factory=dict)

    @classmethod
    def from_dict(cls, thumbnail, has_validation):
        """``{"thumbnail_size": int or [w, h], "merge": "max"|"mean", <patch keys>}`` -> settings (None: none)."""
        if thumbnail is None or isinstance(thumbnail, cls):
            return thumbnail
        if not isinstance(thumbnail, dict) or "thumbnail_size" not in thumbnail:
            raise InputError("hr.thumbnail", f"must be a mapping with thumbnail_size, got {thumbnail!r}")
        unknown = set(thumbnail) - THUMBNAIL_PATCH_KEYS - {"thumbnail_size", "merge"}
        if unknown:
            raise InputError("hr.thumbnail", f"unknown entries {sorted(unknown)}")
        merge = thumbnail.get("merge", cls.merge)
        if merge not in THUMBNAIL_MERGES:
            raise InputError("hr.thumbnail.merge", f"must be one of {', '.join(THUMBNAIL_MERGES)}, got {merge!r}")
        if not has_validation:
            raise InputError("hr.thumbnail", "needs val_config: both branches are normalised on held-out normal "
                                             "images before their maps are merged")
        return cls(tuple(as_width_height(thumbnail["thumbnail_size"], "thumbnail_size")), merge,
                   {key: value for key, value in thumbnail.items() if key in THUMBNAIL_PATCH_KEYS})

    def patch_config(self, patch_config):
        """The patch section for the thumbnail branch: the tile branch's, with the thumbnail's own entries."""
        return {**patch_config, **self.patch}


@dataclass(frozen=True)
class TilingSettings:
    """The ``hr`` section (high-resolution mode), validated against the rest of the config."""
    image_size: tuple
    patch_size: tuple
    stride: tuple
    ds_factors: tuple
    fusion_weights: tuple
    task_generator: str
    task_generator_params: dict
    workers: int
    thumbnail: ThumbnailSettings
    eval_resize: int
    vis_size: int

    @classmethod
    def from_dict(cls, hr, has_validation):
        """The settings of an ``hr`` mapping; ``has_validation``: the config trains with a validation set."""
        image_size = _optional_size(hr["image_size"], "hr.image_size")
        patch_size = as_width_height(hr["patch_size"], "hr.patch_size")
        stride = _optional_size(hr["stride"], "hr.stride")
        if image_size is not None:  # else checked against the first training image
            MultiResolutionHRImageSpliter(image_size, patch_size, stride, hr["ds_factors"])
        elif stride is not None and any(s > p for s, p in zip(stride, patch_size)):
            raise InputError("hr.stride", f"{stride} exceeds patch_size {patch_size}: pixels would be skipped")
        weights = check_fusion_weights(hr["fusion_weights"], hr["ds_factors"])
        params = hr["task_generator_params"] or {}
        if not isinstance(params, dict):
            raise InputError("hr.task_generator_params", f"must be a mapping, got {params!r}")
        build_task_generator(hr["task_generator"], **params)
        for key in ("workers", "eval_resize", "vis_size"):
            positive_int(hr[key], f"hr.{key}", optional=True)
        return cls(image_size, patch_size, stride, None if hr["ds_factors"] is None else tuple(hr["ds_factors"]),
                   None if weights is None else tuple(weights), hr["task_generator"], dict(params), hr["workers"],
                   ThumbnailSettings.from_dict(hr["thumbnail"], has_validation), hr["eval_resize"], hr["vis_size"])


def _optional_size(value, name):
    return None if value is None else as_width_height(value, name)


def effective_val_config(config):
    """The validation settings a config trains with: ``hr.val_config`` when a tiled config sets it (HiAD's
    place), else the top-level ``val_config`` (None: no validation images, no thresholds)."""
    hr = config.get("hr") or {}
    return hr.get("val_config") if hr.get("val_config") is not None else config.get("val_config")

