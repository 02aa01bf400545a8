"""The merged view of staging: lookups, copy-up and namespace operations.

The upper layer is a real directory tree (``files/``) reached only through
one directory descriptor and paths relative to it (``openat`` and friends),
so a staged path may be as long as PATH_MAX relative to the mount whatever
the state directory's own path, and each call costs one walk of its path.
With a ``.base`` the view is an overlay: the base manifest's entries, hidden
by whiteouts (deleted paths) and opaque directories (re-made after a
delete), moved by redirects (a renamed directory shows its base content
under its new name), and shadowed by the upper layer.

No byte of the base is copied until a call needs it: a write that keeps old
bytes, a rename of a file, a hard link, or a change of its mode, owner or
times (versions keep modes and times). Overwriting a base file from its
start copies nothing.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from artfs import names
from artfs.manifest import DIR, FILE, PERMISSION_BITS, SYMLINK
from artfs.staging.errors import StagingError

if TYPE_CHECKING:
    from artfs.manifest import Entry
    from artfs.staging.area import StagingArea

METADATA, DESCRIPTION, ALIASES, BASE = ".metadata.json", ".description", ".aliases", ".base"
STATUS, COMMIT = ".status", ".commit"
CONTROL_FILES = (METADATA, DESCRIPTION, ALIASES, BASE)
RESERVED = frozenset((*CONTROL_FILES, STATUS, COMMIT))


def _prefixes(path: str) -> Iterator[str]:
    """'a/b/c' -> 'a', 'a/b', 'a/b/c'."""
    i = path.find("/")
    while i != -1:
        yield path[:i]
        i = path.find("/", i + 1)
    yield path


def join(parent: str, name: str) -> str:
    return f"{parent}/{name}" if parent else name


def rel(path: str) -> str:
    """A path for the upper layer's ``*at`` calls: '' is the layer's root."""
    return path or "."


@dataclass(frozen=True)
class Attr:
    """What a staged entry looks like: from the upper layer or from the base."""

    kind: str
    mode: int  # permission bits (with set-id and sticky while staged)
    size: int
    mtime_ns: int
    ctime_ns: int
    target: str | None = None
    digest: str | None = None  # a base file, not copied up
    uid: int | None = None  # None: the mount's owner
    gid: int | None = None
    atime_ns: int | None = None
    nlink: int = 1
    ino: int | None = None  # the upper layer's inode: the same for hard links

    @property
    def is_dir(self) -> bool:
        return self.kind == DIR


def attr_from_stat(st: os.stat_result, target: str | None = None) -> Attr:
    if stat.S_ISDIR(st.st_mode):
        kind = DIR
    elif stat.S_ISLNK(st.st_mode):
        kind = SYMLINK
    else:
        kind = FILE
    return Attr(
        kind,
        stat.S_IMODE(st.st_mode),
        st.st_size,
        st.st_mtime_ns,
        st.st_ctime_ns,
        target,
        None,
        st.st_uid,
        st.st_gid,
        st.st_atime_ns,
        st.st_nlink,
        st.st_ino,
    )


class Overlay:
    """The merged view's lookups and changes (a part of ``StagingArea``)."""

    # -- the base through the marks ----------------------------------------

    def _base_path(self: StagingArea, path: str) -> str:
        """Where ``path`` of the merged view is in the base: through the deepest redirect."""
        redirects = self.state.redirects
        if not redirects:
            return path
        for p in reversed(list(_prefixes(path))):
            target = redirects.get(p)
            if target is not None:
                return target + path[len(p) :]
        return path

    def _base_hidden(self: StagingArea, path: str) -> bool:
        state = self.state
        if not state.has_marks():
            return False
        for p in reversed(list(_prefixes(path))):
            if p in state.whiteouts:
                return True
            if p != path and p in state.opaque:
                return True
            if p in state.redirects:
                return False  # what is below comes from the redirect's base directory
        return False

    def _base_entry(self: StagingArea, path: str) -> Entry | None:
        """The base's entry at ``path`` unless a whiteout or opaque dir hides it."""
        base = self.base()
        if base is None or self._base_hidden(path):
            return None
        return base[1].lookup(self._base_path(path))

    def _base_attr(self: StagingArea, e: Entry) -> Attr:
        version = self.base()[0]  # type: ignore[index]
        t = e.mtime_ns if e.mtime_ns is not None else int(version.created * 1e9)
        mode = e.mode & PERMISSION_BITS
        return Attr(e.kind, mode, e.size, t, t, e.target, e.digest, atime_ns=t)

    # -- lookups -----------------------------------------------------------

    def _lstat_upper(self: StagingArea, path: str) -> os.stat_result | None:
        try:
            return os.stat(rel(path), dir_fd=self._fd, follow_symlinks=False)
        except (FileNotFoundError, NotADirectoryError):
            return None

    def _readlink_upper(self: StagingArea, path: str) -> str:
        return os.readlink(path, dir_fd=self._fd)

    def stat(self: StagingArea, path: str) -> Attr | None:
        """The merged view's entry at ``path`` ('' is staging itself), or None."""
        st = self._lstat_upper(path)
        if st is not None:
            target = self._readlink_upper(path) if stat.S_ISLNK(st.st_mode) else None
            return attr_from_stat(st, target)
        e = self._base_entry(path)
        return self._base_attr(e) if e is not None else None

    def _scan_upper(self: StagingArea, path: str) -> list[tuple[str, os.stat_result]]:
        """(name, lstat) of an upper directory's entries, but for copies in progress."""
        fd = os.open(rel(path), os.O_RDONLY | os.O_DIRECTORY, dir_fd=self._fd)
        try:
            with os.scandir(fd) as it:
                return [(e.name, e.stat(follow_symlinks=False)) for e in it]
        finally:
            os.close(fd)

    def listdir(self: StagingArea, path: str) -> list[tuple[str, Attr]]:
        """Entries of a merged directory, sorted by name (no control files)."""
        out: dict[str, Attr] = {}
        base = self.base()
        st = self._lstat_upper(path)
        if st is not None and not stat.S_ISDIR(st.st_mode):
            raise StagingError(errno.ENOTDIR, f"not a directory: {path}")
        if st is not None:
            for name, est in self._scan_upper(path):
                if not path and name in RESERVED:
                    continue
                sub = join(path, name)
                target = self._readlink_upper(sub) if stat.S_ISLNK(est.st_mode) else None
                out[name] = attr_from_stat(est, target)
        if base is not None and path not in self.state.opaque:
            e = self._base_entry(path)
            if e is not None and e.is_dir:
                for child in base[1].children(e.id):
                    if child.name in out or (not path and child.name in RESERVED):
                        continue
                    if not self._base_hidden(join(path, child.name)):
                        out[child.name] = self._base_attr(child)
            elif st is None:
                raise StagingError(errno.ENOENT, f"no such directory: {path}")
        elif st is None:
            raise StagingError(errno.ENOENT, f"no such directory: {path}")
        return sorted(out.items())

    def _existing(self: StagingArea, path: str, *, dir_ok: bool = True) -> Attr:
        a = self.stat(path)
        if a is None:
            raise StagingError(errno.ENOENT, f"no such file: {path}")
        if a.is_dir and not dir_ok:
            raise StagingError(errno.EISDIR, f"is a directory: {path}")
        return a

    def readlink(self: StagingArea, path: str) -> str:
        a = self._existing(path)
        if a.kind != SYMLINK or a.target is None:
            raise StagingError(errno.EINVAL, f"not a symlink: {path}")
        return a.target

    def is_empty(self: StagingArea) -> bool:
        """Nothing staged: no base, no files, no deletions."""
        if self.state.kv("base") is not None or self.state.whiteouts:
            return False
        return not self._scan_upper("")

    # -- making room in the upper layer -----------------------------------

    def _check_new(self: StagingArea, path: str) -> None:
        names.check_path(path)
        if "/" not in path and path in RESERVED:
            raise StagingError(errno.EEXIST, f"{path} is a control file of staging")
        parent = path.rpartition("/")[0]
        pa = self.stat(parent)
        if pa is None:
            raise StagingError(errno.ENOENT, f"no such directory: {parent}")
        if not pa.is_dir:
            raise StagingError(errno.ENOTDIR, f"not a directory: {parent}")
        if self.stat(path) is not None:
            raise StagingError(errno.EEXIST, f"exists: {path}")

    def _upper_dirs(self: StagingArea, path: str) -> None:
        """Make the upper layer hold directory ``path`` (a base dir gets a twin
        with its mode and times)."""
        missing = []
        p = path
        while p and self._lstat_upper(p) is None:
            missing.append(p)
            p = p.rpartition("/")[0]
        for p in reversed(missing):
            e = self._base_entry(p)
            a = self._base_attr(e) if e is not None else None
            os.mkdir(p, 0o700, dir_fd=self._fd)
            os.chmod(p, a.mode if a is not None else 0o755, dir_fd=self._fd)
            if a is not None:
                os.utime(p, ns=(a.mtime_ns, a.mtime_ns), dir_fd=self._fd)

    def _mark_created(self: StagingArea, path: str) -> None:
        # A path deleted from the base and made again must not show the old
        # base entries below it.
        if path in self.state.whiteouts:
            self.state.set_marks(drop_whiteout=path, add_opaque=path)

    def _copy_up(self: StagingArea, path: str) -> os.stat_result:
        """Bring a base entry into the upper layer; returns its stat there."""
        st = self._lstat_upper(path)
        if st is not None:
            return st
        e = self._base_entry(path)
        if e is None:
            raise StagingError(errno.ENOENT, f"no such file: {path}")
        a = self._base_attr(e)
        parent = path.rpartition("/")[0]
        self._upper_dirs(parent)
        before = self._lstat_upper(parent)
        if e.is_dir:
            self._upper_dirs(path)
        elif e.is_symlink:
            os.symlink(e.target or "", path, dir_fd=self._fd)
            os.utime(path, ns=(a.mtime_ns, a.mtime_ns), dir_fd=self._fd, follow_symlinks=False)
        else:
            # The copy is made aside (copying/, same filesystem) and renamed
            # into place: a reader never sees half a file, a crash leaves none.
            tmp = uuid.uuid4().hex
            src = self.repo.cache.source_path(e.digest)  # type: ignore[arg-type]
            try:
                flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
                fd = os.open(tmp, flags, 0o600, dir_fd=self._copy_fd)
                with open(src, "rb") as s, os.fdopen(fd, "wb") as d:
                    shutil.copyfileobj(s, d, 1 << 20)
                    os.fchmod(d.fileno(), a.mode)
                    os.utime(d.fileno(), ns=(a.mtime_ns, a.mtime_ns))
                os.rename(tmp, path, src_dir_fd=self._copy_fd, dst_dir_fd=self._fd)
            except BaseException:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp, dir_fd=self._copy_fd)
                raise
        if before is not None:
            # A copy-up is no change of the directory: keep its times.
            os.utime(parent or ".", ns=(before.st_atime_ns, before.st_mtime_ns), dir_fd=self._fd)
        st = os.stat(path, dir_fd=self._fd, follow_symlinks=False)
        if e.is_file:
            self.state.set_hashed(st.st_ino, e.size, e.digest)
        return st

    def _give_owner(self: StagingArea, path: str, owner: tuple[int, int] | None) -> None:
        """A new entry belongs to its creator (kept while staged; versions keep no owners)."""
        if owner is None or os.geteuid() != 0:
            return
        uid, gid = owner
        parent = self._lstat_upper(path.rpartition("/")[0])
        if parent is not None and parent.st_mode & stat.S_ISGID:
            gid = parent.st_gid  # as any filesystem does under a setgid directory
        os.chown(path, uid, gid, dir_fd=self._fd, follow_symlinks=False)

    # -- namespace operations ---------------------------------------------

    def mkdir(
        self: StagingArea, path: str, mode: int = 0o755, owner: tuple[int, int] | None = None
    ) -> Attr:
        with self._lock:
            self._check_new(path)
            self._upper_dirs(path.rpartition("/")[0])
            os.mkdir(path, 0o700, dir_fd=self._fd)
            # The kernel applied the caller's umask already; the daemon's must not.
            os.chmod(path, mode & 0o7777, dir_fd=self._fd)
            self._give_owner(path, owner)
            self._mark_created(path)
            return self.stat(path)  # type: ignore[return-value]

    def symlink(
        self: StagingArea, path: str, target: str, owner: tuple[int, int] | None = None
    ) -> Attr:
        with self._lock:
            self._check_new(path)
            self._upper_dirs(path.rpartition("/")[0])
            os.symlink(target, path, dir_fd=self._fd)
            self._give_owner(path, owner)
            self._mark_created(path)
            return self.stat(path)  # type: ignore[return-value]

    def link(self: StagingArea, old: str, new: str) -> Attr:
        """A hard link: both names share one staged file (a base file is copied up)."""
        with self._lock:
            a = self._existing(old)
            self._check_new(new)  # EEXIST before EPERM, as POSIX orders them
            if a.is_dir:
                raise StagingError(errno.EPERM, f"{old} is a directory: no hard links to those")
            self._copy_up(old)
            self._upper_dirs(new.rpartition("/")[0])
            os.link(old, new, src_dir_fd=self._fd, dst_dir_fd=self._fd, follow_symlinks=False)
            self._mark_created(new)
            return self.stat(new)  # type: ignore[return-value]

    def mknod(self: StagingArea, path: str, mode: int) -> None:
        """Devices, FIFOs and sockets: a version cannot hold them."""
        with self._lock:
            self._check_new(path)
        kind = {stat.S_IFIFO: "FIFO", stat.S_IFSOCK: "socket"}.get(stat.S_IFMT(mode), "device")
        # EPERM: what a filesystem without mknod (vfat, say) answers.
        raise StagingError(errno.EPERM, f"cannot make {path}: staging holds no {kind}s")

    def unlink(self: StagingArea, path: str) -> None:
        with self._lock:
            self._existing(path, dir_ok=False)
            self._remove(path)

    def rmdir(self: StagingArea, path: str) -> None:
        with self._lock:
            if not path:
                raise StagingError(errno.EBUSY, "staging itself cannot be removed")
            a = self.stat(path)
            if a is None:
                raise StagingError(errno.ENOENT, f"no such directory: {path}")
            if not a.is_dir:
                raise StagingError(errno.ENOTDIR, f"not a directory: {path}")
            if self.listdir(path):
                raise StagingError(errno.ENOTEMPTY, f"not empty: {path}")
            self._remove(path)

    def _remove(self: StagingArea, path: str) -> None:
        in_base = self._base_entry(path) is not None
        if in_base:
            # Whiteout first: a crash in between leaves the path deleted.
            self.state.set_marks(add_whiteout=path, drop_below=path)
        st = self._lstat_upper(path)
        if st is not None:
            if stat.S_ISDIR(st.st_mode):
                shutil.rmtree(path, dir_fd=self._fd)
            else:
                os.unlink(path, dir_fd=self._fd)
                if st.st_nlink == 1 and st.st_ino not in self._open:
                    self.state.set_hashed(st.st_ino)
        if not in_base:
            self.state.set_marks(drop_below=path)

    def _has_base_content(self: StagingArea, path: str) -> bool:
        e = self._base_entry(path)
        return e is not None and e.is_dir and path not in self.state.opaque

    def rename(self: StagingArea, old: str, new: str, flags: int = 0) -> None:
        noreplace = flags & 1  # RENAME_NOREPLACE
        if flags & ~1:
            raise StagingError(errno.EINVAL, "only plain renames and RENAME_NOREPLACE in staging")
        with self._lock:
            a = self.stat(old)
            if a is None:
                raise StagingError(errno.ENOENT, f"no such file: {old}")
            names.check_path(new)
            if "/" not in new and new in RESERVED:
                raise StagingError(errno.EEXIST, f"{new} is a control file of staging")
            if new == old:
                return
            if new.startswith(old + "/"):
                raise StagingError(errno.EINVAL, f"cannot move {old} into itself")
            b = self.stat(new)
            parent = self.stat(new.rpartition("/")[0])
            if parent is None:
                raise StagingError(errno.ENOENT, f"no such directory for {new}")
            if not parent.is_dir:
                raise StagingError(errno.ENOTDIR, f"not a directory: {new.rpartition('/')[0]}")
            if b is not None:
                if noreplace:
                    raise StagingError(errno.EEXIST, f"exists: {new}")
                if a.is_dir and not b.is_dir:
                    raise StagingError(errno.ENOTDIR, f"not a directory: {new}")
                if not a.is_dir and b.is_dir:
                    raise StagingError(errno.EISDIR, f"is a directory: {new}")
                if b.is_dir and self.listdir(new):
                    raise StagingError(errno.ENOTEMPTY, f"not empty: {new}")
                if a.ino is not None and a.ino == b.ino:
                    return  # two names of one file: rename(2) does nothing
            # A base directory moves as a redirect: its entries stay in the
            # base and show under the new name.
            redirect = self._base_path(old) if a.is_dir and self._has_base_content(old) else None
            old_in_base = self._base_entry(old) is not None
            self._copy_up(old)
            if b is not None:
                self._remove(new)
            self._upper_dirs(new.rpartition("/")[0])
            os.rename(old, new, src_dir_fd=self._fd, dst_dir_fd=self._fd)
            self.state.move_marks(old, new)
            if old_in_base:
                self.state.set_marks(add_whiteout=old)
            if new in self.state.whiteouts:
                self.state.set_marks(drop_whiteout=new)
            if redirect is not None:
                self.state.set_marks(add_redirect=(new, redirect), drop_opaque=new)
            elif a.is_dir and self._base_entry(new) is not None:
                self.state.set_marks(add_opaque=new)

    # -- attributes ----------------------------------------------------------

    def chmod(self: StagingArea, path: str, mode: int) -> None:
        with self._lock:
            a = self._existing(path)
            if a.kind == SYMLINK:
                return  # a link's mode means nothing (Linux keeps 0777)
            if a.digest is not None and a.mode == (mode & 0o7777):
                return
            self._copy_up(path)
            os.chmod(rel(path), mode & 0o7777, dir_fd=self._fd)

    def chown(self: StagingArea, path: str, uid: int, gid: int) -> None:
        """Kept while staged (stat shows it); versions do not record owners."""
        with self._lock:
            self._existing(path)
            self._copy_up(path)
            os.chown(rel(path), uid, gid, dir_fd=self._fd, follow_symlinks=False)

    def utimens(self: StagingArea, path: str, atime_ns: int | None, mtime_ns: int | None) -> None:
        with self._lock:
            self._existing(path)
            st = self._copy_up(path)  # versions keep mtimes: a base entry comes up
            times = (
                atime_ns if atime_ns is not None else st.st_atime_ns,
                mtime_ns if mtime_ns is not None else st.st_mtime_ns,
            )
            os.utime(rel(path), ns=times, dir_fd=self._fd, follow_symlinks=False)

    def truncate(self: StagingArea, path: str, size: int) -> None:
        with self._lock:
            a = self._existing(path)
            if a.kind != FILE:
                raise StagingError(
                    errno.EISDIR if a.is_dir else errno.EINVAL, f"not a file: {path}"
                )
            if size == 0 and a.digest is not None:
                self._empty_up(path, a.mode)
            st = self._copy_up(path)
            fd = os.open(path, os.O_WRONLY, dir_fd=self._fd)
            try:
                os.ftruncate(fd, size)
            finally:
                os.close(fd)
            self._after_truncate(st.st_ino, size, None)
