"""FUSE nodes of ``staging/``: each call mapped onto ``artfs.staging``.

Staged entries are nodes that know their parent and name, so a rename moves
one node and everything below it follows. Control files are their own nodes
at the top of staging. The logic (overlay, hashing, commit) is all in the
synchronous core; these methods run in worker threads, as every node method.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import stat
import threading
from collections.abc import Iterator
from typing import Any

import pyfuse3

from artfs.fs.files import FileHandle
from artfs.fs.lineage import run_of_process
from artfs.fs.nodes import (
    XATTR_PREFIX,
    DirCursor,
    InodeTable,
    Node,
    SnapshotCursor,
    fuse_error,
    make_attr,
)
from artfs.manifest import DIR, SYMLINK
from artfs.staging import (
    BASE,
    COMMIT,
    CONTROL_FILES,
    RESERVED,
    STATUS,
    Attr,
    StagedFile,
    StagingArea,
    StagingManager,
    error_errno,
)

log = logging.getLogger("artfs.fs.staging")
# Staging changes only through this mount, but a commit empties it at once:
# keep kernel caching short.
STAGING_TTL = 1.0
TYPE_XATTR = XATTR_PREFIX + "type"
_KIND_BITS = {DIR: stat.S_IFDIR, SYMLINK: stat.S_IFLNK}


@contextlib.contextmanager
def reasons(what: str) -> Iterator[None]:
    """Core errors become the errno they stand for, with the reason in the log."""
    try:
        yield
    except pyfuse3.FUSEError:
        raise
    except Exception as e:
        code = error_errno(e)
        log.warning("%s: %s", what, e)
        raise fuse_error(code) from None


def manager_of(table: InodeTable) -> StagingManager:
    return table.staging  # type: ignore[attr-defined]


class StagedHandle(FileHandle):
    def __init__(self, f: StagedFile) -> None:
        self.file = f

    def read(self, offset: int, length: int) -> bytes:
        with reasons(f"read {self.file.path}"):
            return self.file.read(offset, length)

    def write(self, offset: int, data: bytes) -> int:
        with reasons(f"write {self.file.path}"):
            return self.file.write(offset, data)

    def flush(self) -> None:
        with reasons(f"flush {self.file.path}"):
            self.file.flush()

    def fsync(self, datasync: bool) -> None:
        with reasons(f"fsync {self.file.path}"):
            self.file.fsync(datasync)

    def release(self) -> None:
        with reasons(f"release {self.file.path}"):
            self.file.release()


class BaseHandle(StagedHandle):
    """An open ``.base``: once written, names the kernel thought absent may exist."""

    def __init__(self, f: StagedFile, staging: StagingNode) -> None:
        super().__init__(f)
        self.staging = staging

    def release(self) -> None:
        wrote = self.file.writable
        super().release()
        if wrote:
            with reasons("list staging after a .base change"):
                names = [name for name, _ in self.staging.area.listdir("")]
            for name in names:
                pyfuse3.invalidate_entry_async(
                    self.staging.inode, name.encode(), ignore_enoent=True
                )


class CommitHandle(FileHandle):
    """An open ``.commit``: writes are taken and dropped; the commit is the touch."""

    def write(self, offset: int, data: bytes) -> int:
        return len(data)

    def read(self, offset: int, length: int) -> bytes:
        return b""


def _attr(node: Node, a: Attr) -> pyfuse3.EntryAttributes:
    mode = _KIND_BITS.get(a.kind, stat.S_IFREG) | a.mode
    out = make_attr(
        node.inode,
        mode,
        a.size,
        a.mtime_ns / 1e9,
        node.ctx,
        entry_timeout=STAGING_TTL,
        attr_timeout=STAGING_TTL,
    )
    out.st_mtime_ns = a.mtime_ns
    out.st_ctime_ns = a.ctime_ns
    return out


class StagedDir(Node):
    """What staging/ and its directories share: children by name, and changes."""

    path = ""

    def __init__(self, table: InodeTable, inode: int) -> None:
        super().__init__(table, inode)
        self._kids: dict[str, StagedEntry] = {}

    @property
    def area(self) -> StagingArea:
        raise NotImplementedError

    def staging(self) -> StagingNode:
        raise NotImplementedError

    def _sub(self, name: str) -> str:
        return f"{self.path}/{name}" if self.path else name

    def kid(self, name: str) -> StagedEntry:
        with _nodes_lock:
            node = self._kids.get(name)
            if node is None:
                node = self.table.intern(("staged", next(_serial)), StagedEntry, self, name)  # type: ignore[assignment]
                self._kids[name] = node  # type: ignore[assignment]
            return node  # type: ignore[return-value]

    def negative_timeout(self) -> float:
        # Without a base, a name absent from staging appears only through
        # this mount, which the kernel sees: let it remember absent names
        # (cp looks each name up twice). A .base makes names appear.
        return STAGING_TTL if self.area.base() is None else 0.0

    def lookup(self, name: str) -> Node | None:
        with reasons(f"lookup {self._sub(name)}"):
            if self.area.stat(self._sub(name)) is None:
                return None
            return self.kid(name)

    def open_dir(self) -> DirCursor:
        with reasons(f"readdir {self.path or 'staging'}"):
            entries = self.area.listdir(self.path)
        return SnapshotCursor([(name, self.kid(name)) for name, _ in entries] + self.extra())

    def extra(self) -> list[tuple[str, Node]]:
        return []

    def mkdir(self, name: str, mode: int, ctx: Any) -> pyfuse3.EntryAttributes:
        with reasons(f"mkdir {self._sub(name)}"):
            self.area.mkdir(self._sub(name), mode)
            return self.kid(name).attr()

    def create(self, name: str, mode: int, flags: int, ctx: Any) -> tuple[FileHandle, Any]:
        with reasons(f"create {self._sub(name)}"):
            f = self.area.create(self._sub(name), mode)
            return StagedHandle(f), self.kid(name).attr()

    def symlink(self, name: str, target: str, ctx: Any) -> pyfuse3.EntryAttributes:
        with reasons(f"symlink {self._sub(name)}"):
            self.area.symlink(self._sub(name), target)
            return self.kid(name).attr()

    def unlink(self, name: str, ctx: Any) -> None:
        with reasons(f"unlink {self._sub(name)}"):
            self.area.unlink(self._sub(name))

    def rmdir(self, name: str, ctx: Any) -> None:
        with reasons(f"rmdir {self._sub(name)}"):
            self.area.rmdir(self._sub(name))

    def rename(
        self, name_old: str, new_parent_inode: int, name_new: str, flags: int, ctx: Any
    ) -> None:
        new_parent = self.table.get(new_parent_inode)
        if not isinstance(new_parent, StagedDir) or new_parent.area is not self.area:
            raise fuse_error(errno.EXDEV)
        old, new = self._sub(name_old), new_parent._sub(name_new)
        with reasons(f"rename {old} to {new}"):
            if not self.path and name_old in RESERVED:
                raise fuse_error(errno.EPERM)
            self.area.rename(old, new, flags)
        with _nodes_lock:
            moved = self._kids.pop(name_old, None)
            new_parent._kids.pop(name_new, None)
            if moved is not None:
                moved.parent_dir, moved.name = new_parent, name_new
                new_parent._kids[name_new] = moved

    def link(self, *args: Any) -> Any:
        raise fuse_error(errno.EPERM)

    def setxattr(self, name: str, value: bytes, ctx: Any) -> None:
        # Versions keep no extended attributes (nor ACLs): say so, and cp -a
        # and rsync -X carry on without them.
        raise fuse_error(errno.ENOTSUP)

    def removexattr(self, name: str, ctx: Any) -> None:
        raise fuse_error(errno.ENOTSUP)

    def mknod(self, *args: Any) -> Any:
        raise fuse_error(errno.EPERM)


_nodes_lock = threading.RLock()
INVALIDATE_WAIT = 2.0


def _invalidate_now(parent_inode: int, names: list[str]) -> None:
    """Drop the kernel's entries for ``names``, waiting a little for it.

    Only for a directory whose lock the current request does not hold (the
    artifact directory during a commit); a thread keeps a stuck kernel from
    holding the request forever.
    """

    def run() -> None:
        for name in names:
            with contextlib.suppress(OSError):
                pyfuse3.invalidate_entry(parent_inode, name.encode())

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(INVALIDATE_WAIT)


def _counter() -> Iterator[int]:
    n = 0
    while True:
        n += 1
        yield n


_serial = _counter()


class StagingNode(StagedDir):
    """``proj/name/staging``: the top of one artifact's staging, with its control files."""

    def __init__(self, table: InodeTable, inode: int, artifact: Any) -> None:
        super().__init__(table, inode)
        self.artifact = artifact
        self._area: StagingArea | None = None
        self._controls: dict[str, ControlNode] = {}

    @property
    def area(self) -> StagingArea:
        if self._area is None:
            art = self.artifact.artifact
            self._area = manager_of(self.table).area(art.project, art.name)
        return self._area

    def staging(self) -> StagingNode:
        return self

    def parent(self) -> Node:
        return self.artifact

    def describe(self) -> str:
        return f"{self.artifact.describe()}/staging"

    def attr(self) -> pyfuse3.EntryAttributes:
        with reasons(f"getattr {self.describe()}"):
            a = self.area.stat("")
        assert a is not None
        return _attr(self, a)

    def control(self, name: str) -> ControlNode:
        with _nodes_lock:
            node = self._controls.get(name)
            if node is None:
                node = self.table.intern(
                    ("control", self.describe(), name), ControlNode, self, name
                )  # type: ignore[assignment]
                self._controls[name] = node  # type: ignore[assignment]
            return node  # type: ignore[return-value]

    def lookup(self, name: str) -> Node | None:
        if name in RESERVED:
            return self.control(name)
        return super().lookup(name)

    def extra(self) -> list[tuple[str, Node]]:
        return [(name, self.control(name)) for name in sorted(RESERVED)]

    def create(self, name: str, mode: int, flags: int, ctx: Any) -> tuple[FileHandle, Any]:
        if name == COMMIT:  # the kernel thought it absent (O_EXCL, or a stale entry)
            self.commit(ctx)
            return CommitHandle(), self.control(COMMIT).attr()
        if name in RESERVED:
            return self.control(name).open(flags, ctx), self.control(name).attr()
        return super().create(name, mode, flags, ctx)

    def unlink(self, name: str, ctx: Any) -> None:
        if name in RESERVED:
            with reasons(f"rm staging/{name}"):
                self.area.clear_control(name)
            return
        super().unlink(name, ctx)

    def commit(self, ctx: Any = None) -> None:
        # A commit by a process of `artfs run` is logged by that run.
        run_id = run_of_process(ctx.pid) if ctx is not None else None
        with reasons(f"commit {self.describe()}"):
            result = self.area.commit(logged_by=run_id)
            log.info("%s", self.area.status().splitlines()[0])
        # Tell the kernel the old entries are gone rather than wait for timeouts.
        with _nodes_lock:
            names = list(self._kids)
            self._kids.clear()
        for name in names:
            pyfuse3.invalidate_entry_async(self.inode, name.encode(), ignore_enoent=True)
        # The kernel may hold "no such name" for the new version from before:
        # drop that before the touch returns, so the version shows at once.
        v = result.version
        _invalidate_now(self.artifact.inode, [v.name, "latest", *v.aliases])
        self.artifact.refresh()

    def xattrs(self) -> dict[str, bytes]:
        with reasons(f"getxattr {self.describe()}"):
            return {TYPE_XATTR: self.area.artifact_type().encode()}

    def setxattr(self, name: str, value: bytes, ctx: Any) -> None:
        if name != TYPE_XATTR:
            raise fuse_error(errno.ENOTSUP)
        with reasons(f"setxattr {name} on {self.describe()}"):
            self.area.set_type(value.decode().strip())

    def setattr(self, attr: Any, fields: Any, fh: Any, ctx: Any) -> pyfuse3.EntryAttributes:
        return self.attr()  # staging's own mode and times are not kept


