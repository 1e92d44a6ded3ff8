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


# Opcodes of pickle protocols 2-5 (torch writes 2) that push a value; StateDictUnpickler's _run_*_opcode methods
# handle the others.
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
        """The next pickled object in the file. Raises UnpicklingError at the first opcode a state dict does not
        hold (InputError at such a global or persistent id), EOFError when the pickle ends early."""
        self.stack, self.marks = [], []
        while True:
            code = self._read(1)
            if code == b".":  # STOP
                if len(self.stack) != 1 or self.marks:
                    raise UnpicklingError("stack not empty at the end of the pickle")
                return self.stack.pop()
            if not (self._run_value_opcode(code) or self._run_container_opcode(code) or self._run_global_opcode(code)):
                raise UnpicklingError(f"pickle opcode {code!r} is not part of a state dict")

    def _pop(self, count=1):
        if len(self.stack) < count:
            raise UnpicklingError("stack underflow")
        items = self.stack[len(self.stack) - count:]
        del self.stack[len(self.stack) - count:]
        return items

    def _since_mark(self):
        if not self.marks:
            raise UnpicklingError("no mark on the stack")
        return self._pop(len(self.stack) - self.marks.pop())

    def _top(self, kind, opcode):
        if not self.stack or not isinstance(self.stack[-1], kind):
            raise UnpicklingError(f"{opcode} on something that is not a {kind.__name__}")
        return self.stack[-1]

    def _run_value_opcode(self, code):
        """Runs ``code`` if it pushes a plain value, uses the memo or is one of PROTO, FRAME, MARK, POP; False if
        it is not."""
        if code in CONSTANTS:
            self.stack.append(CONSTANTS[code])
        elif code in FIXED_INTEGERS:
            size, signed = FIXED_INTEGERS[code]
            self.stack.append(_integer(self._read(size), signed))
        elif code in SIZED:
            size, decode = SIZED[code]
            self.stack.append(decode(self._read(_integer(self._read(size), signed=False))))
        elif code in MEMO_KEY_BYTES:
            key = _integer(self._read(MEMO_KEY_BYTES[code]), signed=False)
            if code in (b"q", b"r"):
                self.memo[key] = self._top(object, "PUT")
            else:
                self.stack.append(self.memo[key])
        elif code == b"\x94":  # MEMOIZE
            self.memo[len(self.memo)] = self._top(object, "MEMOIZE")
        elif code == b"\x80":  # PROTO
            if not 2 <= self._read(1)[0] <= 5:
                raise UnpicklingError("unsupported pickle protocol")
        elif code == b"\x95":  # FRAME: its length; the frame's opcodes follow inline
            self._read(8)
        elif code == b"(":  # MARK
            self.marks.append(len(self.stack))
        elif code == b"0":  # POP
            self._pop()
        else:
            return False
        return True

    def _run_container_opcode(self, code):
        """Runs ``code`` if it is a tuple's, list's or dict's opcode; False if it is not."""
        if code == b")":  # EMPTY_TUPLE
            self.stack.append(())
        elif code in (b"\x85", b"\x86", b"\x87"):  # TUPLE1, TUPLE2, TUPLE3
            self.stack.append(tuple(self._pop(code[0] - 0x84)))
        elif code == b"t":  # TUPLE
            self.stack.append(tuple(self._since_mark()))
        elif code == b"]":  # EMPTY_LIST
            self.stack.append([])
        elif code in (b"a", b"e"):  # APPEND, APPENDS
            items = self._pop() if code == b"a" else self._since_mark()
            self._top(list, "APPEND").extend(items)
        elif code == b"}":  # EMPTY_DICT
            self.stack.append({})
        elif code in (b"s", b"u"):  # SETITEM, SETITEMS
            items = self._pop(2) if code == b"s" else self._since_mark()
            if len(items) % 2:
                raise UnpicklingError("SETITEMS with a key but no value")
            self._top(dict, "SETITEMS").update(zip(items[::2], items[1::2]))
        elif code == b"b":  # BUILD: an OrderedDict's attributes (torch's _metadata), not needed
            self._pop()
            self._top(dict, "BUILD")
        else:
            return False
        return True

    def _run_global_opcode(self, code):
        """Runs ``code`` if it is a global's, a persistent id's or a call's opcode (through ``find_class``,
        ``persistent_load`` and CALLABLES only); False if it is not."""
        if code == b"c":  # GLOBAL
            module = self._line()
            self.stack.append(self.find_class(module, self._line()))
        elif code == b"\x93":  # STACK_GLOBAL
            module, name = self._pop(2)
            self.stack.append(self.find_class(module, name))
        elif code == b"Q":  # BINPERSID
            self.stack.append(self.persistent_load(*self._pop()))
        elif code == b"R":  # REDUCE
            function, args = self._pop(2)
            if function not in CALLABLES or not isinstance(args, tuple):
                raise UnpicklingError("REDUCE of something other than a tensor or an OrderedDict")
            self.stack.append(function(*args))
        else:
            return False
        return True


def storage_dtype(storage_type, byteorder):
    if not isinstance(storage_type, StorageType):
        raise UnpicklingError("storage without a storage type")
    return np.dtype(STORAGE_DTYPES[storage_type.name]).newbyteorder(byteorder)
