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

import contextlib
import logging
import os
import tempfile
import time
from collections.abc import Callable, Collection, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from artfs import names
from artfs.digest import READ_CHUNK, digest_fd, digest_file
from artfs.hooks import pause_point
from artfs.manifest import ManifestBuilder
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


def hash_files(
    files: Iterable[tuple[str, Path]], builder: ManifestBuilder, progress: Progress | None = None
) -> dict[str, Path]:
    """Hash files into ``builder``; returns digest -> a file holding those bytes."""
    files = list(files)
    sources: dict[str, Path] = {}

    def one(item: tuple[str, Path]) -> tuple[str, Path, str, int, os.stat_result]:
        path, disk = item
        fd = os.open(disk, os.O_RDONLY)
        try:
            st = os.fstat(fd)
            # A large file advances the bar as it is read, not once at its end.
            large = progress is not None and st.st_size >= READ_CHUNK
            digest, size = digest_fd(fd, st.st_size, progress if large else None)
        finally:
            os.close(fd)
        return path, disk, digest, size, st

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


def commit_tree(
    repo: Repo,
    project: str,
    artifact: str,
    builder: ManifestBuilder,
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

    needed = {digest: size for _, size, digest in builder.files()}
    # Every file, duplicates and reference entries too.
    file_count, total = builder.totals()
    with StoreLock(repo.store, SHARED, f"commit {project}/{artifact}") as lock:
        _check_carried(repo, project, artifact, [d for d in needed if d not in sources], stored)
        uploaded, reused = _upload_blobs(
            repo,
            {d: sources[d] for d in needed if d in sources},
            move=move,
            progress=progress,
            sizes=needed,
        )
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
    new_bytes = sum(needed[d] for d in uploaded)
    return CommitResult(
        repo.version(project, artifact, version.number), True, len(uploaded), new_bytes, len(reused)
    )


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
