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
from typing import Protocol

from artfs.cache import BlobCache, BlobError
from artfs.digest import READ_CHUNK, Hasher
from artfs.objects import ObjectStore
from artfs.repo import layout


class Reader(Protocol):
    def read(self, offset: int, length: int) -> bytes: ...

    def close(self) -> None: ...


class _Empty:
    """The reader of an empty file: no blob to open."""

    def read(self, offset: int, length: int) -> bytes:
        return b""

    def close(self) -> None:
        pass


EMPTY = _Empty()


class FileHandle:
    """One open file. Methods block; the mount calls them from worker threads."""

    keep_cache = False
    direct_io = False

    def read(self, offset: int, length: int) -> bytes:
        raise OSError(errno.EBADF, "not open for reading")

    def write(self, offset: int, data: bytes) -> int:
        raise OSError(errno.EROFS, "read-only file system")

    def release(self) -> None:
        pass


class VersionFileHandle(FileHandle):
    """A file of a version tree: immutable, so the page cache may keep it across opens."""

    keep_cache = True

    def __init__(self, reader: Reader) -> None:
        self.reader = reader

    def read(self, offset: int, length: int) -> bytes:
        return self.reader.read(offset, length)

    def release(self) -> None:
        self.reader.close()


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
            local = self.store.local_path(layout.blob_key(digest))
            if local is not None:
                self._check_local(digest, size, local, reader)
        except BaseException:
            reader.close()
            raise
        return reader

    def _check_local(self, digest: str, size: int, path: os.PathLike[str], reader: Reader) -> None:
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
