"""Deterministic MVTec-AD-layout categories: textured surfaces with realistic defects and exact masks.

Textures (``TEXTURES``): ``leather`` (multi-octave mottling, a crease network, fine grain), ``fabric``
(plain weave with jittered threads and yarn irregularity), ``wood`` (warped growth rings, fibre streaks),
``tile`` (terrazzo-like stone: Voronoi grains, flecks, mottling). Every normal image is a new realisation
of the same random process with a slightly different phase, brightness and illumination gradient, so a
train set is homogeneous without repeating. Feature sizes are fixed in pixels: a 2048 x 2048 image shows a
larger field of the same surface at the same resolution, so its defects are small relative to the image.

Defects (``DEFECT_TYPES``), all of modest contrast, comparable to the texture's own variation:
``scratch`` (thin curved anti-aliased line, 1-3 px, slightly darker or lighter, grain smoothed),
``stain`` (irregular soft blob: tinted, darker, texture smoothed), ``fold`` (texture displaced towards a
crease line, with crease shading), ``color`` (luminance-preserving hue/saturation shift in a blob),
``contamination`` (a patch of a foreign texture, brightness-matched, blended into a blob).

Masks are exact: each defect has a support (its footprint); pixels outside it are left bit-identical and
every pixel inside it changes by more than ``MASK_EPSILON`` grey levels in some channel (a pixel the effect
changed by less is moved by ``MASK_EPSILON + 1`` levels, which is invisible). So the mask is exactly the
set of pixels whose value differs from the defect-free image.

Randomness: image ``i`` of split ``s`` uses ``numpy.random.default_rng([seed, s, i])``, so a file does not
depend on how many other files are generated.
"""
import math
import os
import time

import cv2
import numpy as np
from tqdm import tqdm

from src.utils.io import staged_folder
from src.utils.errors import InputError
from src.utils.io import write_json

DEFECT_TYPES = ("scratch", "stain", "fold", "color", "contamination")
MASK_EPSILON = 2
LUMA = np.array([0.299, 0.587, 0.114], np.float32)


# ---------------------------------------------------------------------------------------------- noise


def smooth_noise(rng, height, width, scale_y, scale_x=None):
    """Zero-mean, unit-variance noise whose features are about ``scale`` pixels wide (anisotropic with two
    scales): white noise on a coarser grid, blurred, then bicubically enlarged. float32 [height, width]."""
    scale_x = scale_y if scale_x is None else scale_x
    grid_h, grid_w = max(2, math.ceil(height / scale_y) + 3), max(2, math.ceil(width / scale_x) + 3)
    noise = rng.standard_normal((grid_h, grid_w), dtype=np.float32)
    noise = cv2.GaussianBlur(noise, (0, 0), 0.8 if min(scale_y, scale_x) <= 1 else 1.0)
    noise = cv2.resize(noise, (width, height), interpolation=cv2.INTER_CUBIC)
    noise -= noise.mean()
    return noise / max(float(noise.std()), 1e-6)


def _fbm(rng, height, width, scales, gains):
    return sum(gain * smooth_noise(rng, height, width, scale) for scale, gain in zip(scales, gains))


def _pixel_grid(height, width):
    """Row and column coordinates as float32 [height, 1] and [1, width] arrays (they broadcast)."""
    return np.arange(height, dtype=np.float32)[:, None], np.arange(width, dtype=np.float32)[None, :]


def _colourise(luminance, colour):
    return luminance[..., None] * np.asarray(colour, np.float32)


# ------------------------------------------------------------------------------------------- textures


def leather(rng, height, width):
    mottling = _fbm(rng, height, width, (48, 24), (1.0, 0.6))
    # Near the zero-crossings of a smooth field: a connected network of thin lines, like leather creases.
    creases = np.exp(-np.square(smooth_noise(rng, height, width, 10) / 0.22))
    grain = smooth_noise(rng, height, width, 1)
    lum = 0.50 + 0.035 * mottling - 0.07 * creases + 0.03 * grain
    return _colourise(lum, (1.15, 0.80, 0.58))


