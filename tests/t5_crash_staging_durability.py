"""A commit through staging that returned success survives a crash of the machine.

The store and the state directory live on an ext4 filesystem in a loop
device, mounted with a journal commit interval of ten minutes, so nothing
becomes durable by the journal's own timer while the test runs: only what
the commit made durable itself (fsync, syncfs). Once ``touch .commit`` has
returned, ``EXT4_IOC_SHUTDOWN`` with ``NOLOGFLUSH`` stops the filesystem
the way a power loss does: every change not yet in the on-disk journal is
lost. After a remount (journal replay), the version must be there with
every byte. A commit that skipped a flush of the staged bytes, of the new
blob names or of the version record fails here.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import random
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.mounting import artfs_cli, mounted
from tests.trees import make_tree, read_tree

EXT4_IOC_SHUTDOWN = 0x8004587D  # _IOR('X', 125, __u32)
EXT4_GOING_FLAGS_NOLOGFLUSH = 0x2


def _run(*cmd: str) -> str:
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip()


@contextlib.contextmanager
def _ext4(image: Path, where: Path) -> Iterator[None]:
    device = _run("losetup", "--find", "--show", str(image))
    try:
        where.mkdir(exist_ok=True)
        _run("mount", "-o", "commit=600", device, str(where))
        try:
            yield
        finally:
            r = subprocess.run(["umount", str(where)], capture_output=True, text=True)
            if r.returncode != 0:  # never left mounted, whatever holds it
                subprocess.run(["umount", "-l", str(where)], capture_output=True)
                raise AssertionError(f"{where} was busy at its unmount: {r.stderr}")
    finally:
        subprocess.run(["losetup", "-d", device], capture_output=True)


def _crash(where: Path) -> None:
    """Stop the filesystem at once; what its journal does not hold is lost."""
    fd = os.open(where, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.ioctl(fd, EXT4_IOC_SHUTDOWN, struct.pack("I", EXT4_GOING_FLAGS_NOLOGFLUSH))
    finally:
        os.close(fd)


@pytest.fixture
def disk(tmp_path: Path) -> Path:
    image = tmp_path / "disk.img"
    with open(image, "wb") as f:
        f.truncate(256 << 20)
    _run("mkfs.ext4", "-q", "-F", str(image))
    return image


def test_a_commit_that_returned_survives_a_crash(disk: Path, tmp_path: Path) -> None:
    rng = random.Random(11)
    files = {
        f"d{i % 16:02}/f{i:03}.bin": rng.randbytes(rng.randrange(1, 20_000)) for i in range(300)
    }
    files["big.bin"] = rng.randbytes(3 << 20)
    src = make_tree(tmp_path / "src", files)
    expected = read_tree(src)
    fs = tmp_path / "fs"
    with _ext4(disk, fs):
        store, state = fs / "store", fs / "state"
        env = dict(os.environ)
        env.update(
            ARTFS_STORE=str(store),
            ARTFS_CACHE=str(tmp_path / "cache"),
            ARTFS_CONFIG=str(tmp_path / "no-config.toml"),
        )
        mount_args = {"store_url": str(store), "cache_dir": tmp_path / "cache", "env": env}
        # Before the crash, the daemon's writes fail: its log has errors.
        with mounted(tmp_path / "mnt", state_dir=state, check_log=False, **mount_args) as m:
            (m.path / "proj/ds").mkdir(parents=True)
            staging = m.path / "proj/ds/staging"
            subprocess.run(["cp", "-r", f"{src}/.", str(staging)], check=True)
            subprocess.run(["touch", str(staging / ".commit")], check=True)
            assert "committed proj/ds:v0" in (staging / ".status").read_text()
            _crash(fs)
    with _ext4(disk, fs):
        # In a process of its own, which holds nothing open on the disk after.
        env["ARTFS_CACHE"] = str(tmp_path / "cache-after")
        got = tmp_path / "got"
        artfs_cli("get", "proj/ds:v0", "--root", str(got), env=env, check=True)
        assert read_tree(got) == expected
