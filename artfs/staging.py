"""Staging: the writable directory of one artifact, on local disk, and its commit.

Each (project, artifact) has a ``StagingArea`` under the state directory::

    staging/<project>/<artifact>/
        files/      what was written: an upper layer over the base version
        control/    .metadata.json .description .aliases .base, as plain files
        state.db    whiteouts and opaque dirs over the base, the base itself,
                    digests of files hashed as they were written, the type
        status      what the last commit did or why it failed (read as .status)
        lock        flock held by a commit
        commit/     journal.json and hard links while a commit runs

Everything lives on disk, so a restart or a crash loses nothing staged. With a
``.base`` the view is an overlay: the base manifest's entries, hidden by
whiteouts (deleted paths) and opaque directories (re-made after a delete), and
shadowed by the upper layer. No byte of the base is copied until a write to a
base file needs its old bytes (overwriting one from the start copies nothing).

A commit hard-links each new staged file into ``commit/`` and hands the links
to ``commit_tree(move=True)``: a local store on the same filesystem renames
the link into its blobs, so the bytes are never copied, yet the staged names
stay until the version record exists. On failure (or after a kill, from the
journal) every staged file that the store took a link to is copied to an inode
of its own, so later writes can never reach a stored blob, and its mode and
mtime (which the store changes) are put back.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import shutil
import sqlite3
import stat
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from artfs import names
from artfs.cache import BlobReader
from artfs.config import format_size
from artfs.digest import Hasher
from artfs.manifest import DIR, FILE, SYMLINK, Manifest, ManifestBuilder
from artfs.objects import StoreError
from artfs.objects.local import fsync_dir
from artfs.repo import (
    CommitResult,
    ConflictError,
    NotFoundError,
    Repo,
    RepoError,
    Version,
    commit_tree,
)
from artfs.repo.commit import hash_files

log = logging.getLogger("artfs.staging")

METADATA, DESCRIPTION, ALIASES, BASE = ".metadata.json", ".description", ".aliases", ".base"
STATUS, COMMIT = ".status", ".commit"
CONTROL_FILES = (METADATA, DESCRIPTION, ALIASES, BASE)
RESERVED = frozenset((*CONTROL_FILES, STATUS, COMMIT))
DEFAULT_TYPE = "dataset"
_BASE_MAX = 4096
RELEASE_WAIT = 2.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS whiteout (path TEXT PRIMARY KEY);
CREATE TABLE IF NOT EXISTS opaque (path TEXT PRIMARY KEY);
CREATE TABLE IF NOT EXISTS hashed (ino INTEGER PRIMARY KEY, size INTEGER, digest TEXT);
"""


class StagingError(Exception):
    """A staging request refused; ``errno`` is what the filesystem returns."""

    def __init__(self, err: int, message: str) -> None:
        super().__init__(message)
        self.errno = err


def error_errno(e: BaseException) -> int:
    """The errno a failed staging or commit call maps to."""
    if isinstance(e, StagingError):
        return e.errno
    if isinstance(e, OSError) and e.errno:
        return e.errno
    if isinstance(e, sqlite3.Error) and "full" in str(e):
        return errno.ENOSPC  # the state directory's disk
    # A store error caused by the disk (a full store: ENOSPC) says so.
    cause = e.__cause__ or e.__context__
    if isinstance(cause, OSError) and cause.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
        return cause.errno
    if isinstance(e, NotFoundError):
        return errno.ENOENT
    if isinstance(e, names.BadName | RepoError | ValueError):
        return errno.EINVAL
    return errno.EIO


def _prefixes(path: str) -> Iterator[str]:
    """'a/b/c' -> 'a', 'a/b', 'a/b/c'."""
    i = path.find("/")
    while i != -1:
        yield path[:i]
        i = path.find("/", i + 1)
    yield path


def _join(parent: str, name: str) -> str:
    return f"{parent}/{name}" if parent else name


@dataclass(frozen=True)
class Attr:
    """What a staged entry looks like: from the upper layer or from the base."""

    kind: str
    mode: int  # permission bits only
    size: int
    mtime_ns: int
    ctime_ns: int
    target: str | None = None
    digest: str | None = None  # a base file, not copied up
    uid: int | None = None
    gid: int | None = None

    @property
    def is_dir(self) -> bool:
        return self.kind == DIR


def _attr_from_stat(st: os.stat_result, target: str | None = None) -> Attr:
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
    )


class StagedFile:
    """One open of a staged file (or control file) by the filesystem.

    Writes that run sequentially from offset 0 are hashed as they go; any
    other write, a truncate below what was hashed, or a write through another
    open of the same file drops the hasher, and the commit hashes the file.
    """

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


