"""Hits and misses of the cache, summed over every process that uses it.

Each process counts in memory and adds its counts to ``counters`` (under an
exclusive ``flock`` on that file) after a miss, at most every few seconds
after hits, and at exit, so ``artfs cache info`` can show a hit rate.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import threading
import time
import weakref
from pathlib import Path

from artfs.fsutil import flock

FLUSH_SECONDS = 2.0
_live: weakref.WeakSet[Counters] = weakref.WeakSet()


@atexit.register
def _flush_all() -> None:
    for counters in list(_live):
        counters.flush()


class Counters:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._hits = self._misses = 0
        self._flushed_at = time.monotonic()
        _live.add(self)

    def hit(self) -> None:
        with self._lock:
            self._hits += 1
            due = time.monotonic() - self._flushed_at > FLUSH_SECONDS
        if due:
            self.flush()

    def miss(self) -> None:
        with self._lock:
            self._misses += 1
        self.flush()

    def flush(self) -> None:
        with self._lock:
            hits, misses = self._hits, self._misses
            self._hits = self._misses = 0
            self._flushed_at = time.monotonic()
        if not hits and not misses:
            return
        with contextlib.suppress(OSError), flock(self.path) as fd:
            total = _parse(os.pread(fd, 4096, 0))
            total["hits"] += hits
            total["misses"] += misses
            data = json.dumps(total).encode()
            os.ftruncate(fd, 0)
            os.pwrite(fd, data, 0)

    def totals(self) -> dict[str, int]:
        self.flush()
        try:
            return _parse(self.path.read_bytes())
        except OSError:
            return {"hits": 0, "misses": 0}


def _parse(data: bytes) -> dict[str, int]:
    try:
        obj = json.loads(data or b"{}")
        return {k: int(obj.get(k, 0)) for k in ("hits", "misses")}
    except (ValueError, TypeError, AttributeError):
        return {"hits": 0, "misses": 0}
