"""A store in a local directory.

Atomicity comes from the filesystem: every write goes to a temporary file in
``.tmp/`` that is fsynced (a batch of them: one ``syncfs``), then linked
(create-only: ``link`` fails if the name exists) or renamed (plain and
compare-and-swap) into place, and the directory is fsynced before the call
returns. Compare-and-swap holds across
processes through an exclusive ``flock`` on ``.lock``.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import shutil
import stat
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO

from artfs.fsutil import flock, fsync_dir, fsync_file
from artfs.hooks import pause_point
from artfs.objects.base import (
    PUT_WORKERS,
    Listing,
    NotFound,
    ObjectInfo,
    ObjectStore,
    PreconditionFailed,
    StoreError,
)

_COPY_CHUNK = 8 << 20


def _etag(st: os.stat_result) -> str:
    # A write always lands as a new inode (rename or link of a fresh temp
    # file) whose mtime _stamp set to the nanosecond: a freed inode number
    # can be reused at once, but not with the same mtime.
    return f"{st.st_ino:x}-{st.st_mtime_ns:x}-{st.st_size:x}"


def _stamp(fd: int) -> None:
    """Give a new object a fine-grained mtime of now: it is part of the etag,
    and gc measures a blob's age by it (a moved-in file keeps its old one)."""
    now = time.time_ns()
    os.utime(fd, ns=(now, now))


def _copy(src: int, dst: int) -> None:
    """Copy a whole file between descriptors, in the kernel when it can."""
    while True:
        try:
            n = os.copy_file_range(src, dst, _COPY_CHUNK)
        except OSError as e:
            if e.errno not in (errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL):
                raise
            break
        if n == 0:
            return
    while chunk := os.read(src, _COPY_CHUNK):
        view = memoryview(chunk)
        while view:
            view = view[os.write(dst, view) :]


_BATCH_FILES = 4096
# A local copy is the kernel's CPU work: threads beyond the cores only
# contend. Measured on 2 cores, 16,384 files of 4 KiB: 8 threads 6.2-6.8 s,
# 2 threads 4.6-5.0 s (a .tmp directory per batch changed nothing, so it is
# not that directory's lock). A remote store's puts keep PUT_WORKERS.
_COPY_WORKERS = max(1, min(PUT_WORKERS, os.cpu_count() or 1))
# (index of the item, the file to link, where, whether that file is our copy
# in .tmp/ and not the caller's own): a file of a batch, ready.
_Staged = tuple[int, Path, Path, bool]
_BLOB_MODE = stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH
_TMP_ABANDONED = 24 * 3600.0
_STAGE_CHUNK = 32
_libc = ctypes.CDLL(None, use_errno=True)
# A lever a benchmark turns off to measure it (ARTFS_BENCH_OFF=syncfs-names):
# the names of a batch made durable by one syncfs instead of a fsync per directory.
SYNCFS_NAMES = "syncfs-names" not in os.environ.get("ARTFS_BENCH_OFF", "").split(",")


