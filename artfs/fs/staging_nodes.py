"""FUSE nodes of ``staging/``: each call mapped onto ``artfs.staging``.

Directories are nodes that know their parent and name, so a rename moves one
node and everything below it follows, and a path costs one step per level.
Files and symlinks of the upper layer are nodes by the upper layer's inode,
so hard links are one node (one st_ino, the right st_nlink) under several
names; a base file not copied up is a node of its own until it is. A file
node keeps its open handles, so an unlinked open file still answers fstat,
ftruncate, fchmod and futimens. Control files are their own nodes at the top
of staging: found by name, never listed.

``.commit``: the first call that changes it commits, and returns only once
the version is durable, failing with the reason if it is not: ``open`` with
O_TRUNC or O_CREAT of a new name (``>``, ``: >``, Python's ``open(.., "w")``),
the first ``write`` (``>>``), ``truncate``, or a time change (``touch``,
utimensat). The error reaches the caller at that call, not at close, which
shells do not check.

The logic (overlay, hashing, commit) is all in the synchronous core; these
methods run in worker threads, as every node method, but for the requests
``answers_now`` names (and, for open files, ``StagedHandle.tries_now``):
those the mount first tries on its event loop, inside
``artfs.staging.nowait.without_waiting``, since the worker-thread hop costs
more than their answer. There the core raises ``WouldBlock`` rather than
fetch the base from the store or wait for an area's lock a commit holds,
always before it has changed anything, and the mount makes the same call
in a worker. Who owns what, whichever thread runs the call:

- node bookkeeping (``_kids``, ``_by_ino``, ``links``, ``handles``):
  ``_nodes_lock``, held for dictionary work only, never across I/O;
- the upper layer, handles' fields and ``StagingArea._open``: the area's
  lock (``StagingArea.locked()``), which the loop takes only when free;
  ``StagingArea.stat`` takes no lock (one ``lstat``, or a query of the
  open base manifest), as before;
- the state database: its own lock, one transaction at a time.

What stays in workers: a node's first use of its area (opening it runs
recovery), anything of staging/ itself or its control files (their
attributes read the project's record; ``.base`` and ``.commit`` act),
readdir, every other change, and reads.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import logging
import os
import stat
import threading
import weakref
from collections.abc import Iterator
from typing import Any

import pyfuse3

from artfs.fs import XATTR_PREFIX
from artfs.fs.files import FileHandle
from artfs.fs.lineage import run_of_process
from artfs.fs.nodes import (
    DIR_SIZE,
    DirCursor,
    InodeTable,
    Node,
    SnapshotCursor,
    fuse_error,
    make_attr,
)
from artfs.manifest import DIR, SYMLINK
from artfs.repo.records import Committer
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
from artfs.staging.nowait import WouldBlock

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
    except (pyfuse3.FUSEError, WouldBlock):
        raise
    except Exception as e:
        code = error_errno(e)
        log.warning("%s: %s", what, e)
        raise fuse_error(code) from None


def manager_of(table: InodeTable) -> StagingManager:
    return table.staging  # type: ignore[attr-defined]


def _owner(ctx: Any) -> tuple[int, int] | None:
    return (ctx.uid, ctx.gid) if ctx is not None else None


class StagedHandle(FileHandle):
    def __init__(self, f: StagedFile, node: StagedFileNode | None = None) -> None:
        self.file = f
        self.node = node
        if node is not None:
            node.handles.add(self)

    def tries_now(self, op: str) -> bool:
        """Whether the mount may try ``op`` ("write", "flush", "release") on its
        event loop: a file of the upper layer, not a blob read from the base."""
        f = self.file
        if op == "flush":
            return True
        return f.control is None and f.reader is None

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
        try:
            with reasons(f"release {self.file.path}"):
                self.file.release()
        except WouldBlock:
            raise  # not released: the mount calls this again in a worker
        except BaseException:
            self._closed()
            raise
        self._closed()

    def _closed(self) -> None:
        if self.node is not None:
            self.node.closed(self)


class BaseHandle(StagedHandle):
    """An open ``.base``: once written, names the kernel thought absent may exist."""

    def __init__(self, f: StagedFile, staging: StagingNode) -> None:
        super().__init__(f)
        self.staging = staging

    def tries_now(self, op: str) -> bool:
        return False  # its release lists staging and tells the kernel

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
    """An open ``.commit``: its first change commits (see the module's docstring)."""

    def __init__(self, staging: StagingNode, ctx: Any) -> None:
        self.staging = staging
        self.ctx = ctx
        self.committed = False

    def commit_once(self) -> None:
        if not self.committed:
            self.committed = True
            self.staging.commit(self.ctx)

    def write(self, offset: int, data: bytes) -> int:
        self.commit_once()
        return len(data)

    def read(self, offset: int, length: int) -> bytes:
        return b""


def _attr(node: Node, a: Attr) -> pyfuse3.EntryAttributes:
    mode = _KIND_BITS.get(a.kind, stat.S_IFREG) | a.mode
    # Directories show one size in staging and in versions (du -sb agrees).
    size = DIR_SIZE if a.is_dir else a.size
    out = make_attr(
        node.inode,
        mode,
        size,
        a.mtime_ns / 1e9,
        node.ctx,
        entry_timeout=STAGING_TTL,
        attr_timeout=STAGING_TTL,
    )
    out.st_mtime_ns = a.mtime_ns
    out.st_ctime_ns = a.ctime_ns
    out.st_atime_ns = a.atime_ns if a.atime_ns is not None else a.mtime_ns
    if not a.is_dir:
        out.st_nlink = a.nlink
    if a.uid is not None and a.gid is not None:
        out.st_uid, out.st_gid = a.uid, a.gid
    return out


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


class StagedDir(Node):
    """What staging/ and its directories share: children by name, and changes."""

    def __init__(self, table: InodeTable, inode: int) -> None:
        super().__init__(table, inode)
        # Weak: a child lives while the kernel, an open file or a grandchild needs it.
        self._kids: weakref.WeakValueDictionary[str, Node] = weakref.WeakValueDictionary()

    @property
    def path(self) -> str:
        raise NotImplementedError

    @property
    def area(self) -> StagingArea:
        raise NotImplementedError

    def staging(self) -> StagingNode:
        raise NotImplementedError

    def _sub(self, name: str) -> str:
        path = self.path
        return f"{path}/{name}" if path else name

    def kid(self, name: str, a: Attr) -> Node:
        """The node of child ``name``, which the core says is ``a``."""
        with _nodes_lock:
            current = self._kids.get(name)
            if a.is_dir:
                if isinstance(current, StagedSubdir):
                    return current
                node: Node = self.table.intern(("staged", next(_serial)), StagedSubdir, self, name)
            else:
                node = self.staging().file_node(a.ino, current)
                link = (self, name)
                if link not in node.links:  # type: ignore[attr-defined]
                    node.links.append(link)  # type: ignore[attr-defined]
            self._kids[name] = node
            return node

    def forget_kid(self, name: str, a: Attr | None) -> None:
        """``name`` is gone from this directory (unlink, rmdir, replaced by rename)."""
        with _nodes_lock:
            node = self._kids.pop(name, None)
            if isinstance(node, StagedFileNode):
                node.unlinked(self, name, last=a is None or a.nlink <= 1)

    def negative_timeout(self) -> float:
        # Without a base, a name absent from staging appears only through
        # this mount, which the kernel sees: let it remember absent names
        # (cp looks each name up twice). A .base makes names appear.
        return STAGING_TTL if self.area.base() is None else 0.0

    def lookup(self, name: str) -> Node | None:
        with reasons(f"lookup {self._sub(name)}"):
            a = self.area.stat(self._sub(name))
            if a is None:
                return None
            return self.kid(name, a)

    def open_dir(self) -> DirCursor:
        with reasons(f"readdir {self.path or 'staging'}"):
            entries = self.area.listdir(self.path)
        return SnapshotCursor([(name, self.kid(name, a)) for name, a in entries])

    def mkdir(self, name: str, mode: int, ctx: Any) -> pyfuse3.EntryAttributes:
        with reasons(f"mkdir {self._sub(name)}"):
            a = self.area.mkdir(self._sub(name), mode, _owner(ctx))
            return self.kid(name, a).attr()

    def create(self, name: str, mode: int, flags: int, ctx: Any) -> tuple[FileHandle, Any]:
        with reasons(f"create {self._sub(name)}"):
            f = self.area.create(self._sub(name), mode, _owner(ctx))
            a = f.stat()  # the file just made, by its descriptor: no walk of its path
            node = self.kid(name, a)
            assert isinstance(node, StagedFileNode)
            node._last = a
            return StagedHandle(f, node), _attr(node, a)

    def symlink(self, name: str, target: str, ctx: Any) -> pyfuse3.EntryAttributes:
        with reasons(f"symlink {self._sub(name)}"):
            a = self.area.symlink(self._sub(name), target, _owner(ctx))
            return self.kid(name, a).attr()

    def mknod(self, name: str, mode: int, rdev: int, ctx: Any) -> pyfuse3.EntryAttributes:
        with reasons(f"mknod {self._sub(name)}"):
            self.area.mknod(self._sub(name), mode)
        raise fuse_error(errno.EPERM)

    def unlink(self, name: str, ctx: Any) -> None:
        path = self._sub(name)
        with reasons(f"unlink {path}"):
            a = self.area.stat(path)
            self.area.unlink(path)
        self.forget_kid(name, a)

    def rmdir(self, name: str, ctx: Any) -> None:
        with reasons(f"rmdir {self._sub(name)}"):
            self.area.rmdir(self._sub(name))
        self.forget_kid(name, None)

    def rename(
        self, name_old: str, new_parent_inode: int, name_new: str, flags: int, ctx: Any
    ) -> None:
        new_parent = self.table.get(new_parent_inode)
        if not isinstance(new_parent, StagedDir) or new_parent.area is not self.area:
            raise fuse_error(errno.EXDEV)
        old, new = self._sub(name_old), new_parent._sub(name_new)
        with reasons(f"rename {old} to {new}"):
            if isinstance(self, StagingNode) and name_old in RESERVED:
                raise fuse_error(errno.EPERM)
            replaced = self.area.stat(new)
            moving = self.area.stat(old)
            self.area.rename(old, new, flags)
        with _nodes_lock:
            same = replaced is not None and moving is not None and replaced.ino == moving.ino
            if same and moving.ino is not None:  # type: ignore[union-attr]
                return  # two names of one file: nothing moved
            moved = self._kids.pop(name_old, None)
            new_parent.forget_kid(name_new, replaced)
            if isinstance(moved, StagedSubdir):
                moved.parent_dir, moved.name = new_parent, name_new
            elif isinstance(moved, StagedFileNode):
                moved.renamed((self, name_old), (new_parent, name_new))
            if moved is not None:
                new_parent._kids[name_new] = moved

    def setxattr(self, name: str, value: bytes, ctx: Any) -> None:
        # Versions keep no extended attributes (nor ACLs): say so, and cp -a
        # and rsync -X carry on without them.
        raise fuse_error(errno.ENOTSUP)

    def removexattr(self, name: str, ctx: Any) -> None:
        raise fuse_error(errno.ENOTSUP)

    def link(self, new_parent_inode: int, new_name: str, ctx: Any) -> Any:
        raise fuse_error(errno.EPERM)  # no hard links to directories

    def attr(self) -> pyfuse3.EntryAttributes:
        with reasons(f"getattr {self.path or 'staging'}"):
            a = self.area.stat(self.path)
        if a is None:
            raise fuse_error(errno.ENOENT)
        return _attr(self, a)

    def setattr(self, attr: Any, fields: Any, fh: Any, ctx: Any) -> pyfuse3.EntryAttributes:
        """chmod, chown and times of a directory (staging itself too): kept into versions
        but for owners, kept while staged only."""
        path = self.path
        with reasons(f"setattr {path or 'staging'}"):
            if fields.update_size:
                raise fuse_error(errno.EISDIR)
            _set_attrs(self.area, path, attr, fields)
        return self.attr()


def _set_attrs(area: StagingArea, path: str, attr: Any, fields: Any) -> None:
    if fields.update_mode:
        area.chmod(path, attr.st_mode)
    if fields.update_uid or fields.update_gid:
        area.chown(
            path,
            attr.st_uid if fields.update_uid else -1,
            attr.st_gid if fields.update_gid else -1,
        )
    if fields.update_atime or fields.update_mtime:
        area.utimens(
            path,
            attr.st_atime_ns if fields.update_atime else None,
            attr.st_mtime_ns if fields.update_mtime else None,
        )


class StagingNode(StagedDir):
    """``proj/name/staging``: the top of one artifact's staging, with its control files."""

    def __init__(self, table: InodeTable, inode: int, artifact: Any) -> None:
        super().__init__(table, inode)
        self.artifact = artifact
        self._area: StagingArea | None = None
        self._controls: dict[str, ControlNode] = {}
        # Upper-layer inode -> its node: every name of a hard-linked file (weak, as _kids).
        self._by_ino: weakref.WeakValueDictionary[int, StagedFileNode] = (
            weakref.WeakValueDictionary()
        )

    @property
    def path(self) -> str:
        return ""

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

    def project_access(self) -> Any:
        return self.artifact.project_access()

    def attr(self) -> pyfuse3.EntryAttributes:
        return self.ctx.access.dir_attr(super().attr(), self.project_access())

    def file_node(self, ino: int | None, current: Node | None) -> StagedFileNode:
        """The node of a staged file or symlink whose upper inode is ``ino`` (None:
        a base file not copied up); ``current``: the node its name had."""
        with _nodes_lock:
            node = self._by_ino.get(ino) if ino is not None else None
            if node is None:
                if isinstance(current, StagedFileNode) and current.ino in (None, ino):
                    node = current  # a base file now copied up keeps its node
                else:
                    node = self.table.intern(("staged", next(_serial)), StagedFileNode, self)  # type: ignore[assignment]
            assert node is not None
            self.note_ino(node, ino)
            return node

    def note_ino(self, node: StagedFileNode, ino: int | None) -> None:
        with _nodes_lock:
            if ino is not None and node.ino != ino:
                if node.ino is not None and self._by_ino.get(node.ino) is node:
                    del self._by_ino[node.ino]
                node.ino = ino
            if ino is not None:
                self._by_ino[ino] = node

    def drop_ino(self, node: StagedFileNode) -> None:
        with _nodes_lock:
            if node.ino is not None and self._by_ino.get(node.ino) is node:
                del self._by_ino[node.ino]

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
            return self.control(name)  # reachable by name, never listed
        return super().lookup(name)

    def create(self, name: str, mode: int, flags: int, ctx: Any) -> tuple[FileHandle, Any]:
        if name == COMMIT:  # the kernel thought it absent (O_EXCL, or a stale entry)
            handle = CommitHandle(self, ctx)
            handle.commit_once()
            return handle, self.control(COMMIT).attr()
        if name in RESERVED:
            return self.control(name).open(flags, ctx), self.control(name).attr()
        return super().create(name, mode, flags, ctx)

    def mknod(self, name: str, mode: int, rdev: int, ctx: Any) -> pyfuse3.EntryAttributes:
        if name in RESERVED:
            raise fuse_error(errno.EEXIST)
        return super().mknod(name, mode, rdev, ctx)

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
            self.ctx.access.check_write(self.project_access(), ctx, f"commit {self.describe()}")
            committer = Committer.of_uid(ctx.uid) if ctx is not None else None
            result = self.area.commit(logged_by=run_id, committed_by=committer)
            log.info("%s", self.area.status().splitlines()[0])
        # Tell the kernel the old entries are gone rather than wait for timeouts.
        with _nodes_lock:
            names = list(self._kids)
            self._kids.clear()
            self._by_ino.clear()  # the staged inodes are gone: their numbers may come back
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


class StagedSubdir(StagedDir):
    """A directory inside staging, wherever it was moved to."""

    def __init__(self, table: InodeTable, inode: int, parent_dir: StagedDir, name: str) -> None:
        super().__init__(table, inode)
        self.parent_dir = parent_dir
        self.name = name

    @property
    def path(self) -> str:
        # One step per level: the cost of a call is linear in its depth.
        parts = []
        node: StagedDir = self
        while isinstance(node, StagedSubdir):
            parts.append(node.name)
            node = node.parent_dir
        return "/".join(reversed(parts))

    @property
    def area(self) -> StagingArea:
        return self.staging().area

    def staging(self) -> StagingNode:
        node: StagedDir = self
        while isinstance(node, StagedSubdir):
            node = node.parent_dir
        assert isinstance(node, StagingNode)
        return node

    def parent(self) -> Node:
        return self.parent_dir

    def describe(self) -> str:
        return f"{self.staging().describe()}/{self.path}"


class StagedFileNode(Node):
    """A staged file or symlink: one node for all its hard-linked names."""

    def __init__(self, table: InodeTable, inode: int, staging: StagingNode) -> None:
        super().__init__(table, inode)
        self.staging_node = staging
        self.ino: int | None = None
        self.links: list[tuple[StagedDir, str]] = []  # the names it was seen under
        self.handles: set[StagedHandle] = set()
        self._last: Attr | None = None  # for an open base file, once unlinked

    @property
    def area(self) -> StagingArea:
        return self.staging_node.area

    def parent(self) -> Node:
        path = self.links[0][0] if self.links else self.staging_node
        return path

    def path(self) -> str | None:
        """One current name of the file, or None once every name is gone."""
        with _nodes_lock:
            for d, name in self.links:
                if d._kids.get(name) is self:
                    return d._sub(name)
        return None

    def describe(self) -> str:
        return f"{self.staging_node.describe()}/{self.path() or '(unlinked)'}"

    def unlinked(self, d: StagedDir, name: str, *, last: bool) -> None:
        with _nodes_lock:
            if (d, name) in self.links:
                self.links.remove((d, name))
            if last and not self.handles:
                self.staging_node.drop_ino(self)

    def renamed(self, old: tuple[StagedDir, str], new: tuple[StagedDir, str]) -> None:
        with _nodes_lock:
            self.links = [new if link == old else link for link in self.links]
            if new not in self.links:
                self.links.append(new)

    def closed(self, handle: StagedHandle) -> None:
        with _nodes_lock:
            self.handles.discard(handle)
            if not self.handles and self.path() is None:
                self.staging_node.drop_ino(self)

    def _open_file(self) -> StagedFile | None:
        """An open of this file holding its inode: what is left once unlinked."""
        for h in list(self.handles):
            if h.file.has_inode:
                return h.file
        return None

    def _stat(self) -> Attr:
        path = self.path()
        a = self.area.stat(path) if path is not None else None
        if a is None:
            f = self._open_file()
            if f is not None:
                return f.stat()
            if self.handles and self._last is not None:
                # A base file open for reading: its bytes stay readable.
                return dataclasses.replace(self._last, nlink=0)
            raise fuse_error(errno.ENOENT)
        self._last = a
        if a.ino is not None:
            self.staging_node.note_ino(self, a.ino)  # copied up since last seen
        return a

    @property
    def mode(self) -> int:  # type: ignore[override]
        try:
            a = self._stat()
        except (pyfuse3.FUSEError, OSError):
            return stat.S_IFREG
        return _KIND_BITS.get(a.kind, stat.S_IFREG) | a.mode

    def attr(self) -> pyfuse3.EntryAttributes:
        with reasons(f"getattr {self.describe()}"):
            return _attr(self, self._stat())

    def readlink(self) -> str:
        path = self.path()
        if path is None:
            raise fuse_error(errno.ENOENT)
        with reasons(f"readlink {path}"):
            return self.area.readlink(path)

    def open(self, flags: int, ctx: Any) -> FileHandle:
        path = self.path()
        if path is None:
            raise fuse_error(errno.ENOENT)
        with reasons(f"open {path}"):
            self._last = self.area.stat(path)
            return StagedHandle(self.area.open(path, flags), self)

    def link(self, new_parent_inode: int, new_name: str, ctx: Any) -> pyfuse3.EntryAttributes:
        new_parent = self.table.get(new_parent_inode)
        if not isinstance(new_parent, StagedDir) or new_parent.area is not self.area:
            raise fuse_error(errno.EXDEV)
        path = self.path()
        if path is None:
            raise fuse_error(errno.ENOENT)
        new = new_parent._sub(new_name)
        with reasons(f"link {path} to {new}"):
            if isinstance(new_parent, StagingNode) and new_name in RESERVED:
                raise fuse_error(errno.EEXIST)
            a = self.area.link(path, new)
        with _nodes_lock:
            self.staging_node.note_ino(self, a.ino)
            new_parent._kids[new_name] = self
            if (new_parent, new_name) not in self.links:
                self.links.append((new_parent, new_name))
        return self.attr()

    def setattr(self, attr: Any, fields: Any, fh: Any, ctx: Any) -> pyfuse3.EntryAttributes:
        path = self.path()
        with reasons(f"setattr {self.describe()}"):
            if path is None:
                self._set_open(attr, fields)
            else:
                if fields.update_size:
                    self.area.truncate(path, attr.st_size)
                _set_attrs(self.area, path, attr, fields)
            return _attr(self, self._stat())

    def _set_open(self, attr: Any, fields: Any) -> None:
        """ftruncate, fchmod, fchown, futimens of an open file with no name left."""
        f = self._open_file()
        if f is None:
            raise fuse_error(errno.ENOENT)
        if fields.update_size:
            f.truncate(attr.st_size)
        if fields.update_mode:
            f.chmod(attr.st_mode)
        if fields.update_uid or fields.update_gid:
            f.chown(
                attr.st_uid if fields.update_uid else -1, attr.st_gid if fields.update_gid else -1
            )
        if fields.update_atime or fields.update_mtime:
            f.utimens(
                attr.st_atime_ns if fields.update_atime else None,
                attr.st_mtime_ns if fields.update_mtime else None,
            )

    def setxattr(self, name: str, value: bytes, ctx: Any) -> None:
        raise fuse_error(errno.ENOTSUP)

    def removexattr(self, name: str, ctx: Any) -> None:
        raise fuse_error(errno.ENOTSUP)


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
        pa = self.staging_node.project_access()
        return self.ctx.access.control_attr(out, pa, read_only=self.name == STATUS)

    def setxattr(self, name: str, value: bytes, ctx: Any) -> None:
        raise fuse_error(errno.ENOTSUP)

    def link(self, new_parent_inode: int, new_name: str, ctx: Any) -> Any:
        raise fuse_error(errno.EPERM)  # a control file has one name

    def open(self, flags: int, ctx: Any) -> FileHandle:
        if self.name == COMMIT:
            handle = CommitHandle(self.staging_node, ctx)
            if flags & os.O_TRUNC:
                handle.commit_once()  # `> .commit`: the open reports how the commit went
            return handle
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


def answers_now(node: Node, op: str, name: str = "") -> bool:
    """Whether the mount may try ``op`` on ``node`` on its event loop (see the
    module's docstring): "lookup" or "create" of ``name`` in a staged directory,
    "attr", "xattrs" of a directory below staging/, "attr", "readlink" and
    "xattrs" of a staged file. The call may still raise ``WouldBlock``."""
    if isinstance(node, StagingNode):
        # Its own attributes and xattrs read the store; an area not yet open
        # would run recovery; control files act or read the project's record.
        return op in ("lookup", "create") and node._area is not None and name not in RESERVED
    if isinstance(node, StagedSubdir):
        return op in ("lookup", "create", "attr", "xattrs")
    if isinstance(node, StagedFileNode):
        return op in ("attr", "readlink", "xattrs")
    return False
