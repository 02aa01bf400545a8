"""Open files of the mount: readers of blobs, shared by opens and kept a while.

Every open of a version file goes through ``BlobCache.open_reader``, which
fetches a missing blob into the shared cache (verified, single flight) or,
for a store in a local directory, reads the store's own file (hashed on its
first open in this process). Every open checks the file's stamp
(``cache/readers.py``): a reader shared with opens still reading, or kept
idle for the next open, is handed out only while its stamp holds, else the
open makes a new one (which hashes the file again). Idle readers hold no pin
in the cache.

FUSE passthrough (kernel >= 6.9, libfuse >= 3.16; not in pyfuse3 3.5 or
Debian 12's libfuse 3.14, so not built here) would plug in at the open of a
version file: once ``BlobOpener.open`` has a verified ``BlobReader`` whose fd
is a plain file (the cache's entry or a local store's own file), the daemon
would register that fd with the kernel (``FUSE_DEV_IOC_BACKING_OPEN``) and
answer the open with ``FOPEN_PASSTHROUGH`` and the backing id, so reads and
mmap go to the backing file without the daemon. What that costs: the
per-read stamp check (``BlobReader.read``) no longer runs, so passthrough
suits only files whose stamp is checked at open (the cache's own entries,
never a local store's files that others may change), and lazy partial
readers (``cache/partial.py``) stay on the daemon path. ``keep_cache`` and
the reader pool would be unchanged; the open request itself still reaches
the daemon.
"""

from __future__ import annotations

import errno
import threading
from collections import OrderedDict
from typing import Protocol

from artfs.cache import BlobCache, BlobError
from artfs.cache.prefetch import Prefetcher, workers_for
from artfs.cache.referents import open_reference_lazy
from artfs.manifest import Entry
from artfs.objects import ObjectStore
from artfs.objects.referents import Referents


class Reader(Protocol):
    def read(self, offset: int, length: int) -> bytes: ...

    def fresh(self) -> bool: ...

    def idle(self) -> bool: ...

    def revive(self) -> bool: ...

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

    def fresh(self) -> bool:
        return True  # verified bytes in memory

    def idle(self) -> bool:
        return True

    def revive(self) -> bool:
        return True  # verified bytes in memory: nothing on disk to change

    def close(self) -> None:
        pass


class _Empty:
    """The reader of an empty file: no blob to open."""

    in_memory = True

    def read(self, offset: int, length: int) -> bytes:
        return b""

    def fresh(self) -> bool:
        return True

    def idle(self) -> bool:
        return True

    def revive(self) -> bool:
        return True

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

    def read_now(self, offset: int, length: int) -> memoryview | None:
        """``read`` without waiting (no disk, no store, no hashing), or None."""
        return None

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

    def read_now(self, offset: int, length: int) -> memoryview | None:
        read_now = getattr(self.reader, "read_now", None)  # lazy readers wait for parts
        return read_now(offset, length) if read_now is not None else None

    def release(self) -> None:
        if self._pool is not None:
            self._pool.release(self._inode, self.reader)
        else:  # a reader of its own (a reference entry's): nobody else closes it
            self.reader.close()


# Bytes of idle small files kept in memory for their next open.
IDLE_MEMORY = 64 << 20


def _held(reader: Reader) -> int:
    # Each entry costs its bytes plus its bookkeeping.
    return len(getattr(reader, "data", b"")) + 200


