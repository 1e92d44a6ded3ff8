"""PatchCore fit and predict on images already cut to the model's input size.

fit: images -> patch features -> coreset -> memory bank.  predict: images -> patch scores -> maps.
"""
import json
import logging
import time

import numpy as np
from tqdm import tqdm

import mindspore as ms

from src.anomaly_map import anomaly_map, image_score
from src.features import PatchFeatureExtractor, to_patch_rows
from src.folding import fold_batchnorm
from src.memory_bank import MemoryBank
from src.model import build_backbone
from src.sampling_methods import build_sampler

logger = logging.getLogger("patchcore")

PRETRAINED_HINT = ("WARNING: no --pre_ckpt_path given: the backbone uses seeded RANDOM weights, so detection is "
                   "near chance on real defects. Convert torchvision's wide_resnet50_2-95faca4d.pth with "
                   "'python src/pthtockpt.py --pth_path ...' (or run scripts/get_mobilenet_weights.sh for "
                   "mobilenet_v2) and pass the .ckpt.")


def extractor_key(patch_config):
    """What identifies the network ``build_extractor`` makes from ``patch_config`` (its cache key)."""
    keys = ("backbone_name", "layers_to_extract_from", "merge_size", "pretrain_embed_dimension",
            "target_embed_dimension")
    return json.dumps([patch_config[k] for k in keys])


def build_extractor(patch_config, pre_ckpt_path=None, seed=0, fold_bn=True):
    """The inference extractor (backbone + aggregation) used by train, eval and export alike.

    ``fold_bn``: fold each BatchNorm into its convolution (``src.folding``): the same function up to float
    rounding, one operator fewer per convolution. Off only to read the backbone's original parameters.
    """
    backbone = build_backbone(patch_config["backbone_name"], patch_config["layers_to_extract_from"],
                              pre_ckpt_path=pre_ckpt_path, seed=seed)
    if fold_bn:
        fold_batchnorm(backbone)
    extractor = PatchFeatureExtractor(backbone, patch_config)
    extractor.set_train(False)
    return extractor, bool(getattr(backbone, "pretrained", pre_ckpt_path is not None))


def extract_batches(extractor, load, items, batch_size, desc):
    """Yield (items, [B, D, h, w] features) batch by batch; ``load(item)`` gives a CHW float32 array."""
    with tqdm(total=len(items), desc=desc, unit="img", disable=None) as bar:
        for start in range(0, len(items), batch_size):
            chunk = items[start:start + batch_size]
            images = np.stack([load(item) for item in chunk])
            yield chunk, extractor(ms.Tensor(images)).asnumpy()
            bar.update(len(chunk))


def fit(extractor, load, items, patch_config, batch_size, seed):
    """Build the memory bank from normal images. Returns (bank, stats)."""
    t0 = time.perf_counter()
    features, filled = None, 0
    for _, batch in extract_batches(extractor, load, items, batch_size, "features"):
        b, d, h, w = batch.shape
        if features is None:  # one array for all rows, filled in place: no list of batches, no concatenated copy
            features, grid = np.empty((len(items) * h * w, d), np.float32), (h, w)
        features[filled:filled + b * h * w].reshape(b, h, w, d)[...] = batch.transpose(0, 2, 3, 1)
        filled += b * h * w
    t1 = time.perf_counter()
    logger.info("extracted %d patch features of dimension %d (%d images, grid %dx%d) in %.1f s",
                features.shape[0], features.shape[1], len(items), grid[0], grid[1], t1 - t0)
    sampler = build_sampler(patch_config["sampler"], float(patch_config["percentage"]), seed)
    coreset, indices = sampler.run(features)
    t2 = time.perf_counter()
    logger.info("coreset: %d of %d patches (%s, %.3g%%) in %.1f s", len(indices), features.shape[0],
                patch_config["sampler"], 100.0 * float(patch_config["percentage"]), t2 - t1)
    bank = MemoryBank.from_features(coreset)
    stats = {"num_images": len(items), "num_patches": int(features.shape[0]), "feature_grid": list(grid),
             "feature_seconds": round(t1 - t0, 3), "coreset_seconds": round(t2 - t1, 3)}
    return bank, stats


def predict(extractor, bank, load, items, num_nn, image_size, sigma, batch_size):
    """Yield (item, image score, anomaly map [H, W]) for each item."""
    for chunk, features in extract_batches(extractor, load, items, batch_size, "scoring"):
        patch_rows, (h, w) = to_patch_rows(features)
        grids = bank.patch_scores(patch_rows, num_nn).reshape(len(chunk), h, w)
        for item, grid in zip(chunk, grids):
            yield item, image_score(grid), anomaly_map(grid, image_size, sigma)