class StagedEntry(StagedDir):
    """A file, directory or symlink inside staging, wherever it was moved to."""

    def __init__(self, table: InodeTable, inode: int, parent_dir: StagedDir, name: str) -> None:
        super().__init__(table, inode)
        self.parent_dir = parent_dir
        self.name = name

    @property
    def path(self) -> str:  # type: ignore[override]
        return self.parent_dir._sub(self.name)

    @property
    def area(self) -> StagingArea:
        return self.parent_dir.area

    def staging(self) -> StagingNode:
        return self.parent_dir.staging()

    def parent(self) -> Node:
        return self.parent_dir

    def describe(self) -> str:
        return f"{self.staging().describe()}/{self.path}"

    def _stat(self) -> Attr:
        a = self.area.stat(self.path)
        if a is None:
            raise fuse_error(errno.ENOENT)
        return a

    @property
    def mode(self) -> int:  # type: ignore[override]
        try:
            a = self._stat()
        except pyfuse3.FUSEError:
            return stat.S_IFREG
        return _KIND_BITS.get(a.kind, stat.S_IFREG) | a.mode

    def attr(self) -> pyfuse3.EntryAttributes:
        with reasons(f"getattr {self.path}"):
            return _attr(self, self._stat())

    def readlink(self) -> str:
        with reasons(f"readlink {self.path}"):
            return self.area.readlink(self.path)

    def open(self, flags: int, ctx: Any) -> FileHandle:
        with reasons(f"open {self.path}"):
            return StagedHandle(self.area.open(self.path, flags))

    def setattr(self, attr: Any, fields: Any, fh: Any, ctx: Any) -> pyfuse3.EntryAttributes:
        with reasons(f"setattr {self.path}"):
            if fields.update_size:
                self.area.truncate(self.path, attr.st_size)
            if fields.update_mode:
                self.area.chmod(self.path, attr.st_mode)
            if fields.update_atime or fields.update_mtime:
                self.area.utimens(
                    self.path,
                    attr.st_atime_ns if fields.update_atime else None,
                    attr.st_mtime_ns if fields.update_mtime else None,
                )
            # Owners are not part of a version: chown is accepted and not kept.
            return _attr(self, self._stat())


