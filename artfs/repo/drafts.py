"""Shared drafts: one version built by many writers on many machines.

A draft is a group of objects under ``projects/<p>/<a>/drafts/<group>/``:

- ``draft.json``: created create-only when the draft is opened (type,
  description, metadata, creation time).
- ``parts/<writer>.json``: one object per writer (a daemon, a ``put``, an
  ``upsert``), so writers never contend for an object: path -> size, mode,
  mtime and digest of every file that writer closed. Only its writer changes
  it, by compare-and-swap.
- ``closed.json``: the finish marker, created create-only. ``finishing``
  while a finish merges; ``closed`` with the version and the etag of every
  part it merged once the version exists. A failed finish (conflicting
  paths) deletes it again, so the draft stays open and intact.

The protocol (gc's side is in ``artfs.repo.gc``):

W (write a part), under a *shared* store lock as a commit's:
  W1. the draft exists and has no ``closed`` marker (else fail: closed);
  W2. upload the blobs the store lacks (an "already there" counts);
  W3. write the part (create-only, or compare-and-swap over our last one);
  W4. read ``closed.json``. Absent: the write is in: a finish lists parts
      only after creating its marker, and the store is strongly consistent.
      ``closed`` naming our part's etag: in. ``closed`` without it: a late
      write, an error (never a silent loss). ``finishing``: wait until it is
      ``closed`` or gone (a failed finish: the draft is open with our part).

F (finish):
  F1. create ``closed.json`` as ``finishing`` (create-only; a stale one of a
      dead finisher is taken over by compare-and-swap);
  F2. list the parts; for each, ``head`` *then* ``get`` (a change between
      them makes the recorded etag older than the bytes, so the writer is
      told "late" rather than wrongly "in");
  F3. merge; two parts naming one path with different content -> delete the
      marker and fail, naming the paths; nothing is committed;
  F4. ``commit_tree`` (its shared lock checks every blob is in the store);
  F5. compare-and-swap the marker to ``closed`` with the version and the
      part etags merged. A finisher killed after F4 leaves a ``finishing``
      marker; the next finish takes it over and finds the tree identical to
      ``latest`` (no second version).

A part's blobs are protected by the part itself until the draft is closed
(then by the version): gc reads every part under its exclusive lock, and a
writer writes its part only under a shared lock, the same argument as for a
version record. ``abort`` deletes the draft's objects; gc removes closed
drafts and drafts with no activity for ``draft_age``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import threading
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from artfs import names
from artfs.digest import is_digest
from artfs.hooks import pause_point
from artfs.manifest import PERMISSION_BITS, ManifestBuilder
from artfs.objects import NotFound, ObjectInfo, PreconditionFailed
from artfs.repo import layout
from artfs.repo.commit import _upload_blobs, commit_tree
from artfs.repo.locks import (
    SHARED,
    LockInfo,
    StoreLock,
    lock_ttl,
    lock_wait,
    process_identity,
)
from artfs.repo.records import (
    CommitResult,
    ConflictError,
    CorruptRecord,
    NotFoundError,
    RepoError,
    check_json_value,
)
from artfs.repo.registry import Repo, encode_record

log = logging.getLogger("artfs.repo.drafts")

PART_FORMAT = 1
_POLL = 0.1


class DraftClosed(RepoError):
    """The draft was finished (or is no more): a write to it is refused."""


class DraftConflict(ConflictError):
    """Two writers wrote one path with different content; ``paths`` names them."""

    def __init__(self, message: str, paths: list[str]) -> None:
        super().__init__(message)
        self.paths = paths


@dataclass(frozen=True)
class PartEntry:
    """One file of a part: what a manifest needs of it."""

    size: int
    digest: str
    mode: int = 0o644
    mtime_ns: int | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"size": self.size, "digest": self.digest, "mode": self.mode}
        if self.mtime_ns is not None:
            out["mtime_ns"] = self.mtime_ns
        return out


@dataclass
class Draft:
    project: str
    artifact: str
    group: str
    type: str = "dataset"
    description: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)
    aliases: list[str] = field(default_factory=list)  # set on the draft, for its version
    created: float = 0.0
    state: str = "open"  # open, finishing, closed
    version: int | None = None  # the version a closed draft made
    parts: int = 0
    files: int = 0
    updated: float = 0.0  # the newest object of the draft, by the store's clock

    @property
    def name(self) -> str:
        return f"{self.project}/{self.artifact}"

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "group": self.group,
            "type": self.type,
            "state": self.state,
            "version": self.version,
            "parts": self.parts,
            "files": self.files,
            "created": self.created,
            "updated": self.updated,
        }


def new_writer_id() -> str:
    return uuid.uuid4().hex


def _check(project: str, artifact: str, group: str) -> None:
    names.check_name(project, "project name")
    names.check_name(artifact, "artifact name")
    names.check_name(group, "draft group")


def _parse(key: str, data: bytes) -> dict[str, Any]:
    try:
        rec = json.loads(data)
    except ValueError as e:
        raise CorruptRecord(f"corrupt record in store: {key}: {e}") from None
    if not isinstance(rec, dict):
        raise CorruptRecord(f"corrupt record in store: {key}: not a JSON object")
    return rec


def _read(repo: Repo, key: str) -> dict[str, Any] | None:
    try:
        return _parse(key, repo.store.get(key))
    except NotFound:
        return None


def parse_part(key: str, data: bytes) -> dict[str, PartEntry]:
    """A part read from the store, validated entry by entry (it is untrusted)."""
    rec = _parse(key, data)
    files = rec.get("files")
    if rec.get("format") != PART_FORMAT or not isinstance(files, dict):
        raise CorruptRecord(f"corrupt draft part in store: {key}: bad format or files")
    out: dict[str, PartEntry] = {}
    for path, e in files.items():
        try:
            names.check_path(path)
            if not isinstance(e, dict):
                raise ValueError("not an object")
            size, digest, mode = e.get("size"), e.get("digest"), e.get("mode", 0o644)
            mtime = e.get("mtime_ns")
            if type(size) is not int or size < 0:
                raise ValueError(f"bad size {size!r}")
            if not isinstance(digest, str) or not is_digest(digest):
                raise ValueError(f"bad digest {digest!r}")
            if type(mode) is not int or mode & ~PERMISSION_BITS:
                raise ValueError(f"bad mode {mode!r}")
            if mtime is not None and (type(mtime) is not int or mtime < 0):
                raise ValueError(f"bad mtime {mtime!r}")
        except (ValueError, names.BadName) as err:
            raise CorruptRecord(f"corrupt draft part in store: {key}: {path!r}: {err}") from None
        out[path] = PartEntry(size, digest, mode, mtime)
    return out


# -- opening, listing --------------------------------------------------------


def open_draft(
    repo: Repo,
    project: str,
    artifact: str,
    group: str,
    *,
    type: str | None = None,
    description: str = "",
    metadata: dict[str, Any] | None = None,
) -> Draft:
    """The draft ``group`` of ``project/artifact``, opened if it is not yet.

    Opening an open draft again is no error (every writer may open it);
    a closed one is: its group name is spent until gc removes it.
    """
    _check(project, artifact, group)
    if metadata is not None and not isinstance(metadata, dict):
        raise RepoError("metadata must be a JSON object")
    check_json_value(metadata, "metadata")
    check_json_value(description, "description")
    repo.ensure_config()
    if type is None:
        try:
            type = repo.artifact(project, artifact).type
        except RepoError:
            type = "dataset"
    art = repo.create_artifact(project, artifact, type)
    rec = {
        "type": art.type,
        "description": description,
        "metadata": dict(metadata or {}),
        "created": time.time(),
        "by": process_identity(),
    }
    with contextlib.suppress(PreconditionFailed):
        repo.store.put(
            layout.draft_key(project, artifact, group), encode_record(rec), if_absent=True
        )
    draft = get_draft(repo, project, artifact, group)
    if draft.state != "open":
        raise DraftClosed(f"draft {group} of {project}/{artifact} is {_state_text(draft)}")
    return draft


def _state_text(draft: Draft) -> str:
    if draft.state == "closed":
        return f"closed: finished as v{draft.version} (open a draft with a new group name)"
    return "being finished"


def _draft_from(
    project: str,
    artifact: str,
    group: str,
    rec: dict[str, Any] | None,
    closed: dict[str, Any] | None,
) -> Draft:
    d = Draft(project, artifact, group)
    if rec is not None:
        t = rec.get("type")
        d.type = t if isinstance(t, str) and names.is_name(t) else "dataset"
        desc = rec.get("description")
        d.description = desc if isinstance(desc, str) else ""
        meta = rec.get("metadata")
        d.metadata = meta if isinstance(meta, dict) else {}
        aliases = rec.get("aliases")
        if isinstance(aliases, list):
            d.aliases = [a for a in aliases if isinstance(a, str) and names.is_alias(a)]
        created = rec.get("created")
        if isinstance(created, int | float) and math.isfinite(created):
            d.created = float(created)
    if closed is not None:
        d.state = "closed" if closed.get("state") == "closed" else "finishing"
        v = closed.get("version")
        d.version = v if type(v) is int and v >= 0 else None
    return d


def _draft_head(repo: Repo, project: str, artifact: str, group: str) -> Draft:
    """The draft's record and state, without its parts; NotFoundError if none."""
    _check(project, artifact, group)
    rec = _read(repo, layout.draft_key(project, artifact, group))
    if rec is None:
        raise NotFoundError(f"no draft {group} of {project}/{artifact}")
    closed = _read(repo, layout.draft_closed_key(project, artifact, group))
    return _draft_from(project, artifact, group, rec, closed)


