"""Stamps of verified cache entries, kept on disk for every process.

``stamps/<2 hex>/<digest>`` holds the ``Stamp`` of ``blobs/<2 hex>/<digest>``
taken when its bytes were last verified, and its own mtime is the blob's last
use: eviction is least recently used across every process sharing the cache.
Last use is not kept on the blob itself, because touching it would move the
blob's ctime and so its stamp.

No stamp file, or one that does not match the blob, means "not verified":
the reader hashes the blob again (and discards it if it is wrong).
"""

from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path

from artfs.cache.verify import Stamp


class StampBook:
    def __init__(self, root: Path) -> None:
        self.root = root
        self._known: dict[str, Stamp] = {}  # what this process last read or wrote
        self._lock = threading.Lock()

    def path(self, digest: str) -> Path:
        return self.root / digest.partition(":")[2][:2] / digest

    def get(self, digest: str, current: Stamp) -> Stamp | None:
        """The recorded stamp, read from disk only when memory does not match."""
        with self._lock:
            known = self._known.get(digest)
        if known == current:
            return known
        try:
            stamp = Stamp.decode(self.path(digest).read_bytes())
        except OSError:
            return None
        if stamp is not None:
            with self._lock:
                self._known[digest] = stamp
        return stamp

    def known(self, digest: str) -> Stamp | None:
        """The stamp this process last read or wrote, without reading the disk."""
        with self._lock:
            return self._known.get(digest)

    def put(self, digest: str, stamp: Stamp) -> None:
        """Record ``stamp``; a full disk only costs a later re-verify.

        Written in place, not by rename: a torn or mixed write decodes as no
        stamp or a stamp that matches nothing, which only means "hash again"."""
        with self._lock:
            self._known[digest] = stamp
        path = self.path(digest)
        data = stamp.encode()
        try:
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            except FileNotFoundError:
                path.parent.mkdir(exist_ok=True)
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                os.write(fd, data)
            finally:
                os.close(fd)
        except OSError:
            with contextlib.suppress(OSError):
                path.unlink()

    def drop(self, digest: str) -> None:
        with self._lock:
            self._known.pop(digest, None)
        with contextlib.suppress(OSError):
            self.path(digest).unlink()

    def touch(self, digest: str) -> None:
        """Record a use now (eviction's clock); atime is unreliable under noatime."""
        with contextlib.suppress(OSError):
            os.utime(self.path(digest))

    def last_use_ns(self, digest: str, fallback: int) -> int:
        try:
            return os.stat(self.path(digest)).st_mtime_ns
        except OSError:
            return fallback
