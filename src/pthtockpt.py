"""Convert a torch backbone state dict (.pth/.pt) into a MindSpore .ckpt for ``src/model.py``, without torch.

Reads both torch serialization formats: the zip archive of torch >= 1.6 (``<name>/data.pkl`` plus one
``<name>/data/<key>`` entry per storage) and the older "legacy" stream (magic number, protocol, system
info, the state-dict pickle, the storage keys, then each storage's bytes). The pickles are read by
``StateDictUnpickler``, an interpreter of the pickle opcodes that carry data (numbers, strings, tuples,
lists, dicts, memo, persistent ids; protocols 2-5) written here rather than Python's ``pickle`` module: it calls
nothing but the tensor-rebuild stand-in and ``OrderedDict``, resolves no other global, and stops at the
first opcode or global outside that set, so a .pth file cannot run code through it.

Names map one to one (BatchNorm weight/bias/running_mean/running_var -> gamma/beta/moving_mean/
moving_variance); every backbone parameter must be present with its exact shape. Entries the backbone
has no use for (``fc.*``, ``num_batches_tracked``, ...) are dropped.

Usage: python src/pthtockpt.py --pth_path wide_resnet50_2-95faca4d.pth [--backbone_name wideresnet50]
       [--ckpt_path out.ckpt] [--layers_to_extract_from layer2 layer3]
"""
import os
import sys

if __package__ in (None, ""):  # run as `python src/pthtockpt.py`: import `src` from the repo root, not src/
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import argparse  # noqa: E402
import collections  # noqa: E402
import contextlib  # noqa: E402
import dataclasses  # noqa: E402
import logging  # noqa: E402
import struct  # noqa: E402
import zipfile  # noqa: E402

import numpy as np  # noqa: E402

import src  # noqa: E402,F401  (sets the oneDNN ISA before mindspore loads)
from src.cli import run, setup_logging  # noqa: E402
from src.errors import InputError  # noqa: E402
from src.io_utils import atomic_path  # noqa: E402

logger = logging.getLogger("patchcore")

STORAGE_DTYPES = {"FloatStorage": "f4", "DoubleStorage": "f8", "HalfStorage": "f2", "LongStorage": "i8",
                  "IntStorage": "i4", "ShortStorage": "i2", "CharStorage": "i1", "ByteStorage": "u1",
                  "BoolStorage": "?"}
LEGACY_MAGIC = 0x1950a86a20f9469cfc6c
LEGACY_PROTOCOL = 1001
# MindSpore BatchNorm parameter name -> torch state-dict name; other names are the same in both.
BN_TORCH_NAMES = {"gamma": "weight", "beta": "bias", "moving_mean": "running_mean", "moving_variance": "running_var"}
# State-dict entries that are bookkeeping, not weights: dropped without comment.
BOOKKEEPING_SUFFIXES = (".num_batches_tracked",)


@dataclasses.dataclass(frozen=True, slots=True)
class StorageType:
    """What the pickle's ``torch.<X>Storage`` global resolves to (frozen: a pickle cannot alter it)."""
    name: str


@dataclasses.dataclass(frozen=True)
class StorageRef:
    """A storage named in the pickle: ``key`` locates its bytes; a legacy view starts at ``offset``."""
    key: str
    dtype: np.dtype
    numel: int
    offset: int = 0


@dataclasses.dataclass(frozen=True)
class TensorRef:
    storage: StorageRef
    offset: int
    size: tuple
    stride: tuple


class UnpicklingError(ValueError):
    """A pickle that is malformed or holds something a state dict does not."""


def _rebuild_tensor(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                    metadata=None):
    """Stands in for ``torch._utils._rebuild_tensor_v2``: records where the tensor's values are."""
    if not isinstance(storage, StorageRef):
        raise UnpicklingError("tensor without a storage")
    return TensorRef(storage, storage_offset, tuple(size), tuple(stride))


# What a REDUCE opcode may call: the two callables ``find_class`` resolves.
CALLABLES = (collections.OrderedDict, _rebuild_tensor)