class StagingArea:
    """The staging directory of one artifact. Thread-safe; blocking calls."""

    def __init__(self, repo: Repo, project: str, artifact: str, root: Path) -> None:
        self.repo = repo
        self.project = project
        self.artifact = artifact
        self.root = root
        self.files = root / "files"
        self.control = root / "control"
        self.commit_dir = root / "commit"
        for d in (self.files, self.control):
            d.mkdir(parents=True, exist_ok=True)
        for name in CONTROL_FILES:
            (self.control / name).touch(exist_ok=True)
        # Namespace changes, writes and commits of this area, one at a time.
        self._lock = threading.RLock()
        self._idle = threading.Condition(self._lock)
        self._db_lock = threading.Lock()
        self._db = sqlite3.connect(root / "state.db", check_same_thread=False)
        self._db.executescript("PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;" + _SCHEMA)
        self._whiteouts = {r[0] for r in self._db.execute("SELECT path FROM whiteout")}
        self._opaque = {r[0] for r in self._db.execute("SELECT path FROM opaque")}
        self._open: dict[int, set[StagedFile]] = {}
        self._kv_cache: dict[str, str | None] = {}
        self._base: tuple[Version, Manifest] | None = None
        self._base_key: str | None = None
        with self._lock, self._commit_lock():
            self._recover()

    @property
    def ref(self) -> str:
        return f"{self.project}/{self.artifact}"

    def close(self) -> None:
        with self._db_lock:
            self._db.close()

    # -- small state -------------------------------------------------------

    def _kv(self, key: str) -> str | None:
        # Every lookup asks for the base: keep the few keys in memory too.
        if key not in self._kv_cache:
            with self._db_lock:
                row = self._db.execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()
            self._kv_cache[key] = row[0] if row else None
        return self._kv_cache[key]

    def _set_kv(self, key: str, value: str | None) -> None:
        with self._db_lock, self._db:
            if value is None:
                self._db.execute("DELETE FROM kv WHERE key = ?", (key,))
            else:
                self._db.execute("INSERT OR REPLACE INTO kv VALUES (?, ?)", (key, value))
        self._kv_cache[key] = value

    def _set_marks(
        self,
        add_whiteout: str | None = None,
        drop_whiteout: str | None = None,
        add_opaque: str | None = None,
        drop_below: str | None = None,
    ) -> None:
        """Change whiteouts and opaque dirs in one transaction, and in memory."""
        with self._db_lock, self._db:
            if drop_below is not None:
                prefix = drop_below + "/"
                gone_w = {p for p in self._whiteouts if p.startswith(prefix)}
                gone_o = {p for p in self._opaque if p.startswith(prefix) or p == drop_below}
                self._db.executemany("DELETE FROM whiteout WHERE path = ?", [(p,) for p in gone_w])
                self._db.executemany("DELETE FROM opaque WHERE path = ?", [(p,) for p in gone_o])
                self._whiteouts -= gone_w
                self._opaque -= gone_o
            if drop_whiteout is not None and drop_whiteout in self._whiteouts:
                self._db.execute("DELETE FROM whiteout WHERE path = ?", (drop_whiteout,))
                self._whiteouts.discard(drop_whiteout)
            if add_whiteout is not None:
                self._db.execute("INSERT OR IGNORE INTO whiteout VALUES (?)", (add_whiteout,))
                self._whiteouts.add(add_whiteout)
            if add_opaque is not None:
                self._db.execute("INSERT OR IGNORE INTO opaque VALUES (?)", (add_opaque,))
                self._opaque.add(add_opaque)

    def _hashed(self, ino: int, size: int) -> str | None:
        with self._db_lock:
            row = self._db.execute(
                "SELECT size, digest FROM hashed WHERE ino = ?", (ino,)
            ).fetchone()
        return row[1] if row and row[0] == size else None

    def _set_hashed(self, ino: int, size: int | None = None, digest: str | None = None) -> None:
        with self._db_lock, self._db:
            if digest is None:
                self._db.execute("DELETE FROM hashed WHERE ino = ?", (ino,))
            else:
                self._db.execute(
                    "INSERT OR REPLACE INTO hashed VALUES (?, ?, ?)", (ino, size, digest)
                )

    # -- type --------------------------------------------------------------

    def artifact_type(self) -> str:
        try:
            return self.repo.artifact(self.project, self.artifact).type
        except NotFoundError:
            return self._kv("type") or DEFAULT_TYPE

    def set_type(self, type: str) -> None:
        names.check_name(type, "artifact type")
        try:
            current = self.repo.artifact(self.project, self.artifact).type
        except NotFoundError:
            self._set_kv("type", type)
            return
        if current != type:
            raise StagingError(
                errno.EPERM,
                f"{self.ref} is of type {current!r}; the type is set at the first commit",
            )

    # -- the base ----------------------------------------------------------

    def base(self) -> tuple[Version, Manifest] | None:
        key = self._kv("base")
        if key is None:
            self._base, self._base_key = None, None
            return None
        if key != self._base_key:
            ref = names.Ref.parse(key)
            try:
                version = self.repo.version(ref.project, ref.artifact, int(ref.selector or "0"))
                self._base = (version, self.repo.manifest(version))
            except (RepoError, StoreError) as e:
                log.warning("%s: base %s is unreadable: %s", self.ref, key, e)
                self._base = None
            self._base_key = key
        return self._base

    def _resolve_base(self, text: str) -> Version | None:
        ref_text = text.strip()
        if not ref_text:
            return None
        if "/" in ref_text:
            ref = names.Ref.parse(ref_text, default_selector="latest")
        else:
            names.check_name(ref_text, "version or alias")
            ref = names.Ref(self.project, self.artifact, ref_text)
        try:
            return self.repo.resolve(ref)
        except NotFoundError as e:
            raise StagingError(errno.EINVAL, f"bad .base {ref_text!r}: {e}") from None

    def _apply_base(self, text: str) -> None:
        try:
            version = self._resolve_base(text)
        except (StagingError, names.BadName) as e:
            self._set_status(f"{e}; .base unchanged")
            log.warning("%s: %s", self.ref, e)
            raise
        if version is None:
            self._set_kv("base", None)
        else:
            self._set_kv("base", f"{version.project}/{version.artifact}:{version.number}")
        self.base()

    def _base_entry(self, path: str):
        """The base's entry at ``path`` unless a whiteout or opaque dir hides it."""
        base = self.base()
        if base is None or self._base_hidden(path):
            return None
        return base[1].lookup(path)

    def _base_hidden(self, path: str) -> bool:
        if not self._whiteouts and not self._opaque:
            return False
        for p in _prefixes(path):
            if p in self._whiteouts:
                return True
            if p != path and p in self._opaque:
                return True
        return False

    def _base_attr(self, e) -> Attr:
        version = self.base()[0]  # type: ignore[index]
        t = int(version.created * 1e9)
        return Attr(e.kind, e.mode & 0o7777, e.size, t, t, e.target, e.digest)

    # -- lookups -----------------------------------------------------------

    def _upper(self, path: str) -> Path:
        return self.files / path if path else self.files

    def _lstat_upper(self, path: str) -> os.stat_result | None:
        try:
            return os.lstat(self._upper(path))
        except (FileNotFoundError, NotADirectoryError):
            return None

    def stat(self, path: str) -> Attr | None:
        """The merged view's entry at ``path`` ('' is staging itself), or None."""
        st = self._lstat_upper(path)
        if st is not None:
            target = os.readlink(self._upper(path)) if stat.S_ISLNK(st.st_mode) else None
            return _attr_from_stat(st, target)
        e = self._base_entry(path)
        return self._base_attr(e) if e is not None else None

    def listdir(self, path: str) -> list[tuple[str, Attr]]:
        """Entries of a merged directory, sorted by name."""
        out: dict[str, Attr] = {}
        base = self.base()
        st = self._lstat_upper(path)
        if st is not None and not stat.S_ISDIR(st.st_mode):
            raise StagingError(errno.ENOTDIR, f"not a directory: {path}")
        if st is not None:
            with os.scandir(self._upper(path)) as it:
                for entry in it:
                    if not path and entry.name in RESERVED:
                        continue
                    est = entry.stat(follow_symlinks=False)
                    target = os.readlink(entry.path) if stat.S_ISLNK(est.st_mode) else None
                    out[entry.name] = _attr_from_stat(est, target)
        if base is not None and path not in self._opaque:
            e = self._base_entry(path)
            if e is not None and e.is_dir:
                for child in base[1].children(e.id):
                    if child.name in out or (not path and child.name in RESERVED):
                        continue
                    if not self._base_hidden(_join(path, child.name)):
                        out[child.name] = self._base_attr(child)
            elif st is None:
                raise StagingError(errno.ENOENT, f"no such directory: {path}")
        elif st is None:
            raise StagingError(errno.ENOENT, f"no such directory: {path}")
        return sorted(out.items())

    def _existing(self, path: str, *, dir_ok: bool = True) -> Attr:
        a = self.stat(path)
        if a is None:
            raise StagingError(errno.ENOENT, f"no such file: {path}")
        if a.is_dir and not dir_ok:
            raise StagingError(errno.EISDIR, f"is a directory: {path}")
        return a

    def readlink(self, path: str) -> str:
        a = self._existing(path)
        if a.kind != SYMLINK or a.target is None:
            raise StagingError(errno.EINVAL, f"not a symlink: {path}")
        return a.target

    def is_empty(self) -> bool:
        """Nothing staged: no base, no files, no deletions."""
        if self._kv("base") is not None or self._whiteouts:
            return False
        with os.scandir(self.files) as it:
            return next(it, None) is None

    # -- making room in the upper layer -----------------------------------

    def _check_new(self, path: str) -> None:
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

    def _upper_dirs(self, path: str) -> None:
        """Make the upper layer hold directory ``path`` (a base dir gets an empty twin)."""
        if not path or self._lstat_upper(path) is not None:
            return
        self._upper_dirs(path.rpartition("/")[0])
        os.mkdir(self._upper(path), 0o755)

    def _mark_created(self, path: str) -> None:
        # A path deleted from the base and made again must not show the old
        # base entries below it.
        if path in self._whiteouts:
            self._set_marks(drop_whiteout=path, add_opaque=path)

    def _copy_up(self, path: str) -> os.stat_result:
        """Bring a base file or symlink into the upper layer; returns its stat there."""
        st = self._lstat_upper(path)
        if st is not None:
            return st
        e = self._base_entry(path)
        if e is None:
            raise StagingError(errno.ENOENT, f"no such file: {path}")
        self._upper_dirs(path.rpartition("/")[0])
        dest = self._upper(path)
        if e.is_symlink:
            os.symlink(e.target, dest)
            return os.lstat(dest)
        if e.is_dir:
            os.mkdir(dest, 0o755)
            return os.lstat(dest)
        tmp = dest.with_name(f".artfs-copy-{uuid.uuid4().hex}")
        src = self.repo.cache.source_path(e.digest)
        try:
            shutil.copyfile(src, tmp)
            os.chmod(tmp, e.mode & 0o777)
            os.rename(tmp, dest)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        st = os.lstat(dest)
        self._set_hashed(st.st_ino, e.size, e.digest)
        return st

    # -- namespace operations ---------------------------------------------

    def create(self, path: str, mode: int) -> StagedFile:
        with self._lock:
            self._check_new(path)
            self._upper_dirs(path.rpartition("/")[0])
            fd = os.open(self._upper(path), os.O_RDWR | os.O_CREAT | os.O_EXCL, mode & 0o777)
            os.fchmod(fd, mode & 0o777)
            self._mark_created(path)
            h = self._handle(path, fd, writable=True)
            h.wrote = True  # an empty file is hashed too: by its empty hasher
            return h

    def mkdir(self, path: str, mode: int = 0o755) -> Attr:
        with self._lock:
            self._check_new(path)
            self._upper_dirs(path.rpartition("/")[0])
            os.mkdir(self._upper(path), mode & 0o777)
            self._mark_created(path)
            return self.stat(path)  # type: ignore[return-value]

    def symlink(self, path: str, target: str) -> Attr:
        with self._lock:
            self._check_new(path)
            self._upper_dirs(path.rpartition("/")[0])
            os.symlink(target, self._upper(path))
            self._mark_created(path)
            return self.stat(path)  # type: ignore[return-value]

    def unlink(self, path: str) -> None:
        with self._lock:
            self._existing(path, dir_ok=False)
            self._remove(path)

    def rmdir(self, path: str) -> None:
        with self._lock:
            a = self.stat(path)
            if a is None:
                raise StagingError(errno.ENOENT, f"no such directory: {path}")
            if not a.is_dir:
                raise StagingError(errno.ENOTDIR, f"not a directory: {path}")
            if self.listdir(path):
                raise StagingError(errno.ENOTEMPTY, f"not empty: {path}")
            self._remove(path)

    def _remove(self, path: str) -> None:
        in_base = self._base_entry(path) is not None
        if in_base:
            # Whiteout first: a crash in between leaves the path deleted.
            self._set_marks(add_whiteout=path, drop_below=path)
        st = self._lstat_upper(path)
        if st is not None:
            if stat.S_ISDIR(st.st_mode):
                shutil.rmtree(self._upper(path))
            else:
                os.unlink(self._upper(path))
                if st.st_nlink == 1 and st.st_ino not in self._open:
                    self._set_hashed(st.st_ino)
        if not in_base:
            self._set_marks(drop_below=path)

    def _has_base_content(self, path: str) -> bool:
        e = self._base_entry(path)
        return e is not None and e.is_dir and path not in self._opaque

    def rename(self, old: str, new: str, flags: int = 0) -> None:
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
            if parent is None or not parent.is_dir:
                raise StagingError(errno.ENOENT, f"no such directory for {new}")
            if b is not None:
                if noreplace:
                    raise StagingError(errno.EEXIST, f"exists: {new}")
                if a.is_dir and not b.is_dir:
                    raise StagingError(errno.ENOTDIR, f"not a directory: {new}")
                if not a.is_dir and b.is_dir:
                    raise StagingError(errno.EISDIR, f"is a directory: {new}")
                if b.is_dir and self.listdir(new):
                    raise StagingError(errno.ENOTEMPTY, f"not empty: {new}")
            if a.is_dir and self._has_base_content(old):
                # Moving a base directory would need every entry below it
                # re-addressed; like overlayfs, tell mv to copy instead.
                raise StagingError(errno.EXDEV, f"{old} holds base files: copy it instead")
            self._copy_up(old)
            if b is not None:
                self._remove(new)
            self._upper_dirs(new.rpartition("/")[0])
            old_in_base = self._base_entry(old) is not None
            os.rename(self._upper(old), self._upper(new))
            if old_in_base:
                self._set_marks(add_whiteout=old, drop_below=old)
            self._mark_created(new)
            if a.is_dir and self._base_entry(new) is not None:
                self._set_marks(add_opaque=new)

    # -- attributes ----------------------------------------------------------

    def chmod(self, path: str, mode: int) -> None:
        with self._lock:
            a = self._existing(path)
            if a.kind == SYMLINK:
                return
            if a.digest is not None and (a.mode & 0o777) == (mode & 0o777):
                return
            if a.is_dir and self._lstat_upper(path) is None:
                return  # a base directory: manifests do not keep directory modes
            self._copy_up(path)
            os.chmod(self._upper(path), mode & 0o7777)

    def utimens(self, path: str, atime_ns: int | None, mtime_ns: int | None) -> None:
        with self._lock:
            st = self._lstat_upper(path)
            if st is None:
                if self.stat(path) is None:
                    raise StagingError(errno.ENOENT, f"no such file: {path}")
                return  # manifests keep no times: nothing to copy a base file for
            times = (
                atime_ns if atime_ns is not None else st.st_atime_ns,
                mtime_ns if mtime_ns is not None else st.st_mtime_ns,
            )
            os.utime(self._upper(path), ns=times, follow_symlinks=False)

    def truncate(self, path: str, size: int) -> None:
        with self._lock:
            a = self._existing(path)
            if a.kind != FILE:
                raise StagingError(
                    errno.EISDIR if a.is_dir else errno.EINVAL, f"not a file: {path}"
                )
            if size == 0 and a.digest is not None:
                self._empty_up(path, a.mode)
            st = self._copy_up(path)
            os.truncate(self._upper(path), size)
            self._after_truncate(st.st_ino, size, None)

    def _after_truncate(self, ino: int, size: int, by: StagedFile | None) -> None:
        self._set_hashed(ino)
        for h in self._open.get(ino, ()):
            h.recorded = False
            if h.hasher is not None and h.hasher.size > size:
                h.hasher = None

    # -- open files ------------------------------------------------------

    def open(self, path: str, flags: int) -> StagedFile:
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
            fd = os.open(self._upper(path), os.O_RDWR if writable else os.O_RDONLY)
            handle = self._handle(path, fd, writable=writable)
            if flags & os.O_TRUNC:
                handle.truncate(0)
            return handle

    def _empty_up(self, path: str, mode: int) -> None:
        """A base file truncated to nothing: an empty upper file, no bytes copied."""
        self._upper_dirs(path.rpartition("/")[0])
        fd = os.open(self._upper(path), os.O_RDWR | os.O_CREAT | os.O_EXCL, mode & 0o777)
        os.close(fd)

    def _ensure_fd(self, h: StagedFile) -> None:
        """Give a handle opened on a base file its upper file, copying it up if still needed."""
        if h.fd is not None:
            return
        st = self._copy_up(h.path)
        h.fd = os.open(self._upper(h.path), os.O_RDWR)
        h.ino = st.st_ino
        self._open.setdefault(h.ino, set()).add(h)

    def _handle(self, path: str, fd: int, *, writable: bool) -> StagedFile:
        h = StagedFile(self, path, fd, None, writable=writable)
        if writable:
            self._open.setdefault(h.ino, set()).add(h)
        return h

    def _write(self, h: StagedFile, offset: int, data: bytes) -> int:
        if not h.writable:
            raise StagingError(errno.EBADF, f"{h.path} is not open for writing")
        if h.control is not None:
            return self._write_control(h, offset, data)
        with self._lock:
            self._ensure_fd(h)
            assert h.fd is not None
            if h.stale:
                raise StagingError(errno.ESTALE, f"{h.path} was committed; open it again")
            # A digest recorded for this inode (before this open, or at a flush
            # of any open) is wrong from this write on: drop it first.
            others = [o for o in self._open.get(h.ino, ()) if o is not h]
            if not h.wrote or h.recorded or any(o.recorded for o in others):
                self._set_hashed(h.ino)
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

    def _truncate_handle(self, h: StagedFile, size: int) -> None:
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

    def _record_hash(self, h: StagedFile) -> None:
        if h.wrote and h.hasher is not None and h.fd is not None and not h.stale:
            st = os.fstat(h.fd)
            if st.st_size == h.hasher.size and st.st_nlink > 0 and not h.recorded:
                self._set_hashed(h.ino, st.st_size, h.hasher.hexdigest())
                h.recorded = True  # until the next write: flush, then release

    def _flush(self, h: StagedFile) -> None:
        """close(2) of one descriptor: the data is all here, though the open may live on."""
        if h.control is not None or not h.writable:
            return
        with self._lock:
            self._record_hash(h)
            h.flushed = True

    def _release(self, h: StagedFile) -> None:
        with self._lock:
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

    # -- control files -----------------------------------------------------

    def control_attr(self, name: str) -> Attr:
        if name == STATUS:
            text = self.status().encode()
            status = self.root / "status"
            st = os.stat(status if status.exists() else self.control)
            return Attr(FILE, 0o444, len(text), st.st_mtime_ns, st.st_ctime_ns)
        if name == COMMIT:  # its time: the last commit made here
            last = self._kv("last_commit")
            t = int(float(last) * 1e9) if last else os.stat(self.root).st_mtime_ns
            return Attr(FILE, 0o644, 0, t, t)
        return _attr_from_stat(os.stat(self.control / name))

    def open_control(self, name: str, flags: int) -> StagedFile:
        writable = (flags & os.O_ACCMODE) != os.O_RDONLY or bool(flags & os.O_TRUNC)
        if name == STATUS:
            if writable:
                raise StagingError(errno.EPERM, ".status is written by commits only")
            return _BytesFile(self, STATUS, self.status().encode())
        if name == COMMIT:
            return _BytesFile(self, COMMIT, b"")
        fd = os.open(self.control / name, os.O_RDWR if writable else os.O_RDONLY)
        h = StagedFile(self, name, fd, None, writable=writable, control=name)
        if name == BASE and writable:
            # `echo v9 > .base` truncates before it writes: a refused ref
            # puts back what was there.
            h.backup = ((self.control / BASE).read_bytes(), self._kv("base"))
        if flags & os.O_TRUNC:
            self.truncate_control(name, 0)
        return h

    def read_control(self, name: str) -> str:
        if name == STATUS:
            return self.status()
        return (self.control / name).read_text(errors="replace")

    def _write_control(self, h: StagedFile, offset: int, data: bytes) -> int:
        assert h.fd is not None and h.control is not None
        with self._lock:
            if h.control == BASE:
                current = (self.control / BASE).read_bytes()
                if offset + len(data) > _BASE_MAX:
                    raise StagingError(errno.EFBIG, ".base holds one ref")
                new = current[:offset].ljust(offset, b"\0") + data + current[offset + len(data) :]
                try:
                    self._apply_base(new.decode())
                except (StagingError, names.BadName, UnicodeDecodeError) as e:
                    if h.backup is not None:
                        (self.control / BASE).write_bytes(h.backup[0])
                        self._set_kv("base", h.backup[1])
                        self.base()
                    if isinstance(e, UnicodeDecodeError):
                        raise StagingError(errno.EINVAL, ".base must be text") from None
                    raise
            return os.pwrite(h.fd, data, offset)

    def truncate_control(self, name: str, size: int) -> None:
        with self._lock:
            path = self.control / name
            if name == BASE:
                self._apply_base(path.read_bytes()[:size].decode(errors="replace"))
            os.truncate(path, size)

    def clear_control(self, name: str) -> None:
        """``rm staging/.description``: the control file becomes empty."""
        if name in (STATUS, COMMIT):
            raise StagingError(errno.EPERM, f"{name} cannot be removed")
        self.truncate_control(name, 0)

    def status(self) -> str:
        try:
            return (self.root / "status").read_text()
        except FileNotFoundError:
            return "nothing committed yet\n"

    def _set_status(self, text: str) -> None:
        tmp = self.root / "status.tmp"
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())
        tmp.write_text(f"{text}\n{stamp} UTC\n")
        os.replace(tmp, self.root / "status")

    # -- commit ------------------------------------------------------------

    @contextlib.contextmanager
    def _commit_lock(self) -> Iterator[None]:
        """Across processes too: one commit of this staging at a time."""
        fd = os.open(self.root / "lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _commit_options(self) -> dict[str, Any]:
        text = self.read_control(METADATA).strip()
        metadata = None
        if text:
            try:
                metadata = json.loads(text)
            except ValueError as e:
                raise StagingError(errno.EINVAL, f"bad .metadata.json: not JSON ({e})") from None
            if not isinstance(metadata, dict):
                raise StagingError(errno.EINVAL, "bad .metadata.json: must be a JSON object")
        aliases = []
        for line in self.read_control(ALIASES).splitlines():
            for alias in line.replace(",", " ").split():
                try:
                    names.check_alias(alias)
                except names.BadName as e:
                    raise StagingError(errno.EINVAL, f"bad .aliases: {e}") from None
                aliases.append(alias)
        return {
            "metadata": metadata,
            "description": self.read_control(DESCRIPTION).rstrip("\n"),
            "aliases": aliases,
        }

    def _build(self) -> tuple[ManifestBuilder, list[tuple[str, os.stat_result]]]:
        """The tree to commit: the base with deletions applied, then the upper layer.

        Returns the builder (files of the upper layer not yet added) and the
        upper layer's regular files with their stat.
        """
        base = self.base()
        if self._kv("base") is not None and base is None:
            raise StagingError(errno.ENOENT, f"the base {self._kv('base')} no longer exists")
        builder = ManifestBuilder.from_manifest(base[1]) if base else ManifestBuilder()
        for p in sorted(self._whiteouts | self._opaque):
            builder.remove(p)
        files: list[tuple[str, os.stat_result]] = []
        stack = [""]
        while stack:
            rel = stack.pop()
            with os.scandir(self._upper(rel)) as it:
                entries = sorted(it, key=lambda e: e.name)
            for entry in entries:
                if entry.name.startswith(".artfs-copy-"):
                    continue
                path = _join(rel, entry.name)
                st = entry.stat(follow_symlinks=False)
                if stat.S_ISDIR(st.st_mode):
                    try:
                        builder.add_dir(path)  # merges with a base directory
                    except ValueError:
                        builder.remove(path)
                        builder.add_dir(path)
                    stack.append(path)
                else:
                    builder.remove(path)
                    if stat.S_ISLNK(st.st_mode):
                        builder.add_symlink(path, os.readlink(entry.path))
                    elif stat.S_ISREG(st.st_mode):
                        files.append((path, st))
                    else:
                        raise StagingError(errno.EINVAL, f"cannot commit {path}: not a file")
        return builder, files

    def commit(self, logged_by: str | None = None) -> CommitResult:
        """Make the next version from staging; staging is then empty.

        On any failure staging is as it was and the error (a StagingError,
        RepoError, StoreError or OSError) says why; ``.status`` says it too.
        """
        with self._lock, self._commit_lock():
            self._recover()
            try:
                return self._commit(logged_by)
            except BaseException as e:
                self._set_status(f"commit of {self.ref} failed: {e}")
                log.warning("commit of %s failed: %s", self.ref, e)
                raise

    def _commit(self, logged_by: str | None) -> CommitResult:
        # The kernel sends a release after close(2) returns: give the last
        # files of a cp a moment to arrive.
        self._idle.wait_for(lambda: not self._open, timeout=RELEASE_WAIT)
        busy = [h.path for hs in self._open.values() for h in hs if not h.flushed]
        if busy:
            raise StagingError(errno.EBUSY, f"{busy[0]} is open for writing")
        for hs in self._open.values():
            for h in hs:
                h.stale = True  # its inode may become a stored blob
        if self.is_empty():
            raise StagingError(errno.EINVAL, "nothing staged: write files or a .base first")
        options = self._commit_options()
        type = self.artifact_type()
        builder, files = self._build()
        stored: set[str] = set()
        base = self.base()
        if base is not None:
            v = base[0]
            try:
                self.repo.version(v.project, v.artifact, v.number)
            except NotFoundError:
                raise StagingError(errno.ENOENT, f"the base {v.ref} was deleted") from None
            stored = base[1].digests()  # kept by gc while that version lives

        known: dict[str, Path] = {}
        unknown: list[tuple[str, Path]] = []
        for path, st in files:
            digest = self._hashed(st.st_ino, st.st_size)
            if digest is None:
                unknown.append((path, self._upper(path)))
            else:
                builder.add_file(path, st.st_size, digest, executable=bool(st.st_mode & 0o100))
                known.setdefault(digest, self._upper(path))
        sources = {**known, **hash_files(unknown, builder)}
        log.info(
            "commit of %s: %d files hashed as written, %d hashed now",
            self.ref,
            len(files) - len(unknown),
            len(unknown),
        )
        tree = builder.tree_digest()

        try:
            before = self.repo.next_version_number(self.project, self.artifact)
        except (RepoError, StoreError):
            before = 0
        journal = {
            "tree": tree,
            "before": before,
            "aliases": options["aliases"],
            "files": [
                [str(p.relative_to(self.files)), st.st_mode, st.st_mtime_ns]
                for d, p in sources.items()
                for st in [os.lstat(p)]
            ],
        }
        self._write_journal(journal)
        links = self._link_sources(sources)
        try:
            result = commit_tree(
                self.repo,
                self.project,
                self.artifact,
                builder,
                links,
                type=type,
                logged_by=logged_by,
                move=links is not sources,
                stored=stored,
                **options,
            )
        except BaseException:
            if self._settle(journal, failed=True):
                version = self._committed_version(journal)
                if version is not None:
                    return CommitResult(version, True, 0, 0, 0)
            raise
        self._finish(result)
        return result

    def _write_journal(self, journal: dict[str, Any]) -> None:
        self.commit_dir.mkdir(exist_ok=True)
        tmp = self.commit_dir / "journal.tmp"
        with open(tmp, "w") as f:
            json.dump(journal, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.commit_dir / "journal.json")
        fsync_dir(self.commit_dir)

    def _link_sources(self, sources: dict[str, Path]) -> dict[str, Path]:
        """Hard links the store may take, or the files themselves for a remote store."""
        from artfs.repo import layout

        if self.repo.store.local_path(layout.CONFIG) is None:
            return sources
        links_dir = self.commit_dir / "links"
        links_dir.mkdir(exist_ok=True)
        links = {}
        for i, (digest, path) in enumerate(sources.items()):
            link = links_dir / str(i)
            try:
                os.link(path, link)
            except OSError as e:
                if e.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK):
                    raise
                return sources  # no hard links here: let the store copy
            links[digest] = link
        return links

    def _committed_version(self, journal: dict[str, Any]) -> Version | None:
        """The version a journaled commit made, if it got as far as its record."""
        try:
            versions = self.repo.versions(self.project, self.artifact, with_aliases=False)
        except (RepoError, StoreError):
            return None
        for v in reversed(versions):
            if v.number >= journal["before"] and v.tree == journal["tree"]:
                return v
        return None

    def _settle(self, journal: dict[str, Any], *, failed: bool) -> bool:
        """After a failed or killed commit: finish it if its version exists, else
        put staging back as it was. Returns True if the commit was finished."""
        shutil.rmtree(self.commit_dir / "links", ignore_errors=True)
        version = self._committed_version(journal)
        if version is not None:
            try:
                self.repo.advance_latest(self.project, self.artifact, version.number)
                for alias in journal.get("aliases", []):
                    self.repo.set_alias(version, alias)
            except (RepoError, StoreError) as e:
                log.warning(
                    "%s: v%d exists but latest could not move: %s", self.ref, version.number, e
                )
            else:
                self._clear()
                self._set_status(
                    f"committed {version.ref}: {version.file_count} files, "
                    f"{format_size(version.size)} (finished after an interrupted commit)"
                )
                (self.commit_dir / "journal.json").unlink(missing_ok=True)
                return True
        for rel, mode, mtime_ns in journal["files"]:
            self._own_inode(self.files / rel, mode, mtime_ns)
        (self.commit_dir / "journal.json").unlink(missing_ok=True)
        if not failed:
            self._set_status(f"commit of {self.ref} was interrupted; staging is as it was")
        return False

    def _own_inode(self, path: Path, mode: int, mtime_ns: int) -> None:
        """Give a staged file back its own inode, mode and mtime if the store shares it."""
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return
        if st.st_nlink > 1:
            tmp = path.with_name(f".artfs-copy-{uuid.uuid4().hex}")
            shutil.copyfile(path, tmp)
            os.chmod(tmp, stat.S_IMODE(mode))
            os.utime(tmp, ns=(mtime_ns, mtime_ns))
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            os.rename(tmp, path)
            with self._db_lock:
                row = self._db.execute(
                    "SELECT size, digest FROM hashed WHERE ino = ?", (st.st_ino,)
                ).fetchone()
            self._set_hashed(st.st_ino)
            if row:
                self._set_hashed(os.lstat(path).st_ino, row[0], row[1])
            return
        if st.st_mode != mode:
            os.chmod(path, stat.S_IMODE(mode))
        if st.st_mtime_ns != mtime_ns:
            os.utime(path, ns=(st.st_atime_ns, mtime_ns))

    def _recover(self) -> None:
        for trash in self.root.glob("trash-*"):
            shutil.rmtree(trash, ignore_errors=True)
        journal_path = self.commit_dir / "journal.json"
        if not journal_path.exists():
            shutil.rmtree(self.commit_dir / "links", ignore_errors=True)
            return
        try:
            journal = json.loads(journal_path.read_text())
        except ValueError:
            journal_path.unlink()
            return
        log.warning("%s: recovering from an interrupted commit", self.ref)
        self._settle(journal, failed=False)

    def _finish(self, result: CommitResult) -> None:
        v = result.version
        self._clear()
        self._set_kv("last_commit", str(time.time()))
        if result.created:
            self._set_status(
                f"committed {v.ref}: {v.file_count} files, {format_size(v.size)}, "
                f"{format_size(result.new_bytes)} new"
            )
        else:
            self._set_status(f"unchanged: identical to {v.ref}, no new version")
        shutil.rmtree(self.commit_dir, ignore_errors=True)

    def _clear(self) -> None:
        """Empty staging after a commit: files, deletions, base and control files."""
        trash = self.root / f"trash-{uuid.uuid4().hex}"
        os.rename(self.files, trash)
        self.files.mkdir()
        with self._db_lock, self._db:
            for table in ("whiteout", "opaque", "hashed"):
                self._db.execute(f"DELETE FROM {table}")
            self._db.execute("DELETE FROM kv WHERE key = 'base'")
        self._kv_cache["base"] = None
        self._whiteouts.clear()
        self._opaque.clear()
        self._base, self._base_key = None, None
        for name in CONTROL_FILES:
            os.truncate(self.control / name, 0)
        shutil.rmtree(trash, ignore_errors=True)


