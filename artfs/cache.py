"""The local, shared, content-addressed blob cache.

One cache per machine, shared by every mount and the CLI. A small blob is
downloaded into ``tmp/``, verified against its digest, then renamed into
``blobs/<2 hex>/<digest>``: a crash never leaves a wrong blob in place.
Concurrent fetches of one blob, from threads or processes, make one download
(an exclusive ``flock`` per digest). A blob held open by a reader that took a
shared ``flock`` on it is pinned: cleanup never removes it.

A blob larger than one part (``PART_SIZE``, 8 MiB) from a remote store is
read lazily: ``open_reader`` returns at once, and a read waits only for the
parts it touches. Parts are fetched with ranged gets into a sparse file
``partial/<digest>``, next to a record ``partial/<digest>.parts`` (a header,
then one byte per part, set once that part's bytes are durable). So:

- every reader of a blob in this process shares one set of part fetches
  (a part is fetched once, however many readers want it);
- a sequential reader triggers readahead of the next parts in parallel, in a
  window that doubles up to ``READAHEAD_PARTS``;
- a partly fetched blob survives a restart: the record says what is there;
- once every part is there, the whole file is hashed; if it matches its
  digest it is renamed into ``blobs/`` and is an ordinary cached blob (open
  readers keep reading the same inode), else it is discarded and every
  further read of it raises BlobError.

A part served before the whole is verified cannot be verified on its own:
the digest covers the whole blob. What makes that acceptable is that parts
come from an immutable, content-addressed key (all from one object, whose
size must match), and a blob that turns out wrong is discarded and never
served again. ``ensure`` (whole files for the CLI, manifests) always
verifies before returning.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import queue
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from artfs.digest import READ_CHUNK, Hasher
from artfs.objects import NotFound, ObjectStore, StoreError

PART_SIZE = 8 << 20
READAHEAD_PARTS = 8
FETCH_WORKERS = 8
_RECORD_VERSION = 1
_PRESENT = b"\x01"


class BlobError(StoreError):
    """A blob is missing from the store or its bytes do not match its digest."""


@dataclass(frozen=True)
class CleanupResult:
    removed: int
    freed: int
    kept_bytes: int
    pinned: int


class _Workers:
    """A few daemon threads running background fetches.

    Daemon threads, so queued readahead never holds up the exit of a CLI
    process: a fetch cut off at exit leaves at worst a part not recorded.
    """

    def __init__(self, count: int) -> None:
        self._count = count
        self._queue: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._started = 0
        self._lock = threading.Lock()

    def submit(self, fn: Callable[[], None]) -> None:
        with self._lock:
            if self._started < self._count:
                self._started += 1
                threading.Thread(target=self._run, daemon=True, name="artfs-fetch").start()
        self._queue.put(fn)

    def _run(self) -> None:
        while True:
            fn = self._queue.get()
            with contextlib.suppress(Exception):  # errors are recorded by the task itself
                fn()


class BlobCache:
    def __init__(
        self,
        root: str | os.PathLike[str],
        store: ObjectStore,
        key_for: Callable[[str], str],
        max_bytes: int | None = None,
    ) -> None:
        self.root = Path(root)
        self.max_bytes = max_bytes
        self._size_estimate: int | None = None
        self._size_guard = threading.Lock()
        self.store = store
        self._key_for = key_for
        for sub in ("blobs", "tmp", "locks", "partial"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self._locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()
        self._partials: dict[str, _Partial] = {}
        self._partials_guard = threading.Lock()
        self._workers = _Workers(FETCH_WORKERS)
        self.part_size = PART_SIZE
        self.readahead_parts = READAHEAD_PARTS
        self.fetches = 0  # whole blobs fetched by this process, for tests and logs
        self.part_fetches = 0  # ranged part fetches made by this process

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

    def open_reader(self, digest: str, size: int) -> BlobReader | LazyBlobReader:
        """A reader for one open of a blob: fetches what is missing, pins what it reads.

        For a local store it reads the store's own file (no copy). Else a
        cached blob is read from the cache, held with a shared lock so cleanup
        never evicts it while open; a blob not cached yet is fetched whole if
        it is small, or lazily, part by part as reads need them, if it is
        larger than one part. Blocking: call it from a worker thread in async
        code.
        """
        local = self.store.local_path(self._key_for(digest))
        if local is not None:
            try:
                return BlobReader(os.open(local, os.O_RDONLY), size)
            except FileNotFoundError:
                raise BlobError(f"blob {digest} is missing from the store") from None
        fd = self._open_cached(digest)
        if fd is not None:
            return BlobReader(fd, size)
        if size <= self.part_size:
            self.ensure(digest)
            fd = self._open_cached(digest)
            if fd is None:
                raise BlobError(f"blob {digest} vanished from the cache")
            return BlobReader(fd, size)
        partial = self._acquire_partial(digest, size)
        if partial is None:  # completed by someone else meanwhile
            return self.open_reader(digest, size)
        return LazyBlobReader(self, partial)

    def _open_cached(self, digest: str) -> int | None:
        dest = self.path(digest)
        try:
            fd = os.open(dest, os.O_RDONLY)
        except FileNotFoundError:
            return None
        fcntl.flock(fd, fcntl.LOCK_SH)
        self._touch(dest)
        return fd

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

    def ensure(self, digest: str, size: int | None = None) -> Path:
        """The cached, verified file for ``digest``, downloading it if needed.

        A blob larger than one part (``size``, if the caller knows it, or a
        partial fetch already on disk says so) is fetched in parts, in
        parallel, completing whatever a lazy reader fetched before.
        """
        dest = self.path(digest)
        if dest.exists():
            self._touch(dest)
            return dest
        if size is None:
            size = _Partial.recorded_size(self.root / "partial" / digest)
        if size is not None and size > self.part_size:
            partial = self._acquire_partial(digest, size)
            if partial is not None:
                try:
                    partial.complete()
                finally:
                    self._release_partial(partial)
            if not dest.exists():
                raise BlobError(f"blob {digest} vanished from the cache")
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
        self._grew(dest)

    # -- partial blobs --------------------------------------------------------

    def _acquire_partial(self, digest: str, size: int) -> _Partial | None:
        """The shared partial fetch of ``digest`` (one reference more), or None
        if the blob is in the cache already."""
        with self._partials_guard:
            p = self._partials.get(digest)
            if p is not None and p.failed is None:
                p.refs += 1
                return p
        if self.path(digest).exists():
            return None
        fresh = _Partial(self, digest, size)
        with self._partials_guard:
            p = self._partials.get(digest)
            if p is not None and p.failed is None:
                p.refs += 1
                fresh.close_files()
                return p
            self._partials[digest] = fresh
            fresh.refs = 1
        fresh.maybe_finalize()
        return fresh

    def _release_partial(self, partial: _Partial) -> None:
        with self._partials_guard:
            partial.refs -= 1
            if partial.refs > 0:
                return
            if self._partials.get(partial.digest) is partial:
                del self._partials[partial.digest]
        partial.close_files()

    def _forget_partial(self, partial: _Partial) -> None:
        """A failed partial fetch: the next open of the blob starts afresh."""
        with self._partials_guard:
            if self._partials.get(partial.digest) is partial:
                del self._partials[partial.digest]

    def _background(self, partial: _Partial, fn: Callable[[], None]) -> None:
        """Run ``fn`` on a fetch worker, holding a reference to ``partial``."""
        with self._partials_guard:
            partial.refs += 1

        def run() -> None:
            try:
                fn()
            finally:
                self._release_partial(partial)

        self._workers.submit(run)

    # -- writing and housekeeping -------------------------------------------

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

    def _grew(self, added: Path) -> None:
        """Keep the cache within ``max_bytes`` after ``added`` came in: evict the
        least recently used blobs, never the one just added."""
        if self.max_bytes is None:
            return
        with self._size_guard:
            if self._size_estimate is None:
                self._size_estimate = self.size()
            else:
                with contextlib.suppress(FileNotFoundError):
                    self._size_estimate += added.stat().st_size
            if self._size_estimate <= self.max_bytes:
                return
            # Prune to below the limit so the next fetches do not each rescan.
            result = self.cleanup(self.max_bytes * 9 // 10, keep=added)
            self._size_estimate = result.kept_bytes

    def size(self) -> int:
        return sum(used for _, _, used in self._entries())

    def _entries(self) -> Iterator[tuple[Path, os.stat_result, int]]:
        """(path, stat, bytes used) of every cached blob and partial fetch."""
        for sub in (self.root / "blobs").iterdir():
            for p in sub.iterdir():
                with contextlib.suppress(FileNotFoundError):
                    st = p.stat()
                    yield p, st, st.st_size
        for p in (self.root / "partial").iterdir():
            if p.suffix != ".parts":
                with contextlib.suppress(FileNotFoundError):
                    st = p.stat()
                    yield p, st, st.st_blocks * 512  # sparse: only what was fetched

    def cleanup(self, max_bytes: int, keep: Path | None = None) -> CleanupResult:
        """Remove least recently used blobs (and partial fetches) until the cache
        holds at most ``max_bytes``. Blobs held open are pinned and stay."""
        entries = sorted(self._entries(), key=lambda b: b[1].st_mtime)
        total = sum(used for _, _, used in entries)
        removed = freed = pinned = 0
        for path, _st, used in entries:
            if total <= max_bytes:
                break
            if path == keep:
                continue
            try:
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError:
                total -= used
                continue
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    pinned += 1
                    continue
                path.unlink(missing_ok=True)
                if path.parent.name == "partial":
                    path.with_name(path.name + ".parts").unlink(missing_ok=True)
            finally:
                os.close(fd)
            total -= used
            freed += used
            removed += 1
        return CleanupResult(removed, freed, total, pinned)


class _Partial:
    """One blob being fetched part by part, shared by every reader of it in
    this process. See the module docstring for the on-disk record."""

    def __init__(self, cache: BlobCache, digest: str, size: int) -> None:
        self.cache = cache
        self.digest = digest
        self.size = size
        self.key = cache._key_for(digest)
        self.part_size = cache.part_size
        self.nparts = (size + self.part_size - 1) // self.part_size
        self.path = cache.root / "partial" / digest
        self.record_path = self.path.with_name(digest + ".parts")
        self.cond = threading.Condition()
        self.state: dict[int, str] = {}  # part -> "queued" | "running"
        self.errors: dict[int, BaseException] = {}
        self.failed: BaseException | None = None
        self.finalizing = False
        self.done = threading.Event()  # verified into the cache, or failed
        self.refs = 0
        header = self._header(self.part_size, size)
        self.header_len = len(header)
        with cache._single_flight(digest):
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            self.record = os.open(self.record_path, os.O_RDWR | os.O_CREAT, 0o644)
            old = os.pread(self.record, self.header_len + self.nparts + 1, 0)
            if (
                old[: self.header_len] != header
                or len(old) != self.header_len + self.nparts
                or os.fstat(self.fd).st_size != size
            ):
                # New, or from another part size or a damaged record: start over.
                os.ftruncate(self.fd, 0)
                os.ftruncate(self.fd, size)
                os.ftruncate(self.record, 0)
                os.pwrite(self.record, header + bytes(self.nparts), 0)
                old = header + bytes(self.nparts)
            self.present = bytearray(old[self.header_len :])
            fcntl.flock(self.fd, fcntl.LOCK_SH)  # pinned while any reader has it
        self.count = sum(1 for b in self.present if b)
        with contextlib.suppress(OSError):
            os.utime(self.path)

    @staticmethod
    def _header(part_size: int, size: int) -> bytes:
        return f"artfs-parts {_RECORD_VERSION} {part_size} {size}\n".encode()

    @staticmethod
    def recorded_size(path: Path) -> int | None:
        """The blob size a partial fetch on disk was started for, if there is one."""
        try:
            with open(path.with_name(path.name + ".parts"), "rb") as f:
                words = f.readline().split()
        except OSError:
            return None
        if len(words) == 4 and words[0] == b"artfs-parts" and words[3].isdigit():
            return int(words[3])
        return None

    def close_files(self) -> None:
        for fd in (self.fd, self.record):
            with contextlib.suppress(OSError):
                os.close(fd)
        self.fd = self.record = -1

    # -- fetching -------------------------------------------------------------

    def prefetch(self, parts: Iterable[int]) -> None:
        """Queue background fetches of ``parts`` not present nor underway."""
        queued = []
        with self.cond:
            if self.failed is not None:
                return
            for i in parts:
                if 0 <= i < self.nparts and not self.present[i] and i not in self.state:
                    self.state[i] = "queued"
                    queued.append(i)
        for i in queued:
            self.cache._background(self, lambda i=i: self._fetch_queued(i))

    def _fetch_queued(self, i: int) -> None:
        with self.cond:
            if self.state.get(i) != "queued":
                return  # taken over by a reader, or cancelled
            self.state[i] = "running"
        self._fetch(i)

    def ensure_range(self, first: int, last: int) -> None:
        """Return once parts ``first..last`` are present; fetches in this thread
        the ones nobody is fetching yet (taking over queued readahead), waits
        for the ones underway."""
        if self.failed is not None:
            raise self.failed
        if all(self.present[first : last + 1]):
            return
        mine = []
        with self.cond:
            for i in range(first, last + 1):
                if not self.present[i] and self.state.get(i) != "running":
                    self.state[i] = "running"
                    self.errors.pop(i, None)
                    mine.append(i)
        for n, i in enumerate(mine):
            try:
                self._fetch(i)
            except BaseException:
                with self.cond:  # give back the claims this thread will not fetch
                    for j in mine[n + 1 :]:
                        self.state.pop(j, None)
                    self.cond.notify_all()
                raise
        self._wait(range(first, last + 1))

    def _wait(self, parts: Iterable[int]) -> None:
        with self.cond:
            for i in parts:
                while not self.present[i]:
                    if self.failed is not None:
                        raise self.failed
                    if i not in self.state:
                        if i in self.errors:
                            raise self.errors[i]
                        raise BlobError(f"part {i} of blob {self.digest} was not fetched")
                    self.cond.wait()
            if self.failed is not None:
                raise self.failed

    def _fetch(self, i: int) -> None:
        """Fetch part ``i`` (claimed as running by the caller) and record it."""
        offset = i * self.part_size
        length = min(self.part_size, self.size - offset)
        try:
            # Another process may have fetched it into the same file meanwhile.
            if os.pread(self.record, 1, self.header_len + i) != _PRESENT:
                try:
                    data = self.cache.store.get_range(self.key, offset, length)
                except NotFound:
                    raise BlobError(f"blob {self.digest} is missing from the store") from None
                if len(data) != length:
                    raise BlobError(
                        f"blob {self.digest} in the store is not {self.size} bytes long "
                        f"(part {i} came back with {len(data)} of {length} bytes)"
                    )
                view = memoryview(data)
                pos = offset
                while view:
                    n = os.pwrite(self.fd, view, pos)
                    view = view[n:]
                    pos += n
                os.fdatasync(self.fd)  # the bytes are durable before the record says so
                os.pwrite(self.record, _PRESENT, self.header_len + i)
                with self.cache._partials_guard:
                    self.cache.part_fetches += 1
        except BaseException as e:
            with self.cond:
                self.state.pop(i, None)
                self.errors[i] = e
                self.cond.notify_all()
            raise
        with self.cond:
            self.state.pop(i, None)
            self.errors.pop(i, None)
            if not self.present[i]:
                self.present[i] = 1
                self.count += 1
            self.cond.notify_all()
        self.maybe_finalize()

    def complete(self) -> None:
        """Fetch every missing part (in parallel) and verify; raise if it fails."""
        missing = [i for i in range(self.nparts) if not self.present[i]]
        if missing:
            # The first in this thread, the rest on the workers.
            self.prefetch(missing[1:])
            self.ensure_range(missing[0], missing[0])
            self._wait(missing)
        self.maybe_finalize()
        self.done.wait()
        if self.failed is not None:
            raise self.failed

    # -- verification -----------------------------------------------------------

    def maybe_finalize(self) -> None:
        with self.cond:
            if self.count < self.nparts or self.finalizing:
                return
            self.finalizing = True
        self.cache._background(self, self._finalize)

    def _finalize(self) -> None:
        """Hash the complete file; move it into the cache, or discard it."""
        cache = self.cache
        dest = cache.path(self.digest)
        try:
            with cache._single_flight(self.digest):
                if not dest.exists():
                    hasher = Hasher()
                    offset = 0
                    while offset < self.size:
                        chunk = os.pread(self.fd, min(READ_CHUNK, self.size - offset), offset)
                        if not chunk:
                            break
                        hasher.update(chunk)
                        offset += len(chunk)
                    if hasher.hexdigest() != self.digest or hasher.size != self.size:
                        raise BlobError(
                            f"blob {self.digest} is corrupt in the store: its {hasher.size} "
                            f"bytes hash to {hasher.hexdigest()}"
                        )
                    os.fsync(self.fd)
                    os.fchmod(self.fd, 0o444)
                    dest.parent.mkdir(exist_ok=True)
                    try:
                        os.rename(self.path, dest)
                        with cache._partials_guard:
                            cache.fetches += 1
                    except FileNotFoundError:
                        pass  # another process finished this very file first
                    else:
                        cache._grew(dest)
                else:
                    self.path.unlink(missing_ok=True)
                self.record_path.unlink(missing_ok=True)
        except BaseException as e:
            with self.cond:
                self.failed = (
                    e
                    if isinstance(e, StoreError)
                    else BlobError(f"blob {self.digest}: cannot complete its fetch: {e}")
                )
            cache._forget_partial(self)
            with cache._single_flight(self.digest):
                self.path.unlink(missing_ok=True)
                self.record_path.unlink(missing_ok=True)
        finally:
            with self.cond:
                self.cond.notify_all()
            self.done.set()


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


class LazyBlobReader:
    """Reads of a blob that is being fetched part by part: each read waits only
    for the parts it touches; sequential reading drives readahead. Thread-safe.

    Raises BlobError or StoreError (EIO in the mount) when a part cannot be
    fetched, or once the complete blob failed its digest check.
    """

    def __init__(self, cache: BlobCache, partial: _Partial) -> None:
        self._cache = cache
        self._p = partial
        self.size = partial.size
        self._next = 0  # where a sequential reader reads next
        self._window = 0  # readahead, in parts
        self._lock = threading.Lock()
        self._closed = False

    def read(self, offset: int, length: int) -> bytes:
        p = self._p
        if self._closed:
            raise ValueError("read of a closed blob reader")
        end = min(offset + length, self.size)
        if offset >= end:
            if p.failed is not None:
                raise p.failed
            return b""
        first = offset // p.part_size
        last = (end - 1) // p.part_size
        with self._lock:
            if offset == self._next:
                self._window = min(max(1, self._window * 2), self._cache.readahead_parts)
            else:
                self._window = 0
            self._next = end
            window = self._window
        if window:
            p.prefetch(range(last + 1, last + 1 + window))
        p.ensure_range(first, last)
        return os.pread(p.fd, end - offset, offset)

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._cache._release_partial(self._p)


class _HashingWriter:
    """A file-like sink that hashes what passes through it."""

    def __init__(self, out, hasher: Hasher) -> None:
        self._out = out
        self._hasher = hasher

    def write(self, data: bytes) -> int:
        self._hasher.update(data)
        return self._out.write(data)
