"""Approximate greedy coreset (k-center greedy on randomly projected features), as in PatchCore.

The greedy: project the features to ``projection_dim`` dimensions; start every point's running
value at its mean distance to a few seeded random points; then repeatedly pick the point with the
largest running value (ties: smallest index) and lower every running value to the distance to the
new pick.

``greedy_coreset_plain`` does this literally: one pass over all N points per pick.
``greedy_coreset_pruned`` returns exactly the same picks much faster on structured data. After a
few plain picks it groups the points into blocks around the picks so far (their nearest pick) and
keeps, per block, a radius and the largest running value. A new pick ``c`` cannot lower any running
value in block ``b`` when ``d(c, centre_b) - radius_b >= max running value in b`` (triangle
inequality), so only the remaining blocks are visited. The bound is made rigorous against float32
rounding (see ``_Blocks``), and every point-to-pick distance is computed by the same
row-independent arithmetic in both versions (``distances_to_point``), so the running values, and
hence the picks, are bit-identical.

How much is skipped depends on the data: a few percent of the points are visited per pick for
features with low intrinsic dimension, most of them for noise-like features. A pick that would
visit more than half the points streams over all of them instead, so the worst case stays near
the plain greedy's time.

Both work on C-contiguous float32 points [N, D] (converted if needed): einsum is row-independent
only among rows laid out alike.
"""
import numpy as np
import tqdm
from threadpoolctl import threadpool_limits

from src.utils.errors import InputError
from src.patchcore.sampling.sampling_def import coreset_size

UNIT_ROUNDOFF = 2.0 ** -24  # float32
# Plain picks before the first grouping, then the number of picks used as block centres when
# regrouping: more blocks bound tighter but cost more per pick (distance to every centre).
BLOCK_SCHEDULE = (64, 512)
# Points are reordered this many columns at a time: the temporary is [N, REORDER_COLUMNS], not a copy of all.
REORDER_COLUMNS = 16
# Picks between two compactions of the continued greedy's points (continued_greedy).
COMPACT_EVERY = 32
# Upper bound of the fixed-size temporaries of the grouping (_nearest_centres' and _measure's row chunks).
CHUNK_WORKSPACE_BYTES = 8 * 2 ** 20


def squared_norms(points):
    """float32 |x|^2 per row (row-independent, like ``point_dots``)."""
    return np.einsum("ij,ij->i", points, points, optimize=False)


def point_dots(rows, point, out=None):
    """float32 dot products of ``rows`` with ``point``. Each row's result depends only on that row:
    numpy's own einsum loop, not BLAS, whose gemv rounds differently depending on how many rows it
    gets and where they sit."""
    return np.einsum("ij,j->i", rows, point, out=out, optimize=False)


def dots_to_distances(dots, row_sq_norms, point_sq_norm):
    """Euclidean distances sqrt(max(0, |x|^2 - 2 x.c + |c|^2)) from the dot products, in place."""
    dots *= -2
    dots += row_sq_norms
    dots += point_sq_norm
    np.maximum(dots, 0, out=dots)
    return np.sqrt(dots, out=dots)


def distances_to_point(rows, row_sq_norms, point, point_sq_norm):
    """float32 distances of ``rows`` to ``point``; the same arithmetic the pruned greedy applies to
    any subset of the rows, so both get bit-identical values."""
    return dots_to_distances(point_dots(rows, point), row_sq_norms, point_sq_norm)


def starting_distances(points, sq_norms, start_indices):
    """Every point's mean distance to the start points: the initial running values."""
    total = np.zeros(len(points), dtype=np.float32)
    for index in start_indices:
        total += distances_to_point(points, sq_norms, points[index].copy(), sq_norms[index])
    total /= np.float32(len(start_indices))
    return total


def _progress_bar(total, progress):
    # disable=None lets tqdm switch itself off when stderr is not a terminal
    return tqdm.tqdm(total=total, desc="Coreset", unit="pick", disable=None if progress is None else not progress)


