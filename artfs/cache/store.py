"""BlobCache: the cache's entry points (open a reader, ensure a file, add one).

See the package docstring for the layout on disk and for which lock guards
what. This module fetches whole blobs and serves verified entries; partial.py
fetches large blobs part by part, eviction.py keeps the size limit, verify.py
is the one digest check, stamps.py remembers what passed it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

from artfs.cache import eviction
from artfs.cache.counters import Counters
from artfs.cache.partial import (
    FETCH_WORKERS,
    LazyBlobReader,
    Partial,
    PartSource,
    Progress,
    StoreBlob,
    Workers,
)
from artfs.cache.readers import BlobReader, read_nowait
from artfs.cache.stamps import StampBook
from artfs.cache.verify import BlobError, Stamp, verify_fd
from artfs.digest import READ_CHUNK
from artfs.fsutil import flock, replace
from artfs.objects import NotFound, ObjectStore

log = logging.getLogger("artfs.cache")

PART_SIZE = 8 << 20
READAHEAD_PARTS = 8
# Read-ahead fetches into the cache only while it holds less than this share
# of its size limit (``warm``); eviction prunes to eviction.PRUNE_TO, above.
NEAR_LIMIT = 0.8
_FULL = (errno.ENOSPC, errno.EDQUOT)


class CacheFull(BlobError):
    """The cache's disk is full and nothing more can be evicted."""


