"""A model folder's versions: the trained model is version 1, every "teach it OK" update a new one
(``src/training/teach.py``), and ``model.json`` is always a byte-for-byte copy of the active version's file.

Layout beside the trained model's files: ``versions/<n>.json`` (version n's model.json, archived; version 1's on the
first update) and ``versions/<n>/<job>/`` (version n's banks; version 1's stay where training put them, and
model.json's ``jobs.<job>.folder`` says where each bank of a version lies). Nothing of a version is ever rewritten:
activating one (a rollback, or forward again) only replaces model.json, atomically, with the bytes of its file. A
version's ``model_version`` entry names its number, its parent (number and the sha256 of its model.json) and the
images it added; version 1 has none. Writers hold the folder's lock (:func:`version_lock`): an update and an
activation never interleave.
"""
import contextlib
import fcntl
import os

from src.utils.errors import InputError
from src.utils.io import read_json, sha256_of, write_bytes

MODEL_FILE = "model.json"
VERSIONS_DIR = "versions"


def version_number(meta):
    """The version a model.json's contents describe (1: a trained model that was never updated)."""
    return int((meta.get("model_version") or {}).get("number", 1))


def parent_number(meta):
    """The number of the version a model.json's contents were taught from (None: a trained model)."""
    parent = (meta.get("model_version") or {}).get("parent")
    return None if parent is None else int(parent["number"])


def version_file(root, number):
    """Where version ``number``'s model.json is archived."""
    return os.path.join(root, VERSIONS_DIR, f"{int(number)}.json")


def version_folder(number):
    """Version ``number``'s bank folder, relative to the model folder (model.json's ``jobs.<job>.folder``)."""
    return f"{VERSIONS_DIR}/{int(number)}"


def archived_numbers(root):
    """The numbers of the archived versions, ascending."""
    folder = os.path.join(root, VERSIONS_DIR)
    if not os.path.isdir(folder):
        return []
    return sorted(int(name[:-5]) for name in os.listdir(folder) if name.endswith(".json") and name[:-5].isdigit())


def has_versions(root):
    """True when the folder holds versions beyond the trained model (an update ran)."""
    return bool(archived_numbers(root))


def meta_path(root, number=None):
    """The model.json of version ``number`` (None: the active one); an InputError naming the versions there when
    it does not exist."""
    if number is None:
        return os.path.join(root, MODEL_FILE)
    number = int(number)
    path = version_file(root, number)
    if os.path.isfile(path):
        return path
    active = os.path.join(root, MODEL_FILE)
    if os.path.isfile(active) and version_number(read_json(active, "model file")) == number:
        return active   # the trained model before any update: version 1, not archived yet
    known = archived_numbers(root) or [1]
    raise InputError(root, f"no model version {number} (versions: {', '.join(map(str, known))})")


def list_versions(root):
    """[{number, parent, added, active, sha256}] of every version, ascending; ``added``: how many images the
    version's update taught."""
    active = sha256_of(os.path.join(root, MODEL_FILE))
    entries = []
    for number in archived_numbers(root) or [version_number(read_json(os.path.join(root, MODEL_FILE), "model"))]:
        path = meta_path(root, number)
        record = read_json(path, "model version").get("model_version") or {}
        digest = sha256_of(path)
        entries.append({"number": number, "parent": (record.get("parent") or {}).get("number"),
                        "added": len(record.get("added", [])), "active": digest == active, "sha256": digest})
    return entries


def activate(root, number):
    """Make version ``number`` the active one (under the folder's lock): model.json becomes its file's bytes,
    atomically. Returns the number of the version that was active."""
    with version_lock(root):
        current = version_number(read_json(os.path.join(root, MODEL_FILE), "model file"))
        source = meta_path(root, number)
        if source != os.path.join(root, MODEL_FILE):
            with open(source, "rb") as f:
                write_active(root, f.read())
        return current


def write_active(root, data):
    """model.json := ``data`` (a version file's bytes), atomically; the caller holds the lock."""
    write_bytes(os.path.join(root, MODEL_FILE), data)


@contextlib.contextmanager
def version_lock(root):
    """Hold the model folder's lock (an flock on the folder itself: no file is added) during the block."""
    if not os.path.isdir(root):
        raise InputError(root, "no such model folder")
    fd = os.open(root, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)   # releases the lock
