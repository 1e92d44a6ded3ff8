"""Teaching the model what is OK on real photographs: false alarms taught on one half of new surface, measured on the
other half, and what an update costs against training.

The data are bench_realphoto's (``--part``, counts and ``--work_dir`` as there): per texture 16 training crops, and
test images in two halves of surface no training crop touches and that share none with each other, ``field`` and
``check``, each with 10 good and 10 defective images. Per texture:
1. train.py (``--config``, ``-o`` overrides) into ``--work_dir``/models-teach[-TAG], timed; eval.py: *before*.
2. The field half's good images the model does not pass (NG or REVIEW: what a person reviews and calls OK) taught with
   teach.py, timed; eval.py on the new version: *after*. The check half was never taught: only surface the field
   half shares with it can lower its false alarms. ``--hold_back``: every other such image is taught, and the
   false-alarm rate of the others (``fa_held``: never taught, but crops of the same area) is measured too.
3. ``--five``: a fresh copy of the trained model taught 5 of the field half's good images, timed against the same
   run's training (the issue's "an update with 5 images").
4. ``--retrain``: train.py on the training images and the same taught images, eval.py: what retraining with them
   gives, the most an update could be expected to give.
5. ``--service``: the same update through the service, as a person runs it on the review page, on a copy of the
   trained model: serve.py with records; the field half predicted through ``/predict`` (in path order); every
   flagged image reviewed (a good one as a false alarm, a defective one as a confirmed defect); a candidate version
   built (``POST /updates``) and activated; then both halves predicted through ``/predict`` again. Its false-alarm
   rates and recall (``*_service``) and the images it taught are compared with the command-line update's
   (``service_same``).
Per row: ``taught``; false-alarm rate (good images labelled NG) of each half and recall (defective images labelled NG)
before, after (and retrained); the thresholds; training and update seconds and their ratio. The table shows the key
columns; everything goes to ``--json`` (benchmarks/results/teach_<part>[-<tag>].json).

    .venv/bin/python -m benchmarks.bench_teach --part wood --five     # about 4 minutes on 2 cores
"""
import os
import secrets
import shutil
import time
from pathlib import Path

import src  # noqa: F401  (environment set-up first)
from benchmarks.bench_realphoto import data_arguments, halves, measured_rates, prepared, textures
from benchmarks.cli_runs import run_cli
from src.evaluation.metrics import format_table
from src.utils.io import read_json, write_json

ROOT = Path(__file__).resolve().parents[1]
COLUMNS = ["texture", "taught", "fa_check", "fa_check_after", "fa_check_retrained", "recall", "recall_after",
           "recall_retrained", "fa_field", "fa_field_after", "fa_held", "fa_held_after", "train_s", "teach_s",
           "teach5_s", "teach5/train", "fa_field_service", "fa_check_service", "service_same"]


def _evaluated(common, folder, parts, category):
    """eval.py on the model of ``common``; (its rates per half and overall, its per-image scores)."""
    run_cli("eval.py", common)
    scores = read_json(folder / "eval" / "scores.json", "per-image scores")
    return measured_rates(scores, parts, category), scores


def _by_path(scores, category):
    return {os.path.relpath(entry["path"], category): entry for entry in scores}


def _not_passed(scores, paths, category):
    """The good images among ``paths`` (relative to the category) whose decision is not OK."""
    by_path = _by_path(scores, category)
    return [path for path in paths if by_path[path]["label"] == 0 and by_path[path]["decision"] != "OK"]


def _false_alarms(scores, paths, category):
    """The share of ``paths`` (good images) labelled NG; None without any."""
    by_path = _by_path(scores, category)
    return sum(by_path[path]["decision"] == "NG" for path in paths) / len(paths) if paths else None


