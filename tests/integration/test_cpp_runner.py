"""The C++ edge runner (ascend310_infer) against MindSpore Python, and the MINDIR v1 rewrite it needs.

The first run builds the runner, which downloads the MindSpore Lite 2.0.0 wheel (~170 MB) from PyPI.
"""
import json
import os
import subprocess

import src  # noqa: F401  (sets oneDNN options before MindSpore loads)
import faiss
import numpy as np
import pytest

import mindspore as ms
from mindspore import nn, ops
from mindspore.train import mind_ir_pb2

from src.utils import blas
from src.utils.errors import InputError
from src.patchcore.aggregation import PatchFeatureExtractor
from src.backbones.folding import fold_batchnorm
from src.deploy.mindir_v1 import UnsupportedOperatorError, convert_mindir_to_v1
from src.deploy.mindir_v1 import main as mindir_compat_cli
from src.backbones.networks import build_backbone

INPUT_SHAPE = (1, 3, 64, 64)


def run_runner(binary, *args, env=None):
    return subprocess.run([str(binary), *map(str, args)], capture_output=True, text=True, timeout=300,
                          env=None if env is None else {**os.environ, **env})


class OperatorMixNet(nn.Cell):
    """Every operator kind of the PatchCore backbones + aggregation, on a small grid.

    The max pool sees signed BatchNorm outputs and no ReLU follows it, so its -inf padding gives
    different numbers than zero padding would.
    """

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, stride=2, pad_mode="pad", padding=1, has_bias=False)
        self.stem_bn = nn.BatchNorm2d(16)
        self.relu = nn.ReLU()
        self.max_pool = nn.MaxPool2d(3, 2, pad_mode="valid")
        self.depthwise = nn.Conv2d(16, 16, 3, stride=1, pad_mode="pad", padding=1, group=16, has_bias=False)
        self.depthwise_bn = nn.BatchNorm2d(16)
        self.relu6 = nn.ReLU6()
        self.pointwise = nn.Conv2d(16, 16, 1, has_bias=True)
        self.down = nn.Conv2d(16, 8, 3, stride=2, pad_mode="pad", padding=1, has_bias=False)
        self.down_bn = nn.BatchNorm2d(8)
        self.avg_pool = nn.AvgPool2d(3, 1, pad_mode="valid")

    def construct(self, x):
        x = self.stem_bn(self.stem(x))
        x = self.max_pool(ops.pad(x, (1, 1, 1, 1), value=float("-inf")))
        x = x + self.pointwise(self.relu6(self.depthwise_bn(self.depthwise(x))))
        deep = self.relu(self.down_bn(self.down(x)))
        fine = self.avg_pool(ops.pad(x, (1, 1, 1, 1)))
        deep = ops.interpolate(self.avg_pool(ops.pad(deep, (1, 1, 1, 1))), size=fine.shape[2:], mode="bilinear",
                               align_corners=False)
        features = ops.pad(ops.concat((fine, deep), axis=1), (0, 0, 0, 0, 2, 3))  # channel padding
        return features, ops.reshape(features, (1, features.shape[1], -1))


def randomize_parameters(net, seed):
    """Fixed-seed weights and BatchNorm statistics far from the identity defaults."""
    rng = np.random.default_rng(seed)
    for param in net.get_parameters():
        name, shape = param.name, param.shape
        if name.endswith(("moving_variance", "gamma")):
            value = rng.uniform(0.5, 1.5, shape)
        elif name.endswith("beta"):
            value = rng.normal(-0.5, 0.5, shape)
        else:  # conv weights, biases, BatchNorm means
            value = rng.normal(0.0, 0.3, shape)
        param.set_data(ms.Tensor(value.astype(np.float32)))


def export_v1(net, example, folder, name):
    """mindspore.export + convert_mindir_to_v1; returns the converted path."""
    ms.export(net, ms.Tensor(example), file_name=str(folder / name), file_format="MINDIR")
    converted = folder / f"{name}_v1.mindir"
    convert_mindir_to_v1(folder / f"{name}.mindir", converted)
    return converted


def assert_close_to_reference(actual, expected):
    assert actual.shape == expected.shape and actual.dtype == np.float32
    scale = float(np.abs(expected).max())
    assert scale > 0
    assert float(np.abs(actual - expected).max()) <= 1e-4 * scale


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """(converted MINDIR, {stem: input}, {stem: reference outputs}) for OperatorMixNet."""
    ms.set_seed(0)
    net = OperatorMixNet()
    net.set_train(False)
    randomize_parameters(net, seed=0)
    rng = np.random.default_rng(1)
    inputs = {f"img_{i:03d}": rng.normal(size=INPUT_SHAPE).astype(np.float32) for i in range(2)}
    references = {stem: [o.asnumpy() for o in net(ms.Tensor(x))] for stem, x in inputs.items()}
    folder = tmp_path_factory.mktemp("tiny_model")
    return export_v1(net, inputs["img_000"], folder, "operator_mix"), inputs, references


