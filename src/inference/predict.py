"""Inspecting new images (PaddleX-style): ``load_model(model_dir)``, then ``for res in model.predict(x)``.

``x`` is an image file, a folder (searched recursively, sorted), a text file listing images (one path per
line, relative to the list's folder; blank lines and ``#`` comments skipped), an HxWx3 uint8 RGB array, or a
list of these. Every result holds, for one image: the raw image score (eval.py's), the score normalised to
[0, 1] with the model's image threshold at 0.5, the label (NG at that threshold; REVIEW at or above the model's
review threshold, when it has one; else OK), the raw image, review and pixel thresholds (and the normalised score
from which an image is REVIEW, ``review_image_score``), the regions of the pixel
decision (``src.decisions.thresholds``: an NG or REVIEW image always has one) and the
model's name and ``model.json`` sha256. ``res.print()``, ``res.save_to_json(dir)``, ``res.save_to_img(dir)``
and ``res.save_map(dir)`` write ``<name>.json``, ``<name>.png`` (image | heat map | colour bar: the map's
pixel scores normalised as the image score is, on one fixed 0-1 scale where 0.5 is the image threshold, with
the outlines of the regions and the score and label) and ``<name>.npy`` (the raw map, in the pixels of the
image as the model sees it: its view).
"""
import collections
import json
import os

import numpy as np

from src.data.folders import images_below
from src.data.sample import IMAGE_EXTENSIONS, Sample
from src.evaluation.visualize import prediction_picture, save_picture
from src.decisions.thresholds import DecisionRule
from src.inference.model import Model, recorded_checkpoint
from src.inference.versions import meta_path, version_number
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

    def picture(self):
        """RGB uint8: the image | its heat map with the regions, score and label | the colour bar."""
        image = self.image if self.image is not None else self.sample.load_image()
        return prediction_picture(image, self.normalised_map, self.decision, self.fields["image_score"], self.label,
                                  self.fields["review_image_score"])

    def save_to_img(self, folder):
        path = os.path.join(folder, f"{self.name}.png")
        with atomic_path(path) as tmp:
            save_picture(tmp + ".png", self.picture())
            os.replace(tmp + ".png", tmp)

    def save_map(self, folder):
        with atomic_path(os.path.join(folder, f"{self.name}.npy")) as tmp:
            with open(tmp, "wb") as f:
                np.save(f, self.raw_map.astype(np.float32), allow_pickle=False)


class Predictor:
    """A trained model ready to inspect images (``load_model``)."""

    def __init__(self, model, model_dir, version=None):
        self.model, self.model_dir = model, model_dir
        path = meta_path(model_dir, version)
        self.rule = DecisionRule(model.meta.get("thresholds"), model.meta.get("score_normalizer"), path)
        self.identity = {"name": model.meta["category"], "version": version_number(model.meta),
                         "sha256": sha256_of(path)}

    @property
    def image_threshold(self):
        return self.rule.image_threshold

    @property
    def pixel_threshold(self):
        return self.rule.pixel_threshold

    @property
    def review_threshold(self):
        """The raw score from which an image is REVIEW (below the image threshold); None: the model says OK/NG."""
        return self.rule.review_threshold

    def predict(self, inputs):
        """Yield a Prediction per image of ``inputs`` (module docstring), ``model.batch_size`` images at a time."""
        return self.predict_listed(list_inputs(inputs))

    def predict_listed(self, items):
        """``predict`` of inputs already listed by ``list_inputs``: [(name, Sample)]."""
        for (name, _), (sample, image, score, amap) in zip(items, self.model.predict_samples([s for _, s in items])):
            yield self._result(name, sample, image, score, amap)

    def _result(self, name, sample, image, raw_score, amap):
        return make_prediction(name, sample, raw_score, amap, self.rule, self.identity, image)


def make_prediction(name, sample, raw_score, amap, rule, identity, image=None):
    """The Prediction of one scored image: ``amap`` is its raw map in the view's pixels, ``rule`` the model's
    DecisionRule, ``identity`` the model's name and sha256; ``image`` (the view's) is loaded when a picture needs it."""
    original_size = sample.original_size()
    decision = rule(raw_score, amap, sample.view, original_size)
    fields = {"input_path": os.path.abspath(sample.image_path) if sample.image_path else None,
              "image_score": decision.image_score, "raw_score": decision.raw_score, "label": decision.label,
              "image_threshold": rule.image_threshold, "review_threshold": rule.review_threshold,
              "review_image_score": rule.review_image_score, "pixel_threshold": rule.pixel_threshold,
              "regions": decision.regions, "image_size": list(original_size),
              "map_size": [amap.shape[1], amap.shape[0]],
              "view": None if sample.view is None else sample.view.to_dict(), "model": identity}
    return Prediction(name, sample, image, amap, fields, decision.normalised_map, decision.mask)


def load_model(model_dir, pre_ckpt_path=None, device_target="CPU", device_id=0, version=None):
    """A Predictor of the model trained into ``model_dir`` (its active version, or ``version``). The backbone weights
    are the checkpoint recorded in ``model.json`` (its sha256 checked) unless ``pre_ckpt_path`` is given."""
    from src.utils.device import set_device
    meta = Model.read_meta(model_dir, version)
    pre_ckpt_path = recorded_checkpoint(meta, model_dir, pre_ckpt_path)
    set_device(device_target, device_id)
    return Predictor(Model.load(model_dir, pre_ckpt_path, version=version), model_dir, version)
