"""The model folder's housekeeping: which banks of an earlier run are complete and kept, staging leftovers of a
killed run, banks of tasks the model no longer has, and the sha256 of each bank for ``model.json`` (written last:
the model is complete only once it exists)."""
import contextlib
import os
import shutil

from src.inference.model import MODEL_FILE, THUMBNAIL
from src.patchcore.memory_bank import INDEX_FILE, METADATA_FILE
from src.training.jobs import is_complete
from src.utils.io import sha256_of


def prepare_model_folder(root, jobs):
    """Mark the model incomplete (no model.json) and drop staging folders of ``jobs`` left by a killed run."""
    os.makedirs(root, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        os.remove(os.path.join(root, MODEL_FILE))
    for entry in os.listdir(root):
        if entry.startswith(".") and ".partial-" in entry and entry[1:].split(".partial-")[0] in jobs:
            shutil.rmtree(os.path.join(root, entry), ignore_errors=True)


def complete_jobs(root, fingerprints, detector_class, warn):
    """The jobs whose bank in ``root`` verifies and was trained with the same fingerprint (kept on a resume)."""
    return sorted(name for name in fingerprints
                  if is_complete(os.path.join(root, name), fingerprints[name], detector_class, warn))


def bank_digest(root, name):
    """The sha256 of a trained job's bank files, for model.json."""
    folder = os.path.join(root, name)
    return {"bank_sha256": {file: sha256_of(os.path.join(folder, file)) for file in (INDEX_FILE, METADATA_FILE)}}


def remove_stale_jobs(root, jobs):
    """Banks of tasks an earlier run had and this one has not (e.g. more tasks before)."""
    for entry in os.listdir(root):
        folder = os.path.join(root, entry)
        if entry not in jobs and not entry.startswith(".") and os.path.isfile(os.path.join(folder, METADATA_FILE)) \
                and (entry == THUMBNAIL or entry.startswith("task_")):
            shutil.rmtree(folder)
