"""The configuration as typed objects, parsed and validated once (``Config.from_dict``).

The YAML keys are HiAD's and the reference's (``configs/patchcore.yaml`` documents every entry); ``-o key=value``
overrides apply to the raw mapping before it is parsed (``src/config/loader.py``). ``Config.to_dict()`` gives the
validated mapping back, as stored in ``model.json``.
"""
from dataclasses import dataclass, field

from src.config.hr import check_thumbnail, check_val_config, effective_val_config, validate_hr
from src.decisions.thresholds import parse_threshold_policy
from src.patchcore.scoring import build_image_score
from src.patchcore.sampling import build_sampler
from src.data.sample import as_width_height
from src.tiling.plan import check_fusion_weights
from src.utils.checks import positive_int
from src.utils.errors import InputError

@dataclass(frozen=True)
class PatchSettings:
    """The ``patch`` section: the network, its aggregation and the memory bank."""
    backbone_name: str
    layers_to_extract_from: tuple
    merge_size: int
    percentage: float
    pretrain_embed_dimension: int
    target_embed_dimension: int
    sampler: dict   # the sampler's name and every option (defaults filled in), as recorded in model.json
    anomaly_scorer_num_nn: int
    reference_bn_update: int = None   # the side of the ones image of the authors' BatchNorm update; None: off

    @classmethod
    def from_dict(cls, patch, source):
        if not 0 < float(patch["percentage"]) <= 1:
            raise InputError(source, "percentage must be in (0, 1]")
        if int(patch["merge_size"]) < 1 or int(patch["merge_size"]) % 2 == 0:
            raise InputError(source, "merge_size must be a positive odd number")
        for key in ("pretrain_embed_dimension", "target_embed_dimension", "anomaly_scorer_num_nn"):
            positive_int(patch[key], f"{source}: {key}")
        if not patch["layers_to_extract_from"]:
            raise InputError(source, "layers_to_extract_from must name at least one layer")
        # built once here so that a bad name or option stops the run before any image is read
        sampler = build_sampler(patch["sampler"], patch["percentage"]).options()
        return cls(**{**patch, "layers_to_extract_from": tuple(patch["layers_to_extract_from"]), "sampler": sampler})

    def to_dict(self):
        """The section as the detectors, extractors and bank files take it."""
        return {"backbone_name": self.backbone_name, "layers_to_extract_from": list(self.layers_to_extract_from),
                "merge_size": self.merge_size, "percentage": self.percentage,
                "pretrain_embed_dimension": self.pretrain_embed_dimension,
                "target_embed_dimension": self.target_embed_dimension, "sampler": dict(self.sampler),
                "anomaly_scorer_num_nn": self.anomaly_scorer_num_nn, "reference_bn_update": self.reference_bn_update}


@dataclass(frozen=True)
class DataSettings:
    """The ``data`` section: the 224-pixel model's view, the input normalisation and the batch size."""
    resize: int
    imagesize: int
    mean: tuple
    std: tuple
    batch_size: int

    @classmethod
    def from_dict(cls, data, source):
        if int(data["imagesize"]) > int(data["resize"]):
            raise InputError(source, "imagesize (the centre crop) cannot exceed resize")
        if len(data["mean"]) != 3 or len(data["std"]) != 3 or min(data["std"]) <= 0:
            raise InputError(source, "mean and std need three values each, std > 0")
        positive_int(data["batch_size"], f"{source}: batch_size")
        return cls(int(data["resize"]), int(data["imagesize"]), tuple(data["mean"]), tuple(data["std"]),
                   int(data["batch_size"]))


@dataclass(frozen=True)
class ThumbnailSettings:
    """``hr.thumbnail``: the whole image at ``size`` = (w, h) with a bank of its own, merged by ``merge``;
    ``patch`` holds the patch entries it sets differently from the tiles."""
    size: tuple
    merge: str
    patch: dict = field(default_factory=dict)


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
    def from_dict(cls, hr, source):
        def size(value, name):
            return None if value is None else as_width_height(value, name)
        thumbnail = check_thumbnail(hr["thumbnail"], True)   # validate_hr checked it has a val_config
        weights = check_fusion_weights(hr["fusion_weights"], hr["ds_factors"])
        return cls(size(hr["image_size"], "hr.image_size"), as_width_height(hr["patch_size"], "hr.patch_size"),
                   size(hr["stride"], "hr.stride"), None if hr["ds_factors"] is None else tuple(hr["ds_factors"]),
                   None if weights is None else tuple(weights), hr["task_generator"],
                   dict(hr["task_generator_params"] or {}), hr["workers"],
                   None if thumbnail is None else ThumbnailSettings(
                       tuple(thumbnail["thumbnail_size"]), thumbnail["merge"],
                       {k: v for k, v in thumbnail.items() if k not in ("thumbnail_size", "merge")}),
                   hr["eval_resize"], hr["vis_size"])


def reference_bn_side(value, data, source):
    """``patch.reference_bn_update`` as stored: None (off) or the side of the ones image (true: data.imagesize,
    the authors' input shape; a model.json keeps the number)."""
    if value is None or value is False:
        return None
    if value is True:
        return data.imagesize
    if isinstance(value, int) and value > 0:
        return value
    raise InputError(source, f"reference_bn_update must be true or false, got {value!r}")


@dataclass(frozen=True)
class Config:
    """A whole validated config. ``hr`` is None for the 224-pixel model; ``val_config`` is the validation the
    model trains with (``hr.val_config`` or the top-level one; None: none); ``threshold`` the image-threshold
    policy (``postprocess.threshold``); ``image_score`` the ``image_score`` section, its policy filled in (None:
    by tiling, see configs/patchcore.yaml)."""
    patch: PatchSettings
    data: DataSettings
    postprocess: dict
    hr: TilingSettings
    val_config: dict
    threshold: str
    image_score: dict
    runner: dict   # where training jobs run: {"backend": name} (src/training/runner.py)
    raw: dict   # the validated mapping (model.json's "config")

    @classmethod
    def from_dict(cls, raw, source):
        """Parse and validate ``raw`` (sections patch, data, postprocess and optional hr); InputError on ``source``."""
        data = DataSettings.from_dict(raw["data"], source)
        raw["patch"]["reference_bn_update"] = reference_bn_side(raw["patch"].get("reference_bn_update"), data, source)
        patch = PatchSettings.from_dict(raw["patch"], source)
        hr = None
        if "hr" in raw:
            validate_hr(raw, source)
            hr = TilingSettings.from_dict(raw["hr"], source)
        try:
            val_config = check_val_config(effective_val_config(raw))
            threshold = raw["postprocess"].get("threshold", "f1")
            parse_threshold_policy(threshold)
            image_score = dict(raw["image_score"])
            if image_score["policy"] is None:
                image_score["policy"] = "max" if hr is None else "window_max"
            build_image_score(image_score, feature_stride=1)   # a bad name or parameter stops the run here
        except InputError as exc:
            raise InputError(source, str(exc)) from None
        runner = dict(raw.get("runner") or {"backend": "local"})   # models trained before the section: local
        if not isinstance(runner.get("backend"), str):
            raise InputError(source, f"runner.backend must be a name, got {runner.get('backend')!r}")
        return cls(patch, data, dict(raw["postprocess"]), hr, val_config, threshold, image_score, runner, raw)

    def to_dict(self):
        return self.raw