def _plain_picks(points, sq_norms, running, picks, stop, bar):
    """The first ``stop`` picks, by full passes; ``running`` is updated in place."""
    for j in range(stop):
        index = int(np.argmax(running))
        picks[j] = index
        if j + 1 < len(picks):  # the last pick needs no update
            np.minimum(running, distances_to_point(points, sq_norms, points[index].copy(), sq_norms[index]),
                       out=running)
        bar.update(1)


def _initial_state(points, start_indices):
    """Squared norms and starting running values; rejects non-finite features."""
    sq_norms = squared_norms(points)
    if not np.isfinite(sq_norms).all():
        raise InputError("coreset sampling", "features contain NaN or infinite values (or overflow when squared)")
    return sq_norms, starting_distances(points, sq_norms, start_indices)


def greedy_coreset_plain(points, num_picks, start_indices, progress=None):
    """Reference greedy: ``num_picks`` indices (int64, in pick order); one full pass per pick."""
    points = np.ascontiguousarray(points, dtype=np.float32)
    sq_norms, running = _initial_state(points, start_indices)
    picks = np.empty(num_picks, dtype=np.int64)
    with _progress_bar(num_picks, progress) as bar:
        _plain_picks(points, sq_norms, running, picks, num_picks, bar)
    return picks


def _centre_scores(points, centres, chunk_elements=2 ** 19):
    """Yield (first row, [rows, centres] |c|^2 - 2 x.c) for row chunks of ``points`` of about ``chunk_elements``
    values: the squared distance to each centre minus the row's own |x|^2. BLAS rather than faiss: faiss's OpenMP
    search slows down several-fold whenever the cores are shared with other work, which this chunked matmul does
    not."""
    centre_sq = squared_norms(centres)
    rows = max(1, chunk_elements // len(centres))
    for start in range(0, len(points), rows):
        scores = points[start:start + rows] @ centres.T
        scores *= -2
        scores += centre_sq
        yield start, scores


def _nearest_centres(points, centres):
    """Index of each point's nearest centre (squared Euclidean)."""
    nearest = np.empty(len(points), dtype=np.int64)
    for start, scores in _centre_scores(points, centres):
        nearest[start:start + len(scores)] = scores.argmin(1)
    return nearest


def nearest_distances(points, centres, exclude_self=False):
    """float32 Euclidean distance of each point to its nearest centre; ``exclude_self``: ``points`` are the
    centres, each measured to the nearest other one (inf when there is none)."""
    sq_norms = squared_norms(points)
    nearest = np.empty(len(points), dtype=np.float32)
    for start, scores in _centre_scores(points, centres):
        if exclude_self:
            scores[np.arange(len(scores)), np.arange(start, start + len(scores))] = np.inf
        nearest[start:start + len(scores)] = scores.min(1)
    nearest += sq_norms
    return np.sqrt(np.maximum(nearest, 0, out=nearest), out=nearest)


def continued_greedy(bank_points, points, progress=None):
    """Continue a finished greedy coreset ``bank_points`` [M, d] over new ``points`` [N, d] (projected alike): every
    new point's running value starts at its distance to the nearest bank point, and points are picked as by the
    greedy (the largest running value, then every value lowered to the distance to the pick) while the largest
    exceeds the bank's spacing, the smallest distance between two bank points: for the exact greedy, the running
    value of its last pick, how far every point it left out lies at most from the bank. So a new point is added only
    when it lies farther from the bank, and from the points added before it, than the coreset covered its own
    points. Returns (int64 indices of ``points`` in pick order, the spacing)."""
    bank_points = np.ascontiguousarray(bank_points, dtype=np.float32)
    points = np.ascontiguousarray(points, dtype=np.float32)
    spacing = float(nearest_distances(bank_points, bank_points, exclude_self=True).min()) \
        if len(bank_points) > 1 else 0.0
    running = nearest_distances(points, bank_points)
    # A point whose running value is down to the spacing can never be picked (values only fall): only the others
    # are kept, and dropped as they become covered. The picks are the same (a pass per pick is memory-bound, and
    # most new patches of known surface are covered from the start).
    alive = np.flatnonzero(running > spacing)
    points, running = points[alive], running[alive]
    sq_norms = squared_norms(points)
    picks = []
    with _progress_bar(None, progress) as bar:
        while len(running):
            index = int(np.argmax(running))
            if not running[index] > spacing:
                break
            picks.append(int(alive[index]))
            np.minimum(running, distances_to_point(points, sq_norms, points[index].copy(), sq_norms[index]),
                       out=running)
            bar.update(1)
            if len(picks) % COMPACT_EVERY == 0:
                keep = np.flatnonzero(running > spacing)
                alive, points, running, sq_norms = alive[keep], points[keep], running[keep], sq_norms[keep]
    return np.asarray(picks, dtype=np.int64), spacing


class _Blocks:
    """The pruned greedy's state.

    Points are grouped by their nearest centre and reordered (in place) so that each group
    ("block") is contiguous, ascending by original index inside a block: the first maximum inside a
    block is then the one with the smallest original index. ``order`` maps a position to its
    original index; ``sq_norms`` and ``running`` follow the same order.

    Skipping a block b for a new pick c is rigorous despite rounding. With true distances,
    d(x, c) >= d(c, centre_b) - radius_b for every member x. The float32 distance actually computed
    has |d32^2 - d^2| <= E_b = gamma (|x| + |c|)^2, gamma = 2 (D + 2) u (a length-D dot product errs
    by at most D u |x||c|, the norms likewise; factor 2 for safety), and its sqrt loses one more
    ulp. So no running value of b can drop (every d32 >= best_b, the block's largest running value)
    once d(c, centre_b) >= radius_b + need_b, need_b = sqrt(best_b^2 (1 + 4u) + E_b). The squared
    centre distance, computed in float64, errs by far less than 1e-12 (|centre_b| + |c|)^2; adding
    that gives ``reach_sq``: blocks with d64(c, centre_b)^2 >= reach_sq_b are skipped.
    """

    def __init__(self, points, sq_norms, running):
        self.points, self.sq_norms, self.running = points, sq_norms, running
        self.order = np.arange(len(points))
        # bounds |c| for every pick; the float32 squared norms err by < D u relative, far below 1e-4
        self.max_norm_all = np.sqrt(float(sq_norms.max())) * (1 + 1e-4)

    def regroup(self, centre_indices):
        """Group the points around the points with original indices ``centre_indices``."""
        position = np.empty_like(self.order)
        position[self.order] = np.arange(len(self.order))
        centres = self.points[position[centre_indices]]
        del position
        # Any grouping is correct (the radius is measured); the nearest centre keeps blocks tight.
        owner = _nearest_centres(self.points, centres)
        perm = np.lexsort((self.order, owner))
        for column in range(0, self.points.shape[1], REORDER_COLUMNS):
            self.points[:, column:column + REORDER_COLUMNS] = self.points[perm, column:column + REORDER_COLUMNS]
        self.order, self.sq_norms, self.running = self.order[perm], self.sq_norms[perm], self.running[perm]
        owner = owner[perm]
        self.counts = np.bincount(owner, minlength=len(centres))
        self.starts = np.cumsum(self.counts) - self.counts
        self.views = [self.points[start:start + count] for start, count in zip(self.starts, self.counts)]
        self.centres = centres.astype(np.float64)
        self.centre_sq = np.einsum("ij,ij->i", self.centres, self.centres)
        self.nonempty = nonempty = np.flatnonzero(self.counts)  # a centre repeated among the picks owns nothing
        radius, max_norm = self._measure(owner, self.starts[nonempty])
        self.radius = np.zeros(len(centres))
        self.radius[nonempty] = radius
        gamma = 2 * (self.points.shape[1] + 2) * UNIT_ROUNDOFF
        self.float32_error = np.zeros(len(centres))
        self.float32_error[nonempty] = gamma * (max_norm + self.max_norm_all) ** 2
        self.float64_error = 1e-12 * (np.sqrt(self.centre_sq) + self.max_norm_all) ** 2
        self.best = np.full(len(centres), -np.inf, dtype=np.float32)
        self.reach_sq = np.full(len(centres), -np.inf)
        self._refresh(nonempty, self.running, self.starts[nonempty])

    def _measure(self, owner, offsets, chunk=2048):
        """Per block (given by its start ``offsets``): max member distance to the centre and max
        member norm, in float64, inflated far beyond float64 rounding so that they stay bounds."""
        to_centre = np.empty(len(self.points))
        norm = np.empty(len(self.points))
        for start in range(0, len(self.points), chunk):
            rows = self.points[start:start + chunk].astype(np.float64)
            to_centre[start:start + chunk] = np.sqrt(((rows - self.centres[owner[start:start + chunk]]) ** 2).sum(1))
            norm[start:start + chunk] = np.sqrt((rows * rows).sum(1))
        return np.maximum.reduceat(to_centre, offsets) * (1 + 1e-9), np.maximum.reduceat(norm, offsets) * (1 + 1e-9)

    def _rows_of(self, blocks):
        """Positions of the members of ``blocks`` (ascending block ids) and each block's offset in them."""
        lengths = self.counts[blocks]
        offsets = np.cumsum(lengths) - lengths
        rows = np.arange(int(lengths.sum())) + np.repeat(self.starts[blocks] - offsets, lengths)
        return rows, offsets

    def _refresh(self, blocks, values, offsets):
        """Best (max) running value of ``blocks`` and their reach, from the members' ``values``
        (block k's members start at ``offsets[k]``)."""
        best = np.maximum.reduceat(values, offsets)
        self.best[blocks] = best
        need = np.sqrt(np.square(best, dtype=np.float64) * (1 + 4 * UNIT_ROUNDOFF) + self.float32_error[blocks])
        self.reach_sq[blocks] = ((self.radius[blocks] + need) ** 2 + self.float64_error[blocks]) * (1 + 1e-9)

    def next_pick(self):
        """Position of the point with the largest running value (ties: smallest original index)."""
        candidates = []
        for block in np.flatnonzero(self.best == self.best.max()).tolist():
            start = self.starts[block]
            # the first maximum of a block has its smallest original index
            candidates.append(start + int(np.argmax(self.running[start:start + self.counts[block]])))
        return min(candidates, key=lambda position: self.order[position])

    def add_pick(self, position):
        """Lower the running values by the distance to the point at ``position`` where they can change.
        Returns the number of points visited."""
        point, point_sq = self.points[position].copy(), self.sq_norms[position]
        point64 = point.astype(np.float64)
        centre_dist_sq = self.centres @ point64
        centre_dist_sq *= -2
        centre_dist_sq += self.centre_sq
        centre_dist_sq += point64 @ point64
        touched = np.flatnonzero(centre_dist_sq < self.reach_sq)
        if len(touched) == 0:  # only when every running value is already 0 and the data is all zeros
            return 0
        if self.counts[touched].sum() * 2 > len(self.points):
            # Streaming over all points beats visiting most of them block by block.
            np.minimum(self.running, distances_to_point(self.points, self.sq_norms, point, point_sq), out=self.running)
            self._refresh(self.nonempty, self.running, self.starts[self.nonempty])
            return len(self.points)
        rows, offsets = self._rows_of(touched)
        dots = np.empty(len(rows), dtype=np.float32)
        # One einsum per block, on the contiguous block itself: cheaper than gathering the rows.
        for block, start, stop in zip(touched.tolist(), offsets.tolist(), (offsets + self.counts[touched]).tolist()):
            point_dots(self.views[block], point, out=dots[start:stop])
        dist = dots_to_distances(dots, self.sq_norms[rows], point_sq)
        np.minimum(dist, self.running[rows], out=dist)
        self.running[rows] = dist
        self._refresh(touched, dist, offsets)
        return len(rows)


def greedy_coreset_pruned(points, num_picks, start_indices, block_schedule=BLOCK_SCHEDULE, progress=None,
                          stats=None):
    """Same picks as ``greedy_coreset_plain``, visiting only the blocks a pick can change.

    ``points`` is REORDERED IN PLACE (pass a copy to keep yours): it saves a second copy of the data.
    (A non-contiguous or non-float32 ``points`` is copied first and left as it is.)
    ``block_schedule``: the first value is the number of plain picks; at each value the points are
    regrouped around all picks so far. ``stats`` (a dict, optional) receives ``visited_fraction``:
    the points whose distance to a new pick was computed, per pick and per point (1 for the plain
    greedy).
    """
    points = np.ascontiguousarray(points, dtype=np.float32)
    sq_norms, running = _initial_state(points, start_indices)
    picks = np.empty(num_picks, dtype=np.int64)
    plain_stop = min(block_schedule[0], num_picks)
    visited = len(points) * min(plain_stop, num_picks - 1)  # the last pick updates nothing
    with _progress_bar(num_picks, progress) as bar:
        _plain_picks(points, sq_norms, running, picks, plain_stop, bar)
        state = _Blocks(points, sq_norms, running)
        del sq_norms, running
        bounds = [plain_stop] + [s for s in block_schedule[1:] if plain_stop < s < num_picks] + [num_picks]
        for first, stop in zip(bounds[:-1], bounds[1:]):
            if first == stop:  # everything was picked plainly
                break
            state.regroup(picks[:first])
            # The per-pick BLAS call is tiny: extra threads only add wake-up latency, and stall
            # badly when the other cores are busy.
            with threadpool_limits(limits=1, user_api="blas"):
                for j in range(first, stop):
                    position = state.next_pick()
                    picks[j] = state.order[position]
                    if j + 1 < num_picks:
                        visited += state.add_pick(position)
                    bar.update(1)
    if stats is not None:
        stats["visited_fraction"] = visited / max(1, num_picks - 1) / len(points)
    return picks


def projection_weights(dim, projection_dim, rng):
    """The seeded random linear map (no bias) of ``dim`` features to ``projection_dim`` dims, drawn from ``rng``,
    or None when the features have at most ``projection_dim`` dimensions (then used as they are).
    Weights ~ U(-1/sqrt(D), 1/sqrt(D)), like torch.nn.Linear's init."""
    if dim <= projection_dim:
        return None
    bound = 1.0 / np.sqrt(dim)
    return rng.uniform(-bound, bound, size=(dim, projection_dim)).astype(np.float32)


def estimate_peak_bytes(n, d, percentage, projection_dim=128, pruned=True, projected_resident=False):
    """Peak bytes the exact greedy sampler allocates beyond the input features [n, d].

    While sampling: the projected points (a copy of the features when d <= projection_dim and the
    pruned greedy reorders them; nothing when the caller holds them, ``projected_resident``), for the
    pruned greedy the column slice reordered at a time (``REORDER_COLUMNS``), 32 bytes per point at
    that moment (norms, running values, order, nearest centre, permutation) and the chunk workspace of
    the grouping, or for the plain greedy 16 bytes per point; plus the picked indices. Afterwards the
    returned coreset copy (not with ``projected_resident``: the caller reads the rows itself). The two
    phases do not overlap. Percentage 1 keeps every feature.
    """
    if percentage == 1:
        return 2 * n * 8  # the index array and the "is it every row" check
    k = coreset_size(n, percentage)
    pd = min(d, projection_dim)
    projected = 0 if projected_resident else (n * pd * 4 if (d > projection_dim or pruned) else 0)
    if pruned:
        sampling = projected + n * (min(pd, REORDER_COLUMNS) * 4 + 32) + CHUNK_WORKSPACE_BYTES + 8 * k
    else:
        sampling = projected + 16 * n + 8 * k
    return sampling if projected_resident else max(sampling, k * (4 * d + 8))
