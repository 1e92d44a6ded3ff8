"""src/utils/io.py: staged output folders."""
import os

import pytest

import src  # noqa: F401
from src.utils.io import staged_folder


def test_staged_folder_replaces_on_success_and_keeps_old_on_failure(tmp_path):
    final = tmp_path / "result"
    with staged_folder(str(final)) as stage:
        (open(os.path.join(stage, "a.txt"), "w")).write("one")
    assert (final / "a.txt").read_text() == "one"
    with pytest.raises(RuntimeError):
        with staged_folder(str(final)) as stage:
            (open(os.path.join(stage, "a.txt"), "w")).write("two")
            raise RuntimeError("boom")
    assert (final / "a.txt").read_text() == "one"
    assert os.listdir(tmp_path) == ["result"]