def get_draft(repo: Repo, project: str, artifact: str, group: str) -> Draft:
    """The draft, with its part and file counts; NotFoundError if there is none."""
    d = _draft_head(repo, project, artifact, group)
    objects = repo.store.list(layout.draft_prefix(project, artifact, group), recursive=True)
    d.updated = max((o.mtime for o in objects.objects), default=d.created)
    parts = read_parts(repo, project, artifact, group, strict=False)
    d.parts = len(parts)
    d.files = len({p for _, entries in parts.values() for p in entries})
    return d


def list_drafts(repo: Repo, project: str, artifact: str, *, counts: bool = True) -> list[Draft]:
    """Every draft of the artifact whose group is a valid name, by group;
    without ``counts`` its parts are not read (two requests a draft)."""
    out = []
    for prefix in repo.store.list(layout.drafts_prefix(project, artifact)).prefixes:
        group = layout.key_basename(prefix)
        if not names.is_name(group):
            continue
        try:
            get = get_draft if counts else _draft_head
            out.append(get(repo, project, artifact, group))
        except NotFoundError:
            continue  # parts left by a writer of an aborted draft: gc's
        except CorruptRecord as e:
            log.warning("%s", e)
    return sorted(out, key=lambda d: d.group)


def read_parts(
    repo: Repo, project: str, artifact: str, group: str, *, strict: bool = True
) -> dict[str, tuple[str, dict[str, PartEntry]]]:
    """writer -> (etag, entries) of every part (head before get: see F2).

    A corrupt part raises ``CorruptRecord``; with ``strict=False`` (listings)
    it is left out with a warning."""
    out = {}
    prefix = layout.draft_parts_prefix(project, artifact, group)
    for obj in repo.store.list(prefix).objects:
        writer = layout.key_basename(obj.key).removesuffix(".json")
        if not obj.key.endswith(".json") or not names.is_name(writer):
            continue
        try:
            etag = repo.store.head(obj.key).etag
            data = repo.store.get(obj.key)
        except NotFound:
            continue  # aborted meanwhile
        try:
            out[writer] = (etag, parse_part(obj.key, data))
        except CorruptRecord as e:
            if strict:
                raise
            log.warning("%s", e)
    return out


