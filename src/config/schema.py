"""The configuration as typed objects, parsed and validated once (``Config.from_dict``).

The YAML keys are HiAD's and the reference's (``configs/patchcore.yaml`` documents every entry); ``-o key=value``
overrides apply to the raw mapping before it is parsed (``src/config/loader.py``). ``Config.to_dict()`` gives the
validated mapping back, as stored in ``model.json``.
"""
from dataclasses import dataclass

from src.config.hr import TilingSettings, ValidationSettings, effective_val_config
from src.data.augment import check_augmentations
from src.decisions.thresholds import ThresholdPolicy
from src.patchcore.scoring import build_image_score
from src.patchcore.memory_bank import search_spec
from src.patchcore.sampling import build_sampler
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
    """The ``data`` section: the 224-pixel model's view, the input normalisation, the batch size and the training
    images' augmented copies (``src/data/augment.py``)."""
    resize: int
    imagesize: int
    mean: tuple
    std: tuple
    batch_size: int
    train_augment: tuple = ()

    @classmethod
    def from_dict(cls, data, source):
        if int(data["imagesize"]) > int(data["resize"]):
            raise InputError(source, "imagesize (the centre crop) cannot exceed resize")
        if len(data["mean"]) != 3 or len(data["std"]) != 3 or min(data["std"]) <= 0:
            raise InputError(source, "mean and std need three values each, std > 0")
        positive_int(data["batch_size"], f"{source}: batch_size")
        return cls(int(data["resize"]), int(data["imagesize"]), tuple(data["mean"]), tuple(data["std"]),
                   int(data["batch_size"]), check_augmentations(data.get("train_augment")))


def default_policy(tiled):
    """The image-score policy of a config that names none: the maximum patch score (the reference's) for the
    224-pixel model, the one-cell moving-average maximum of the map for a tiled one."""
    return "window_max" if tiled else "max"


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
class RunnerSettings:
    """The ``runner`` section: where training jobs run (``backend``, a name of ``src/training/runner.py``'s
    registry) and the options that backend is built with (entries left null are not passed)."""
    backend: str
    options: dict

    @classmethod
    def from_dict(cls, runner, source):
        runner = dict(runner or {"backend": "local"})   # models trained before the section: local
        backend = runner.pop("backend", None)
        if not isinstance(backend, str):
            raise InputError(source, f"runner.backend must be a name, got {backend!r}")
        return cls(backend, {key: value for key, value in runner.items() if value is not None})


@dataclass(frozen=True)
class Config:
    """A whole validated config. ``hr`` is None for the 224-pixel model; ``val_config`` is the validation the
    model trains with (``hr.val_config`` or the top-level one; None: none); ``decision`` how training sets the image
    and review thresholds (``postprocess.threshold`` and ``postprocess.review``); ``image_score`` the
    ``image_score`` section, its policy filled in (None: by tiling, see configs/patchcore.yaml)."""
    patch: PatchSettings
    data: DataSettings
    postprocess: dict
    hr: TilingSettings
    val_config: ValidationSettings
    decision: ThresholdPolicy
    image_score: dict
    runner: RunnerSettings
    raw: dict   # the validated mapping (model.json's "config")

    @classmethod
    def from_dict(cls, raw, source):
        """Parse and validate ``raw`` (sections patch, data, postprocess and optional hr); InputError on ``source``."""
        data = DataSettings.from_dict(raw["data"], source)
        raw["patch"]["reference_bn_update"] = reference_bn_side(raw["patch"].get("reference_bn_update"), data, source)
        patch = PatchSettings.from_dict(raw["patch"], source)
        try:
            val_config = ValidationSettings.from_dict(effective_val_config(raw))
            hr = None if "hr" not in raw else TilingSettings.from_dict(raw["hr"], val_config is not None)
            decision = ThresholdPolicy.from_postprocess(raw["postprocess"])
            raw["postprocess"]["search"] = search_spec(raw["postprocess"].get("search"))
            image_score = dict(raw["image_score"])
            image_score["policy"] = image_score["policy"] or default_policy(tiled=hr is not None)
            build_image_score(image_score, feature_stride=1)   # a bad name or parameter stops the run here
        except InputError as exc:
            raise InputError(source, str(exc)) from None
        return cls(patch, data, dict(raw["postprocess"]), hr, val_config, decision, image_score,
                   RunnerSettings.from_dict(raw.get("runner"), source), raw)

    def to_dict(self):
        return self.raw
