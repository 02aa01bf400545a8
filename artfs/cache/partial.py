"""Large blobs fetched part by part: a read waits only for the parts it touches.

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
- once every part is there, the whole file is hashed (``verify_fd``); if it
  matches its digest it is renamed into ``blobs/`` and is an ordinary cached
  blob (open readers keep reading the same inode), else it is discarded and
  every further read of it raises BlobError.

Where the parts come from is a ``PartSource``: ``get_range(offset, length)``
plus words for errors. ``StoreBlob`` is a blob of the store (its
content-addressed key); a reference entry's referent outside the store is
another (``artfs.cache.referents.ReferentParts``). Both share this one lazy
path: sparse file, record, readahead, verification at the end.

A part served before the whole is verified cannot be verified on its own:
the digest covers the whole blob. What makes that acceptable is that every
part comes from one immutable object, whose size must match, and a file
that turns out wrong is discarded and never served again:

- a store blob: an immutable, content-addressed key;
- a referent: every range is pinned to the object as committed, by the etag
  the manifest recorded (``If-Match`` on S3, Azure and https, the generation
  on GCS, the stat etag of a file; the etag of each answer is compared as
  well, for servers that ignore ``If-Match``). Under one etag an object is
  immutable, so the parts are the committed object's bytes or the range
  fails (BlobError, EIO in the mount): a referent replaced between two part
  reads is refused at the next part, never mixed into the file. A reference
  with no recorded etag (an older manifest) is not read this way: it is
  fetched whole and verified before any byte is served. An etag-only
  reference has no digest: its source names the partial file (``name``),
  and the complete file is hashed and placed under the digest it turns out
  to have (``PartSource.placed`` records it); the etag is its only check,
  as it is for such a reference fetched whole.

``ensure`` (whole files for the CLI, manifests) always verifies before
returning.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import queue
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Protocol

from artfs.cache.readers import CHECK_INTERVAL
from artfs.cache.verify import BlobError, Stamp
from artfs.digest import digest_fd
from artfs.objects import NotFound, StoreError

FETCH_WORKERS = 8
_RECORD_VERSION = 1
_PRESENT = b"\x01"
# Called with the bytes of a blob fetched so far (see ``Partial.complete``).
Progress = Callable[[int], None]


class PartSource(Protocol):
    """Where a lazily fetched file's parts come from."""

    name: str  # the partial file's name and single-flight key: the digest, if known
    digest: str | None  # what the whole must hash to; None: named by its bytes when complete
    where: str  # for errors and logs: "in the store", "at s3://b/k"

    def get_range(self, offset: int, length: int) -> bytes:
        """``length`` bytes at ``offset`` of the one object this source is
        pinned to; BlobError (gone, changed) or StoreError (cannot ask)."""
        ...

    def wrong(self, why: str) -> BlobError:
        """The error for a part that came back wrong (``why``: how)."""
        ...

    def corrupt(self, e: BlobError) -> BlobError:
        """The error for a complete file that failed its digest check (``e``)."""
        ...

    def placed(self, digest: str) -> None:
        """The complete file is in the cache as ``digest`` (a source named by
        its bytes records that name)."""
        ...


class StoreBlob:
    """A blob of the store, by its content-addressed key."""

    def __init__(self, store: Any, key: str, digest: str) -> None:
        self._store = store
        self._key = key
        self._digest = digest
        self.name = self.digest = digest
        self.where = "in the store"

    def get_range(self, offset: int, length: int) -> bytes:
        try:
            return self._store.get_range(self._key, offset, length)  # type: ignore[no-any-return]
        except NotFound:
            raise BlobError(f"blob {self._digest} is missing from the store") from None

    def wrong(self, why: str) -> BlobError:
        return BlobError(f"blob {self._digest} in the store {why}")

    def corrupt(self, e: BlobError) -> BlobError:
        return e

    def placed(self, digest: str) -> None:
        pass


class _Watcher:
    """One progress callback: called one thread at a time, with counts that only grow."""

    def __init__(self, progress: Progress) -> None:
        self._progress = progress
        self._lock = threading.Lock()
        self._last = -1

    def __call__(self, done: int) -> None:
        with self._lock:
            if done > self._last:
                self._last = done
                self._progress(done)


class Workers:
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


