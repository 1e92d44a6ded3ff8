"""PatchCore for one task (HiAD's detector for a group of tiles): fit a memory bank from features, score patches.

``fit`` takes the task's features as a stream of batches and keeps them in one of two ways, chosen by size:
- up to ``IN_MEMORY_BYTES`` of full-dimensional rows: in one preallocated array, then the sampler's
  ``run(features)`` (the reference's order of work: project, draw the start points, select);
- more: every batch goes through the sampler's projection at once into one preallocated array (128 columns for
  the greedy coreset, none for the random sampler), and the full rows are appended to a float32 spill file;
  the sampler then selects on the projected rows (the greedy in place),
  and the chosen rows are read back from the spill file with explicit seeks and reads (sorted, consecutive
  rows in one read), never by mapping the whole file. Peak memory is the projected features plus the
  sampler's working memory (or, later, the bank), plus one batch: see :func:`estimate_fit_bytes`.
Both go through the sampler's one interface (``src/patchcore/sampling/sampling_def.py``): one generator seeded
with ``seed`` draws the projection's weights, then the greedy's start points, so the two ways select the same
coreset.

The memory bank is ``faiss.index`` + ``bank.json`` (``src/patchcore/memory_bank.py``, sha256-verified on load);
``bank.json`` also holds the task's score normaliser when a validation set was used.
"""
import itertools
import time

import numpy as np
import psutil

from src.utils.errors import InputError
from src.patchcore.aggregation import to_patch_rows
from src.patchcore.memory_bank import MemoryBank
from src.patchcore.normalization import ScoreNormalizer
from src.patchcore.sampling import build_sampler
from src.patchcore.sampling.sampling_def import coreset_size

IN_MEMORY_BYTES = 512 * 2 ** 20
FLOAT32 = 4


def read_rows(path, indices, dim):
    """Rows ``indices`` (any order, no repeats) of a float32 [N, dim] row-major file, in that order."""
    indices = np.asarray(indices, np.int64)
    order = np.argsort(indices, kind="stable")
    ordered = indices[order]
    rows = np.empty((len(indices), dim), np.float32)
    run_starts = np.flatnonzero(np.diff(ordered, prepend=-2) != 1)   # runs of consecutive row numbers
    run_ends = np.append(run_starts[1:], len(ordered))
    with open(path, "rb") as f:
        for start, end in zip(run_starts.tolist(), run_ends.tolist()):
            f.seek(int(ordered[start]) * dim * FLOAT32)
            block = np.fromfile(f, np.float32, count=(end - start) * dim)
            if block.size != (end - start) * dim:
                raise RuntimeError(f"{path}: spill file ends before row {int(ordered[end - 1])}")
            rows[order[start:end]] = block.reshape(end - start, dim)
    return rows


def keeps_in_memory(num_patches, dim):
    """True when ``fit`` keeps the full features in memory (module doc)."""
    return num_patches * dim * FLOAT32 <= IN_MEMORY_BYTES


def estimate_fit_bytes(num_patches, dim, patch_config):
    """Bytes :meth:`PatchCoreDetector.fit` holds at its peak beyond the runtime and one batch, by component."""
    percentage = float(patch_config["percentage"])
    sampler = build_sampler(patch_config["sampler"], percentage)
    projected_dim = sampler.projection_dim(dim)
    common = {"patches": num_patches, "projected_dim": projected_dim,
              "projected_features": num_patches * projected_dim * FLOAT32,
              "bank": coreset_size(num_patches, percentage) * dim * FLOAT32}
    if keeps_in_memory(num_patches, dim):
        features = num_patches * dim * FLOAT32
        selection = features + sampler.estimate_peak_bytes(num_patches, dim)
        return dict(common, features=features, selection=selection, peak=max(selection, features + 2 * common["bank"]))
    # the sampler works on our projected array (the greedy reorders it in place), we read the bank's rows back
    selection = common["projected_features"] + sampler.estimate_peak_bytes(num_patches, dim, projected_resident=True)
    return dict(common, features=0, selection=selection,
                peak=max(selection, 2 * common["bank"]))   # bank rows + faiss's copy of them


def _rows(feature_batches):
    """[N, D] patch rows of every [B, D, h, w] batch."""
    for features in feature_batches:
        yield to_patch_rows(features)[0]


def _fill(batches, num_patches, keep):
    """``keep(start row, rows)`` for every batch of rows; exactly ``num_patches`` rows in all."""
    filled = 0
    for rows in batches:
        if filled + len(rows) > num_patches:
            raise RuntimeError(f"more than the announced {num_patches} patches")
        keep(filled, rows)
        filled += len(rows)
    if filled != num_patches:
        raise RuntimeError(f"{filled} patches extracted, {num_patches} announced")


