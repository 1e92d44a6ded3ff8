"""Reading an export folder: export.json, the C++ runner's jobs and arguments, its output files.

The C++ runner runs once per *scoring job*: a folder of inputs, one model, one bank (a task's, or the
thumbnail's), in subfolder ``task_<k>/`` or ``thumbnail/`` of the input and result folders.
``manifest.json`` (written by preprocess.py) maps every model input file to its test image.
"""
import os

import numpy as np

from src.data.sample import Sample
from src.deploy.export import EXPORT_FILE, FORMAT_VERSION
from src.inference.model import THUMBNAIL
from src.patchcore.scoring import build_image_score
from src.utils.errors import InputError
from src.utils.io import read_json, sha256_of

MANIFEST_FILE = "manifest.json"
LATENCY_FILE = "latency.json"


def load_export(export_dir):
    """export.json of an export folder, checked for its format version."""
    path = os.path.join(export_dir, EXPORT_FILE)
    if not os.path.isfile(path):
        raise InputError(path, "export metadata not found (run export.py first)")
    meta = read_json(path, "export metadata")
    if meta.get("format_version") != FORMAT_VERSION:
        raise InputError(path, f"format_version {meta.get('format_version')!r}; this code reads {FORMAT_VERSION}")
    return meta


def verify_files(export_dir, meta, names):
    """Each named file exists and has the sha256 that export.json records for it."""
    for name in names:
        path = os.path.join(export_dir, name)
        if not os.path.isfile(path):
            raise InputError(path, f"missing (listed in {EXPORT_FILE})")
        if sha256_of(path) != meta["files"].get(name):
            raise InputError(path, f"sha256 differs from {EXPORT_FILE}: the file was replaced or is damaged; "
                                   "run export.py again")


def scoring_jobs(meta):
    """One dict per C++ runner run (the tasks, then the thumbnail): name, folder (of inputs and results),
    lite_mindir, feature_grid, output_shape, bank_file, bank_metadata, num_nn, normalizer, and runner_scores
    (False when the runner must only compute features, for postprocess.py to score)."""
    hr = meta["hr"]
    jobs = [dict(task, name=name) for name, task in hr["tasks"].items()]
    return jobs + ([dict(hr["thumbnail"], name=THUMBNAIL)] if hr["thumbnail"] else [])


def job_path(folder, job):
    """The job's subfolder of an input or result folder."""
    return os.path.join(folder, job["folder"]) if job["folder"] else folder


def runner_jobs(mindir_path, input_dir, result_dir, save_features="0"):
    """patchcore_infer's arguments (model, bank, inputs, results, --save_features) of every scoring job of an
    exported model (given by either of its model files), after checking the models and banks against
    export.json. ``save_features`` "1" keeps the feature files of jobs scored in C++ too."""
    export_dir = os.path.dirname(os.path.abspath(mindir_path))
    if not os.path.isfile(mindir_path):
        raise InputError(mindir_path, "model file not found")
    meta = load_export(export_dir)
    name = os.path.basename(mindir_path)
    if not any(name in (m["mindir"], m["lite_mindir"]) for m in meta["models"]):
        listed = ", ".join(m["lite_mindir"] for m in meta["models"])
        raise InputError(mindir_path, f"not a model listed in {os.path.join(export_dir, EXPORT_FILE)} ({listed})")
    jobs = scoring_jobs(meta)
    verify_files(export_dir, meta, sorted({job[key] for job in jobs for key in ("lite_mindir", "bank_file")}))
    if build_image_score(meta["hr"]["image_score"]).needs_weights:
        save_features = "1"   # postprocess.py weighs each grid's largest cell by the bank, from its feature

    def scoring(job):
        if not job["runner_scores"]:
            return ["--save_features", "1"]
        return ["--bank_path", os.path.join(export_dir, job["bank_file"]), "--num_nn", str(job["num_nn"]),
                "--save_features", save_features]

    return [["--mindir_path", os.path.join(export_dir, job["lite_mindir"]), *scoring(job),
             "--input_path", job_path(input_dir, job), "--result_path", job_path(result_dir, job)] for job in jobs]


def input_stem(position, sample):
    """Unique, sorting in test-list order (the runner processes a folder in name order)."""
    stem = os.path.splitext(os.path.basename(sample.image_path))[0]
    return f"{position:04d}_{sample.defect_type}_{stem}"


