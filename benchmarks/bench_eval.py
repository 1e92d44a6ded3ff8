"""eval.py's cost per image against the network and the scoring it runs: where evaluation time goes.

Loads a trained model (train.py's folder) as eval.py does (its evaluation settings, evaluators and decisions at the
model's thresholds), runs one untimed image first (graph compilation), then evaluates the category's test images
with ``run_inference`` into a temporary folder: maps, metrics, pictures and JSON, as eval.py writes them. Per image:

- network: the featurizers' batches (tile cut and resize included), from the model's own timings;
- scoring: the kNN search and normalisation of the grids;
- map: composing the image's map from its grids (stitching, smoothing, resizing);
- loading: reading and decoding the test images (the rest of prediction);
- evaluation: what run_inference adds (masks, metrics with PRO, pictures, JSON);
- eval / (network + scoring): the issue's bound is 1.3.

    .venv/bin/python -m benchmarks.bench_eval --model_dir OUTPUT/CATEGORY --dataset_path DATA [--pre_ckpt_path P]
Prints one table row per model and appends it to ``--json`` (default benchmarks/results/eval.json).
"""
import argparse
import os
import tempfile
import time
from pathlib import Path

import src  # noqa: F401  (environment set-up first)
from src.app.evaluate import apply_settings, eval_settings
from src.data.mvtec import list_test_samples
from src.evaluation.evaluate import default_evaluators, run_inference, with_decisions
from src.evaluation.metrics import format_table
from src.inference.model import Model
from src.utils.device import set_device
from src.utils.io import read_json, write_json

ROOT = Path(__file__).resolve().parents[1]


def measure(model_dir, dataset_path, pre_ckpt_path):
    category = os.path.basename(os.path.normpath(model_dir))
    meta = Model.read_meta(model_dir)
    settings = eval_settings(meta, [])
    samples = list_test_samples(dataset_path, category)
    set_device("CPU", 0)
    model = Model.load(model_dir, pre_ckpt_path)
    apply_settings(model, settings)
    list(model.predict_samples(samples[:1]))            # compile the graphs, untimed
    model.timings.update({key: 0.0 for key in model.timings})
    evaluators = with_decisions(default_evaluators(settings["eval_resize"]), meta.get("thresholds"),
                                [sample.defect_type for sample in samples], settings["eval_resize"])
    predicting = [0.0]
    predict_samples = model.predict_samples

    def timed_predict(chosen):   # the time spent inside prediction, apart from what run_inference adds
        batches = predict_samples(chosen)
        while True:
            started = time.perf_counter()
            item = next(batches, None)
            predicting[0] += time.perf_counter() - started
            if item is None:
                return
            yield item

    model.predict_samples = timed_predict
    names = [f"{s.defect_type}_{os.path.splitext(os.path.basename(s.image_path))[0]}" for s in samples]
    with tempfile.TemporaryDirectory() as stage:
        started = time.perf_counter()
        run_inference(model, samples, evaluators, clsname=category, names=names, results_root=stage,
                      vis_root=os.path.join(stage, "vis"), vis_size=settings["vis_size"])
        total = time.perf_counter() - started
    n = len(samples)
    network, scoring, composing = (model.timings[key] for key in ("network", "scoring", "map"))
    per = {key: round(value / n, 4) for key, value in dict(
        network_s=network, scoring_s=scoring, map_s=composing,
        loading_s=predicting[0] - network - scoring - composing, evaluation_s=total - predicting[0],
        eval_s=total).items()}
    return dict(model=category, images=n, image_size="x".join(map(str, model.image_size)), **per,
                eval_over_network_scoring=round(total / (network + scoring), 3))


def main():
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--model_dir", required=True, help="a trained model: OUTPUT_DIR/CATEGORY")
    parser.add_argument("--dataset_path", required=True, help="the MVTec-layout folder holding CATEGORY/test")
    parser.add_argument("--pre_ckpt_path", default=None)
    parser.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "eval.json"))
    args = parser.parse_args()
    row = measure(args.model_dir, args.dataset_path, args.pre_ckpt_path)
    print(format_table([row], list(row)))
    rows = read_json(args.json, "results") if os.path.isfile(args.json) else []
    write_json(args.json, [r for r in rows if r["model"] != row["model"]] + [row])
    print(f"written: {args.json}")


if __name__ == "__main__":
    main()
