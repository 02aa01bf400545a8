"""Garbage collection: delete blobs that no live or recently deleted version needs.

The protocol (normative; doc/FORMAT.md copies it)
--------------------------------------------------

Objects: ``locks/<kind>-<uuid>.json`` lock objects (see ``artfs.repo.locks``
for the acquire, refresh, lease and stale rules), version records, and
tombstones ``{"version": n, "deleted": true, "deleted_at": t, "manifest": d}``
that ``delete`` writes in place of a record and that are never removed.

A commit (``put``, a mount's ``.commit``, a ``.base`` commit):

  C1. takes a *shared* lock;
  C2. checks which blobs the store has, uploads the others, and stores the
      manifest (an "already there" answer counts as a check);
  C3. checks its lease, then writes its version record (create-only);
  C4. releases the lock; then moves ``latest`` and its aliases.

A gc:

  G1. without a lock: lists ``blobs/``, reads every version record and
      tombstone and the manifest of each live version and of each version
      deleted less than ``grace`` ago (the *kept* set);
  G2. takes an *exclusive* lock: writes it, then waits until no live shared
      lock is listed (commits that start now see it and wait);
  G3. lists every artifact's version records again and adds what records it
      had not read in G1 to the kept set;
  G4. deletes, checking its lease before each batch, each blob listed in G1
      that is not in the kept set and was uploaded more than ``grace`` ago;
      then temp files of killed uploads and stale locks; releases its lock.

gc deletes only keys under ``blobs/`` of its own store. Reference entries
(manifest format 3) name objects outside the store by URI; they are not in
the kept set (``Manifest.digests`` leaves them out) and never deleted.

Why a commit that exits 0 never references a deleted blob. Take a blob X
that commit C references and gc G deletes at time d. C saw X in the store
during C2, at a time c while it held a shared lock S, and wrote its record
R before releasing S. G held its exclusive lock E, validly, from G2 to d.

- If S was listed live in G2 (created before G's listing), G waited until S
  was gone, so R was written before G3 and G3 read it: X is kept. A
  contradiction.
- Else S was created after G's listing in G2, hence after E was created, so
  C's own listing (after creating S) showed E, which was live until d: C
  would have backed off. Unless C's listing came after d: then c > d and C
  saw X missing and uploaded it. A contradiction either way.
- S "stale" in G2 means its holder's lease had run out, and a holder does
  not write R without a valid lease (C3); a lease ends ``margin`` before an
  observer may call the lock stale, which covers clock skew between
  machines plus one request. Dead processes on the same machine are
  stale at once: they write nothing.

That covers blobs deduplicated against an old or deleted version, a
``.base``'s carried blobs (checked against the live versions under S), and a
manifest that was already stored. The assumptions: the store is strongly
consistent (a listing shows every object whose create returned; true of S3,
GCS, Azure and a local directory), clocks agree within the lease margin, and
no process is suspended longer than the margin between its lease check and
its next request.

Why a reader of a just-deleted version finishes its read. ``delete`` writes
``deleted_at``; G1 keeps a tombstone's manifest and all its blobs until
``grace`` after that time, by G's clock. Blobs no version ever referenced
(a killed commit's uploads) are kept for ``grace`` after their upload.
``grace`` has a floor (``GRACE_FLOOR``, one hour) above any read of an open
file or commit; going lower needs ``force``.

Drafts (``artfs.repo.drafts``). A writer of a shared draft uploads its blobs
and writes its part object under a shared lock, exactly as C1-C4 with the
part in place of the version record, and ``finish`` commits through C1-C4.
G3 reads every part of every open draft and adds its blobs to the kept set,
so by the argument above gc keeps every blob an open draft references. A
draft with no object newer than ``draft_age`` (abandoned, or closed: then
its version keeps what it needs) is removed in G3, under the exclusive lock
while no writer can write a part, and its parts protect nothing after that;
``--dry-run`` reports those drafts. A corrupt part stops gc, as a corrupt
manifest does: without it gc cannot know what the draft needs.

A gc or commit that dies leaves a lock that the others treat as stale once
it expires, or at once on the same machine; nothing blocks forever. Two gcs
at once do not exclude each other (deleting garbage twice is harmless).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from artfs.digest import is_digest
from artfs.hooks import pause_point
from artfs.objects import ObjectInfo
from artfs.repo import layout
from artfs.repo.drafts import all_draft_groups, draft_activity, read_parts, remove_draft_objects
from artfs.repo.locks import EXCLUSIVE, LockInfo, StoreLock, list_locks, remove_stale_locks
from artfs.repo.records import RepoError, Tombstone, Version
from artfs.repo.registry import Repo

log = logging.getLogger("artfs.repo.gc")

DEFAULT_GRACE = 6 * 3600.0
GRACE_FLOOR = 3600.0
# Temp files are reclaimed under the exclusive lock, when no commit (the only
# writer of large temp files) runs; a temp file this old is no small record
# being written either (ARTFS_TEST_TEMP_QUIET: seconds, in tests).
TEMP_QUIET = 60.0
_READ_WORKERS = 16
DEFAULT_DRAFT_AGE = 7 * 86400.0
_DELETE_BATCH = 1000


def grace_floor() -> float:
    """``GRACE_FLOOR``, or ``ARTFS_TEST_GRACE_FLOOR`` seconds in tests."""
    text = os.environ.get("ARTFS_TEST_GRACE_FLOOR")
    if text:
        try:
            return max(0.0, float(text))
        except ValueError:
            pass
    return GRACE_FLOOR


def check_grace(grace: float, *, force: bool = False) -> float:
    """The grace period to use; refuses NaN, negative values, and (without
    ``force``) anything under the floor."""
    if not isinstance(grace, int | float) or math.isnan(grace) or grace < 0:
        raise RepoError(f"bad grace period {grace!r}: must be a number of seconds, 0 or more")
    if math.isinf(grace):
        raise RepoError("bad grace period: must be finite")
    floor = grace_floor()
    if grace < floor and not force:
        raise RepoError(
            f"grace period {grace:g}s is under the floor of {floor:g}s that protects readers "
            "of deleted versions and running commits (use --force to go lower)"
        )
    if grace <= 0 and not force:
        raise RepoError("grace period must be more than 0 (use --force to go lower)")
    return float(grace)


@dataclass
class GcResult:
    live_versions: int
    live_blobs: int
    swept_blobs: int
    swept_bytes: int
    young_kept: int
    dry_run: bool
    deleted_kept: int = 0  # blobs kept only for versions deleted less than grace ago
    temp_files: int = 0
    temp_bytes: int = 0
    stale_locks: int = 0
    waited: float = 0.0
    draft_blobs: int = 0  # blobs kept only for open drafts
    drafts_removed: list[str] = field(default_factory=list)  # p/a:group (why)


@dataclass
class _Kept:
    """What gc must keep: every blob of a live or recently deleted version."""

    repo: Repo
    cutoff: float  # a tombstone deleted after this is recent
    read: dict[tuple[str, str], set[int]] = field(default_factory=dict)
    live: set[str] = field(default_factory=set)
    recent: set[str] = field(default_factory=set)
    live_versions: int = 0
    drafts: set[str] = field(default_factory=set)  # blobs of open drafts' parts
    old_drafts: list[tuple[str, str, str, str]] = field(default_factory=list)

    def scan_drafts(self, cutoff: float) -> None:
        """Read every draft's parts afresh: open ones keep their blobs, those
        with nothing newer than ``cutoff`` are listed in ``old_drafts``."""
        self.drafts, self.old_drafts = set(), []
        for project, artifact, group in all_draft_groups(self.repo, self.artifacts()):
            newest, state = draft_activity(self.repo, project, artifact, group)
            if state == "empty":
                continue
            if newest <= cutoff:
                why = "closed" if state == "closed" else "abandoned"
                self.old_drafts.append((project, artifact, group, why))
                continue
            if state == "closed":
                continue  # its version keeps its blobs
            try:
                parts = read_parts(self.repo, project, artifact, group)
            except RepoError as e:
                raise RepoError(f"gc stopped, nothing deleted: {e}") from None
            for _etag, entries in parts.values():
                self.drafts.update(e.digest for e in entries.values())

    def artifacts(self) -> list[tuple[str, str]]:
        """Every (project, artifact) with a directory in the store, names as listed.

        Names that fail the user rules are kept in: a record anywhere under
        ``projects/`` protects what it names.
        """
        store = self.repo.store
        out = []
        for pp in store.list(layout.projects_prefix()).prefixes:
            project = layout.key_basename(pp)
            for ap in store.list(layout.project_prefix(project)).prefixes:
                out.append((project, layout.key_basename(ap)))
        return out

    def scan(self) -> None:
        """Read every version record not read yet, and the manifests they keep."""
        store = self.repo.store
        todo: list[tuple[str, str, int]] = []
        for project, artifact in self.artifacts():
            seen = self.read.setdefault((project, artifact), set())
            for obj in store.list(layout.versions_prefix(project, artifact)).objects:
                stem = layout.key_basename(obj.key).removesuffix(".json")
                if stem.isdigit() and int(stem) not in seen:
                    todo.append((project, artifact, int(stem)))
        with ThreadPoolExecutor(max_workers=_READ_WORKERS) as pool:
            for project, artifact, number, digests, is_live in pool.map(self._read_one, todo):
                self.read[(project, artifact)].add(number)
                if is_live:
                    self.live_versions += 1
                    self.live |= digests
                else:
                    self.recent |= digests

    def _read_one(self, item: tuple[str, str, int]) -> tuple[str, str, int, set[str], bool]:
        project, artifact, number = item
        rec = self.repo.version_record(project, artifact, number)  # CorruptRecord: stop
        if isinstance(rec, Version):
            return (
                project,
                artifact,
                number,
                self._manifest_blobs(rec.manifest_digest, rec.ref),
                True,
            )
        if isinstance(rec, Tombstone) and rec.manifest_digest and rec.deleted_at > self.cutoff:
            where = f"{project}/{artifact}:v{number} (deleted)"
            return (
                project,
                artifact,
                number,
                self._manifest_blobs(rec.manifest_digest, where),
                False,
            )
        return project, artifact, number, set(), False

    def _manifest_blobs(self, manifest_digest: str, where: str) -> set[str]:
        try:
            digests = self.repo.open_manifest(manifest_digest).digests()
        except Exception as e:
            # Without the manifest gc cannot know what the version needs.
            raise RepoError(
                f"gc stopped, nothing deleted: cannot read the manifest of {where}: {e} "
                "(see artfs check)"
            ) from None
        return {manifest_digest, *digests}


def collect_garbage(
    repo: Repo,
    *,
    grace: float = DEFAULT_GRACE,
    dry_run: bool = False,
    force: bool = False,
    on_wait: Callable[[list[LockInfo]], None] | None = None,
    draft_age: float = DEFAULT_DRAFT_AGE,
) -> GcResult:
    """Delete unreferenced blobs, following the protocol in this module's docstring;
    remove drafts with no activity for ``draft_age`` seconds."""
    grace = check_grace(grace, force=force)
    if not isinstance(draft_age, int | float) or not math.isfinite(draft_age) or draft_age < 0:
        raise RepoError(f"bad draft age {draft_age!r}: a number of seconds, 0 or more")
    store = repo.store
    now = time.time()
    blobs = [o for o in store.iter_objects(layout.blobs_prefix()) if is_digest(_digest_of(o))]
    kept = _Kept(repo, cutoff=now - grace)
    kept.scan()
    if dry_run:
        kept.scan_drafts(now - draft_age)
        return _result(kept, blobs, now, grace, dry_run=True, temps=_temps(repo))
    with StoreLock(store, EXCLUSIVE, "gc", on_wait=on_wait) as lock:
        pause_point("GC_LOCKED")
        kept.scan()
        kept.scan_drafts(now - draft_age)
        for project, artifact, group, _why in kept.old_drafts:
            lock.check()
            remove_draft_objects(repo, project, artifact, group)
        doomed = _doomed(kept, blobs, now, grace)
        for i in range(0, len(doomed), _DELETE_BATCH):
            lock.check()
            batch = doomed[i : i + _DELETE_BATCH]
            with ThreadPoolExecutor(max_workers=_READ_WORKERS) as pool:
                list(pool.map(lambda o: store.delete(o.key), batch))
        temps = _temps(repo)
        lock.check()
        for t in temps:
            store.delete_temp(t.key)
        stale = remove_stale_locks(store, [x for x in list_locks(store) if x.key != lock.key])
        result = _result(kept, blobs, now, grace, dry_run=False, temps=temps)
        result.stale_locks = len(stale)
        result.waited = lock.waited
    return result


def _digest_of(obj: ObjectInfo) -> str:
    return layout.key_basename(obj.key)


def _doomed(kept: _Kept, blobs: Iterable[ObjectInfo], now: float, grace: float) -> list[ObjectInfo]:
    return [
        o
        for o in blobs
        if _digest_of(o) not in kept.live
        and _digest_of(o) not in kept.recent
        and _digest_of(o) not in kept.drafts
        and o.mtime <= now - grace
    ]


def _temps(repo: Repo) -> list[ObjectInfo]:
    quiet = TEMP_QUIET
    with contextlib.suppress(ValueError):
        quiet = max(0.0, float(os.environ.get("ARTFS_TEST_TEMP_QUIET") or TEMP_QUIET))
    cutoff = time.time() - quiet
    return [t for t in repo.store.temp_objects() if t.mtime <= cutoff]


def _result(
    kept: _Kept,
    blobs: list[ObjectInfo],
    now: float,
    grace: float,
    *,
    dry_run: bool,
    temps: list[ObjectInfo],
) -> GcResult:
    doomed = _doomed(kept, blobs, now, grace)
    unreferenced = [o for o in blobs if _digest_of(o) not in kept.live]
    deleted_kept = sum(1 for o in unreferenced if _digest_of(o) in kept.recent)
    draft_blobs = sum(
        1 for o in unreferenced if _digest_of(o) in kept.drafts and _digest_of(o) not in kept.recent
    )
    return GcResult(
        live_versions=kept.live_versions,
        live_blobs=len(kept.live),
        swept_blobs=len(doomed),
        swept_bytes=sum(o.size for o in doomed),
        young_kept=len(unreferenced) - deleted_kept - draft_blobs - len(doomed),
        dry_run=dry_run,
        deleted_kept=deleted_kept,
        temp_files=len(temps),
        temp_bytes=sum(t.size for t in temps),
        draft_blobs=draft_blobs,
        drafts_removed=[f"{p}/{a}:{g} ({why})" for p, a, g, why in kept.old_drafts],
    )
