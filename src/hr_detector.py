"""One task's PatchCore (HiAD's detector for a group of tiles), fitted from STREAMED features.

Fitting never holds the task's full features in memory. First pass, batch by batch: the patch features
are projected to ``PROJECTION_DIM`` dimensions (the seeded random projection of the approximate greedy
coreset, ``project_features``) into one preallocated array, and the full-dimensional rows are appended
to a float32 spill file. The coreset is then selected on the projected rows, and the chosen rows are read
back from the spill file with explicit seeks and reads (sorted, consecutive rows in one read), never by
mapping the whole file. Peak memory is therefore the projected features plus the sampler's working memory
(or, later, the bank), plus one batch: see :func:`estimate_fit_bytes`.

The memory bank is the usual ``faiss.index`` + ``bank.json`` (``src/memory_bank.py``, sha256-verified on
load); ``bank.json`` also holds the task's score normaliser when a validation set was used.
"""
import numpy as np

from src.errors import InputError
from src.features import to_patch_rows
from src.memory_bank import MemoryBank
from src.normalization import ScoreNormalizer
from src.sampling_methods import ApproximateGreedyCoresetSampler, build_sampler
from src.sampling_methods.kcenter_greedy import (approximate_greedy_coreset_indices, estimate_peak_bytes,
                                                 project_features)
from src.sampling_methods.sampling_def import coreset_size

PROJECTION_DIM = 128
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


def estimate_fit_bytes(num_patches, dim, patch_config):
    """Bytes :meth:`HRPatchCore.fit` holds at its peak beyond the runtime and one batch, by component."""
    percentage = float(patch_config["percentage"])
    projected_dim = min(dim, PROJECTION_DIM)
    sampler = build_sampler(patch_config["sampler"], percentage)
    if isinstance(sampler, ApproximateGreedyCoresetSampler) and percentage < 1:
        # greedy_coreset_pruned reorders our projected array in place: the estimate's "projected copy" is
        # that array itself, its temporary is the column slice being reordered.
        selection = estimate_peak_bytes(num_patches, projected_dim, percentage, PROJECTION_DIM, pruned=True)
    else:
        selection = num_patches * projected_dim * FLOAT32 + sampler.estimate_peak_bytes(num_patches, projected_dim)
    bank = coreset_size(num_patches, percentage) * dim * FLOAT32
    return {"projected_features": num_patches * projected_dim * FLOAT32, "selection": selection,
            "bank": bank, "peak": max(selection, 2 * bank)}   # bank rows + faiss's copy of them


class HRPatchCore:
    """PatchCore for one task: ``fit`` from streamed features, ``patch_scores``, ``save``/``load``.

    ``patch_config``: the patch section (``percentage``, ``sampler``, ``anomaly_scorer_num_nn``, ...).
    ``normalizer``: a ScoreNormalizer fitted on validation scores (None: scores stay raw).
    """

    def __init__(self, patch_config, seed=0):
        self.patch_config = dict(patch_config)
        self.seed = int(seed)
        self.bank = None
        self.normalizer = None

    def fit(self, feature_batches, num_patches, spill_path):
        """Build the bank from ``feature_batches`` ([B, D, h, w] arrays) holding ``num_patches`` patches in all.

        ``spill_path``: a new file for the full-dimensional rows (the caller removes it). Returns statistics.
        """
        projected, dim, filled = None, None, 0
        with open(spill_path, "wb") as spill:
            for features in feature_batches:
                rows, _ = to_patch_rows(features)
                if projected is None:
                    dim = rows.shape[1]
                    projected = np.empty((num_patches, min(dim, PROJECTION_DIM)), np.float32)
                if filled + len(rows) > num_patches:
                    raise RuntimeError(f"more than the announced {num_patches} patches")
                # A fresh generator per batch draws the same projection weights every time.
                projected[filled:filled + len(rows)] = project_features(rows, PROJECTION_DIM,
                                                                        np.random.default_rng(self.seed))
                rows.tofile(spill)
                filled += len(rows)
        if filled != num_patches:
            raise RuntimeError(f"{filled} patches extracted, {num_patches} announced")
        indices = self._select(projected)
        del projected
        self.bank = MemoryBank.from_features(read_rows(spill_path, indices, dim))
        return {"num_patches": int(num_patches), "dimension": int(dim), "bank_size": len(self.bank)}

    def _select(self, projected):
        """Coreset row numbers, in pick order. The greedy works on ``projected`` in place (no copy)."""
        percentage = float(self.patch_config["percentage"])
        sampler = build_sampler(self.patch_config["sampler"], percentage, self.seed, progress=False)
        if isinstance(sampler, ApproximateGreedyCoresetSampler) and percentage < 1:
            # ``projected`` has at most PROJECTION_DIM columns: used as it is, and reordered in place
            return approximate_greedy_coreset_indices(projected, percentage, self.seed, PROJECTION_DIM,
                                                      sampler.num_starting_points, progress=False,
                                                      overwrite_features=True)
        return sampler.run(projected)[1]

    def patch_scores(self, features):
        """[B, D, h, w] features -> [B, h, w] raw patch scores (mean squared distance to the nearest entries)."""
        rows, (h, w) = to_patch_rows(features)
        scores = self.bank.patch_scores(rows, int(self.patch_config["anomaly_scorer_num_nn"]))
        return scores.reshape(len(features), h, w).astype(np.float32)

    def normalize(self, scores):
        """Scores through the task's normaliser (unchanged without one)."""
        return scores if self.normalizer is None else self.normalizer.transform(np.asarray(scores, np.float32))

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
