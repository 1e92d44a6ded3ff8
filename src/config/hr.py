"""The ``hr`` config section (high-resolution mode): defaults live in ``configs/patchcore.yaml``, checks here.

Everything a bad config can get wrong is caught by :func:`validate_hr` when the config is loaded, before
any image is read or any output written: tile sizes (including ``patch_size`` larger than ``image_size``),
``fusion_weights`` against ``ds_factors``, the task generator's name and parameters, the thumbnail and
validation settings.
"""
from src.utils.checks import positive_int
from src.utils.errors import InputError
from src.data.synthesizers import as_synthesizer
from src.tiling.tasks import build_task_generator
from src.data.sample import as_width_height
from src.tiling.plan import MultiResolutionHRImageSpliter, check_fusion_weights

VAL_CONFIG_KEYS = {"anomaly_syn_fn", "val_sample_ratio", "val_images", "max_patch_number", "anomaly_ratio"}
THUMBNAIL_MERGES = ("max", "mean")
# Patch-section keys the thumbnail branch may set differently from the tile branch.
THUMBNAIL_PATCH_KEYS = {"backbone_name", "layers_to_extract_from", "merge_size", "percentage",
                        "pretrain_embed_dimension", "target_embed_dimension", "sampler", "anomaly_scorer_num_nn",
                        "reference_bn_update"}


def _optional_size(value, name):
    return None if value is None else as_width_height(value, name)


def thumbnail_patch_config(patch_config, thumbnail):
    """The patch section for the thumbnail branch: the tile branch's, with the thumbnail's own entries."""
    return {**patch_config, **{k: v for k, v in thumbnail.items() if k in THUMBNAIL_PATCH_KEYS}}


def check_thumbnail(thumbnail, has_val_config):
    """``{"thumbnail_size": int or [w, h], "merge": "max"|"mean", <patch keys>}`` -> normalised copy or None."""
    if thumbnail is None:
        return None
    if not isinstance(thumbnail, dict) or "thumbnail_size" not in thumbnail:
        raise InputError("hr.thumbnail", f"must be a mapping with thumbnail_size, got {thumbnail!r}")
    unknown = set(thumbnail) - THUMBNAIL_PATCH_KEYS - {"thumbnail_size", "merge"}
    if unknown:
        raise InputError("hr.thumbnail", f"unknown entries {sorted(unknown)}")
    merge = thumbnail.get("merge", "max")
    if merge not in THUMBNAIL_MERGES:
        raise InputError("hr.thumbnail.merge", f"must be one of {', '.join(THUMBNAIL_MERGES)}, got {merge!r}")
    if not has_val_config:
        raise InputError("hr.thumbnail", "needs val_config: both branches are normalised on held-out normal "
                                         "images before their maps are merged")
    return {**thumbnail, "thumbnail_size": list(as_width_height(thumbnail["thumbnail_size"], "thumbnail_size")),
            "merge": merge}


def check_val_config(val_config):
    """Validate a ``val_config`` mapping (synthesizers given by name or config dict); returns it or None."""
    if val_config is None:
        return None
    if not isinstance(val_config, dict):
        raise InputError("val_config", f"must be a mapping, got {val_config!r}")
    unknown = set(val_config) - VAL_CONFIG_KEYS - {"evaluators"}
    if unknown:
        raise InputError("val_config", f"unknown entries {sorted(unknown)} (known: {', '.join(sorted(VAL_CONFIG_KEYS))})")
    synthesizers = val_config.get("anomaly_syn_fn") or []
    for spec in synthesizers if isinstance(synthesizers, (list, tuple)) else [synthesizers]:
        as_synthesizer(spec)
    ratio = val_config.get("val_sample_ratio", 0.2)
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 <= ratio < 1:
        raise InputError("val_config.val_sample_ratio", f"must be in [0, 1), got {ratio!r}")
    anomaly_ratio = val_config.get("anomaly_ratio", 0.5)
    if isinstance(anomaly_ratio, bool) or not isinstance(anomaly_ratio, (int, float)) or not 0 <= anomaly_ratio <= 1:
        raise InputError("val_config.anomaly_ratio", f"must be in [0, 1], got {anomaly_ratio!r}")
    positive_int(val_config.get("max_patch_number"), "val_config.max_patch_number", optional=True)
    positive_int(val_config.get("val_images"), "val_config.val_images", optional=True)
    return val_config


def effective_val_config(config):
    """The validation settings a config trains with: ``hr.val_config`` when a tiled config sets it (HiAD's
    place), else the top-level ``val_config`` (None: no validation images, no thresholds)."""
    hr = config.get("hr") or {}
    return hr.get("val_config") if hr.get("val_config") is not None else config.get("val_config")


def validate_hr(config, source):
    """Check the ``hr`` section of a loaded config (see the module docstring); raises InputError."""
    hr = config["hr"]
    try:
        image_size = _optional_size(hr["image_size"], "hr.image_size")
        patch_size = as_width_height(hr["patch_size"], "hr.patch_size")
        stride = _optional_size(hr["stride"], "hr.stride")
        if image_size is not None:  # else checked against the first training image
            MultiResolutionHRImageSpliter(image_size, patch_size, stride, hr["ds_factors"])
        elif stride is not None and any(s > p for s, p in zip(stride, patch_size)):
            raise InputError("hr.stride", f"{stride} exceeds patch_size {patch_size}: pixels would be skipped")
        check_fusion_weights(hr["fusion_weights"], hr["ds_factors"])
        params = hr["task_generator_params"] or {}
        if not isinstance(params, dict):
            raise InputError("hr.task_generator_params", f"must be a mapping, got {params!r}")
        build_task_generator(hr["task_generator"], **params)
        check_thumbnail(hr["thumbnail"], effective_val_config(config) is not None)
        check_val_config(hr["val_config"])
        for key in ("workers", "eval_resize", "vis_size"):
            positive_int(hr[key], f"hr.{key}", optional=True)
    except InputError as exc:
        raise InputError(source, str(exc)) from None
