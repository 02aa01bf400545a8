"""Content digests: XXH3-128, written ``xxh128:<32 hex>``, computed streaming."""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Callable

import xxhash

ALGORITHM = "xxh128"
READ_CHUNK = 4 << 20
_DIGEST_RE = re.compile(r"^xxh128:[0-9a-f]{32}$")


class Hasher:
    """Incremental digest of a byte stream."""

    def __init__(self) -> None:
        self._h = xxhash.xxh3_128()
        self.size = 0

    def update(self, data: bytes | memoryview) -> None:
        self._h.update(data)
        self.size += len(data)

    def content_digest(self) -> str:
        """The digest string of the bytes so far, ``xxh128:<32 hex>`` (not raw hex)."""
        return f"{ALGORITHM}:{self._h.hexdigest()}"

    def copy(self) -> Hasher:
        other = Hasher.__new__(Hasher)
        other._h = self._h.copy()
        other.size = self.size
        return other


def digest_bytes(data: bytes) -> str:
    return f"{ALGORITHM}:{xxhash.xxh3_128_hexdigest(data)}"


_buffers = threading.local()


def digest_fd(
    fd: int, size_hint: int = -1, progress: Callable[[int], None] | None = None
) -> tuple[str, int]:
    """(digest, size) of what is left to read from ``fd``, read in large chunks.

    A file known to be small is read in one call; a large one through a
    per-thread buffer, so hashing many files allocates nothing per file.
    ``progress`` is called with the bytes of each chunk of a large file.
    """
    if 0 <= size_hint < READ_CHUNK:
        data = os.read(fd, size_hint + 1)
        if len(data) <= size_hint:
            return digest_bytes(data), len(data)
        h = Hasher()
        h.update(data)
    else:
        h = Hasher()
    buf = getattr(_buffers, "buf", None)
    if buf is None:
        buf = _buffers.buf = bytearray(READ_CHUNK)
    view = memoryview(buf)
    while n := os.readv(fd, [buf]):
        h.update(view[:n])
        if progress:
            progress(n)
    return h.content_digest(), h.size


def digest_file(path: str | os.PathLike[str]) -> tuple[str, int]:
    """(digest, size) of a file, read in large chunks."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return digest_fd(fd, os.fstat(fd).st_size)
    finally:
        os.close(fd)


def is_digest(text: str) -> bool:
    return bool(_DIGEST_RE.match(text))
