"""What export.py, preprocess.py, postprocess.py and scripts/run_infer_cpp.sh share.

``export.json`` (written by export.py beside the models) is the one description of a deployed model: the
input (shape, dtype and the settings that make it), the output (feature grid, embedding size), the scoring
(memory bank(s), ``num_nn``, gaussian sigma) and the sha256 of every file. Pre- and post-processing read it
instead of repeating constants. ``manifest.json`` (written by preprocess.py) maps every model input file to
its test image.

Two kinds of export share this module: a plain model (one bank, whole images; ``scoring`` in export.json)
and a high-resolution model (tiles, one bank per task, optional thumbnail; ``hr`` in export.json, see
``src/hr_deploy.py``). Either way the C++ runner runs once per *scoring job*: a folder of inputs, one
model, one bank. A plain export has one job on the whole input folder; a high-resolution export has one
per task (subfolder ``task_<k>/``) plus ``thumbnail/``.

``python -m src.deploy runner_jobs MODEL.mindir INPUT_DIR RESULT_DIR SAVE_FEATURES`` checks the export's
models and banks against their sha256 and prints the C++ runner's arguments, one job per line,
tab-separated (used by scripts/run_infer_cpp.sh).
"""
import os
import shutil
import sys
from dataclasses import dataclass
from typing import Callable

import numpy as np

from src.dataset import Sample
from src.errors import InputError
from src.io_utils import read_json
from src.memory_bank import INDEX_FILE, METADATA_FILE, MemoryBank, check_backbone_checkpoint, sha256_of

EXPORT_FILE = "export.json"
MANIFEST_FILE = "manifest.json"
LATENCY_FILE = "latency.json"
FORMAT_VERSION = 1


# ---------------------------------------------------------------------------------------------- export


@dataclass
class ModelInput:
    """One input size the deployed feature extractor sees, and which scoring job (bank) it feeds."""
    job: str               # "image" (plain model), a task name or "thumbnail"
    role: str              # "image", "tile" or "thumbnail"
    patch_config: dict     # the network (backbone, layers, embedding sizes)
    height: int
    width: int
    dimension: int         # embedding size of the bank(s) the features are scored against


@dataclass
class ExportPlan:
    """What export.py writes for one trained checkpoint, apart from the models themselves."""
    category: str
    metadata: dict         # bank.json / hr_model.json: seed and backbone_checkpoint_sha256
    config: dict
    inputs: list           # [ModelInput]
    copies: list           # [(source file, path inside the export folder)]
    describe: Callable     # ({job: model entry}, {file: sha256}) -> the kind's own export.json entries


def plain_export_plan(checkpoint_dir):
    """A single-bank model (train.py without ``hr``): whole images at ``data.imagesize``."""
    bank = MemoryBank.load(checkpoint_dir)
    config = bank.metadata["config"]
    size = int(config["data"]["imagesize"])

    def describe(models, files):
        return {
            # Exactly the settings Transform.from_config reads: preprocess.py rebuilds the training transform.
            "preprocess": {key: config["data"][key] for key in ("resize", "imagesize", "mean", "std")},
            "scoring": {"bank_file": INDEX_FILE, "bank_sha256": files[INDEX_FILE], "bank_size": len(bank),
                        "bank_dimension": bank.dimension,
                        "num_nn": int(config["patch"]["anomaly_scorer_num_nn"]),
                        "gaussian_sigma": float(config["postprocess"]["gaussian_sigma"])}}

    return ExportPlan(bank.metadata["category"], bank.metadata, config,
                      [ModelInput("image", "image", config["patch"], size, size, bank.dimension)],
                      [(os.path.join(checkpoint_dir, name), name) for name in (INDEX_FILE, METADATA_FILE)], describe)


def export_plan(checkpoint_dir):
    """The plan for a plain or a high-resolution checkpoint folder."""
    if not os.path.isfile(os.path.join(checkpoint_dir, METADATA_FILE)):
        from src.hr_cli import is_hr_model  # loads MindSpore: only for high-resolution checkpoints
        if is_hr_model(checkpoint_dir):
            from src.hr_deploy import export_plan as hr_export_plan
            return hr_export_plan(checkpoint_dir)
    return plain_export_plan(checkpoint_dir)


