"""Readers of one verified blob file, checked against its stamp on every open.

A ``BlobReader`` holds an fd on a cache entry (pinned by a shared ``flock``
while open) or on a local store's own file (never pinned: the store is not
the cache). Its stamp (size, mtime, inode, ctime: an edit in place moves
ctime even when size and mtime are put back) is checked:

- on every open: when it is made (the cache checks or verifies the file),
  when an idle reader is revived, and when a reader another open is using
  is handed to a new open (``fresh``: one ``fstat``). A reader whose stamp
  moved is not handed out again: the open makes a new reader, which hashes
  the file again (a damaged cache entry is discarded and fetched anew; a
  damaged local store file fails the open with EIO);
- within one open, after every read (``CHECK_INTERVAL`` 0): if the file is
  no longer the one that was verified, it is hashed again before the bytes
  go out, and a file that fails is discarded from the cache and the read
  fails. (After the read: a change that started before it shows.)

So a file damaged between opens, or while an open reads it, is never served.
A reader may go idle (kept for the next open of the same file): it then
gives up its pin, and ``revive`` tells whether it may serve again (stamp
unchanged, not evicted meanwhile).
"""

from __future__ import annotations

import fcntl
import os
import threading
import time
from collections.abc import Callable

from artfs.cache.verify import BlobError, Stamp, verify_fd

# While one open reads, its reader's stamp is checked again at most this
# often; 0: after every read. The kernel reads 1 MiB at a time, and one
# fstat per read cost nothing measurable against a check every 0.2 s
# (bench/bench_cache.py: 1 GiB through the mount, within the noise of +-10%;
# in process, ~20 us a read against ~3 ms a 1 MiB read takes through FUSE).
# ARTFS_READER_CHECK_INTERVAL changes it, for that benchmark and for tests
# (large: only opens check).
CHECK_INTERVAL = float(os.environ.get("ARTFS_READER_CHECK_INTERVAL", "0"))
# Called with (digest, fd) when a reader's file failed its re-verification.
Discard = Callable[[str, int], None]


def read_nowait(fd: int, length: int, offset: int) -> memoryview | None:
    """Up to ``length`` bytes at ``offset`` if all are in the page cache
    (``RWF_NOWAIT``: no disk read; the kernel still starts its read-ahead),
    else None. A short answer means either; callers compare it to the size
    they expect."""
    buf = bytearray(length)
    try:
        got = os.preadv(fd, [buf], offset, os.RWF_NOWAIT)
    except OSError:  # EAGAIN: not all in the page cache; EOPNOTSUPP: no RWF_NOWAIT here
        return None
    return memoryview(buf)[:got]


class BlobReader:
    """Positional reads of one blob, for one open file. Thread-safe (pread)."""

    def __init__(
        self,
        fd: int,
        size: int,
        digest: str = "",
        stamp: Stamp | None = None,
        *,
        pinned: bool = False,
        discard: Discard | None = None,
        restamp: Callable[[str, Stamp], None] | None = None,
        touch: Callable[[str], None] | None = None,
    ) -> None:
        self.fd = fd
        self.size = size
        self.digest = digest
        self.stamp = stamp
        self.pinned = pinned
        self._discard = discard
        self._restamp = restamp
        self._touch = touch
        self._lock = threading.Lock()
        self._was_pinned = False
        self._checked = time.monotonic()  # the caller verified or checked it just now

    def read(self, offset: int, length: int) -> bytes:
        data = os.pread(self.fd, length, offset)
        if self.stamp is None:
            return data
        now = time.monotonic()
        if now - self._checked < CHECK_INTERVAL:
            return data
        # After the read: a change that started before it shows in the stamp.
        if Stamp.of_fd(self.fd) != self.stamp:
            self._reverify()
            data = os.pread(self.fd, length, offset)
            if Stamp.of_fd(self.fd) != self.stamp:
                raise BlobError(f"blob {self.digest} keeps changing under its reader")
        # Only a check that passed lets the next reads skip theirs (concurrent
        # reads that came in meanwhile checked too).
        self._checked = now
        return data

    def read_now(self, offset: int, length: int) -> memoryview | None:
        """``read`` if it needs no wait, for the event loop: every byte in the
        page cache and the stamp unchanged after the read; else None (the
        caller reads in a worker, which hashes the file again if it changed)."""
        if self.stamp is None:
            return None
        want = max(0, min(length, self.size - offset))
        data = read_nowait(self.fd, want, offset)
        if data is None or len(data) != want or Stamp.of_fd(self.fd) != self.stamp:
            return None
        self._checked = time.monotonic()
        return data

    def fresh(self) -> bool:
        """Whether the file is still the verified one, by one ``fstat`` (no
        hashing): for handing this reader to another open."""
        if self.stamp is None:
            return self.fd >= 0
        try:
            return Stamp.of_fd(self.fd) == self.stamp
        except OSError:
            return False

    def check(self) -> None:
        """Raise BlobError unless the file is still the verified one (hashing
        it again if its stamp moved: a link count change moves ctime too)."""
        if self.stamp is not None and Stamp.of_fd(self.fd) != self.stamp:
            self._reverify()

    def _reverify(self) -> None:
        with self._lock:
            try:
                stamp = verify_fd(self.fd, self.digest, self.size, "(changed since verified)")
            except BlobError:
                if self._discard is not None:
                    self._discard(self.digest, self.fd)
                raise
            if stamp.ctime_ns != Stamp.of_fd(self.fd).ctime_ns:
                raise BlobError(f"blob {self.digest} changed while it was verified")
            self.stamp = stamp
            if self._restamp is not None:
                self._restamp(self.digest, stamp)

    def idle(self) -> bool:
        """Give up the pin while no open uses this reader. True if it may be kept."""
        if self.pinned:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            self.pinned = False
            self._was_pinned = True
        return True

    def revive(self) -> bool:
        """Take the pin back for a new open: False if the file was evicted or
        changed meanwhile (the caller then opens the blob afresh)."""
        if self._was_pinned:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except OSError:
                return False  # cleanup is removing it right now
            self.pinned = True
            if self._touch is not None:
                self._touch(self.digest)  # a use, for eviction's clock
        st = os.fstat(self.fd)
        if self.pinned and st.st_nlink == 0:
            return False  # evicted while idle: its space must go
        self._checked = time.monotonic()
        return self.stamp is None or Stamp.of(st) == self.stamp

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
