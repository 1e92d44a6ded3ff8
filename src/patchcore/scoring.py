"""Patch-score grids -> one anomaly map and an image score, for a model of any number of tiles.

For one image:
1. each tile's grid (passed through its task's normaliser when it has one) is resized bilinearly (half-pixel
   centres, like torch ``align_corners=False``) to the tile's size, and the tiles are stitched
   (``src/tiling/stitching.py``: overlaps blended with a Hann window; a single covering tile is placed as it
   is, so a one-tile model's map is the reference's upsampled grid);
2. with a thumbnail branch, its grid is resized bilinearly to full resolution and merged (``max``: a defect
   seen by either branch keeps its score; or ``mean``);
3. ONE gaussian at full resolution, ``gaussian_sigma`` pixels (the reference's 4). Tiles are fed to the
   network unresized, so a feature cell covers as many pixels as in the reference's 224-pixel input and the
   sigma carries over unchanged; smoothing each tile and then the stitched map would blur twice;
4. the image score, by the model's policy (``image_score.policy`` in the config, recorded in ``model.json``; any
   policy with any tile plan):
   - ``max``: the largest patch score of any grid (the reference's image score);
   - ``window_max``: the maximum of the map after a moving average (box filter) of ``window`` pixels, by
     default one feature cell. A plain maximum of a high-resolution map is set by single pixels (a bilinear
     overshoot, a border cell); averaging over one cell first makes the score the strongest cell-sized
     evidence, so a defect as small as one cell still counts fully while a lone spike is diluted (HiAD);
   - ``topk_mean``: the mean of the ``k`` largest patch scores over all grids;
   - ``reweighted``: the paper's eq. 7 (Roth et al. 2022): the largest patch score s* times
     ``1 - exp(d(m, m*)) / sum_{n in N(m*)} exp(d(m, n))``, m the patch, m* its nearest bank entry, N(m*) the
     ``num_nn`` bank entries nearest to m* (m* first, as anomalib takes them), d the Euclidean distance. A patch
     whose neighbourhood in the bank is dense gets a weight near 1 - 1/num_nn; one whose nearest entry is
     isolated (a rare normal pattern) is trusted less. The weight needs the bank: the detector computes it for
     each grid's largest cell (``PatchCoreDetector.max_cell_weights``) and the policy takes the one of the
     grid holding the image's largest score.

``ImageScorer`` does steps 1-4 for one model; ``Model.predict`` and postprocess.py (the C++ runner's grids) both
go through it.
"""
import cv2
import numpy as np

from src.tiling.stitching import stitch
from src.utils.checks import positive_int
from src.utils.registry import Registry



def tile_map(grid, box):
    """[h, w] grid -> the tile's [height, width] map (bilinear, half-pixel centres)."""
    return cv2.resize(np.asarray(grid, np.float32), (box.width, box.height), interpolation=cv2.INTER_LINEAR)


def compose_anomaly_map(tile_grids, image_size, thumbnail_grid=None, merge="max", sigma=4.0):
    """Full-resolution float32 [H, W] map from [(TileIndex, grid)] (+ thumbnail grid); see module doc."""
    width, height = image_size
    amap = stitch([tile_map(grid, index.main_index) for index, grid in tile_grids],
                  [index for index, _ in tile_grids], image_size)
    if thumbnail_grid is not None:
        thumb = cv2.resize(np.asarray(thumbnail_grid, np.float32), (width, height), interpolation=cv2.INTER_LINEAR)
        amap = np.maximum(amap, thumb) if merge == "max" else (amap + thumb) * np.float32(0.5)
    return gaussian_smooth(amap, sigma) if sigma else amap


def gaussian_smooth(amap, sigma):
    """The reference's ``scipy.ndimage.gaussian_filter(amap, sigma)`` (truncated at 4 sigma, mirrored borders) by
    OpenCV: equal to 5e-7 relative, a third of the time (a 2048x2048 map: 120 -> 44 ms)."""
    radius = int(4.0 * sigma + 0.5)
    return cv2.GaussianBlur(np.asarray(amap, np.float32), (2 * radius + 1, 2 * radius + 1), sigma,
                            borderType=cv2.BORDER_REFLECT)