def fabric(rng, height, width, period=8.0):
    ys, xs = _pixel_grid(height, width)
    u = (xs + 1.2 * smooth_noise(rng, height, width, 24) + rng.uniform(0, 2 * period)) / period
    v = (ys + 1.2 * smooth_noise(rng, height, width, 24) + rng.uniform(0, 2 * period)) / period
    thread_u, thread_v = np.floor(u), np.floor(v)
    across_u, across_v = u - thread_u, v - thread_v
    # Plain weave: warp over weft on alternate crossings; a thread is brightest along its middle and
    # darkens where it dips under the crossing thread.
    warp = np.sqrt(np.sin(np.pi * across_u)) * (0.75 + 0.25 * np.sin(np.pi * across_v))
    weft = np.sqrt(np.sin(np.pi * across_v)) * (0.75 + 0.25 * np.sin(np.pi * across_u))
    over = (thread_u + thread_v) % 2 == 0
    yarn = 1.0 + 0.06 * rng.standard_normal(64).astype(np.float32)   # per-thread thickness/dye variation
    gain = np.where(over, yarn[thread_u.astype(np.int64) % 64], yarn[thread_v.astype(np.int64) % 64])
    lum = 0.30 + 0.32 * np.where(over, warp, weft) * gain + 0.035 * smooth_noise(rng, height, width, 1)
    return _colourise(lum, (1.0, 0.90, 0.72))


def wood(rng, height, width, period=16.0):
    ys, xs = _pixel_grid(height, width)
    # Long, gently wandering grain: the ring field bends slowly along the board (x), faster across it.
    bend = 7 * smooth_noise(rng, height, width, 48, 240) + 5 * smooth_noise(rng, height, width, 160)
    phase = (ys + bend + rng.uniform(-0.03, 0.03) * xs + rng.uniform(0, period)) / period
    # Within a ring the wood darkens slowly (earlywood) then sharply (latewood) before the next ring.
    latewood = np.power(phase - np.floor(phase), 3)
    fibres = smooth_noise(rng, height, width, 1.5, 30)
    pores = np.clip(smooth_noise(rng, height, width, 1, 10) - 1.8, 0, None)   # short dark dashes along x
    lum = 0.64 - 0.14 * latewood + 0.03 * fibres - 0.08 * pores + 0.015 * smooth_noise(rng, height, width, 1)
    return _colourise(lum, (1.15, 0.88, 0.62))


