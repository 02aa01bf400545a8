"""The one small interface over a store: bytes and keys, nothing about artifacts.

Keys are '/'-separated relative names such as ``blobs/ab/xxh128:ab...``.
Every backend gives the same guarantees: a create-only put never replaces an
existing object, and a compare-and-swap put replaces an object only if it is
still the one the caller read (its etag).
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

PUT_WORKERS = 8


class StoreError(Exception):
    """The store could not do what was asked (I/O, network, permissions)."""


class NotFound(StoreError, KeyError):
    """No object under that key."""

    def __str__(self) -> str:
        return f"not found in store: {self.args[0]}" if self.args else "not found in store"


class PreconditionFailed(StoreError):
    """A create-only put found the key taken, or a compare-and-swap lost the race."""


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    etag: str
    mtime: float


@dataclass
class Listing:
    objects: list[ObjectInfo] = field(default_factory=list)
    prefixes: list[str] = field(default_factory=list)


class ObjectStore(abc.ABC):
    """Bytes under keys. Implementations must be safe to call from many threads."""

    url: str

    @abc.abstractmethod
    def get(self, key: str) -> bytes:
        """The whole object; NotFound if absent."""

    @abc.abstractmethod
    def get_range(self, key: str, start: int, length: int) -> bytes:
        """Up to ``length`` bytes from ``start``; short only at the end of the object."""

    @abc.abstractmethod
    def download(self, key: str, out: BinaryIO) -> int:
        """Stream the whole object into ``out``; returns the bytes written."""

    @abc.abstractmethod
    def put(
        self, key: str, data: bytes, *, if_absent: bool = False, if_match: str | None = None
    ) -> str:
        """Write ``data``; returns the new etag.

        ``if_absent``: create-only, PreconditionFailed if the key exists.
        ``if_match``: compare-and-swap, PreconditionFailed unless the current
        object's etag is ``if_match``.
        """

    @abc.abstractmethod
    def put_file(
        self, key: str, path: Path, *, if_absent: bool = False, move: bool = False
    ) -> None:
        """Upload a local file. ``move`` lets a backend on the same filesystem
        take the file instead of copying it: afterwards the file is gone, or
        is the stored object itself (a hard link), so the caller must remove
        its name and never write to it."""

    def put_files(
        self,
        items: Sequence[tuple[str, Path]],
        *,
        if_absent: bool = False,
        move: bool = False,
        progress: Callable[[int], None] | None = None,
    ) -> list[bool]:
        """Upload many local files, as ``put_file`` each, concurrently.

        Returns per item whether it was written (False: ``if_absent`` found the
        key taken). Every object is durable when this returns. ``progress`` is
        called with each file's size when it is done. Backends may batch.
        """

        def one(item: tuple[str, Path]) -> bool:
            key, path = item
            size = path.stat().st_size
            try:
                self.put_file(key, path, if_absent=if_absent, move=move)
                return True
            except PreconditionFailed:
                return False
            finally:
                if progress:
                    progress(size)

        with ThreadPoolExecutor(max_workers=PUT_WORKERS) as pool:
            return list(pool.map(one, items))

    def get_tagged(self, key: str) -> tuple[bytes, str]:
        """(bytes, etag) of an object; NotFound if absent. The etag is the one a
        compare-and-swap takes. Backends answer in one request where they can;
        this default asks twice, head first, so a change between the two
        leaves an older etag, whose compare-and-swap fails (never a newer one
        that would overwrite unseen bytes)."""
        etag = self.head(key).etag
        return self.get(key), etag

    @abc.abstractmethod
    def head(self, key: str) -> ObjectInfo:
        """Size and etag of an object; NotFound if absent."""

    @abc.abstractmethod
    def list(self, prefix: str, *, recursive: bool = False) -> Listing:
        """Objects under ``prefix`` (which ends with '/' or is empty).

        Unless ``recursive``, only the direct children: objects, and the common
        prefixes (ending in '/') one level down; with it, every object below,
        sorted by key.
        """

    @abc.abstractmethod
    def iter_objects(self, prefix: str) -> Iterator[ObjectInfo]:
        """Every object under ``prefix``, recursively, in no set order."""

    @abc.abstractmethod
    def delete(self, key: str) -> None:
        """Remove an object; absent is not an error."""

    def temp_objects(self) -> list[ObjectInfo]:
        """What interrupted writes left outside the key space (a local store's
        ``.tmp/``), with sizes and times; ``key`` is for ``delete_temp`` only."""
        return []

    def delete_temp(self, key: str) -> None:  # noqa: B027 - nothing to do by default
        """Remove one temp object listed by ``temp_objects``; absent is not an error."""

    def local_path(self, key: str) -> Path | None:
        """A path a reader may open for the object's bytes, if the store is local."""
        return None

    # True if objects are files on this machine (``local_path`` gives their
    # paths, and a put of a file may move it in): ask this, not a path.
    is_local: bool = False

    def exists(self, key: str) -> bool:
        try:
            self.head(key)
        except NotFound:
            return False
        return True

    def close(self) -> None:  # noqa: B027 - optional hook
        pass