def model_file_names(height, width, role=None):
    """(MindSpore 2.x MINDIR, MINDIR v1 for MindSpore Lite and the C++ runner) for one input size."""
    base = f"patchcore_{height}x{width}" if role is None else f"patchcore_{role}_{height}x{width}"
    return f"{base}.mindir", f"{base}_lite.mindir"


def make_user_files(folder):
    """mindspore.export writes mode 0400 and mkstemp 0600: give every file the usual umask-based mode so
    that users can replace and share the export."""
    umask = os.umask(0)
    os.umask(umask)
    for parent, _, names in os.walk(folder):
        for name in names:
            os.chmod(os.path.join(parent, name), 0o666 & ~umask)


def export_files(folder):
    """Every file below ``folder`` as a '/'-separated relative path, sorted."""
    return sorted(os.path.relpath(os.path.join(parent, name), folder).replace(os.sep, "/")
                  for parent, _, names in os.walk(folder) for name in names)


def export_network(extractor, item, stage, taken, file_format):
    """Write the MINDIR pair of one network at one input size into ``stage``; returns its export.json entry.

    ``taken``: model file names already written (a thumbnail of the tiles' size but another network then
    gets ``patchcore_thumbnail_<H>x<W>``)."""
    import mindspore as ms

    from src import cli
    from src.mindir_compat import convert_mindir_to_v1

    example = ms.Tensor(np.zeros((1, 3, item.height, item.width), np.float32))
    output_shape = [int(v) for v in extractor(example).shape]
    mindir, lite_mindir = next(pair for pair in (model_file_names(item.height, item.width, role)
                                                 for role in (None, item.role) if role != "image")
                               if pair[0] not in taken)
    ms.export(extractor, example, file_name=os.path.join(stage, os.path.splitext(mindir)[0]), file_format=file_format)
    convert_mindir_to_v1(os.path.join(stage, mindir), os.path.join(stage, lite_mindir))
    entry = {"roles": [], "input_shape": [1, 3, item.height, item.width], "input_dtype": "float32", "layout": "NCHW",
             "output_shape": output_shape, "feature_grid": output_shape[2:], "embed_dim": output_shape[1],
             "mindir": mindir, "lite_mindir": lite_mindir}
    cli.logger.info("exported %s and %s: input %s -> patch features %s", mindir, lite_mindir, entry["input_shape"],
                    output_shape)
    return entry


def export_checkpoint(checkpoint_dir, ckpt_file, output_dir, file_format="MINDIR", device=("CPU", 0)):
    """Write ``output_dir`` (replaced as a whole): models, copied banks and export.json. Returns export.json's
    contents. The MindSpore device is set here, after the checkpoint and backbone weights are checked."""
    from src import cli
    from src.io_utils import staged_folder, write_json

    plan = export_plan(checkpoint_dir)
    check_backbone_checkpoint(plan.metadata, ckpt_file, "--ckpt_file")
    cli.set_device(*device)
    import mindspore as ms

    from src.patchcore import build_extractor, extractor_key

    seed = plan.metadata["seed"]
    extractors, written, by_job, pretrained = {}, {}, {}, None
    with staged_folder(output_dir) as stage:
        for item in plan.inputs:
            # One model per (network, input size): every task's tiles share it, and so does a thumbnail
            # of the tile size and network.
            network = extractor_key(item.patch_config)
            if network not in extractors:
                extractors[network], pretrained = build_extractor(item.patch_config, ckpt_file, seed)
            key = (network, item.height, item.width)
            if key not in written:
                written[key] = export_network(extractors[network], item, stage,
                                              {entry["mindir"] for entry in written.values()}, file_format)
            if written[key]["embed_dim"] != item.dimension:
                raise InputError(checkpoint_dir, f"the {item.role} network's features have dimension "
                                                 f"{written[key]['embed_dim']} but its bank {item.dimension}")
            if item.role not in written[key]["roles"]:
                written[key]["roles"].append(item.role)
            by_job[item.job] = written[key]
        for source, name in plan.copies:
            os.makedirs(os.path.dirname(os.path.join(stage, name)), exist_ok=True)
            shutil.copyfile(source, os.path.join(stage, name))
        files = {name: sha256_of(os.path.join(stage, name)) for name in export_files(stage)}
        meta = {
            "format_version": FORMAT_VERSION,
            "category": plan.category,
            "source": {"checkpoint_dir": os.path.abspath(checkpoint_dir),
                       "backbone_checkpoint": os.path.abspath(ckpt_file) if ckpt_file else None,
                       "backbone_checkpoint_sha256": plan.metadata.get("backbone_checkpoint_sha256"),
                       "pretrained": pretrained, "seed": seed},
            "models": list(written.values()),
            **plan.describe(by_job, files),
            "config": plan.config,
            "files": files,
            "versions": {"mindspore": ms.__version__},
        }
        write_json(os.path.join(stage, EXPORT_FILE), meta)
        make_user_files(stage)
    cli.logger.info("export written to %s", output_dir)
    return meta


