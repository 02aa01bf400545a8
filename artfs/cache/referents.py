"""Reference entries in the cache: fetched from their URI, verified like a blob.

A reference entry's bytes live outside the store (``artfs.objects.referents``).
They land in the same cache as blobs and through the same paths, and from
then on are cache entries like any other (stamp checked at every open, LRU
eviction, pins).

- With a digest (``checksum=True``): the entry is ``blobs/<digest>``, the
  bytes are verified against the digest, and a verified entry is served
  without asking the URI (those are the committed bytes, whoever holds them
  now). Bytes that do not hash to the digest mean the object changed since
  the commit: BlobError, nothing served.

  A referent larger than one part whose entry also recorded the object's
  etag (manifests written since ranged reads came) is read part by part, as
  a large blob of the store is (``cache/partial.py``, with a
  ``ReferentParts`` source): through the mount (``open_reference_lazy``) a
  read waits only for the parts it touches, and ``get`` (``open_reference``)
  fetches the parts in parallel and verifies before it returns. Each range
  is pinned to the committed etag (``Referents.get_range``), so a referent
  replaced between two parts fails the next part (BlobError, EIO) instead of
  mixing objects; the complete file is verified against the digest. The
  open first asks the URI for its etag (HEAD, on a cache miss only): an
  object whose etag moved is fetched whole and judged by the digest alone
  (same bytes under a new etag still read). Any other reference is fetched
  whole on the first open: a temp file under ``tmp/``, one fetch at a time
  per key (``BlobCache.fill``), ``verify``, then ``BlobCache.place``.
- With only an etag (``checksum=False``): every open first asks the URI for
  its etag (HEAD) and refuses, with BlobError, an object whose etag or size
  is not the one committed, or that vanished. The bytes are fetched with
  that etag as a condition (``If-Match``) and hashed once complete; the
  cache keeps them under their own digest, and ``refs/<xxh128 of URI NUL
  etag>`` names that digest, so a second open of the same (URI, etag) is a
  HEAD and a cache hit, and an object with another etag never reaches those
  bytes. One larger than a part is read part by part as above, the partial
  file named ``partial/ref-<xxh128>`` until it is complete, hashed, placed
  under its digest and mapped (``ReferentParts.placed``); its parts are
  served before that on the strength of the etag pin alone, which is all an
  etag-only reference ever promises. A smaller one is fetched whole.
"""

from __future__ import annotations

import contextlib
import logging
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import xxhash

from artfs.cache.partial import LazyBlobReader
from artfs.cache.readers import BlobReader
from artfs.cache.store import BlobCache
from artfs.cache.verify import BlobError
from artfs.digest import digest_fd, is_digest
from artfs.fsutil import atomic_write
from artfs.manifest import Entry
from artfs.objects import NotFound, PreconditionFailed, StoreError
from artfs.objects.referents import Referents

log = logging.getLogger("artfs.cache")


@contextlib.contextmanager
def referent_errors(uri: str) -> Iterator[None]:
    """A referent's store errors as the BlobError a reader of it gets (EIO)."""
    try:
        yield
    except NotFound:
        raise BlobError(f"reference {uri} is gone (deleted since the commit)") from None
    except PreconditionFailed:
        raise BlobError(f"reference {uri} changed since the commit (etag)") from None
    except StoreError as e:
        raise BlobError(f"reference {uri} cannot be read: {e}") from None


def _ref_key(uri: str, etag: str) -> str:
    """The single-flight and mapping key of one (URI, etag)."""
    return "ref-" + xxhash.xxh3_128(f"{uri}\0{etag}".encode()).hexdigest()


class ReferentParts:
    """The parts of one referent as committed: a ``PartSource`` whose every
    range is pinned to the recorded etag."""

    def __init__(
        self, referents: Referents, uri: str, etag: str, digest: str | None, mapping: Path | None
    ) -> None:
        self._referents = referents
        self._uri = uri
        self._etag = etag
        self._mapping = mapping
        self.digest = digest
        self.name = digest or _ref_key(uri, etag)
        self.where = f"at {uri}"

    def get_range(self, offset: int, length: int) -> bytes:
        with referent_errors(self._uri):
            return self._referents.get_range(self._uri, offset, length, self._etag)

    def wrong(self, why: str) -> BlobError:
        return BlobError(f"reference {self._uri} changed since the commit (it {why})")

    def corrupt(self, e: BlobError) -> BlobError:
        return BlobError(
            f"reference {self._uri} changed since the commit (its bytes no longer "
            f"hash to {self.digest})"
        )

    def placed(self, digest: str) -> None:
        if self._mapping is not None:  # etag-only: (URI, etag) now names ``digest``
            _map(self._mapping, digest)


def open_reference(cache: BlobCache, referents: Referents, entry: Entry) -> BlobReader:
    """A pinned, verified reader of a reference entry's whole bytes (fetched
    if need be: in parallel parts if it is large and has an etag, see the
    module docstring). For ``get`` and the API, which copy or link the file.

    BlobError, naming the URI, if the object changed, vanished or cannot be
    read: never other bytes. Blocking."""
    reader = _open(cache, referents, entry, lazy=False)
    assert isinstance(reader, BlobReader)
    return reader


def open_reference_lazy(
    cache: BlobCache, referents: Referents, entry: Entry
) -> BlobReader | LazyBlobReader:
    """As ``open_reference``, but a large reference with an etag is read part
    by part as reads need them (for the mount): a read waits only for its
    parts, and one whose parts cannot be the committed bytes raises BlobError."""
    return _open(cache, referents, entry, lazy=True)


