"""Which run a FUSE caller belongs to: read from /proc once per live process,
never served for a pid whose process is gone, re-read after an exec's window."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

from artfs.fs.lineage import ProcessRuns


@contextmanager
def process(args: list[str], run_id: str) -> Iterator[subprocess.Popen]:
    env = dict(os.environ, ARTFS_RUN=run_id)
    p = subprocess.Popen(args, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        yield p
    finally:
        p.kill()
        p.wait()


def wait_for(pred, what: str) -> None:
    deadline = time.monotonic() + 10
    while not pred():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


def environ_has(pid: int, needle: bytes) -> bool:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return needle in f.read()
    except OSError:
        return False


def test_a_live_process_is_read_once_and_a_gone_one_is_never_served() -> None:
    runs = ProcessRuns(ttl=60)
    with process(["sleep", "60"], "run-one") as p:
        wait_for(lambda: environ_has(p.pid, b"ARTFS_RUN=run-one"), "the child's environment")
        assert runs.run_of(p.pid) == "run-one"
        assert [runs.run_of(p.pid) for _ in range(50)] == ["run-one"] * 50
        assert runs.reads == 1, "every call read /proc again"
        p.kill()
        p.wait()
        # Kept, but its process is gone: a reused pid must not inherit the run.
        assert runs.run_of(p.pid) is None
        assert runs.reads == 2
    runs.close()


def test_an_exec_that_changes_the_run_is_seen_after_the_ttl() -> None:
    runs = ProcessRuns(ttl=0.2)
    script = "read line; exec env ARTFS_RUN=run-two sleep 60"
    with process(["sh", "-c", script], "run-one") as p:
        wait_for(lambda: environ_has(p.pid, b"ARTFS_RUN=run-one"), "the child's environment")
        assert runs.run_of(p.pid) == "run-one"
        assert p.stdin is not None
        p.stdin.write(b"go\n")
        p.stdin.flush()
        wait_for(lambda: environ_has(p.pid, b"ARTFS_RUN=run-two"), "the exec")
        time.sleep(0.25)
        assert runs.run_of(p.pid) == "run-two", "an entry outlived its ttl across an exec"
    runs.close()


def test_a_thread_id_is_attributed_like_its_process() -> None:
    # FUSE passes the calling thread's id, which is no process id for a
    # thread other than the main one.
    code = (
        "import sys, threading\n"
        "ready = threading.Event()\n"
        "def work():\n"
        "    print(threading.get_native_id(), flush=True)\n"
        "    sys.stdin.readline()\n"
        "t = threading.Thread(target=work)\n"
        "t.start(); t.join()\n"
    )
    runs = ProcessRuns(ttl=60)
    with process([sys.executable, "-c", code], "run-three") as p:
        assert p.stdout is not None
        tid = int(p.stdout.readline())
        assert tid != p.pid
        assert runs.run_of(tid) == "run-three"
        assert runs.run_of(tid) == "run-three"
        assert runs.reads == 1, "a thread's run was not kept"
        assert p.stdin is not None
        p.stdin.write(b"done\n")
        p.stdin.flush()
        p.wait(timeout=10)
        assert runs.run_of(tid) is None
    runs.close()
