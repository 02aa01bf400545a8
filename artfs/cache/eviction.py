"""The size limit: least recently used entries go first, entries in use never.

Last use is the mtime of an entry's stamp file (stamps.py), moved by every
open in every process; a partial fetch's own mtime for those. An entry is in
use while some process holds a shared ``flock`` on it (an open reader);
cleanup takes an exclusive, non-blocking ``flock`` before unlinking, so it
never removes an entry that is open, and an opener that raced it sees the
entry unlinked (``st_nlink == 0``) and opens it again.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# After the limit is crossed, prune to this fraction of it, so the next
# fetches do not each rescan the cache.
PRUNE_TO = 0.9


@dataclass(frozen=True)
class CleanupResult:
    removed: int
    freed: int
    kept_bytes: int
    pinned: int


@dataclass(frozen=True)
class CacheInfo:
    root: str
    size: int
    limit: int | None
    blobs: int
    partials: int
    pinned: int
    pinned_bytes: int
    hits: int
    misses: int

    @property
    def hit_rate(self) -> float | None:
        total = self.hits + self.misses
        return self.hits / total if total else None


@dataclass(frozen=True)
class _Entry:
    path: Path
    digest: str
    partial: bool
    used: int  # bytes on disk
    last_use_ns: int


def entries(cache: Any) -> Iterator[_Entry]:
    """Every cached blob and partial fetch."""
    for sub in (cache.root / "blobs").iterdir():
        for p in sub.iterdir():
            with contextlib.suppress(FileNotFoundError):
                st = p.stat()
                last = cache.stamps.last_use_ns(p.name, st.st_mtime_ns)
                yield _Entry(p, p.name, False, st.st_size, last)
    for p in (cache.root / "partial").iterdir():
        if p.suffix != ".parts":
            with contextlib.suppress(FileNotFoundError):
                st = p.stat()
                # Sparse: only what was fetched counts.
                yield _Entry(p, p.name, True, st.st_blocks * 512, st.st_mtime_ns)


def size(cache: Any) -> int:
    return sum(e.used for e in entries(cache))


def _in_use(path: Path) -> bool | None:
    """True if some process holds the entry open; None if it is gone."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def cleanup(cache: Any, max_bytes: int, keep: Path | None = None) -> CleanupResult:
    found = sorted(entries(cache), key=lambda e: e.last_use_ns)
    total = sum(e.used for e in found)
    removed = freed = pinned = 0
    for e in found:
        if total <= max_bytes:
            break
        if e.path == keep:
            continue
        try:
            fd = os.open(e.path, os.O_RDONLY)
        except FileNotFoundError:
            total -= e.used
            continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                pinned += 1
                continue
            e.path.unlink(missing_ok=True)
            if e.partial:
                e.path.with_name(e.path.name + ".parts").unlink(missing_ok=True)
            else:
                cache.stamps.drop(e.digest)
        finally:
            os.close(fd)
        total -= e.used
        freed += e.used
        removed += 1
    return CleanupResult(removed, freed, total, pinned)


def grew(cache: Any, added: Path, nbytes: int | None = None) -> None:
    """Keep the cache within ``max_bytes`` after ``added`` came in (or ``nbytes``
    more of it, for a partial fetch): evict the least recently used entries,
    never ``added`` itself."""
    if cache.max_bytes is None:
        return
    with cache._size_guard:
        if cache._size_estimate is None:
            cache._size_estimate = size(cache)
        elif nbytes is not None:
            cache._size_estimate += nbytes
        else:
            with contextlib.suppress(FileNotFoundError):
                cache._size_estimate += added.stat().st_size
        if cache._size_estimate <= cache.max_bytes:
            return
        result = cleanup(cache, int(cache.max_bytes * PRUNE_TO), keep=added)
        cache._size_estimate = result.kept_bytes


def info(cache: Any) -> CacheInfo:
    blobs = partials = pinned = pinned_bytes = total = 0
    for e in entries(cache):
        total += e.used
        if e.partial:
            partials += 1
        else:
            blobs += 1
        if _in_use(e.path):
            pinned += 1
            pinned_bytes += e.used
    counts = cache.counters.totals()
    return CacheInfo(
        str(cache.root),
        total,
        cache.max_bytes,
        blobs,
        partials,
        pinned,
        pinned_bytes,
        counts["hits"],
        counts["misses"],
    )