# -- writing -----------------------------------------------------------------


@dataclass
class _Queued:
    """One add waiting for the part write that records its files."""

    files: dict[str, PartEntry]
    lock: StoreLock
    done: bool = False
    error: BaseException | None = None
    written: dict[str, str] = field(default_factory=dict)


class PartWriter:
    """One writer's part of one draft: add files, each call durable on return.

    The part is a few objects, ``parts/<writer>.json`` then
    ``parts/<writer>.<n>.json``: a new one starts once the newest holds
    ``SEGMENT_FILES`` files, so a daemon recording one file per close
    rewrites a bounded object, not its whole history. A path stays in the
    segment that first named it. Thread-safe; a daemon keeps one per draft.

    Concurrent adds (a daemon's many closes) share part writes, as a group
    commit: each uploads its blobs under its own shared lock, then queues
    its files; whichever add takes the part first writes every queued file
    in one write per segment, and the others find theirs written. Each
    add's lease is checked before its files go in (its blobs are protected
    by its lock until the part names them), and each returns only once the
    write that holds its files is in the store.
    """

    SEGMENT_FILES = 256

    def __init__(
        self, repo: Repo, project: str, artifact: str, group: str, writer: str | None = None
    ) -> None:
        _check(project, artifact, group)
        self.repo = repo
        self.project, self.artifact, self.group = project, artifact, group
        self.writer = writer or new_writer_id()
        names.check_name(self.writer, "writer id")
        if "." in self.writer:
            raise names.BadName(f"bad writer id {self.writer!r}: no '.'")
        self._lock = threading.Lock()  # the part: one write at a time
        self._queue_lock = threading.Lock()
        self._queue: list[_Queued] = []  # adds whose blobs are up, waiting for the part
        # segment name -> (etag, entries); None until read from the store
        self._segments: dict[str, tuple[str | None, dict[str, PartEntry]]] | None = None

    def _where(self) -> str:
        return f"draft {self.group} of {self.project}/{self.artifact}"

    def _segment_name(self, n: int) -> str:
        return self.writer if n == 0 else f"{self.writer}.{n}"

    def _load(self) -> dict[str, tuple[str | None, dict[str, PartEntry]]]:
        if self._segments is None:
            parts = read_parts(self.repo, self.project, self.artifact, self.group)
            self._segments = {
                name: (etag, entries)
                for name, (etag, entries) in parts.items()
                if name == self.writer or name.startswith(self.writer + ".")
            }
        return self._segments

    def entries(self) -> dict[str, PartEntry]:
        with self._lock:
            out: dict[str, PartEntry] = {}
            for _etag, entries in self._load().values():
                out.update(entries)
            return out

    def _plan(self, files: Mapping[str, PartEntry]) -> dict[str, dict[str, PartEntry]]:
        """segment name -> its entries after adding ``files``."""
        segments = self._load()
        owner = {path: name for name, (_e, entries) in segments.items() for path in entries}
        suffixes = [n[len(self.writer) + 1 :] for n in segments if n != self.writer]
        numbers = [0] + [int(x) for x in suffixes if x.isdigit()]
        current = self._segment_name(max(numbers))
        if len(segments.get(current, (None, {}))[1]) >= self.SEGMENT_FILES:
            current = self._segment_name(max(numbers) + 1)
        out: dict[str, dict[str, PartEntry]] = {}
        for path, entry in files.items():
            name = owner.get(path, current)
            if name not in out:
                out[name] = dict(segments.get(name, (None, {}))[1])
            out[name][path] = entry
        return out

    def _write(self, name: str, entries: dict[str, PartEntry]) -> str:
        body = encode_record(
            {
                "format": PART_FORMAT,
                "writer": self.writer,
                "updated": time.time(),
                "files": {p: e.to_json() for p, e in sorted(entries.items())},
            }
        )
        key = layout.draft_part_key(self.project, self.artifact, self.group, name)
        old = self._load().get(name, (None, {}))[0]
        try:
            if old is None:
                etag = self.repo.store.put(key, body, if_absent=True)
            else:
                etag = self.repo.store.put(key, body, if_match=old)
        except PreconditionFailed:
            self._segments = None  # reread next time
            raise DraftClosed(
                f"{self._where()}: this writer's part was changed or removed by another "
                "process (aborted?)"
            ) from None
        self._load()[name] = (etag, entries)
        return etag

    def add(self, files: Mapping[str, PartEntry], sources: Mapping[str, Path]) -> None:
        """Record ``files`` (path -> entry) in the part; ``sources`` maps each
        digest to a local file with its bytes. Returns when the blobs and the
        part are in the store and the draft is still open (protocol W)."""
        for path in files:
            names.check_path(path)
        store = self.repo.store
        d = (self.project, self.artifact, self.group)
        needed = {e.digest for e in files.values()}
        missing = [x for x in needed if x not in sources]
        if missing:
            raise RepoError(f"no local file for blob {missing[0]}")
        with StoreLock(store, SHARED, self._where()) as lock:
            if store.exists(layout.draft_closed_key(*d)):
                raise DraftClosed(f"{self._where()} is closed")
            if not store.exists(layout.draft_key(*d)):
                raise DraftClosed(f"no open {self._where()}")
            # Uploads of concurrent adds (a daemon's many closes) overlap; only
            # the part's rewrite is one at a time.
            _upload_blobs(self.repo, {x: sources[x] for x in needed}, move=False, progress=None)
            written = self._record(_Queued(dict(files), lock))
            pause_point("DRAFT_AFTER_PART")
            for name, etag in written.items():
                self._confirm(name, etag)

    def _record(self, mine: _Queued) -> dict[str, str]:
        """Write ``mine`` and every add queued with it into the part (W3);
        segment name -> etag of the writes that hold ``mine``'s files."""
        with self._queue_lock:
            self._queue.append(mine)
        with self._lock:
            if not mine.done:
                with self._queue_lock:
                    batch, self._queue = self._queue, []
                self._write_batch(batch)
        if mine.error is not None:
            raise mine.error
        return mine.written

    def _write_batch(self, batch: list[_Queued]) -> None:
        try:
            files: dict[str, PartEntry] = {}
            pause_point("DRAFT_BEFORE_PART")
            for queued in batch:
                try:
                    queued.lock.check()
                except RepoError as e:
                    queued.error = e  # its blobs may be gone: its files stay out
                    continue
                files.update(queued.files)
            plan = self._plan(files)
            written = {name: self._write(name, entries) for name, entries in plan.items()}
            for queued in batch:
                queued.written = {
                    name: etag
                    for name, etag in written.items()
                    if any(path in plan[name] for path in queued.files)
                }
        except BaseException as e:
            for queued in batch:
                queued.error = queued.error or e
            raise
        finally:
            for queued in batch:
                queued.done = True

    def remove(self, path: str) -> None:
        """Take ``path`` out of this writer's part (an open draft only)."""
        d = (self.project, self.artifact, self.group)
        with self._lock:
            for name, (_etag, entries) in list(self._load().items()):
                if path in entries:
                    if self.repo.store.exists(layout.draft_closed_key(*d)):
                        raise DraftClosed(f"{self._where()} is closed")
                    rest = {p: e for p, e in entries.items() if p != path}
                    self._write(name, rest)
                    return

    def _confirm(self, name: str, etag: str) -> None:
        """W4: the part just written is in the draft, or the write fails."""
        key = layout.draft_closed_key(self.project, self.artifact, self.group)
        deadline = time.monotonic() + lock_wait()
        while True:
            rec = _read(self.repo, key)
            if rec is None:
                return
            if rec.get("state") == "closed":
                merged = rec.get("parts")
                if isinstance(merged, dict) and merged.get(name) == etag:
                    return
                raise DraftClosed(
                    f"{self._where()} was finished as v{rec.get('version')} without this late write"
                )
            if time.monotonic() > deadline:
                raise DraftClosed(f"{self._where()} is being finished; this write may be too late")
            time.sleep(_POLL)


