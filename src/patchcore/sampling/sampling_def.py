"""Common interface of the memory-bank samplers, and the two simple ones (identity, random).

A sampler owns its projection and its selection. One fit is ``projection = sampler.projection(dim)`` (seeded:
it draws the projection's weights first), the features through ``projection.project(rows)`` (all at once, or
batch by batch while full rows are spilled to disk), then ``sampler.select(projected, projection)``, which
goes on drawing from the projection's generator (e.g. the greedy's start points). ``run(features)`` does the
three steps for features in memory; ``estimate_peak_bytes`` is what the memory estimates ask for.
"""
import numpy as np
import psutil

from src.utils.errors import InputError

GIB = 1024 ** 3


def as_feature_matrix(features):
    """``features`` as a 2-D float32 numpy array (no copy when it already is one)."""
    features = np.asarray(features)
    if features.ndim != 2 or features.shape[0] == 0 or features.shape[1] == 0:
        raise InputError("coreset sampling", f"expected a non-empty [N, D] feature matrix, got shape {features.shape}")
    return np.asarray(features, dtype=np.float32)


def coreset_size(n, percentage):
    """How many rows a sampler keeps out of ``n``: ``int(n * percentage)``, at least one."""
    return max(1, int(n * percentage))


def check_percentage(percentage):
    """``percentage`` as a float in (0, 1]; anything else is an ``InputError``."""
    try:
        percentage = float(percentage)
    except (TypeError, ValueError):
        raise InputError("coreset sampling", f"percentage must be a number in (0, 1], got {percentage!r}") from None
    if not 0 < percentage <= 1:
        raise InputError("coreset sampling", f"percentage must be in (0, 1], got {percentage}")
    return percentage


class Projection:
    """A seeded linear map of ``dim`` features to ``out_dim`` (``weights`` [dim, out_dim], or None: the
    features as they are), and the generator that drew it, which the selection goes on drawing from."""

    ROWS = 4096   # rows per matrix product: one big multithreaded sgemm makes OpenBLAS keep ~60 MB of workspace

    def __init__(self, dim, out_dim, weights, rng):
        self.dim, self.out_dim, self.weights, self.rng = dim, out_dim, weights, rng

    def project(self, rows, out=None):
        """``rows`` [n, dim] -> [n, out_dim] float32 (``rows`` itself when the map is the identity)."""
        if self.weights is None and self.out_dim == self.dim:
            if out is None:
                return rows
            out[...] = rows
            return out
        projected = np.empty((len(rows), self.out_dim), np.float32) if out is None else out
        if self.weights is not None:
            for start in range(0, len(rows), self.ROWS):
                np.matmul(rows[start:start + self.ROWS], self.weights, out=projected[start:start + self.ROWS])
        return projected


