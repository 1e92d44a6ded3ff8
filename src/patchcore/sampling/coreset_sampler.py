"""The approximate greedy coreset sampler: the exact greedy below a size threshold, the two-round one above it."""
import numpy as np

from src.utils.errors import InputError
from src.patchcore.sampling.kcenter_greedy import (continued_greedy, estimate_peak_bytes, greedy_coreset_plain,
                                                 greedy_coreset_pruned, projection_weights)
from src.patchcore.sampling.sampling_def import BaseSampler, coreset_size
from src.patchcore.sampling.two_round import (DEFAULT_CHUNK_SIZE, DEFAULT_OVERSAMPLE, two_round_coreset_indices,
                                              two_round_peak_bytes)


class ApproximateGreedyCoresetSampler(BaseSampler):
    """PatchCore's approximate greedy coreset (percentage 1 keeps every feature, as the reference does).

    Up to ``two_round_above`` points (None: always) the exact greedy on the seeded projection, pruned by
    default (the reference's picks, bit for bit); above it the two-round composable coreset
    (``two_round.py``: greedy on ``chunk_size``-point chunks, ``oversample`` times their share, then on the
    union), which costs O(N) instead of O(N k). ``stats`` holds diagnostics of the last run
    (``method``; for the exact greedy ``visited_fraction``: points visited per pick / N). ``pruned=False``: the
    plain exact greedy (the same picks, every point visited per pick); ``progress``: progress bars (None: only
    when stderr is a terminal).
    """

    name = "approx_greedy_coreset"
    # The reference's projection size and number of random starting points: no config or caller changes them.
    PROJECTION_DIM = 128
    NUM_STARTING_POINTS = 10

    def __init__(self, percentage, seed=0, two_round_above=None, chunk_size=DEFAULT_CHUNK_SIZE,
                 oversample=DEFAULT_OVERSAMPLE, pruned=True, progress=None):
        super().__init__(percentage, seed)
        if two_round_above is not None and (isinstance(two_round_above, bool) or int(two_round_above) < 0):
            raise InputError(self.name, f"two_round_above must be a number of patches >= 0 or null, "
                                        f"got {two_round_above!r}")
        if int(chunk_size) < 1 or not float(oversample) >= 1:
            raise InputError(self.name, f"chunk_size must be >= 1 and oversample >= 1, got {chunk_size}, {oversample}")
        self.two_round_above = None if two_round_above is None else int(two_round_above)
        self.chunk_size, self.oversample = int(chunk_size), float(oversample)
        self.pruned = pruned
        self.progress = progress

    def options(self):
        return {"name": self.name, "two_round_above": self.two_round_above, "chunk_size": self.chunk_size,
                "oversample": self.oversample}

    def projection_dim(self, dim):
        return min(dim, self.PROJECTION_DIM)

    def _draw_weights(self, dim, rng):
        return projection_weights(dim, self.PROJECTION_DIM, rng)

    def two_round(self, n):
        """True when ``n`` points are sampled by the two-round coreset."""
        return self.percentage < 1 and self.two_round_above is not None and n > self.two_round_above

    def reorders_points(self, n):
        return self.pruned and not self.two_round(n)

    def _select(self, points, projection):
        points = np.ascontiguousarray(points, dtype=np.float32)
        num_picks = coreset_size(len(points), self.percentage)
        rng = projection.rng
        if self.two_round(len(points)):
            self.stats = {"method": "two_round"}
            return two_round_coreset_indices(points, num_picks, rng, self.chunk_size, self.oversample,
                                             self.NUM_STARTING_POINTS, progress=self.progress)
        self.stats = {"method": "exact_greedy"}
        start_indices = rng.choice(len(points), min(self.NUM_STARTING_POINTS, len(points)), replace=False)
        if not self.pruned:
            self.stats["visited_fraction"] = 1.0
            return greedy_coreset_plain(points, num_picks, start_indices, progress=self.progress)
        return greedy_coreset_pruned(points, num_picks, start_indices, progress=self.progress, stats=self.stats)

    def _extend(self, bank_points, points, projection):
        indices, spacing = continued_greedy(bank_points, points, progress=self.progress)
        self.stats = {"method": "continued_greedy", "spacing": spacing}
        return indices

    def estimate_peak_bytes(self, n, d, projected_resident=False):
        if self.two_round(n):
            return two_round_peak_bytes(n, d, self.percentage, self.chunk_size, self.oversample,
                                        self.projection_dim(d), projected_resident)
        return estimate_peak_bytes(n, d, self.percentage, self.PROJECTION_DIM, self.pruned, projected_resident)
