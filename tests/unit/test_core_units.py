"""Units of the core pipeline: config, the reference's view and masks, memory bank, anomaly map, staged output."""
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from scipy.ndimage import gaussian_filter

import src  # noqa: F401
from src.config.loader import load_config
from src.data.mvtec import list_test_samples, list_train_samples
from src.data.sample import ResizeCrop, Sample
from src.patchcore.featurizer import network_input
from src.patchcore.memory_bank import MemoryBank
from src.patchcore.scoring import build_image_score, compose_anomaly_map, gaussian_smooth
from src.tiling.plan import MultiResolutionHRImageSpliter
from src.utils.errors import InputError
from src.utils.io import staged_folder


def test_config_defaults_overrides_and_errors(tmp_path):
    config = load_config(None, ["percentage=0.01", "data.batch_size=2", "layers_to_extract_from=[layer2]"])
    assert config.patch.percentage == 0.01 and config.data.batch_size == 2
    assert config.patch.layers_to_extract_from == ("layer2",) and config.hr is None
    assert config.patch.backbone_name == "wideresnet50"
    assert config.to_dict()["patch"]["layers_to_extract_from"] == ["layer2"]   # as stored in model.json
    bad = tmp_path / "bad.yaml"
    bad.write_text("patch: {merge_size: 2}\n")
    with pytest.raises(InputError, match="merge_size"):
        load_config(str(bad))
    with pytest.raises(InputError, match="unknown config entry"):
        load_config(None, ["patch.nope=1"])
    with pytest.raises(InputError, match="not found"):
        load_config(str(tmp_path / "missing.yaml"))


def test_sampler_config_by_name_or_mapping_recorded_with_every_option(tmp_path):
    sampler = load_config(None, []).to_dict()["patch"]["sampler"]   # as stored in model.json
    assert sampler == {"name": "approx_greedy_coreset", "two_round_above": 400000, "chunk_size": 16384,
                       "oversample": 2.0}
    assert load_config(None, ["patch.sampler.two_round_above=0"]).patch.sampler["two_round_above"] == 0
    assert load_config(None, ["patch.sampler.two_round_above=null"]).patch.sampler["two_round_above"] is None
    named = tmp_path / "named.yaml"
    named.write_text("patch: {sampler: random}\n")   # a name alone: that sampler with its defaults
    assert load_config(str(named)).patch.sampler == {"name": "random"}
    assert load_config(None, ["sampler=identity"]).patch.sampler == {"name": "identity"}
    with pytest.raises(InputError, match="unknown sampler 'kmeans'"):
        load_config(None, ["patch.sampler.name=kmeans"])
    with pytest.raises(InputError, match="bad parameters for sampler"):
        load_config(None, ["patch.sampler={name: random, chunk_size: 3}"])


