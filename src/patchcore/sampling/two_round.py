"""Two-round composable coreset: the greedy k-center on chunks, then on the union of their picks.

The exact greedy costs O(N k) distance evaluations and streams over all N projected points per pick; on
high-resolution tile features the pruned greedy cannot skip any of them (every pick visits every point, see
``benchmarks/bench_coreset.py``), so 786,432 patches at 1% take minutes and 8 M would take hours. This is
the standard distributed k-center scheme instead:

1. the points are split into contiguous chunks of ``chunk_size`` (in the order they were extracted: a few
   tiles each), and the greedy picks ``oversample`` times the chunk's share of the ``k`` picks in each chunk,
   independently (threads here; separate jobs on a cluster later). A chunk of 16,384 x 128 float32 is 8 MiB,
   so its greedy runs from the cache instead of memory: about 0.3 ms per pick instead of 20 ms;
2. the greedy picks ``k`` points from the union of those picks. Above ``UNION_PIECE`` points the union is
   greedy-selected in contiguous pieces of at most that many (each its share of ``k``), so that no greedy
   ever streams more than a cache-sized set per pick.

With ``k`` picks per chunk this is the scheme of Malkomes et al. (NeurIPS 2015), within 4 times the optimal
radius; picking ``oversample`` times the chunk's share instead keeps the cost O(N) and carries no such bound,
so the radius is measured instead (``benchmarks/bench_coreset.py``: within 1.1x of the exact greedy's on real
tile features). Every greedy draws its start points
from the sampler's generator in a fixed order before any runs: the picks do not depend on thread timing.
"""
import math
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import tqdm

from src.patchcore.sampling.kcenter_greedy import greedy_coreset_plain
from src.patchcore.sampling.sampling_def import coreset_size

DEFAULT_CHUNK_SIZE = 16384
DEFAULT_OVERSAMPLE = 2.0
UNION_PIECE = 65536   # 32 MiB of 128-d rows: what a large L3 cache holds


def shares(sizes, total):
    """``total`` split over parts of ``sizes`` in proportion (largest remainders first; ties: earlier part),
    none above its size."""
    sizes = np.asarray(sizes, np.int64)
    exact = sizes * (total / sizes.sum())
    counts = np.minimum(np.floor(exact).astype(np.int64), sizes)
    remainder = int(total - counts.sum())
    for part in np.argsort(-(exact - counts), kind="stable"):
        if remainder == 0:
            break
        if counts[part] < sizes[part]:
            counts[part] += 1
            remainder -= 1
    return counts


def _bounds(n, piece):
    """[(start, stop)] of ``ceil(n / piece)`` contiguous pieces of nearly equal size."""
    count = max(1, math.ceil(n / piece))
    edges = np.linspace(0, n, count + 1).round().astype(np.int64)
    return list(zip(edges[:-1].tolist(), edges[1:].tolist()))


def _greedy_pieces(points, bounds, picks, rng, num_starting_points, workers, bar):
    """The greedy on each piece ``points[start:stop]`` picking ``picks[i]``; indices into ``points``."""
    starts = [rng.choice(stop - start, min(num_starting_points, stop - start), replace=False)
              for start, stop in bounds]

    def run(i):
        start, stop = bounds[i]
        if picks[i] == stop - start:   # all of it (the greedy would repeat a pick once every value is 0)
            bar.update(1)
            return np.arange(start, stop, dtype=np.int64)
        chosen = greedy_coreset_plain(points[start:stop], int(picks[i]), starts[i], progress=False) + start
        bar.update(1)
        return chosen

    jobs = [i for i in range(len(bounds)) if picks[i] > 0]
    with ThreadPoolExecutor(max(1, min(workers, len(jobs)))) as pool:   # numpy's loops release the GIL
        return np.concatenate(list(pool.map(run, jobs)))


def two_round_coreset_indices(points, num_picks, rng, chunk_size=DEFAULT_CHUNK_SIZE,
                              oversample=DEFAULT_OVERSAMPLE, num_starting_points=10, workers=None, progress=None):
    """``num_picks`` indices (int64) of C-contiguous float32 ``points`` [N, d] (left unchanged), in pick order
    within each union piece. ``workers``: threads (default: the CPUs this process may use)."""
    n = len(points)
    workers = workers or len(os.sched_getaffinity(0))
    chunks = _bounds(n, chunk_size)
    first_picks = shares([stop - start for start, stop in chunks], min(n, math.ceil(oversample * num_picks)))
    union_size = int(first_picks.sum())
    pieces = _bounds(union_size, UNION_PIECE)
    with tqdm.tqdm(total=len(chunks) + len(pieces), desc="Coreset (two rounds)", unit="chunk",
                   disable=None if progress is None else not progress) as bar:
        union = _greedy_pieces(points, chunks, first_picks, rng, num_starting_points, workers, bar)
        if union_size == num_picks:   # nothing left to choose between
            return union
        candidates = points[union]
        second_picks = shares([stop - start for start, stop in pieces], num_picks)
        chosen = _greedy_pieces(candidates, pieces, second_picks, rng, num_starting_points, workers, bar)
    return union[chosen]


def two_round_peak_bytes(n, d, percentage, chunk_size, oversample, projected_dim, projected_resident=False):
    """Peak bytes the two-round sampler allocates beyond the input features [n, d]: the projected points
    (unless the caller holds them), the union's rows and indices, per thread a chunk's working arrays
    (norms, running values, distances: 16 bytes a point); afterwards the coreset copy (unless
    ``projected_resident``: the caller reads the rows itself)."""
    k = coreset_size(n, percentage)
    union = min(n, math.ceil(oversample * k))
    projected = 0 if (projected_resident or projected_dim == d) else n * projected_dim * 4
    threads = len(os.sched_getaffinity(0))
    sampling = projected + union * (projected_dim * 4 + 16) + threads * 16 * max(chunk_size, UNION_PIECE)
    return sampling if projected_resident else max(sampling, k * (4 * d + 8))
