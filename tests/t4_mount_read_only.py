"""A read-only mount (``artfs mount -o ro``), for machines that only read (issue 11).

On a writable FUSE mount the kernel marks a file's atime stale after every
read it sends, and the next stat of the file (``tar``'s fstat, ``cp -p``,
``rsync``) asks the daemon for its attributes: a request per file read cold.
A read-only superblock keeps no atime, so that request is gone; writes are
refused by the kernel (EROFS) before they reach the daemon, and nothing is
committed. With nothing written, no close needs a flush: the first answers
ENOSYS and the kernel sends no more (a writable mount keeps them: drafts
publish at close). These tests read the same files through a writable and a
read-only mount of one store and count the getattr requests each answered.
"""

from __future__ import annotations

import errno
import os
import subprocess
from pathlib import Path

import pytest

from tests.mounting import mounted_here

FILES = 40


def _read_and_stat(version: Path) -> None:
    for i in range(FILES):
        with open(version / f"f{i:03d}.txt", "rb") as f:
            assert f.read() == f"file {i}\n".encode() * (i + 1)
            assert os.fstat(f.fileno()).st_size == len(f"file {i}\n") * (i + 1)


@pytest.fixture
def version(api, tmp_path: Path) -> str:
    src = tmp_path / "src"
    src.mkdir()
    for i in range(FILES):
        (src / f"f{i:03d}.txt").write_bytes(f"file {i}\n".encode() * (i + 1))
    api.put([src], "proj/data")
    return "proj/data/v0"


def test_a_read_only_mount_asks_no_attributes_after_reads(
    version, store_url, artfs_env, tmp_path: Path
) -> None:
    with (
        mounted_here(tmp_path, store_url, name="rw", env=artfs_env) as rw,
        mounted_here(tmp_path, store_url, name="ro", env=artfs_env, args=["-o", "ro"]) as ro,
    ):
        assert "ro" in ro.options() and "rw" in rw.options()
        for m in (rw, ro):
            os.stat(m.path / version)  # looked up, listed: what follows is reads
            os.listdir(m.path / version)
        counts = {}
        for name, m in (("rw", rw), ("ro", ro)):
            before = m.requests()
            _read_and_stat(m.path / version)
            after = m.requests()
            counts[name] = {op: n - before.get(op, 0) for op, n in after.items()}
        assert counts["rw"].get("read", 0) >= FILES and counts["ro"].get("read", 0) >= FILES
        # Writable: the atime each read made stale costs a getattr per file.
        assert counts["rw"].get("getattr", 0) >= FILES, counts
        assert counts["ro"].get("getattr", 0) <= 2, counts
        # Read-only, nothing written: the first close answered ENOSYS, the
        # kernel sent no flush after it. Writable: a flush per close.
        assert counts["rw"].get("flush", 0) >= FILES, counts
        assert counts["ro"].get("flush", 0) <= 1, counts


def test_a_read_only_mount_refuses_writes_and_commits_nothing(
    version, store_url, artfs_env, api, tmp_path: Path
) -> None:
    with mounted_here(tmp_path, store_url, env=artfs_env, args=["-o", "ro"]) as m:
        staging = m.path / "proj/data/staging"
        for attempt in (
            lambda: (staging / "new.txt").write_text("x"),
            lambda: os.mkdir(m.path / "proj/other"),
            lambda: os.utime(staging / ".commit"),
        ):
            with pytest.raises(OSError) as e:
                attempt()
            assert e.value.errno == errno.EROFS
        touch = subprocess.run(["touch", str(staging / ".commit")], capture_output=True, text=True)
        assert touch.returncode != 0 and "Read-only file system" in touch.stderr
        assert (m.path / version / "f001.txt").read_bytes() == b"file 1\nfile 1\n"
    assert [v.version for v in api.artifact_versions("proj/data")] == ["v0"]
