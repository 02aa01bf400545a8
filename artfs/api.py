"""The Python API, shaped like W&B's public API.

api = artfs.Api()
api.put(["data/"], "proj/mnist", type="dataset", aliases=["best"])
art = api.artifact("proj/mnist:latest")
art.description = "cleaned"
art.metadata["rows"] = 60000
art.save()
path = art.download()
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from artfs import names
from artfs.cache import CacheInfo, CleanupResult
from artfs.config import Settings, load_settings
from artfs.manifest import ManifestBuilder, scan_tree
from artfs.materialize import materialize
from artfs.objects import open_store
from artfs.repo import CommitResult, Repo, RepoError, Version, commit_tree, hash_files, runs

Progress = Callable[[int], None]
PhaseProgress = Callable[[str, int], Progress | None]


class ArtifactVersion:
    """One version, with W&B's editable fields: description, metadata, aliases."""

    def __init__(self, api: Api, version: Version, type: str) -> None:
        self._api = api
        self._version = version
        self.type = type
        self._loaded(version)

    def _loaded(self, version: Version) -> None:
        self._version = version
        self.description = version.description
        self.metadata: dict[str, Any] = copy.deepcopy(version.metadata)
        self.aliases: list[str] = list(version.aliases)
        # What was read, so save() writes only what the caller changed and
        # keeps edits other writers made meanwhile.
        self._read_metadata = copy.deepcopy(version.metadata)
        self._read_aliases = set(version.aliases)

    @property
    def version(self) -> Version:
        return self._version

    @property
    def ref(self) -> str:
        return self._version.ref

    @property
    def name(self) -> str:
        return f"{self._version.artifact}:v{self._version.number}"

    def save(self) -> None:
        """Persist the changes made to description, metadata and aliases."""
        repo = self._api.repo
        if not isinstance(self.description, str):
            raise RepoError("description must be a string")
        if not isinstance(self.metadata, dict):
            raise RepoError("metadata must be a JSON object")
        wanted = set(self.aliases)
        # Check every alias before writing anything.
        for alias in wanted - self._read_aliases:
            names.check_alias(alias, allow_latest=False)
        for alias in self._read_aliases - wanted:
            names.check_alias(alias, allow_latest=False)
        changed = {
            k: v
            for k, v in self.metadata.items()
            if k not in self._read_metadata or self._read_metadata[k] != v
        }
        removed = [k for k in self._read_metadata if k not in self.metadata]
        v = repo.update_version(
            self._version,
            description=(
                self.description if self.description != self._version.description else None
            ),
            set_metadata=changed,
            unset_metadata=removed,
        )
        for alias in sorted(self._read_aliases - wanted):
            repo.remove_alias(v.project, v.artifact, alias)
        for alias in sorted(wanted - self._read_aliases):
            repo.set_alias(v, alias)
        self._loaded(repo.version(v.project, v.artifact, v.number))

    def files(self) -> list[tuple[str, int, str]]:
        """(path, size, digest) of every file."""
        m = self._api.repo.manifest(self._version)
        return [(p, e.size, e.digest or "") for p, e in m.files()]

    def download(
        self,
        root: str | os.PathLike[str] | None = None,
        progress: Progress | None = None,
        *,
        link: bool = False,
    ) -> Path:
        """Write the version's files under ``root``: reflinks or copies of the
        cache's verified blobs, or, with ``link``, read-only hard links to them."""
        run_id = os.environ.get(runs.RUN_ENV)
        if run_id:
            # Inside `artfs run`, a download is a use, as W&B's use_artifact.
            runs.record_use(self._api.repo, run_id, self._version)
        return self._api.download(self._version, root, progress, link=link)

    checkout = download

    def delete(self, delete_aliases: bool = False) -> None:
        self._api.repo.delete_version(self._version, delete_aliases=delete_aliases)


