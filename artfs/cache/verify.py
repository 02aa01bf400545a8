"""The one check that lets bytes be served: they hash to their digest.

Every path into the cache (a whole download, a completed partial fetch, a
blob of a local store read in place, an entry whose stamp changed) ends in
``verify_fd``; what passes it is recorded with a ``Stamp`` of the file as it
was when it passed, so the next user can tell, with one ``fstat``, whether
the file is still the one that was verified.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from artfs.digest import READ_CHUNK, Hasher
from artfs.objects import StoreError


class BlobError(StoreError):
    """A blob is missing from the store or its bytes do not match its digest."""


@dataclass(frozen=True)
class Stamp:
    """What a file looked like when its bytes were verified.

    An edit in place changes size or mtime; a replaced file has another
    inode; ``touch -d`` after an edit still moves ctime, which no user can set.
    """

    size: int
    mtime_ns: int
    ino: int
    ctime_ns: int

    @classmethod
    def of(cls, st: os.stat_result) -> Stamp:
        return cls(st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns)

    @classmethod
    def of_fd(cls, fd: int) -> Stamp:
        return cls.of(os.fstat(fd))

    def same_content(self, other: Stamp) -> bool:
        """Equal but for ctime: a hard link or chmod moved only that."""
        return (self.size, self.mtime_ns, self.ino) == (other.size, other.mtime_ns, other.ino)

    def encode(self) -> bytes:
        return f"{self.size} {self.mtime_ns} {self.ino} {self.ctime_ns}\n".encode()

    @classmethod
    def decode(cls, data: bytes) -> Stamp | None:
        words = data.split()
        if len(words) != 4 or not all(w.isdigit() for w in words):
            return None
        return cls(*(int(w) for w in words))


def verify_fd(fd: int, digest: str, size: int, what: str = "") -> Stamp:
    """Hash the whole file behind ``fd``; raise BlobError unless it is ``size``
    bytes hashing to ``digest``. Returns the file's stamp, taken before the
    hash: a change made while hashing shows as a stamp that no longer matches."""
    stamp = Stamp.of_fd(fd)
    hasher = Hasher()
    offset = 0
    while offset <= size:  # one read past the end shows a blob that is too long
        chunk = os.pread(fd, READ_CHUNK, offset)
        if not chunk:
            break
        hasher.update(chunk)
        offset += len(chunk)
    if hasher.size != size or hasher.content_digest() != digest:
        where = f" {what}" if what else ""
        raise BlobError(
            f"blob {digest} is corrupt{where}: {hasher.size} bytes that hash to "
            f"{hasher.content_digest()} (expected {size} bytes)"
        )
    return stamp
