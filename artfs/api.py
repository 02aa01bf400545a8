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

import contextlib
import copy
import dataclasses
import os
import sys
import tempfile
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from artfs import names
from artfs.cache import CacheInfo, CleanupResult
from artfs.config import Settings, load_settings
from artfs.diff import Change, diff_manifests, diff_tree
from artfs.manifest import Entry, Manifest, ManifestBuilder, iter_tree, scan_tree
from artfs.manifest_spill import DuplicatePath, SpillingBuilder
from artfs.materialize import materialize, remove_path
from artfs.objects import open_store
from artfs.repo import (
    CommitResult,
    NotFoundError,
    Project,
    Repo,
    RepoError,
    Version,
    commit_tree,
    drafts,
    hash_files,
    runs,
)
from artfs.repo.commit import hash_pending, unique_files
from artfs.repo.query import select
from artfs.repo.references import add_references

Progress = Callable[[int], None]
PhaseProgress = Callable[[str, int], Progress | None]


class ArtifactEntry(tuple):
    """One entry of a version's tree, as W&B's ``artifact.get_entry(path)``.

    It is the tuple ``(path, size, digest)`` too, for callers that only want those.
    """

    def __new__(cls, artifact: ArtifactVersion, path: str, entry: Entry) -> ArtifactEntry:
        self = super().__new__(cls, (path, entry.size, entry.digest or ""))
        self._artifact = artifact
        self.path = self.name = path
        self.kind = {"f": "file", "d": "dir", "l": "symlink"}.get(entry.kind, entry.kind)
        self.size = entry.size
        self.digest = entry.digest or ""
        self.target = entry.target
        self.mode = entry.mode
        self.ref = entry.ref  # a reference entry's URI (W&B's ``entry.ref``), else None
        return self

    def __repr__(self) -> str:
        return f"<ArtifactEntry {self.path} {self.kind} {self.size}>"

    def download(self, root: str | os.PathLike[str] | None = None) -> Path:
        """Write this entry (a file, a link, or a directory's whole subtree) under ``root``."""
        return self._artifact.download(root, path_prefix=self.path)