def write_inputs(folder, inputs):
    folder.mkdir(parents=True, exist_ok=True)
    for stem, x in inputs.items():
        np.save(folder / f"{stem}.npy", x)
    return folder


def test_rewrite_produces_version_1_primitives(tiny_model):
    model = mind_ir_pb2.ModelProto()
    model.ParseFromString(tiny_model[0].read_bytes())
    assert model.mind_ir_version == 1
    op_types = {p.op_type for p in model.primitives}
    assert {"Resize", "Pad", "AvgPool", "BatchNorm", "Concat"} <= op_types
    assert not op_types & {"ResizeBilinearV2", "PadV3"}
    assert all(p.prim_type != mind_ir_pb2.PrimitiveProto.PRIMITIVE_FUNCTION for p in model.primitives)
    # Settings live in attributes now, e.g. the -inf fill of the max-pool padding.
    fills = {a.f for p in model.primitives if p.op_type == "Pad" for a in p.attribute if a.name == "constant_value"}
    assert fills == {float("-inf"), 0.0}


def test_cpp_outputs_match_mindspore(runner, tiny_model, tmp_path):
    mindir, inputs, references = tiny_model
    result = run_runner(runner, "--mindir_path", mindir, "--input_path", write_inputs(tmp_path / "in", inputs),
                        "--result_path", tmp_path / "out", "--threads", 2)
    assert result.returncode == 0, result.stderr
    for stem, expected in references.items():
        for k, reference in enumerate(expected):
            assert_close_to_reference(np.load(tmp_path / "out" / f"{stem}_{k}.npy"), reference)
        assert not (tmp_path / "out" / f"{stem}_{len(expected)}.npy").exists()
    latency = json.loads((tmp_path / "out" / "latency.json").read_text())
    assert latency["threads"] == 2 and latency["device_type"] == "CPU"
    assert latency["model_load_ms"] > 0
    assert [entry["input"] for entry in latency["per_input"]] == sorted(inputs)
    assert all(entry["predict_ms"] > 0 for entry in latency["per_input"])


@pytest.mark.parametrize("problem", ["wrong_shape", "float64", "truncated", "missing"])
def test_bad_input_fails_with_one_line_naming_the_file(runner, tiny_model, tmp_path, problem):
    good = tiny_model[1]["img_000"]
    bad = tmp_path / "in" / "bad.npy"
    bad.parent.mkdir()
    if problem == "wrong_shape":
        np.save(bad, good[:, :, :32])
    elif problem == "float64":
        np.save(bad, good.astype(np.float64))
    elif problem == "truncated":
        np.save(bad, good)
        bad.write_bytes(bad.read_bytes()[:-100])
    np.save(tmp_path / "in" / "good.npy", good)
    target = bad if problem != "missing" else tmp_path / "in" / "missing.npy"
    result = run_runner(runner, "--mindir_path", tiny_model[0], "--input_path", target, "--result_path",
                        tmp_path / "out")
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and str(target) in lines[0], result.stderr
    assert not (tmp_path / "out" / "good_0.npy").exists()


def test_bad_file_in_folder_stops_before_any_output(runner, tiny_model, tmp_path):
    folder = write_inputs(tmp_path / "in", tiny_model[1])
    np.save(folder / "zz_wrong.npy", np.zeros((1, 3, 64, 65), np.float32))
    result = run_runner(runner, "--mindir_path", tiny_model[0], "--input_path", folder, "--result_path",
                        tmp_path / "out")
    assert result.returncode != 0 and "zz_wrong.npy" in result.stderr and "(1, 3, 64, 65)" in result.stderr
    assert not (tmp_path / "out" / "img_000_0.npy").exists()


