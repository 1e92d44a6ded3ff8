"""Anomaly synthesizers: defects drawn on a normal image, for validation images (HiAD's ``syn``).

A synthesizer is called as ``syn(image, rng) -> (new_image, mask)``: ``image`` is HxWx3 uint8 RGB,
``rng`` a ``numpy.random.Generator``; ``new_image`` is a fresh uint8 array and ``mask`` an HxW uint8
array of 0/1 that is exactly the set of pixels whose value changed (every pixel of the defect's
footprint moves by more than ``MASK_EPSILON`` grey levels in some channel, every other pixel is
bit-identical). The same generator state gives the same output.

- ``RandomBox``: a rectangle of one random colour.
- ``CutPaste``: a rectangle of the same image, taken elsewhere, brightness-jittered, pasted.
- ``ImageBlending``: an elliptical patch of a foreign texture alpha-blended into the image. The texture
  comes from the sorted image files of ``texture_dir`` (e.g. DTD) or, without one, from coloured
  multi-octave noise.
- ``ColorShift``: an elliptical region whose colour is shifted by a random RGB offset.

Subtle ones, like the defects inspection cares about (small, low-contrast; the default validation mix):
- ``Scratch``: a thin polyline, 1-3 px wide, slightly darker or lighter.
- ``Stain``: an irregular blob whose colour changes by a few percent, fading to its edge.
- ``NoiseBlend``: a foreign texture at partial opacity under a smooth-noise mask (as DRAEM's anomalies).
- ``Blur``: a locally blurred region.

Sizes: ``min_size``/``max_size`` bound the footprint's width and height (drawn independently); an int
is pixels, a float in (0, 1] a fraction of the image's shorter side. ``min_size=1`` allows 1-pixel
defects.
"""
import os

import cv2
import numpy as np

from src.utils.errors import InputError
from src.utils.registry import Registry
from src.data.sample import IMAGE_EXTENSIONS, Sample, check_array
from src.data.synthetic import MASK_EPSILON, exact_change, smooth_noise



def _check_size(value, name):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InputError(name, f"must be a pixel count (int >= 1) or a fraction in (0, 1] (float), got {value!r}")
    if isinstance(value, int) and value < 1 or isinstance(value, float) and not 0 < value <= 1:
        raise InputError(name, f"must be a pixel count (int >= 1) or a fraction in (0, 1] (float), got {value!r}")
    return value


def _check_range(pair, name, low, high):
    """A (min, max) pair of numbers with low <= min <= max <= high."""
    try:
        first, second = (float(v) for v in pair)
    except (TypeError, ValueError):
        raise InputError(name, f"must be a (min, max) pair of numbers, got {pair!r}") from None
    if not low <= first <= second <= high:
        raise InputError(name, f"must satisfy {low} <= min <= max <= {high}, got {pair!r}")
    return first, second


def _pixels(size, shorter_side):
    """A size parameter in pixels: ints are pixels, floats fractions of the shorter side."""
    return size if isinstance(size, int) else max(1, round(size * shorter_side))


def _squared_radius(height, width):
    """[height, width] squared distance of each pixel centre from the box's centre, 1 on the inscribed ellipse."""
    ys = (np.arange(height) + 0.5 - height / 2) / (height / 2)
    xs = (np.arange(width) + 0.5 - width / 2) / (width / 2)
    return ys[:, None] ** 2 + xs[None, :] ** 2


def _ellipse(height, width):
    """Boolean ellipse inscribed in a height x width box; never empty (it holds the centre pixel)."""
    return _squared_radius(height, width) <= 1


class Synthesizer:
    """Base class: draws the footprint box and makes the change exact; subclasses draw the defect."""
    name = None

    def __init__(self, min_size=0.05, max_size=0.25):
        self.min_size, self.max_size = _check_size(min_size, "min_size"), _check_size(max_size, "max_size")
        if type(min_size) is type(max_size) and min_size > max_size:
            raise InputError("min_size", f"{min_size!r} exceeds max_size {max_size!r}")

    def config(self):
        """``{"name": ..., **constructor arguments}``: ``build_synthesizer(**config)`` rebuilds it."""
        return {"name": self.name, "min_size": self.min_size, "max_size": self.max_size}

    def __repr__(self):
        params = ", ".join(f"{k}={v!r}" for k, v in self.config().items() if k != "name")
        return f"{type(self).__name__}({params})"

    def _box(self, rng, height, width):
        """(y, x, box height, box width), inside the image."""
        shorter = min(height, width)
        high = _pixels(self.max_size, shorter)
        low = min(_pixels(self.min_size, shorter), high)   # a pixel min above a fractional max
        box_h, box_w = (min(int(rng.integers(low, high + 1)), limit) for limit in (height, width))
        return int(rng.integers(0, height - box_h + 1)), int(rng.integers(0, width - box_w + 1)), box_h, box_w

    def _defect(self, image, rng, box):
        """(candidate pixels of the box as float RGB on a 0-1 scale, boolean footprint within the box)."""
        raise NotImplementedError

    def __call__(self, image, rng):
        check_array(image, "image", (3,))
        y, x, box_h, box_w = box = self._box(rng, *image.shape[:2])
        candidate, support = self._defect(image, rng, box)
        new_image, mask = image.copy(), np.zeros(image.shape[:2], np.uint8)
        new_image[y:y + box_h, x:x + box_w] = exact_change(image[y:y + box_h, x:x + box_w], candidate, support)
        mask[y:y + box_h, x:x + box_w] = support
        return new_image, mask


