"""File input and output: JSON read with one-line errors; atomic output (files and folders are written under
a temporary name in the same folder, then renamed)."""
import contextlib
import hashlib
import json
import os
import shutil
import tempfile

from src.utils.errors import InputError


def read_json(path, what):
    """The parsed JSON file ``path``; an InputError naming it ``what`` when it is missing or unreadable."""
    if not os.path.isfile(path):
        raise InputError(path, f"{what} not found")
    try:
        with open(path, "r", encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError) as exc:
        raise InputError(path, f"unreadable {what} ({exc})") from None


def sha256_of(path, chunk=1 << 20):
    """sha256 hex digest of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path next to ``path``; rename it onto ``path`` only on success."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    os.close(fd)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


def json_bytes(obj):
    """``obj`` as the indented JSON ``write_json`` writes (UTF-8 bytes)."""
    return (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode("utf-8")


def write_json(path, obj):
    """Write ``obj`` as indented JSON, atomically."""
    write_bytes(path, json_bytes(obj))


def write_bytes(path, data):
    """Write ``data`` atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)


def write_text(path, text):
    """Write ``text`` atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)


@contextlib.contextmanager
def staged_folder(final_path):
    """Yield a fresh hidden folder beside ``final_path``; on success it replaces ``final_path``.

    On any failure the staging folder is removed and ``final_path`` is left exactly as it was.
    """
    parent = os.path.dirname(os.path.abspath(final_path))
    os.makedirs(parent, exist_ok=True)
    stage = tempfile.mkdtemp(prefix=f".{os.path.basename(final_path)}.partial-", dir=parent)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(stage, 0o777 & ~umask)  # mkdtemp's 0700 would make the result private to its writer
    try:
        yield stage
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    old = None
    if os.path.exists(final_path):
        old = tempfile.mkdtemp(prefix=f".{os.path.basename(final_path)}.old-", dir=parent)
        os.rmdir(old)
        os.replace(final_path, old)
    os.replace(stage, final_path)
    if old:
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def staged_files(folder):
    """Yield a fresh hidden folder inside ``folder``; on success every file written in it is moved into
    ``folder`` (replacing files of the same name, keeping all others), on failure nothing is moved."""
    os.makedirs(folder, exist_ok=True)
    stage = tempfile.mkdtemp(prefix=".partial-", dir=folder)
    try:
        yield stage
        for name in sorted(os.listdir(stage)):
            os.replace(os.path.join(stage, name), os.path.join(folder, name))
    finally:
        shutil.rmtree(stage, ignore_errors=True)
