"""anomalib's side of benchmarks/bench_peers.py: run by the peers venv's Python (torch, anomalib), never by the
project's. Prints one JSON line starting with ``PEERS `` on stdout.

    python peers_anomalib.py weights OUT.pth              # the seeded WRN50 both sides load
    python peers_anomalib.py run DATA CATEGORY WEIGHTS.pth OUT.npz [--coreset 0.1] [--batch 8]
"""
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from torch_reference import randomize_batch_norm_stats  # noqa: E402  (the parity tests' BatchNorm statistics)

PREFIX = "PEERS "


def weights(path):
    import torchvision
    torch.manual_seed(0)
    net = torchvision.models.wide_resnet50_2(weights=None).eval()
    randomize_batch_norm_stats(net, 0)
    torch.save(net.state_dict(), path)
    return {"torch": torch.__version__}


def run(data, category, weights_path, out, coreset, batch):
    from anomalib.data import MVTecAD
    from anomalib.engine import Engine
    from anomalib.models import Patchcore

    torch.manual_seed(0)
    model = Patchcore(backbone="wide_resnet50_2", layers=("layer2", "layer3"), pre_trained=False,
                      coreset_sampling_ratio=coreset, num_neighbors=9, post_processor=False, evaluator=False,
                      visualizer=False,
                      pre_processor=Patchcore.configure_pre_processor(image_size=(256, 256),
                                                                      center_crop_size=(224, 224)))
    state = torch.load(weights_path, map_location="cpu", weights_only=True)   # tensors only, no pickle code
    extractor = model.model.feature_extractor.feature_extractor
    missing, _ = extractor.load_state_dict(state, strict=False)
    if missing:
        raise SystemExit(f"{weights_path}: the extractor has weights the .pth lacks: {missing[:5]}")
    timings = {"features": 0.0, "coreset": 0.0}

    def timed(name, function):
        def wrapper(*args, **kwargs):
            started = time.perf_counter()
            result = function(*args, **kwargs)
            timings[name] += time.perf_counter() - started
            return result
        return wrapper

    model.training_step = timed("features", model.training_step)
    model.model.subsample_embedding = timed("coreset", model.model.subsample_embedding)
    datamodule = MVTecAD(root=data, category=category, train_batch_size=batch, eval_batch_size=batch, num_workers=0)
    engine = Engine(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                    default_root_dir=str(Path(out).parent / "anomalib_results"))
    started = time.perf_counter()
    engine.fit(model=model, datamodule=datamodule)
    fit_s = time.perf_counter() - started

    datamodule.setup("test")
    model.eval()
    scores, maps, paths = [], [], []
    loader = datamodule.test_dataloader()
    with torch.no_grad():
        first = next(iter(loader))
        model.model(model.pre_processor.transform(first.image[:1]))   # warm-up, untimed
        started = time.perf_counter()
        for batch_ in loader:
            prediction = model.model(model.pre_processor.transform(batch_.image))
            scores.extend(prediction.pred_score.reshape(-1).tolist())
            maps.extend(prediction.anomaly_map.reshape(len(batch_.image), *prediction.anomaly_map.shape[-2:]).numpy())
            paths.extend(batch_.image_path)
        predict_s = time.perf_counter() - started
    np.savez(out, scores=np.asarray(scores, np.float64), maps=np.stack(maps).astype(np.float32),
             paths=np.asarray(paths))
    import resource
    return {"fit_s": fit_s, "features_s": timings["features"], "coreset_s": timings["coreset"],
            "predict_s": predict_s, "images": len(scores), "bank": int(model.model.memory_bank.shape[0]),
            "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20,
            "anomalib": __import__("anomalib").__version__, "torch": torch.__version__,
            "threads": torch.get_num_threads()}


def main(argv):
    if argv[0] == "weights":
        result = weights(argv[1])
    else:
        coreset = float(argv[argv.index("--coreset") + 1]) if "--coreset" in argv else 0.1
        batch = int(argv[argv.index("--batch") + 1]) if "--batch" in argv else 8
        result = run(*argv[1:5], coreset, batch)
    print(PREFIX + json.dumps(result), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
