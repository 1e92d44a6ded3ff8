"""The feature extractor (backbone + local aggregation) of a patch config, and the check of its weights."""
import json
import os

from src.backbones.folding import fold_batchnorm
from src.backbones.networks import build_backbone, reference_batch_norm_update
from src.patchcore.aggregation import PatchFeatureExtractor
from src.utils.io import sha256_of
from src.utils.errors import InputError

def extractor_key(patch_config):
    """What identifies the network ``build_extractor`` makes from ``patch_config`` (its cache key)."""
    keys = ("backbone_name", "layers_to_extract_from", "merge_size", "pretrain_embed_dimension",
            "target_embed_dimension", "reference_bn_update")
    return json.dumps([patch_config.get(k) for k in keys])


def build_extractor(patch_config, pre_ckpt_path=None, seed=0, fold_bn=True):
    """The inference extractor (backbone + aggregation) used by train, eval and export alike.

    ``fold_bn``: fold each BatchNorm into its convolution (``src.backbones.folding``): the same function up to float
    rounding, one operator fewer per convolution. Off only to read the backbone's original parameters.
    ``patch_config["reference_bn_update"]`` (a side length): the authors' BatchNorm update first (configs/patchcore.yaml).
    """
    backbone = build_backbone(patch_config["backbone_name"], patch_config["layers_to_extract_from"],
                              pre_ckpt_path=pre_ckpt_path, seed=seed)
    if patch_config.get("reference_bn_update"):
        reference_batch_norm_update(backbone, int(patch_config["reference_bn_update"]))
    if fold_bn:
        fold_batchnorm(backbone)
    extractor = PatchFeatureExtractor(backbone, patch_config)
    extractor.set_train(False)
    return extractor, bool(getattr(backbone, "pretrained", pre_ckpt_path is not None))


def check_backbone_checkpoint(model_metadata, ckpt_path):
    """The backbone weights ``ckpt_path`` (None: seeded random) must be the ones the model was trained with."""
    expected = model_metadata.get("backbone_checkpoint_sha256")
    if ckpt_path and not os.path.isfile(ckpt_path):
        raise InputError(ckpt_path, "backbone checkpoint not found")
    given = sha256_of(ckpt_path) if ckpt_path else None
    if given == expected:
        return
    if expected is None:
        raise InputError(ckpt_path, "backbone weights differ from the ones the model was trained with (seeded "
                                    "random weights): give no backbone checkpoint")
    if given is None:
        raise InputError("backbone checkpoint", f"the model was trained with the backbone checkpoint of sha256 "
                                                f"{expected[:16]}...; pass it (--pre_ckpt_path / --ckpt_file)")
    raise InputError(ckpt_path, f"backbone weights differ from the ones the model was trained with "
                                f"(sha256 {given[:16]}... instead of {expected[:16]}...)")
