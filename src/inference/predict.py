"""Inspecting new images (PaddleX-style): ``load_model(model_dir)``, then ``for res in model.predict(x)``.

``x`` is an image file, a folder (searched recursively, sorted), a text file listing images (one path per
line, relative to the list's folder; blank lines and ``#`` comments skipped), an HxWx3 uint8 RGB array, or a
list of these. Every result holds, for one image: the raw image score (eval.py's), the score normalised to
[0, 1] with the model's image threshold at 0.5, the OK/NG label at that threshold, the raw image and pixel
thresholds, the regions of the pixel decision (connected components of map >= pixel threshold, 8-connected:
bounding box [x, y, w, h] and area in the stored image's pixels, highest normalised pixel score, ``source``
"pixel_threshold") and the model's name and ``model.json`` sha256. An NG image always has a region: when no
pixel reaches the pixel threshold, the region is where its score came from, the map's peak outlined at half
its height above the map's median (``source`` "score_peak"), so a user told "defective" is shown where. ``res.print()``, ``res.save_to_json(dir)``, ``res.save_to_img(dir)``
and ``res.save_map(dir)`` write ``<name>.json``, ``<name>.png`` (image | heat map | colour bar: the map's
pixel scores normalised as the image score is, on one fixed 0-1 scale where 0.5 is the image threshold, with
the outlines of the regions and the score and label) and ``<name>.npy`` (the raw map, in the pixels of the
image as the model sees it: its view).
"""
import collections
import json
import os

import cv2
import numpy as np

from src.data.folders import images_below
from src.data.sample import IMAGE_EXTENSIONS, Sample
from src.evaluation.visualize import prediction_picture, save_picture
from src.inference.model import MODEL_FILE, Model
from src.patchcore.normalization import ScoreNormalizer
from src.utils.errors import InputError
from src.utils.io import atomic_path, sha256_of, write_json

LIST_SUFFIXES = (".txt", ".lst")


def _listed(path):
    root = os.path.dirname(os.path.abspath(path))
    with open(path, "r", encoding="utf-8") as f:
        lines = [line.strip() for line in f]
    return [os.path.join(root, line) for line in lines if line and not line.startswith("#")]


def list_inputs(inputs):
    """[(name, Sample)] for ``inputs`` (module docstring); names are unique: the path below a given folder with
    ``/`` as ``__``, else the file name (``<folder>__<name>`` where two files share a name), without extension
    (``array_<k>`` for arrays)."""
    items = []
    for entry in inputs if isinstance(inputs, (list, tuple)) else [inputs]:
        if isinstance(entry, np.ndarray):
            items.append((f"array_{len(items):03d}", Sample(entry)))
            continue
        path = os.fspath(entry)
        if os.path.isdir(path):
            files = images_below(path)
            if not files:
                raise InputError(path, f"no images ({', '.join(IMAGE_EXTENSIONS)}) in the folder")
            items += [(os.path.splitext(os.path.relpath(f, path))[0].replace(os.sep, "__"), Sample(f)) for f in files]
        elif path.lower().endswith(LIST_SUFFIXES) and os.path.isfile(path):
            items += [(os.path.splitext(os.path.basename(f))[0], Sample(f)) for f in _listed(path)]
        else:
            items.append((os.path.splitext(os.path.basename(path))[0], Sample(path)))
    if not items:
        raise InputError("input", "no images given")
    counts = collections.Counter(name for name, _ in items)
    items = [(f"{os.path.basename(os.path.dirname(sample.image_path))}__{name}"
              if counts[name] > 1 and sample.image_path else name, sample) for name, sample in items]
    seen = collections.Counter()
    for position, (name, sample) in enumerate(items):
        seen[name] += 1
        if seen[name] > 1:
            items[position] = (f"{name}_{seen[name]}", sample)
    return items


class Prediction:
    """One image's result; see the module docstring for the fields (``to_dict()``)."""

    def __init__(self, name, sample, image, raw_map, fields, normalised_map, decision):
        self.name, self.sample, self.image, self.raw_map = name, sample, image, raw_map
        self.fields, self.normalised_map, self.decision = fields, normalised_map, decision

    def to_dict(self):
        return dict(self.fields)

    @property
    def label(self):
        return self.fields["label"]

    def print(self):
        print(json.dumps(self.fields))

    def save_to_json(self, folder):
        write_json(os.path.join(folder, f"{self.name}.json"), self.fields)

    def save_to_img(self, folder):
        path = os.path.join(folder, f"{self.name}.png")
        with atomic_path(path) as tmp:
            save_picture(tmp + ".png", prediction_picture(self.image, self.normalised_map, self.decision,
                                                           self.fields["image_score"], self.label))
            os.replace(tmp + ".png", tmp)

    def save_map(self, folder):
        with atomic_path(os.path.join(folder, f"{self.name}.npy")) as tmp:
            with open(tmp, "wb") as f:
                np.save(f, self.raw_map.astype(np.float32), allow_pickle=False)