class Api:
    def __init__(
        self, store: str | None = None, cache: str | None = None, settings: Settings | None = None
    ) -> None:
        self.settings = settings or load_settings(store, cache)
        self.repo = Repo.open(
            open_store(self.settings.store),
            str(self.settings.cache_dir),
            self.settings.cache_size,
        )

    # -- reading ------------------------------------------------------------

    def artifact(self, ref: str) -> ArtifactVersion:
        r = names.Ref.parse(ref)
        version = self.repo.resolve(r)
        return ArtifactVersion(self, version, self.repo.artifact(r.project, r.artifact).type)

    def artifact_versions(self, name: str) -> list[ArtifactVersion]:
        r = names.Ref.parse(name)
        art = self.repo.artifact(r.project, r.artifact)
        return [
            ArtifactVersion(self, v, art.type) for v in self.repo.versions(r.project, r.artifact)
        ]

    # -- writing ------------------------------------------------------------

    def put(
        self,
        paths: Iterable[str | os.PathLike[str]],
        name: str,
        *,
        type: str | None = None,
        aliases: Iterable[str] = (),
        description: str = "",
        metadata: dict[str, Any] | None = None,
        progress: Progress | None = None,
        logged_by: str | None = None,
        phases: PhaseProgress | None = None,
    ) -> CommitResult:
        """Store files and directories as the next version of ``proj/name``.

        A directory's contents go at the artifact's root (like
        ``wandb artifact put dir/``); a file goes under its own name.
        ``type`` defaults to the artifact's, or ``dataset`` for a new one.
        ``progress`` is called with the bytes hashed; ``phases``, if given,
        instead is called as ``phases("hashing", total_bytes)`` and
        ``phases("uploading", total_bytes)`` and returns each phase's callback.
        """
        if logged_by is None:
            logged_by = os.environ.get(runs.RUN_ENV) or None
        ref = names.Ref.parse(name)
        if ref.selector:
            raise names.BadName(
                f"bad artifact name {name!r}: put takes project/artifact, use -a for aliases"
            )
        for alias in aliases:
            names.check_alias(alias)
        if type is None:
            try:
                type = self.repo.artifact(ref.project, ref.artifact).type
            except RepoError:
                type = "dataset"
        builder, files = build_tree(paths)
        upload_progress = None
        if phases is not None:
            progress = phases("hashing", sum(os.stat(disk).st_size for _, disk in files))
        sources = hash_files(files, builder, progress)
        if phases is not None:
            upload_progress = phases("uploading", sum(s for _, s, _ in _unique_files(builder)))
        return commit_tree(
            self.repo,
            ref.project,
            ref.artifact,
            builder,
            sources,
            type=type,
            description=description,
            metadata=metadata,
            aliases=aliases,
            logged_by=logged_by,
            progress=upload_progress,
        )

    def download(
        self,
        version: Version,
        root: str | os.PathLike[str] | None = None,
        progress: Progress | None = None,
        *,
        link: bool = False,
    ) -> Path:
        dest = (
            Path(root)
            if root is not None
            else (Path("artifacts") / f"{version.artifact}:v{version.number}")
        )
        materialize(self.repo, version, dest, progress, link=link)
        return dest.absolute()

    def cache_cleanup(self, max_bytes: int) -> CleanupResult:
        return self.repo.cache.cleanup(max_bytes)

    def cache_info(self) -> CacheInfo:
        return self.repo.cache.info()


def _unique_files(builder: ManifestBuilder) -> list[tuple[str, int, str]]:
    seen: dict[str, tuple[str, int, str]] = {}
    for path, size, digest in builder.files():
        seen.setdefault(digest, (path, size, digest))
    return list(seen.values())


def build_tree(
    paths: Iterable[str | os.PathLike[str]],
) -> tuple[ManifestBuilder, list[tuple[str, Path]]]:
    """Scan the inputs of a put; refuses missing paths and bad names before anything is stored."""
    builder = ManifestBuilder()
    files: list[tuple[str, Path]] = []
    seen: set[str] = set()
    paths = [Path(p) for p in paths]
    if not paths:
        raise RepoError("nothing to put: name at least one file or directory")
    for p in paths:
        if not p.exists() and not p.is_symlink():
            raise RepoError(f"no such file or directory: {p}")
    for p in paths:
        # A link named on the command line is followed (it names what the user
        # means to store); links inside a directory are kept as links.
        if p.is_dir():
            found = scan_tree(p, builder)
        elif p.is_file():
            names.check_path(p.name)
            found = [(p.name, p)]
        else:
            raise RepoError(f"cannot put {p}: not a regular file or directory")
        for path, disk in found:
            if path in seen:
                raise RepoError(f"two inputs give the same path {path!r}")
            seen.add(path)
            files.append((path, disk))
    return builder, files
