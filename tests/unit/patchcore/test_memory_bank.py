"""src/patchcore/memory_bank.py: patch scores against the reference's nearest-neighbour distances."""
import os

import numpy as np
import pytest

import src  # noqa: F401
from src.patchcore.memory_bank import MemoryBank
from src.utils.errors import InputError


def test_memory_bank_scores_are_mean_squared_nn_distances(tmp_path):
    rng = np.random.default_rng(0)
    bank_rows = rng.standard_normal((50, 8)).astype(np.float32)
    queries = rng.standard_normal((7, 8)).astype(np.float32)
    bank = MemoryBank.from_features(bank_rows, {"seed": 3})
    squared = ((queries[:, None, :] - bank_rows[None]) ** 2).sum(-1)
    expected = np.sort(squared, axis=1)[:, :3].mean(1)
    np.testing.assert_allclose(bank.patch_scores(queries, num_nn=3), expected, rtol=1e-4)
    bank.save(str(tmp_path))
    loaded = MemoryBank.load(str(tmp_path))
    assert loaded.metadata["seed"] == 3 and len(loaded) == 50
    np.testing.assert_array_equal(loaded.patch_scores(queries), bank.patch_scores(queries))
    with open(tmp_path / "faiss.index", "r+b") as f:
        f.seek(-4, os.SEEK_END)
        f.write(b"\x00\x01\x02\x03")
    with pytest.raises(InputError, match="sha256"):
        MemoryBank.load(str(tmp_path))
    assert MemoryBank.load(str(tmp_path), index=False).metadata["seed"] == 3   # bank.json alone: index not read
