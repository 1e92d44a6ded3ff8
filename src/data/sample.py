"""Images as the model sees them: one ``Sample`` type, one decoder, and the views that size an image.

A ``Sample`` is an image (a file path or an HxWx3 uint8 RGB array), an optional ground-truth mask, a label,
an optional defect type and a *view*: how the stored image becomes the model's image. Nothing is decoded
until ``load_image()`` / ``load_mask()`` is called and nothing is cached after the call, so thousands of
2048x2048 samples cost no memory until used.

Decoding (one rule for every model): JPEG goes through Pillow, which raises on a truncated file (OpenCV's
libjpeg only prints a warning and returns grey pixels); every other format goes through OpenCV, which keeps
16-bit data and raises on truncated PNG/TIFF/BMP. Grayscale becomes RGB by repetition, alpha is dropped,
16-bit values become 8-bit as ``round(v / 257)`` (65535 -> 255, exact inverse of the usual 8 -> 16 bit
expansion v * 257); float and 32-bit images are rejected. Masks: a pixel is a defect where any colour
channel of the stored value is non-zero (alpha ignored), at any bit depth.

Views:
- ``Resize(size)``: the whole image to ``size`` = (w, h), area averaging to shrink, bilinear to enlarge
  (OpenCV); masks nearest-neighbour. The tiled models' view (HiAD's ``image_size``).
- ``ResizeCrop(resize, crop)``: shorter side to ``resize`` (Pillow bilinear), centre crop ``crop`` x ``crop``;
  masks nearest-neighbour, then cropped. The reference's 256 -> 224 view of the 224-pixel models.
- ``None``: the image as stored.
"""
import io
import os

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from src.utils.errors import InputError
from src.utils.registry import Registry

# A truncated file is reported once, as an InputError naming it, not also by OpenCV's own warning on stderr.
cv2.setLogLevel(2)  # 2: errors only (OpenCV LOG_LEVEL_ERROR)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
ARRAY_NAME = "<array>"
_JPEG_MAGIC = b"\xff\xd8\xff"
_PIL_ERRORS = (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError, SyntaxError)


def raw_pixels(path):
    """Decoded pixels as stored: HxW or HxWxC (C=2/3/4, colour in BGR order for OpenCV), uint8/uint16/..."""
    if not os.path.isfile(path):
        raise InputError(path, "file not found")
    with open(path, "rb") as f:
        return decode_raw(f.read(), path)


def decode_raw(data, name):
    """``raw_pixels`` of an encoded image held in memory (``name`` for errors): the one decoding rule."""
    if data[:len(_JPEG_MAGIC)] == _JPEG_MAGIC:
        try:
            with Image.open(io.BytesIO(data)) as img:
                img.load()
                rgb = np.asarray(img if img.mode in ("L", "RGB") else img.convert("RGB"))
        except _PIL_ERRORS as exc:
            raise InputError(name, f"unreadable or truncated image ({exc})") from None
        return rgb[..., ::-1] if rgb.ndim == 3 else rgb  # to the BGR order OpenCV gives
    raw = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED) if len(data) else None
    if raw is None:
        raise InputError(name, "unreadable or truncated image file")
    return raw


