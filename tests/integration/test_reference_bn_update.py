"""``reference_bn_update``: train.py + eval.py against a torch transcription of the authors' load-then-embed sequence.

The authors' ``PatchCore.load`` runs one forward pass of a ones image through the backbone, up to the last
extracted layer, while the backbone is still in train mode: every BatchNorm on the way updates its running
statistics (momentum 0.1) before the model is put in eval mode. With ``-o reference_bn_update=true`` our scores
equal that sequence's; without it, the eval-mode one. Seeded WideResNet50-2 weights with BatchNorm statistics far
from the identity, the identity sampler (the bank is every training patch), 64-pixel crops.
"""
import numpy as np
import pytest
import torch

import src  # noqa: F401
from conftest import read_json, run_cli
from src.data.mvtec import list_test_samples, list_train_samples
from src.data.sample import ResizeCrop
from src.patchcore.featurizer import network_input
from benchmarks.torch_reference import TorchWideResNet50_2, literal_reference, randomize_batch_norm_stats

CATEGORY = "synthetic_leather"
MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
SMALL = ["-o", "resize=72", "-o", "imagesize=64", "-o", "batch_size=4", "-o", "sampler=identity",
         "-o", "val_config=null"]


def write_category(root, seed):
    """An MVTec-layout category: smooth training images (a colour and a gradient), uniform-noise test images.
    The nearest-patch distances are then large next to the features' squared norms: faiss's float32 distances
    (norm expansion) round to about 1e-7 of those norms, which for near-duplicate patches (similar textures,
    random weights) is up to 1e-3 of the distance itself."""
    import cv2
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 1, 72, dtype=np.float32)[None, :, None]
    smooth = [np.clip(rng.uniform(60, 200, 3) + 50 * ramp, 0, 255).astype(np.uint8).repeat(72, 0) for _ in range(3)]
    images = {"train/good": smooth, "test/good": [rng.integers(0, 256, (72, 72, 3), np.uint8) for _ in range(2)],
              "test/stain": [rng.integers(0, 256, (72, 72, 3), np.uint8) for _ in range(2)]}
    for folder, arrays in images.items():
        (root / CATEGORY / folder).mkdir(parents=True)
        for i, array in enumerate(arrays):
            cv2.imwrite(str(root / CATEGORY / folder / f"{i:03d}.png"), array)
    (root / CATEGORY / "ground_truth" / "stain").mkdir(parents=True)
    for i in range(len(images["test/stain"])):
        mask = np.zeros((72, 72), np.uint8)
        mask[20:40, 20:40] = 255
        cv2.imwrite(str(root / CATEGORY / "ground_truth" / "stain" / f"{i:03d}_mask.png"), mask)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """(dataset root, converted checkpoint, the torch network's state dict)."""
    from src.backbones.torch_checkpoint import convert
    root = tmp_path_factory.mktemp("reference_bn")
    write_category(root / "data", seed=0)
    torch.manual_seed(0)
    net = TorchWideResNet50_2().eval()
    randomize_batch_norm_stats(net, seed=1)
    torch.save(net.state_dict(), root / "wrn.pth")
    ckpt = convert(root / "wrn.pth", "wide_resnet50_2", root / "wrn.ckpt", layers=["layer2", "layer3"])
    return root, ckpt, net.state_dict()


def viewed_inputs(root, split):
    """[N, 3, 64, 64] network inputs of a split's images, in eval.py's order."""
    view = ResizeCrop(72, 64)
    listing = list_train_samples if split == "train" else list_test_samples
    samples = listing(str(root / "data"), CATEGORY)
    return network_input([s.with_view(view).load_image() for s in samples], MEAN, STD)


def torch_scores(state_dict, train, test, bn_update):
    """The authors' sequence: (train-mode forward of ones up to layer3, if ``bn_update``), eval, embed the
    training images into the bank (every patch), score each test image by its largest nearest-patch distance."""
    net = TorchWideResNet50_2()
    net.load_state_dict(state_dict)
    with torch.no_grad():
        if bn_update:
            net.train()
            x = net.maxpool(net.relu(net.bn1(net.conv1(torch.ones(1, 3, 64, 64)))))
            for name in ("layer1", "layer2", "layer3"):   # the forward stops after the last extracted layer
                x = getattr(net, name)(x)
        net.eval()

        def embed(images):
            taps = net.taps(torch.from_numpy(images))
            return literal_reference([taps["layer2"], taps["layer3"]], 3, 1024, 1024).astype(np.float64)
        bank = embed(train)
        patches = embed(test).reshape(len(test), -1, bank.shape[1])
    distances = ((patches[:, :, None, :] - bank[None, None]) ** 2).sum(-1).min(-1)
    return distances.max(axis=1)


@pytest.mark.parametrize("bn_update", [True, False])
def test_scores_equal_the_reference_sequence_with_and_without_the_batchnorm_update(reference, tmp_path, bn_update):
    root, ckpt, state_dict = reference
    common = ["--dataset_path", str(root / "data"), "--category", CATEGORY, "--output_dir", str(tmp_path),
              "--pre_ckpt_path", str(ckpt)]
    overrides = SMALL + ["-o", f"reference_bn_update={str(bn_update).lower()}"]
    trained = run_cli("train.py", *common, *overrides)
    assert trained.returncode == 0, trained.stderr
    evaluated = run_cli("eval.py", *common)
    assert evaluated.returncode == 0, evaluated.stderr
    ours = np.array([s["image_score"] for s in read_json(tmp_path / CATEGORY / "eval" / "scores.json")])
    train, test = viewed_inputs(root, "train"), viewed_inputs(root, "test")
    expected = torch_scores(state_dict, train, test, bn_update)
    np.testing.assert_allclose(ours, expected, rtol=1e-4)   # measured: 2e-5
    other = torch_scores(state_dict, train, test, not bn_update)
    assert np.abs(other / expected - 1).max() > 1e-2    # the update changes the scores: the check is not vacuous
    model = read_json(tmp_path / CATEGORY / "model.json")
    assert model["config"]["patch"]["reference_bn_update"] == (64 if bn_update else None)
