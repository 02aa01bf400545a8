"""The floor under every staging lever: what pyfuse3 + trio costs per request here.

    python -m bench.bench_fuse_floor            # small: 10,000 x 4 KiB in 100 dirs
    python -m bench.bench_fuse_floor --full     # the issue's small: 100,000 x 4 KiB
    python -m bench.bench_fuse_floor --medium   # also medium (500 x 200 KiB)

A minimal pyfuse3 filesystem, in this file and using no artfs code: a
passthrough to a backing directory that answers lookup, getattr, create,
write, flush, release, mkdir (and what ``cp -r`` needs besides) with one
local syscall each, with artfs's mount options and staging's timeouts
(1 s entries and attributes, negative entries too, ENOTSUP for xattrs). It
is mounted four times in one run: answering every request on the trio
thread ("loop"), sending every request through ``trio.to_thread.run_sync``
("hop", what artfs does for a request that may block), and on the loop
without ``default_permissions`` ("loop-nodp": the kernel then does not ask
for the attributes of the directory each create made stale) or with ENOSYS
to the first flush ("loop-noflush": the kernel sends no more). ``cp -r`` of the
dataset into each mount is timed against ``cp -r`` and ``cp -r && sync``
into a plain directory of the same disk, measured just before, with the
requests the kernel sent per file by opcode (count, seconds).

"loop" is the ceiling of any lever artfs can pull without fewer requests:
the kernel round trip and pyfuse3's per-request Python, nothing else.
"hop" minus "loop" is what one worker-thread hop per request costs.

Prints figures, asserts nothing.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

TTL = 1.0  # as artfs's staging (STAGING_TTL)
STATS_XATTR = b"user.floor.stats"
# Every request on the loop, every request through a worker thread; and on
# the loop without default_permissions (the kernel then asks no getattr of the
# parent that each create made stale) or without flushes.
MODES = ("loop", "hop", "loop-nodp", "loop-noflush")
TRACE = bool(os.environ.get("FLOOR_TRACE"))  # print what each getattr is about


# -- the filesystem (runs in a child process: ``--serve``) ---------------------


def serve(mountpoint: Path, backing: Path, mode: str) -> None:
    """``mode``: "loop" or "hop", with "-nodp" (no default_permissions) or
    "-noflush" (ENOSYS to the first flush: the kernel sends no more)."""
    import pyfuse3
    import trio

    hop = mode.startswith("hop")

    class Floor(pyfuse3.Operations):
        def __init__(self) -> None:
            super().__init__()
            self.paths: dict[int, str] = {pyfuse3.ROOT_INODE: str(backing)}
            self.inodes: dict[str, int] = {str(backing): pyfuse3.ROOT_INODE}
            self.next_inode = pyfuse3.ROOT_INODE + 1
            self.ops: dict[str, list[float]] = {}

        def _inode(self, path: str) -> int:
            inode = self.inodes.get(path)
            if inode is None:
                inode = self.inodes[path] = self.next_inode
                self.paths[inode] = path
                self.next_inode += 1
            return inode

        def _attr(self, inode: int, st: os.stat_result) -> Any:
            a = pyfuse3.EntryAttributes()
            a.st_ino = inode
            a.st_mode, a.st_nlink, a.st_size = st.st_mode, st.st_nlink, st.st_size
            a.st_uid, a.st_gid = st.st_uid, st.st_gid
            a.st_atime_ns, a.st_mtime_ns, a.st_ctime_ns = (
                st.st_atime_ns,
                st.st_mtime_ns,
                st.st_ctime_ns,
            )
            # 1 MiB, as artfs: cp sizes its buffer by it (one write per 200 KiB file)
            a.st_blksize, a.st_blocks = 1 << 20, (st.st_size + 511) // 512
            a.entry_timeout = a.attr_timeout = TTL
            return a

        async def _answer(self, op: str, fn: Callable[[], Any]) -> Any:
            start = time.perf_counter()
            try:
                if hop:
                    return await trio.to_thread.run_sync(fn)
                return fn()
            except OSError as e:
                raise pyfuse3.FUSEError(e.errno or errno.EIO) from None
            finally:
                counts = self.ops.setdefault(op, [0, 0.0])
                counts[0] += 1
                counts[1] += time.perf_counter() - start

        async def lookup(self, parent: int, name: bytes, ctx: Any) -> Any:
            path = os.path.join(self.paths[parent], os.fsdecode(name))

            def run() -> Any:
                try:
                    st = os.lstat(path)
                except FileNotFoundError:
                    a = pyfuse3.EntryAttributes()
                    a.st_ino, a.entry_timeout = 0, TTL  # a negative entry
                    return a
                return self._attr(self._inode(path), st)

            return await self._answer("lookup", run)

        async def getattr(self, inode: int, ctx: Any) -> Any:
            path = self.paths[inode]
            if TRACE:
                print(f"getattr {path}", file=sys.stderr, flush=True)
            return await self._answer("getattr", lambda: self._attr(inode, os.lstat(path)))

        async def setattr(self, inode: int, attr: Any, fields: Any, fh: Any, ctx: Any) -> Any:
            path = self.paths[inode]

            def run() -> Any:
                if fields.update_size:
                    os.truncate(path, attr.st_size)
                if fields.update_mode:
                    os.chmod(path, stat.S_IMODE(attr.st_mode))
                if fields.update_atime or fields.update_mtime:
                    st = os.lstat(path)
                    os.utime(
                        path,
                        ns=(
                            attr.st_atime_ns if fields.update_atime else st.st_atime_ns,
                            attr.st_mtime_ns if fields.update_mtime else st.st_mtime_ns,
                        ),
                    )
                return self._attr(inode, os.lstat(path))

            return await self._answer("setattr", run)

        async def getxattr(self, inode: int, name: bytes, ctx: Any) -> bytes:
            start = time.perf_counter()
            try:
                if name == STATS_XATTR and inode == pyfuse3.ROOT_INODE:
                    return json.dumps(self.ops).encode()
                raise pyfuse3.FUSEError(errno.ENOTSUP)  # as artfs: no round trip per file
            finally:
                counts = self.ops.setdefault("getxattr", [0, 0.0])
                counts[0] += 1
                counts[1] += time.perf_counter() - start

        async def mkdir(self, parent: int, name: bytes, mode: int, ctx: Any) -> Any:
            path = os.path.join(self.paths[parent], os.fsdecode(name))

            def run() -> Any:
                os.mkdir(path, mode & 0o7777)
                return self._attr(self._inode(path), os.lstat(path))

            return await self._answer("mkdir", run)

        async def create(self, parent: int, name: bytes, mode: int, flags: int, ctx: Any) -> Any:
            path = os.path.join(self.paths[parent], os.fsdecode(name))

            def run() -> Any:
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, mode & 0o7777)
                return pyfuse3.FileInfo(fh=fd), self._attr(self._inode(path), os.fstat(fd))

            return await self._answer("create", run)

        async def open(self, inode: int, flags: int, ctx: Any) -> Any:
            path = self.paths[inode]
            return await self._answer(
                "open", lambda: pyfuse3.FileInfo(fh=os.open(path, flags & ~os.O_CREAT))
            )

        async def read(self, fh: int, off: int, size: int) -> bytes:
            return await self._answer("read", lambda: os.pread(fh, size, off))

        async def write(self, fh: int, off: int, buf: bytes) -> int:
            return await self._answer("write", lambda: os.pwrite(fh, buf, off))

        async def flush(self, fh: int) -> None:
            if mode.endswith("-noflush"):
                self.ops.setdefault("flush", [0, 0.0])[0] += 1
                raise pyfuse3.FUSEError(errno.ENOSYS)
            await self._answer("flush", lambda: None)

        async def release(self, fh: int) -> None:
            await self._answer("release", lambda: os.close(fh))

        async def opendir(self, inode: int, ctx: Any) -> int:
            return await self._answer("opendir", lambda: inode)

        async def readdir(self, fh: int, start_id: int, token: Any) -> None:
            path = self.paths[fh]

            def run() -> list[tuple[str, os.stat_result]]:
                return sorted((n, os.lstat(os.path.join(path, n))) for n in os.listdir(path))

            entries = await self._answer("readdir", run)
            for i, (name, st) in enumerate(entries[start_id:], start_id):
                child = self._inode(os.path.join(path, name))
                if not pyfuse3.readdir_reply(
                    token, os.fsencode(name), self._attr(child, st), i + 1
                ):
                    return

        async def releasedir(self, fh: int) -> None:
            await self._answer("releasedir", lambda: None)

        async def forget(self, inode_list: Any) -> None:
            self.ops.setdefault("forget", [0, 0.0])[0] += 1

        async def statfs(self, ctx: Any) -> Any:
            def run() -> Any:
                v = os.statvfs(backing)
                s = pyfuse3.StatvfsData()
                for f in ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail"):
                    setattr(s, f, getattr(v, f))
                for f in ("f_files", "f_ffree", "f_favail", "f_namemax"):
                    setattr(s, f, getattr(v, f))
                return s

            return await self._answer("statfs", run)

    options = set(pyfuse3.default_options) | {"fsname=floor", "subtype=floor", "nosuid", "nodev"}
    if mode.endswith("-nodp"):
        options.discard("default_permissions")
    pyfuse3.init(Floor(), str(mountpoint), options)
    try:
        trio.run(pyfuse3.main)
    finally:
        pyfuse3.close(unmount=True)


# -- the measurement ------------------------------------------------------------


def _mount(base: Path, mode: str, label: str) -> tuple[subprocess.Popen[bytes], Path, Path]:
    mnt, backing = base / f"mnt-{label}-{mode}", base / f"backing-{label}-{mode}"
    mnt.mkdir()
    backing.mkdir()
    cmd = [sys.executable, "-m", "bench.bench_fuse_floor", "--serve", str(mnt), str(backing)]
    proc = subprocess.Popen([*cmd, mode])
    deadline = time.monotonic() + 30
    while not os.path.ismount(mnt):
        if proc.poll() is not None or time.monotonic() > deadline:
            sys.exit(f"the {mode} floor filesystem did not mount")
        time.sleep(0.05)
    return proc, mnt, backing


def _unmount(proc: subprocess.Popen[bytes], mnt: Path) -> None:
    subprocess.run(["fusermount3", "-u", str(mnt)], check=False)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()  # the child this benchmark started, by its handle
        proc.wait()


def _ops(mnt: Path) -> dict[str, list[float]]:
    return json.loads(os.getxattr(mnt, STATS_XATTR))


def _requests_line(
    before: dict[str, list[float]], after: dict[str, list[float]], files: int
) -> str:
    parts, total = [], 0
    for op, (n, t) in sorted(after.items(), key=lambda kv: -kv[1][0]):
        n0, t0 = before.get(op, (0, 0.0))
        if op == "getxattr":
            n0 += 1  # the read of the counters themselves
        dn, dt = int(n - n0), t - t0
        if dn <= 0:
            continue
        total += dn if op != "forget" else 0
        parts.append(f"{op} {dn:,} ({dn / files:.2f}/file) {dt:.2f}s")
    return f"   requests: {total / files:.2f}/file: " + ", ".join(parts)


def measure(base: Path, src: Path, files: int, label: str) -> None:
    from bench.common import cp_r, remove_tree, report, settle

    plain = cp_r(src, base / "plain-copy")
    synced = cp_r(src, base / "plain-copy", sync=True)
    remove_tree(base / "plain-copy")
    for mode in MODES:
        proc, mnt, backing = _mount(base, mode, label)
        try:
            settle(base)  # no creates timed right after a delete (bench/common.settle)
            before = _ops(mnt)
            start = time.perf_counter()
            subprocess.run(["cp", "-r", f"{src}/.", str(mnt / "copy")], check=True)
            t = time.perf_counter() - start
            os.sync()
            t_sync = time.perf_counter() - start
            after = _ops(mnt)
            report(
                f"cp -r {label} into the floor fs ({mode})",
                t,
                baseline=plain,
                more={"cp -r && sync": synced},
            )
            report(
                f"  same + sync ({mode})", t_sync, baseline=synced, baseline_label="cp -r && sync"
            )
            print(_requests_line(before, after, files), flush=True)
        finally:
            _unmount(proc, mnt)
        remove_tree(backing)


def main() -> None:
    if len(sys.argv) == 5 and sys.argv[1] == "--serve":
        serve(Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4])
        return
    from bench.bench_peers_ops import SHAPES, make_dataset
    from bench.common import DEFAULT_DIR, human, workdir

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dir", type=Path, default=DEFAULT_DIR.with_name("artfs-bench-floor"))
    p.add_argument("--full", action="store_true", help="the issue's sizes, not --small's")
    p.add_argument("--medium", action="store_true", help="medium too")
    args = p.parse_args()
    shape = SHAPES["full" if args.full else "small"]
    with workdir(args.dir) as base:
        rows = [("small", *shape["small"])]
        if args.medium:
            rows.insert(0, ("medium", *shape["medium"]))
        for label, files, size, dirs in rows:
            src = base / "data" / label
            make_dataset(src, files, size, dirs, label)
            print(f"{label}: {files:,} x {human(size)} in {dirs} dirs")
            measure(base, src, files, label)


if __name__ == "__main__":
    main()
