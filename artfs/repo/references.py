"""Reference entries into a tree: ``put --reference URI`` and ``add_reference``.

A URI names one object, or a prefix (``s3://b/dir/``, a ``file://``
directory) that expands to one entry per object below it, refused past
``max_objects`` before anything is read. With ``checksum`` (the default)
each object is read once, now, and its entry records the digest of its
bytes (read with the etag its listing gave as a condition, so the digest
and size are of one object) and that etag; without, the entry records the
etag only, and readers compare it (``artfs.cache.referents``). Nothing is uploaded: the
bytes stay where they are, and gc never touches them.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from artfs import names
from artfs.digest import Hasher
from artfs.manifest import ManifestBuilder
from artfs.objects import NotFound, PreconditionFailed, StoreError
from artfs.objects.referents import Referent, Referents, check_uri, relative_name
from artfs.repo.records import RepoError

HASH_WORKERS = 8


class _HashSink:
    """A file-like ``out`` for a download that only hashes what it is given."""

    def __init__(self) -> None:
        self.hasher = Hasher()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.hasher.update(data)
        self.size += len(data)
        return len(data)


def _digest(referents: Referents, r: Referent) -> str:
    sink = _HashSink()
    try:
        referents.download(r.uri, sink, etag=r.etag or None)  # type: ignore[arg-type]
    except PreconditionFailed:
        raise RepoError(f"{r.uri} changed while it was read; try again") from None
    if sink.size != r.size:
        raise RepoError(f"{r.uri} changed while it was read; try again")
    return sink.hasher.content_digest()


def add_references(
    builder: ManifestBuilder,
    referents: Referents,
    uri: str,
    name: str | None = None,
    *,
    checksum: bool = True,
    max_objects: int | None = None,
    before_add: Callable[[str], None] | None = None,
) -> int:
    """Add the objects ``uri`` names to ``builder``; returns how many.

    One object goes at ``name`` (default: the last component of its URI); a
    prefix's objects go under ``name`` (default: the root) at their path
    below the prefix. ``before_add(path)`` is called first for each path
    (the API makes room there). RepoError or BadName on bad input, before
    anything is added."""
    if max_objects is not None and max_objects < 1:
        raise RepoError(f"bad --max-objects {max_objects}: at least 1")
    try:
        check_uri(uri, prefix=True)
        found = referents.expand(uri, max_objects)
    except NotFound:
        raise RepoError(f"no such object: {uri}") from None
    except ValueError as e:  # BadReference
        raise RepoError(str(e)) from None
    except StoreError as e:
        raise RepoError(f"cannot read {uri}: {e}") from None
    single = len(found) == 1 and found[0].uri == uri
    base = (name or "").strip("/")
    paths: list[str] = []
    for r in found:
        if single:
            path = base or uri.rstrip("/").rpartition("/")[2]
        else:
            rel = relative_name(uri, r.uri)
            path = f"{base}/{rel}" if base else rel
        names.check_path(path)
        paths.append(path)
    if len(set(paths)) != len(paths):
        raise RepoError(f"{uri}: two objects give one path")
    if checksum:
        with ThreadPoolExecutor(max_workers=HASH_WORKERS) as pool:
            try:
                digests: list[str | None] = list(pool.map(lambda r: _digest(referents, r), found))
            except NotFound as e:
                gone = e.args[0] if e.args else uri
                raise RepoError(f"{gone} vanished while it was read") from None
            except StoreError as e:
                raise RepoError(f"cannot read {uri}: {e}") from None
    else:
        digests = [None] * len(found)
        missing = next((r.uri for r in found if not r.etag), None)
        if missing is not None:
            raise RepoError(f"{missing} has no etag: add it with a checksum")
    for path, r, digest in zip(paths, found, digests, strict=True):
        if before_add is not None:
            before_add(path)
        try:
            # The etag is kept with a digest too: it pins a lazy read's ranges
            # to the committed object (artfs.cache.referents).
            builder.add_reference(path, r.uri, r.size, digest=digest, etag=r.etag or None)
        except ValueError as e:
            raise RepoError(str(e)) from None
    return len(found)