class RandomBox(Synthesizer):
    """A rectangle filled with one uniformly random colour."""
    name = "RandomBox"

    def _defect(self, image, rng, box):
        _, _, box_h, box_w = box
        colour = rng.uniform(0, 1, 3).astype(np.float32)
        return np.broadcast_to(colour, (box_h, box_w, 3)), np.ones((box_h, box_w), bool)


class CutPaste(Synthesizer):
    """A rectangle copied from an independent random place of the same image, its brightness scaled by a
    factor drawn in [1 - brightness_jitter, 1 + brightness_jitter]."""
    name = "CutPaste"

    def __init__(self, min_size=0.05, max_size=0.25, brightness_jitter=0.1):
        super().__init__(min_size, max_size)
        if isinstance(brightness_jitter, bool) or not isinstance(brightness_jitter, (int, float)) \
                or not 0 <= brightness_jitter < 1:
            raise InputError("brightness_jitter", f"must be a number in [0, 1), got {brightness_jitter!r}")
        self.brightness_jitter = float(brightness_jitter)

    def config(self):
        return {**super().config(), "brightness_jitter": self.brightness_jitter}

    def _defect(self, image, rng, box):
        _, _, box_h, box_w = box
        height, width = image.shape[:2]
        src_y, src_x = int(rng.integers(0, height - box_h + 1)), int(rng.integers(0, width - box_w + 1))
        factor = rng.uniform(1 - self.brightness_jitter, 1 + self.brightness_jitter)
        patch = image[src_y:src_y + box_h, src_x:src_x + box_w].astype(np.float32) * np.float32(factor / 255)
        return patch, np.ones((box_h, box_w), bool)


def _noise_texture(rng, height, width):
    """Colourful stand-in for a texture photograph: per channel, a random mean plus three octaves of smooth
    noise with feature sizes of about a quarter, an eighth and a sixteenth of the patch."""
    coarse = max(2.0, min(height, width) / 4)
    channels = []
    for mean in rng.uniform(0.15, 0.85, 3):
        octaves = sum(gain * smooth_noise(rng, height, width, max(1.0, coarse * gain))
                      for gain in (1.0, 0.5, 0.25))
        channels.append(mean + 0.12 * octaves)
    return np.stack(channels, axis=-1)


class ImageBlending(Synthesizer):
    """An elliptical patch of a foreign texture blended in with an opacity drawn in ``opacity``.

    ``texture_dir``: folder searched recursively for image files (sorted, so the choice depends only on
    the rng); a random crop of a random file is used, enlarged first if it is smaller than the box.
    Without it the texture is coloured multi-octave noise.
    """
    name = "ImageBlending"

    def __init__(self, texture_dir=None, min_size=0.05, max_size=0.25, opacity=(0.5, 1.0)):
        super().__init__(min_size, max_size)
        self.opacity = _check_range(opacity, "opacity", 0, 1)
        if self.opacity[0] <= 0:
            raise InputError("opacity", f"must be above 0 (an invisible blend is no anomaly), got {opacity!r}")
        self.texture_dir = None if texture_dir is None else os.fspath(texture_dir)
        self.texture_files = [] if texture_dir is None else self._list_textures(self.texture_dir)

    @staticmethod
    def _list_textures(folder):
        if not os.path.isdir(folder):
            raise InputError(folder, "texture folder not found")
        files = sorted(os.path.join(base, name) for base, _, names in os.walk(folder)
                       for name in names if name.lower().endswith(IMAGE_EXTENSIONS))
        if not files:
            raise InputError(folder, f"no texture images ({', '.join(IMAGE_EXTENSIONS)}) in the folder")
        return files

    def config(self):
        return {**super().config(), "texture_dir": self.texture_dir, "opacity": list(self.opacity)}

    def _texture(self, rng, height, width):
        if not self.texture_files:
            return _noise_texture(rng, height, width)
        texture = Sample(self.texture_files[int(rng.integers(len(self.texture_files)))]).load_image()
        scale = max(height / texture.shape[0], width / texture.shape[1])
        if scale > 1:
            size = (max(width, round(texture.shape[1] * scale)), max(height, round(texture.shape[0] * scale)))
            texture = cv2.resize(texture, size, interpolation=cv2.INTER_LINEAR)
        y, x = int(rng.integers(0, texture.shape[0] - height + 1)), int(rng.integers(0, texture.shape[1] - width + 1))
        return texture[y:y + height, x:x + width].astype(np.float32) / 255

    def _defect(self, image, rng, box):
        y, x, box_h, box_w = box
        opacity = np.float32(rng.uniform(*self.opacity))
        original = image[y:y + box_h, x:x + box_w].astype(np.float32) / 255
        texture = self._texture(rng, box_h, box_w)
        return original + opacity * (texture - original), _ellipse(box_h, box_w)