def tile(rng, height, width, grain_px=7):
    # Voronoi grains: every pixel takes the random tone of its nearest seed point.
    n_seeds = max(1, height * width // (grain_px * grain_px))
    seeds = np.full((height, width), 255, np.uint8)
    seeds[rng.integers(0, height, n_seeds), rng.integers(0, width, n_seeds)] = 0
    _, nearest = cv2.distanceTransformWithLabels(seeds, cv2.DIST_L2, 3, labelType=cv2.DIST_LABEL_PIXEL)
    tones = rng.standard_normal(int(nearest.max()) + 1).astype(np.float32)
    grains = cv2.GaussianBlur(tones[nearest], (0, 0), 0.8)
    flecks = smooth_noise(rng, height, width, 2)
    dark, light = np.clip((flecks - 2.0) * 2, 0, 1), np.clip((-flecks - 2.2) * 2, 0, 1)
    lum = (0.58 + 0.035 * grains + 0.03 * smooth_noise(rng, height, width, 40) - 0.22 * dark + 0.12 * light
           + 0.015 * smooth_noise(rng, height, width, 1))
    return _colourise(lum, (1.0, 0.98, 0.94))


# name -> function(rng, height, width) -> float32 [height, width, 3], values about 0.2-0.8
TEXTURES = {"leather": leather, "fabric": fabric, "wood": wood, "tile": tile}


def to_uint8(image):
    return np.clip(np.rint(image * 255), 0, 255).astype(np.uint8)


def normal_image(texture, rng, width, height):
    """One defect-free RGB uint8 image: the texture under a slightly different brightness and gradient."""
    surface = TEXTURES[texture](rng, height, width)
    ys, xs = _pixel_grid(height, width)
    tilt_y, tilt_x = rng.uniform(-0.03, 0.03, 2).astype(np.float32)
    light = np.float32(rng.uniform(0.97, 1.03)) * (1 + tilt_y * (ys / height - 0.5) + tilt_x * (xs / width - 0.5))
    return to_uint8(surface * light[..., None])


# -------------------------------------------------------------------------------------------- defects


def _blob(rng, height, width, cy, cx, radius, softness):
    """Irregular soft blob: alpha in [0, 1] of an ellipse whose edge wobbles with smooth noise."""
    ys, xs = _pixel_grid(height, width)
    angle, aspect = rng.uniform(0, np.pi), rng.uniform(0.55, 1.0)
    dy, dx = ys - cy, xs - cx
    along = (dx * np.cos(angle) + dy * np.sin(angle)) / radius
    across = (-dx * np.sin(angle) + dy * np.cos(angle)) / (radius * aspect)
    wobble = 0.22 * np.clip(smooth_noise(rng, height, width, max(1.0, radius / 2)), -2, 2)
    edge = np.clip((1 - np.sqrt(along ** 2 + across ** 2) - wobble) / softness, 0, 1)
    return edge * edge * (3 - 2 * edge)


def _chroma_direction(rng):
    """A random RGB direction with zero luma: adding it shifts hue, not brightness. Max |component| = 1."""
    direction = rng.standard_normal(3).astype(np.float32)
    direction -= LUMA * (direction @ LUMA) / (LUMA @ LUMA)
    return direction / np.abs(direction).max()


def _scratch(rng, crop, cy, cx, size):
    height, width = crop.shape[:2]
    angle, bend = rng.uniform(0, np.pi), rng.uniform(-0.3, 0.3) * size
    direction, normal = np.array([np.cos(angle), np.sin(angle)]), np.array([-np.sin(angle), np.cos(angle)])
    centre = np.array([cx, cy])
    start, end = centre - direction * size / 2, centre + direction * size / 2
    control = centre + normal * bend
    t = np.linspace(0, 1, 64)[:, None]
    curve = (1 - t) ** 2 * start + 2 * (1 - t) * t * control + t ** 2 * end
    thickness = rng.uniform(1.0, 3.0)
    # Drawn 4x larger and area-averaged back: the coverage of each pixel by the line (anti-aliasing).
    upscale = 4
    canvas = np.zeros((height * upscale, width * upscale), np.uint8)
    points = np.rint((curve + 0.5) * upscale - 0.5).astype(np.int32)
    cv2.polylines(canvas, [points], False, 255, max(1, int(round(thickness * upscale))), cv2.LINE_8)
    coverage = cv2.resize(canvas.astype(np.float32) / 255, (width, height), interpolation=cv2.INTER_AREA)
    strength = rng.uniform(0.10, 0.20)
    darker = bool(rng.integers(0, 2))
    worn = crop + coverage[..., None] * 0.6 * (cv2.GaussianBlur(crop, (0, 0), 1.0) - crop)
    shaded = worn * (1 - strength * coverage[..., None]) if darker else \
        worn + strength * coverage[..., None] * (1 - worn) * 0.6
    return shaded, coverage > 0.25, dict(thickness_px=thickness, strength=strength, darker=darker)


def _stain(rng, crop, cy, cx, size):
    alpha = _blob(rng, *crop.shape[:2], cy, cx, size / 2, softness=0.35)
    smoothed = cv2.GaussianBlur(crop, (0, 0), max(1.5, size / 8))
    darkening = rng.uniform(0.06, 0.13)
    tint = 1 - darkening * np.array([1.0, 1.1, 1.3], np.float32)   # absorbs blue most: brownish
    return crop + alpha[..., None] * (smoothed * tint - crop), alpha > 0.15, dict(darkening=darkening)


def _fold(rng, crop, cy, cx, size):
    height, width = crop.shape[:2]
    ys, xs = _pixel_grid(height, width)
    angle = rng.uniform(0, np.pi)
    along = (xs - cx) * np.cos(angle) + (ys - cy) * np.sin(angle)
    across = -(xs - cx) * np.sin(angle) + (ys - cy) * np.cos(angle)
    band = max(1.0, size * 0.12)
    extent = np.exp(-np.power(np.abs(along) / (size / 2), 4))               # fades out past the ends
    bump = np.exp(-0.5 * np.square(across / band))
    # Sampling from further out along the normal pulls the texture into the crease (compression) ...
    shift = rng.uniform(0.6, 1.0) * band
    displacement = shift * extent * (across / band) * np.exp(0.5) * bump    # peak `shift` at one band
    map_x = (xs - np.sin(angle) * displacement).astype(np.float32)
    map_y = (ys + np.cos(angle) * displacement).astype(np.float32)
    warped = cv2.remap(crop, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    # ... and the crease is lit on one flank and shadowed on the other (derivative of the bump).
    relief = rng.uniform(0.10, 0.18) * (1 if rng.integers(0, 2) else -1)
    shading = 1 + relief * extent * (across / band) * np.exp(0.5) * bump
    return warped * shading[..., None], extent * bump > 0.2, dict(shift_px=shift, relief=relief)


def _color(rng, crop, cy, cx, size):
    alpha = _blob(rng, *crop.shape[:2], cy, cx, size / 2, softness=0.5)
    chroma = crop - (crop @ LUMA)[..., None]
    saturation, hue_shift = rng.uniform(1.1, 1.4), rng.uniform(0.03, 0.06)
    change = (saturation - 1) * chroma + hue_shift * _chroma_direction(rng)
    return crop + alpha[..., None] * change, alpha > 0.15, dict(saturation=saturation, hue_shift=hue_shift)


def _contamination(rng, crop, cy, cx, size, texture):
    height, width = crop.shape[:2]
    alpha = _blob(rng, height, width, cy, cx, size / 2, softness=0.3) * rng.uniform(0.6, 0.9)
    material = str(rng.choice(sorted(set(TEXTURES) - {texture})))
    foreign = TEXTURES[material](rng, height, width)
    # Same brightness as the surface underneath (+-12%) and a hue of its own: it differs by structure.
    local, own = float((crop @ LUMA).mean()), float((foreign @ LUMA).mean())
    foreign = foreign * (local * rng.uniform(0.88, 1.12) / own) * (1 + 0.08 * _chroma_direction(rng))
    return crop + alpha[..., None] * (foreign - crop), alpha > 0.15, dict(material=material)


DEFECTS = {"scratch": _scratch, "stain": _stain, "fold": _fold, "color": _color, "contamination": _contamination}


def exact_change(clean, changed, support):
    """uint8 result equal to ``clean`` outside ``support`` and differing by > MASK_EPSILON inside it."""
    result = np.where(support[..., None], to_uint8(changed), clean)
    difference = result.astype(np.int16) - clean
    faint = support & (np.abs(difference).max(axis=-1) <= MASK_EPSILON)
    # Faint pixels move by MASK_EPSILON + 1 levels the way the effect pushed them (up if it did not),
    # or the other way when that would leave the uint8 range.
    up, down = clean.astype(np.int16) + (MASK_EPSILON + 1), clean.astype(np.int16) - (MASK_EPSILON + 1)
    go_down = ((difference.sum(axis=-1) < 0) & (down >= 0).all(axis=-1)) | (up > 255).any(axis=-1)
    nudged = np.where(go_down[..., None], down, up)
    return np.where(faint[..., None], nudged, result).astype(np.uint8)


def add_defect(image, defect_type, rng, min_defect_px, max_defect_px, texture):
    """Return (defective uint8 image, mask uint8 0/255, info dict) for a clean RGB uint8 ``image``.

    The defect's extent (scratch length, blob diameter, fold length) is drawn in
    [min_defect_px, max_defect_px]; the mask is exactly the set of changed pixels.
    """
    height, width = image.shape[:2]
    size = float(rng.uniform(min_defect_px, max_defect_px))
    half = size / 2
    # Centres stay off the outer 10% so a centre crop (MVTec's 256 -> 224 drops 6.25% a side) keeps the defect.
    lo_y, lo_x = max(half, 0.1 * height), max(half, 0.1 * width)
    cy = float(rng.uniform(min(lo_y, height / 2), max(height - lo_y, height / 2)))
    cx = float(rng.uniform(min(lo_x, width / 2), max(width - lo_x, width / 2)))
    reach = int(math.ceil(half * 1.6 + 6))   # blob wobble (<= 1.44 radii), fold ends, blur margin
    y0, y1 = max(0, int(cy) - reach), min(height, int(cy) + reach + 1)
    x0, x1 = max(0, int(cx) - reach), min(width, int(cx) + reach + 1)
    clean = image[y0:y1, x0:x1]
    args = (rng, clean.astype(np.float32) / 255, cy - y0, cx - x0, size)
    # Supports are never empty: blobs have alpha >= 0.6 at their centre, a line covers its own pixels, and
    # the fold envelope is 1 at its centre.
    changed, support, params = DEFECTS[defect_type](*args, texture) if defect_type == "contamination" else \
        DEFECTS[defect_type](*args)
    defective, mask = image.copy(), np.zeros((height, width), np.uint8)
    defective[y0:y1, x0:x1] = exact_change(clean, changed, support)
    mask[y0:y1, x0:x1] = support.astype(np.uint8) * 255
    ys, xs = np.nonzero(mask)
    info = dict(type=defect_type, size_px=size, centre_xy=[round(cx, 2), round(cy, 2)],
                bbox_xyxy=[int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1],
                mask_pixels=int(len(xs)), **params)
    return defective, mask, {k: round(v, 4) if isinstance(v, float) else v for k, v in info.items()}


# -------------------------------------------------------------------------------------------- dataset


def parse_image_size(text):
    """"256" -> (256, 256); "640x480" -> (640, 480) as (width, height)."""
    parts = str(text).lower().split("x")
    if len(parts) not in (1, 2) or not all(p.strip().isdigit() for p in parts):
        raise InputError(f"image size '{text}' is not N or WxH (e.g. 256 or 640x480)")
    width, height = (int(parts[0]), int(parts[-1]))
    return width, height


def _check_arguments(category, texture, image_size, counts, defect_types, min_defect_px, max_defect_px, seed):
    if not category or category in (".", "..") or os.sep in category or (os.altsep and os.altsep in category):
        raise InputError(f"category '{category}' must be a plain folder name")
    if texture not in TEXTURES:
        raise InputError(f"unknown texture '{texture}' (choose from {', '.join(TEXTURES)})")
    if len(image_size) != 2 or min(image_size) < 16:
        raise InputError(f"image size {image_size} must be (width, height), both at least 16")
    for name, count in counts.items():
        if count < 0 or (name == "n_train" and count < 1):
            raise InputError(f"{name} must be {'at least 1' if name == 'n_train' else 'non-negative'}, got {count}")
    unknown = [d for d in defect_types if d not in DEFECTS]
    if unknown or len(set(defect_types)) != len(defect_types) or not defect_types:
        raise InputError(f"defect types {list(defect_types)} must be distinct names from {', '.join(DEFECT_TYPES)}")
    if not 1 <= min_defect_px <= max_defect_px <= min(image_size):
        raise InputError(f"defect size range [{min_defect_px}, {max_defect_px}] px must satisfy "
                         f"1 <= min <= max <= {min(image_size)}")
    if seed < 0:
        raise InputError(f"seed must be non-negative, got {seed}")


def _write_png(path, array):
    """PNG via OpenCV (RGB input). The whole category is staged and renamed, so files need no own rename."""
    ok, encoded = cv2.imencode(".png", array[..., ::-1] if array.ndim == 3 else array)
    if not ok:
        raise RuntimeError(f"{path}: PNG encoding failed")
    with open(path, "wb") as f:
        f.write(encoded.tobytes())


def write_item(stage, folder, index, image, defect=None):
    """Write ``folder/<index>.png`` of a category being built in ``stage`` and, for a ``defect`` (mask, info from
    :func:`add_defect`), ``ground_truth/<type>/<index>_mask.png``. Returns the item's ``generation.json`` entry."""
    entry = {"image": f"{folder}/{index:03d}.png"}
    if defect is not None:
        mask, entry["defect"] = defect
        entry["mask"] = f"ground_truth/{entry['defect']['type']}/{index:03d}_mask.png"
        os.makedirs(os.path.join(stage, "ground_truth", entry["defect"]["type"]), exist_ok=True)
        _write_png(os.path.join(stage, entry["mask"]), mask)
    os.makedirs(os.path.join(stage, folder), exist_ok=True)
    _write_png(os.path.join(stage, entry["image"]), image)
    return entry


def generate_category(root, category="synthetic_leather", texture="leather", image_size=(256, 256), n_train=20,
                      n_test_good=5, n_test_defect_per_type=5, defect_types=DEFECT_TYPES, seed=0,
                      min_defect_px=None, max_defect_px=None, overwrite=False, progress=False):
    """Write ``<root>/<category>/{train/good, test/<type>, ground_truth/<type>}`` and ``generation.json``.

    ``image_size`` is (width, height). Defect extents default to 5%-20% of the shorter side (at least 3 px).
    The category is built in a hidden staging folder and renamed into place when complete, so a failure
    never leaves a partial category. An existing category is an InputError unless ``overwrite``.
    Returns a summary: the category path, file counts per folder, and the time taken.
    """
    width, height = (int(v) for v in image_size)
    shorter = min(width, height)
    min_defect_px = float(max(3, round(0.05 * shorter)) if min_defect_px is None else min_defect_px)
    max_defect_px = float(max(min_defect_px, round(0.2 * shorter)) if max_defect_px is None else max_defect_px)
    defect_types = tuple(defect_types)
    seed = int(seed)
    counts = dict(n_train=int(n_train), n_test_good=int(n_test_good),
                  n_test_defect_per_type=int(n_test_defect_per_type))
    _check_arguments(category, texture, (width, height), counts, defect_types, min_defect_px, max_defect_px, seed)
    final = os.path.join(root, category)
    if os.path.exists(final) and not overwrite:
        raise InputError(final, "already exists (pass overwrite=True / --overwrite to replace it)")

    # (folder, split code, index, defect type or None); split codes keep each file's random stream fixed.
    jobs = [("train/good", 0, i, None) for i in range(counts["n_train"])]
    jobs += [("test/good", 1, i, None) for i in range(counts["n_test_good"])]
    jobs += [(f"test/{d}", 2 + DEFECT_TYPES.index(d), i, d)
             for d in defect_types for i in range(counts["n_test_defect_per_type"])]
    started = time.perf_counter()
    files = []
    with staged_folder(final) as stage:
        for folder, split, index, defect_type in tqdm(jobs, desc=f"generating {category}", disable=not progress):
            rng = np.random.default_rng([seed, split, index])
            image, defect = normal_image(texture, rng, width, height), None
            if defect_type is not None:
                image, *defect = add_defect(image, defect_type, rng, min_defect_px, max_defect_px, texture)
            files.append(write_item(stage, folder, index, image, defect))
        write_json(os.path.join(stage, "generation.json"), dict(
            generator="src/data/synthetic.py", category=category, texture=texture, image_size=[width, height],
            seed=seed, defect_types=list(defect_types), min_defect_px=min_defect_px, max_defect_px=max_defect_px,
            mask_epsilon=MASK_EPSILON, **counts, files=files))
    per_folder = {}
    for entry in files:
        folder = os.path.dirname(entry["image"])
        per_folder[folder] = per_folder.get(folder, 0) + 1
    return dict(path=final, counts=per_folder, seconds=round(time.perf_counter() - started, 3))