# ----------------------------------------------------------------------------------- reading an export


def load_export(export_dir):
    """export.json of an export folder, checked for its format version."""
    path = os.path.join(export_dir, EXPORT_FILE)
    if not os.path.isfile(path):
        raise InputError(path, "export metadata not found (run export.py first)")
    meta = read_json(path, "export metadata")
    if meta.get("format_version") != FORMAT_VERSION:
        raise InputError(path, f"format_version {meta.get('format_version')!r}; this code reads {FORMAT_VERSION}")
    return meta


def is_hr_export(meta):
    return meta.get("hr") is not None


def verify_files(export_dir, meta, names):
    """Each named file exists and has the sha256 that export.json records for it."""
    for name in names:
        path = os.path.join(export_dir, name)
        if not os.path.isfile(path):
            raise InputError(path, f"missing (listed in {EXPORT_FILE})")
        if sha256_of(path) != meta["files"].get(name):
            raise InputError(path, f"sha256 differs from {EXPORT_FILE}: the file was replaced or is damaged; "
                                   "run export.py again")


def single_model(meta, export_dir):
    """The one model of an export that feeds whole images (the plain, non-tiled case)."""
    if is_hr_export(meta) or len(meta["models"]) != 1:
        raise InputError(os.path.join(export_dir, EXPORT_FILE),
                         f"{len(meta['models'])} input sizes; this step handles single-size exports")
    return meta["models"][0]


def scoring_jobs(meta, export_dir):
    """One dict per C++ runner run: name, folder (of inputs and results, "" for the whole folder),
    lite_mindir, feature_grid, output_shape, bank_file, bank_metadata, num_nn, and runner_scores (False when
    the runner must only compute features, for postprocess.py to score)."""
    if is_hr_export(meta):
        from src.hr_deploy import hr_jobs
        return hr_jobs(meta)
    model = single_model(meta, export_dir)
    scoring = meta["scoring"]
    return [{"name": None, "folder": "", "lite_mindir": model["lite_mindir"], "feature_grid": model["feature_grid"],
             "output_shape": model["output_shape"], "bank_file": scoring["bank_file"], "bank_metadata": METADATA_FILE,
             "num_nn": int(scoring["num_nn"]), "runner_scores": True}]


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
    jobs = scoring_jobs(meta, export_dir)
    verify_files(export_dir, meta, sorted({job[key] for job in jobs for key in ("lite_mindir", "bank_file")}))

    def scoring(job):
        if not job["runner_scores"]:
            return ["--save_features", "1"]
        return ["--bank_path", os.path.join(export_dir, job["bank_file"]), "--num_nn", str(job["num_nn"]),
                "--save_features", save_features]

    return [["--mindir_path", os.path.join(export_dir, job["lite_mindir"]), *scoring(job),
             "--input_path", job_path(input_dir, job), "--result_path", job_path(result_dir, job)] for job in jobs]


# ------------------------------------------------------------------------------------------ preprocess


def input_stem(position, sample):
    """Unique, sorting in test-list order (the runner processes a folder in name order)."""
    stem = os.path.splitext(os.path.basename(sample.image_path))[0]
    return f"{position:04d}_{sample.defect_type}_{stem}"


def manifest_entry(sample, dataset_path, **inputs):
    return {**inputs, "image": os.path.relpath(sample.image_path, dataset_path),
            "defect_type": sample.defect_type, "label": int(sample.label),
            "mask": None if sample.mask_path is None else os.path.relpath(sample.mask_path, dataset_path)}