class ControlNode(Node):
    """``.metadata.json``, ``.description``, ``.aliases``, ``.base``, ``.status``, ``.commit``."""

    def __init__(self, table: InodeTable, inode: int, staging: StagingNode, name: str) -> None:
        super().__init__(table, inode)
        self.staging_node = staging
        self.name = name
        self.mode = stat.S_IFREG | (0o444 if name == STATUS else 0o644)

    @property
    def area(self) -> StagingArea:
        return self.staging_node.area

    def parent(self) -> Node:
        return self.staging_node

    def describe(self) -> str:
        return f"{self.staging_node.describe()}/{self.name}"

    def attr(self) -> pyfuse3.EntryAttributes:
        with reasons(f"getattr {self.describe()}"):
            out = _attr(self, self.area.control_attr(self.name))
        # .status changes with every commit, and a stale size would cut it short.
        out.attr_timeout = out.entry_timeout = 0 if self.name == STATUS else STAGING_TTL
        return out

    def setxattr(self, name: str, value: bytes, ctx: Any) -> None:
        raise fuse_error(errno.ENOTSUP)

    def open(self, flags: int, ctx: Any) -> FileHandle:
        if self.name == COMMIT:
            return CommitHandle()
        with reasons(f"open {self.describe()}"):
            f = self.area.open_control(self.name, flags)
        handle = BaseHandle(f, self.staging_node) if self.name == BASE else StagedHandle(f)
        if self.name == STATUS:
            handle.direct_io = True  # its size is not known before it is read
        return handle

    def setattr(self, attr: Any, fields: Any, fh: Any, ctx: Any) -> pyfuse3.EntryAttributes:
        if self.name == COMMIT:
            if fields.update_atime or fields.update_mtime or fields.update_size:
                self.staging_node.commit(ctx)
            return self.attr()
        if self.name == STATUS:
            raise fuse_error(errno.EPERM)
        if fields.update_size and self.name in CONTROL_FILES:
            with reasons(f"truncate {self.describe()}"):
                self.area.truncate_control(self.name, attr.st_size)
        return self.attr()