class ReaderPool:
    """Readers shared by all opens of one file, and kept a while after the last close.

    Opening a blob costs a worker thread round trip (and, for a local store,
    a stat); a program that opens the same files again and again (a data
    loader, epoch after epoch) gets the reader back without leaving the
    event loop. An idle reader gives up its pin in the cache (so the size
    limit holds) and is revived, or dropped if its file was evicted or
    changed, on the next open. A reader in use is shared with a new open
    only while ``fresh`` (its stamp holds); else the new open brings a new
    reader (``add``), and the stale one is retired: closed when the opens
    still using it are released. Thread-safe; nothing here blocks for long
    (``revive`` is an fstat and a non-blocking flock, ``fresh`` an fstat).
    """

    def __init__(self, idle_max: int = 256, idle_memory: int = IDLE_MEMORY) -> None:
        self.idle_max = idle_max
        self.idle_memory = idle_memory
        self._lock = threading.Lock()
        self._open: dict[int, tuple[Reader, int]] = {}  # inode -> (reader, opens)
        # Readers replaced while opens still used them: id(reader) -> (reader, opens).
        self._retired: dict[int, tuple[Reader, int]] = {}
        self._idle: OrderedDict[int, Reader] = OrderedDict()  # each holds an fd
        # Small files' verified bytes: bounded by their size, not by fds, so a
        # second epoch over many small files reopens them on the event loop.
        self._idle_mem: OrderedDict[int, Reader] = OrderedDict()
        self._idle_bytes = 0

    def acquire(self, inode: int) -> Reader | None:
        with self._lock:
            if inode in self._open:
                reader, n = self._open[inode]
                if not reader.fresh():
                    return None  # changed since verified: the open makes a new reader
                self._open[inode] = (reader, n + 1)
                return reader
            reader = self._idle.pop(inode, None)
            if reader is None:
                reader = self._idle_mem.pop(inode, None)
                if reader is None:
                    return None
                self._idle_bytes -= _held(reader)
            if reader.revive():
                self._open[inode] = (reader, 1)
                return reader
        reader.close()
        return None

    def add(self, inode: int, reader: Reader) -> Reader:
        """Register a freshly opened reader; returns the one to use (another
        open may have raced us to it)."""
        with self._lock:
            if inode in self._open and self._open[inode][0].fresh():
                existing, n = self._open[inode]
                self._open[inode] = (existing, n + 1)
                extra = reader
            else:
                if inode in self._open:  # stale: closed once its opens are released
                    old = self._open[inode]
                    self._retired[id(old[0])] = old
                self._open[inode] = (reader, 1)
                existing, extra = reader, None
        if extra is not None:
            extra.close()
        return existing

    def release(self, inode: int, used: Reader | None = None) -> None:
        """An open of ``inode`` (which read with ``used``) was released."""
        evicted = []
        with self._lock:
            retired = self._retired.get(id(used)) if used is not None else None
            if retired is not None and retired[0] is used:
                if retired[1] > 1:
                    self._retired[id(used)] = (used, retired[1] - 1)
                    return
                del self._retired[id(used)]
                evicted.append(used)
            else:
                self._release_open(inode, evicted)
        for r in evicted:
            r.close()

    def _release_open(self, inode: int, evicted: list[Reader]) -> None:
        reader, n = self._open[inode]
        if n > 1:
            self._open[inode] = (reader, n - 1)
            return
        del self._open[inode]
        if not reader.idle():
            evicted.append(reader)
        elif getattr(reader, "in_memory", False):
            self._idle_mem[inode] = reader
            self._idle_bytes += _held(reader)
        else:
            self._idle[inode] = reader
        while len(self._idle) > self.idle_max:
            evicted.append(self._idle.popitem(last=False)[1])
        while self._idle_bytes > self.idle_memory:
            old = self._idle_mem.popitem(last=False)[1]
            self._idle_bytes -= _held(old)
            evicted.append(old)

    def close(self) -> None:
        with self._lock:
            readers = [r for r, _ in self._open.values()] + list(self._idle.values())
            readers += list(self._idle_mem.values()) + [r for r, _ in self._retired.values()]
            self._open.clear()
            self._retired.clear()
            self._idle.clear()
            self._idle_mem.clear()
            self._idle_bytes = 0
        for r in readers:
            r.close()


class BlobOpener:
    """Opens blobs for reading. The cache verifies (and re-checks the stamp of)
    every file it hands out, the store's own files included."""

    def __init__(
        self, cache: BlobCache, store: ObjectStore, referents: Referents | None = None
    ) -> None:
        self.cache = cache
        self.store = store
        self.referents = referents or Referents()
        # Read-ahead of small files opened in listing order (cache/prefetch.py).
        self.prefetch = Prefetcher(cache, workers_for(store.is_local))

    @property
    def verified_blobs(self) -> int:
        return self.cache.verified_blobs

    @property
    def verified_bytes(self) -> int:
        return self.cache.verified_bytes

    @property
    def verify_seconds(self) -> float:
        return self.cache.verify_seconds

    def open(self, digest: str, size: int) -> Reader:
        return self._small_in_memory(self.cache.open_reader(digest, size), size, f"blob {digest}")

    def open_now(self, digest: str, size: int) -> Reader | None:
        """A small blob's verified bytes if they can be had without waiting
        (``BlobCache.read_small_now``), for an open on the event loop; else None."""
        if size > SMALL_FILE:
            return None
        data = self.cache.read_small_now(digest, size)
        return None if data is None else InMemory(data)

    def open_reference(self, entry: Entry) -> Reader:
        """A reader of a reference entry: fetched from its URI into the cache
        on a miss (a large one part by part, as reads need them); BlobError if
        the object changed or vanished since the commit."""
        reader = open_reference_lazy(self.cache, self.referents, entry)
        return self._small_in_memory(reader, entry.size, f"reference {entry.ref}")

    def _small_in_memory(self, reader: Reader, size: int, what: str) -> Reader:
        try:
            if size <= SMALL_FILE:
                # One byte more than expected shows a blob that is too long.
                data = reader.read(0, size + 1)
                if len(data) != size:
                    raise BlobError(f"{what} holds {len(data)} bytes, not {size}")
                reader.close()
                return InMemory(data)
        except BaseException:
            reader.close()
            raise
        return reader
