"""Common interface of the memory-bank samplers, and the two simple ones (identity, random)."""
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


class BaseSampler:
    """Chooses rows of a feature matrix. ``run(features) -> (coreset_features, indices)``.

    Subclasses implement ``_select(features) -> int64 indices`` and ``estimate_peak_bytes(n, d)``
    (bytes allocated beyond the input, including the returned copy).
    """

    name = "base"

    def run(self, features):
        features = as_feature_matrix(features)
        self.check_memory(*features.shape, input_resident=True)
        indices = self._select(features)
        if len(indices) == len(features) and np.array_equal(indices, np.arange(len(features))):
            return features, indices  # every row in order: the input itself, no copy
        return features[indices], indices

    def _select(self, features):
        raise NotImplementedError

    def estimate_peak_bytes(self, n, d):
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

    def _select(self, features):
        return np.arange(len(features), dtype=np.int64)

    def estimate_peak_bytes(self, n, d):
        return n * 8  # the index array


class RandomSampler(BaseSampler):
    """Keeps ``int(N * percentage)`` rows drawn without replacement (seeded)."""

    name = "random"

    def __init__(self, percentage, seed=0):
        self.percentage = check_percentage(percentage)
        self.seed = int(seed)

    def _select(self, features):
        rng = np.random.default_rng(self.seed)
        return rng.choice(len(features), coreset_size(len(features), self.percentage), replace=False).astype(np.int64)

    def estimate_peak_bytes(self, n, d):
        k = coreset_size(n, self.percentage)
        return n * 8 + k * (d * 4 + 8)  # choice() permutes all n indices; the coreset copy
