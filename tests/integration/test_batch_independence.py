"""A patch's score does not depend on the images it is scored with: an image alone and in a batch of 8 gets the same
scores (seeded WRN50 and MobileNetV2: the network, then the bank search with its distances computed again per row,
src/patchcore/memory_bank.py)."""
import numpy as np
import pytest

from conftest import noise_image
from src.patchcore.aggregation import to_patch_rows
from src.patchcore.memory_bank import MemoryBank

SETTINGS = {
    "wideresnet50": dict(layers_to_extract_from=["layer2", "layer3"], pretrain_embed_dimension=1024,
                         target_embed_dimension=1024),
    "mobilenet_v2": dict(layers_to_extract_from=["features.6", "features.13"], pretrain_embed_dimension=384,
                         target_embed_dimension=384)}


@pytest.mark.parametrize("backbone", sorted(SETTINGS))
def test_an_image_scores_the_same_alone_and_in_a_batch_of_eight(backbone):
    from src.app.cli import set_device
    from src.patchcore.featurizer import Featurizer
    from src.patchcore.extractor import build_extractor
    from src.tiling.plan import WholeImage
    set_device("CPU", 0)
    patch = dict(backbone_name=backbone, merge_size=3, anomaly_scorer_num_nn=1, reference_bn_update=None,
                 **SETTINGS[backbone])
    extractor = build_extractor(patch, None, seed=0)[0]
    images = [noise_image(seed, 128, 128) for seed in range(8)]
    whole = WholeImage((128, 128))

    def rows(batch):
        featurizer = Featurizer(extractor, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225], len(batch))
        return to_patch_rows(np.concatenate(list(featurizer.view_batches([(image, whole) for image in batch]))))[0]

    together, alone = rows(images), rows(images[:1])
    bank = MemoryBank.from_features(rows([noise_image(100 + seed, 128, 128) for seed in range(4)])[::3])
    for num_nn in (1, 3):
        batched = bank.patch_scores(together, num_nn)[:len(alone)]
        single = bank.patch_scores(alone, num_nn)
        assert np.abs(batched - single).max() <= 1e-6 * np.abs(single).max(), num_nn
        # and each distance is what it is: sum((x - m)^2) in float64 agrees to float32 rounding
        nearest = bank.index.search(alone, num_nn)[1]
        exact = ((bank.rows[nearest].astype(np.float64) - alone[:, None, :].astype(np.float64)) ** 2).sum(-1).mean(1)
        assert np.abs(single - exact).max() <= 1e-5 * np.abs(exact).max()


def test_a_trained_model_predicts_an_image_alone_as_in_a_batch_of_eight(small_model, small_dataset):
    """Through the predictor, as predict.py and the service run it (the small seeded WRN50 model): the image
    scores and maps of 8 test images predicted together equal those of each image predicted alone."""
    from src.inference.predict import load_model
    predictor = load_model(str(small_model[0]))
    predictor.model.batch_size = 8
    for featurizer in predictor.model.featurizers.values():
        featurizer.batch_size = 8
    paths = sorted(str(path) for path in (small_dataset / "synthetic_leather" / "test").glob("*/*.png"))
    paths.append(str(small_dataset / "synthetic_leather" / "train" / "good" / "000.png"))   # 7 test images + 1
    together = list(predictor.predict(paths))
    assert len(together) == 8
    for path, batched in zip(paths, together):
        (alone,) = predictor.predict(path)
        raw = alone.fields["raw_score"]
        assert abs(batched.fields["raw_score"] - raw) <= 1e-6 * abs(raw), path
        assert batched.label == alone.label
        assert np.abs(batched.raw_map - alone.raw_map).max() <= 1e-6 * np.abs(alone.raw_map).max(), path