def _project_and_spill(batches, num_patches, projection, spill_path):
    """Every row of ``batches`` (``num_patches`` in all) through ``projection`` into one array (returned), and in
    full appended to the float32 file ``spill_path``."""
    projected = np.empty((num_patches, projection.out_dim), np.float32)
    with open(spill_path, "wb") as spill:
        def keep(start, rows):
            if rows.shape[1] != projection.dim:
                raise InputError("features", f"dimension {rows.shape[1]}, but the bank's is {projection.dim}")
            projection.project(rows, out=projected[start:start + len(rows)])
            rows.tofile(spill)
        _fill(batches, num_patches, keep)
    return projected


class PatchCoreDetector:
    """PatchCore for one task: ``fit``, ``patch_scores``, ``normalize``, ``save``/``load``.

    ``patch_config``: the patch section (``percentage``, ``sampler``, ``anomaly_scorer_num_nn``, ...).
    ``normalizer``: a ScoreNormalizer fitted on validation scores (None: scores stay raw).
    """

    def __init__(self, patch_config, seed=0):
        self.patch_config = dict(patch_config)
        self.seed = int(seed)
        self.bank = None
        self.normalizer = None
        self.selected = None       # after fit: the coreset's row numbers in the fitted features, in bank order
        self._without = {}         # excluded sources -> the bank without their rows (one entry: see _bank)

    def fit(self, feature_batches, num_patches, spill_path):
        """Build the bank from ``feature_batches`` ([B, D, h, w] arrays) holding ``num_patches`` patches in all.

        ``spill_path``: where full rows go if they are too many to keep in memory (module doc); the caller
        removes the file if it was written. Returns statistics.
        """
        started = time.perf_counter()
        batches = _rows(feature_batches)
        first = next(batches)
        dim = first.shape[1]
        batches = itertools.chain([first], batches)
        sampler = build_sampler(self.patch_config["sampler"], float(self.patch_config["percentage"]), self.seed)
        spilled = not keeps_in_memory(num_patches, dim)
        if not spilled:
            features = np.empty((num_patches, dim), np.float32)

            def keep(start, rows):
                features[start:start + len(rows)] = rows
            _fill(batches, num_patches, keep)
            extracted = time.perf_counter()
            coreset, self.selected = sampler.run(features)
            del features
        else:
            coreset, extracted = self._fit_spilled(batches, num_patches, dim, sampler, spill_path)
        self.bank = MemoryBank.from_features(coreset)
        return {"num_patches": int(num_patches), "dimension": int(dim), "bank_size": len(self.bank),
                "spilled": spilled, "coreset_method": sampler.stats.get("method", sampler.name),
                "feature_seconds": round(extracted - started, 3),
                "coreset_seconds": round(time.perf_counter() - extracted, 3)}

    def _fit_spilled(self, batches, num_patches, dim, sampler, spill_path):
        """(The coreset rows, selected on projected rows held in memory and read back from the spill file,
        the time the last batch was written)."""
        projection = sampler.projection(dim)
        projected = _project_and_spill(batches, num_patches, projection, spill_path)
        extracted = time.perf_counter()
        indices = sampler.select(projected, projection)   # ``projected`` is ours: the greedy may reorder it
        del projected
        self.selected = indices
        return read_rows(spill_path, indices, dim), extracted

    def extend(self, feature_batches, num_patches, spill_path, sources):
        """Add new patches to the fitted bank: those of ``feature_batches`` ([B, D, h, w], ``num_patches`` in all)
        that the sampler's continuation picks (``BaseSampler.extend``: for the greedy coreset, those farther from
        the bank than its entries lie from each other). ``sources``: each new patch row's training-image position,
        recorded in ``bank.json``'s ``sources`` for the rows added. The new rows are projected in memory and spilled
        in full to ``spill_path`` (the caller removes it), as a spilled fit. Returns statistics."""
        started = time.perf_counter()
        sampler = build_sampler(self.patch_config["sampler"], float(self.patch_config["percentage"]), self.seed)
        dim = self.bank.dimension
        projection = sampler.projection(dim)
        # the projected rows, their running values and the continuation's copies of both, at most
        needed = num_patches * (2 * projection.out_dim + 4) * FLOAT32
        available = psutil.virtual_memory().available
        if needed > available:
            raise InputError("images", f"{num_patches} new patches need about {needed / 2 ** 30:.1f} GiB to select "
                                       f"from, {available / 2 ** 30:.1f} GiB is available: add fewer images at a time")
        projected = _project_and_spill(_rows(feature_batches), num_patches, projection, spill_path)
        extracted = time.perf_counter()
        bank_rows = self.bank.index.reconstruct_n(0, len(self.bank))
        picks = sampler.extend(projection.project(bank_rows), projected, projection)
        del projected
        added = read_rows(spill_path, picks, dim)
        metadata = dict(self.metadata, sources=list(self.metadata.get("sources", [])) +
                        [int(sources[row]) for row in picks])
        self.bank = MemoryBank.from_features(np.concatenate([bank_rows, added]), metadata)
        self._without = {}
        return {"num_patches": int(num_patches), "added": len(picks), "bank_size": len(self.bank),
                "method": sampler.stats.get("method", sampler.name), "spacing": sampler.stats.get("spacing"),
                "feature_seconds": round(extracted - started, 3),
                "coreset_seconds": round(time.perf_counter() - extracted, 3)}

    def patch_scores(self, features, exclude_sources=None):
        """[B, D, h, w] features -> [B, h, w] raw patch scores (mean squared distance to the nearest entries).

        ``exclude_sources``: training-image positions (a tuple) whose entries the bank is searched without (their
        ``sources`` in ``bank.json``), as if held out: for validation images that are in the bank (their own image,
        or every image of their fold).
        """
        rows, (h, w) = to_patch_rows(features)
        scores = self._bank(exclude_sources).patch_scores(rows, int(self.patch_config["anomaly_scorer_num_nn"]))
        return scores.reshape(len(features), h, w).astype(np.float32)

    def max_cell_weights(self, features, scores, num_nn, exclude_sources=None):
        """[B] eq. 7 weights (``MemoryBank.support_weight``) of each item's largest cell of ``scores`` [B, h, w],
        from its feature in ``features`` [B, D, h, w] (the reweighted image score; ``exclude_sources``: as in
        :meth:`patch_scores`)."""
        bank = self._bank(exclude_sources)
        weights = []
        for item_features, item_scores in zip(features, scores):
            y, x = np.unravel_index(int(np.argmax(item_scores)), item_scores.shape)
            weights.append(bank.support_weight(item_features[:, y, x], num_nn))
        return weights

    def _bank(self, exclude_sources):
        """The bank without the entries of ``exclude_sources`` (None: the whole bank). Only the last such bank is
        kept (a bank may be large): callers score items with the same exclusion one after the other."""
        if exclude_sources is None:
            return self.bank
        excluded = tuple(int(source) for source in exclude_sources)
        if excluded not in self._without:
            sources = np.asarray(self.metadata.get("sources", []))
            if len(sources) != len(self.bank):
                raise InputError("bank.json", "the bank does not record which training image each entry comes from")
            keep = ~np.isin(sources, excluded)
            if not keep.any():
                raise InputError("bank.json", f"every entry comes from the excluded training images {list(excluded)}: "
                                              "nothing to score against (fewer val_config.folds or more images)")
            self._without = {excluded: self.bank if keep.all() else
                             MemoryBank.from_features(self.bank.index.reconstruct_n(0, len(self.bank))[keep])}
        return self._without[excluded]

    def normalize(self, scores):
        """[..., h, w] score grids through the task's normaliser (unchanged without one)."""
        return scores if self.normalizer is None else self.normalizer.transform_grids(np.asarray(scores, np.float32))

    def save(self, folder, metadata):
        """Write ``faiss.index`` and ``bank.json`` (``metadata`` + the normaliser) into ``folder``."""
        self.bank.metadata = dict(metadata, patch_config=self.patch_config, seed=self.seed,
                                  normalizer=None if self.normalizer is None else self.normalizer.to_dict())
        self.bank.save(folder)

    @classmethod
    def load(cls, folder, index=True):
        """A saved detector; the index is verified against the sha256 in ``bank.json``.

        ``index=False`` reads ``bank.json`` alone: metadata and normaliser, enough for ``normalize`` but not
        for ``patch_scores``.
        """
        bank = MemoryBank.load(folder, index)
        meta = bank.metadata
        if "patch_config" not in meta:
            raise InputError(folder, "bank.json is not a high-resolution task bank (no patch_config)")
        detector = cls(meta["patch_config"], meta["seed"])
        detector.bank = bank
        if meta.get("normalizer") is not None:
            detector.normalizer = ScoreNormalizer.from_dict(meta["normalizer"])
        return detector

    @property
    def metadata(self):
        return {} if self.bank is None else self.bank.metadata


HRPatchCore = PatchCoreDetector  # HiAD's name for the detector class