class ImageScorePolicy:
    """An image's score from its map and its grids (module doc, step 4). ``needs_weights``: the policy needs
    ``PatchCoreDetector.max_cell_weights`` of every grid (with ``num_nn`` bank neighbours); ``defaults``: the
    parameters it takes, with their values when the config gives none."""
    name = None
    needs_weights = False
    defaults = {}

    def __call__(self, amap, grids, weights=None):
        raise NotImplementedError

    def options(self):
        """The policy's parameters, as recorded in ``model.json`` next to its name."""
        return {}

    def to_dict(self):
        return {"policy": self.name, **self.options()}


class MaxScore(ImageScorePolicy):
    name = "max"

    def __call__(self, amap, grids, weights=None):
        return float(max(np.max(grid) for grid in grids))


class WindowMax(ImageScorePolicy):
    name = "window_max"
    defaults = {"window": None}   # one feature cell: filled in by the caller that knows the backbone

    def __init__(self, window):
        self.window = positive_int(window, "image_score.window")

    def __call__(self, amap, grids, weights=None):
        return float((cv2.blur(amap, (self.window, self.window)) if self.window > 1 else amap).max())

    def options(self):
        return {"window": self.window}


class TopkMean(ImageScorePolicy):
    name = "topk_mean"
    defaults = {"k": 10}

    def __init__(self, k):
        self.k = positive_int(k, "image_score.k")

    def __call__(self, amap, grids, weights=None):
        cells = np.concatenate([np.ravel(grid) for grid in grids]).astype(np.float64)
        k = min(self.k, len(cells))
        return float(np.mean(np.partition(cells, len(cells) - k)[len(cells) - k:]))

    def options(self):
        return {"k": self.k}


class Reweighted(ImageScorePolicy):
    name = "reweighted"
    defaults = {"num_nn": 9}
    needs_weights = True

    def __init__(self, num_nn):
        self.num_nn = positive_int(num_nn, "image_score.num_nn")

    def __call__(self, amap, grids, weights=None):
        if weights is None:
            raise ValueError("the reweighted image score needs each grid's max-cell weight")
        maxima = [float(np.max(grid)) for grid in grids]
        best = int(np.argmax(maxima))
        return float(weights[best] * maxima[best])

    def options(self):
        return {"num_nn": self.num_nn}


# model.json files written before the registry call ``max`` by its old name, grid_max
IMAGE_SCORE_POLICIES = Registry("image_score.policy", "policy", {policy.name: policy for policy in (
    MaxScore, WindowMax, TopkMean, Reweighted)}, {"grid_max": "max"})


def build_image_score(spec, feature_stride=None):
    """The policy of ``spec``: a name, or {"policy": name, parameter: value, ...} (parameters of other policies,
    as the config's flat ``image_score`` section has them, are ignored; missing ones take the policy's ``defaults``;
    ``window`` None: ``feature_stride``)."""
    spec = {"policy": spec} if isinstance(spec, str) else dict(spec)
    name = IMAGE_SCORE_POLICIES.canonical(spec.get("policy"))
    options = {key: spec.get(key) if spec.get(key) is not None else default
               for key, default in IMAGE_SCORE_POLICIES[name].defaults.items()}
    if options.get("window", 1) is None:
        options["window"] = feature_stride
    return IMAGE_SCORE_POLICIES.build(name, **options)


class ImageScorer:
    """Grids of one image -> (image score, full-resolution map), steps 1-4 of the module doc, for a model of
    ``image_size`` (w, h) with its ``policy`` (an ImageScorePolicy)."""

    def __init__(self, image_size, policy, thumbnail_merge="max", gaussian_sigma=4.0):
        self.image_size, self.policy = tuple(image_size), policy
        self.thumbnail_merge, self.gaussian_sigma = thumbnail_merge, gaussian_sigma

    def __call__(self, tile_grids, thumbnail_grid=None, weights=None):
        """``tile_grids``: [(TileIndex, normalised grid)]; ``weights``: the policy's max-cell weight per grid, in
        the order tiles then thumbnail (read only by policies with ``needs_weights``)."""
        amap = compose_anomaly_map(tile_grids, self.image_size, thumbnail_grid, self.thumbnail_merge,
                                   self.gaussian_sigma)
        grids = [grid for _, grid in tile_grids] + ([] if thumbnail_grid is None else [thumbnail_grid])
        return self.policy(amap, grids, weights), amap


def cell_labels(mask, grid):
    """[h, w] bool: a feature cell is anomalous when any mask pixel under it is (area fraction > 0)."""
    return cv2.resize(np.asarray(mask, np.float32), (grid[1], grid[0]), interpolation=cv2.INTER_AREA) > 0