def _retrained(data, category, taught, models, args):
    """train.py on the training images plus ``taught`` (links in a dataset of its own), then eval.py."""
    root = Path(args.work_dir) / "data-retrain" / category
    shutil.rmtree(root, ignore_errors=True)
    (root / "train" / "good").mkdir(parents=True)
    for name in sorted(os.listdir(data / category / "train" / "good")):
        os.symlink(data / category / "train" / "good" / name, root / "train" / "good" / name)
    for number, path in enumerate(taught):
        os.symlink(data / category / path, root / "train" / "good" / f"taught_{number:03d}.png")
    for entry in ("test", "ground_truth", "generation.json"):
        os.symlink(data / category / entry, root / entry)
    common = ["--dataset_path", str(root.parent), "--category", category, "--output_dir", str(models),
              "--pre_ckpt_path", args.pre_ckpt_path, "--seed", str(args.seed)]
    run_cli("train.py", [*common, "--config", args.config, *_overrides(args)])
    return _evaluated(common, models / category, halves(data / category), category)[0]


def _overrides(args):
    return [item for override in args.override for item in ("-o", override)]


def _through_service(trained, data, category, parts, args):
    """The update of step 5 on a copy of the ``trained`` model folder: {taught: [relative paths], fa/recall per half
    after activation, update_s}."""
    import httpx
    from src.app.serve import launch, shut_down
    work = Path(args.work_dir) / "service-teach" / category
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(trained, work / "model")
    token = secrets.token_hex(16)
    auth = {"Authorization": f"Bearer {token}"}
    process, url = launch(work / "model", "--records", str(work / "records"), "--pre_ckpt_path", args.pre_ckpt_path,
                          "--max_batch", "1", wait_seconds=600, env=dict(os.environ, PATCHCORE_TOKEN=token))
    try:
        with httpx.Client(base_url=url, timeout=600) as client:
            def predict(path):
                data_bytes = (data / category / path).read_bytes()
                response = client.post("/predict", files={"file": (os.path.basename(path), data_bytes)})
                response.raise_for_status()
                return response.json()
            taught = []
            for path in parts["field"]:
                answer = predict(path)
                if answer["label"] != "OK":
                    verdict = "false_alarm" if "/good/" in path else "defect"
                    client.post(f"/records/{answer['record_id']}/review", json={"verdict": verdict, "user": "bench"},
                                headers=auth).raise_for_status()
                    taught += [path] if verdict == "false_alarm" else []
            started = time.perf_counter()
            update = client.post("/updates", json={"user": "bench"}, headers=auth).json()
            while update["state"] == "building":
                time.sleep(1)
                update = client.get(f"/updates/{update['id']}", headers=auth).json()
            if update["state"] != "ready":
                raise SystemExit(f"{category}: the service's update failed: {update['error']}")
            update_s = time.perf_counter() - started
            client.post(f"/versions/{update['version']}/activate", json={"user": "bench"},
                        headers=auth).raise_for_status()
            return dict(_service_rates(predict, parts), taught=taught, update_s=update_s,
                        summary=update["comparison"]["summary"])
    finally:
        shut_down(process)


def _service_rates(predict, parts):
    """fa_rate and recall of each half, every image decided by ``predict`` (a path's answer)."""
    row = {}
    for half, paths in parts.items():
        decided = [("/good/" not in path, predict(path)["label"]) for path in paths]
        good = [label == "NG" for defective, label in decided if not defective]
        bad = [label == "NG" for defective, label in decided if defective]
        row[f"fa_rate_{half}"], row[f"recall_{half}"] = sum(good) / len(good), sum(bad) / len(bad)
    return row