def manifest_entry(sample, dataset_path, **inputs):
    return {**inputs, "image": os.path.relpath(sample.image_path, dataset_path),
            "defect_type": sample.defect_type, "label": int(sample.label),
            "mask": None if sample.mask_path is None else os.path.relpath(sample.mask_path, dataset_path)}


def load_manifest(path):
    """(manifest dict, [(item, Sample)]) with the dataset paths made absolute again."""
    manifest = read_json(path, "manifest")
    for key in ("format_version", "category", "dataset_path", "preprocess", "items"):
        if key not in manifest:
            raise InputError(path, f"not a manifest written by preprocess.py (no '{key}')")
    root = manifest["dataset_path"]
    items = [(item, Sample(os.path.join(root, item["image"]),
                           None if item["mask"] is None else os.path.join(root, item["mask"]),
                           label=int(item["label"]), defect_type=item["defect_type"]))
             for item in manifest["items"]]
    return manifest, items


def load_array(path, shape):
    """A float32 .npy file of exactly ``shape``."""
    if not os.path.isfile(path):
        raise InputError(path, "runner output missing (did the runner process every input of the manifest?)")
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise InputError(path, f"unreadable .npy ({exc})") from None
    if array.dtype != np.float32 or list(array.shape) != list(shape):
        raise InputError(path, f"{array.dtype} {list(array.shape)} but float32 {list(shape)} was expected")
    return array


def runner_features(result_dir, stem, job):
    """The runner's [1, D, h, w] patch features of one input (<stem>_0.npy)."""
    return load_array(os.path.join(result_dir, f"{stem}_0.npy"), job["output_shape"])


def score_grids(result_dir, stems, job, python_scores):
    """([h, w] patch-score grid per stem, "cpp" or "python") of one scoring job: the runner's
    <stem>_scores.npy, or when no input has one (the runner ran without --bank_path) or the job's scores
    need Python (``runner_scores`` false), ``python_scores()``: the grids from the runner's features."""
    score_files = [os.path.join(result_dir, f"{stem}_scores.npy") for stem in stems]
    present = [os.path.isfile(path) for path in score_files] if job["runner_scores"] else [False]
    if all(present):
        return [load_array(path, job["feature_grid"]) for path in score_files], "cpp"
    if any(present):
        raise InputError(result_dir, f"only {sum(present)} of {len(stems)} inputs have _scores.npy: outputs of "
                                     "different runs are mixed; run the runner again into an empty folder")
    return python_scores(), "python"


def one_source(sources, result_path):
    """"cpp" or "python" when every job's scores came from the same place."""
    if len(set(sources)) != 1:
        raise InputError(result_path, "some task folders hold C++ scores and others only features: outputs of "
                                      "different runs are mixed; run the runner again into an empty folder")
    return sources[0]


def read_latency(result_path, jobs):
    """The runner's timing summary over all jobs that ran (None unless each wrote latency.json; a job
    without a result folder had no inputs):
    model load summed over runs, mean predict per network input, the milliseconds of all model runs
    (network) and of all patch scoring (scoring) and their sum, and the OpenBLAS kernels the runs scored with."""
    runs = []
    for job in jobs:
        if not os.path.isdir(job_path(result_path, job)):
            continue
        path = os.path.join(job_path(result_path, job), LATENCY_FILE)
        if not os.path.isfile(path):
            return None
        runs.append(read_json(path, "runner latency file"))
    per_input = [entry for run in runs for entry in run.get("per_input", [])]
    if not per_input:
        return None
    return {"device_type": runs[0].get("device_type"), "threads": runs[0].get("threads"), "runs": len(runs),
            "model_load_ms": sum(run.get("model_load_ms", 0.0) for run in runs),
            "mean_predict_ms": sum(entry["predict_ms"] for entry in per_input) / len(per_input),
            "inputs": len(per_input),
            "network_ms": sum(entry["predict_ms"] for entry in per_input),
            "scoring_ms": sum(entry.get("score_ms", 0.0) for entry in per_input),
            "total_ms": sum(entry["predict_ms"] + entry.get("score_ms", 0.0) for entry in per_input),
            "openblas_cores": sorted({run["openblas_core"] for run in runs if "openblas_core" in run})}