def write_png(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def test_dataset_lists_are_sorted_and_masks_are_nearest_binarised(tmp_path):
    cat = tmp_path / "cat"
    rng = np.random.default_rng(0)
    for name in ("b.png", "a.png"):
        write_png(cat / "train" / "good" / name, rng.integers(0, 255, (300, 300, 3), dtype=np.uint8))
    write_png(cat / "test" / "good" / "000.png", rng.integers(0, 255, (300, 300, 3), dtype=np.uint8))
    write_png(cat / "test" / "cut" / "000.png", rng.integers(0, 255, (300, 300, 3), dtype=np.uint8))
    mask = np.zeros((300, 300), np.uint8)
    mask[150, 150] = 1  # a single low-valued pixel: bilinear-then-truncate would erase it
    write_png(cat / "ground_truth" / "cut" / "000_mask.png", mask)
    assert [os.path.basename(s.image_path) for s in list_train_samples(str(tmp_path), "cat")] == ["a.png", "b.png"]
    tests = list_test_samples(str(tmp_path), "cat")
    assert [(s.defect_type, s.label) for s in tests] == [("cut", 1), ("good", 0)]
    viewed = tests[0].with_view(ResizeCrop(256, 224))
    out = viewed.load_mask()
    assert out.shape == (224, 224) and out.dtype == np.uint8 and set(np.unique(out)) == {0, 1}
    assert out.sum() >= 1
    image = network_input([viewed.load_image()], (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))[0]
    assert image.shape == (3, 224, 224) and image.dtype == np.float32
    rgb = viewed.load_image().astype(np.float32) / 255
    np.testing.assert_allclose(image[0], (rgb[:, :, 0] - 0.485) / 0.229, atol=1e-5)


def test_non_square_images_resize_shorter_side(tmp_path):
    path = tmp_path / "wide.png"
    write_png(path, np.zeros((300, 600, 3), np.uint8))
    assert Sample(str(path), view=ResizeCrop(256, 224)).load_image().shape == (224, 224, 3)


def test_missing_mask_is_an_error_naming_the_mask(tmp_path):
    write_png(tmp_path / "c" / "test" / "hole" / "000.png", np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(InputError, match="000_mask.png"):
        list_test_samples(str(tmp_path), "c")


def test_memory_bank_scores_are_mean_squared_nn_distances(tmp_path):
    rng = np.random.default_rng(0)
    bank_rows = rng.standard_normal((50, 8)).astype(np.float32)
    queries = rng.standard_normal((7, 8)).astype(np.float32)
    bank = MemoryBank.from_features(bank_rows, {"seed": 3})
    squared = ((queries[:, None, :] - bank_rows[None]) ** 2).sum(-1)
    expected = np.sort(squared, axis=1)[:, :3].mean(1)
    np.testing.assert_allclose(bank.patch_scores(queries, num_nn=3), expected, rtol=1e-4)
    bank.save(str(tmp_path))
    loaded = MemoryBank.load(str(tmp_path))
    assert loaded.metadata["seed"] == 3 and len(loaded) == 50
    np.testing.assert_array_equal(loaded.patch_scores(queries), bank.patch_scores(queries))
    with open(tmp_path / "faiss.index", "r+b") as f:
        f.seek(-4, os.SEEK_END)
        f.write(b"\x00\x01\x02\x03")
    with pytest.raises(InputError, match="sha256"):
        MemoryBank.load(str(tmp_path))
    assert MemoryBank.load(str(tmp_path), index=False).metadata["seed"] == 3   # bank.json alone: index not read


def test_anomaly_map_matches_reference_upsampling_and_smoothing():
    grid = np.random.default_rng(1).random((28, 28)).astype(np.float32)
    torch_up = F.interpolate(torch.from_numpy(grid)[None, None], size=(224, 224), mode="bilinear",
                             align_corners=False)[0, 0].numpy()
    (tile,) = MultiResolutionHRImageSpliter((224, 224), 224)   # a 224-pixel model: one tile covers the image
    amap = compose_anomaly_map([(tile, grid)], (224, 224), sigma=4)
    np.testing.assert_allclose(amap, gaussian_filter(torch_up, sigma=4), atol=1e-5)
    assert build_image_score("max")(amap, [grid]) == pytest.approx(grid.max())


@pytest.mark.parametrize("shape, sigma", [((2048, 96), 4.0), ((8, 8), 4.0), ((3, 40), 2.5), ((1, 1), 4.0)])
def test_gaussian_smoothing_is_the_references_gaussian_filter_at_any_size(shape, sigma):
    # maps smaller than the kernel (4 sigma each side) are mirrored as scipy mirrors them
    amap = np.random.default_rng(2).random(shape).astype(np.float32)
    smoothed = gaussian_smooth(amap, sigma)
    assert smoothed.dtype == np.float32 and smoothed.shape == shape
    np.testing.assert_allclose(smoothed, gaussian_filter(amap, sigma=sigma), rtol=2e-6, atol=1e-7)


def test_staged_folder_replaces_on_success_and_keeps_old_on_failure(tmp_path):
    final = tmp_path / "result"
    with staged_folder(str(final)) as stage:
        (open(os.path.join(stage, "a.txt"), "w")).write("one")
    assert (final / "a.txt").read_text() == "one"
    with pytest.raises(RuntimeError):
        with staged_folder(str(final)) as stage:
            (open(os.path.join(stage, "a.txt"), "w")).write("two")
            raise RuntimeError("boom")
    assert (final / "a.txt").read_text() == "one"
    assert os.listdir(tmp_path) == ["result"]


def test_resize_crop_view_is_the_references_pil_transform(tmp_path):
    """Shorter side to 256 with Pillow's bilinear filter, then the centre 224 crop, as torchvision's
    Resize(256) + CenterCrop(224) on a PIL image: the same pixels, for a non-square image."""
    path = tmp_path / "wide.png"
    write_png(path, np.random.default_rng(2).integers(0, 256, (300, 410, 3), dtype=np.uint8))
    with Image.open(path) as img:
        resized = img.convert("RGB").resize((round(410 * 256 / 300), 256), Image.BILINEAR)
    left, top = (resized.size[0] - 224) // 2, (resized.size[1] - 224) // 2
    expected = np.asarray(resized.crop((left, top, left + 224, top + 224)))
    assert np.array_equal(Sample(str(path), view=ResizeCrop(256, 224)).load_image(), expected)