def _open(
    cache: BlobCache, referents: Referents, entry: Entry, lazy: bool
) -> BlobReader | LazyBlobReader:
    uri = entry.ref
    if uri is None:
        raise BlobError(f"entry {entry.name!r} is not a reference")
    if entry.digest is not None:
        return _open_checksummed(cache, referents, entry, uri, entry.digest, lazy)
    assert entry.etag is not None  # the manifest refuses a reference with neither
    return _open_by_etag(cache, referents, entry, uri, entry.etag, lazy)


def _open_checksummed(
    cache: BlobCache, referents: Referents, entry: Entry, uri: str, digest: str, lazy: bool
) -> BlobReader | LazyBlobReader:
    reader = cache.open_cached(digest, entry.size)
    if reader is not None:
        cache.counters.hit()
        return reader
    cache.counters.miss()
    parts = _parts(referents, entry, uri, digest) if entry.size > cache.part_size else None
    if parts is not None and lazy:
        return cache.open_lazy(entry.size, parts)
    for _ in range(3):
        if parts is not None:
            cache.fill_parts(entry.size, parts)
        else:
            cache.fill(digest, lambda: _fetch(cache, referents, uri, None, entry.size, digest))
        reader = cache.open_cached(digest, entry.size)
        if reader is not None:
            return reader
    raise BlobError(f"reference {uri} vanished from the cache (evicted as soon as fetched)")


def _parts(referents: Referents, entry: Entry, uri: str, digest: str) -> ReferentParts | None:
    """The referent's parts pinned to its recorded etag, if it still has that
    etag and size; None (fetch it whole, judge it by the digest) if it has no
    recorded etag or another one now."""
    if entry.etag is None:
        return None
    with referent_errors(uri):
        now = referents.head(uri)
    if now.etag != entry.etag or now.size != entry.size:
        return None
    return ReferentParts(referents, uri, entry.etag, digest, None)


def _open_by_etag(
    cache: BlobCache, referents: Referents, entry: Entry, uri: str, etag: str, lazy: bool
) -> BlobReader | LazyBlobReader:
    with referent_errors(uri):
        now = referents.head(uri)
    if now.etag != etag or now.size != entry.size:
        raise BlobError(
            f"reference {uri} changed since the commit (etag {now.etag}, {now.size} bytes; "
            f"committed: etag {etag}, {entry.size} bytes)"
        )
    key = _ref_key(uri, etag)
    mapping = cache.root / "refs" / key
    for _ in range(3):
        digest = _mapped(mapping)
        if digest is not None:
            reader = cache.open_cached(digest, entry.size)
            if reader is not None:
                cache.counters.hit()
                return reader
        cache.counters.miss()
        if entry.size > cache.part_size:
            # Part by part, each pinned to the etag; named by its hash when complete.
            parts = ReferentParts(referents, uri, etag, None, mapping)
            if lazy:
                return cache.open_lazy(entry.size, parts)
            cache.fill_parts(entry.size, parts)
            continue
        with cache.single_flight(key):
            digest = _mapped(mapping)
            if digest is None or not cache.path(digest).exists():
                digest = _fetch_mapped(cache, referents, uri, etag, entry.size)
                _map(mapping, digest)
        cache.grew(cache.path(digest))
    raise BlobError(f"reference {uri} vanished from the cache (evicted as soon as fetched)")


def _fetch_mapped(cache: BlobCache, referents: Referents, uri: str, etag: str, size: int) -> str:
    got: list[str] = []
    cache.writing(lambda: got.append(_fetch(cache, referents, uri, etag, size)))
    return got[0]


def _mapped(mapping: Path) -> str | None:
    """The digest a (URI, etag) was cached under, if recorded and well formed."""
    try:
        text = mapping.read_text().strip()
    except (FileNotFoundError, UnicodeDecodeError):
        return None
    return text if is_digest(text) else None


def _map(mapping: Path, digest: str) -> None:
    # A lost mapping costs one re-fetch, not data: no fsync.
    mapping.parent.mkdir(exist_ok=True)
    atomic_write(mapping, digest + "\n", durable=False)


def _fetch(
    cache: BlobCache,
    referents: Referents,
    uri: str,
    etag: str | None,
    size: int,
    digest: str | None = None,
) -> str:
    """Download ``uri`` into the cache, verified (against ``digest``, or the
    ``etag`` as the download's condition and then hashed); returns its digest."""
    tmp = cache.root / "tmp" / uuid.uuid4().hex
    try:
        with open(tmp, "w+b") as out:
            with referent_errors(uri):
                referents.download(uri, out, etag=etag)
            out.flush()
            os.fsync(out.fileno())
            fd = out.fileno()
            got = os.fstat(fd).st_size
            if got != size:
                raise BlobError(
                    f"reference {uri} changed since the commit ({got} bytes, not {size})"
                )
            if digest is None:
                os.lseek(fd, 0, os.SEEK_SET)
                digest, _ = digest_fd(fd, got)
            else:
                try:
                    cache.verify(fd, digest, size, f"at {uri}")
                except BlobError:
                    raise BlobError(
                        f"reference {uri} changed since the commit (its bytes no longer "
                        f"hash to {digest})"
                    ) from None
            dest = cache.path(digest)
            if not dest.exists():
                cache.place(fd, tmp, digest, dest)
        cache.fetches += 1
        log.info("fetched reference %s (%d bytes)", uri, size)
        return digest
    finally:
        tmp.unlink(missing_ok=True)
