"""The memory bank: coreset features in a faiss ``IndexFlatL2`` plus a JSON metadata file. No pickle.

Scores follow the reference: a patch's score is the mean of its ``num_nn`` nearest faiss distances,
which for ``IndexFlatL2`` are squared Euclidean distances.

How the nearest entries are found (``search``, model.json's ``inference.search``):
- ``"exact"`` (the default): every entry, in the bank's own dimension.
- ``{"kind": "pca_refine", "dimension": d, "candidates": c}``: faiss's ``IndexRefine`` over an
  ``IndexPreTransform(PCAMatrix)`` of the entries: the ``c * num_nn`` nearest entries in the bank's first d principal
  components, re-ranked by their exact distance. Fewer FLOPs for the same scan; a true nearest entry is missed only
  when it is not among those candidates, and then the score is the next entry's (never lower than exact). The PCA is
  fitted on the bank's entries when the bank is loaded (deterministic), so the stored index stays exact. A bank of
  at most d dimensions, or of fewer entries than dimensions, is searched exactly.
"""
import os

import faiss
import numpy as np

from src.utils.errors import InputError
from src.utils.io import atomic_path, read_json, sha256_of, write_json

EXACT = "exact"
PCA_REFINE = "pca_refine"
INDEX_FILE = "faiss.index"
METADATA_FILE = "bank.json"
FORMAT_VERSION = 1


def search_spec(value, source="postprocess.search"):
    """``value`` as a search setting (module docstring): "exact", or a pca_refine dict with every entry given."""
    if value is None or value == EXACT:
        return EXACT
    entries = {"dimension": 64, "candidates": 4}
    if not isinstance(value, dict) or value.get("kind") != PCA_REFINE or set(value) - {"kind", *entries}:
        raise InputError(source, f"must be {EXACT!r} or {{kind: {PCA_REFINE}, dimension: D, candidates: C}}, "
                                 f"got {value!r}")
    for key in entries:
        entries[key] = value.get(key, entries[key])
        if isinstance(entries[key], bool) or not isinstance(entries[key], int) or entries[key] < 1:
            raise InputError(source, f"{key} must be a positive integer, got {entries[key]!r}")
    return {"kind": PCA_REFINE, **entries}


