"""tiler.io.files: atomic outputs, including file systems without hard links."""

from __future__ import annotations

import errno
import os

import pytest

from tiler.errors import OutputError, OutputExists
from tiler.io import files
from tiler.io.files import atomic_output


def _no_links(monkeypatch):
    def refuse(src, dst, *a, **k):
        raise PermissionError(errno.EPERM, "Operation not permitted")  # what vfat answers

    monkeypatch.setattr(files.os, "link", refuse)


def test_atomic_output_writes_and_leaves_no_temporary(tmp_path):
    with atomic_output(tmp_path / "a.txt") as tmp:
        tmp.write_text("done")
    assert (tmp_path / "a.txt").read_text() == "done"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]


def test_without_hard_links_falls_back_to_rename(tmp_path, monkeypatch):
    _no_links(monkeypatch)
    with atomic_output(tmp_path / "a.txt") as tmp:
        tmp.write_text("done")
    assert (tmp_path / "a.txt").read_text() == "done"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]


def test_without_hard_links_an_output_that_appears_is_kept(tmp_path, monkeypatch):
    _no_links(monkeypatch)
    dst = tmp_path / "a.txt"
    with pytest.raises(OutputExists):
        with atomic_output(dst) as tmp:
            tmp.write_text("new")
            dst.write_text("someone else's")  # appeared while we were writing
    assert dst.read_text() == "someone else's"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]


def test_failure_removes_the_temporary(tmp_path):
    with pytest.raises(RuntimeError):
        with atomic_output(tmp_path / "a.txt") as tmp:
            tmp.write_text("partial")
            raise RuntimeError("encoder failed")
    assert list(tmp_path.iterdir()) == []


def test_refuses_inputs_and_existing_outputs(tmp_path):
    src = tmp_path / "in.txt"
    src.write_text("input")
    with pytest.raises(OutputError, match="output is the input"):
        with atomic_output(src, inputs=[src], overwrite=True):
            pass
    with pytest.raises(OutputExists):
        with atomic_output(src):
            pass
    assert src.read_text() == "input"
    assert os.listdir(tmp_path) == ["in.txt"]