def builder_entries(builder: ManifestBuilder) -> dict[str, PartEntry]:
    """A part's entries for the files of ``builder`` (drafts hold regular files)."""
    links = builder.symlinks()
    if links:
        raise RepoError(f"a draft holds regular files only: {links[0]!r} is a symbolic link")
    return {
        path: PartEntry(size, digest, mode & PERMISSION_BITS, mtime_ns)
        for path, size, digest, mode, mtime_ns in builder.file_rows()
    }


# -- finishing, aborting -----------------------------------------------------


def merge_parts(
    parts: Mapping[str, tuple[str, Mapping[str, PartEntry]]],
) -> tuple[dict[str, PartEntry], list[str]]:
    """The union of the parts, and the paths written with different content.

    Same content (size and digest) under one path is no conflict; its mode and
    mtime come from the first writer by id, so the result does not depend on
    listing order. A file under another's file path (``a`` and ``a/b``)
    conflicts too.
    """
    merged: dict[str, PartEntry] = {}
    conflicts: set[str] = set()
    for writer in sorted(parts):
        for path, entry in parts[writer][1].items():
            have = merged.get(path)
            if have is None:
                merged[path] = entry
            elif (have.size, have.digest) != (entry.size, entry.digest):
                conflicts.add(path)
    for path in merged:
        parent = path.rpartition("/")[0]
        while parent:
            if parent in merged:
                conflicts.update((parent, path))
            parent = parent.rpartition("/")[0]
    return merged, sorted(conflicts)