def test_ascend_request_on_cpu_runtime_is_a_clear_error(runner, tiny_model, tmp_path):
    np.save(tmp_path / "x.npy", tiny_model[1]["img_000"])
    result = run_runner(runner, "--mindir_path", tiny_model[0], "--input_path", tmp_path / "x.npy",
                        "--result_path", tmp_path / "out", "--device_type", "Ascend")
    assert result.returncode != 0
    assert "Ascend" in result.stderr and "CPU" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_bank_scores_equal_faiss_in_python(runner, tiny_model, tmp_path):
    mindir, inputs, references = tiny_model
    dim = references["img_000"][0].shape[1]
    rng = np.random.default_rng(2)
    bank = rng.normal(0.0, 0.5, (300, dim)).astype(np.float32)
    index = faiss.IndexFlatL2(dim)
    index.add(bank)
    bank_path = tmp_path / "bank.faiss"
    faiss.write_index(index, str(bank_path))
    num_nn = 3
    result = run_runner(runner, "--mindir_path", mindir, "--input_path", write_inputs(tmp_path / "in", inputs),
                        "--result_path", tmp_path / "out", "--bank_path", bank_path, "--num_nn", num_nn)
    assert result.returncode == 0, result.stderr
    for stem in inputs:
        features = np.load(tmp_path / "out" / f"{stem}_0.npy")
        _, d, h, w = features.shape
        distances, _ = index.search(np.ascontiguousarray(features[0].reshape(d, h * w).T), num_nn)
        expected = distances.mean(axis=1).reshape(h, w)
        scores = np.load(tmp_path / "out" / f"{stem}_scores.npy")
        assert scores.shape == (h, w) and scores.dtype == np.float32
        np.testing.assert_allclose(scores, expected, rtol=1e-4, atol=1e-4 * float(expected.max()))
    latency = json.loads((tmp_path / "out" / "latency.json").read_text())
    assert all(entry["score_ms"] >= 0 for entry in latency["per_input"])
    # faiss scores with OpenBLAS; never its generic kernel on a CPU with AVX2 (the runner re-runs itself with
    # OPENBLAS_CORETYPE set), and a kernel the user chose is left as it is
    core = latency["openblas_core"]
    assert core != "none" and f"OpenBLAS kernel {core})" in result.stdout
    assert core.lower() not in blas.GENERIC_CORES or not {"avx2", "fma"} <= blas.cpu_flags()
    chosen = run_runner(runner, "--mindir_path", mindir, "--input_path", tmp_path / "in", "--result_path",
                        tmp_path / "prescott", "--bank_path", bank_path, "--num_nn", num_nn,
                        env={"OPENBLAS_CORETYPE": "Prescott"})
    assert chosen.returncode == 0, chosen.stderr
    assert json.loads((tmp_path / "prescott" / "latency.json").read_text())["openblas_core"] == "Prescott"
    for stem in inputs:
        np.testing.assert_allclose(np.load(tmp_path / "prescott" / f"{stem}_scores.npy"),
                                   np.load(tmp_path / "out" / f"{stem}_scores.npy"), rtol=1e-5, atol=1e-6)
    # --save_features 0: the same scores, and no feature files (an edge box keeps only what it needs)
    result = run_runner(runner, "--mindir_path", mindir, "--input_path", tmp_path / "in", "--result_path",
                        tmp_path / "scores_only", "--bank_path", bank_path, "--num_nn", num_nn, "--save_features", 0)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (tmp_path / "scores_only").iterdir()) == \
        sorted([f"{stem}_scores.npy" for stem in inputs] + ["latency.json"])
    for stem in inputs:
        np.testing.assert_array_equal(np.load(tmp_path / "scores_only" / f"{stem}_scores.npy"),
                                      np.load(tmp_path / "out" / f"{stem}_scores.npy"))