class ColorShift(Synthesizer):
    """An elliptical region whose RGB values move by one offset: a random direction (so hue and/or
    brightness change) with a length drawn in ``shift`` grey levels."""
    name = "ColorShift"

    def __init__(self, min_size=0.05, max_size=0.25, shift=(30, 80)):
        super().__init__(min_size, max_size)
        self.shift = _check_range(shift, "shift", MASK_EPSILON + 1, 255 * np.sqrt(3))

    def config(self):
        return {**super().config(), "shift": list(self.shift)}

    def _defect(self, image, rng, box):
        y, x, box_h, box_w = box
        direction = rng.standard_normal(3)
        offset = direction / max(np.linalg.norm(direction), 1e-12) * rng.uniform(*self.shift)
        original = image[y:y + box_h, x:x + box_w].astype(np.float32)
        return (original + offset.astype(np.float32)) / 255, _ellipse(box_h, box_w)


def _signed_levels(rng, levels):
    """A grey-level change drawn in ``levels`` (min, max), darker or lighter with equal odds."""
    return float(rng.uniform(*levels)) * (1.0 if rng.uniform() < 0.5 else -1.0)


class Scratch(Synthesizer):
    """A thin scratch or crack: a gently bending polyline of 2-4 segments along the box's longer side,
    ``width`` pixels wide (drawn in the (min, max) range), darker or lighter by ``contrast`` grey levels."""
    name = "Scratch"

    def __init__(self, min_size=0.08, max_size=0.35, width=(1, 3), contrast=(15, 45)):
        super().__init__(min_size, max_size)
        self.width = tuple(int(v) for v in _check_range(width, "width", 1, 64))
        self.contrast = _check_range(contrast, "contrast", MASK_EPSILON + 1, 255)

    def config(self):
        return {**super().config(), "width": list(self.width), "contrast": list(self.contrast)}

    def _defect(self, image, rng, box):
        y, x, box_h, box_w = box
        # From one end of the box's longer side to the other, each vertex off the last by ~5% of the length
        long_side, short_side = max(box_h, box_w), min(box_h, box_w)
        count = int(rng.integers(3, 6))
        along = np.linspace(0, long_side - 1, count)
        drift = np.cumsum(rng.normal(0, 0.05 * long_side, count))
        across = np.clip((short_side - 1) / 2 + drift - drift.mean(), 0, short_side - 1)
        xs, ys = (along, across) if box_w >= box_h else (across, along)
        support = np.zeros((box_h, box_w), np.uint8)
        points = np.round(np.stack([xs, ys], 1)).astype(np.int32).reshape(-1, 1, 2)
        cv2.polylines(support, [points], False, 1, 1)
        width = int(rng.integers(self.width[0], self.width[1] + 1))
        if width > 1:   # OpenCV's thickness t draws 2t - 1 pixels: widen the 1-pixel line instead
            support = cv2.dilate(support, np.ones((width, width), np.uint8))
        original = image[y:y + box_h, x:x + box_w].astype(np.float32)
        return (original + np.float32(_signed_levels(rng, self.contrast))) / 255, support.astype(bool)


