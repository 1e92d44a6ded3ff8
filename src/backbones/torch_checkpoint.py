"""Convert a torch backbone state dict (.pth/.pt) into a MindSpore .ckpt for ``src/backbones/networks.py``, without torch.

Reads both torch serialization formats: the zip archive of torch >= 1.6 (``<name>/data.pkl`` plus one
``<name>/data/<key>`` entry per storage) and the older "legacy" stream (magic number, protocol, system
info, the state-dict pickle, the storage keys, then each storage's bytes). The pickles are read by
``src.backbones.torch_pickle.StateDictUnpickler``, which runs no code.

Names map one to one (BatchNorm weight/bias/running_mean/running_var -> gamma/beta/moving_mean/
moving_variance); every backbone parameter must be present with its exact shape. Entries the backbone
has no use for (``fc.*``, ``num_batches_tracked``, ...) are dropped.

Command line: ``src/pthtockpt.py``.
"""
import contextlib
import logging
import os
import struct
import zipfile

import numpy as np

from src.backbones.torch_pickle import StateDictUnpickler, StorageRef, TensorRef, UnpicklingError, storage_dtype
from src.utils.errors import InputError
from src.utils.io import atomic_path

logger = logging.getLogger("patchcore")

LEGACY_MAGIC = 0x1950a86a20f9469cfc6c
LEGACY_PROTOCOL = 1001
# MindSpore BatchNorm parameter name -> torch state-dict name; other names are the same in both.
BN_TORCH_NAMES = {"gamma": "weight", "beta": "bias", "moving_mean": "running_mean", "moving_variance": "running_var"}
# State-dict entries that are bookkeeping, not weights: dropped without comment.
BOOKKEEPING_SUFFIXES = (".num_batches_tracked",)


def _count(value):
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise UnpicklingError(f"bad storage size or offset {value!r}")
    return value


def _tensor_array(tensor, data, path, name):
    """The tensor's values, as a new float/int array, from its storage's 1-D array ``data``."""
    size, stride, offset = tensor.size, tensor.stride, _count(tensor.offset)
    if len(size) != len(stride) or not all(isinstance(v, int) and v >= 0 for v in size + stride):
        raise InputError(path, f"tensor {name}: bad size {size} / stride {stride}")
    if 0 not in size:  # the last element read must lie inside the storage: never read past it
        last = offset + sum((n - 1) * s for n, s in zip(size, stride))
        if last >= data.size:
            raise InputError(path, f"tensor {name}: reads past the end of its storage")
    elif offset > data.size:
        raise InputError(path, f"tensor {name}: offset past the end of its storage")
    view = np.lib.stride_tricks.as_strided(data[offset:], shape=size, strides=[s * data.itemsize for s in stride],
                                           writeable=False)
    return np.array(view, dtype=data.dtype.newbyteorder("="))


def _state_dict_arrays(obj, storage_data, path):
    """{name: numpy array} from the unpickled object; ``storage_data(ref)`` gives a storage's 1-D array."""
    if not isinstance(obj, dict) or not all(isinstance(k, str) and isinstance(v, TensorRef) for k, v in obj.items()):
        raise InputError(path, "not a state dict (a mapping of names to tensors); save model.state_dict()")
    return {name: _tensor_array(tensor, storage_data(tensor.storage), path, name) for name, tensor in obj.items()}