class ArtifactVersion:
    """One version, with W&B's attribute names; description, metadata, aliases,
    tags and ttl are edited in place and written by ``save()``."""

    def __init__(self, api: Api, version: Version, type: str) -> None:
        self._api = api
        self.type = type
        self._loaded(version)

    def _loaded(self, version: Version) -> None:
        self._record = version
        self.description = version.description
        self.metadata: dict[str, Any] = copy.deepcopy(version.metadata)
        self.aliases: list[str] = list(version.aliases)
        self.tags: list[str] = list(version.tags)
        self.ttl: timedelta | None = None if version.ttl is None else timedelta(seconds=version.ttl)
        # What was read, so save() writes only what the caller changed and
        # keeps edits other writers made meanwhile.
        self._read_metadata = copy.deepcopy(version.metadata)
        self._read_aliases = set(version.aliases)
        self._read_tags = set(version.tags)
        self._read_ttl = self.ttl

    # -- what W&B calls them -------------------------------------------------

    @property
    def record(self) -> Version:
        """The registry's record of this version, as read."""
        return self._record

    @property
    def project(self) -> str:
        return self._record.project

    @property
    def version(self) -> str:
        return f"v{self._record.number}"

    @property
    def name(self) -> str:
        return f"{self._record.artifact}:v{self._record.number}"

    @property
    def qualified_name(self) -> str:
        return self._record.ref

    ref = qualified_name

    @property
    def source_name(self) -> str:
        return self._record.artifact

    @property
    def created_at(self) -> str:
        return datetime.fromtimestamp(self._record.created, UTC).isoformat()

    @property
    def size(self) -> int:
        return self._record.size

    @property
    def file_count(self) -> int:
        return self._record.file_count

    @property
    def digest(self) -> str:
        """The digest of the tree's content: equal trees, equal digests."""
        return self._record.tree

    @property
    def manifest_digest(self) -> str:
        return self._record.manifest_digest

    def __repr__(self) -> str:
        return f"<ArtifactVersion {self.qualified_name} ({self.type})>"

    # -- editing -------------------------------------------------------------

    def save(self) -> None:
        """Persist the changes made to description, metadata, aliases, tags and ttl.

        ``latest`` is moved by commits only: assigning aliases without it keeps
        ``latest`` where it is, and naming it changes nothing.
        """
        repo = self._api.repo
        if not isinstance(self.description, str):
            raise RepoError("description must be a string")
        if not isinstance(self.metadata, dict):
            raise RepoError("metadata must be a JSON object")
        wanted = set(self.aliases) - {"latest"}
        had = self._read_aliases - {"latest"}
        # Check every alias and tag before writing anything.
        for alias in wanted ^ had:
            names.check_alias(alias)
        for tag in set(self.tags) ^ self._read_tags:
            names.check_name(tag, "tag")
        ttl = self.ttl.total_seconds() if isinstance(self.ttl, timedelta) else self.ttl
        changed = {
            k: v
            for k, v in self.metadata.items()
            if k not in self._read_metadata or self._read_metadata[k] != v
        }
        removed = [k for k in self._read_metadata if k not in self.metadata]
        v = repo.update_version(
            self._record,
            description=(
                self.description if self.description != self._record.description else None
            ),
            set_metadata=changed,
            unset_metadata=removed,
        )
        if self.ttl != self._read_ttl:
            v = repo.set_ttl(v, ttl)
        if set(self.tags) != self._read_tags:
            v = repo.edit_tags(
                v, set(self.tags) - self._read_tags, self._read_tags - set(self.tags)
            )
        for alias in sorted(had - wanted):
            repo.remove_alias(v.project, v.artifact, alias)
        for alias in sorted(wanted - had):
            repo.set_alias(v, alias)
        self._loaded(repo.version(v.project, v.artifact, v.number))

    def delete(self, delete_aliases: bool = False) -> None:
        self._api.repo.delete_version(self._record, delete_aliases=delete_aliases)

    def new_draft(self) -> Artifact:
        """A writable copy of this version: its files are carried over without
        copying bytes; logging it stores only what changed."""
        draft = Artifact(
            f"{self._record.project}/{self._record.artifact}",
            type=self.type,
            description=self.description,
            metadata=copy.deepcopy(self.metadata),
        )
        draft._start_from(self._api.repo, self._record)
        return draft

    # -- reading -------------------------------------------------------------

    def _manifest(self) -> Manifest:
        return self._api.repo.manifest(self._record)

    def files(self) -> list[ArtifactEntry]:
        """Every file and symbolic link, and every empty directory (the others
        are implied by the paths under them)."""
        entries = list(self._manifest().walk())
        parents = {p.rpartition("/")[0] for p, _ in entries}
        return [ArtifactEntry(self, p, e) for p, e in entries if not (e.is_dir and p in parents)]

    def get_entry(self, path: str) -> ArtifactEntry:
        entry = self._manifest().lookup(path)
        if entry is None or not path.strip("/"):
            raise NotFoundError(f"no entry {path!r} in {self.qualified_name}")
        return ArtifactEntry(self, path.strip("/"), entry)

    def _record_use(self, run_id: str | None = None) -> None:
        run_id = run_id or runs.active_run_id(self._api.repo)
        if run_id:
            # Inside `artfs run`, a download is a use, as W&B's use_artifact.
            runs.record_use(self._api.repo, run_id, self._record)

    def download(
        self,
        root: str | os.PathLike[str] | None = None,
        path_prefix: str | None = None,
        progress: Progress | None = None,
        *,
        link: bool = False,
    ) -> Path:
        """Write the version (or only the entries under ``path_prefix``) into
        ``root``, default ``./artifacts/NAME:vN``; returns the directory. Files
        are reflinks or copies of the cache's verified blobs, or, with ``link``,
        read-only hard links to them."""
        self._record_use()
        return self._api.download(self._record, root, progress, path_prefix=path_prefix, link=link)

    def checkout(self, root: str | os.PathLike[str] | None = None) -> Path:
        """Make ``root`` hold exactly this version: like download, and whatever
        is not in the version is removed."""
        dest = self.download(root)
        keep = {p for p, _ in self._manifest().walk()}
        for dirpath, dirnames, filenames in os.walk(dest, topdown=False):
            for name in filenames + dirnames:
                full = Path(dirpath) / name
                if full.relative_to(dest).as_posix() not in keep:
                    remove_path(full)
        return dest

    def verify(self, root: str | os.PathLike[str] | None = None) -> None:
        """Raise RepoError naming every file under ``root`` that is changed,
        missing or extra against this version."""
        dest = Path(root) if root is not None else default_root(self._record)
        problems = diff_tree(self._manifest(), dest)
        if problems:
            shown = "; ".join(problems[:5]) + (
                f"; and {len(problems) - 5} more" if len(problems) > 5 else ""
            )
            raise RepoError(f"{dest} does not match {self.qualified_name}: {shown}")

    def diff(self, other: ArtifactVersion) -> list[Change]:
        """What changed from this version to ``other``, from the manifests alone."""
        return diff_manifests(self._manifest(), other._manifest())

    # -- lineage -------------------------------------------------------------

    def logged_by(self) -> Run | None:
        run = runs.logged_by(self._api.repo, self._record)
        return Run(self._api, run) if run else None

    def used_by(self) -> list[Run]:
        return [Run(self._api, r) for r in runs.used_by(self._api.repo, self._record)]