def _take_marker(repo: Repo, key: str, draft_name: str) -> str:
    """F1: create the ``finishing`` marker (or take over a stale one); its etag."""
    rec = {"state": "finishing", "started": time.time(), "by": process_identity()}
    try:
        return repo.store.put(key, encode_record(rec), if_absent=True)
    except PreconditionFailed:
        pass
    try:
        info = repo.store.head(key)
        old = _parse(key, repo.store.get(key))
    except NotFound:
        return _take_marker(repo, key, draft_name)
    if old.get("state") == "closed":
        raise DraftClosed(f"draft {draft_name} is closed: finished as v{old.get('version')}")
    if not _finisher_gone(old, info):
        raise RepoError(f"draft {draft_name} is being finished by another process")
    try:
        return repo.store.put(key, encode_record(rec), if_match=info.etag)
    except PreconditionFailed:
        raise RepoError(f"draft {draft_name} is being finished by another process") from None


def _finisher_gone(rec: dict[str, Any], info: ObjectInfo) -> bool:
    by = rec.get("by") if isinstance(rec.get("by"), dict) else {}
    started = rec.get("started")
    started = float(started) if isinstance(started, int | float) else info.mtime
    probe = LockInfo(info.key, "finishing", "", started, started + lock_ttl(), by)
    return probe.stale()