def _syncfs(path: Path) -> bool:
    """Flush everything written to the filesystem holding ``path``; False if unavailable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        return getattr(_libc, "syncfs", None) is not None and _libc.syncfs(fd) == 0
    finally:
        os.close(fd)


class LocalStore(ObjectStore):
    is_local = True

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).absolute()
        self.url = str(self.root)
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            (self.root / ".tmp").mkdir(exist_ok=True)
            self._dev = os.stat(self.root).st_dev
        except OSError as e:
            raise StoreError(f"cannot use {self.root} as a store: {e.strerror}") from e
        self._sweep_tmp()

    def _sweep_tmp(self) -> None:
        """Remove temporary files a killed writer left, once they are surely abandoned."""
        cutoff = time.time() - _TMP_ABANDONED
        with contextlib.suppress(OSError), os.scandir(self.root / ".tmp") as it:
            for entry in it:
                with contextlib.suppress(OSError):
                    if entry.stat(follow_symlinks=False).st_mtime < cutoff:
                        os.unlink(entry.path)

    def temp_objects(self) -> list[ObjectInfo]:
        out = []
        with contextlib.suppress(OSError), os.scandir(self.root / ".tmp") as it:
            for entry in it:
                with contextlib.suppress(OSError):
                    st = entry.stat(follow_symlinks=False)
                    out.append(ObjectInfo(f".tmp/{entry.name}", st.st_size, "", st.st_mtime))
        return out

    def delete_temp(self, key: str) -> None:
        name = key.removeprefix(".tmp/")
        if not name or "/" in name or name in (".", ".."):
            raise ValueError(f"bad temp key {key!r}")
        path = self.root / ".tmp" / name
        try:
            path.unlink()
        except FileNotFoundError:
            return
        except IsADirectoryError:
            shutil.rmtree(path, ignore_errors=True)
        except OSError as e:
            raise StoreError(f"cannot delete {path}: {e.strerror}") from e

    # -- paths --------------------------------------------------------------

    def _path(self, key: str) -> Path:
        parts = key.split("/")
        if not key or any(p in ("", ".", "..") for p in parts) or key.startswith("."):
            raise ValueError(f"bad store key {key!r}")
        return self.root.joinpath(*parts)

    def local_path(self, key: str) -> Path | None:
        return self._path(key)

    def _ensure_parent(self, path: Path, made: set[Path] | None = None) -> None:
        """Make ``path``'s missing parents, each durable at once, or (given
        ``made``) added to it for the caller to make durable."""
        parent = path.parent
        if parent.is_dir():
            return
        missing = []
        p = parent
        while not p.is_dir():
            missing.append(p)
            p = p.parent
        for d in reversed(missing):
            with contextlib.suppress(FileExistsError):
                d.mkdir()
            if made is None:
                fsync_dir(d.parent)
            else:
                made.add(d.parent)

    def _tmp_path(self) -> Path:
        return self.root / ".tmp" / uuid.uuid4().hex

    def _write_tmp(self, data: bytes) -> Path:
        tmp = self._tmp_path()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            view = memoryview(data)
            while view:
                n = os.write(fd, view)
                view = view[n:]
            _stamp(fd)
            os.fsync(fd)
        finally:
            os.close(fd)
        return tmp

    def _install(self, tmp: Path, dest: Path, *, if_absent: bool) -> None:
        """Put a durable temp file at ``dest``; the temp name is gone afterwards."""
        self._ensure_parent(dest)
        try:
            if if_absent:
                try:
                    os.link(tmp, dest)
                except FileExistsError:
                    raise PreconditionFailed(f"exists: {dest.relative_to(self.root)}") from None
                finally:
                    tmp.unlink(missing_ok=True)
            else:
                os.replace(tmp, dest)
            fsync_dir(dest.parent)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            raise StoreError(f"cannot write {dest}: {e.strerror}") from e

    # -- interface ----------------------------------------------------------

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise NotFound(key) from None

    def get_tagged(self, key: str) -> tuple[bytes, str]:
        # One open: the etag is the stat of the very file read (writes replace
        # the inode, so its bytes cannot change under the descriptor).
        try:
            fd = os.open(self._path(key), os.O_RDONLY)
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise NotFound(key) from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise NotFound(key)
            chunks = []
            while chunk := os.read(fd, max(st.st_size, 1 << 16)):
                chunks.append(chunk)
            return b"".join(chunks), _etag(st)
        except IsADirectoryError:
            raise NotFound(key) from None
        finally:
            os.close(fd)

    def get_range(self, key: str, start: int, length: int) -> bytes:
        try:
            fd = os.open(self._path(key), os.O_RDONLY)
        except (FileNotFoundError, NotADirectoryError):
            raise NotFound(key) from None
        try:
            return os.pread(fd, length, start)
        finally:
            os.close(fd)

    def download(self, key: str, out: BinaryIO) -> int:
        try:
            src = open(self._path(key), "rb")  # noqa: SIM115 - closed below
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise NotFound(key) from None
        with src:
            total = 0
            while chunk := src.read(_COPY_CHUNK):
                out.write(chunk)
                total += len(chunk)
            return total

    def put(
        self, key: str, data: bytes, *, if_absent: bool = False, if_match: str | None = None
    ) -> str:
        dest = self._path(key)
        tmp = self._write_tmp(data)
        if if_match is None:
            self._install(tmp, dest, if_absent=if_absent)
        else:
            with flock(self.root / ".lock"):
                try:
                    current = _etag(dest.stat())
                except FileNotFoundError:
                    current = None
                if current != if_match:
                    tmp.unlink(missing_ok=True)
                    raise PreconditionFailed(f"changed since read: {key}")
                self._install(tmp, dest, if_absent=False)
                return _etag(dest.stat())
        return _etag(dest.stat())

    def put_file(
        self, key: str, path: Path, *, if_absent: bool = False, move: bool = False
    ) -> None:
        dest = self._path(key)
        if dest.exists() and if_absent:
            raise PreconditionFailed(f"exists: {key}")
        tmp = self._tmp_path()
        # A rename keeps the bytes where they are: no copy for a staged file
        # on the store's filesystem.
        if not (move and self._move_in(path, tmp)):
            try:
                with open(path, "rb") as src, open(tmp, "xb") as dst:
                    _copy(src.fileno(), dst.fileno())
                    _stamp(dst.fileno())
                    os.fsync(dst.fileno())
            except OSError as e:
                tmp.unlink(missing_ok=True)
                raise StoreError(f"cannot copy {path} into the store: {e.strerror}") from e
        os.chmod(tmp, _BLOB_MODE)
        self._install(tmp, dest, if_absent=if_absent)

    def put_files(
        self,
        items: Sequence[tuple[str, Path]],
        *,
        if_absent: bool = False,
        move: bool = False,
        progress: Callable[[int], None] | None = None,
    ) -> list[bool]:
        """Like ``put_file`` for each item, with one flush per batch instead of
        two per file: copy every file of a batch to a temporary name (with
        ``move``, a file on this filesystem is taken as it is, no copy and no
        temporary name), make them all durable with one ``syncfs``, link them
        into place, then make the names durable with one more. No name ever
        points at bytes that are not on disk, and all of them are durable when
        this returns.

        While one batch is flushed and linked, the next is copied: the copy is
        the CPU's work and the flush the disk's, so the two overlap."""
        results = [False] * len(items)

        def stage_some(chunk: range) -> list[_Staged]:
            staged: list[_Staged] = []
            try:
                for i in chunk:
                    key, path = items[i]
                    staged.append((i, *self._stage(path, self._path(key), move, progress)))
            except BaseException:
                self._drop_copies(staged)
                raise
            return staged

        copying: list[Future[list[_Staged]]] = []
        with ThreadPoolExecutor(max_workers=_COPY_WORKERS) as pool:
            try:
                copied: list[_Staged] = []
                for start in range(0, len(items), _BATCH_FILES):
                    batch = range(start, min(start + _BATCH_FILES, len(items)))
                    copying = [
                        pool.submit(stage_some, batch[i : i + _STAGE_CHUNK])
                        for i in range(0, len(batch), _STAGE_CHUNK)
                    ]
                    if copied:
                        self._settle(pool, items, copied, results, if_absent=if_absent)
                    pending, copying = copying, []
                    copied = self._copied(pending)
                if copied:
                    self._settle(pool, items, copied, results, if_absent=if_absent)
            finally:
                if copying:  # copied while the batch before it failed
                    with contextlib.suppress(Exception):
                        self._drop_copies(self._copied(copying))
        return results

    def _stage(
        self,
        path: Path,
        dest: Path,
        move: bool,
        progress: Callable[[int], None] | None,
    ) -> tuple[Path, Path, bool]:
        """Ready one file to be linked to ``dest``: (the file to link, dest,
        whether it is a copy), the file a copy in ``.tmp/`` or, with ``move``,
        the caller's own.

        Whether ``dest`` is taken is the link's to find out (``if_absent``):
        the one caller has just checked, so a check here would be a second
        ``stat`` per file that saves a copy only when a writer races it."""
        taken = self._take(path) if move else None
        if taken is not None:
            if progress:
                progress(taken.st_size)
            return path, dest, False
        tmp = self._tmp_path()
        try:
            src = os.open(path, os.O_RDONLY)
            try:
                # Created read-only: the descriptor still writes.
                dst = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, _BLOB_MODE)
                try:
                    _copy(src, dst)
                    _stamp(dst)
                    size = os.fstat(dst).st_size
                finally:
                    os.close(dst)
            finally:
                os.close(src)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            raise StoreError(f"cannot copy {path} into the store: {e.strerror}") from e
        if progress:
            progress(size)
        return tmp, dest, True

    def _copied(self, copying: list[Future[list[_Staged]]]) -> list[_Staged]:
        """What a batch staged, once every copy of it is done; if one failed,
        the others' copies are removed and its error raised."""
        staged: list[_Staged] = []
        error: BaseException | None = None
        for future in copying:
            try:
                staged += future.result()
            except BaseException as e:  # raised once every copy is done and removed
                error = error or e
        if error is not None:
            self._drop_copies(staged)
            raise error
        return staged

    def _drop_copies(self, staged: list[_Staged]) -> None:
        for _, src, _, copy in staged:
            if copy:  # a taken file is the caller's
                src.unlink(missing_ok=True)

    def _settle(
        self,
        pool: ThreadPoolExecutor,
        items: Sequence[tuple[str, Path]],
        staged: list[_Staged],
        results: list[bool],
        *,
        if_absent: bool,
    ) -> None:
        """Make a staged batch durable, link it into place, make the names durable."""
        pause_point("STORE_STAGED")  # tests: a kill here leaves temp files
        if not _syncfs(self.root):
            list(pool.map(lambda s: fsync_file(s[1]), staged))
        parents: set[Path] = set()
        try:
            for i, src, dest, _ in staged:
                if dest.parent not in parents:
                    self._ensure_parent(dest, parents)
                if if_absent:
                    try:
                        os.link(src, dest, follow_symlinks=False)  # as lstat saw it in _take
                    except FileExistsError:
                        continue
                    except OSError as e:
                        if e.errno != errno.EXDEV:  # a taken file behind a bind mount
                            raise
                        results[i] = self._put_copy(items[i][0], src)
                        continue
                else:
                    os.replace(src, dest)
                results[i] = True
                parents.add(dest.parent)
        except OSError as e:
            raise StoreError(f"cannot write into {self.root}: {e.strerror}") from e
        finally:
            self._drop_copies(staged)
        # The new names (and new directories): one more syncfs, not one
        # journal commit per directory (256 of them for a large batch).
        if SYNCFS_NAMES and _syncfs(self.root):
            return
        for parent in parents:
            fsync_dir(parent)

    def _take(self, path: Path) -> os.stat_result | None:
        """Ready a caller's file to be linked in as an object as it is: its
        mtime now (``_stamp``), read-only. None (copy it instead) if it is on
        another filesystem or not a regular file."""
        try:
            st = os.lstat(path)
            if st.st_dev != self._dev or not stat.S_ISREG(st.st_mode):
                return None
            now = time.time_ns()
            os.utime(path, ns=(now, now), follow_symlinks=False)
            os.chmod(path, _BLOB_MODE)
        except OSError as e:
            raise StoreError(f"cannot move {path} into the store: {e.strerror}") from e
        return st

    def _put_copy(self, key: str, path: Path) -> bool:
        """``put_file`` of a copy, if absent; False if the key was taken."""
        try:
            self.put_file(key, path, if_absent=True)
        except PreconditionFailed:
            return False
        return True

    def _move_in(self, path: Path, tmp: Path) -> bool:
        """Rename a local file, made durable, to ``tmp`` (no copy); False if it
        is on another filesystem."""
        try:
            fd = os.open(path, os.O_RDONLY)
            try:
                _stamp(fd)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(path, tmp)
        except OSError as e:
            if e.errno != errno.EXDEV:
                raise StoreError(f"cannot move {path} into the store: {e.strerror}") from e
            return False
        return True

    def head(self, key: str) -> ObjectInfo:
        try:
            st = self._path(key).stat()
        except (FileNotFoundError, NotADirectoryError):
            raise NotFound(key) from None
        if not stat.S_ISREG(st.st_mode):
            raise NotFound(key)
        return ObjectInfo(key, st.st_size, _etag(st), st.st_mtime)

    def list(self, prefix: str, *, recursive: bool = False) -> Listing:
        if recursive:
            return Listing(objects=sorted(self.iter_objects(prefix), key=lambda o: o.key))
        base = self.root / prefix if prefix else self.root
        listing = Listing()
        try:
            entries = sorted(os.scandir(base), key=lambda e: e.name)
        except (FileNotFoundError, NotADirectoryError):
            return listing
        for entry in entries:
            if not prefix and entry.name.startswith("."):
                continue  # the store's own .tmp and .lock
            if entry.is_dir(follow_symlinks=False):
                listing.prefixes.append(f"{prefix}{entry.name}/")
            elif entry.is_file(follow_symlinks=False):
                try:
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue  # deleted since the directory was read (a released lock)
                listing.objects.append(
                    ObjectInfo(f"{prefix}{entry.name}", st.st_size, _etag(st), st.st_mtime)
                )
        return listing

    def iter_objects(self, prefix: str) -> Iterator[ObjectInfo]:
        base = self.root / prefix if prefix else self.root
        stack = [(base, prefix)]
        while stack:
            d, p = stack.pop()
            try:
                it = os.scandir(d)
            except (FileNotFoundError, NotADirectoryError):
                continue
            with it:
                for entry in it:
                    if not p and entry.name.startswith("."):
                        continue
                    if entry.is_dir(follow_symlinks=False):
                        stack.append((Path(entry.path), f"{p}{entry.name}/"))
                    elif entry.is_file(follow_symlinks=False):
                        try:
                            st = entry.stat(follow_symlinks=False)
                        except FileNotFoundError:
                            continue  # deleted since the directory was read
                        yield ObjectInfo(f"{p}{entry.name}", st.st_size, _etag(st), st.st_mtime)

    def exists(self, key: str) -> bool:
        # One stat, no etag: the dedup check runs once per blob of a put.
        try:
            return stat.S_ISREG(self._path(key).stat().st_mode)
        except (FileNotFoundError, NotADirectoryError):
            return False

    def delete(self, key: str) -> None:
        path = self._path(key)
        try:
            path.unlink()
        except FileNotFoundError:
            return
        except OSError as e:
            raise StoreError(f"cannot delete {key}: {e.strerror}") from e
        fsync_dir(path.parent)