class Artifact:
    """A version to be logged, as ``wandb.Artifact``: add files and
    directories, then ``api.log_artifact(artifact)``."""

    def __init__(
        self,
        name: str,
        type: str = "dataset",
        description: str = "",
        metadata: dict[str, Any] | None = None,
    ) -> None:
        names.check_name(name.rpartition("/")[2], "artifact name")
        names.check_name(type, "artifact type")
        if metadata is not None and not isinstance(metadata, dict):
            raise RepoError("metadata must be a JSON object")
        self.name = name
        self.type = type
        self.description = description
        self.metadata: dict[str, Any] = dict(metadata or {})
        self._builder = ManifestBuilder()
        self._pending: dict[str, Path] = {}  # path in the artifact -> file on disk
        self._base: Version | None = None
        self._base_digests: frozenset[str] = frozenset()
        self._referents: Any = None  # made by the first add_reference
        self.logged: ArtifactVersion | None = None

    def _start_from(self, repo: Repo, version: Version) -> None:
        self._builder = ManifestBuilder.from_manifest(repo.manifest(version))
        self._base = version
        self._base_digests = frozenset(d for _, _, d in self._builder.files())

    def _place(self, path: str) -> None:
        """Make room for a new entry at ``path``, replacing what was there."""
        names.check_path(path)
        self._builder.remove(path)
        for p in [p for p in self._pending if p == path or p.startswith(path + "/")]:
            del self._pending[p]

    def add_file(self, local_path: str | os.PathLike[str], name: str | None = None) -> None:
        src = Path(local_path)
        if not src.is_file():
            raise RepoError(f"cannot add {src}: not a regular file")
        path = (name or src.name).strip("/")
        self._place(path)
        self._pending[path] = src

    def add_dir(self, local_path: str | os.PathLike[str], name: str | None = None) -> None:
        """Add a directory's contents, at the root or under ``name``."""
        src = Path(local_path)
        if not src.is_dir():
            raise RepoError(f"cannot add {src}: not a directory")
        prefix = (name or "").strip("/")
        if prefix:
            self._place(prefix)
        for path, disk in scan_tree(src, self._builder, prefix):
            self._place(path)
            self._pending[path] = disk

    def add_reference(
        self,
        uri: str,
        name: str | None = None,
        checksum: bool = True,
        max_objects: int | None = None,
    ) -> int:
        """Add an object outside the store by URI (``s3://``, ``gs://``,
        ``az://``, ``file://``, ``https://``), as ``wandb.Artifact.add_reference``;
        a prefix (``s3://b/dir/`` or a ``file://`` directory) adds one entry per
        object, at most ``max_objects``. ``checksum`` reads each object now and
        records the digest of its bytes; without, its etag. Returns how many."""
        from artfs.objects.referents import Referents

        if self._referents is None:
            self._referents = Referents()
        return add_references(
            self._builder,
            self._referents,
            uri,
            name,
            checksum=checksum,
            max_objects=max_objects,
            before_add=self._place,
        )

    def remove(self, name: str) -> None:
        path = name.strip("/")
        if path not in self._pending and path not in self._builder:
            raise NotFoundError(f"no entry {name!r} in the artifact")
        self._place(path)

    def _build(self) -> tuple[ManifestBuilder, dict[str, Path]]:
        builder = copy.deepcopy(self._builder)
        sources = hash_files(sorted(self._pending.items()), builder)
        return builder, sources


