"""Reference entries in the cache: fetched from their URI, verified like a blob.

A reference entry's bytes live outside the store (``artfs.objects.referents``).
They are fetched whole, on the first open, into the same cache as blobs and
through the same path: a temp file under ``tmp/``, one fetch at a time per
key (``single_flight``), ``verify``, then ``_place`` stamps it. From then on
it is a cache entry like any other (stamp checked at every open, LRU
eviction, pins).

- With a digest (``checksum=True``): the entry is ``blobs/<digest>``, the
  bytes are verified against the digest, and a verified entry is served
  without asking the URI (those are the committed bytes, whoever holds them
  now). A fetch whose bytes do not hash to the digest means the object
  changed since the commit: BlobError, nothing served.
- With only an etag (``checksum=False``): every open first asks the URI for
  its etag (HEAD) and refuses, with BlobError, an object whose etag or size
  is not the one committed, or that vanished. The bytes are fetched with
  that etag as a condition (``If-Match``) and hashed as they land; the cache
  keeps them under their own digest, and ``refs/<xxh128 of URI NUL etag>``
  names that digest, so a second open of the same (URI, etag) is a HEAD and
  a cache hit, and an object with another etag never reaches those bytes.
"""

from __future__ import annotations

import logging
import os
import uuid
from pathlib import Path

import xxhash

from artfs.cache.readers import BlobReader
from artfs.cache.store import BlobCache
from artfs.cache.verify import BlobError
from artfs.digest import digest_fd, is_digest
from artfs.fsutil import atomic_write
from artfs.manifest import Entry
from artfs.objects import NotFound, PreconditionFailed, StoreError
from artfs.objects.referents import Referents

log = logging.getLogger("artfs.cache")


def _ref_key(uri: str, etag: str) -> str:
    """The single-flight and mapping key of one (URI, etag)."""
    return "ref-" + xxhash.xxh3_128(f"{uri}\0{etag}".encode()).hexdigest()


def open_reference(cache: BlobCache, referents: Referents, entry: Entry) -> BlobReader:
    """A pinned, verified reader of a reference entry's bytes (fetched if need be).

    BlobError, naming the URI, if the object changed, vanished or cannot be
    read: never other bytes. Blocking."""
    uri = entry.ref
    if uri is None:
        raise BlobError(f"entry {entry.name!r} is not a reference")
    if entry.digest is not None:
        return _open_checksummed(cache, referents, entry, uri, entry.digest)
    assert entry.etag is not None  # the manifest refuses a reference with neither
    return _open_by_etag(cache, referents, entry, uri, entry.etag)


def _open_checksummed(
    cache: BlobCache, referents: Referents, entry: Entry, uri: str, digest: str
) -> BlobReader:
    for _ in range(3):
        reader = cache._open_cached(digest, entry.size)
        if reader is not None:
            cache.counters.hit()
            return reader
        cache.counters.miss()
        cache.fill(digest, lambda: _fetch(cache, referents, uri, None, entry.size, digest))
    raise BlobError(f"reference {uri} vanished from the cache (evicted as soon as fetched)")


def _open_by_etag(
    cache: BlobCache, referents: Referents, entry: Entry, uri: str, etag: str
) -> BlobReader:
    try:
        now = referents.head(uri)
    except NotFound:
        raise BlobError(f"reference {uri} is gone (deleted since the commit)") from None
    except StoreError as e:
        raise BlobError(f"reference {uri} cannot be read: {e}") from None
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
            reader = cache._open_cached(digest, entry.size)
            if reader is not None:
                cache.counters.hit()
                return reader
        cache.counters.miss()
        with cache.single_flight(key):
            digest = _mapped(mapping)
            if digest is None or not cache.path(digest).exists():
                digest = _fetch_mapped(cache, referents, uri, etag, entry.size)
                _map(mapping, digest)
        cache._grew(cache.path(digest))
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
            try:
                referents.download(uri, out, etag=etag)
            except NotFound:
                raise BlobError(f"reference {uri} is gone (deleted since the commit)") from None
            except PreconditionFailed:
                raise BlobError(f"reference {uri} changed since the commit (etag)") from None
            except StoreError as e:
                raise BlobError(f"reference {uri} cannot be read: {e}") from None
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
                cache._place(fd, tmp, digest, dest)
        cache.fetches += 1
        log.info("fetched reference %s (%d bytes)", uri, size)
        return digest
    finally:
        tmp.unlink(missing_ok=True)
