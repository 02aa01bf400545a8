"""Attributing mount activity to runs, so training code records lineage unchanged.

A process started by ``artfs run`` carries ``ARTFS_RUN`` in its environment;
the daemon reads the caller's environment from ``/proc/<pid>/environ`` and
records each use once per (run, version).

Reading ``/proc/<pid>/environ`` on every open cost ~25-100 us (a third of a
re-open's time in a ``tar`` epoch), so what a pid carries is kept a while
(``ProcessRuns``): each kept pid holds a pidfd, and an entry is used only while
its pidfd does not poll readable, i.e. while that very process (or thread)
lives, so a reused pid is never mistaken for the process that had it. An
exec keeps the pid and may change the environment; an entry is therefore
trusted for at most ``RUN_TTL`` seconds after it was read.
"""

from __future__ import annotations

import logging
import os
import select
import threading
import time
from collections import OrderedDict

from artfs.names import BadName
from artfs.objects import StoreError
from artfs.repo import Repo, RepoError, Version, runs

log = logging.getLogger("artfs.fs")
_RUN_VAR = runs.RUN_ENV.encode() + b"="


# Seconds a pid's run is trusted after /proc was read (an exec may change it).
RUN_TTL = 1.0
# Pids kept at once (each holds a pidfd).
KEPT_PIDS = 256
# pidfd_open(2) of a thread that leads no process (Linux >= 6.9); os has no name for it.
_PIDFD_THREAD = os.O_EXCL


def read_run_of_process(pid: int) -> str | None:
    """The ``ARTFS_RUN`` in ``/proc/<pid>/environ``, or None (also when /proc
    cannot tell). Uncached: ``run_of_process`` is the one to call."""
    try:
        fd = os.open(f"/proc/{pid}/environ", os.O_RDONLY)
    except OSError:
        return None
    try:
        chunks = []
        while chunk := os.read(fd, 1 << 16):
            chunks.append(chunk)
    except OSError:
        return None
    finally:
        os.close(fd)
    environ = b"\0" + b"".join(chunks)
    start = environ.find(b"\0" + _RUN_VAR)
    if start < 0:
        return None
    start += 1 + len(_RUN_VAR)
    end = environ.find(b"\0", start)
    run_id = environ[start : end if end >= 0 else len(environ)].decode("utf-8", "replace")
    try:
        return runs.check_run_id(run_id)
    except BadName:
        log.warning("process %d has a bad %s=%r; not recorded", pid, runs.RUN_ENV, run_id)
        return None


class ProcessRuns:
    """pid -> its ``ARTFS_RUN``, read from /proc once per ``RUN_TTL`` while the
    process lives (see the module's docstring). Thread-safe."""

    def __init__(self, ttl: float = RUN_TTL, keep: int = KEPT_PIDS) -> None:
        self.ttl = ttl
        self.keep = keep
        self.reads = 0  # of /proc, for tests and stats
        self._kept: OrderedDict[int, tuple[int, float, str | None]] = OrderedDict()
        self._lock = threading.Lock()

    def run_of(self, pid: int) -> str | None:
        now = time.monotonic()
        with self._lock:
            kept = self._kept.get(pid)
            if kept is not None:
                pidfd, read_at, run_id = kept
                if now - read_at < self.ttl and not _exited(pidfd):
                    self._kept.move_to_end(pid)
                    return run_id
                del self._kept[pid]
                os.close(pidfd)
        pidfd = _pidfd(pid)  # before the read: the process it names is the one read
        self.reads += 1
        run_id = read_run_of_process(pid)
        if pidfd < 0:
            return run_id
        if _exited(pidfd):
            os.close(pidfd)
            return None  # gone: what was read (if anything) was someone else's
        with self._lock:
            old = self._kept.pop(pid, None)
            if old is not None:
                os.close(old[0])
            self._kept[pid] = (pidfd, now, run_id)
            while len(self._kept) > self.keep:
                os.close(self._kept.popitem(last=False)[1][0])
        return run_id

    def close(self) -> None:
        with self._lock:
            for pidfd, _, _ in self._kept.values():
                os.close(pidfd)
            self._kept.clear()


def _pidfd(pid: int) -> int:
    """A pidfd of ``pid`` (a process or, on Linux >= 6.9, a thread), or -1."""
    for flags in (0, _PIDFD_THREAD):
        try:
            return os.pidfd_open(pid, flags)
        except OSError:
            continue
    return -1


def _exited(pidfd: int) -> bool:
    """A pidfd polls readable once its process (or thread) has exited."""
    poll = select.poll()  # not select(): the daemon's fds may pass FD_SETSIZE
    poll.register(pidfd, select.POLLIN)
    return bool(poll.poll(0))


_process_runs = ProcessRuns()


def run_of_process(pid: int) -> str | None:
    """The caller's ``ARTFS_RUN``, or None (also when /proc cannot tell)."""
    return _process_runs.run_of(pid)


class RunRecorder:
    """Records each (run, version) use once per mount."""

    def __init__(self, repo: Repo) -> None:
        self._repo = repo
        self._recorded: set[tuple[str, str, str, int]] = set()
        self._lock = threading.Lock()

    def record_use(self, run_id: str, version: Version) -> None:
        """Write the edge to the store (blocking). Lineage never fails a read."""
        key = (run_id, version.project, version.artifact, version.number)
        with self._lock:
            if key in self._recorded:
                return
            self._recorded.add(key)
        try:
            runs.record_use(self._repo, run_id, version)
        except (StoreError, RepoError, BadName) as e:
            log.warning("could not record that run %s used %s: %s", run_id, version.ref, e)
            with self._lock:
                self._recorded.discard(key)
        else:
            log.info("run %s used %s", run_id, version.ref)
