"""Staging requests answered on the event loop (issue 11): right, counted, never stuck.

The daemon answers staged lookups, attributes, creates, small writes,
flushes and releases on its event loop when they need no I/O, and counts
them (``now`` in ``user.artfs.stats``); what would wait (for a commit that
holds the area's lock, for the base's manifest) goes on to a worker
(``deferred``). These tests read the counters around real tools and check
that what the loop answered is what a worker would have: sizes right after
each write, times after each utime, every file in the version.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests.mounting import mounted_here
from tests.trees import read_tree

FILES = 120


def _delta(before: dict, after: dict, key: str) -> dict[str, int]:
    return {op: n - before[key].get(op, 0) for op, n in after[key].items()}


@pytest.fixture
def mnt(store_url, artfs_env, tmp_path):
    with mounted_here(tmp_path, store_url, env=artfs_env) as m:
        yield m


def test_cp_r_into_staging_is_answered_on_the_loop(mnt, tmp_path: Path) -> None:
    src = tmp_path / "src"
    for i in range(FILES):
        d = src / f"d{i % 4}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"f{i:04d}.txt").write_bytes(f"file {i}\n".encode() * (i + 1))
    art = mnt.path / "proj/loop"
    art.mkdir(parents=True)
    staging = art / "staging"
    before = mnt.stats()
    subprocess.run(["cp", "-r", f"{src}/.", str(staging)], check=True, timeout=120)
    after = mnt.stats()
    now = _delta(before, after, "now")
    # Each file: a negative lookup, create, one write, flush and release, on the loop.
    for op in ("lookup", "create", "write", "flush", "release"):
        assert now.get(op, 0) >= FILES, (op, now)
    assert sum(_delta(before, after, "deferred").values()) == 0
    # What the loop answered is what is there: sizes, and the version's bytes.
    for p in src.rglob("*.txt"):
        assert (staging / p.relative_to(src)).stat().st_size == p.stat().st_size
    subprocess.run(["touch", str(staging / ".commit")], check=True, timeout=120)
    assert read_tree(art / "v0") == read_tree(src)


def test_getattr_on_the_loop_sees_each_acknowledged_change(mnt) -> None:
    (mnt.path / "proj/attrs").mkdir(parents=True)
    staging = mnt.path / "proj/attrs/staging"
    path = staging / "grow.bin"
    before = mnt.stats()
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        written = 0
        for i in range(1, 6):
            os.write(fd, bytes([i]) * 1000 * i)
            written += 1000 * i
            assert os.fstat(fd).st_size == written
            assert os.stat(path).st_size == written
        os.pwrite(fd, b"end", 50_000)  # a hole, then three bytes
        assert os.stat(path).st_size == 50_003
        os.ftruncate(fd, 7)
        assert os.stat(path).st_size == 7
    finally:
        os.close(fd)
    os.utime(path, ns=(1_000_000_000, 1_234_567_890_123_456_789))
    st = os.stat(path)
    assert st.st_mtime_ns == 1_234_567_890_123_456_789
    assert st.st_size == 7
    os.chmod(path, 0o600)
    assert os.stat(path).st_mode & 0o777 == 0o600
    sub = staging / "sub"
    sub.mkdir()
    os.utime(sub, ns=(2_000_000_000, 2_000_000_000))
    assert os.stat(sub).st_mtime_ns == 2_000_000_000
    assert not (staging / "absent").exists()
    (staging / "absent").write_bytes(b"now here")  # the negative entry gives way
    assert (staging / "absent").read_bytes() == b"now here"
    now = _delta(before, mnt.stats(), "now")
    assert now.get("getattr", 0) >= 1 and now.get("lookup", 0) >= 1, now


def test_a_commit_holding_the_area_never_holds_the_loop(
    store_url, artfs_env, tmp_path: Path
) -> None:
    pause = tmp_path / "pause"
    env = dict(artfs_env, ARTFS_TEST_PAUSE_BEFORE_RECORD=str(pause))
    with mounted_here(tmp_path, store_url, env=env) as m:
        staging = m.path / "proj/busy/staging"
        other = m.path / "proj/other/staging"
        staging.parent.mkdir(parents=True)
        other.parent.mkdir(parents=True)
        (staging / "a.txt").write_text("a\n")
        (other / "b.txt").write_text("b\n")
        commit = threading.Thread(
            target=subprocess.run, args=(["touch", str(staging / ".commit")],), daemon=True
        )
        late_done = threading.Event()

        def write_late() -> None:
            (staging / "late.txt").write_text("late\n")  # waits for the commit
            late_done.set()

        late = threading.Thread(target=write_late, daemon=True)
        try:
            commit.start()
            deadline = time.monotonic() + 60
            while not Path(f"{pause}.reached").exists():
                assert time.monotonic() < deadline, "the commit never reached its pause"
                time.sleep(0.02)
            # The commit holds the area's lock now: a create there must go to a worker.
            before = m.stats()
            late.start()
            time.sleep(0.5)
            answered: dict = {}

            def ask() -> None:
                answered["b"] = (other / "b.txt").stat().st_size
                answered["a"] = (staging / "a.txt").stat().st_size
                answered["stats"] = m.stats()

            asker = threading.Thread(target=ask, daemon=True)
            asker.start()
            asker.join(10)
            assert not asker.is_alive(), "the event loop waited for the commit's lock"
            assert answered["a"] == 2 and answered["b"] == 2
            assert not late_done.is_set()
            deferred = _delta(before, answered["stats"], "deferred")
            assert deferred.get("create", 0) >= 1, deferred
        finally:
            pause.touch()
            commit.join(60)
            late.join(60)
        assert late_done.is_set()
        assert (m.path / "proj/busy/v0/a.txt").read_text() == "a\n"
        assert not (m.path / "proj/busy/v0/late.txt").exists()
        assert (staging / "late.txt").read_text() == "late\n"  # staged for the next one