def finish_draft(
    repo: Repo,
    project: str,
    artifact: str,
    group: str,
    *,
    aliases: Iterable[str] = (),
    description: str | None = None,
    metadata: dict[str, Any] | None = None,
    logged_by: str | None = None,
) -> CommitResult:
    """Merge every part into the next version and close the draft (protocol F).

    On conflicting paths raises ``DraftConflict`` naming them; then nothing
    is committed and the draft stays open as it was.
    """
    _draft_head(repo, project, artifact, group)  # NotFoundError if none
    where = f"{group} of {project}/{artifact}"
    key = layout.draft_closed_key(project, artifact, group)
    marker = _take_marker(repo, key, where)
    try:
        # Read after the marker: a change of the record that lands later is
        # told it was too late (update_draft checks the marker after writing).
        draft = _draft_head(repo, project, artifact, group)
        parts = read_parts(repo, project, artifact, group)
        merged, conflicts = merge_parts(parts)
        if conflicts:
            raise DraftConflict(
                f"draft {where}: {len(conflicts)} paths written with different content by "
                f"different writers: {', '.join(conflicts[:20])}"
                + (" ..." if len(conflicts) > 20 else ""),
                conflicts,
            )
        if not merged:
            raise RepoError(f"draft {where} has no files")
        builder = ManifestBuilder()
        for path in sorted(merged):
            e = merged[path]
            builder.add_file(path, e.size, e.digest, mode=e.mode, mtime_ns=e.mtime_ns)
        pause_point("DRAFT_FINISH_MERGED")
        result = commit_tree(
            repo,
            project,
            artifact,
            builder,
            {},
            type=draft.type,
            description=draft.description if description is None else description,
            metadata=draft.metadata if metadata is None else metadata,
            aliases=[*draft.aliases, *aliases],
            logged_by=logged_by,
            stored=frozenset(e.digest for e in merged.values()),
        )
    except BaseException:
        # Nothing committed: the draft is open again, every part as it was.
        with contextlib.suppress(Exception):
            repo.store.delete(key)
        raise
    closed = {
        "state": "closed",
        "version": result.version.number,
        "parts": {w: etag for w, (etag, _) in sorted(parts.items())},
        "closed": time.time(),
    }
    repo.store.put(key, encode_record(closed), if_match=marker)
    return result