class Partial:
    """One blob being fetched part by part, shared by every reader of it in
    this process. See the module docstring for the on-disk record."""

    def __init__(self, cache: Any, size: int, source: PartSource) -> None:
        self.cache = cache
        self.name = source.name
        self.digest = source.digest  # set when complete, if the source had none
        self.size = size
        self.source = source
        self.part_size = cache.part_size
        self.nparts = (size + self.part_size - 1) // self.part_size
        self.path = cache.root / "partial" / self.name
        self.record_path = self.path.with_name(self.name + ".parts")
        self.cond = threading.Condition()
        self.state: dict[int, str] = {}  # part -> "queued" | "running"
        self.errors: dict[int, BaseException] = {}
        self.failed: BaseException | None = None
        self.finalizing = False
        self.done = threading.Event()  # verified into the cache, or failed
        self.refs = 0
        self.stamp: Stamp | None = None  # once verified and in blobs/
        self._watchers: list[_Watcher] = []  # progress of complete(), under cond
        header = self._header(self.part_size, size)
        self.header_len = len(header)
        with cache.single_flight(self.name):
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
                        raise BlobError(f"part {i} of {self.name} was not fetched")
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
                data = self.source.get_range(offset, length)
                if len(data) != length:
                    raise self.source.wrong(
                        f"is not {self.size} bytes long "
                        f"(part {i} came back with {len(data)} of {length} bytes)"
                    )
                self.cache.writing(lambda: self._write(data, offset))
                os.pwrite(self.record, _PRESENT, self.header_len + i)
                with self.cache._partials_guard:
                    self.cache.part_fetches += 1
                self.cache.grew(self.path, length)
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
        self._report()
        self.maybe_finalize()

    def _present_bytes(self) -> int:
        """Bytes of the parts present (under ``cond``)."""
        done = self.count * self.part_size
        if self.nparts and self.present[-1]:
            done -= self.nparts * self.part_size - self.size  # the last part is short
        return done

    def _report(self) -> None:
        """Tell the watchers of ``complete`` how far the fetch is (from any fetching thread)."""
        with self.cond:
            if not self._watchers:
                return
            done = self._present_bytes()
            watchers = list(self._watchers)
        for w in watchers:
            w(done)

    def recheck(self) -> None:
        """The verified file's stamp moved: keep it if it still matches its
        digest (a hard link moves only ctime), else discard it and fail."""
        with self.cond:
            try:
                self.stamp = self.cache.verify(self.fd, self.digest, self.size, "in the cache")
            except BlobError as e:
                self.cache.discard(self.digest, self.fd, str(e))
                self.failed = e
                raise

    def _write(self, data: bytes, offset: int) -> None:
        view = memoryview(data)
        pos = offset
        while view:
            n = os.pwrite(self.fd, view, pos)
            view = view[n:]
            pos += n
        os.fdatasync(self.fd)  # the bytes are durable before the record says so

    def complete(self, progress: Progress | None = None) -> None:
        """Fetch every missing part (in parallel) and verify; raise if it fails.

        ``progress``, if given, is called with the bytes present so far, each
        time a part arrives (from the thread that fetched it, one call at a
        time, growing), first with what was there already."""
        watcher = _Watcher(progress) if progress is not None else None
        if watcher is not None:
            with self.cond:
                self._watchers.append(watcher)
            self._report()
        try:
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
        finally:
            if watcher is not None:
                with self.cond:
                    self._watchers.remove(watcher)

    # -- verification -----------------------------------------------------------

    def maybe_finalize(self) -> None:
        with self.cond:
            if self.count < self.nparts or self.finalizing:
                return
            self.finalizing = True
        self.cache._background(self, self._finalize)

    def _finalize(self) -> None:
        """Hash the complete file; move it into the cache, or discard it.

        A source with no digest (an etag-only referent, every part pinned to
        its etag) is named by the hash of its bytes here, and told the name."""
        cache = self.cache
        try:
            with cache.single_flight(self.name):
                digest = self.digest
                known = digest is not None  # else named by its hash, nothing to check
                if digest is None:
                    os.fsync(self.fd)
                    digest, n = digest_fd(self.fd, self.size)
                    if n != self.size:
                        raise self.source.wrong(f"is {n} bytes long, not {self.size}")
                self.digest = digest  # before ``stamp`` is set: ``recheck`` needs it
                dest = cache.path(digest)
                # The digest's own lock too, if it is not the name's (a fill of it).
                same = digest == self.name
                with contextlib.nullcontext() if same else cache.single_flight(digest):
                    if not dest.exists():
                        os.fsync(self.fd)
                        if known:
                            try:
                                cache.verify(self.fd, digest, self.size, self.source.where)
                            except BlobError as e:
                                raise self.source.corrupt(e) from None
                        try:
                            cache.place(self.fd, self.path, digest, dest)
                            self.stamp = Stamp.of_fd(self.fd)
                            with cache._partials_guard:
                                cache.fetches += 1
                        except FileNotFoundError:
                            pass  # another process finished this very file first
                    else:
                        self.path.unlink(missing_ok=True)
                self.record_path.unlink(missing_ok=True)
            self.source.placed(digest)
        except BaseException as e:
            with self.cond:
                self.failed = (
                    e
                    if isinstance(e, StoreError)
                    else BlobError(f"{self.name}: cannot complete its fetch: {e}")
                )
            cache._forget_partial(self)
            with cache.single_flight(self.name):
                self.path.unlink(missing_ok=True)
                self.record_path.unlink(missing_ok=True)
        finally:
            with self.cond:
                self.cond.notify_all()
            self.done.set()


class LazyBlobReader:
    """Reads of a blob that is being fetched part by part: each read waits only
    for the parts it touches; sequential reading drives readahead. Thread-safe.

    Raises BlobError or StoreError (EIO in the mount) when a part cannot be
    fetched, or once the complete blob failed its digest check.
    """

    def __init__(self, cache: Any, partial: Partial) -> None:
        self._cache = cache
        self._p = partial
        self.size = partial.size
        self._next = 0  # where a sequential reader reads next
        self._window = 0  # readahead, in parts
        self._lock = threading.Lock()
        self._closed = False
        self._checked = 0.0

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
        data = os.pread(p.fd, end - offset, offset)
        now = time.monotonic()
        if p.stamp is None or now - self._checked < CHECK_INTERVAL:
            return data
        if Stamp.of_fd(p.fd) != p.stamp:
            p.recheck()  # a verified blob changed under its reader: hash it again
            data = os.pread(p.fd, end - offset, offset)
        self._checked = now  # only once a check passed
        return data

    def fresh(self) -> bool:
        """Whether another open may share this reader (see BlobReader.fresh)."""
        p = self._p
        if self._closed or p.failed is not None:
            return False
        try:
            return p.stamp is None or Stamp.of_fd(p.fd) == p.stamp
        except OSError:
            return False

    def idle(self) -> bool:
        """Never kept without an open: its partial fetch pins the file."""
        return False

    def revive(self) -> bool:
        return False

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._cache._release_partial(self._p)
