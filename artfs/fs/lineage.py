"""Attributing mount activity to runs, so training code records lineage unchanged.

A process started by ``artfs run`` carries ``ARTFS_RUN`` in its environment;
the daemon reads the caller's environment from ``/proc/<pid>/environ`` on
each open of a version file and records the use once per (run, version).
"""

from __future__ import annotations

import logging
import threading

from artfs.names import BadName
from artfs.objects import StoreError
from artfs.repo import Repo, RepoError, Version, runs

log = logging.getLogger("artfs.fs")
_RUN_VAR = runs.RUN_ENV.encode() + b"="


def run_of_process(pid: int) -> str | None:
    """The caller's ``ARTFS_RUN``, or None (also when /proc cannot tell)."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            environ = f.read()
    except OSError:
        return None
    for item in environ.split(b"\0"):
        if item.startswith(_RUN_VAR):
            run_id = item[len(_RUN_VAR) :].decode("utf-8", "replace")
            try:
                return runs.check_run_id(run_id)
            except BadName:
                log.warning("process %d has a bad %s=%r; not recorded", pid, runs.RUN_ENV, run_id)
                return None
    return None


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