def _read_zip(archive, path):
    pickles = [n for n in archive.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
    if len(pickles) != 1:
        raise InputError(path, "zip file is not a torch checkpoint (no single <name>/data.pkl)")
    prefix = pickles[0][:-len("data.pkl")]
    byteorder_entry = prefix + "byteorder"
    byteorder = "<"
    if byteorder_entry in archive.namelist():
        byteorder = {b"little": "<", b"big": ">"}.get(archive.read(byteorder_entry).strip())
        if byteorder is None:
            raise InputError(path, f"unknown byte order in {byteorder_entry}")

    def storage_ref(saved_id):
        if len(saved_id) != 5:
            raise UnpicklingError(f"storage id of length {len(saved_id)}")
        _, storage_type, key, _location, numel = saved_id
        return StorageRef(str(key), storage_dtype(storage_type, byteorder), _count(numel))

    def storage_data(ref):
        entry = f"{prefix}data/{ref.key}"
        try:
            raw = archive.read(entry)
        except KeyError:
            raise InputError(path, f"storage {entry} is missing") from None
        if len(raw) < ref.numel * ref.dtype.itemsize:
            raise InputError(path, f"storage {entry} is shorter than its {ref.numel} elements")
        return np.frombuffer(raw, ref.dtype, count=ref.numel)

    with archive.open(pickles[0]) as f:
        obj = StateDictUnpickler(f, path, storage_ref).load()
    return _state_dict_arrays(obj, storage_data, path)


def _read_legacy(f, path):
    header = StateDictUnpickler(f, path)
    if header.load() != LEGACY_MAGIC:
        raise InputError(path, "not a torch checkpoint (neither a zip archive nor the legacy format)")
    if header.load() != LEGACY_PROTOCOL:
        raise InputError(path, "unsupported legacy torch protocol version")
    sys_info = header.load()
    if not isinstance(sys_info, dict) or sys_info.get("little_endian") is not True:
        raise InputError(path, "legacy torch checkpoint from a big-endian machine is not supported")
    roots = {}  # storage key -> StorageRef of the whole storage (a view only refers to it)

    def storage_ref(saved_id):
        if len(saved_id) != 6:
            raise UnpicklingError(f"storage id of length {len(saved_id)}")
        _, storage_type, key, _location, numel, view = saved_id
        root = roots.setdefault(str(key), StorageRef(str(key), storage_dtype(storage_type, "<"), _count(numel)))
        if view is None:
            return root
        _view_key, offset, view_numel = view
        return StorageRef(root.key, root.dtype, _count(view_numel), _count(offset))

    obj = StateDictUnpickler(f, path, storage_ref).load()
    keys = StateDictUnpickler(f, path).load()
    if not isinstance(keys, list) or set(map(str, keys)) != set(roots):
        raise InputError(path, "legacy torch checkpoint: storage list does not match the tensors")
    data = {}
    for key in map(str, keys):  # each storage: int64 element count, then its bytes
        root = roots[key]
        head = f.read(8)
        if len(head) != 8 or struct.unpack("<q", head)[0] != root.numel:
            raise InputError(path, f"legacy torch checkpoint: storage {key} is truncated or mislabelled")
        raw = f.read(root.numel * root.dtype.itemsize)
        if len(raw) != root.numel * root.dtype.itemsize:
            raise InputError(path, f"legacy torch checkpoint: storage {key} is truncated")
        data[key] = np.frombuffer(raw, root.dtype)
    return _state_dict_arrays(obj, lambda ref: data[ref.key][ref.offset:ref.offset + ref.numel], path)


def read_torch_state_dict(pth_path):
    """{name: numpy array} of a torch-saved state dict, read without torch and without running its pickle."""
    path = os.fspath(pth_path)
    if not os.path.isfile(path):
        raise InputError(path, "torch checkpoint not found")
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                return _read_zip(archive, path)
        with open(path, "rb") as f:
            return _read_legacy(f, path)
    except InputError:
        raise
    except (UnpicklingError, EOFError, zipfile.BadZipFile, ValueError, TypeError, AttributeError,
            IndexError, KeyError, MemoryError, OverflowError, OSError) as exc:
        detail = " ".join(str(exc).split()) or type(exc).__name__
        raise InputError(path, f"not a readable torch checkpoint: {detail}") from None


def torch_name(mindspore_name):
    """torch state-dict key of a MindSpore parameter name (``layer1.0.bn1.gamma`` -> ``layer1.0.bn1.weight``)."""
    prefix, _, kind = mindspore_name.rpartition(".")
    return f"{prefix}.{BN_TORCH_NAMES.get(kind, kind)}"


def to_mindspore_parameters(state_dict, backbone_name, path, layers=None):
    """{MindSpore name: float32 array} for every parameter of the backbone built up to the deepest of ``layers``
    (default: all its taps); strict about names and shapes."""
    from src.backbones.networks import canonical_backbone_name, parameter_shapes
    backbone_name = canonical_backbone_name(backbone_name)
    params, missing, wrong = {}, [], []
    for name, shape in parameter_shapes(backbone_name, layers).items():
        key = torch_name(name)
        value = state_dict.get(key)
        if value is None:
            missing.append(key)
        elif value.shape != shape or value.dtype.kind != "f":
            wrong.append(f"{key} {value.dtype}{list(value.shape)} (expected float{list(shape)})")
        else:
            params[name] = value.astype(np.float32, copy=False)
    if missing:
        total = len(missing) + len(params) + len(wrong)
        raise InputError(path, f"not a {backbone_name} state dict: {len(missing)} of {total} backbone tensors "
                               f"missing, e.g. {', '.join(missing[:3])}")
    if wrong:
        raise InputError(path, f"{len(wrong)} tensors do not fit {backbone_name}: {'; '.join(wrong[:3])}")
    used = {torch_name(name) for name in params}
    dropped = sorted(k for k in state_dict if k not in used and not k.endswith(BOOKKEEPING_SUFFIXES))
    if dropped:
        logger.info("dropped %d entries %s has no use for, e.g. %s", len(dropped), backbone_name,
                    ", ".join(dropped[:3]))
    return params


def default_ckpt_path(pth_path):
    return os.path.splitext(os.fspath(pth_path))[0] + ".ckpt"


def write_ckpt(params, ckpt_path):
    """Write {name: array} as a MindSpore checkpoint, atomically."""
    import mindspore as ms
    with atomic_path(ckpt_path) as tmp:
        saved = tmp + ".ckpt"  # save_checkpoint appends .ckpt to any other name
        try:
            ms.save_checkpoint([{"name": name, "data": ms.Tensor(value)} for name, value in params.items()], saved)
            os.replace(saved, tmp)
            os.chmod(tmp, 0o644)  # save_checkpoint leaves it owner-read-only; a shared model file is readable
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.remove(saved)


def convert(pth_path, backbone_name="wideresnet50", ckpt_path=None, layers=None):
    """torch state dict -> MindSpore .ckpt for ``build_backbone(backbone_name, ...)``; returns the .ckpt path.

    ``layers`` limits the checkpoint to the stages those taps need (default: every tap of the backbone)."""
    ckpt_path = os.fspath(ckpt_path) if ckpt_path else default_ckpt_path(pth_path)
    params = to_mindspore_parameters(read_torch_state_dict(pth_path), backbone_name, os.fspath(pth_path), layers)
    write_ckpt(params, ckpt_path)
    logger.info("wrote %s: %d %s parameters from %s", ckpt_path, len(params), backbone_name, pth_path)
    return ckpt_path