def update_draft(
    repo: Repo,
    project: str,
    artifact: str,
    group: str,
    *,
    description: str | None = None,
    metadata: dict[str, Any] | None = None,
    aliases: Iterable[str] | None = None,
) -> Draft:
    """Change what the draft's version will carry (compare-and-swap on
    ``draft.json``); an open draft only."""
    if metadata is not None and not isinstance(metadata, dict):
        raise RepoError("metadata must be a JSON object")
    check_json_value(metadata, "metadata")
    if description is not None and not isinstance(description, str):
        raise RepoError("description must be a string")
    check_json_value(description, "description")
    alias_list = None
    if aliases is not None:
        alias_list = list(dict.fromkeys(a for a in aliases if a != "latest"))
        for a in alias_list:
            names.check_alias(a)
    key = layout.draft_key(project, artifact, group)
    for _ in range(20):
        draft = _draft_head(repo, project, artifact, group)
        if draft.state != "open":
            raise DraftClosed(f"draft {group} of {project}/{artifact} is {_state_text(draft)}")
        try:
            etag = repo.store.head(key).etag
            rec = _parse(key, repo.store.get(key))
        except NotFound:
            continue
        if description is not None:
            rec["description"] = description
        if metadata is not None:
            rec["metadata"] = metadata
        if alias_list is not None:
            rec["aliases"] = alias_list
        try:
            repo.store.put(key, encode_record(rec), if_match=etag)
        except PreconditionFailed:
            continue
        if repo.store.exists(layout.draft_closed_key(project, artifact, group)):
            # A finish began meanwhile and may have read the record before us.
            raise DraftClosed(
                f"draft {group} of {project}/{artifact} is being finished or closed; "
                "this change may be too late"
            )
        return _draft_head(repo, project, artifact, group)
    raise RepoError(f"draft {group} of {project}/{artifact}: too many changes at once, try again")


def abort_draft(repo: Repo, project: str, artifact: str, group: str) -> Draft:
    """Discard an open draft: its objects go, its blobs are gc's."""
    draft = _draft_head(repo, project, artifact, group)
    if draft.state == "finishing":
        raise RepoError(f"draft {group} of {project}/{artifact} is being finished")
    remove_draft_objects(repo, project, artifact, group)
    return draft


def remove_draft_objects(repo: Repo, project: str, artifact: str, group: str) -> int:
    """Delete every object of a draft, the marker last (a half-removed draft
    still refuses writes); returns how many."""
    store = repo.store
    keys = [
        o.key
        for o in store.list(layout.draft_prefix(project, artifact, group), recursive=True).objects
    ]
    closed = layout.draft_closed_key(project, artifact, group)
    head = layout.draft_key(project, artifact, group)
    for k in sorted(keys, key=lambda k: (k == head, k == closed)):
        store.delete(k)
    return len(keys)


def all_draft_groups(
    repo: Repo, artifacts: Iterable[tuple[str, str]]
) -> list[tuple[str, str, str]]:
    """(project, artifact, group) of every draft directory, names as listed."""
    out = []
    for project, artifact in artifacts:
        for prefix in repo.store.list(layout.drafts_prefix(project, artifact)).prefixes:
            out.append((project, artifact, layout.key_basename(prefix)))
    return out


def _written_at(repo: Repo, obj: ObjectInfo) -> float:
    """When a draft object was last written: the time its writer recorded in
    it, bounded by the store's (a record claiming the future cannot keep an
    abandoned draft forever), else the store's."""
    try:
        rec = _parse(obj.key, repo.store.get(obj.key))
    except (NotFound, CorruptRecord):
        return obj.mtime
    times = [rec.get(k) for k in ("updated", "created", "started", "closed")]
    valid = [float(t) for t in times if isinstance(t, int | float) and math.isfinite(t)]
    return min(max(valid), obj.mtime) if valid else obj.mtime


def draft_activity(repo: Repo, project: str, artifact: str, group: str) -> tuple[float, str]:
    """(newest object time, state) of a draft directory, for gc; state
    ``empty`` for a directory a local store kept after its objects went."""
    objects = repo.store.list(layout.draft_prefix(project, artifact, group), recursive=True)
    if not objects.objects:
        return 0.0, "empty"
    newest = max(_written_at(repo, o) for o in objects.objects)
    closed = _read(repo, layout.draft_closed_key(project, artifact, group))
    head = repo.store.exists(layout.draft_key(project, artifact, group))
    if closed is not None:
        return newest, "closed" if closed.get("state") == "closed" else "finishing"
    return newest, "open" if head else "orphan"
