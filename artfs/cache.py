"""The local, shared, content-addressed blob cache.

One cache per machine, shared by every mount and the CLI. A blob is
downloaded into ``tmp/``, verified against its digest, then renamed into
``blobs/<2 hex>/<digest>``: a crash never leaves a wrong blob in place.
Concurrent fetches of one blob, from threads or processes, make one download
(an exclusive ``flock`` per digest). A blob held open by a reader that took a
shared ``flock`` on it is pinned: cleanup never removes it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from artfs.digest import READ_CHUNK, Hasher
from artfs.objects import NotFound, ObjectStore, StoreError


class BlobError(StoreError):
    """A blob is missing from the store or its bytes do not match its digest."""


@dataclass(frozen=True)
class CleanupResult:
    removed: int
    freed: int
    kept_bytes: int
    pinned: int


class BlobCache:
    def __init__(
        self, root: str | os.PathLike[str], store: ObjectStore, key_for: Callable[[str], str]
    ) -> None:
        self.root = Path(root)
        self.store = store
        self._key_for = key_for
        for sub in ("blobs", "tmp", "locks"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self._locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()
        self.fetches = 0  # downloads made by this process, for tests and logs

    def path(self, digest: str) -> Path:
        hexpart = digest.partition(":")[2]
        return self.root / "blobs" / hexpart[:2] / digest

    def has(self, digest: str) -> bool:
        return self.path(digest).exists()

    def source_path(self, digest: str) -> Path:
        """Where to read a blob from: the store's own file for a local store,
        else the cache (fetching it first)."""
        local = self.store.local_path(self._key_for(digest))
        if local is not None and local.exists():
            return local
        return self.ensure(digest)

    def open_reader(self, digest: str, size: int) -> BlobReader:
        """A reader for one open of a blob: fetches what is missing, pins what it reads.

        For a local store it reads the store's own file (no copy); else the
        cached copy, held with a shared lock so cleanup never evicts it while
        open. Blocking: call it from a worker thread in async code.
        """
        local = self.store.local_path(self._key_for(digest))
        if local is not None:
            try:
                return BlobReader(os.open(local, os.O_RDONLY), size)
            except FileNotFoundError:
                raise BlobError(f"blob {digest} is missing from the store") from None
        path = self.ensure(digest)
        fd = os.open(path, os.O_RDONLY)
        fcntl.flock(fd, fcntl.LOCK_SH)
        return BlobReader(fd, size)

    @contextlib.contextmanager
    def _single_flight(self, digest: str) -> Iterator[None]:
        with self._locks_guard:
            lock = self._locks.setdefault(digest, threading.Lock())
        with lock:
            fd = os.open(self.root / "locks" / digest, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                yield
            finally:
                os.close(fd)

    def ensure(self, digest: str) -> Path:
        """The cached, verified file for ``digest``, downloading it if needed."""
        dest = self.path(digest)
        if dest.exists():
            self._touch(dest)
            return dest
        with self._single_flight(digest):
            if dest.exists():
                return dest
            self._download(digest, dest)
        return dest

    def _download(self, digest: str, dest: Path) -> None:
        key = self._key_for(digest)
        tmp = self.root / "tmp" / f"{uuid.uuid4().hex}"
        hasher = Hasher()
        try:
            with open(tmp, "wb") as out:
                writer = _HashingWriter(out, hasher)
                try:
                    self.store.download(key, writer)  # type: ignore[arg-type]
                except NotFound:
                    raise BlobError(f"blob {digest} is missing from the store") from None
                out.flush()
                os.fsync(out.fileno())
            if hasher.hexdigest() != digest:
                raise BlobError(
                    f"blob {digest} is corrupt in the store (its bytes hash to "
                    f"{hasher.hexdigest()})"
                )
            os.chmod(tmp, 0o444)
            dest.parent.mkdir(exist_ok=True)
            os.rename(tmp, dest)
            self.fetches += 1
        finally:
            tmp.unlink(missing_ok=True)

    def add_file(self, digest: str, path: Path) -> None:
        """Put a file known to have ``digest`` into the cache by copy (after a put)."""
        dest = self.path(digest)
        if dest.exists():
            return
        tmp = self.root / "tmp" / uuid.uuid4().hex
        try:
            with open(path, "rb") as src, open(tmp, "wb") as out:
                while chunk := src.read(READ_CHUNK):
                    out.write(chunk)
            os.chmod(tmp, 0o444)
            dest.parent.mkdir(exist_ok=True)
            os.rename(tmp, dest)
        finally:
            tmp.unlink(missing_ok=True)

    @staticmethod
    def _touch(path: Path) -> None:
        # Last use drives eviction; atime is unreliable under relatime/noatime.
        with contextlib.suppress(OSError):
            os.utime(path)

    @staticmethod
    @contextlib.contextmanager
    def pin(path: Path) -> Iterator[int]:
        """Hold a blob open with a shared lock so cleanup leaves it alone."""
        fd = os.open(path, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
            yield fd
        finally:
            os.close(fd)

    def size(self) -> int:
        return sum(st.st_size for _, st in self._blobs())

    def _blobs(self) -> Iterator[tuple[Path, os.stat_result]]:
        for sub in (self.root / "blobs").iterdir():
            for p in sub.iterdir():
                with contextlib.suppress(FileNotFoundError):
                    yield p, p.stat()

    def cleanup(self, max_bytes: int) -> CleanupResult:
        """Remove least recently used blobs until the cache holds at most ``max_bytes``."""
        blobs = sorted(self._blobs(), key=lambda b: b[1].st_mtime)
        total = sum(st.st_size for _, st in blobs)
        removed = freed = pinned = 0
        for path, st in blobs:
            if total <= max_bytes:
                break
            try:
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError:
                total -= st.st_size
                continue
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    pinned += 1
                    continue
                path.unlink(missing_ok=True)
            finally:
                os.close(fd)
            total -= st.st_size
            freed += st.st_size
            removed += 1
        return CleanupResult(removed, freed, total, pinned)


class BlobReader:
    """Positional reads of one blob, for one open file. Thread-safe (pread)."""

    def __init__(self, fd: int, size: int) -> None:
        self.fd = fd
        self.size = size

    def read(self, offset: int, length: int) -> bytes:
        return os.pread(self.fd, length, offset)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class _HashingWriter:
    """A file-like sink that hashes what passes through it."""

    def __init__(self, out, hasher: Hasher) -> None:
        self._out = out
        self._hasher = hasher

    def write(self, data: bytes) -> int:
        self._hasher.update(data)
        return self._out.write(data)