def _disk_full(e: BaseException | None) -> bool:
    """Whether ``e`` (or what caused it: a store download wraps it) is a full disk."""
    seen = 0
    while e is not None and seen < 8:
        if isinstance(e, OSError) and e.errno in _FULL:
            return True
        if isinstance(e, sqlite3.OperationalError) and "full" in str(e):
            return True
        if "No space left on device" in str(e) or "Disk quota exceeded" in str(e):
            return True
        e = e.__cause__ or e.__context__
        seen += 1
    return False


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
        self._reserved = 0  # bytes read-ahead fetches are adding (``_reserve_room``)
        self.store = store
        self._key_for = key_for
        for sub in ("blobs", "tmp", "locks", "partial", "stamps"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self.stamps = StampBook(self.root / "stamps")
        self.counters = Counters(self.root / "counters")
        self._locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()
        self._partials: dict[str, Partial] = {}
        self._partials_guard = threading.Lock()
        # A local store's own files, as they were when they matched their digest.
        self._local_stamps: dict[str, Stamp] = {}
        self._workers = Workers(FETCH_WORKERS)
        self.part_size = PART_SIZE
        self.readahead_parts = READAHEAD_PARTS
        self.fetches = 0  # whole blobs fetched by this process, for tests and logs
        self.part_fetches = 0  # ranged part fetches made by this process
        self.verified_blobs = 0  # blobs hashed by this process (any path)
        self.verified_bytes = 0
        self.verify_seconds = 0.0

    def path(self, digest: str) -> Path:
        hexpart = digest.partition(":")[2]
        return self.root / "blobs" / hexpart[:2] / digest

    def has(self, digest: str) -> bool:
        return self.path(digest).exists()

    def key_for(self, digest: str) -> str:
        return self._key_for(digest)

    # -- verification --------------------------------------------------------

    def verify(self, fd: int, digest: str, size: int | None, where: str) -> Stamp:
        """``verify_fd`` with this process's counters."""
        start = time.perf_counter()
        stamp = verify_fd(fd, digest, os.fstat(fd).st_size if size is None else size, where)
        with self._partials_guard:
            self.verified_blobs += 1
            self.verified_bytes += stamp.size
            self.verify_seconds += time.perf_counter() - start
        return stamp

    def discard(self, digest: str, fd: int, reason: str = "") -> None:
        """A cache entry failed its digest: remove it (if still that file), so the
        next open fetches it again."""
        log.warning("discarded the cache entry of blob %s: %s", digest, reason or "changed")
        dest = self.path(digest)
        with contextlib.suppress(OSError):
            if os.path.samestat(os.stat(dest), os.fstat(fd)):
                dest.unlink()
        self.stamps.drop(digest)

    # -- reading ---------------------------------------------------------------

    def source_path(self, digest: str) -> Path:
        """A verified file of the blob: the store's own file for a local store,
        else the cache's (fetching it first)."""
        local = self.store.local_path(self._key_for(digest))
        if local is not None and local.exists():
            self._open_local(digest, None, local).close()
            return local
        return self.ensure(digest)

    def open_reader(self, digest: str, size: int) -> BlobReader | LazyBlobReader:
        """A reader for one open of a blob: fetches what is missing, pins what it reads.

        For a local store it reads the store's own file (no copy), hashed once
        per process and then trusted while its stamp holds. Else a cached blob
        is read from the cache, held with a shared lock so cleanup never
        evicts it while open; a blob not cached yet is fetched whole if it is
        small, or lazily, part by part as reads need them, if it is larger
        than one part. Blocking: call it from a worker thread in async code.
        """
        local = self.store.local_path(self._key_for(digest))
        if local is not None:
            return self._open_local(digest, size, local)
        reader = self.open_cached(digest, size)
        if reader is not None:
            self.counters.hit()
            return reader
        self.counters.miss()
        if size <= self.part_size:
            return self._fetch_and_open(digest, size)
        return self.open_lazy(size, self._source(digest))

    def open_lazy(self, size: int, source: PartSource) -> BlobReader | LazyBlobReader:
        """A reader of ``size`` bytes (more than one part) whose reads wait
        only for the parts they touch, fetched from ``source`` (partial.py),
        or of the cache entry if ``source.digest`` is complete already. Every
        reader of one ``source.name`` in this process shares one set of part
        fetches (the source of the first one). Blocking."""
        for _ in range(3):
            partial = self._acquire_partial(size, source)
            if partial is not None:
                return LazyBlobReader(self, partial)
            assert source.digest is not None  # only a known digest is found complete
            reader = self.open_cached(source.digest, size)  # completed meanwhile
            if reader is not None:
                return reader
        raise BlobError(f"{source.name} vanished from the cache (evicted as soon as fetched)")

    def _source(self, digest: str) -> StoreBlob:
        return StoreBlob(self.store, self._key_for(digest), digest)

    def open_verified(
        self, digest: str, size: int | None = None, progress: Progress | None = None
    ) -> BlobReader:
        """A pinned reader of the whole, verified blob in the cache (fetched if
        need be; ``progress`` as for ``ensure``)."""
        reader = self.open_cached(digest, size)
        if reader is not None:
            self.counters.hit()
            return reader
        self.counters.miss()
        return self._fetch_and_open(digest, size, progress)

    def _fetch_and_open(
        self, digest: str, size: int | None, progress: Progress | None = None
    ) -> BlobReader:
        for _ in range(3):
            self.ensure(digest, size, progress)
            reader = self.open_cached(digest, size)
            if reader is not None:
                return reader
        raise BlobError(f"blob {digest} vanished from the cache (evicted as soon as fetched)")

    def open_whole(
        self, digest: str, size: int | None = None, progress: Progress | None = None
    ) -> tuple[BlobReader, Path]:
        """A verified reader of the whole blob and the path it reads (the
        store's own file for a local store, else the cache's, pinned; a
        fetch reports to ``progress`` as for ``ensure``)."""
        local = self.store.local_path(self._key_for(digest))
        if local is not None:
            return self._open_local(digest, size, local), local
        return self.open_verified(digest, size, progress), self.path(digest)

    def _open_local(self, digest: str, size: int | None, path: Path) -> BlobReader:
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            raise BlobError(f"blob {digest} is missing from the store") from None
        try:
            with self._digest_lock(digest):
                stamp = Stamp.of_fd(fd)
                if self._local_stamps.get(digest) != stamp:
                    stamp = self.verify(fd, digest, size, "in the store")
                    self._local_stamps[digest] = stamp
        except BaseException:
            os.close(fd)
            raise
        return BlobReader(fd, stamp.size, digest, stamp, restamp=self._local_restamp)

    def read_small_now(self, digest: str, size: int) -> bytes | None:
        """The bytes of a blob this process verified before, if reading them
        needs no wait; else None (open it the ordinary way, in a worker).

        For the mount's event loop: a second epoch re-opens every file, and a
        worker-thread hop costs more than the read. No wait means: the file's
        stamp is the one this process last verified (so no hashing), its
        cache entry is pinned at once (``LOCK_NB``), and its bytes are in the
        page cache (``RWF_NOWAIT``: no disk read). The stamp is taken again
        after the read, so a change that raced it is not served.
        """
        local = self.store.local_path(self._key_for(digest))
        path = local if local is not None else self.path(digest)
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            return None
        try:
            if local is None:
                try:
                    fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)  # no eviction mid-read
                except BlockingIOError:
                    return None
                known = self.stamps.known(digest)
            else:
                known = self._local_stamps.get(digest)
            if known is None or Stamp.of_fd(fd) != known or known.size != size:
                return None
            data = read_nowait(fd, size + 1, 0)  # one byte more shows a blob that grew
            if data is None or len(data) != size or Stamp.of_fd(fd) != known:
                return None
        finally:
            os.close(fd)
        if local is None:
            self.counters.hit()
            self.stamps.touch(digest)
        return bytes(data)

    def warm(self, digest: str, size: int) -> str:
        """Ready a small blob for its next open without opening it for anyone
        (read-ahead, prefetch.py): a local store's file is verified as an open
        would (its stamp known, its pages read); a cached entry is checked and
        its pages read; a missing one is fetched into the cache (single
        flight with any open of it), unless the cache is near its size limit
        (``NEAR_LIMIT``).
        Serves nothing: every open still checks the stamp. Blocking.

        Returns what it did: "verified", "fetched", "ready" (nothing to do
        but read its pages) or "full" (skipped: the cache is near its limit).
        """
        local = self.store.local_path(self._key_for(digest))
        if local is not None:
            known = self._local_stamps.get(digest)
            reader: BlobReader | None = self._open_local(digest, size, local)
        else:
            known = None
            reader = self.open_cached(digest, size)
        if reader is not None:
            try:
                if local is not None and known != reader.stamp:
                    return "verified"  # hashed just now: its pages were read
                os.posix_fadvise(reader.fd, 0, size, os.POSIX_FADV_WILLNEED)
                return "ready"
            finally:
                reader.close()
        if not self._reserve_room(size):
            return "full"
        try:
            self.counters.miss()
            self.ensure(digest, size)
        finally:
            self._release_room(size)
        return "fetched"

    def _reserve_room(self, adding: int, fraction: float = NEAR_LIMIT) -> bool:
        """Reserve ``adding`` bytes for a fetch unless they would bring the cache
        past ``fraction`` of its size limit (as this process estimates it, with
        the fetches reserved so far): read-ahead stops there, so it never makes
        the cache evict entries for its guesses."""
        if self.max_bytes is None:
            return True
        with self._size_guard:
            if self._size_estimate is None:
                self._size_estimate = eviction.size(self)
            if self._size_estimate + self._reserved + adding > self.max_bytes * fraction:
                return False
            self._reserved += adding
            return True

    def _release_room(self, adding: int) -> None:
        """The reserved fetch is done (``grew`` counted what it added) or failed."""
        if self.max_bytes is not None:
            with self._size_guard:
                self._reserved -= adding

    def _local_restamp(self, digest: str, stamp: Stamp) -> None:
        self._local_stamps[digest] = stamp

    def open_cached(self, digest: str, size: int | None) -> BlobReader | None:
        """A pinned reader of the cache entry, if there is one that is right.

        An entry whose stamp does not match is hashed again: kept (and
        stamped) if right, else discarded (None: the caller fetches it)."""
        dest = self.path(digest)
        try:
            fd = os.open(dest, os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
            st = os.fstat(fd)
            if st.st_nlink == 0:  # evicted between the open and the lock
                os.close(fd)
                return None
            stamp = Stamp.of(st)
            if self.stamps.get(digest, stamp) != stamp:
                try:
                    stamp = self.verify(fd, digest, size, "in the cache")
                except BlobError as e:
                    self.discard(digest, fd, str(e))
                    os.close(fd)
                    return None
                self.stamps.put(digest, stamp)
        except BaseException:
            with contextlib.suppress(OSError):
                os.close(fd)
            raise
        self.stamps.touch(digest)
        return BlobReader(
            fd,
            stamp.size,
            digest,
            stamp,
            pinned=True,
            discard=self.discard,
            restamp=self.stamps.put,
            touch=self.stamps.touch,
        )

    @contextlib.contextmanager
    def _digest_lock(self, digest: str) -> Iterator[None]:
        with self._locks_guard:
            lock = self._locks.setdefault(digest, threading.Lock())
        with lock:
            yield

    @contextlib.contextmanager
    def single_flight(self, digest: str) -> Iterator[None]:
        """One fetch of ``digest`` at a time, across threads and processes."""
        with self._digest_lock(digest), flock(self.root / "locks" / digest):
            yield

    def ensure(
        self, digest: str, size: int | None = None, progress: Progress | None = None
    ) -> Path:
        """The cached, verified file for ``digest``, downloading it if needed.

        A blob larger than one part (``size``, if the caller knows it, or a
        partial fetch already on disk says so) is fetched in parts, in
        parallel, completing whatever a lazy reader fetched before. The path
        is verified as of now; to read it safely, use ``open_verified``.
        ``progress``, if given, is called with the bytes fetched so far, as
        parts arrive (a blob of one part: once, when it is there).
        """
        dest = self.path(digest)
        reader = self.open_cached(digest, size)
        if reader is not None:
            reader.close()
            return dest
        if size is None:
            size = Partial.recorded_size(self.root / "partial" / digest)
        if size is not None and size > self.part_size:
            return self.fill_parts(size, self._source(digest), progress)
        self.fill(digest, lambda: self._download(digest, dest))
        if progress is not None:
            with contextlib.suppress(OSError):
                progress(dest.stat().st_size)
        return dest

    def fill(self, digest: str, fetch: Callable[[], None]) -> Path:
        """Put ``digest`` in the cache by ``fetch`` (which places it, verified,
        with ``place``), once across threads and processes; a full disk
        evicts and retries (``writing``), and the size limit applies after."""
        dest = self.path(digest)
        with self.single_flight(digest):
            if dest.exists():
                return dest
            self.writing(fetch)
        self.grew(dest)
        return dest

    def fill_parts(self, size: int, source: PartSource, progress: Progress | None = None) -> Path:
        """Put ``size`` bytes (more than one part) in the cache by fetching
        their parts from ``source`` in parallel, completing whatever a lazy
        reader fetched before, then verifying them against ``source.digest``
        (or naming them by their hash, if it has none; partial.py);
        ``progress`` as for ``ensure``. The cache entry's path."""
        digest = source.digest
        partial = self._acquire_partial(size, source)
        if partial is not None:
            try:
                partial.complete(progress)
                digest = partial.digest
            finally:
                self._release_partial(partial)
        if digest is None or not self.path(digest).exists():
            raise BlobError(f"{source.name} vanished from the cache")
        return self.path(digest)

    def _download(self, digest: str, dest: Path) -> None:
        key = self._key_for(digest)
        tmp = self.root / "tmp" / f"{uuid.uuid4().hex}"
        try:
            with open(tmp, "w+b") as out:
                try:
                    self.store.download(key, out)  # type: ignore[arg-type]
                except NotFound:
                    raise BlobError(f"blob {digest} is missing from the store") from None
                out.flush()
                os.fsync(out.fileno())
                self.verify(out.fileno(), digest, None, "in the store")
                self.place(out.fileno(), tmp, digest, dest)
            self.fetches += 1
        finally:
            tmp.unlink(missing_ok=True)

    def place(self, fd: int, tmp: Path, digest: str, dest: Path) -> None:
        """Move a verified temporary file into place, read-only, and stamp it."""
        os.fchmod(fd, 0o444)
        dest.parent.mkdir(exist_ok=True)
        # The file was fsynced, so the name never points at bytes not on
        # disk; the directory is not: an entry lost in a crash is fetched again.
        replace(tmp, dest, durable=False)
        self.stamps.put(digest, Stamp.of_fd(fd))  # after the rename, which moves ctime

    def restamp_linked(self, digest: str, path: Path) -> None:
        """After a hard link to a verified entry (``get --link``): only its ctime
        moved, so record that instead of hashing it again on the next use."""
        with contextlib.suppress(OSError):
            now = Stamp.of(os.stat(path))
            known = self.stamps.get(digest, now)
            if known is not None and known != now and known.same_content(now):
                self.stamps.put(digest, now)

    # -- partial blobs --------------------------------------------------------

    def _acquire_partial(self, size: int, source: PartSource) -> Partial | None:
        """The shared partial fetch of ``source.name`` (one reference more; a new
        one fetches from ``source``), or None if ``source.digest`` is in the
        cache already."""
        name = source.name
        with self._partials_guard:
            p = self._partials.get(name)
            if p is not None and p.failed is None:
                p.refs += 1
                return p
        if source.digest is not None and self.path(source.digest).exists():
            return None
        fresh = Partial(self, size, source)
        with self._partials_guard:
            p = self._partials.get(name)
            if p is not None and p.failed is None:
                p.refs += 1
                fresh.close_files()
                return p
            self._partials[name] = fresh
            fresh.refs = 1
        fresh.maybe_finalize()
        return fresh

    def _release_partial(self, partial: Partial) -> None:
        with self._partials_guard:
            partial.refs -= 1
            if partial.refs > 0:
                return
            if self._partials.get(partial.name) is partial:
                del self._partials[partial.name]
        partial.close_files()

    def _forget_partial(self, partial: Partial) -> None:
        """A failed partial fetch: the next open of the blob starts afresh."""
        with self._partials_guard:
            if self._partials.get(partial.name) is partial:
                del self._partials[partial.name]

    def _background(self, partial: Partial, fn: Callable[[], None]) -> None:
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
        """Put a file known to have ``digest`` into the cache by copy (after a put).

        The copy is hashed again: the source may have changed since it was hashed."""
        dest = self.path(digest)
        if dest.exists():
            return

        def copy() -> None:
            tmp = self.root / "tmp" / uuid.uuid4().hex
            try:
                with open(path, "rb") as src, open(tmp, "w+b") as out:
                    while chunk := src.read(READ_CHUNK):
                        out.write(chunk)
                    out.flush()
                    self.verify(out.fileno(), digest, None, f"copied from {path}")
                    self.place(out.fileno(), tmp, digest, dest)
            finally:
                tmp.unlink(missing_ok=True)

        self.writing(copy)
        self.grew(dest)

    def writing(self, write: Callable[[], None]) -> None:
        """Run ``write`` (which adds to the cache's disk); if the disk is full,
        evict least recently used entries and try again, and raise CacheFull
        only when nothing more can go."""
        for attempt in range(3):
            try:
                write()
                return
            except Exception as e:
                if not _disk_full(e):
                    raise
                if attempt == 2 or not self.make_room():
                    raise CacheFull(
                        f"no space left for the cache in {self.root}, even with every "
                        "entry not in use evicted: free space there or move the cache"
                    ) from None

    def make_room(self, keep: Path | None = None) -> bool:
        """The disk is full: evict the least recently used half (then all) of
        what is not in use. True if anything went."""
        size = self.size()
        result = self.cleanup(size // 2, keep=keep)
        if result.removed == 0:
            result = self.cleanup(0, keep=keep)
        log.info("cache disk full: evicted %d entries (%d bytes)", result.removed, result.freed)
        return result.removed > 0

    def grew(self, added: Path, nbytes: int | None = None) -> None:
        """``nbytes`` (default: the file's size) were just added to the cache at
        ``added``: evict least recently used entries past the size limit."""
        eviction.grew(self, added, nbytes)

    def size(self) -> int:
        return eviction.size(self)

    def cleanup(self, max_bytes: int, keep: Path | None = None) -> eviction.CleanupResult:
        """Remove least recently used blobs (and partial fetches) until the cache
        holds at most ``max_bytes``. Blobs held open are pinned and stay."""
        return eviction.cleanup(self, max_bytes, keep)

    def info(self) -> eviction.CacheInfo:
        return eviction.info(self)