def write_plain_inputs(meta, export_dir, samples, dataset_path, stage, progress):
    """One [1, 3, S, S] file per test image through the training Transform. Returns (manifest items, header)."""
    from src.dataset import Transform
    model = single_model(meta, export_dir)
    transform = Transform.from_config(meta["preprocess"])
    if model["input_shape"] != [1, 3, transform.imagesize, transform.imagesize]:
        raise InputError(os.path.join(export_dir, EXPORT_FILE),
                         f"model input {model['input_shape']} does not fit the preprocessing "
                         f"(crop {transform.imagesize})")
    items = []
    for position, sample in enumerate(progress(samples)):
        name = input_stem(position, sample) + ".npy"
        np.save(os.path.join(stage, name), transform.image(sample.image_path)[np.newaxis])
        items.append(manifest_entry(sample, dataset_path, file=name))
    return items, {"input_shape": model["input_shape"], "input_dtype": model["input_dtype"]}


def load_manifest(path):
    """(manifest dict, [(item, Sample)]) with the dataset paths made absolute again."""
    manifest = read_json(path, "manifest")
    for key in ("format_version", "category", "dataset_path", "preprocess", "items"):
        if key not in manifest:
            raise InputError(path, f"not a manifest written by preprocess.py (no '{key}')")
    root = manifest["dataset_path"]
    items = [(item, Sample(os.path.join(root, item["image"]), item["defect_type"], int(item["label"]),
                           None if item["mask"] is None else os.path.join(root, item["mask"])))
             for item in manifest["items"]]
    return manifest, items


# ----------------------------------------------------------------------------------------- postprocess


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


def evaluate_plain(meta, export_dir, result_path, items):
    """(image scores, metrics, "cpp"|"python") of a plain export, with eval.py's functions."""
    from src.anomaly_map import anomaly_map, image_score
    from src.dataset import Transform
    from src.features import to_patch_rows
    from src.metrics import compute_metrics
    (job,) = scoring_jobs(meta, export_dir)

    def python_scores():
        # bank.json checked against export.json; MemoryBank.load then checks the index against bank.json's
        # sha256 (the same digest), so the index is hashed once.
        verify_files(export_dir, meta, [job["bank_metadata"]])
        bank = MemoryBank.load(export_dir)
        return [bank.patch_scores(to_patch_rows(features)[0], job["num_nn"]).reshape(features.shape[2:])
                for features in (runner_features(result_path, stem, job) for stem in stems)]

    stems = [os.path.splitext(item["file"])[0] for item, _ in items]
    grids, source = score_grids(result_path, stems, job, python_scores)
    transform = Transform.from_config(meta["preprocess"])
    size = (transform.imagesize, transform.imagesize)
    scores = np.array([image_score(grid) for grid in grids], np.float64)
    maps = np.stack([anomaly_map(grid, size, float(meta["scoring"]["gaussian_sigma"])) for grid in grids])
    masks = np.stack([transform.mask(sample) for _, sample in items])
    labels = np.array([sample.label for _, sample in items])
    return scores, compute_metrics(scores, labels, maps, masks), source


def read_latency(result_path, jobs):
    """The runner's timing summary over all jobs that ran (None unless each wrote latency.json; a job
    without a result folder had no inputs):
    model load summed over runs, mean predict per network input, and C++ milliseconds per test image
    (model runs + patch scoring of all its inputs)."""
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
            "total_ms": sum(entry["predict_ms"] + entry.get("score_ms", 0.0) for entry in per_input)}


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 5 or argv[0] != "runner_jobs":
        print("usage: python -m src.deploy runner_jobs MODEL.mindir INPUT_DIR RESULT_DIR SAVE_FEATURES(0|1)",
              file=sys.stderr)
        return 2
    try:
        jobs = runner_jobs(*argv[1:])
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if any("\t" in arg or "\n" in arg for job in jobs for arg in job):
        print("error: a path holds a tab or a line break, which run_infer_cpp.sh cannot pass on", file=sys.stderr)
        return 2
    print("\n".join("\t".join(job) for job in jobs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