def encoded_size(data, name):
    """(w, h) an encoded image declares in its header, read without decoding the pixels (PIL formats)."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            return img.size
    except Image.DecompressionBombError:
        return (Image.MAX_IMAGE_PIXELS + 1, 2)   # larger than any limit a caller sets below PIL's own
    except _PIL_ERRORS:
        raise InputError(name, "not an image of a known format (PNG, JPEG, BMP, TIFF, ...)") from None


def decode_image(data, name):
    """HxWx3 uint8 RGB of an encoded image held in memory, by the rule files follow (module docstring)."""
    return raw_to_rgb(decode_raw(data, name), name)


def _to_uint8(raw, name):
    if raw.dtype == np.uint8:
        return raw
    if raw.dtype == np.uint16:
        return ((raw.astype(np.uint32) + 128) // 257).astype(np.uint8)  # = round(v / 257): 257 is odd, no ties
    raise InputError(name, f"unsupported pixel format {raw.dtype} (only 8- and 16-bit images)")


def raw_to_rgb(raw, name):
    pixels = _to_uint8(raw, name)
    if pixels.ndim == 2 or pixels.shape[2] <= 2:  # gray, or gray + alpha
        gray = pixels if pixels.ndim == 2 else pixels[..., 0]
        return np.repeat(gray[..., None], 3, axis=2)
    if pixels.shape[2] in (3, 4):
        return np.ascontiguousarray(pixels[..., 2::-1])  # BGR(A) -> RGB, alpha dropped
    raise InputError(name, f"unsupported image with {pixels.shape[2]} channels")


def binary_pixels(raw):
    """Defect wherever any colour channel is non-zero (alpha ignored), on the raw values."""
    if raw.ndim == 3:
        raw = raw[..., 0] if raw.shape[2] <= 2 else raw[..., :3].max(axis=2)
    return (raw > 0).astype(np.uint8)


def _resize(image, size, interpolation=None):
    """Resize HxW[xC] to (w, h); area averaging to shrink, bilinear to enlarge, unless given."""
    w, h = size
    if image.shape[1] == w and image.shape[0] == h:
        return image
    if interpolation is None:
        interpolation = cv2.INTER_AREA if w <= image.shape[1] and h <= image.shape[0] else cv2.INTER_LINEAR
    return cv2.resize(image, (w, h), interpolation=interpolation)


_SHAPE_TEXT = {2: "HxW", 3: "HxWx3"}


def check_array(array, name, ndims):
    if not isinstance(array, np.ndarray) or array.dtype != np.uint8 or array.ndim not in ndims \
            or (array.ndim == 3 and array.shape[2] != 3) or 0 in array.shape:
        expected = " or ".join(_SHAPE_TEXT[d] for d in ndims)
        raise InputError(name, f"expected a non-empty uint8 {expected} array, "
                               f"got {type(array).__name__} {getattr(array, 'shape', '')}")


def as_width_height(value, name):
    """int or (w, h) -> (w, h) of positive ints."""
    pair = (value, value) if isinstance(value, int) else tuple(value) if isinstance(value, (tuple, list)) else None
    if (pair is None or len(pair) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in pair)
            or min(pair) <= 0):
        raise InputError(name, f"must be a positive int or a (width, height) pair of positive ints, got {value!r}")
    return pair


class Resize:
    """The whole image at ``size`` = (w, h)."""

    def __init__(self, size):
        self.size = as_width_height(size, "image_size")

    def output_size(self, original_size):
        return self.size

    def image(self, rgb):
        return _resize(rgb, self.size)

    def mask(self, binary):
        return _resize(binary, self.size, cv2.INTER_NEAREST)

    def to_original(self, box, original_size):
        """A box [x, y, w, h] of the viewed image in the stored image's pixels (rounded outward)."""
        sx, sy = original_size[0] / self.size[0], original_size[1] / self.size[1]
        return _scaled_box(box, sx, sy, 0, 0)

    def to_dict(self):
        return {"name": "resize", "size": list(self.size)}

    def __repr__(self):
        return f"Resize({self.size})"


class ResizeCrop:
    """Shorter side to ``resize`` (bilinear), then the centre ``crop`` x ``crop`` (Pillow, as the reference)."""

    def __init__(self, resize=256, crop=224):
        self.resize, self.crop = int(resize), int(crop)
        if not 0 < self.crop <= self.resize:
            raise InputError("imagesize", f"the centre crop {self.crop} must be positive and at most resize "
                                          f"{self.resize}")

    def output_size(self, original_size):
        return self.crop, self.crop

    def _resized_size(self, width, height):
        return (self.resize, max(1, round(height * self.resize / width))) if width <= height else \
            (max(1, round(width * self.resize / height)), self.resize)

    def _apply(self, pixels, resample):
        img = Image.fromarray(pixels)
        new = self._resized_size(*img.size)
        img = img.resize(new, resample)
        left, top = (new[0] - self.crop) // 2, (new[1] - self.crop) // 2
        return np.asarray(img.crop((left, top, left + self.crop, top + self.crop)))

    def to_original(self, box, original_size):
        """A box [x, y, w, h] of the viewed (resized, cropped) image in the stored image's pixels."""
        new = self._resized_size(*original_size)
        left, top = (new[0] - self.crop) // 2, (new[1] - self.crop) // 2
        return _scaled_box(box, original_size[0] / new[0], original_size[1] / new[1], left, top)

    def image(self, rgb):
        return np.ascontiguousarray(self._apply(rgb, Image.BILINEAR))

    def mask(self, binary):
        return (self._apply(binary, Image.NEAREST) > 0).astype(np.uint8)

    def to_dict(self):
        return {"name": "resize_crop", "resize": self.resize, "crop": self.crop}

    def __repr__(self):
        return f"ResizeCrop({self.resize}, {self.crop})"


def _scaled_box(box, sx, sy, dx, dy):
    x, y, w, h = box
    x0, y0 = int(np.floor((x + dx) * sx)), int(np.floor((y + dy) * sy))
    x1, y1 = int(np.ceil((x + dx + w) * sx)), int(np.ceil((y + dy + h) * sy))
    return [x0, y0, x1 - x0, y1 - y0]