def test_the_runner_searches_a_pca_refine_index_as_python_does(runner, tiny_model, tmp_path):
    """The export's search.index of a model whose search is pca_refine: the runner's scores (faiss's IndexRefine,
    then every distance computed again from the exact entries) equal the Python bank's with that search."""
    from src.patchcore.memory_bank import MemoryBank
    mindir, inputs, references = tiny_model
    dim = references["img_000"][0].shape[1]
    rng = np.random.default_rng(3)
    bank = MemoryBank.from_features(rng.normal(0.0, 0.5, (max(300, 2 * dim), dim)).astype(np.float32))
    bank.use_search({"kind": "pca_refine", "dimension": max(1, dim // 4), "candidates": 2})
    assert bank.search != "exact"
    bank_path = tmp_path / "search.index"
    faiss.write_index(bank.search_index, str(bank_path))
    result = run_runner(runner, "--mindir_path", mindir, "--input_path", write_inputs(tmp_path / "in", inputs),
                        "--result_path", tmp_path / "out", "--bank_path", bank_path, "--num_nn", 2)
    assert result.returncode == 0, result.stderr
    for stem in inputs:
        features = np.load(tmp_path / "out" / f"{stem}_0.npy")
        _, d, h, w = features.shape
        expected = bank.patch_scores(features[0].reshape(d, h * w).T, 2).reshape(h, w)
        np.testing.assert_allclose(np.load(tmp_path / "out" / f"{stem}_scores.npy"), expected, rtol=1e-5,
                                   atol=1e-6 * float(expected.max()))


@pytest.mark.parametrize("flags, message", [(["--save_features", "0"], "--save_features 0 needs --bank_path"),
                                            (["--save_features", "2"], "--save_features: expected 0 or 1")])
def test_save_features_flag_is_checked(runner, tiny_model, tmp_path, flags, message):
    np.save(tmp_path / "x.npy", tiny_model[1]["img_000"])
    result = run_runner(runner, "--mindir_path", tiny_model[0], "--input_path", tmp_path / "x.npy",
                        "--result_path", tmp_path / "out", *flags)
    assert result.returncode == 2 and message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_bank_of_wrong_dimension_is_rejected_before_inference(runner, tiny_model, tmp_path):
    mindir, inputs, references = tiny_model
    dim = references["img_000"][0].shape[1] + 1
    index = faiss.IndexFlatL2(dim)
    index.add(np.zeros((4, dim), np.float32))
    bank_path = tmp_path / "bank.faiss"
    faiss.write_index(index, str(bank_path))
    result = run_runner(runner, "--mindir_path", mindir, "--input_path", write_inputs(tmp_path / "in", inputs),
                        "--result_path", tmp_path / "out", "--bank_path", bank_path)
    assert result.returncode != 0
    assert str(bank_path) in result.stderr and f"(1, {dim}, h, w)" in result.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("backbone_name, layers", [("wideresnet50", ["layer2", "layer3"]),
                                                   ("mobilenet_v2", ["features.6", "features.13"])])
def test_real_backbone_with_aggregation_matches_mindspore(runner, tmp_path, backbone_name, layers):
    """The deployed graph: src.backbones.networks backbone (seeded random weights, BatchNorm folded as build_extractor
    does) + src.patchcore.aggregation aggregation (for WRN50: depthwise convolution + ReduceSum)."""
    config = {"backbone_name": backbone_name, "layers_to_extract_from": layers, "merge_size": 3,
              "pretrain_embed_dimension": 1024, "target_embed_dimension": 1024}
    backbone = build_backbone(backbone_name, layers, seed=0)
    assert fold_batchnorm(backbone) > 0
    net = PatchFeatureExtractor(backbone, config)
    net.set_train(False)
    x = np.random.default_rng(3).normal(size=INPUT_SHAPE).astype(np.float32)
    reference = net(ms.Tensor(x)).asnumpy()
    mindir = export_v1(net, x, tmp_path, backbone_name)
    np.save(tmp_path / "image.npy", x)
    result = run_runner(runner, "--mindir_path", mindir, "--input_path", tmp_path / "image.npy", "--result_path",
                        tmp_path / "out")
    assert result.returncode == 0, result.stderr
    assert_close_to_reference(np.load(tmp_path / "out" / "image_0.npy"), reference)


class ScaledNet(nn.Cell):
    def construct(self, x):
        return x * 2.0  # exports as Muls, which Lite 2.0 does not know


def test_unsupported_operator_is_named(tmp_path):
    ms.export(ScaledNet(), ms.Tensor(np.zeros(INPUT_SHAPE, np.float32)), file_name=str(tmp_path / "scaled"),
              file_format="MINDIR")
    with pytest.raises(UnsupportedOperatorError, match="operator Muls"):
        convert_mindir_to_v1(tmp_path / "scaled.mindir", tmp_path / "scaled_v1.mindir")
    assert not (tmp_path / "scaled_v1.mindir").exists()


def test_convert_rejects_non_mindir(tmp_path, capsys):
    (tmp_path / "junk.mindir").write_bytes(b"\x00not a model")
    with pytest.raises(InputError, match="junk.mindir"):
        convert_mindir_to_v1(tmp_path / "junk.mindir", tmp_path / "out.mindir")
    assert mindir_compat_cli([str(tmp_path / "junk.mindir"), str(tmp_path / "out.mindir")]) == 1
    error_lines = capsys.readouterr().err.strip().splitlines()
    assert len(error_lines) == 1 and "junk.mindir" in error_lines[0]
    assert not (tmp_path / "out.mindir").exists()


def test_convert_cli_is_idempotent_on_converted_files(tiny_model, tmp_path):
    again = tmp_path / "again.mindir"
    assert mindir_compat_cli([str(tiny_model[0]), str(again)]) == 0
    assert again.read_bytes() == tiny_model[0].read_bytes()