class MemoryBank:
    """``index``: a faiss ``IndexFlatL2`` of the bank's features; None when loaded with ``index=False``.
    ``search_index``: what finds the nearest entries when the search is not exact (:meth:`use_search`)."""

    def __init__(self, index, metadata=None):
        self.index = index
        self.metadata = dict(metadata or {})
        self._rows = None
        self.search, self.search_index, self._search_parts = EXACT, None, ()

    def use_search(self, spec):
        """Find the nearest entries as ``spec`` says (module docstring); returns the bank."""
        spec = search_spec(spec)
        if spec == self.search:   # already searching so (a PCA is fitted once)
            return self
        # nothing to reduce (the bank has at most that many dimensions), or too few entries to fit a PCA on (a scan
        # of them is cheap): exact
        if spec == EXACT or spec["dimension"] >= self.dimension or len(self) < self.dimension:
            self.search, self.search_index, self._search_parts = EXACT, None, ()
            return self
        reduced = faiss.IndexFlatL2(spec["dimension"])
        base = faiss.IndexPreTransform(faiss.PCAMatrix(self.dimension, spec["dimension"]), reduced)
        base.train(self.rows)
        base.add(self.rows)
        refine = faiss.IndexRefine(base, self.index)
        refine.k_factor = float(spec["candidates"])
        # faiss's Python wrappers do not own the indexes they are given: keep them alive with the refine index
        self.search, self.search_index, self._search_parts = spec, refine, (base, reduced)
        return self

    @classmethod
    def from_features(cls, features, metadata=None):
        features = np.ascontiguousarray(features, np.float32)
        index = faiss.IndexFlatL2(features.shape[1])
        index.add(features)
        return cls(index, metadata)

    @property
    def dimension(self):
        return self.index.d

    def __len__(self):
        return self.index.ntotal

    def patch_scores(self, features, num_nn=1):
        """[N, D] features -> [N] mean squared distance to the ``num_nn`` nearest bank entries.

        faiss finds the entries; their distances are then computed again, row by row, as sum((x - m)^2): faiss's
        |x|^2 + |m|^2 - 2 x.m goes through a matrix product whose rounding depends on how many rows it gets, so a
        patch scored alone and in a batch of 8 images differed (1.3e-3 of the largest score); now each row's
        distance depends on that row alone (and cancels less)."""
        features = np.ascontiguousarray(features, np.float32)
        if features.shape[1] != self.dimension:
            raise ValueError(f"feature dimension {features.shape[1]} != bank dimension {self.dimension}")
        _, nearest = (self.index if self.search_index is None else self.search_index).search(features, int(num_nn))
        difference = self.rows[nearest] - features[:, None, :]
        distances = np.einsum("nkd,nkd->nk", difference, difference, optimize=False)   # numpy's loop: per row
        return distances.mean(axis=1)

    @property
    def rows(self):
        """The bank's entries [size, D] float32: a view of the index's own storage (no copy)."""
        if self._rows is None or len(self._rows) != len(self):
            self._rows = faiss.rev_swig_ptr(self.index.get_xb(), len(self) * self.dimension).reshape(
                len(self), self.dimension)
        return self._rows

    def support_weight(self, feature, num_nn):
        """The paper's eq. 7 weight of one patch ``feature`` [D] (``src/patchcore/scoring.py``, ``reweighted``):
        ``1 - softmax(d)[0]``, d the Euclidean distances (float64) from the patch to its nearest entry m* and then
        to the other ``num_nn - 1`` entries nearest to m*."""
        query = np.ascontiguousarray(feature, np.float32).reshape(1, -1)
        nearest = int(self.index.search(query, 1)[1][0, 0])
        anchor = self.index.reconstruct(nearest)
        count = min(int(num_nn), len(self))
        neighbours = self.index.search(anchor.reshape(1, -1), count)[1][0]
        support = [nearest] + [int(i) for i in neighbours if i != nearest][:count - 1]
        rows = np.stack([self.index.reconstruct(i) for i in support]).astype(np.float64)
        distances = np.sqrt(((rows - query.astype(np.float64)) ** 2).sum(axis=1))
        exponentials = np.exp(distances - distances.max())   # the softmax, without overflow
        return float(1.0 - exponentials[0] / exponentials.sum())

    def save(self, folder):
        """Write the index, then metadata with the index's sha256, each atomically."""
        index_path = os.path.join(folder, INDEX_FILE)
        with atomic_path(index_path) as tmp:
            faiss.write_index(self.index, tmp)
        meta = dict(self.metadata, format_version=FORMAT_VERSION, index_file=INDEX_FILE,
                    index_sha256=sha256_of(index_path), bank_size=len(self), dimension=self.dimension)
        write_json(os.path.join(folder, METADATA_FILE), meta)
        self.metadata = meta

    @classmethod
    def load(cls, folder, index=True):
        """The bank saved in ``folder``, its index verified against ``bank.json`` (sha256, size, dimension).

        ``index=False`` reads ``bank.json`` alone, for callers that need only the metadata: reading and
        hashing a large index costs seconds. Such a bank has no index and cannot score.
        """
        meta_path = os.path.join(folder, METADATA_FILE)
        if not os.path.isfile(meta_path):
            raise InputError(meta_path, "memory bank metadata not found (train this category first)")
        meta = read_json(meta_path, "memory bank metadata")
        if not index:
            return cls(None, meta)
        index_path = os.path.join(folder, meta.get("index_file", INDEX_FILE))
        if not os.path.isfile(index_path):
            raise InputError(index_path, "memory bank index not found")
        if sha256_of(index_path) != meta.get("index_sha256"):
            raise InputError(index_path, "sha256 differs from bank.json: the index is corrupt or was replaced")
        faiss_index = faiss.read_index(index_path)
        if faiss_index.ntotal != meta.get("bank_size") or faiss_index.d != meta.get("dimension"):
            raise InputError(index_path, "index shape differs from bank.json")
        return cls(faiss_index, meta)