def _integer(data, signed=True):
    return int.from_bytes(data, "little", signed=signed)


# Opcodes of pickle protocols 2-5 (torch writes 2) that push a value; the others are handled in load().
CONSTANTS = {b"N": None, b"\x88": True, b"\x89": False}                   # NONE, NEWTRUE, NEWFALSE
FIXED_INTEGERS = {b"J": (4, True), b"K": (1, False), b"M": (2, False)}  # BININT, BININT1, BININT2: (bytes, signed)
# Opcodes whose value is a run of bytes after a little-endian length: (length bytes, decoder).
SIZED = {b"X": (4, lambda b: b.decode("utf-8", "surrogatepass")),      # BINUNICODE
         b"\x8c": (1, lambda b: b.decode("utf-8", "surrogatepass")),   # SHORT_BINUNICODE
         b"\x8d": (8, lambda b: b.decode("utf-8", "surrogatepass")),   # BINUNICODE8
         b"T": (4, lambda b: b.decode("latin-1")),                      # BINSTRING (a Python 2 str)
         b"U": (1, lambda b: b.decode("latin-1")),                      # SHORT_BINSTRING
         b"B": (4, bytes), b"C": (1, bytes), b"\x8e": (8, bytes),       # BINBYTES, SHORT_BINBYTES, BINBYTES8
         b"\x8a": (1, _integer), b"\x8b": (4, _integer)}                # LONG1, LONG4
MEMO_KEY_BYTES = {b"q": 1, b"r": 4, b"h": 1, b"j": 4}  # BINPUT, LONG_BINPUT, BINGET, LONG_BINGET


class StateDictUnpickler:
    """Reads one pickle (``load``) from the binary file ``file``: protocols 2-5, limited to the opcodes that
    build data; ``find_class`` resolves only the globals of a torch state dict and ``storage_ref(saved_id)``
    turns a persistent id into a StorageRef."""

    def __init__(self, file, path, storage_ref=None):
        self.file, self.path, self.storage_ref = file, path, storage_ref
        self.memo = {}

    def find_class(self, module, name):
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor
        if module == "torch" and name in STORAGE_DTYPES:
            return StorageType(name)
        raise InputError(self.path, f"unexpected pickle content: {module}.{name}")

    def persistent_load(self, saved_id):
        if self.storage_ref is None or not isinstance(saved_id, tuple) or not saved_id or saved_id[0] != "storage":
            raise InputError(self.path, f"unexpected pickle content: persistent id {str(saved_id)[:60]}")
        return self.storage_ref(saved_id)

    def _read(self, n):
        data = self.file.read(n)
        if len(data) != n:
            raise EOFError("pickle ends early")
        return data

    def _line(self):
        line = self.file.readline()
        if not line.endswith(b"\n"):
            raise EOFError("pickle ends early")
        return line[:-1].decode("utf-8")

    def load(self):
        stack, marks, read = [], [], self._read

        def pop(count=1):
            if len(stack) < count:
                raise UnpicklingError("stack underflow")
            items = stack[len(stack) - count:]
            del stack[len(stack) - count:]
            return items

        def since_mark():
            if not marks:
                raise UnpicklingError("no mark on the stack")
            return pop(len(stack) - marks.pop())

        def top(kind, opcode):
            if not stack or not isinstance(stack[-1], kind):
                raise UnpicklingError(f"{opcode} on something that is not a {kind.__name__}")
            return stack[-1]

        while True:
            code = read(1)
            if code == b".":  # STOP
                if len(stack) != 1 or marks:
                    raise UnpicklingError("stack not empty at the end of the pickle")
                return stack.pop()
            if code in CONSTANTS:
                stack.append(CONSTANTS[code])
            elif code in FIXED_INTEGERS:
                size, signed = FIXED_INTEGERS[code]
                stack.append(_integer(read(size), signed))
            elif code in SIZED:
                size, decode = SIZED[code]
                stack.append(decode(read(_integer(read(size), signed=False))))
            elif code in MEMO_KEY_BYTES:
                key = _integer(read(MEMO_KEY_BYTES[code]), signed=False)
                if code in (b"q", b"r"):
                    self.memo[key] = top(object, "PUT")
                else:
                    stack.append(self.memo[key])
            elif code == b"\x94":  # MEMOIZE
                self.memo[len(self.memo)] = top(object, "MEMOIZE")
            elif code == b"\x80":  # PROTO
                if not 2 <= read(1)[0] <= 5:
                    raise UnpicklingError("unsupported pickle protocol")
            elif code == b"\x95":  # FRAME: its length; the frame's opcodes follow inline
                read(8)
            elif code == b"(":  # MARK
                marks.append(len(stack))
            elif code == b")":  # EMPTY_TUPLE
                stack.append(())
            elif code in (b"\x85", b"\x86", b"\x87"):  # TUPLE1, TUPLE2, TUPLE3
                stack.append(tuple(pop(code[0] - 0x84)))
            elif code == b"t":  # TUPLE
                stack.append(tuple(since_mark()))
            elif code == b"]":  # EMPTY_LIST
                stack.append([])
            elif code in (b"a", b"e"):  # APPEND, APPENDS
                items = pop() if code == b"a" else since_mark()
                top(list, "APPEND").extend(items)
            elif code == b"}":  # EMPTY_DICT
                stack.append({})
            elif code in (b"s", b"u"):  # SETITEM, SETITEMS
                items = pop(2) if code == b"s" else since_mark()
                if len(items) % 2:
                    raise UnpicklingError("SETITEMS with a key but no value")
                top(dict, "SETITEMS").update(zip(items[::2], items[1::2]))
            elif code == b"c":  # GLOBAL
                module = self._line()
                stack.append(self.find_class(module, self._line()))
            elif code == b"\x93":  # STACK_GLOBAL
                module, name = pop(2)
                stack.append(self.find_class(module, name))
            elif code == b"Q":  # BINPERSID
                stack.append(self.persistent_load(*pop()))
            elif code == b"R":  # REDUCE
                function, args = pop(2)
                if function not in CALLABLES or not isinstance(args, tuple):
                    raise UnpicklingError("REDUCE of something other than a tensor or an OrderedDict")
                stack.append(function(*args))
            elif code == b"b":  # BUILD: an OrderedDict's attributes (torch's _metadata), not needed
                pop()
                top(dict, "BUILD")
            elif code == b"0":  # POP
                pop()
            else:
                raise UnpicklingError(f"pickle opcode {code!r} is not part of a state dict")