class BaseSampler:
    """Chooses rows of a feature matrix (module doc). Subclasses set ``name`` and implement
    ``projection_dim(dim)``, ``_select(points, projection) -> int64 indices`` and ``estimate_peak_bytes``."""

    name = "base"

    def __init__(self, percentage, seed=0):
        self.percentage = check_percentage(percentage)
        self.seed = int(seed)
        self.stats = {}   # diagnostics of the last selection

    def options(self):
        """The sampler's config entry: its name and every option, defaults included (recorded in model.json)."""
        return {"name": self.name}

    def projection_dim(self, dim):
        """Columns ``select`` needs of ``dim``-dimensional features (0: only their number)."""
        raise NotImplementedError

    def _draw_weights(self, dim, rng):
        return None

    def projection(self, dim):
        """The start of one fit: a fresh generator seeded with ``seed``, the projection drawn from it."""
        rng = np.random.default_rng(self.seed)
        return Projection(dim, self.projection_dim(dim), self._draw_weights(dim, rng), rng)

    def select(self, points, projection):
        """Indices (int64, in pick order) of the chosen rows of ``points`` = ``projection.project(features)``.
        ``points`` may be reordered in place when ``projection`` made it (``points is not features``)."""
        if len(points) == 0:
            raise InputError("coreset sampling", "no features to sample from")
        if self.percentage == 1:
            return np.arange(len(points), dtype=np.int64)
        return self._select(points, projection)

    def _select(self, points, projection):
        raise NotImplementedError

    def extend(self, bank_points, points, projection):
        """Indices (int64, in pick order) of the new ``points`` to add to a bank this sampler chose: ``bank_points``
        are the bank's rows and ``points`` the new rows, both through ``projection`` (drawn anew: the same seed
        gives the fit's projection). Percentage 1 keeps every point, as ``select`` does."""
        if self.percentage == 1 or len(points) == 0:
            return np.arange(len(points), dtype=np.int64)
        return self._extend(bank_points, points, projection)

    def _extend(self, bank_points, points, projection):
        raise NotImplementedError

    def run(self, features):
        """(coreset rows, indices) of ``features`` in memory: projection, then selection."""
        features = as_feature_matrix(features)
        self.check_memory(*features.shape, input_resident=True)
        projection = self.projection(features.shape[1])
        points = projection.project(features)
        if points is features and self.reorders_points(len(points)):
            points = np.array(points, order="C")   # the selection may reorder its points in place
        indices = self.select(points, projection)
        del points
        if len(indices) == len(features) and np.array_equal(indices, np.arange(len(features))):
            return features, indices  # every row in order: the input itself, no copy
        return features[indices], indices

    def reorders_points(self, n):
        """True when ``select`` reorders ``n`` points in place (``run`` then passes it a copy of its input)."""
        return False

    def estimate_peak_bytes(self, n, d, projected_resident=False):
        """Bytes allocated beyond the input features [n, d] (including the returned copy). With
        ``projected_resident`` the caller already holds the projected points, which ``select`` may use in
        place (the spilled fit): then beyond those, and the coreset rows are not counted."""
        raise NotImplementedError

    def check_memory(self, n, d, input_resident=False, available=None):
        """Raise ``InputError`` if sampling ``n`` x ``d`` float32 features would not fit in memory.

        ``input_resident``: the features are already in memory (``run`` checks this way); leave it
        False to plan ahead, before the features exist, so that their own size is counted too.
        """
        needed = self.estimate_peak_bytes(n, d) + (0 if input_resident else n * d * 4)
        available = psutil.virtual_memory().available if available is None else available
        if needed > available:
            raise InputError(
                self.name,
                f"sampling {n} features of dimension {d} needs about {needed / GIB:.2f} GiB but only "
                f"{available / GIB:.2f} GiB is available; reduce percentage, the number of training images "
                f"or the image size, or use a smaller target_embed_dimension")


class IdentitySampler(BaseSampler):
    """Keeps every feature (returns the input itself)."""

    name = "identity"

    def __init__(self, percentage=1.0, seed=0):
        super().__init__(1.0, seed)

    def projection_dim(self, dim):
        return 0

    def _select(self, points, projection):
        return np.arange(len(points), dtype=np.int64)

    def estimate_peak_bytes(self, n, d, projected_resident=False):
        return n * 8  # the index array


class RandomSampler(BaseSampler):
    """Keeps ``int(N * percentage)`` rows drawn without replacement (seeded)."""

    name = "random"

    def projection_dim(self, dim):
        return 0

    def _select(self, points, projection):
        return projection.rng.choice(len(points), coreset_size(len(points), self.percentage),
                                     replace=False).astype(np.int64)

    def _extend(self, bank_points, points, projection):
        return self._select(points, projection)   # the same share of the new rows

    def estimate_peak_bytes(self, n, d, projected_resident=False):
        k = coreset_size(n, self.percentage)
        return n * 8 + (0 if projected_resident else k * (d * 4 + 8))  # choice() permutes all n; the coreset copy
