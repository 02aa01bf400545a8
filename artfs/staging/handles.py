"""Open staged files, and their hashing as they are written.

Writes that run sequentially from offset 0 are hashed as they go; any other
write, a truncate below what was hashed, or a write through another open of
the same file drops the hasher, and the commit hashes the file. A digest is
recorded (in ``state.db``, by inode) at a flush or release of an open whose
hasher saw every byte, and dropped by the next write to that inode.

An open holds a descriptor on the upper file, so an unlinked open file
stays usable until its last close, as on any local filesystem.

Threads: ``create``, ``_write``, ``_flush`` and ``_release`` may run on the
mount's event loop (``nowait.py``): there they take the area's lock only if
it is free (``locked()``) and raise ``WouldBlock`` before changing anything
when they would copy a base file up or close a blob reader; the mount then
calls them again in a worker. Either way a handle's fields (``fd``,
``hasher``, ``wrote``, ``flushed``, ``recorded``) and the area's ``_open``
are read and changed under the area's lock only.
"""

from __future__ import annotations

import errno
import os
from typing import TYPE_CHECKING

from artfs.cache import BlobReader
from artfs.digest import Hasher
from artfs.staging.errors import StagingError
from artfs.staging.nowait import WouldBlock, waiting_forbidden
from artfs.staging.overlay import Attr, attr_from_stat

if TYPE_CHECKING:
    from artfs.staging.area import StagingArea


class StagedFile:
    """One open of a staged file (or control file) by the filesystem."""

    def __init__(
        self,
        area: StagingArea,
        path: str,
        fd: int | None,
        reader: BlobReader | None,
        *,
        writable: bool,
        control: str | None = None,
    ) -> None:
        self.area = area
        self.path = path
        self.fd = fd
        self.reader = reader
        self.writable = writable
        self.control = control
        self.ino = os.fstat(fd).st_ino if fd is not None else 0
        self.hasher: Hasher | None = Hasher() if writable and control is None else None
        self.wrote = False
        self.flushed = False
        self.stale = False
        self.backup: tuple[bytes, str | None] | None = None
        self.recorded = False

    def read(self, offset: int, size: int) -> bytes:
        if self.reader is not None:
            return self.reader.read(offset, size)
        if self.fd is None:
            with self.area._lock:
                self.area._ensure_fd(self)
        assert self.fd is not None
        return os.pread(self.fd, size, offset)

    def write(self, offset: int, data: bytes) -> int:
        return self.area._write(self, offset, data)

    def truncate(self, size: int) -> None:
        self.area._truncate_handle(self, size)

    def flush(self) -> None:
        self.area._flush(self)

    def fsync(self, datasync: bool = False) -> None:
        if self.fd is not None and self.writable:
            (os.fdatasync if datasync else os.fsync)(self.fd)

    def release(self) -> None:
        self.area._release(self)

    # -- the file itself, by its descriptor: still there once unlinked ---------

    @property
    def has_inode(self) -> bool:
        return self.fd is not None

    def stat(self) -> Attr:
        assert self.fd is not None
        return attr_from_stat(os.fstat(self.fd))

    def chmod(self, mode: int) -> None:
        assert self.fd is not None
        os.fchmod(self.fd, mode & 0o7777)

    def chown(self, uid: int, gid: int) -> None:
        assert self.fd is not None
        os.fchown(self.fd, uid, gid)

    def utimens(self, atime_ns: int | None, mtime_ns: int | None) -> None:
        assert self.fd is not None
        st = os.fstat(self.fd)
        times = (
            atime_ns if atime_ns is not None else st.st_atime_ns,
            mtime_ns if mtime_ns is not None else st.st_mtime_ns,
        )
        os.utime(self.fd, ns=times)


