"""The memory bank: coreset features in a faiss ``IndexFlatL2`` plus a JSON metadata file. No pickle.

Scores follow the reference: a patch's score is the mean of its ``num_nn`` nearest faiss distances,
which for ``IndexFlatL2`` are squared Euclidean distances.
"""
import os

import faiss
import numpy as np

from src.utils.errors import InputError
from src.utils.io import atomic_path, read_json, sha256_of, write_json

INDEX_FILE = "faiss.index"
METADATA_FILE = "bank.json"
FORMAT_VERSION = 1


class MemoryBank:
    """``index``: a faiss ``IndexFlatL2`` of the bank's features; None when loaded with ``index=False``."""

    def __init__(self, index, metadata=None):
        self.index = index
        self.metadata = dict(metadata or {})
        self._rows = None

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
        _, nearest = self.index.search(features, int(num_nn))
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
