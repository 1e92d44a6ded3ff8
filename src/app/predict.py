"""predict.py: a score, an OK/REVIEW/NG decision and a picture for every new image (see src/inference/predict.py).

Writes into ``--output_dir`` (default MODEL_DIR/predict/) ``<name>.json`` and ``<name>.png`` per image, and with
``--save_map`` ``<name>.npy``; ``predict.json`` lists every result. Nothing is written unless every image could
be read and scored: an unreadable file stops the run with one line naming it (exit code 2), leaving the folder as
it was.
"""
import os

from tqdm import tqdm

from src.app import cli
from src.inference.predict import list_inputs, load_model
from src.utils.io import staged_files, write_json


def predict(args):
    predictor = load_model(args.model_dir, args.pre_ckpt_path, args.device_target, args.device_id, args.model_version)
    if args.batch_size:
        predictor.model.batch_size = args.batch_size
        for featurizer in predictor.model.featurizers.values():
            featurizer.batch_size = args.batch_size
    output_dir = args.output_dir or os.path.join(args.model_dir, "predict")
    items = list_inputs(args.input)
    results = []
    cli.setup_logging()
    with staged_files(output_dir) as stage:
        for result in tqdm(predictor.predict_listed(items), total=len(items), desc="predict", unit="img",
                           disable=None):
            result.save_to_json(stage)
            result.save_to_img(stage)
            if args.save_map:
                result.save_map(stage)
            if args.print:
                result.print()
            results.append(result.to_dict() | {"name": result.name})
        write_json(os.path.join(stage, "predict.json"), results)
    per_image = ", ".join(f"{part} {seconds / max(1, len(results)):.3f} s"
                          for part, seconds in predictor.model.timings.items())
    decided = [result["label"] for result in results]
    print(f"{len(results)} images: {predictor.rule.count(decided)} ({predictor.rule.describe()}); "
          f"per image {per_image}; network compile {predictor.model.compile_seconds:.2f} s once, apart; "
          f"results in {output_dir}")
    return 0
