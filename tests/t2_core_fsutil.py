"""artfs.fsutil: the atomic write every layer uses, and the one flock context."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

import pytest

from artfs.fsutil import atomic_write, flock, replace


@pytest.mark.parametrize("durable", [True, False])
def test_atomic_write_replaces_whole_and_leaves_no_temp(tmp_path: Path, durable: bool) -> None:
    path = tmp_path / "journal.json"
    atomic_write(path, b"old")
    with open(path, "rb") as held:
        atomic_write(path, "new text", durable=durable)
        assert held.read() == b"old"  # a reader keeps the bytes it opened
    assert path.read_bytes() == b"new text"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["journal.json"]


def test_atomic_write_that_fails_leaves_the_old_file(tmp_path: Path) -> None:
    path = tmp_path / "status"
    atomic_write(path, b"old")
    (tmp_path / "blocker").mkdir()
    with pytest.raises(IsADirectoryError):
        # The rename fails (a file cannot replace a directory): nothing changes.
        atomic_write(tmp_path / "blocker", b"x")
    assert path.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blocker", "status"]


def test_replace_moves_a_finished_file(tmp_path: Path) -> None:
    (tmp_path / "tmp").write_bytes(b"blob")
    replace(tmp_path / "tmp", tmp_path / "dest")
    assert (tmp_path / "dest").read_bytes() == b"blob" and not (tmp_path / "tmp").exists()


def _can_lock(path: Path, op: int) -> bool:
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, op | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


def test_flock_exclusive_and_shared(tmp_path: Path) -> None:
    lock = tmp_path / "lock"
    with flock(lock) as fd:
        assert fd >= 0 and lock.exists()  # created on first use
        assert not _can_lock(lock, fcntl.LOCK_SH)
    assert _can_lock(lock, fcntl.LOCK_EX)  # released after the block
    with flock(lock, shared=True):
        assert _can_lock(lock, fcntl.LOCK_SH)
        assert not _can_lock(lock, fcntl.LOCK_EX)
    with pytest.raises(RuntimeError), flock(lock):
        raise RuntimeError
    assert _can_lock(lock, fcntl.LOCK_EX)  # released after an exception too