class _BytesFile(StagedFile):
    """A read-only view of fixed bytes (.status) or nothing (.commit)."""

    def __init__(self, area: StagingArea, name: str, data: bytes) -> None:
        super().__init__(area, name, None, None, writable=False, control=name)
        self._data = data

    def read(self, offset: int, size: int) -> bytes:
        return self._data[offset : offset + size]

    def write(self, offset: int, data: bytes) -> int:
        return len(data) if self.path == COMMIT else 0

    def truncate(self, size: int) -> None:
        pass

    def release(self) -> None:
        pass


class StagingManager:
    """Every staging area of one state directory, opened on first use."""

    def __init__(self, repo: Repo, state_dir: Path) -> None:
        self.repo = repo
        self.root = Path(state_dir) / "staging"
        self.root.mkdir(parents=True, exist_ok=True)
        self._areas: dict[tuple[str, str], StagingArea] = {}
        self._lock = threading.Lock()

    def area(self, project: str, artifact: str) -> StagingArea:
        names.check_name(project, "project name")
        names.check_name(artifact, "artifact name")
        with self._lock:
            a = self._areas.get((project, artifact))
            if a is None:
                a = StagingArea(self.repo, project, artifact, self.root / project / artifact)
                self._areas[(project, artifact)] = a
            return a

    def local_artifacts(self, project: str) -> list[str]:
        """Artifacts made by mkdir here and not committed yet (or with staging in use)."""
        try:
            entries = os.listdir(self.root / project)
        except (FileNotFoundError, NotADirectoryError):
            return []
        out = []
        for name in entries:
            try:
                names.check_name(name)
            except names.BadName:
                continue
            out.append(name)
        return sorted(out)

    def create_artifact(self, project: str, artifact: str) -> StagingArea:
        """``mkdir proj/name``: the artifact exists here until its first commit stores it."""
        names.check_name(artifact, "artifact name")
        self.repo.project(project)
        try:
            self.repo.artifact(project, artifact)
        except NotFoundError:
            pass
        else:
            raise StagingError(errno.EEXIST, f"artifact {project}/{artifact} exists")
        if artifact in self.local_artifacts(project):
            raise StagingError(errno.EEXIST, f"artifact {project}/{artifact} exists")
        return self.area(project, artifact)

    def remove_artifact(self, project: str, artifact: str) -> None:
        """``rmdir proj/name`` of an artifact that was never committed and stages nothing."""
        try:
            self.repo.artifact(project, artifact)
        except NotFoundError:
            pass
        else:
            raise StagingError(errno.EPERM, f"{project}/{artifact} has versions: use artfs delete")
        if artifact not in self.local_artifacts(project):
            raise StagingError(errno.ENOENT, f"no artifact {project}/{artifact}")
        area = self.area(project, artifact)
        with area._lock:
            if not area.is_empty():
                raise StagingError(errno.ENOTEMPTY, f"{project}/{artifact} has staged files")
            area.close()
            with self._lock:
                self._areas.pop((project, artifact), None)
            shutil.rmtree(area.root)

    def create_project(self, name: str) -> None:
        names.check_name(name, "project name")
        try:
            self.repo.create_project(name, exist_ok=False)
        except ConflictError as e:
            raise StagingError(errno.EEXIST, str(e)) from None

    def close(self) -> None:
        with self._lock:
            for a in self._areas.values():
                a.close()
            self._areas.clear()
