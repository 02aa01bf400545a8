"""``artfs.fs.operations.Operations`` driven in-process, without a kernel mount,
as s3ql's t3_fs_api drives its Operations: the inode table, the nodes and the
errno table answer lookup, getattr, readdir, open, read, readlink and xattrs of
version trees in a real local store, with no FUSE device and no root.

What is missing is the kernel's side only: a request context is built by hand
(uid and pid 0: no ``artfs run`` caller), and ``pyfuse3.readdir_reply``, the one
call that needs the kernel's buffer, fills a list of the size the test chooses.
"""

from __future__ import annotations

import errno
import os
import stat
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pyfuse3
import pytest
import trio

from artfs.api import Api
from artfs.fs.files import BlobOpener
from artfs.fs.nodes import InodeTable, MountContext
from artfs.fs.operations import READDIR_BATCH, Operations
from tests.trees import make_tree

# The operations are the same on every store; the store is only where the bytes come from.
pytestmark = pytest.mark.parametrize("store_url", ["local"], indirect=True)

CTX = pyfuse3.RequestContext()
ROOT = pyfuse3.ROOT_INODE
BIG = bytes(range(256)) * 4096  # 1 MiB: read from the cache file, not kept in memory


class Buffer:
    """The kernel's readdir buffer: takes ``room`` entries, then says it is full."""

    def __init__(self, room: int) -> None:
        self.room = room
        self.entries: list[tuple[str, pyfuse3.EntryAttributes, int]] = []

    def reply(self, name: bytes, attr: pyfuse3.EntryAttributes, next_id: int) -> bool:
        if len(self.entries) >= self.room:
            return False
        self.entries.append((name.decode(), attr, next_id))
        return True


@pytest.fixture
def run_ops(api: Api, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Any]:
    """``run_ops(fn, ttl=60)``: ``await fn(ops)`` in a trio run, with an Operations
    over this test's store as the daemon builds it (without the write side)."""
    monkeypatch.setattr(
        pyfuse3,
        "readdir_reply",
        lambda token, name, attr, next_id: token.reply(name, attr, next_id),
    )

    def run(fn: Callable[[Operations], Awaitable[Any]], ttl: float = 60.0) -> Any:
        repo = api.repo
        ctx = MountContext(
            repo=repo,
            opener=BlobOpener(repo.cache, repo.store),
            ttl=ttl,
            uid=os.getuid(),
            gid=os.getgid(),
            started=time.time(),
        )

        async def main() -> Any:
            return await fn(Operations(InodeTable(ctx), trio.CapacityLimiter(4)))

        return trio.run(main)

    return run


async def walk(ops: Operations, path: str) -> pyfuse3.EntryAttributes:
    """Lookups from the root, one name at a time, as the kernel resolves a path."""
    attr = await ops.getattr(ROOT, CTX)
    for name in path.split("/") if path else []:
        attr = await ops.lookup(attr.st_ino, name.encode(), CTX)
        assert attr.st_ino != 0, f"{name!r} of {path!r} not found"
    return attr


async def listdir(ops: Operations, inode: int, room: int = 10_000) -> list[tuple[str, Any, int]]:
    """Every entry of a directory, asking again from the last offset while the
    buffer (``room`` entries per request) fills up."""
    fh = await ops.opendir(inode, CTX)
    out: list[tuple[str, Any, int]] = []
    offset = 0
    while True:
        buf = Buffer(room)
        await ops.readdir(fh, offset, buf)
        if not buf.entries:
            break
        out += buf.entries
        offset = buf.entries[-1][2]
    await ops.releasedir(fh)
    return out


async def read_all(ops: Operations, inode: int, chunk: int = 128 * 1024) -> bytes:
    info = await ops.open(inode, os.O_RDONLY, CTX)
    data = b""
    try:
        while piece := await ops.read(info.fh, len(data), chunk):
            data += piece
    finally:
        await ops.release(info.fh)
    return data


async def fails_with(code: int, call: Awaitable[Any]) -> None:
    with pytest.raises(pyfuse3.FUSEError) as e:
        await call
    assert e.value.errno == code, os.strerror(e.value.errno)