class Stain(Synthesizer):
    """A low-contrast stain or discolouration: an irregular blob (smooth noise inside an ellipse) whose colour
    is scaled by 1 +- ``contrast`` with a slight tint, fading towards its edge."""
    name = "Stain"

    def __init__(self, min_size=0.04, max_size=0.15, contrast=(0.06, 0.2)):
        super().__init__(min_size, max_size)
        self.contrast = _check_range(contrast, "contrast", 0.01, 1)

    def config(self):
        return {**super().config(), "contrast": list(self.contrast)}

    def _defect(self, image, rng, box):
        y, x, box_h, box_w = box
        shape = 1 - np.sqrt(_squared_radius(box_h, box_w)) + 0.25 * smooth_noise(rng, box_h, box_w, max(2.0, min(box_h, box_w) / 3))
        support = shape > 0.15
        support[box_h // 2, box_w // 2] = True
        strength = np.clip(shape / 0.5, 0, 1).astype(np.float32)[..., None]
        tint = 1 + 0.3 * rng.uniform(-1, 1, 3).astype(np.float32)
        factor = 1 + np.float32(_signed_levels(rng, self.contrast)) * tint * strength
        original = image[y:y + box_h, x:x + box_w].astype(np.float32) / 255
        return original * factor, support


class NoiseBlend(Synthesizer):
    """A foreign texture (coloured multi-octave noise) blended in under an irregular mask, thresholded smooth
    noise, with an opacity drawn in ``opacity`` (DRAEM's Perlin-mask anomalies)."""
    name = "NoiseBlend"

    def __init__(self, min_size=0.05, max_size=0.2, opacity=(0.2, 0.6)):
        super().__init__(min_size, max_size)
        self.opacity = _check_range(opacity, "opacity", 0.01, 1)

    def config(self):
        return {**super().config(), "opacity": list(self.opacity)}

    def _defect(self, image, rng, box):
        y, x, box_h, box_w = box
        noise = smooth_noise(rng, box_h, box_w, max(2.0, min(box_h, box_w) / 4))
        support = (noise > 0.5) & _ellipse(box_h, box_w)
        if not support.any():
            support[box_h // 2, box_w // 2] = True
        opacity = np.float32(rng.uniform(*self.opacity))
        original = image[y:y + box_h, x:x + box_w].astype(np.float32) / 255
        return original + opacity * (_noise_texture(rng, box_h, box_w) - original), support


class Blur(Synthesizer):
    """A locally blurred (out-of-focus or smeared) elliptical region: Gaussian blur of sigma drawn in ``sigma``."""
    name = "Blur"

    def __init__(self, min_size=0.05, max_size=0.2, sigma=(1.5, 4.0)):
        super().__init__(min_size, max_size)
        self.sigma = _check_range(sigma, "sigma", 0.3, 50)

    def config(self):
        return {**super().config(), "sigma": list(self.sigma)}

    def _defect(self, image, rng, box):
        y, x, box_h, box_w = box
        sigma = float(rng.uniform(*self.sigma))
        margin = int(np.ceil(3 * sigma))   # the blur reads this far around the box
        top, left = max(0, y - margin), max(0, x - margin)
        region = image[top:y + box_h + margin, left:x + box_w + margin].astype(np.float32) / 255
        blurred = cv2.GaussianBlur(region, (0, 0), sigma, borderType=cv2.BORDER_REFLECT)
        return blurred[y - top:y - top + box_h, x - left:x - left + box_w], _ellipse(box_h, box_w)


# by name, and HiAD's class names (hiad.syn), including its spelling "RandomeBox"
SYNTHESIZERS = Registry("anomaly_syn_fn", "anomaly synthesizer", {cls.name: cls for cls in (
    RandomBox, CutPaste, ImageBlending, ColorShift, Scratch, Stain, NoiseBlend, Blur)}, {
    "RandomeBoxSynthesizer": "RandomBox", "RandomBoxSynthesizer": "RandomBox",
    "CutPasteAnomalySynthesizer": "CutPaste", "ImageBlendingSynthesizer": "ImageBlending",
    "ColorShiftSynthesizer": "ColorShift"})


def build_synthesizer(name, **params):
    """A synthesizer from its name (RandomBox, CutPaste, ImageBlending, ColorShift, or HiAD's class name)."""
    return SYNTHESIZERS.build(name, **params)


def as_synthesizer(spec):
    """A synthesizer object from itself, its name or its config dict (``Synthesizer.config()``)."""
    if isinstance(spec, str):
        return build_synthesizer(spec)
    if isinstance(spec, dict):
        return build_synthesizer(**spec)
    if callable(spec):
        return spec
    raise InputError("anomaly_syn_fn", f"expected a synthesizer, its name or its config dict, got {spec!r}")
