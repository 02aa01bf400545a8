"""FUSE calls mapped onto the inode table (nodes.py). Thin on purpose.

Every call that may block runs in a worker thread under one capacity
limiter, so a slow fetch or store listing never holds up other requests.
Every call is guarded: whatever it raises becomes an errno (errors.py's
table), with the reason in the log, and the daemon goes on.

Requests that need no I/O are answered on the event loop instead (the
"fast paths": a worker-thread hop costs milliseconds under load, the answer
microseconds): metadata of version trees whose manifest is open
(``InodeTable.answers_now``), and in staging the lookups, attributes,
xattrs, flushes and releases, creates and small writes that
``staging_nodes.answers_now``/``StagedHandle.tries_now`` name. A staging
call tried on the loop may raise ``WouldBlock`` (it would fetch, or wait for
a lock a commit holds; see ``artfs/staging/nowait.py``) before changing
anything, and is then made again in a worker. ``user.artfs.stats`` counts
both: ``now`` (answered on the loop) and ``deferred`` (sent on to a worker),
by opcode.

Lookup counts: each reply that hands the kernel an inode (lookup, create,
mkdir, mknod, symlink, link, and every readdirplus entry) counts one; a
``forget`` takes them back, and at zero the table may let the node go
(``InodeTable.forget``), so the table stays as large as what the kernel
holds, not as everything ever looked up or staged.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import stat
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pyfuse3
import trio

from artfs.fs import XATTR_PREFIX
from artfs.fs.errors import to_fuse_error
from artfs.fs.files import FileHandle, VersionFileHandle
from artfs.fs.lineage import RunRecorder, run_of_process
from artfs.fs.nodes import (
    TREE_SHIFT,
    InodeTable,
    Node,
    VersionDirCursor,
    VersionNode,
    negative_attr,
)
from artfs.fs.staging_nodes import answers_now as staged_answers_now
from artfs.staging.nowait import WouldBlock, without_waiting

log = logging.getLogger("artfs.fs")
T = TypeVar("T")
# Entries fetched per readdir round trip; what the kernel's buffer does not
# take is kept for its next request.
READDIR_BATCH = 256
# Levers a benchmark turns off to measure them (ARTFS_BENCH_OFF=fast-paths,xattr-enotsup,...):
# answering version-tree metadata on the event loop, ENOTSUP for
# security.*/system.* xattrs, opens of small files whose verified bytes are
# in the page cache (open-now), reads of verified files from the page
# cache (read-now), and on the loop in staging: lookups,
# attributes, xattrs, flushes and releases (staged-now), creates
# (staged-create-now), writes of up to WRITE_NOW bytes (staged-write-now).
_OFF = set(os.environ.get("ARTFS_BENCH_OFF", "").split(","))
FAST_PATHS = "fast-paths" not in _OFF
XATTR_ENOTSUP = "xattr-enotsup" not in _OFF
OPEN_NOW = "open-now" not in _OFF
READ_NOW = "read-now" not in _OFF
STAGED_NOW = "staged-now" not in _OFF
STAGED_CREATE_NOW = "staged-create-now" not in _OFF
STAGED_WRITE_NOW = "staged-write-now" not in _OFF
# Levers a benchmark turns on to measure them (ARTFS_BENCH_ON=writeback-cache,...):
# the kernel's writeback cache (see issue 11's note for why it stays off).
_ON = set(os.environ.get("ARTFS_BENCH_ON", "").split(","))
WRITEBACK_CACHE = "writeback-cache" in _ON
# A write this small is a pwrite into the page cache and a hash of a few
# microseconds; a bigger one stays in a worker, where the kernel's dirty-page
# throttling may make it wait (big-writes-now: up to 1 MiB on the loop).
WRITE_NOW = (1 << 20) if "big-writes-now" in _ON else 128 << 10
# ENOSYS to the first flush: the kernel sends none again, on any file (one
# request less per file closed, read or written: a `tar` re-read 2 requests a
# file instead of 3, ~15% faster in a same-run A/B). Only on a read-only mount
# (`Operations(no_flush=...)`): the kernel's flag is the whole mount's, and
# drafts need their flush, where close(2) publishes a file to the other
# machines and returns a conflict's error (t4_mount_drafts).
FLUSH_ENOSYS = "flush-enosys" in _ON


def _name(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


class _OpenDir:
    def __init__(self, cursor: Any) -> None:
        self.cursor = cursor
        self.pending_offset = -1
        self.pending: list[tuple[str, pyfuse3.EntryAttributes, int]] = []


class ReadStats:
    """What the kernel asked for: request sizes show whether read-ahead took effect."""

    def __init__(self) -> None:
        self.reads = 0
        self.bytes = 0
        self.max_read = 0
        self.sizes: Counter[int] = Counter()
        self.opens = 0
        self.reopens = 0  # opens answered from a kept reader, on the event loop
        self.opens_now = 0  # opens of verified small files read on the event loop
        self.errors = 0
        # opcode -> [requests, seconds spent answering them]
        self.ops: dict[str, list[float]] = {}
        self.now: Counter[str] = Counter()  # staging requests answered on the event loop
        self.deferred: Counter[str] = Counter()  # tried there, sent on to a worker

    def op(self, name: str, seconds: float) -> None:
        counts = self.ops.get(name)
        if counts is None:
            counts = self.ops[name] = [0, 0.0]
        counts[0] += 1
        counts[1] += seconds

    def record(self, size: int, got: int) -> None:
        self.reads += 1
        self.bytes += got
        self.max_read = max(self.max_read, size)
        self.sizes[size] += 1


class Operations(pyfuse3.Operations):
    enable_writeback_cache = WRITEBACK_CACHE

    def __init__(
        self, table: InodeTable, limiter: trio.CapacityLimiter, *, no_flush: bool = False
    ) -> None:
        super().__init__()
        self.table = table
        self.limiter = limiter
        self.no_flush = no_flush or FLUSH_ENOSYS  # ENOSYS to the first flush
        self.stats = ReadStats()
        self.lineage = RunRecorder(table.ctx.repo)
        self._files: dict[int, FileHandle] = {}
        self._dirs: dict[int, _OpenDir] = {}
        self._next_fh = 1
        self._lookups: dict[int, int] = {}  # inode -> lookups the kernel holds

    # -- plumbing -------------------------------------------------------------

    def _fail(self, what: str, e: BaseException) -> pyfuse3.FUSEError:
        error, counts = to_fuse_error(what, e)
        if counts:
            self.stats.errors += 1
        return error

    async def _run(self, what: str, fn: Callable[..., T], *args: Any) -> T:
        try:
            return await trio.to_thread.run_sync(fn, *args, limiter=self.limiter)
        except Exception as e:
            raise self._fail(what, e) from None

    def _counted(self, attr: pyfuse3.EntryAttributes) -> pyfuse3.EntryAttributes:
        """``attr`` is going to the kernel, which counts one lookup of its inode."""
        inode = attr.st_ino
        if inode:
            n = self._lookups.get(inode, 0)
            self._lookups[inode] = n + 1
            if n == 0:
                self.table.hold(inode)
        return attr

    def _node(self, inode: int) -> Node:
        return self.table.get(inode)

    async def _call(self, what: str, inode: int, method: str, *args: Any, now: bool = False) -> Any:
        """``node.method(*args)`` in a worker thread; on the event loop instead
        when ``now`` (the caller checked that the answer needs no I/O)."""

        def run() -> Any:
            node = self._node(inode)
            return getattr(node, method)(*args)

        if now:
            return self._now(what, run)
        return await self._run(what, run)

    def _now(self, what: str, fn: Callable[[], T]) -> T:
        # The thread hop costs more than the answer (a SQLite row of an open
        # manifest): under load each hop is milliseconds, the query microseconds.
        try:
            return fn()
        except Exception as e:
            raise self._fail(what, e) from None

    def _answers_now(self, inode: int, *, root: bool = True) -> bool:
        return FAST_PATHS and self.table.answers_now(inode, root=root)

    def _staged_now(self, inode: int, op: str, name: str = "") -> bool:
        """Whether ``op`` on staged node ``inode`` may be tried on the event loop."""
        if not STAGED_NOW or inode >> TREE_SHIFT:
            return False
        try:
            node = self.table.get(inode)  # not a tree's inode: dictionaries only
        except pyfuse3.FUSEError:
            return False
        return staged_answers_now(node, op, name)

    def _try_now(
        self, op: str, what: str, fn: Callable[..., T], *args: Any
    ) -> tuple[bool, T | None]:
        """``fn(*args)`` on the event loop, where staging may not wait: (True, its
        answer), or (False, None) when it raised ``WouldBlock`` having changed nothing."""
        try:
            with without_waiting():
                value = fn(*args)
        except WouldBlock:
            self.stats.deferred[op] += 1
            return False, None
        except Exception as e:
            raise self._fail(what, e) from None
        self.stats.now[op] += 1
        return True, value

    async def _staged(self, op: str, what: str, now: bool, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` on the event loop when ``now`` and it need not wait, else in a worker."""
        if now:
            done, value = self._try_now(op, what, fn, *args)
            if done:
                return value  # type: ignore[return-value]
        return await self._run(what, fn, *args)

    def _new_fh(self) -> int:
        fh = self._next_fh
        self._next_fh += 1
        return fh

    # -- names and attributes -------------------------------------------------

    async def lookup(
        self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        text = _name(name)

        def run() -> pyfuse3.EntryAttributes:
            parent = self._node(parent_inode)
            if text == ".":
                return parent.attr()
            if text == "..":
                return parent.parent().attr()
            child = parent.lookup(text)
            return child.attr() if child is not None else negative_attr(parent.negative_timeout())

        what = f"lookup {text!r} in inode {parent_inode}"
        if text not in (".", "..") and self._answers_now(parent_inode):
            return self._counted(self._now(what, run))
        now = text not in (".", "..") and self._staged_now(parent_inode, "lookup", text)
        return self._counted(await self._staged("lookup", what, now, run))

    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        return await self._attr(inode)

    async def access(self, inode: int, mode: int, ctx: pyfuse3.RequestContext) -> bool:
        # Asked only without default_permissions, where only root enters
        # (daemon._fuse_options): root may read and write anything here (the
        # nodes refuse what is read-only), and execute what has an x bit.
        if not mode & os.X_OK:
            return True
        st_mode = (await self._attr(inode)).st_mode
        return stat.S_ISDIR(st_mode) or bool(st_mode & 0o111)

    async def _attr(self, inode: int) -> pyfuse3.EntryAttributes:
        if self._staged_now(inode, "attr"):
            return await self._staged(
                "getattr", f"getattr {inode}", True, self._node_call, inode, "attr"
            )
        now = self._answers_now(inode)
        if now and (kept := self.table.ctx.listings.attr(inode)) is not None:
            return kept  # a version entry's attributes, as its kept listing page has them
        return await self._call(f"getattr {inode}", inode, "attr", now=now)

    async def readlink(self, inode: int, ctx: pyfuse3.RequestContext) -> bytes:
        if self._staged_now(inode, "readlink"):
            what = f"readlink {inode}"
            target = await self._staged("readlink", what, True, self._node_call, inode, "readlink")
        else:
            now = self._answers_now(inode)
            target = await self._call(f"readlink {inode}", inode, "readlink", now=now)
        return target.encode("utf-8", "surrogateescape")

    def _node_call(self, inode: int, method: str, *args: Any) -> Any:
        return getattr(self._node(inode), method)(*args)

    async def forget(self, inode_list: Any) -> None:
        for inode, n in inode_list:
            left = self._lookups.get(inode, 0) - n
            if left > 0:
                self._lookups[inode] = left
                continue
            self._lookups.pop(inode, None)
            self.table.forget(inode)

    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        s = pyfuse3.StatvfsData()
        s.f_bsize = s.f_frsize = 1 << 20
        s.f_blocks = s.f_bfree = s.f_bavail = 0
        s.f_files = s.f_ffree = s.f_favail = 0
        s.f_namemax = 255
        staging = getattr(self.table, "staging", None)
        if staging is not None:
            # What staging can still take: the state directory's filesystem.
            v = await self._run("statfs", os.statvfs, staging.root)
            s.f_bsize, s.f_frsize = v.f_bsize, v.f_frsize
            s.f_blocks, s.f_bfree, s.f_bavail = v.f_blocks, v.f_bfree, v.f_bavail
            s.f_files, s.f_ffree, s.f_favail = v.f_files, v.f_ffree, v.f_favail
        return s

    # -- directories ----------------------------------------------------------

    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        now = self._answers_now(inode)
        cursor = await self._call(f"opendir {inode}", inode, "open_dir", now=now)
        fh = self._new_fh()
        self._dirs[fh] = _OpenDir(cursor)
        return fh

    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        d = self._dirs[fh]
        if d.pending and d.pending_offset == start_id:
            entries = d.pending
        elif isinstance(d.cursor, VersionDirCursor) and self._answers_now(d.cursor.node.inode):
            entries = self._now(
                f"readdir fh {fh}", lambda: d.cursor.entries(start_id, READDIR_BATCH)
            )
        else:
            entries = await self._run(f"readdir fh {fh}", d.cursor.entries, start_id, READDIR_BATCH)
        offset = start_id
        for i, (name, attr, next_id) in enumerate(entries):
            if not pyfuse3.readdir_reply(
                token, name.encode("utf-8", "surrogateescape"), attr, next_id
            ):
                d.pending, d.pending_offset = entries[i:], offset
                return
            self._counted(attr)  # readdirplus: the kernel counts a lookup per entry
            offset = next_id
        d.pending, d.pending_offset = [], -1

    async def releasedir(self, fh: int) -> None:
        self._dirs.pop(fh, None)

    # -- files ----------------------------------------------------------------

    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        handle = self._reopen(inode, flags)
        if handle is not None:
            self.stats.reopens += 1
        elif OPEN_NOW and self._answers_now(inode):
            handle = await self._call(f"open inode {inode}", inode, "open_now", flags, now=True)
            self.stats.opens_now += handle is not None
        if handle is None:
            handle = await self._call(f"open inode {inode}", inode, "open", flags, ctx)
        run_id = run_of_process(ctx.pid)  # kept per live pid: no /proc read per open
        if run_id is not None:
            await self._run(f"lineage of inode {inode}", self._record_use, inode, run_id)
        fh = self._new_fh()
        self._files[fh] = handle
        self.stats.opens += 1
        return pyfuse3.FileInfo(fh=fh, keep_cache=handle.keep_cache, direct_io=handle.direct_io)

    async def read(self, fh: int, off: int, size: int) -> bytes | memoryview:
        handle = self._files[fh]
        if not handle.read_blocks:
            data = handle.read(off, size)  # in memory: no description of it built
        else:
            what = f"read fh {fh} at {off}"
            data = self._now(what, lambda: handle.read_now(off, size)) if READ_NOW else None
            if data is not None:
                self.stats.now["read"] += 1  # from the page cache: a thread hop costs more
            else:
                data = await self._run(what, handle.read, off, size)
        self.stats.record(size, len(data))
        return data

    async def write(self, fh: int, off: int, buf: bytes) -> int:
        handle = self._files[fh]
        now = STAGED_WRITE_NOW and len(buf) <= WRITE_NOW and self._tries_now(handle, "write")
        return await self._staged("write", f"write fh {fh}", now, handle.write, off, buf)

    async def flush(self, fh: int) -> None:
        if self.no_flush:
            raise pyfuse3.FUSEError(errno.ENOSYS)
        handle = self._files.get(fh)
        flush = getattr(handle, "flush", None)
        if flush is not None:
            now = self._tries_now(handle, "flush")
            await self._staged("flush", f"flush fh {fh}", now, flush)

    def _tries_now(self, handle: Any, op: str) -> bool:
        tries_now = getattr(handle, "tries_now", None)  # staged files only
        return STAGED_NOW and tries_now is not None and tries_now(op)

    async def fsync(self, fh: int, datasync: bool) -> None:
        fsync = getattr(self._files.get(fh), "fsync", None)
        if fsync is not None:
            await self._run(f"fsync fh {fh}", fsync, datasync)

    def _record_use(self, inode: int, run_id: str) -> None:
        node = self._node(inode)
        if isinstance(node, VersionNode):
            self.lineage.record_use(run_id, node.tree.version)

    def _reopen(self, inode: int, flags: int) -> FileHandle | None:
        """A read-only open of a file whose reader is still at hand: no worker thread."""
        if flags & (os.O_ACCMODE | os.O_TRUNC | os.O_APPEND) != os.O_RDONLY:
            return None
        reader = self.table.ctx.readers.acquire(inode)
        if reader is None:
            return None
        return VersionFileHandle(reader, self.table.ctx.readers, inode)

    async def release(self, fh: int) -> None:
        handle = self._files.pop(fh, None)
        if handle is None:
            return
        if handle.release_blocks:
            now = self._tries_now(handle, "release")
            await self._staged("release", f"release fh {fh}", now, handle.release)
        else:
            handle.release()

    # -- extended attributes ----------------------------------------------------

    async def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        # ls -l asks every file for security.selinux and system.posix_acl_access.
        # Only user.* names exist here: other namespaces are "not supported"
        # (ENOTSUP), which ls and cp -a remember for the whole device and stop
        # asking; ENODATA would cost a round trip per file. (Never ENOSYS: the
        # kernel would then refuse every xattr, user.artfs.* too.)
        if not name.startswith(b"user."):
            raise pyfuse3.FUSEError(errno.ENOTSUP if XATTR_ENOTSUP else pyfuse3.ENOATTR)
        if not name.startswith(XATTR_PREFIX.encode()):
            raise pyfuse3.FUSEError(pyfuse3.ENOATTR)
        values = await self._xattrs(f"getxattr {inode}", inode, "getxattr")
        try:
            return values[_name(name)]
        except KeyError:
            raise pyfuse3.FUSEError(pyfuse3.ENOATTR) from None

    async def listxattr(self, inode: int, ctx: pyfuse3.RequestContext) -> list[bytes]:
        values = await self._xattrs(f"listxattr {inode}", inode, "listxattr")
        return [k.encode() for k in values]

    async def _xattrs(self, what: str, inode: int, op: str) -> dict[str, bytes]:
        if self._staged_now(inode, "xattrs"):
            return await self._staged(op, what, True, self._node_call, inode, "xattrs")
        return await self._call(what, inode, "xattrs", now=self._answers_now(inode, root=False))

    # -- changes: nodes refuse them (EROFS) unless the write side allows ----------

    async def setxattr(
        self, inode: int, name: bytes, value: bytes, ctx: pyfuse3.RequestContext
    ) -> None:
        await self._call(f"setxattr {inode}", inode, "setxattr", _name(name), value, ctx)

    async def removexattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        await self._call(f"removexattr {inode}", inode, "removexattr", _name(name), ctx)

    async def setattr(
        self,
        inode: int,
        attr: pyfuse3.EntryAttributes,
        fields: pyfuse3.SetattrFields,
        fh: int | None,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        return await self._call(f"setattr {inode}", inode, "setattr", attr, fields, fh, ctx)

    async def mkdir(
        self, parent_inode: int, name: bytes, mode: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        what = f"mkdir {_name(name)!r} in inode {parent_inode}"
        return self._counted(await self._call(what, parent_inode, "mkdir", _name(name), mode, ctx))

    async def mknod(
        self, parent_inode: int, name: bytes, mode: int, rdev: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        what = f"mknod {_name(name)!r} in inode {parent_inode}"
        attr = await self._call(what, parent_inode, "mknod", _name(name), mode, rdev, ctx)
        return self._counted(attr)

    async def create(
        self, parent_inode: int, name: bytes, mode: int, flags: int, ctx: pyfuse3.RequestContext
    ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        text = _name(name)
        what = f"create {text!r} in inode {parent_inode}"
        now = STAGED_CREATE_NOW and self._staged_now(parent_inode, "create", text)
        args = (parent_inode, "create", text, mode, flags, ctx)
        handle, attr = await self._staged("create", what, now, self._node_call, *args)
        fh = self._new_fh()
        self._files[fh] = handle
        info = pyfuse3.FileInfo(fh=fh, keep_cache=handle.keep_cache, direct_io=handle.direct_io)
        return info, self._counted(attr)

    async def unlink(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        what = f"unlink {_name(name)!r} in inode {parent_inode}"
        await self._call(what, parent_inode, "unlink", _name(name), ctx)

    async def rmdir(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        what = f"rmdir {_name(name)!r} in inode {parent_inode}"
        await self._call(what, parent_inode, "rmdir", _name(name), ctx)

    async def symlink(
        self, parent_inode: int, name: bytes, target: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        what = f"symlink {_name(name)!r} in inode {parent_inode}"
        attr = await self._call(what, parent_inode, "symlink", _name(name), _name(target), ctx)
        return self._counted(attr)

    async def rename(
        self,
        parent_inode_old: int,
        name_old: bytes,
        parent_inode_new: int,
        name_new: bytes,
        flags: int,
        ctx: pyfuse3.RequestContext,
    ) -> None:
        what = f"rename {_name(name_old)!r} in inode {parent_inode_old}"
        await self._call(
            what,
            parent_inode_old,
            "rename",
            _name(name_old),
            parent_inode_new,
            _name(name_new),
            flags,
            ctx,
        )

    async def link(
        self, inode: int, new_parent_inode: int, new_name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        what = f"link inode {inode} as {_name(new_name)!r}"
        return self._counted(
            await self._call(what, inode, "link", new_parent_inode, _name(new_name), ctx)
        )


# Every request handler, guarded: nothing a request raises reaches pyfuse3's
# loop (which would end the mount); it becomes an errno for that request.
_OPS = [
    "lookup",
    "getattr",
    "readlink",
    "forget",
    "statfs",
    "opendir",
    "readdir",
    "releasedir",
    "open",
    "read",
    "write",
    "flush",
    "fsync",
    "release",
    "access",
    "getxattr",
    "listxattr",
    "setxattr",
    "removexattr",
    "setattr",
    "mkdir",
    "mknod",
    "create",
    "unlink",
    "rmdir",
    "symlink",
    "rename",
    "link",
]


def _guarded(name: str, fn: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    @functools.wraps(fn)
    async def guarded(self: Operations, *args: Any) -> Any:
        start = time.perf_counter()
        try:
            return await fn(self, *args)
        except pyfuse3.FUSEError:
            raise
        except Exception as e:
            error = self._fail(f"{name} {args[0] if args else ''}".strip(), e)
            if name == "forget":
                return None  # forget has no reply: an error raised here would end the loop
            raise error from None
        finally:
            # Requests by opcode and the time each took (wall time: a request
            # waiting for a worker thread or the store counts that wait).
            self.stats.op(name, time.perf_counter() - start)

    return guarded


for _op in _OPS:
    setattr(Operations, _op, _guarded(_op, getattr(Operations, _op)))


def stats_of(ops: Operations, opener: Any, cache: Any) -> dict[str, Any]:
    s = ops.stats
    return {
        "reads": s.reads,
        "read_bytes": s.bytes,
        "max_read": s.max_read,
        "read_sizes": {str(k): v for k, v in sorted(s.sizes.items())},
        "opens": s.opens,
        "reopens": s.reopens,
        "opens_now": s.opens_now,
        "errors": s.errors,
        "ops": {k: [int(n), round(t, 4)] for k, (n, t) in sorted(s.ops.items())},
        "now": dict(sorted(s.now.items())),
        "deferred": dict(sorted(s.deferred.items())),
        "fetches": cache.fetches,
        "part_fetches": getattr(cache, "part_fetches", 0),
        "verified_blobs": opener.verified_blobs,
        "verified_bytes": opener.verified_bytes,
        "verify_seconds": round(opener.verify_seconds, 3),
        "listing_hits": ops.table.ctx.listings.hits,
        "attr_hits": ops.table.ctx.listings.attr_hits,
        "prefetch": opener.prefetch.stats(),
        "nodes": ops.table.size(),
        "nodes_live": ops.table.live(),
        "lookups_held": len(ops._lookups),
        "pid": os.getpid(),
    }