def test_a_version_tree_answers_lookup_getattr_readdir_read_and_readlink(
    api: Api, run_ops, tmp_path
) -> None:
    src = make_tree(
        tmp_path / "src",
        {"a.txt": "alpha\n", "d/big.bin": BIG, "run.sh": "#!/bin/sh\n"},
        executable=("run.sh",),
        symlinks={"d/link": "../a.txt"},
        empty_dirs=("empty",),
    )
    api.put([src], "proj/ds")
    digests = {e.path: e.digest for e in api.artifact("proj/ds:v0").files()}

    async def check(ops: Operations) -> None:
        assert [n for n, _, _ in await listdir(ops, ROOT)] == ["proj"]
        art = await walk(ops, "proj/ds")
        assert stat.S_ISDIR(art.st_mode)
        assert sorted(n for n, _, _ in await listdir(ops, art.st_ino)) == [
            "latest",
            "staging",
            "v0",
        ]
        latest = await walk(ops, "proj/ds/latest")
        assert stat.S_ISLNK(latest.st_mode)
        assert await ops.readlink(latest.st_ino, CTX) == b"v0"

        v0 = await walk(ops, "proj/ds/v0")
        listed = {n: a for n, a, _ in await listdir(ops, v0.st_ino)}
        assert sorted(listed) == ["a.txt", "d", "empty", "run.sh"]
        for name, attr in listed.items():  # readdirplus and lookup agree on every inode
            assert (await walk(ops, f"proj/ds/v0/{name}")).st_ino == attr.st_ino

        a = await walk(ops, "proj/ds/v0/a.txt")
        assert stat.S_ISREG(a.st_mode) and stat.S_IMODE(a.st_mode) == 0o644
        assert a.st_size == 6
        assert stat.S_IMODE((await walk(ops, "proj/ds/v0/run.sh")).st_mode) == 0o755
        assert stat.S_ISDIR((await walk(ops, "proj/ds/v0/empty")).st_mode)
        assert await listdir(ops, (await walk(ops, "proj/ds/v0/empty")).st_ino) == []
        link = await walk(ops, "proj/ds/v0/d/link")
        assert stat.S_ISLNK(link.st_mode)
        assert await ops.readlink(link.st_ino, CTX) == b"../a.txt"
        # ".." of a directory in the tree is its parent, and above the tree the artifact
        d = await walk(ops, "proj/ds/v0/d")
        assert (await ops.lookup(d.st_ino, b"..", CTX)).st_ino == v0.st_ino
        assert (await ops.lookup(v0.st_ino, b"..", CTX)).st_ino == art.st_ino

        assert await read_all(ops, a.st_ino) == b"alpha\n"
        big = await walk(ops, "proj/ds/v0/d/big.bin")
        assert big.st_size == len(BIG)
        assert await read_all(ops, big.st_ino) == BIG
        info = await ops.open(big.st_ino, os.O_RDONLY, CTX)
        assert info.keep_cache  # immutable: the page cache may keep it across opens
        assert await ops.read(info.fh, 1000, 5000) == BIG[1000:6000]
        assert await ops.read(info.fh, len(BIG), 10) == b""  # at the end: nothing, no error
        await ops.release(info.fh)

        digest = await ops.getxattr(a.st_ino, b"user.artfs.digest", CTX)
        assert digest.decode() == digests["a.txt"]
        assert await ops.getxattr(v0.st_ino, b"user.artfs.ref", CTX) == b"proj/ds:v0"
        assert ops.stats.errors == 0
        assert ops.stats.reads > 0 and ops.stats.ops["lookup"][0] > 0

    run_ops(check)


