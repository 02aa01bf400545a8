"""Turning a tree into a version: blobs first, then the manifest, then the record.

The order is what makes a commit safe to kill at any moment: a version record
is written only after every blob and the manifest are in the store, so a
reader never sees a version whose bytes are not all there; anything a killed
commit left behind is unreferenced blobs, which gc sweeps.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Callable, Collection, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from artfs import names
from artfs.digest import READ_CHUNK, digest_fd, digest_file
from artfs.manifest import ManifestBuilder
from artfs.objects import PreconditionFailed
from artfs.repo import layout, runs
from artfs.repo.records import CommitResult, RepoError, Version
from artfs.repo.registry import Repo

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

    def one(item: tuple[str, Path]) -> tuple[str, Path, str, int, bool]:
        path, disk = item
        fd = os.open(disk, os.O_RDONLY)
        try:
            st = os.fstat(fd)
            # A large file advances the bar as it is read, not once at its end.
            large = progress is not None and st.st_size >= READ_CHUNK
            digest, size = digest_fd(fd, st.st_size, progress if large else None)
        finally:
            os.close(fd)
        return path, disk, digest, size, bool(st.st_mode & 0o100)

    def some(chunk: list[tuple[str, Path]]) -> list[tuple[str, Path, str, int, bool]]:
        return [one(item) for item in chunk]

    chunks = [files[i : i + _HASH_CHUNK] for i in range(0, len(files), _HASH_CHUNK)]
    with ThreadPoolExecutor(max_workers=HASH_WORKERS) as pool:
        for done in pool.map(some, chunks):
            for path, disk, digest, size, executable in done:
                builder.add_file(path, size, digest, executable=executable)
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
    move: bool = False,
    progress: Progress | None = None,
    stored: Collection[str] = frozenset(),
) -> CommitResult:
    """Store ``builder``'s tree as the next version of ``project/artifact``.

    ``sources`` maps the digest of every file that may need uploading to a
    local file with those bytes. With ``move`` a local store may take the
    files instead of copying them. A tree identical to ``latest`` makes no
    version: the result says so and names ``latest``.
    """
    aliases = list(dict.fromkeys(aliases))
    for alias in aliases:
        names.check_alias(alias)
    if logged_by is not None:
        runs.check_run_id(logged_by)
    if metadata is not None and not isinstance(metadata, dict):
        raise RepoError("metadata must be a JSON object")
    art = repo.create_artifact(project, artifact, type)
    if art.type != type:
        raise RepoError(f"{art.qualified} is of type {art.type!r}, not {type!r}")

    tree = builder.tree_digest()
    latest = repo.alias_target(project, artifact, "latest")
    if latest is not None:
        try:
            current = repo.version(project, artifact, latest)
        except RepoError:
            current = None
        if current is not None and current.tree == tree:
            for alias in aliases:
                repo.set_alias(current, alias)
            if logged_by is not None:
                runs.record_log(repo, logged_by, current)  # the run made it, if not first
            return CommitResult(repo.version(project, artifact, latest), False, 0, 0, 0)

    needed = {digest: size for _, size, digest in builder.files()}
    # ``stored``: blobs of a live version the tree was edited from (a .base),
    # which gc keeps; checking each would cost a request per unchanged file.
    missing = [d for d in needed if d not in sources and d not in stored]
    if missing:
        # Files carried over from an existing version (a .base) must already be stored.
        absent = [d for d in missing if not repo.blob_exists(d)]
        if absent:
            raise RepoError(
                f"{len(absent)} blobs are neither staged nor in the store, e.g. {absent[0]}"
            )
    uploaded, reused = _upload_blobs(
        repo,
        {d: sources[d] for d in needed if d in sources},
        move=move,
        progress=progress,
        sizes=needed,
    )

    with tempfile.TemporaryDirectory(dir=repo.cache.root / "tmp") as tmp:
        manifest_file = Path(tmp) / "manifest.sqlite"
        builder.write(manifest_file)
        manifest_digest, _ = digest_file(manifest_file)
        repo.cache.add_file(manifest_digest, manifest_file)
        with contextlib.suppress(PreconditionFailed):
            repo.store.put_file(layout.blob_key(manifest_digest), manifest_file, if_absent=True)

    total = sum(size for _, size, _ in builder.files())  # every file, duplicates too
    version = repo.create_version_record(
        Version(
            project=project,
            artifact=artifact,
            number=-1,
            manifest=manifest_digest,
            tree=tree,
            created=time.time(),
            size=total,
            file_count=len(list(builder.files())),
            description=description,
            metadata=dict(metadata or {}),
            logged_by=logged_by,
        )
    )
    # A gc that ran between our existence check and the record may have swept
    # a blob we counted on; the record now protects it, so put it back.
    for digest in reused:
        if not repo.blob_exists(digest) and sources[digest].exists():
            repo.store.put_file(layout.blob_key(digest), sources[digest])
    if logged_by is not None:
        runs.record_log(repo, logged_by, version)
    repo.advance_latest(project, artifact, version.number)
    for alias in aliases:
        repo.set_alias(version, alias)
    new_bytes = sum(needed[d] for d in uploaded)
    return CommitResult(
        repo.version(project, artifact, version.number), True, len(uploaded), new_bytes, len(reused)
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