class Run:
    """A recorded run, as W&B's public ``Run``: its fields and its artifacts."""

    def __init__(self, api: Api, run: runs.Run) -> None:
        self._api = api
        self.record = run

    def __getattr__(self, name: str) -> Any:
        return getattr(self.record, name)

    def __repr__(self) -> str:
        return f"<Run {self.record.id}>"

    def used_artifacts(self) -> list[ArtifactVersion]:
        return [self._api._wrap(v) for v in runs.used_artifacts(self._api.repo, self.record.id)]

    def logged_artifacts(self) -> list[ArtifactVersion]:
        return [self._api._wrap(v) for v in runs.logged_artifacts(self._api.repo, self.record.id)]


class Api:
    """The entry point, as ``wandb.Api()``: ``Api(overrides={"project": "p"})``
    lets refs and names leave the project out."""

    def __init__(
        self,
        store: str | None = None,
        cache: str | None = None,
        settings: Settings | None = None,
        overrides: dict[str, str] | None = None,
    ) -> None:
        self.settings = settings or load_settings(store, cache)
        self.repo = Repo.open(
            open_store(self.settings.store),
            str(self.settings.cache_dir),
            self.settings.cache_size,
        )
        self.overrides = dict(overrides or {})
        project = self.overrides.get("project")
        if project is not None:
            names.check_name(project, "project name")

    def _ref(self, text: str) -> names.Ref:
        """A ref, with the default project put in front of ``name[:alias]``."""
        if "/" not in text.partition(":")[0] and self.overrides.get("project"):
            text = f"{self.overrides['project']}/{text}"
        elif "/" not in text.partition(":")[0]:
            raise names.BadName(
                f"bad ref {text!r}: name the project (project/{text}) "
                "or give Api(overrides={'project': ...})"
            )
        return names.Ref.parse(text)

    def _wrap(self, version: Version) -> ArtifactVersion:
        return ArtifactVersion(
            self, version, self.repo.artifact(version.project, version.artifact).type
        )

    # -- projects -----------------------------------------------------------

    def project(self, name: str) -> Project:
        """A project's record: visibility (private, public, open) and owning group."""
        return self.repo.project(name)

    def create_project(
        self, name: str, visibility: str = "private", group: str | None = None
    ) -> Project:
        """Make a project; refused if it exists (change one with ``set_project``)."""
        return self.repo.create_project(name, visibility, group, exist_ok=False)

    def set_project(
        self, name: str, *, visibility: str | None = None, group: str | None = None
    ) -> Project:
        """Change a project's visibility and/or group; mounts show it within their TTL."""
        return self.repo.set_project(name, visibility=visibility, group=group)

    # -- reading ------------------------------------------------------------

    def artifact(self, name: str, type: str | None = None) -> ArtifactVersion:
        """``api.artifact("proj/name:alias")``; a ref without selector means latest."""
        r = self._ref(name)
        art = self.repo.artifact(r.project, r.artifact)
        if type is not None and art.type != type:
            raise NotFoundError(f"{r.name} is of type {art.type!r}, not {type!r}")
        return ArtifactVersion(self, self.repo.resolve(r), art.type)

    def artifact_exists(self, name: str, type: str | None = None) -> bool:
        try:
            self.artifact(name, type)
        except (NotFoundError, names.BadName):
            return False
        return True

    def artifact_versions(
        self, type_or_name: str, name: str | None = None, **query: Any
    ) -> list[ArtifactVersion]:
        """Every live version of an artifact, oldest first.

        Takes W&B's order ``artifact_versions(type, name)`` as well as
        ``artifact_versions(name)``; ``where=[...]``, ``sort=`` and ``limit=``
        filter like ``artfs versions``.
        """
        type = type_or_name if name is not None else None
        r = self._ref(name if name is not None else type_or_name)
        art = self.repo.artifact(r.project, r.artifact)
        if type is not None and art.type != type:
            raise NotFoundError(f"{r.name} is of type {art.type!r}, not {type!r}")
        versions = select(self.repo.versions(r.project, r.artifact), **query)
        return [ArtifactVersion(self, v, art.type) for v in versions]

    def artifacts(
        self, project: str | None = None, type: str | None = None
    ) -> list[ArtifactVersion]:
        """The latest version of every artifact in a project (of one type, if given)."""
        project = project or self.overrides.get("project")
        if not project:
            raise names.BadName("name the project, or give Api(overrides={'project': ...})")
        out = []
        for art in self.repo.artifacts(project):
            if type is not None and art.type != type:
                continue
            with contextlib.suppress(NotFoundError):
                out.append(
                    ArtifactVersion(self, self.repo.resolve(names.Ref(project, art.name)), art.type)
                )
        return out

    def artifact_types(self, project: str | None = None) -> list[str]:
        project = project or self.overrides.get("project")
        if not project:
            raise names.BadName("name the project, or give Api(overrides={'project': ...})")
        return sorted({a.type for a in self.repo.artifacts(project)})

    def run(self, path: str) -> Run:
        """A run by id; W&B's ``entity/project/run_id`` form is accepted too."""
        return Run(self, runs.get_run(self.repo, path.rpartition("/")[2]))

    def runs(self, project: str | None = None, filters: dict[str, Any] | None = None) -> list[Run]:
        """Recorded runs, oldest first; ``project`` keeps those that used or
        logged a version in it; ``filters`` keeps runs whose fields equal the
        given values (``{"exit_code": 0, "host": "gpu1"}``)."""
        out = []
        for run in runs.list_runs(self.repo):
            if filters and any(getattr(run, k, None) != v for k, v in filters.items()):
                continue
            if project is not None:
                touched = runs.used_artifacts(self.repo, run.id) + runs.logged_artifacts(
                    self.repo, run.id
                )
                if all(v.project != project for v in touched):
                    continue
            out.append(Run(self, run))
        return out

    def use_artifact(self, name: str, type: str | None = None) -> ArtifactVersion:
        """The version, recorded as used by the current run (``ARTFS_RUN``)."""
        art = self.artifact(name, type)
        art._record_use()
        return art

    # -- writing ------------------------------------------------------------

    def log_artifact(
        self,
        artifact: Artifact,
        project: str | None = None,
        aliases: Iterable[str] = (),
        tags: Iterable[str] = (),
        ttl: timedelta | float | None = None,
        logged_by: str | None = None,
    ) -> ArtifactVersion:
        """Commit ``artifact`` as the next version; returns it (or latest, if
        the tree is identical to it). Logged by ``logged_by``, else by the
        current run (``ARTFS_RUN``), if any."""
        if "/" in artifact.name:
            ref = names.Ref.parse(artifact.name)
        else:
            ref = self._ref(artifact.name if project is None else f"{project}/{artifact.name}")
        if project is not None and ref.project != project:
            raise names.BadName(f"artifact {artifact.name!r} is not in project {project!r}")
        aliases = [a for a in aliases if a != "latest"]  # latest moves with every commit
        tags = [names.check_name(t, "tag") for t in tags]
        ttl_seconds = ttl.total_seconds() if isinstance(ttl, timedelta) else ttl
        builder, sources = artifact._build()
        if len(builder) == 0 and artifact._base is None:
            raise RepoError(f"nothing to log: {artifact.name} has no files")
        result = commit_tree(
            self.repo,
            ref.project,
            ref.artifact,
            builder,
            sources,
            type=artifact.type,
            description=artifact.description,
            metadata=artifact.metadata,
            aliases=aliases,
            logged_by=logged_by or runs.active_run_id(self.repo),
            stored=artifact._base_digests,
        )
        v = result.version
        if ttl_seconds is not None:
            v = self.repo.set_ttl(v, ttl_seconds)
        if tags:
            v = self.repo.edit_tags(v, tags)
        artifact.logged = self._wrap(v)
        return artifact.logged

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
        ttl: float | None = None,
        references: Iterable[tuple[str, str | None]] = (),
        checksum: bool = True,
        max_objects: int | None = None,
    ) -> CommitResult:
        """Store files and directories as the next version of ``proj/name``.

        A directory's contents go at the artifact's root (like
        ``wandb artifact put dir/``); a file goes under its own name.
        ``references`` are (URI, path or None) of objects to add as reference
        entries (``Artifact.add_reference``, with ``checksum`` and ``max_objects``).
        ``type`` defaults to the artifact's, or ``dataset`` for a new one.
        ``progress`` is called with the bytes hashed; ``phases``, if given,
        instead is called as ``phases("hashing", total_bytes)`` and
        ``phases("uploading", total_bytes)`` and returns each phase's callback.
        """
        if logged_by is None:
            logged_by = runs.active_run_id(self.repo)
        ref = self._ref(name)
        if ref.selector:
            raise names.BadName(
                f"bad artifact name {name!r}: put takes project/artifact, use -a for aliases"
            )
        aliases = [a for a in aliases if a != "latest"]  # latest moves with every commit
        for alias in aliases:
            names.check_alias(alias)
        if ttl is not None and not ttl > 0:
            raise RepoError(f"bad ttl {ttl!r}: a positive number of seconds")
        if type is None:
            try:
                type = self.repo.artifact(ref.project, ref.artifact).type
            except RepoError:
                type = "dataset"
        paths, references = list(paths), list(references)
        # The tree in a database, not in memory: a million files cost
        # megabytes, not a gigabyte (manifest_spill.py). Reference entries
        # have no spilled form, so a put that adds some builds in memory.
        spilling = not references
        with tempfile.TemporaryDirectory(dir=self.repo.cache.root / "tmp") as spill:
            builder: ManifestBuilder | SpillingBuilder
            files: list[tuple[str, Path]] = []
            if spilling:
                builder = SpillingBuilder(Path(spill))
            else:
                builder, files = build_tree(paths) if paths else (ManifestBuilder(), [])
            try:
                if spilling:
                    scan_inputs(paths, builder)
                    hashing = builder.pending_bytes()
                else:
                    for uri, at in references:
                        add_references(
                            builder,
                            self.repo.referents,
                            uri,
                            at,
                            checksum=checksum,
                            max_objects=max_objects,
                        )
                    hashing = sum(os.stat(disk).st_size for _, disk in files)
                upload_progress = None
                if phases is not None:
                    progress = phases("hashing", hashing)
                if isinstance(builder, SpillingBuilder):
                    hash_pending(builder, progress)
                    sources: Mapping[str, Path] = builder.sources()
                else:
                    sources = hash_files(files, builder, progress)
                if phases is not None:
                    unique = sum(size for _, size in unique_files(builder))
                    upload_progress = phases("uploading", unique)
                result = commit_tree(
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
            finally:
                if isinstance(builder, SpillingBuilder):
                    builder.close()
        if ttl is not None and result.created:
            result = dataclasses.replace(result, version=self.repo.set_ttl(result.version, ttl))
        return result

    # -- shared drafts (many writers, one version) --------------------------

    def _artifact_ref(self, name: str, project: str | None = None) -> names.Ref:
        if "/" in name:
            ref = names.Ref.parse(name)
        else:
            ref = self._ref(name if project is None else f"{project}/{name}")
        if ref.selector:
            raise names.BadName(f"bad artifact name {name!r}: a draft takes project/artifact")
        return ref

    def upsert_artifact(
        self,
        artifact: Artifact,
        group: str | None = None,
        project: str | None = None,
        distributed_id: str | None = None,
    ) -> drafts.Draft:
        """Add ``artifact``'s files to the shared draft ``group`` (as wandb's
        ``upsert_artifact(distributed_id=...)``, also accepted): opened if need
        be, this call's files recorded in a part of their own, durable on return."""
        group = _group(group, distributed_id)
        ref = self._artifact_ref(artifact.name, project)
        drafts.open_draft(
            self.repo,
            ref.project,
            ref.artifact,
            group,
            type=artifact.type,
            description=artifact.description,
            metadata=artifact.metadata,
        )
        builder, sources = artifact._build()
        if next(builder.references(), None) is not None:
            raise RepoError("a shared draft takes files, not reference entries: log_artifact them")
        entries = drafts.builder_entries(builder)
        if not entries:
            raise RepoError(f"nothing to upsert: {artifact.name} has no files")
        writer = drafts.PartWriter(self.repo, ref.project, ref.artifact, group)
        writer.add(entries, sources)
        return drafts.get_draft(self.repo, ref.project, ref.artifact, group)

    def put_draft(
        self,
        paths: Iterable[str | os.PathLike[str]],
        name: str,
        group: str,
        *,
        type: str | None = None,
    ) -> drafts.Draft:
        """``artfs put PATH... --draft GROUP``: files into a part of the draft."""
        ref = self._artifact_ref(name)
        drafts.open_draft(self.repo, ref.project, ref.artifact, group, type=type)
        builder, files = build_tree(paths)
        sources = hash_files(files, builder)
        entries = drafts.builder_entries(builder)
        if not entries:
            raise RepoError("nothing to put: no files")
        drafts.PartWriter(self.repo, ref.project, ref.artifact, group).add(entries, sources)
        return drafts.get_draft(self.repo, ref.project, ref.artifact, group)

    def finish_artifact(
        self,
        name: str | Artifact,
        group: str | None = None,
        aliases: Iterable[str] = (),
        project: str | None = None,
        logged_by: str | None = None,
        distributed_id: str | None = None,
    ) -> ArtifactVersion:
        """Merge every part of the draft ``group`` into the next version and
        close the draft (as wandb's ``finish_artifact``). Fails naming the
        paths two writers wrote differently; then nothing is committed."""
        group = _group(group, distributed_id)
        ref = self._artifact_ref(name.name if isinstance(name, Artifact) else name, project)
        result = drafts.finish_draft(
            self.repo,
            ref.project,
            ref.artifact,
            group,
            aliases=[a for a in aliases if a != "latest"],
            logged_by=logged_by or runs.active_run_id(self.repo),
        )
        return self._wrap(result.version)

    def list_drafts(self, name: str) -> list[drafts.Draft]:
        """The drafts of ``project/artifact``."""
        ref = self._artifact_ref(name)
        return drafts.list_drafts(self.repo, ref.project, ref.artifact)

    def abort_draft(self, name: str, group: str) -> drafts.Draft:
        ref = self._artifact_ref(name)
        return drafts.abort_draft(self.repo, ref.project, ref.artifact, group)

    def delete_artifact(self, name: str) -> list[Version]:
        """Delete every version of an artifact, its aliases and the artifact."""
        r = self._ref(name)
        if r.selector:
            raise names.BadName(f"bad artifact name {name!r}: name the artifact, not a version")
        return self.repo.delete_artifact(r.project, r.artifact)

    def download(
        self,
        version: Version,
        root: str | os.PathLike[str] | None = None,
        progress: Progress | None = None,
        *,
        path_prefix: str | None = None,
        link: bool = False,
    ) -> Path:
        dest = Path(root) if root is not None else default_root(version)
        materialize(self.repo, version, dest, progress, path_prefix=path_prefix, link=link)
        return dest.absolute()

    def cache_cleanup(self, max_bytes: int) -> CleanupResult:
        return self.repo.cache.cleanup(max_bytes)

    def cache_info(self) -> CacheInfo:
        return self.repo.cache.info()


class ActiveRun:
    """A run this process is in, as ``wandb.init()`` returns: what it uses and
    logs through it is recorded as its lineage. A context manager; leaving the
    block (or ``finish()``) records the end and the exit code."""

    def __init__(self, api: Api, run: runs.Run) -> None:
        self.api = api
        self.record = run
        self.id = run.id
        self.name = run.name
        self.group: str | None = None  # init(group=...): the draft of upsert/finish

    def __enter__(self) -> ActiveRun:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.finish(1 if exc_type is not None else 0)

    def log_artifact(
        self,
        artifact: Artifact,
        aliases: Iterable[str] = (),
        tags: Iterable[str] = (),
    ) -> ArtifactVersion:
        return self.api.log_artifact(artifact, aliases=aliases, tags=tags, logged_by=self.id)

    def upsert_artifact(
        self, artifact: Artifact, distributed_id: str | None = None, group: str | None = None
    ) -> drafts.Draft:
        group = _group(group, distributed_id or (None if group else self.group))
        return self.api.upsert_artifact(artifact, group=group)

    def finish_artifact(
        self,
        artifact: Artifact | str,
        aliases: Iterable[str] = (),
        distributed_id: str | None = None,
        group: str | None = None,
    ) -> ArtifactVersion:
        """Finish the draft (``distributed_id``, else the run's group); the
        version is logged by this run."""
        group = _group(group, distributed_id or (None if group else self.group))
        return self.api.finish_artifact(artifact, group=group, aliases=aliases, logged_by=self.id)

    def use_artifact(self, name: str, type: str | None = None) -> ArtifactVersion:
        art = self.api.artifact(name, type)
        art._record_use(self.id)
        return art

    def finish(self, exit_code: int = 0) -> None:
        global _current
        runs.finish_run(self.api.repo, self.record, exit_code)
        if _current is self:
            _current = None

    def used_artifacts(self) -> list[ArtifactVersion]:
        return Run(self.api, self.record).used_artifacts()

    def logged_artifacts(self) -> list[ArtifactVersion]:
        return Run(self.api, self.record).logged_artifacts()


_current: ActiveRun | None = None


def init(
    project: str | None = None,
    name: str | None = None,
    id: str | None = None,
    resume: str | bool | None = None,
    store: str | None = None,
    **_ignored: Any,
) -> ActiveRun:
    """Start a run (or with ``id`` and ``resume``, go on with a recorded one),
    as ``wandb.init``; ``project`` is the default for names without one."""
    global _current
    api = Api(store=store, overrides={"project": project} if project else None)
    if id is not None and resume:
        run = runs.get_run(api.repo, id)
    else:
        run = runs.start_run(api.repo, list(sys.argv), name or "")
    _current = ActiveRun(api, run)
    group = _ignored.get("group")
    if isinstance(group, str):
        _current.group = group
    return _current


def log_artifact(artifact: Artifact, aliases: Iterable[str] = ()) -> ArtifactVersion:
    """``wandb.log_artifact``: log under the run ``init`` started."""
    if _current is None:
        raise RepoError("no run: call artfs.init() first, or use Api().log_artifact")
    return _current.log_artifact(artifact, aliases)


def use_artifact(name: str, type: str | None = None) -> ArtifactVersion:
    """``wandb.use_artifact``: record the use under the run ``init`` started."""
    if _current is None:
        raise RepoError("no run: call artfs.init() first, or use Api().use_artifact")
    return _current.use_artifact(name, type)


def _group(group: str | None, distributed_id: str | None) -> str:
    """A draft's group, named either way (``distributed_id`` is wandb's word)."""
    if group is not None and distributed_id is not None and group != distributed_id:
        raise RepoError("give the draft's group once: group= or distributed_id=")
    chosen = group if group is not None else distributed_id
    if chosen is None:
        raise RepoError("name the draft: group=... (or distributed_id=...)")
    return chosen


def default_root(version: Version) -> Path:
    """Where a version goes when no directory is named, as W&B's ``./artifacts/NAME:vN``."""
    return Path("artifacts") / f"{version.artifact}:v{version.number}"


def scan_inputs(paths: Iterable[str | os.PathLike[str]], builder: SpillingBuilder) -> None:
    """``build_tree`` into a SpillingBuilder: the files are left pending, to hash."""
    paths = _checked_inputs(paths)
    try:
        for p in paths:
            # A link named on the command line is followed; links inside a
            # directory are kept as links.
            if p.is_dir():
                for path, disk in iter_tree(p, builder):
                    builder.add_pending(path, disk, os.lstat(disk).st_size)
            elif p.is_file():
                names.check_path(p.name)
                builder.add_pending(p.name, str(p), p.stat().st_size)
            else:
                raise RepoError(f"cannot put {p}: not a regular file or directory")
        len(builder)  # the last rows in: a duplicate among them raises now
    except DuplicatePath as e:
        raise RepoError(f"two inputs give the same path: {e}") from None


def _checked_inputs(paths: Iterable[str | os.PathLike[str]]) -> list[Path]:
    paths = [Path(p) for p in paths]
    if not paths:
        raise RepoError("nothing to put: name at least one file or directory")
    for p in paths:
        if not p.exists() and not p.is_symlink():
            raise RepoError(f"no such file or directory: {p}")
    return paths


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
