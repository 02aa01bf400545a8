"""File-system utilities every layer uses: atomic replacement, fsync, flock.

Durability of an atomic write, in this order (each step is why the next is
safe after a crash):

1. write a temporary file in the destination's directory and ``fsync`` it,
   so the name can never point at bytes that are not on disk;
2. ``rename`` it over the destination: a reader sees the old bytes or the
   new, never a mix;
3. ``fsync`` the directory, so the rename itself survives a crash.

``durable=False`` skips the two fsyncs, for files whose loss in a crash
costs nothing (each call site says why); the rename stays atomic.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import uuid
from collections.abc import Iterator
from pathlib import Path


def fsync_file(path: str | os.PathLike[str]) -> None:
    """Make a file's bytes durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Make a directory's entries (a create, rename or unlink in it) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace(tmp: str | os.PathLike[str], dest: Path, *, durable: bool = True) -> None:
    """Rename a complete (and, if it must be durable, fsynced) file over ``dest``,
    then fsync the directory unless ``durable`` is False."""
    os.replace(tmp, dest)
    if durable:
        fsync_dir(dest.parent)


def atomic_write(path: Path, data: bytes | str, *, durable: bool = True) -> None:
    """Replace ``path`` by ``data`` all at once (see the module docstring)."""
    if isinstance(data, str):
        data = data.encode()
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        replace(tmp, path, durable=durable)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


@contextlib.contextmanager
def flock(path: str | os.PathLike[str], *, shared: bool = False) -> Iterator[int]:
    """Hold an exclusive (or shared) ``flock`` on ``path``, created if missing,
    for the block; yields the descriptor (opened read-write)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        yield fd
    finally:
        os.close(fd)