def test_refusals_and_missing_names_are_errnos_not_errors(api: Api, run_ops, tmp_path) -> None:
    api.put([make_tree(tmp_path / "src", {"a.txt": "alpha\n", "d/b": "b"})], "proj/ds")

    async def check(ops: Operations) -> None:
        v0 = await walk(ops, "proj/ds/v0")
        a = await walk(ops, "proj/ds/v0/a.txt")
        # An absent name is a negative entry (inode 0) the kernel may keep, not ENOENT.
        assert (await ops.lookup(v0.st_ino, b"nope", CTX)).st_ino == 0
        assert (await ops.lookup(ROOT, b"nope", CTX)).st_ino == 0
        await fails_with(errno.ENOTDIR, ops.lookup(a.st_ino, b"x", CTX))
        await fails_with(errno.ENOTDIR, ops.opendir(a.st_ino, CTX))
        await fails_with(errno.EINVAL, ops.readlink(a.st_ino, CTX))
        await fails_with(errno.EISDIR, ops.open(v0.st_ino, os.O_RDONLY, CTX))
        for flags in (os.O_WRONLY, os.O_RDWR, os.O_RDONLY | os.O_TRUNC):
            await fails_with(errno.EROFS, ops.open(a.st_ino, flags, CTX))
        await fails_with(errno.EROFS, ops.mkdir(v0.st_ino, b"new", 0o755, CTX))
        await fails_with(errno.EROFS, ops.unlink(v0.st_ino, b"a.txt", CTX))
        await fails_with(errno.EROFS, ops.symlink(v0.st_ino, b"l", b"a.txt", CTX))
        # ls -l's probes of other xattr namespaces: "not supported", remembered by ls
        await fails_with(errno.ENOTSUP, ops.getxattr(a.st_ino, b"security.selinux", CTX))
        await fails_with(pyfuse3.ENOATTR, ops.getxattr(a.st_ino, b"user.other", CTX))
        assert await ops.listxattr(a.st_ino, CTX) == [b"user.artfs.digest"]
        assert ops.stats.errors == 0  # refusals are answers, not failures of the mount

    run_ops(check)


def test_readdir_resumes_at_the_offset_where_the_buffer_filled(api: Api, run_ops, tmp_path) -> None:
    """More entries than one batch, and a buffer that takes fewer than a batch:
    every name comes once, in order, whatever the sizes."""
    n = READDIR_BATCH * 2 + 7
    names = [f"f{i:04d}" for i in range(n)]
    api.put([make_tree(tmp_path / "src", dict.fromkeys(names, "x"))], "proj/many")

    async def check(ops: Operations) -> None:
        v0 = await walk(ops, "proj/many/v0")
        for room in (1, 100, READDIR_BATCH, 10_000):
            entries = await listdir(ops, v0.st_ino, room=room)
            assert [name for name, _, _ in entries] == names, room
            offsets = [next_id for _, _, next_id in entries]
            assert offsets == sorted(set(offsets)), room  # strictly increasing: resumable
        # A listing of the artifact directory (a snapshot of the store's listing) too
        art = await walk(ops, "proj/many")
        assert [e[0] for e in await listdir(ops, art.st_ino, room=1)] == [
            "latest",
            "staging",
            "v0",
        ]

    run_ops(check)


def test_latest_follows_a_new_version_once_the_ttl_is_over(api: Api, run_ops, tmp_path) -> None:
    """With a TTL of 0 every lookup lists again: a version put by another process
    shows at the next request, and a version tree already open stays as it was."""
    api.put([make_tree(tmp_path / "v0", {"a.txt": "zero"})], "proj/ds")

    async def check(ops: Operations) -> None:
        latest = await walk(ops, "proj/ds/latest")
        assert await ops.readlink(latest.st_ino, CTX) == b"v0"
        old = await walk(ops, "proj/ds/v0/a.txt")
        info = await ops.open(old.st_ino, os.O_RDONLY, CTX)
        await trio.to_thread.run_sync(
            lambda: api.put([make_tree(tmp_path / "v1", {"a.txt": "one"})], "proj/ds")
        )
        assert await ops.readlink((await walk(ops, "proj/ds/latest")).st_ino, CTX) == b"v1"
        assert await read_all(ops, (await walk(ops, "proj/ds/v1/a.txt")).st_ino) == b"one"
        assert await ops.read(info.fh, 0, 100) == b"zero"
        await ops.release(info.fh)

    run_ops(check, ttl=0.0)