VIEWS = Registry("view", "image view", {"resize": Resize, "resize_crop": ResizeCrop})


def view_from_dict(data):
    """The view a ``to_dict()`` describes (None stays None)."""
    if data is None:
        return None
    params = dict(data)
    view = VIEWS.build(params.pop("name", None), **params)
    if view.to_dict() != data:   # every parameter given, none left to a default
        raise InputError("view", f"malformed image view {data!r}")
    return view


class Sample:
    """An image with an optional mask (HiAD's ``HRSample``).

    ``image``: a file path or an HxWx3 uint8 RGB array. ``mask``: a path, an HxW uint8 array or None
    (non-zero = defect); it must have the image's original size. ``image_size``: int or (w, h) to resize to
    (HiAD's argument: the same as ``view=Resize(image_size)``); ``view``: a view (module docstring), None keeps
    the original size. ``label``: 0 normal / 1 anomalous, by default 1 exactly when a mask is given.
    ``defect_type``: the test folder's name ("good", "scratch", ...), when known.
    """

    def __init__(self, image, mask=None, image_size=None, label=None, defect_type=None, view=None):
        self.image = self._source(image, "image", (3,))
        self.mask = None if mask is None else self._source(mask, "mask", (2, 3))
        if image_size is not None and view is not None:
            raise InputError("image_size", "give image_size or view, not both")
        self.view = Resize(image_size) if image_size is not None else view
        if label is None:
            label = 0 if mask is None else 1
        if label not in (0, 1) or isinstance(label, bool):
            raise InputError("label", f"must be 0 (normal) or 1 (anomalous), got {label!r}")
        self.label = int(label)
        self.defect_type = defect_type if defect_type is not None else ("good" if self.label == 0 else "defect")

    @staticmethod
    def _source(value, role, ndims):
        if isinstance(value, (str, os.PathLike)):
            path = os.fspath(value)
            if not os.path.isfile(path):
                raise InputError(path, f"{role} file not found")
            return path
        check_array(value, f"{ARRAY_NAME} ({role})", ndims)
        return value

    @property
    def image_size(self):
        """(w, h) the image is resized to by a ``Resize`` view, else None."""
        return self.view.size if isinstance(self.view, Resize) else None

    @property
    def image_path(self):
        return self.image if isinstance(self.image, str) else None

    @property
    def mask_path(self):
        return self.mask if isinstance(self.mask, str) else None

    @property
    def name(self):
        """File name without folder, or ``<array>``."""
        return os.path.basename(self.image) if isinstance(self.image, str) else ARRAY_NAME

    def __repr__(self):
        mask = self.mask_path or (None if self.mask is None else ARRAY_NAME)
        return f"Sample(image={self.image_path or ARRAY_NAME!r}, mask={mask!r}, view={self.view}, " \
               f"label={self.label})"

    def with_view(self, view):
        """The same image, mask and label seen through ``view``."""
        return Sample(self.image, self.mask, label=self.label, defect_type=self.defect_type, view=view)

    def original_size(self):
        """(w, h) of the image as stored, from the file header when possible (no full decode)."""
        if not isinstance(self.image, str):
            return self.image.shape[1], self.image.shape[0]
        try:
            with Image.open(self.image) as img:
                return img.size
        except _PIL_ERRORS:
            raw = raw_pixels(self.image)  # a format only OpenCV reads
            return raw.shape[1], raw.shape[0]

    def output_size(self):
        """(w, h) of ``load_image()``."""
        return self.view.output_size(self.original_size()) if self.view else self.original_size()

    def load_image(self):
        """HxWx3 uint8 RGB through the view (a fresh array; the caller's array is never modified)."""
        rgb = raw_to_rgb(raw_pixels(self.image), self.image) if isinstance(self.image, str) else self.image
        viewed = self.view.image(rgb) if self.view else rgb
        return viewed.copy() if viewed is self.image else viewed

    def load_mask(self):
        """HxW uint8 of 0/1 through the view; all zeros when there is no mask."""
        if self.mask is None:
            w, h = self.output_size()
            return np.zeros((h, w), np.uint8)
        name = self.mask_path or f"{ARRAY_NAME} (mask)"
        binary = binary_pixels(raw_pixels(self.mask) if isinstance(self.mask, str) else self.mask)
        size = self.original_size()
        if (binary.shape[1], binary.shape[0]) != size:
            raise InputError(name, f"mask size {binary.shape[1]}x{binary.shape[0]} differs from its image "
                                   f"{size[0]}x{size[1]} ({self.image_path or ARRAY_NAME})")
        return self.view.mask(binary) if self.view else binary


HRSample = Sample  # HiAD's name
