"""Open files of the mount: readers of blobs, and the checks made before serving one.

Every open of a version file goes through ``BlobCache.open_reader``, which
fetches a missing blob into the shared cache (verified, single flight) or,
for a store in a local directory, reads the store's own file. That file has
not been verified by anyone, so the first open of each such blob in a mount
hashes it once; a blob whose bytes do not match its digest is never served.
"""

from __future__ import annotations

import errno
import os
import threading
import time
from collections import OrderedDict
from typing import Protocol

from artfs.cache import BlobCache, BlobError
from artfs.digest import READ_CHUNK, Hasher
from artfs.objects import ObjectStore
from artfs.repo import layout


class Reader(Protocol):
    def read(self, offset: int, length: int) -> bytes: ...

    def close(self) -> None: ...


# Files up to this size are read whole when opened (in the same worker
# thread round trip) and served from memory: a small file then costs one
# round trip, not two.
SMALL_FILE = 128 << 10


class InMemory:
    """A small file's bytes, read at open: its reads need no worker thread."""

    in_memory = True

    def __init__(self, data: bytes) -> None:
        self.data = data

    def read(self, offset: int, length: int) -> bytes:
        return self.data[offset : offset + length]

    def close(self) -> None:
        pass


class _Empty:
    """The reader of an empty file: no blob to open."""

    in_memory = True

    def read(self, offset: int, length: int) -> bytes:
        return b""

    def close(self) -> None:
        pass


EMPTY = _Empty()


class FileHandle:
    """One open file. Methods block; the mount calls them from worker threads,
    except ``read`` and ``release`` when ``read_blocks``/``release_blocks`` say
    they do not."""

    keep_cache = False
    direct_io = False
    read_blocks = True
    release_blocks = True

    def read(self, offset: int, length: int) -> bytes:
        raise OSError(errno.EBADF, "not open for reading")

    def write(self, offset: int, data: bytes) -> int:
        raise OSError(errno.EROFS, "read-only file system")

    def release(self) -> None:
        pass


class VersionFileHandle(FileHandle):
    """A file of a version tree: immutable, so the page cache may keep it across opens."""

    keep_cache = True
    release_blocks = False

    def __init__(self, reader: Reader, pool: ReaderPool | None = None, inode: int = 0) -> None:
        self.reader = reader
        self._pool = pool
        self._inode = inode
        self.read_blocks = not getattr(reader, "in_memory", False)

    def read(self, offset: int, length: int) -> bytes:
        return self.reader.read(offset, length)

    def release(self) -> None:
        if self._pool is not None:
            self._pool.release(self._inode)


class ReaderPool:
    """Readers shared by all opens of one file, and kept a while after the last close.

    Opening a blob costs a worker thread round trip (and, for a local store,
    a stat); a program that opens the same files again and again (a data
    loader, epoch after epoch) gets the reader back without leaving the
    event loop. Idle readers still pin their blobs in the cache, so only
    ``idle_max`` of them are kept. Thread-safe; nothing here blocks.
    """

    def __init__(self, idle_max: int = 256) -> None:
        self.idle_max = idle_max
        self._lock = threading.Lock()
        self._open: dict[int, tuple[Reader, int]] = {}  # inode -> (reader, opens)
        self._idle: OrderedDict[int, Reader] = OrderedDict()

    def acquire(self, inode: int) -> Reader | None:
        with self._lock:
            if inode in self._open:
                reader, n = self._open[inode]
                self._open[inode] = (reader, n + 1)
                return reader
            reader = self._idle.pop(inode, None)
            if reader is not None:
                self._open[inode] = (reader, 1)
            return reader

    def add(self, inode: int, reader: Reader) -> Reader:
        """Register a freshly opened reader; returns the one to use (another
        open may have raced us to it)."""
        with self._lock:
            if inode in self._open:
                existing, n = self._open[inode]
                self._open[inode] = (existing, n + 1)
                extra = reader
            else:
                self._open[inode] = (reader, 1)
                existing, extra = reader, None
        if extra is not None:
            extra.close()
        return existing

    def release(self, inode: int) -> None:
        evicted = []
        with self._lock:
            reader, n = self._open[inode]
            if n > 1:
                self._open[inode] = (reader, n - 1)
                return
            del self._open[inode]
            self._idle[inode] = reader
            while len(self._idle) > self.idle_max:
                evicted.append(self._idle.popitem(last=False)[1])
        for r in evicted:
            r.close()

    def close(self) -> None:
        with self._lock:
            readers = [r for r, _ in self._open.values()] + list(self._idle.values())
            self._open.clear()
            self._idle.clear()
        for r in readers:
            r.close()


class BlobOpener:
    """Opens blobs for reading; checks a local store's file once per mount."""

    def __init__(self, cache: BlobCache, store: ObjectStore) -> None:
        self.cache = cache
        self.store = store
        # digest -> (st_ino, st_mtime_ns, st_size) of the store file that matched it
        self._verified: dict[str, tuple[int, int, int]] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()
        self.verified_blobs = 0
        self.verified_bytes = 0
        self.verify_seconds = 0.0

    def open(self, digest: str, size: int) -> Reader:
        reader = self.cache.open_reader(digest, size)
        try:
            # One byte more than expected shows a blob that is too long.
            data = reader.read(0, size + 1) if size <= SMALL_FILE else None
            local = self.store.local_path(layout.blob_key(digest))
            if local is not None:
                self._check_local(digest, size, local, reader, data)
            if data is not None:
                if len(data) != size:
                    raise BlobError(f"blob {digest} holds {len(data)} bytes, not {size}")
                reader.close()
                return InMemory(data)
        except BaseException:
            reader.close()
            raise
        return reader

    def _check_local(
        self,
        digest: str,
        size: int,
        path: os.PathLike[str],
        reader: Reader,
        data: bytes | None,
    ) -> None:
        with self._guard:
            lock = self._locks.setdefault(digest, threading.Lock())
        with lock:
            try:
                st = os.stat(path)
            except FileNotFoundError:
                raise BlobError(f"blob {digest} is missing from the store") from None
            key = (st.st_ino, st.st_mtime_ns, st.st_size)
            if self._verified.get(digest) == key:
                return
            start = time.perf_counter()
            hasher = Hasher()
            if data is not None:
                hasher.update(data)
            else:
                offset = 0
                while chunk := reader.read(offset, READ_CHUNK):
                    hasher.update(chunk)
                    offset += len(chunk)
            if hasher.hexdigest() != digest or hasher.size != size:
                raise BlobError(
                    f"blob {digest} is corrupt in the store: {hasher.size} bytes that hash "
                    f"to {hasher.hexdigest()} (expected {size} bytes)"
                )
            self._verified[digest] = key
            self.verified_blobs += 1
            self.verified_bytes += size
            self.verify_seconds += time.perf_counter() - start