def _storage_dtype(storage_type, byteorder):
    if not isinstance(storage_type, StorageType):
        raise UnpicklingError("storage without a storage type")
    return np.dtype(STORAGE_DTYPES[storage_type.name]).newbyteorder(byteorder)


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
        return StorageRef(str(key), _storage_dtype(storage_type, byteorder), _count(numel))

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
        root = roots.setdefault(str(key), StorageRef(str(key), _storage_dtype(storage_type, "<"), _count(numel)))
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
    from src.model import canonical_backbone_name, parameter_shapes
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


def main(argv=None):
    parser = argparse.ArgumentParser(description="Convert a torch backbone state dict to a MindSpore .ckpt "
                                                 "(torch is not needed).")
    parser.add_argument("--pth_path", required=True, help="torch .pth/.pt state dict, e.g. "
                                                          "wide_resnet50_2-95faca4d.pth")
    parser.add_argument("--backbone_name", default="wideresnet50",
                        help="wideresnet50 (alias wide_resnet50_2) or mobilenet_v2 (default: wideresnet50)")
    parser.add_argument("--ckpt_path", default=None, help="output .ckpt (default: the .pth path with .ckpt)")
    parser.add_argument("--layers_to_extract_from", nargs="+", default=None, metavar="LAYER",
                        help="keep only the stages up to the deepest of these taps, e.g. layer2 layer3 "
                             "(default: all stages, so any tap can be used)")
    args = parser.parse_args(argv)
    setup_logging()
    convert(args.pth_path, args.backbone_name, args.ckpt_path, args.layers_to_extract_from)
    return 0


if __name__ == "__main__":
    run(main)