class Handles:
    """Opening, writing and closing staged files (a part of ``StagingArea``)."""

    def create(
        self: StagingArea, path: str, mode: int, owner: tuple[int, int] | None = None
    ) -> StagedFile:
        with self.locked():
            self._check_new(path)  # may raise WouldBlock: before anything is made
            self._upper_dirs(path.rpartition("/")[0])
            flags = os.O_RDWR | os.O_CREAT | os.O_EXCL
            fd = os.open(path, flags, mode & 0o777, dir_fd=self._fd)
            os.fchmod(fd, mode & 0o7777)
            self._give_owner(path, owner)
            self._mark_created(path)
            h = self._handle(path, fd, writable=True)
            # A digest left for a reused inode number (a file removed with its
            # directory) must not stand for this new file.
            self.state.set_hashed(h.ino)
            h.wrote = True  # an empty file is hashed too: by its empty hasher
            return h

    def open(self: StagingArea, path: str, flags: int) -> StagedFile:
        writable = (flags & os.O_ACCMODE) != os.O_RDONLY or bool(flags & os.O_TRUNC)
        with self._lock:
            a = self._existing(path, dir_ok=False)
            if not writable and a.digest is not None:
                return StagedFile(
                    self, path, None, self.repo.cache.open_reader(a.digest, a.size), writable=False
                )
            if writable and self._lstat_upper(path) is None:
                if flags & os.O_TRUNC:
                    self._empty_up(path, a.mode)
                else:
                    # The kernel truncates after the open (no atomic O_TRUNC):
                    # copy the base file only when a write shows it is needed.
                    return StagedFile(self, path, None, None, writable=True)
            fd = os.open(path, os.O_RDWR if writable else os.O_RDONLY, dir_fd=self._fd)
            handle = self._handle(path, fd, writable=writable)
            if flags & os.O_TRUNC:
                handle.truncate(0)
            return handle

    def _empty_up(self: StagingArea, path: str, mode: int) -> None:
        """A base file truncated to nothing: an empty upper file, no bytes copied."""
        self._upper_dirs(path.rpartition("/")[0])
        flags = os.O_RDWR | os.O_CREAT | os.O_EXCL
        fd = os.open(path, flags, 0o600, dir_fd=self._fd)
        try:
            os.fchmod(fd, mode & 0o7777)
        finally:
            os.close(fd)

    def _ensure_fd(self: StagingArea, h: StagedFile) -> None:
        """Give a handle opened on a base file its upper file, copying it up if still needed."""
        if h.fd is not None:
            return
        st = self._copy_up(h.path)
        h.fd = os.open(h.path, os.O_RDWR, dir_fd=self._fd)
        h.ino = st.st_ino
        self._open.setdefault(h.ino, set()).add(h)

    def _handle(self: StagingArea, path: str, fd: int, *, writable: bool) -> StagedFile:
        h = StagedFile(self, path, fd, None, writable=writable)
        if writable:
            self._open.setdefault(h.ino, set()).add(h)
        return h

    def _write(self: StagingArea, h: StagedFile, offset: int, data: bytes) -> int:
        if not h.writable:
            raise StagingError(errno.EBADF, f"{h.path} is not open for writing")
        if h.control is not None:
            if waiting_forbidden():
                raise WouldBlock(f"{h.control} is written under the area's lock")
            return self._write_control(h, offset, data)
        with self.locked():
            if h.fd is None and waiting_forbidden():
                raise WouldBlock(f"{h.path} is not copied up yet")
            self._ensure_fd(h)
            assert h.fd is not None
            if h.stale:
                raise StagingError(errno.ESTALE, f"{h.path} was committed; open it again")
            # A digest recorded for this inode (before this open, or at a flush
            # of any open) is wrong from this write on: drop it first.
            others = [o for o in self._open.get(h.ino, ()) if o is not h]
            if not h.wrote or h.recorded or any(o.recorded for o in others):
                self.state.set_hashed(h.ino)
            h.wrote = True
            h.flushed = h.recorded = False
            n = os.pwrite(h.fd, data, offset)
            for other in others:
                other.hasher = None
                other.recorded = False
            if h.hasher is not None:
                if offset == h.hasher.size:
                    h.hasher.update(data[:n])
                else:
                    h.hasher = None
            return n

    def _truncate_handle(self: StagingArea, h: StagedFile, size: int) -> None:
        if h.control is not None:
            self.truncate_control(h.control, size)
            return
        with self._lock:
            if h.fd is None and size == 0 and self._lstat_upper(h.path) is None:
                a = self.stat(h.path)
                if a is not None and a.digest is not None:
                    self._empty_up(h.path, a.mode)
            self._ensure_fd(h)
            assert h.fd is not None
            os.ftruncate(h.fd, size)
            h.wrote = True
            self._after_truncate(h.ino, size, h)

    def _after_truncate(self: StagingArea, ino: int, size: int, by: StagedFile | None) -> None:
        self.state.set_hashed(ino)
        for h in self._open.get(ino, ()):
            h.recorded = False
            if h.hasher is not None and h.hasher.size > size:
                h.hasher = None

    def _record_hash(self: StagingArea, h: StagedFile) -> None:
        if h.wrote and h.hasher is not None and h.fd is not None and not h.stale:
            st = os.fstat(h.fd)
            if st.st_size == h.hasher.size and st.st_nlink > 0 and not h.recorded:
                self.state.set_hashed(h.ino, st.st_size, h.hasher.content_digest())
                h.recorded = True  # until the next write: flush, then release

    def _flush(self: StagingArea, h: StagedFile) -> None:
        """close(2) of one descriptor: the data is all here, though the open may live on."""
        if h.control is not None or not h.writable:
            return
        with self.locked():
            self._record_hash(h)
            h.flushed = True

    def _release(self: StagingArea, h: StagedFile) -> None:
        if h.reader is not None and waiting_forbidden():
            raise WouldBlock(f"{h.path} reads a blob: its close may wait for the cache")
        with self.locked():
            if h.reader is not None:
                h.reader.close()
                return
            if h.fd is None:
                return
            try:
                if h.writable and h.control is None:
                    handles = self._open.get(h.ino, set())
                    handles.discard(h)
                    if not handles:
                        self._open.pop(h.ino, None)
                    self._record_hash(h)
                    self._idle.notify_all()
            finally:
                os.close(h.fd)
                h.fd = None

    def _busy(self: StagingArea) -> list[str]:
        """Files open for writing and not flushed, that a commit would take."""
        busy = []
        for hs in self._open.values():
            for h in hs:
                if h.flushed or h.fd is None:
                    continue
                if os.fstat(h.fd).st_nlink == 0:
                    continue  # unlinked: not part of any version
                busy.append(h.path)
        return busy
