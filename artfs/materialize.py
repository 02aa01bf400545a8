"""``artfs get``: write a version's tree into a directory of the user's.

The user's files never share a writable inode with the cache: an edit of a
downloaded file must not change what the next ``get`` (or a mount) serves.
So each file is, by default, a reflink of the verified blob (``FICLONE``:
instant and no extra space on btrfs, XFS, bcachefs), else a plain copy.
Hard links (``link=True``, ``get --link``, like DVC's ``cache.type =
hardlink``) cost neither time nor space on any filesystem, but the file is
then the cache's own inode: it is read-only (0444), and an edit made anyway
(root, or ``chmod``) moves the entry's stamp, so the cache hashes it again on
its next use, discards it and fetches it again; the edited file itself is
the user's to keep.

A file that already holds the right bytes is left alone (a hard link into
the cache counts only in link mode; otherwise it is replaced by a copy).

A reference entry is fetched from its URI into the cache first
(``cache/referents.py``: verified against its digest, or its etag checked),
then placed like a blob; an object that changed or vanished since the
commit fails the get (BlobError), never writes other bytes.

Progress is by bytes: a file fetched from the store advances it as its
parts arrive (the cache's fetch hook), so a single large file does not
jump from 0 to 100%; each file counts in full once it is in place.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import stat
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from artfs.cache import BlobCache, BlobError, BlobReader, Stamp, verify_fd
from artfs.cache.referents import open_reference
from artfs.digest import digest_file
from artfs.fsutil import replace
from artfs.manifest import Entry
from artfs.objects.referents import Referents
from artfs.repo import Repo, RepoError, Version

Progress = Callable[[int], None]
PLACE_WORKERS = 8
_PLACE_CHUNK = 16
FICLONE = 0x40049409  # _IOW(0x94, 9, int), from linux/fs.h
_NO_REFLINK = (errno.EOPNOTSUPP, errno.ENOTTY, errno.EXDEV, errno.EINVAL, errno.ENOSYS)
_NO_LINK = (errno.EXDEV, errno.EPERM, errno.EMLINK)
# Try FICLONE first (bench/bench_cache.py turns it off to time plain copies).
REFLINK = True


class _Placer:
    """How files go into one destination: reflink, copy or hard link."""

    def __init__(self, cache: BlobCache, link: bool, referents: Referents | None = None) -> None:
        self.cache = cache
        self.referents = referents or Referents()
        self.link = link
        self.reflink = REFLINK  # until the destination's filesystem says otherwise
        self.counts = {"reflink": 0, "copy": 0, "link": 0}

    def holds(self, target: Path, e: Entry) -> bool:
        """Whether ``target`` is a regular file with exactly these bytes already
        (and, outside link mode, not the cache's own inode)."""
        if e.digest is None:
            return False  # a reference known by its etag: placed anew, its etag checked

        try:
            st = target.lstat()
        except FileNotFoundError:
            return False
        if not stat.S_ISREG(st.st_mode) or st.st_size != e.size:
            return False
        try:
            cached = os.stat(self.cache.path(e.digest))
        except FileNotFoundError:
            cached = None
        if cached is not None and os.path.samestat(st, cached):
            # The cache's inode: fine when asked for links and still verified.
            return self.link and not e.executable and self._still_verified(e)
        return digest_file(target)[0] == e.digest

    def _still_verified(self, e: Entry) -> bool:
        assert e.digest is not None
        try:
            self.cache.open_verified(e.digest, e.size).close()
        except BlobError:
            return False
        with contextlib.suppress(OSError):
            return os.stat(self.cache.path(e.digest)).st_nlink > 0
        return False

    def place(self, target: Path, e: Entry, fetched: Progress | None = None) -> None:
        """Put ``e``'s bytes at ``target``; ``fetched`` hears the bytes of a fetch."""
        tmp = target.with_name(f".{target.name}.artfs-{uuid.uuid4().hex[:8]}")
        try:
            if e.is_reference:
                self._place_reference(target, tmp, e)
                return
            assert e.digest is not None
            if self.link and not e.executable:
                reader = self.cache.open_verified(e.digest, e.size, fetched)
                try:
                    linked = self._link(reader, self.cache.path(e.digest), tmp)
                finally:
                    reader.close()
                if linked:
                    self.cache.restamp_linked(e.digest, tmp)
                    self.counts["link"] += 1
                    _replace(tmp, target)
                    return
            reader, _ = self.cache.open_whole(e.digest, e.size, fetched)
            try:
                self._copy(reader, tmp, e)
            finally:
                reader.close()
            os.chmod(tmp, 0o755 if e.executable else 0o644)
            _replace(tmp, target)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()

    def _place_reference(self, target: Path, tmp: Path, e: Entry) -> None:
        reader = open_reference(self.cache, self.referents, e)
        try:
            cached = self.cache.path(reader.digest)
            if self.link and not e.executable and self._link(reader, cached, tmp):
                self.cache.restamp_linked(reader.digest, tmp)
                self.counts["link"] += 1
                _replace(tmp, target)
                return
            self._copy(reader, tmp, e)
        finally:
            reader.close()
        os.chmod(tmp, 0o755 if e.executable else 0o644)
        _replace(tmp, target)

    def _link(self, reader: BlobReader, cached: Path, tmp: Path) -> bool:
        if reader.stamp is not None and Stamp.of_fd(reader.fd) != reader.stamp:
            raise BlobError(f"blob {reader.digest} changed in the cache as it was linked")
        try:
            os.link(cached, tmp)
        except OSError as e:
            if e.errno not in _NO_LINK:
                raise
            return False
        return True

    def _copy(self, reader: BlobReader, tmp: Path, e: Entry) -> None:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            if not (self.reflink and self._clone(reader.fd, fd)):
                _copy_fd(reader.fd, fd, e.size)
                self.counts["copy"] += 1
            else:
                self.counts["reflink"] += 1
        finally:
            os.close(fd)
        # A source changed while copied: the copy is hashed before it is used.
        if reader.stamp is not None and Stamp.of_fd(reader.fd) != reader.stamp:
            check = os.open(tmp, os.O_RDONLY)
            try:
                verify_fd(check, reader.digest, e.size, f"(copied into {tmp})")
            finally:
                os.close(check)

    def _clone(self, src: int, dst: int) -> bool:
        try:
            fcntl.ioctl(dst, FICLONE, src)
        except OSError as e:
            if e.errno not in _NO_REFLINK:
                raise
            self.reflink = False  # one filesystem per get: do not ask per file
            return False
        return True


class _FileProgress:
    """One file's share of the progress: the fetch hook's running totals into
    steps of ``add`` (thread-safe), and the rest of the file once it is placed."""

    def __init__(self, add: Progress) -> None:
        self._add = add
        self._done = 0

    def __call__(self, done: int) -> None:
        if done > self._done:
            self._add(done - self._done)
            self._done = done

    def finish(self, size: int) -> None:
        self(size)


def _copy_fd(src: int, dst: int, size: int) -> None:
    offset = 0
    try:
        while offset < size:
            n = os.copy_file_range(src, dst, size - offset, offset, offset)
            if n == 0:
                break
            offset += n
    except OSError as e:
        if e.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
            raise
        with os.fdopen(os.dup(src), "rb") as fsrc, os.fdopen(os.dup(dst), "wb") as fdst:
            fsrc.seek(offset)
            fdst.seek(offset)
            shutil.copyfileobj(fsrc, fdst, 1 << 20)
            return
    if offset != size:
        raise BlobError(f"cannot copy: the source ended after {offset} of {size} bytes")


def _replace(tmp: Path, target: Path) -> None:
    if target.is_dir() and not target.is_symlink():
        shutil.rmtree(target)
    # Not durable, as cp: a file that ``get`` wrote is the user's to sync.
    replace(tmp, target, durable=False)


def remove_path(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)


def materialize(
    repo: Repo,
    version: Version,
    dest: Path,
    progress: Progress | None = None,
    *,
    path_prefix: str | None = None,
    link: bool = False,
) -> dict[str, int]:
    """Write a version's tree (or the entries under ``path_prefix``) under
    ``dest``; returns how many files were reflinked, copied and linked."""
    if dest.exists() and not dest.is_dir():
        raise RepoError(f"cannot get into {dest}: not a directory")
    manifest = repo.manifest(version)
    # Every entry is validated (walk raises on a bad one) before anything is written.
    entries = list(manifest.walk())
    dest.mkdir(parents=True, exist_ok=True)
    files = []
    prefix = (path_prefix or "").strip("/")
    for path, e in entries:
        under = path == prefix or path.startswith(prefix + "/") or prefix.startswith(path + "/")
        if prefix and not under:
            continue  # neither under the prefix nor a directory leading to it
        target = dest / path
        if e.is_dir:
            if target.is_symlink() or (target.exists() and not target.is_dir()):
                target.unlink()
            target.mkdir(exist_ok=True)
        elif e.is_symlink:
            if target.is_symlink() and os.readlink(target) == e.target:
                continue
            remove_path(target)
            os.symlink(e.target, target)  # type: ignore[arg-type]
        else:
            files.append((target, e))
    placer = _Placer(repo.cache, link, repo.referents)
    lock = threading.Lock()

    def add(n: int) -> None:  # from placing threads and fetch workers alike
        assert progress is not None
        with lock:
            progress(n)

    def place(chunk: list[tuple[Path, Entry]]) -> None:
        for target, e in chunk:
            share = _FileProgress(add) if progress else None
            if not placer.holds(target, e):
                placer.place(target, e, share)
            else:
                st = target.stat()
                if bool(st.st_mode & 0o100) != e.executable:
                    os.chmod(target, 0o755 if e.executable else 0o644)
            if share is not None:
                share.finish(e.size)

    # Fetches from a remote store and cache fsyncs overlap; chunks keep the
    # pool's own cost per file small.
    chunks = [files[i : i + _PLACE_CHUNK] for i in range(0, len(files), _PLACE_CHUNK)]
    with ThreadPoolExecutor(max_workers=PLACE_WORKERS) as pool:
        for _ in pool.map(place, chunks):
            pass
    return placer.counts
