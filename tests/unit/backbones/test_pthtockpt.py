"""torch state dict -> MindSpore .ckpt without torch: both file formats, refusal of foreign pickles, strictness."""
import collections
import io
import pickle
import zipfile

import numpy as np
import pytest
import torch

import src  # noqa: F401  (sets the oneDNN ISA before mindspore loads)

from src.utils.errors import InputError
from src.backbones.networks import parameter_shapes
from src.backbones.torch_checkpoint import LEGACY_MAGIC, LEGACY_PROTOCOL, read_torch_state_dict, to_mindspore_parameters
from conftest import os_system_pickle, random_state_dict, write_zip_checkpoint


@pytest.mark.parametrize("legacy, protocol", [(False, 2), (True, 2), (False, 4)],
                         ids=["zip", "legacy", "zip-protocol4"])
def test_reads_tensors_exactly_as_torch_does(tmp_path, legacy, protocol):
    gen = torch.Generator().manual_seed(0)
    base = torch.randn(6, 5, generator=gen)
    state = collections.OrderedDict([
        ("conv.weight", torch.randn(4, 3, 3, 3, generator=gen)),
        ("base", base),
        ("transposed", base.t()),  # shares base's storage, non-contiguous
        ("row_slice", base[2:4, 1:]),  # storage offset and a stride
        ("half", torch.randn(7, generator=gen).half()),
        ("double", torch.randn(2, 2, generator=gen).double()),
        ("bn.num_batches_tracked", torch.tensor(17)),
        ("mask", torch.tensor([True, False, True])),
        ("bytes", torch.tensor([-3, 5], dtype=torch.int8)),
        ("empty", torch.zeros(0, 3)),
    ])
    path = tmp_path / "state.pth"
    torch.save(state, path, _use_new_zipfile_serialization=not legacy, pickle_protocol=protocol)
    assert zipfile.is_zipfile(path) is not legacy

    arrays = read_torch_state_dict(path)
    assert list(arrays) == list(state)
    for name, tensor in state.items():
        expected = tensor.numpy()
        assert arrays[name].dtype == expected.dtype and arrays[name].shape == expected.shape, name
        np.testing.assert_array_equal(arrays[name], expected)


def write_legacy_checkpoint(path, body, header=None):
    header = header if header is not None else pickle.dumps(LEGACY_MAGIC, protocol=2)
    path.write_bytes(header + pickle.dumps(LEGACY_PROTOCOL, protocol=2)
                     + pickle.dumps({"protocol_version": 1001, "little_endian": True}, protocol=2) + body)


@pytest.mark.parametrize("where", ["zip", "legacy_body", "legacy_header"])
def test_foreign_pickle_content_is_refused_and_never_run(tmp_path, where):
    marker = tmp_path / "was_run"
    path = tmp_path / "evil.pth"
    if where == "zip":
        write_zip_checkpoint(path, os_system_pickle(marker))
    elif where == "legacy_body":
        write_legacy_checkpoint(path, os_system_pickle(marker))
    else:
        write_legacy_checkpoint(path, b"", header=os_system_pickle(marker))
    with pytest.raises(InputError) as info:
        read_torch_state_dict(path)
    assert str(info.value) == f"{path}: unexpected pickle content: os.system"
    assert not marker.exists()


class StorageStub:
    """Pickled as a zip-format storage reference of 4 floats."""


class StridedTensor:
    """Pickled exactly as torch pickles a tensor: ``_rebuild_tensor_v2(storage, offset, size, stride, ...)``."""

    def __init__(self, size, stride, offset=0):
        self.args = (StorageStub(), offset, size, stride, False, collections.OrderedDict())

    def __reduce__(self):
        return torch._utils._rebuild_tensor_v2, self.args


class TorchStylePickler(pickle.Pickler):
    def persistent_id(self, obj):
        return ("storage", torch.FloatStorage, "0", "cpu", 4) if isinstance(obj, StorageStub) else None


def torch_style_pickle(obj):
    buffer = io.BytesIO()
    TorchStylePickler(buffer, protocol=2).dump(obj)
    return buffer.getvalue()


@pytest.mark.parametrize("tensor, problem", [
    (StridedTensor((10,), (1,)), "reads past the end of its storage"),
    (StridedTensor((2, 2), (3, 1), offset=1), "reads past the end of its storage"),
    (StridedTensor((2,), (-1,)), "bad size"),
])
def test_tensors_reaching_outside_their_storage_are_refused(tmp_path, tensor, problem):
    path = tmp_path / "strided.pth"
    write_zip_checkpoint(path, torch_style_pickle({"w": tensor}), {"0": np.arange(4, dtype="<f4").tobytes()})
    with pytest.raises(InputError, match=f"tensor w: {problem}"):
        read_torch_state_dict(path)
    # The same layout inside the storage reads fine: the check is about bounds, not the format.
    write_zip_checkpoint(path, torch_style_pickle({"w": StridedTensor((2, 2), (2, 1))}),
                         {"0": np.arange(4, dtype="<f4").tobytes()})
    np.testing.assert_array_equal(read_torch_state_dict(path)["w"], [[0, 1], [2, 3]])