class Predictor:
    """A trained model ready to inspect images (``load_model``)."""

    def __init__(self, model, model_dir):
        self.model = model
        thresholds, normalizer = model.meta.get("thresholds"), model.meta.get("score_normalizer")
        if not thresholds or not normalizer:
            raise InputError(os.path.join(model_dir, MODEL_FILE), "the model has no thresholds (it was trained "
                                                                  "with val_config: null): retrain it with a val_config")
        self.image_threshold, self.pixel_threshold = thresholds["image"], thresholds["pixel"]
        self.normalizer = ScoreNormalizer.from_dict(normalizer)
        self.identity = {"name": model.meta["category"], "sha256": sha256_of(os.path.join(model_dir, MODEL_FILE))}

    def predict(self, inputs):
        """Yield a Prediction per image of ``inputs`` (module docstring), ``model.batch_size`` images at a time."""
        return self.predict_listed(list_inputs(inputs))

    def predict_listed(self, items):
        """``predict`` of inputs already listed by ``list_inputs``: [(name, Sample)]."""
        for (name, _), (sample, image, score, amap) in zip(items, self.model.predict_samples([s for _, s in items])):
            yield self._result(name, sample, image, score, amap)

    def _result(self, name, sample, image, raw_score, amap):
        original_size = sample.original_size()
        normalised = self.normalizer.transform(amap)
        decision = amap >= self.pixel_threshold if self.pixel_threshold is not None else np.zeros(amap.shape, bool)
        label = "NG" if raw_score >= self.image_threshold else "OK"
        source = "pixel_threshold"
        if label == "NG" and not decision.any():
            decision, source = score_peak(amap), "score_peak"
        count, labels, stats, _ = cv2.connectedComponentsWithStats(decision.astype(np.uint8), connectivity=8)
        sx, sy = original_size[0] / amap.shape[1], original_size[1] / amap.shape[0]
        view = sample.view
        regions = []
        for component in range(1, count):
            x, y, w, h, area = (int(v) for v in stats[component])
            box = view.to_original([x, y, w, h], original_size) if view is not None else [x, y, w, h]
            regions.append({"bbox": box, "area": int(round(area * sx * sy)),
                            "max_score": float(normalised[labels == component].max()), "source": source})
        regions.sort(key=lambda region: -region["max_score"])
        fields = {"input_path": os.path.abspath(sample.image_path) if sample.image_path else None,
                  "image_score": float(self.normalizer.transform(np.float64(raw_score))),
                  "raw_score": float(raw_score), "label": label,
                  "image_threshold": float(self.image_threshold),
                  "pixel_threshold": None if self.pixel_threshold is None else float(self.pixel_threshold),
                  "regions": regions, "image_size": list(original_size), "map_size": [amap.shape[1], amap.shape[0]],
                  "view": None if view is None else view.to_dict(), "model": self.identity}
        return Prediction(name, sample, image, amap, fields, normalised, decision)


def score_peak(amap):
    """[H, W] bool: the connected part (8-connected) of ``amap`` >= half-way between its median and its maximum
    that holds the maximum: where the image's score came from, outlined at half height above the background."""
    level = float(np.median(amap)) + 0.5 * (float(amap.max()) - float(np.median(amap)))
    _, labels = cv2.connectedComponents((amap >= level).astype(np.uint8), connectivity=8)
    peak = np.unravel_index(int(np.argmax(amap)), amap.shape)
    return labels == labels[peak]


def load_model(model_dir, pre_ckpt_path=None, device_target="CPU", device_id=0):
    """A Predictor of the model trained into ``model_dir``. The backbone weights are the checkpoint recorded in
    ``model.json`` (its sha256 checked) unless ``pre_ckpt_path`` is given."""
    from src.utils.device import set_device
    meta = Model.read_meta(model_dir)
    if pre_ckpt_path is None and meta.get("backbone_checkpoint_sha256") is not None:
        pre_ckpt_path = meta.get("backbone_checkpoint")
        if not pre_ckpt_path or not os.path.isfile(pre_ckpt_path):
            raise InputError(pre_ckpt_path or os.path.join(model_dir, MODEL_FILE),
                             "the model's backbone checkpoint is not there: pass it with --pre_ckpt_path")
    set_device(device_target, device_id)
    return Predictor(Model.load(model_dir, pre_ckpt_path), model_dir)
