"""Atomic writes: nothing under the final name on failure; normal file permissions on success."""

import os
import stat

import pytest

from cxr.core.atomic import atomic_path, write_text_atomic


def test_failure_leaves_nothing(tmp_path):
    target = tmp_path / "out.txt"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("boom")
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []


def test_success_renames_with_umask_mode(tmp_path):
    target = tmp_path / "sub" / "out.txt"
    write_text_atomic(target, "done")
    assert target.read_text() == "done"
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask
    assert [p.name for p in target.parent.iterdir()] == ["out.txt"]
