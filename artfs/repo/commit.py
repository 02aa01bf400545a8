"""Turning a tree into a version: blobs first, then the manifest, then the record.

The order is what makes a commit safe to kill at any moment: a version record
is written only after every blob and the manifest are in the store, so a
reader never sees a version whose bytes are not all there; anything a killed
commit left behind is unreferenced blobs (and temp files), which gc sweeps.

Against gc on any machine, a commit holds a shared store lock (``locks``)
from before its first existence check until its version record is written:
every blob it counts on, whether it uploaded it, found it already stored
(dedup, the manifest too) or carries it over from a ``.base``, was seen in
the store while the lock was held, and no gc deletes anything while a shared
lock lives (the argument is in ``artfs.repo.gc``). The record is written only
if the lock's lease still holds.

``latest`` is repaired first: a commit killed between its record and the
alias move leaves ``latest`` behind, and "identical to latest" means
identical to the highest live version, so a retry of that commit makes no
duplicate.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import tempfile
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from artfs import names
from artfs.digest import READ_CHUNK, digest_fd, digest_file
from artfs.hooks import pause_point
from artfs.manifest import ManifestBuilder
from artfs.manifest_spill import SpilledSources, SpillingBuilder
from artfs.objects import PreconditionFailed
from artfs.repo import layout, runs
from artfs.repo.locks import SHARED, StoreLock
from artfs.repo.records import CommitResult, Committer, RepoError, Version, check_json_value
from artfs.repo.registry import Repo

log = logging.getLogger("artfs.repo.commit")

UPLOAD_WORKERS = 8
HASH_WORKERS = 4
_CHECK_CHUNK = 256
_HASH_CHUNK = 64
Progress = Callable[[int], None]
T = TypeVar("T")


def _hash_one(disk: str | Path, progress: Progress | None) -> tuple[str, int, os.stat_result]:
    fd = os.open(disk, os.O_RDONLY)
    try:
        st = os.fstat(fd)
        # A large file advances the bar as it is read, not once at its end.
        large = progress is not None and st.st_size >= READ_CHUNK
        digest, size = digest_fd(fd, st.st_size, progress if large else None)
    finally:
        os.close(fd)
    return digest, size, st


def hash_files(
    files: Iterable[tuple[str, Path]], builder: ManifestBuilder, progress: Progress | None = None
) -> dict[str, Path]:
    """Hash files into ``builder``; returns digest -> a file holding those bytes."""
    files = list(files)
    sources: dict[str, Path] = {}

    def one(item: tuple[str, Path]) -> tuple[str, Path, str, int, os.stat_result]:
        path, disk = item
        return (path, disk, *_hash_one(disk, progress))

    def some(chunk: list[tuple[str, Path]]) -> list[tuple[str, Path, str, int, os.stat_result]]:
        return [one(item) for item in chunk]

    chunks = [files[i : i + _HASH_CHUNK] for i in range(0, len(files), _HASH_CHUNK)]
    with ThreadPoolExecutor(max_workers=HASH_WORKERS) as pool:
        for done in pool.map(some, chunks):
            for path, disk, digest, size, st in done:
                # The version keeps the file's permission bits and mtime.
                builder.add_file(path, size, digest, mode=st.st_mode, mtime_ns=st.st_mtime_ns)
                sources.setdefault(digest, disk)
            if progress:
                progress(sum(d[3] for d in done if d[3] < READ_CHUNK))
    return sources


def hash_pending(builder: SpillingBuilder, progress: Progress | None = None) -> None:
    """Hash the pending files of ``builder`` in place, a few chunks in flight at a
    time, so memory holds chunks, not the list of every file."""

    def some(rows: list[tuple[int, str, str]]) -> list[tuple[int, int, str, int, int]]:
        done = []
        for rowid, _path, disk in rows:
            digest, size, st = _hash_one(disk, progress)
            done.append((rowid, size, digest, st.st_mode, st.st_mtime_ns))
        return done

    def finish(done: list[tuple[int, int, str, int, int]]) -> None:
        builder.set_hashed(done)
        if progress:
            progress(sum(d[1] for d in done if d[1] < READ_CHUNK))

    with ThreadPoolExecutor(max_workers=HASH_WORKERS) as pool:
        inflight: collections.deque[Future[list[tuple[int, int, str, int, int]]]] = (
            collections.deque()
        )
        # Reads of the next chunks wait for the updates of those done: the
        # builder's database has one connection, used from this thread only.
        for rows in builder.pending(_HASH_CHUNK):
            inflight.append(pool.submit(some, rows))
            if len(inflight) >= 2 * HASH_WORKERS:
                finish(inflight.popleft().result())
        while inflight:
            finish(inflight.popleft().result())


def commit_tree(
    repo: Repo,
    project: str,
    artifact: str,
    builder: ManifestBuilder | SpillingBuilder,
    sources: Mapping[str, Path],
    *,
    type: str = "dataset",
    description: str = "",
    metadata: dict[str, Any] | None = None,
    aliases: Iterable[str] = (),
    logged_by: str | None = None,
    committed_by: Committer | None = None,
    move: bool = False,
    progress: Progress | None = None,
    stored: Collection[str] = frozenset(),
) -> CommitResult:
    """Store ``builder``'s tree as the next version of ``project/artifact``.

    ``sources`` maps the digest of every file that may need uploading to a
    local file with those bytes. With ``move`` a local store may take the
    files instead of copying them. A tree identical to ``latest`` makes no
    version: the result says so and names ``latest``. The version records
    ``committed_by``, by default the user running this process (the mount
    passes its caller's).
    """
    aliases = list(dict.fromkeys(aliases))
    for alias in aliases:
        names.check_alias(alias)
    if logged_by is not None:
        runs.check_run_id(logged_by)
    if metadata is not None and not isinstance(metadata, dict):
        raise RepoError("metadata must be a JSON object")
    if not isinstance(description, str):
        raise RepoError("description must be a string")
    check_json_value(metadata, "metadata")
    check_json_value(description, "description")
    art = repo.create_artifact(project, artifact, type)
    if art.type != type:
        raise RepoError(f"{art.qualified} is of type {art.type!r}, not {type!r}")

    tree = builder.tree_digest()
    _repair_latest(repo, project, artifact)
    current = repo.highest_live_version(project, artifact)
    if current is not None and current.tree == tree:
        for alias in aliases:
            repo.set_alias(current, alias)
        if logged_by is not None:
            runs.record_log(repo, logged_by, current)  # the run made it, if not first
        return CommitResult(repo.version(project, artifact, current.number), False, 0, 0, 0)

    # Every file, duplicates and reference entries too.
    file_count, total = builder.totals()
    uploaded = reused = new_bytes = 0
    with StoreLock(repo.store, SHARED, f"commit {project}/{artifact}") as lock:
        carried = []
        for chunk in _chunks(unique_files(builder), _UPLOAD_CHUNK):
            digests = [d for d, _ in chunk]
            if isinstance(sources, SpilledSources):
                local: Collection[str] = sources.having(digests)
            else:
                local = sources
            carried += [d for d in digests if d not in local]
        _check_carried(repo, project, artifact, carried, stored)
        # In chunks of distinct contents: a put of a million files holds one
        # chunk of sources at a time, not a map of all of them.
        for chunk in _chunks(unique_files(builder), _UPLOAD_CHUNK):
            sizes = dict(chunk)
            local = _sources_of(sources, list(sizes))
            up, found = _upload_blobs(repo, local, move=move, progress=progress, sizes=sizes)
            uploaded += len(up)
            reused += len(found)
            new_bytes += sum(sizes[d] for d in up)
        with tempfile.TemporaryDirectory(dir=repo.cache.root / "tmp") as tmp:
            manifest_file = Path(tmp) / "manifest.sqlite"
            # A full cache disk evicts least recently used blobs before it fails.
            repo.cache.writing(lambda: builder.write(manifest_file))
            manifest_digest, _ = digest_file(manifest_file)
            repo.cache.add_file(manifest_digest, manifest_file)
            # Already there (another commit of the same tree) is as good as
            # written: it was seen under the lock.
            with contextlib.suppress(PreconditionFailed):
                repo.store.put_file(layout.blob_key(manifest_digest), manifest_file, if_absent=True)
        pause_point("BEFORE_RECORD")
        lock.check()
        version = repo.create_version_record(
            Version(
                project=project,
                artifact=artifact,
                number=-1,
                manifest_digest=manifest_digest,
                tree=tree,
                created=time.time(),
                size=total,
                file_count=file_count,
                description=description,
                metadata=dict(metadata or {}),
                logged_by=logged_by,
                committed_by=committed_by or Committer.of_uid(os.getuid()),
            )
        )
    pause_point("AFTER_RECORD")
    if logged_by is not None:
        runs.record_log(repo, logged_by, version)
    repo.advance_latest(project, artifact, version.number)
    for alias in aliases:
        repo.set_alias(version, alias)
    return CommitResult(
        repo.version(project, artifact, version.number), True, uploaded, new_bytes, reused
    )


_UPLOAD_CHUNK = 16_384


def unique_files(builder: ManifestBuilder | SpillingBuilder) -> Iterator[tuple[str, int]]:
    """(digest, size) of each distinct content of the tree."""
    if isinstance(builder, SpillingBuilder):
        yield from builder.unique_files()
        return
    seen: dict[str, int] = {}
    for _, size, digest in builder.files():
        seen.setdefault(digest, size)
    yield from seen.items()


def _sources_of(sources: Mapping[str, Path], digests: list[str]) -> dict[str, Path]:
    if isinstance(sources, SpilledSources):
        return sources.get_many(digests)
    return {d: p for d in digests if (p := sources.get(d)) is not None}


def _chunks(items: Iterable[T], n: int) -> Iterator[list[T]]:
    chunk: list[T] = []
    for item in items:
        chunk.append(item)
        if len(chunk) >= n:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _repair_latest(repo: Repo, project: str, artifact: str) -> None:
    changed = repo.repair_latest(project, artifact)
    if changed is not None:
        log.warning(
            "%s/%s: latest named %s, repaired to v%s (the highest live version)",
            project,
            artifact,
            f"v{changed[0]}" if changed[0] is not None else "nothing",
            changed[1],
        )


_CARRIED_VERSIONS = 3


def _check_carried(
    repo: Repo, project: str, artifact: str, digests: list[str], stored: Collection[str]
) -> None:
    """Every blob the tree takes over without a local copy is in the store now.

    Called under the shared lock, so what is there now stays until the record
    protects it. ``stored`` (a .base's blobs) is first matched against the
    newest live versions of the artifact, whose blobs gc keeps, so an edit of
    a large base costs no request per unchanged file; the rest is checked one
    by one.
    """
    rest = set(digests)
    if stored and rest:
        for found, v in enumerate(repo.newest_live_versions(project, artifact), start=1):
            rest -= repo.manifest(v).digests()
            if not rest or found >= _CARRIED_VERSIONS:
                break
    if not rest:
        return
    todo = sorted(rest)
    chunks = [todo[i : i + _CHECK_CHUNK] for i in range(0, len(todo), _CHECK_CHUNK)]
    with ThreadPoolExecutor(max_workers=UPLOAD_WORKERS) as pool:
        present = [
            p
            for chunk in pool.map(lambda c: [repo.blob_exists(d) for d in c], chunks)
            for p in chunk
        ]
    absent = [d for d, p in zip(todo, present, strict=True) if not p]
    if absent:
        raise RepoError(
            f"{len(absent)} blobs are neither staged nor in the store, e.g. {absent[0]}"
            + (" (the base version was deleted and its blobs collected)" if stored else "")
        )


def _upload_blobs(
    repo: Repo,
    sources: Mapping[str, Path],
    *,
    move: bool,
    progress: Progress | None,
    sizes: Mapping[str, int] | None = None,
) -> tuple[list[str], list[str]]:
    """Upload the blobs the store lacks. Returns (uploaded, already there)."""
    digests = list(sources)
    store = repo.store

    def stored(chunk: list[str]) -> list[bool]:
        return [store.exists(layout.blob_key(d)) for d in chunk]

    # Chunks, not one task per blob: a pool's own cost per task is more than
    # a local stat, while a remote store still gets its checks in parallel.
    chunks = [digests[i : i + _CHECK_CHUNK] for i in range(0, len(digests), _CHECK_CHUNK)]
    with ThreadPoolExecutor(max_workers=UPLOAD_WORKERS) as pool:
        present = [p for chunk in pool.map(stored, chunks) for p in chunk]
    reused = [d for d, p in zip(digests, present, strict=True) if p]
    missing = [d for d, p in zip(digests, present, strict=True) if not p]
    if progress and reused:
        progress(sum(sizes[d] if sizes else sources[d].stat().st_size for d in reused))
    written = store.put_files(
        [(layout.blob_key(d), sources[d]) for d in missing],
        if_absent=True,
        move=move,
        progress=progress,
    )
    uploaded = [d for d, new in zip(missing, written, strict=True) if new]
    # Not written: another writer stored the same bytes first.
    reused += [d for d, new in zip(missing, written, strict=True) if not new]
    return uploaded, reused