def test_unreadable_files_are_input_errors(tmp_path):
    cases = {"missing.pth": None, "empty.pth": b"", "noise.pth": bytes(range(256)) * 4}
    for name, content in cases.items():
        if content is not None:
            (tmp_path / name).write_bytes(content)
    zip_without_pickle = tmp_path / "other.zip"
    with zipfile.ZipFile(zip_without_pickle, "w") as archive:
        archive.writestr("readme.txt", "hello")
    no_storage = tmp_path / "no_storage.pth"
    write_zip_checkpoint(no_storage, torch_style_pickle({"w": StridedTensor((4,), (1,))}))
    whole_model = tmp_path / "list.pth"
    torch.save([torch.ones(2)], whole_model)

    expected = {"missing.pth": "torch checkpoint not found", "empty.pth": "not a readable torch checkpoint",
                "noise.pth": "not a readable torch checkpoint", "other.zip": "no single <name>/data.pkl",
                "no_storage.pth": "storage archive/data/0 is missing", "list.pth": "not a state dict"}
    for name, problem in expected.items():
        with pytest.raises(InputError, match=problem) as info:
            read_torch_state_dict(tmp_path / name)
        assert info.value.path == str(tmp_path / name)


def test_names_map_one_to_one_and_extras_are_dropped():
    state = random_state_dict("mobilenet_v2", ["features.2"], seed=0)
    params = to_mindspore_parameters(state, "mobilenet_v2", "x.pth", layers=["features.2"])
    assert set(params) == set(parameter_shapes("mobilenet_v2", ["features.2"]))
    np.testing.assert_array_equal(params["features.0.1.gamma"], state["features.0.1.weight"])
    np.testing.assert_array_equal(params["features.0.1.beta"], state["features.0.1.bias"])
    np.testing.assert_array_equal(params["features.0.1.moving_mean"], state["features.0.1.running_mean"])
    np.testing.assert_array_equal(params["features.0.1.moving_variance"], state["features.0.1.running_var"])
    np.testing.assert_array_equal(params["features.2.conv.3.weight"], state["features.2.conv.3.weight"])
    assert all(v.dtype == np.float32 for v in params.values())


def test_missing_or_misshapen_tensors_are_named():
    state = random_state_dict("mobilenet_v2", ["features.2"], seed=0)
    del state["features.1.conv.1.running_var"]
    with pytest.raises(InputError, match=r"x.pth: not a mobilenet_v2 state dict: 1 of \d+ backbone tensors "
                                         r"missing, e.g. features.1.conv.1.running_var"):
        to_mindspore_parameters(state, "mobilenet_v2", "x.pth", layers=["features.2"])

    state = random_state_dict("mobilenet_v2", ["features.2"], seed=0)
    state["features.2.conv.0.weight"] = state["features.2.conv.0.weight"][:, :, :, :, None]
    state["features.0.1.running_mean"] = state["features.0.1.running_mean"].astype(np.int64)
    with pytest.raises(InputError, match=r"2 tensors do not fit mobilenet_v2: features.0.1.running_mean int64\[32\]"
                                         r" \(expected float\[32\]\); features.2.conv.0.weight"):
        to_mindspore_parameters(state, "mobilenet_v2", "x.pth", layers=["features.2"])

    with pytest.raises(InputError, match="not a wideresnet50 state dict"):
        to_mindspore_parameters(random_state_dict("mobilenet_v2", None, 0), "wideresnet50", "x.pth")


@pytest.mark.parametrize("data, problem", [
    (b"\x80\x02)\x81.", r"pickle opcode b'\\x81' is not part of a state dict"),   # NEWOBJ
    (b"\x80\x02}(X\x01\x00\x00\x00a", "pickle ends early"),                        # cut short
    (b"\x80\x02\x86.", "stack underflow"),                                        # TUPLE2 of nothing
])
def test_pickles_outside_the_state_dict_subset_are_refused(tmp_path, data, problem):
    path = tmp_path / "odd.pth"
    write_zip_checkpoint(path, data)
    with pytest.raises(InputError, match=f"not a readable torch checkpoint: {problem}"):
        read_torch_state_dict(path)