def texture_row(name, args):
    data, category = prepared(name, args.work_dir, args.cache, args.n_train, args.n_test_good, args.n_test_defect,
                              args.seed)
    models = Path(args.work_dir) / ("models-teach" + (f"-{args.tag}" if args.tag else ""))
    folder = models / category
    shutil.rmtree(folder, ignore_errors=True)   # a fresh model: teaching an old one would add a version to it
    common = ["--dataset_path", str(data), "--category", category, "--output_dir", str(models),
              "--pre_ckpt_path", args.pre_ckpt_path, "--seed", str(args.seed)]
    train_s, _ = run_cli("train.py", [*common, "--config", args.config, *_overrides(args)])
    parts = halves(data / category)
    before, scores = _evaluated(common, folder, parts, category)
    field_good = [path for path in parts["field"] if "/good/" in path]
    not_passed = _not_passed(scores, field_good, category)
    # --hold_back: every other one is taught, the rest measure surface the taught images share
    taught, held = (not_passed[::2], not_passed[1::2]) if args.hold_back else (not_passed, [])
    thresholds_before = read_json(folder / "model.json", "model")["thresholds"]
    row = dict(texture=name, taught=len(taught), field_good=len(field_good), held=len(held), train_s=train_s,
               fa_held_before=_false_alarms(scores, held, category), thresholds_before=thresholds_before,
               **{f"{key}_before": value for key, value in before.items()})
    service = _through_service(folder, data, category, parts, args) if args.service and not_passed else None
    if args.five:
        five = models / f"{category}-five"
        shutil.rmtree(five, ignore_errors=True)
        shutil.copytree(folder, five)
        row["teach5_s"], _ = run_cli("teach.py", ["--model_dir", five, "--input",
                                                  *[data / category / path for path in field_good[:5]]])
        row["teach5/train"] = row["teach5_s"] / train_s
        shutil.rmtree(five)
    if taught:
        row["teach_s"], _ = run_cli("teach.py", ["--model_dir", folder, "--input",
                                                 *[data / category / path for path in taught]])
        after, scores_after = _evaluated(common, folder, parts, category)
        row.update({f"{key}_after": value for key, value in after.items()},
                   fa_held_after=_false_alarms(scores_after, held, category),
                   thresholds_after=read_json(folder / "model.json", "model")["thresholds"])
        if service is not None:
            row.update({f"{key}_service": service[key] for key in ("fa_rate_field", "fa_rate_check", "recall_field",
                                                                   "recall_check", "update_s")},
                       taught_service=len(service["taught"]), comparison_service=service["summary"])
            row["service_same"] = service["taught"] == taught and all(
                service[key] == row[f"{key}_after"] for key in ("fa_rate_field", "fa_rate_check", "recall_field",
                                                                 "recall_check"))
        if args.retrain:
            retrained = _retrained(data, category, taught, Path(str(models) + "-retrain"), args)
            row.update({f"{key}_retrained": value for key, value in retrained.items()})
    return row


def table_row(row):
    def shown(key):
        value = row.get(key)
        return None if value is None else round(float(value), 2)
    return {"texture": row["texture"], "taught": f"{row['taught']}/{row['field_good']}",
            "fa_check": shown("fa_rate_check_before"), "fa_check_after": shown("fa_rate_check_after"),
            "fa_check_retrained": shown("fa_rate_check_retrained"), "recall": shown("recall_before"),
            "recall_after": shown("recall_after"), "recall_retrained": shown("recall_retrained"),
            "fa_field": shown("fa_rate_field_before"), "fa_field_after": shown("fa_rate_field_after"),
            "fa_held": shown("fa_held_before"), "fa_held_after": shown("fa_held_after"),
            "train_s": shown("train_s"), "teach_s": shown("teach_s"), "teach5_s": shown("teach5_s"),
            "teach5/train": shown("teach5/train"), "fa_field_service": shown("fa_rate_field_service"),
            "fa_check_service": shown("fa_rate_check_service"), "service_same": row.get("service_same")}


def main():
    parser = data_arguments(__doc__.strip().splitlines()[0])
    parser.add_argument("--five", action="store_true", help="also time an update with 5 images on a fresh copy")
    parser.add_argument("--retrain", action="store_true", help="also retrain with the taught images")
    parser.add_argument("--hold_back", action="store_true", help="teach every other field false alarm and measure "
                                                                 "the others (surface the taught ones share)")
    parser.add_argument("--service", action="store_true", help="also run the update through the service's review "
                                                               "API and compare its figures")
    parser.add_argument("--json", default=None, help="default benchmarks/results/teach_<part>[-<tag>].json")
    args = parser.parse_args()
    rows = [texture_row(name, args) for name in textures(args.part)]
    print(format_table([table_row(row) for row in rows], COLUMNS))
    suffix = f"-{args.tag}" if args.tag else ""
    path = args.json or str(ROOT / "benchmarks" / "results" / f"teach_{args.part}{suffix}.json")
    write_json(path, dict(part=args.part, tag=args.tag, config=args.config, overrides=args.override,
                          counts=dict(n_train=args.n_train, n_test_good=args.n_test_good,
                                      n_test_defect=args.n_test_defect, seed=args.seed), rows=rows))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
