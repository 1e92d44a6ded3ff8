"""A pickle reader for torch state dicts that runs no code.

``StateDictUnpickler`` interprets the pickle opcodes that carry data (numbers, strings, tuples, lists, dicts,
memo, persistent ids; protocols 2-5) instead of using Python's ``pickle`` module: it calls nothing but the
tensor-rebuild stand-in and ``OrderedDict``, resolves no other global, and stops at the first opcode or global
outside that set, so a .pth file cannot run code through it.
"""
import collections
import dataclasses

import numpy as np

from src.utils.errors import InputError

STORAGE_DTYPES = {"FloatStorage": "f4", "DoubleStorage": "f8", "HalfStorage": "f2", "LongStorage": "i8",
                  "IntStorage": "i4", "ShortStorage": "i2", "CharStorage": "i1", "ByteStorage": "u1",
                  "BoolStorage": "?"}

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


def storage_dtype(storage_type, byteorder):
    if not isinstance(storage_type, StorageType):
        raise UnpicklingError("storage without a storage type")
    return np.dtype(STORAGE_DTYPES[storage_type.name]).newbyteorder(byteorder)
