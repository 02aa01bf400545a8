"""Staging's nodes are kept only while the kernel (or an open file) needs them:
the daemon's memory follows what the kernel holds, not every name ever staged."""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from pathlib import Path

import pytest

from tests.mounting import Mount, mounted


@pytest.fixture
def mount(store_url, cache_dir, artfs_env, tmp_path):
    with contextlib.ExitStack() as stack:
        count = iter(range(100))

        def make() -> Mount:
            return stack.enter_context(
                mounted(
                    tmp_path / f"mnt{next(count)}",
                    store_url=store_url,
                    cache_dir=cache_dir,
                    state_dir=tmp_path / "state",
                    env=artfs_env,
                )
            )

        yield make


def forget_all(m: Mount, at_most: int) -> int:
    """Make the kernel drop its dentries (and so forget its inodes) until the
    daemon keeps at most ``at_most`` nodes; returns the count reached."""
    deadline = time.monotonic() + 15
    while True:
        Path("/proc/sys/vm/drop_caches").write_text("2")
        live = m.stats()["nodes_live"]
        if live <= at_most or time.monotonic() > deadline:
            return live
        time.sleep(0.2)


def answers(p: Path) -> tuple[int, int, int, int, bytes]:
    st = os.lstat(p)
    return st.st_mode, st.st_size, st.st_mtime_ns, st.st_nlink, p.read_bytes()


def test_staged_nodes_go_when_forgotten_and_come_back_the_same(mount) -> None:
    m = mount()
    (m.path / "proj").mkdir()
    (m.path / "proj/ds").mkdir()
    staging = m.path / "proj/ds/staging"
    assert os.listdir(staging) == []
    idle = m.stats()["nodes_live"]
    for d in range(3):
        (staging / f"d{d}").mkdir()
        for i in range(100):
            (staging / f"d{d}/f{i:03d}.txt").write_bytes(b"%d/%d\n" % (d, i))
    (staging / "top.txt").write_text("top\n")
    os.link(staging / "d0/f000.txt", staging / "d0/hard.txt")
    os.symlink("f001.txt", staging / "d0/link")
    probes = [staging / p for p in ("top.txt", "d0/f000.txt", "d0/hard.txt", "d2/f099.txt")]
    before = {p: answers(p) for p in probes}
    link_before = os.readlink(staging / "d0/link")
    # A file held open, and so its name and directory held by the kernel.
    held = open(staging / "d1/f005.txt", "r+b")  # noqa: SIM115
    try:
        grown = m.stats()["nodes_live"]
        # At least the open file and its directory; the kernel may already have
        # forgotten others (drop_caches is machine-wide: a test running beside
        # this one may have written it), which is what the next lines check.
        assert grown >= idle + 2, (idle, grown)

        # Staging, not committed yet: forgotten nodes go.
        live = forget_all(m, idle + 20)
        assert live <= idle + 20, (idle, grown, live)

        # The open file still reads, writes and answers fstat.
        assert held.read() == b"1/5\n"
        held.write(b"more\n")
        held.flush()
        assert os.fstat(held.fileno()).st_size == len(b"1/5\nmore\n")
    finally:
        held.close()
    assert (staging / "d1/f005.txt").read_bytes() == b"1/5\nmore\n"

    # Looked up again: the same answers, and hard links still one inode.
    assert {p: answers(p) for p in probes} == before
    assert os.stat(staging / "d0/hard.txt").st_ino == os.stat(staging / "d0/f000.txt").st_ino
    assert os.readlink(staging / "d0/link") == link_before
    assert sorted(os.listdir(staging)) == ["d0", "d1", "d2", "top.txt"]
    assert len(os.listdir(staging / "d2")) == 100
    # Renames of names whose nodes went and came back still move the right things.
    os.rename(staging / "d2", staging / "moved")
    assert (staging / "moved/f042.txt").read_bytes() == b"2/42\n"

    r = subprocess.run(["touch", str(staging / ".commit")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert os.listdir(staging) == []
    assert (m.path / "proj/ds/v0/moved/f042.txt").read_bytes() == b"2/42\n"
    assert (m.path / "proj/ds/v0/d1/f005.txt").read_bytes() == b"1/5\nmore\n"
    # After the commit the staged tree's nodes go too (the version's are never stored).
    live = forget_all(m, idle + 20)
    assert live <= idle + 20, (idle, live)
    # And staging takes new files as before.
    (staging / "again.txt").write_text("again\n")
    assert (staging / "again.txt").read_text() == "again\n"
