"""``artfs check`` and ``artfs verify``: is the store what its records say (as ``restic check``).

check: the store's format; every record parses; every live version's manifest
exists, opens and passes validation, and every blob it names is in the store
with the right size (reference entries name no blob: their objects are not
the store's, and check does not ask their URIs); every open draft's parts
parse and every blob they name is in the store (a finish would need it);
aliases name live versions and ``latest`` the highest;
no orphan temp objects; locks that are stale. ``read_data`` also re-hashes
every blob a live version needs. ``repair`` fixes only what is safe to fix
without knowing more than the store does: ``latest``, stale locks, orphan
temp objects; it says what it did.

It runs without a lock, next to commits and gcs: blobs are listed first and a
blob missing from the listing is looked up again before it is reported (a
commit may have stored it since), and a version whose record turned into a
tombstone meanwhile is not held to its blobs.

verify: re-hash one version's files from the store, or from the local cache,
and name every file whose bytes are not what the manifest says.
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

from artfs import names
from artfs.digest import Hasher, digest_file, is_digest
from artfs.objects import NotFound, StoreError
from artfs.repo import drafts, layout
from artfs.repo.locks import list_locks, remove_stale_locks
from artfs.repo.records import CorruptRecord, RepoError, Version
from artfs.repo.registry import STORE_FORMAT, Repo

# A temp object this old has no writer left (a put's copy takes far less).
ORPHAN_TEMP_AGE = 3600.0
_WORKERS = 16


@dataclass
class Problem:
    kind: str  # missing-blob, corrupt-record, bad-manifest, alias, latest, temp, lock, ...
    where: str
    message: str
    repaired: bool = False

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


@dataclass
class CheckReport:
    problems: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)
    artifacts: int = 0
    versions: int = 0
    blobs: int = 0
    blobs_read: int = 0
    bytes_read: int = 0

    @property
    def ok(self) -> bool:
        return all(p.repaired for p in self.problems)

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "problems": [asdict(p) for p in self.problems],
            "warnings": [asdict(p) for p in self.warnings],
            "artifacts": self.artifacts,
            "versions": self.versions,
            "blobs": self.blobs,
            "blobs_read": self.blobs_read,
            "bytes_read": self.bytes_read,
        }


class _HashWriter:
    def __init__(self) -> None:
        self.hasher = Hasher()

    def write(self, data: bytes) -> int:
        self.hasher.update(data)
        return len(data)


def hash_stored_blob(repo: Repo, digest: str) -> tuple[str, int]:
    """(digest, size) of the bytes the store holds for ``digest``; NotFound if absent."""
    out = _HashWriter()
    repo.store.download(layout.blob_key(digest), out)  # type: ignore[arg-type]
    return out.hasher.content_digest(), out.hasher.size


def check_store(repo: Repo, *, read_data: bool = False, repair: bool = False) -> CheckReport:
    report = CheckReport()
    store = repo.store
    sizes = {
        layout.key_basename(o.key): o.size
        for o in store.iter_objects(layout.blobs_prefix())
        if is_digest(layout.key_basename(o.key))
    }
    report.blobs = len(sizes)
    _check_config(repo, report)
    needed: dict[str, int | None] = {}  # digest -> size the manifest says (None: a manifest)
    for project, artifact in _artifacts(repo, report):
        report.artifacts += 1
        _check_artifact(repo, project, artifact, sizes, needed, report, repair)
        _check_drafts(repo, project, artifact, sizes, needed, report)
    _check_blobs(repo, sizes, needed, report)
    if read_data:
        _read_data(repo, needed, report)
    _check_temps(repo, report, repair)
    _check_locks(repo, report, repair)
    return report


def _check_config(repo: Repo, report: CheckReport) -> None:
    try:
        config = json.loads(repo.store.get(layout.CONFIG))
    except NotFound:
        if repo.store.list(layout.projects_prefix()).prefixes:
            report.problems.append(Problem("config", layout.CONFIG, "missing"))
        return
    except ValueError as e:
        report.problems.append(Problem("corrupt-record", layout.CONFIG, f"not JSON: {e}"))
        return
    if not isinstance(config, dict):
        config = {}
    if config.get("format") != STORE_FORMAT or config.get("hash") != "xxh128":
        report.problems.append(Problem("config", layout.CONFIG, f"unknown format {config}"))


def _artifacts(repo: Repo, report: CheckReport) -> list[tuple[str, str]]:
    out = []
    for pp in repo.store.list(layout.projects_prefix()).prefixes:
        project = layout.key_basename(pp)
        if not names.is_name(project):
            report.warnings.append(Problem("foreign", pp, "not a project name; not checked"))
            continue
        try:
            repo.project(project)
        except RepoError as e:
            report.problems.append(Problem("corrupt-record", layout.project_key(project), str(e)))
        for ap in repo.store.list(layout.project_prefix(project)).prefixes:
            artifact = layout.key_basename(ap)
            if not names.is_name(artifact):
                report.warnings.append(Problem("foreign", ap, "not an artifact name; not checked"))
                continue
            try:
                repo.artifact(project, artifact)
            except RepoError as e:
                key = layout.artifact_key(project, artifact)
                report.problems.append(Problem("corrupt-record", key, str(e)))
            out.append((project, artifact))
    return out


def _check_artifact(
    repo: Repo,
    project: str,
    artifact: str,
    sizes: dict[str, int],
    needed: dict[str, int | None],
    report: CheckReport,
    repair: bool,
) -> None:
    where = f"{project}/{artifact}"
    live: dict[int, Version] = {}
    numbers = []
    for obj in repo.store.list(layout.versions_prefix(project, artifact)).objects:
        stem = layout.key_basename(obj.key).removesuffix(".json")
        if stem.isdigit():
            numbers.append(int(stem))
    for n in sorted(numbers):
        try:
            rec = repo.version_record(project, artifact, n)
        except (CorruptRecord, StoreError) as e:
            report.problems.append(Problem("corrupt-record", f"{where}:v{n}", str(e)))
            continue
        if isinstance(rec, Version):
            live[n] = rec
    report.versions += len(live)
    for v in live.values():
        _check_version(repo, v, sizes, needed, report)
    try:
        aliases = repo.aliases(project, artifact)
    except RepoError as e:
        report.problems.append(Problem("corrupt-record", f"{where} aliases", str(e)))
        aliases = {}
        try:
            latest = repo.alias_target(project, artifact, "latest")
        except RepoError:
            latest = None
        if latest is not None:
            aliases["latest"] = latest
    for alias, n in sorted(aliases.items()):
        if alias != "latest" and n not in live:
            report.problems.append(
                Problem("alias", f"{where}:{alias}", f"names v{n}, which is not a live version")
            )
    highest = max(live) if live else None
    if aliases.get("latest") != highest:
        have = f"v{aliases['latest']}" if "latest" in aliases else "nothing"
        want = f"v{highest}" if highest is not None else "nothing"
        problem = Problem(
            "latest", f"{where}:latest", f"names {have}, the highest live version is {want}"
        )
        if repair:
            repo.repair_latest(project, artifact)
            problem.repaired = True
        report.problems.append(problem)


def _check_version(
    repo: Repo,
    v: Version,
    sizes: dict[str, int],
    needed: dict[str, int | None],
    report: CheckReport,
) -> None:
    needed.setdefault(v.manifest_digest, None)
    try:
        m = repo.manifest(v)
        files = list(m.files())  # walks every entry: names and kinds are validated
    except NotFound:
        if _still_live(repo, v):
            report.problems.append(
                Problem("missing-blob", v.ref, f"its manifest {v.manifest_digest} is missing")
            )
        return
    except (StoreError, RepoError, ValueError) as e:
        if _still_live(repo, v):
            report.problems.append(Problem("bad-manifest", v.ref, str(e)))
        return
    if m.tree_digest != v.tree or m.file_count != v.file_count:
        report.problems.append(
            Problem("bad-manifest", v.ref, "the manifest does not match its version record")
        )
    for path, e in files:
        if e.is_reference:
            continue  # its bytes are not ours to hold: no blob to look for
        assert e.digest is not None  # validated by the manifest
        _hold_blob(f"{v.ref}/{path}", e.digest, e.size, sizes, needed, report)


def _check_drafts(
    repo: Repo,
    project: str,
    artifact: str,
    sizes: dict[str, int],
    needed: dict[str, int | None],
    report: CheckReport,
) -> None:
    """The blobs of open drafts are held to as a live version's are: gc keeps
    them, and the finish fails without them."""
    for d in drafts.list_drafts(repo, project, artifact, counts=False):
        if d.state == "closed":
            continue  # merged: its blobs are the version's now
        where = f"{project}/{artifact} draft {d.group}"
        try:
            parts = drafts.read_parts(repo, project, artifact, d.group)
        except (CorruptRecord, StoreError) as e:
            report.problems.append(Problem("corrupt-record", where, str(e)))
            continue
        for writer, (_etag, entries) in sorted(parts.items()):
            for path, e in entries.items():
                _hold_blob(f"{where} part {writer}/{path}", e.digest, e.size, sizes, needed, report)


def _hold_blob(
    where: str,
    digest: str,
    size: int,
    sizes: dict[str, int],
    needed: dict[str, int | None],
    report: CheckReport,
) -> None:
    """``digest`` of ``size`` bytes is needed: a size that differs from another
    record's, or from the stored blob's, is a problem."""
    if needed.setdefault(digest, size) not in (size, None):
        report.problems.append(Problem("bad-manifest", where, f"size {size} differs for {digest}"))
    have = sizes.get(digest)
    if have is not None and have != size:
        report.problems.append(
            Problem("bad-blob", where, f"blob {digest} has {have} bytes, not {size}")
        )


def _still_live(repo: Repo, v: Version) -> bool:
    try:
        return isinstance(repo.version_record(v.project, v.artifact, v.number), Version)
    except (RepoError, StoreError):
        return True


def _check_blobs(
    repo: Repo, sizes: dict[str, int], needed: dict[str, int | None], report: CheckReport
) -> None:
    unlisted = [d for d in needed if d not in sizes]

    def look(digest: str) -> tuple[str, bool]:
        return digest, repo.blob_exists(digest)  # stored after the listing?

    with ThreadPoolExecutor(max_workers=_WORKERS) as pool:
        for digest, there in pool.map(look, unlisted):
            if not there:
                report.problems.append(
                    Problem(
                        "missing-blob",
                        digest,
                        "needed by a live version or an open draft, not in the store",
                    )
                )


def _read_data(repo: Repo, needed: dict[str, int | None], report: CheckReport) -> None:
    def one(digest: str) -> tuple[str, str | None, int]:
        try:
            got, size = hash_stored_blob(repo, digest)
        except NotFound:
            return digest, None, 0
        return digest, got, size

    with ThreadPoolExecutor(max_workers=_WORKERS) as pool:
        for digest, got, size in pool.map(one, sorted(needed)):
            if got is None:
                continue  # reported as missing already
            report.blobs_read += 1
            report.bytes_read += size
            if got != digest:
                report.problems.append(
                    Problem("bad-blob", digest, f"its bytes hash to {got}: corrupt in the store")
                )


def _check_temps(repo: Repo, report: CheckReport, repair: bool) -> None:
    cutoff = time.time() - ORPHAN_TEMP_AGE
    for t in repo.store.temp_objects():
        if t.mtime > cutoff:
            report.warnings.append(
                Problem("temp", t.key, f"{t.size} bytes, being written or left by a killed write")
            )
            continue
        problem = Problem("temp", t.key, f"orphan temp object, {t.size} bytes")
        if repair:
            repo.store.delete_temp(t.key)
            problem.repaired = True
        report.problems.append(problem)


def _check_locks(repo: Repo, report: CheckReport, repair: bool) -> None:
    locks = list_locks(repo.store)
    now = time.time()
    stale = [lock for lock in locks if lock.stale(now)]
    if repair and stale:
        remove_stale_locks(repo.store, stale)
    for lock in stale:
        # Harmless (everyone ignores it), so a warning, not an inconsistency.
        report.warnings.append(
            Problem("lock", lock.key, f"stale lock: {lock.describe()}", repaired=repair)
        )


# -- verify ---------------------------------------------------------------------------


@dataclass
class Mismatch:
    path: str
    digest: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


@dataclass
class VerifyReport:
    ref: str
    files: int = 0
    checked: int = 0
    bytes: int = 0
    not_cached: int = 0
    mismatches: list[Mismatch] = field(default_factory=list)


def verify_version(repo: Repo, version: Version, *, from_cache: bool = False) -> VerifyReport:
    """Re-hash every file of ``version`` (from the store, or the local cache)."""
    report = VerifyReport(version.ref)
    m = repo.manifest(version)
    files = [(p, e) for p, e in m.files() if not e.is_reference]  # no blob to re-hash
    report.files = len(files)
    by_digest: dict[str, list[tuple[str, int]]] = {}
    for path, e in files:
        assert e.digest is not None
        by_digest.setdefault(e.digest, []).append((path, e.size))
    items = [("(manifest)", version.manifest_digest, -1)] + [
        (paths[0][0], d, paths[0][1]) for d, paths in by_digest.items()
    ]

    def one(item: tuple[str, str, int]) -> tuple[str, str, int, str | None, int | None]:
        path, digest, size = item
        try:
            if from_cache:
                cached = repo.cache.path(digest)
                if not cached.exists():
                    return path, digest, size, None, None
                got, got_size = digest_file(cached)
            else:
                got, got_size = hash_stored_blob(repo, digest)
        except NotFound:
            return path, digest, size, "", 0
        return path, digest, size, got, got_size

    with ThreadPoolExecutor(max_workers=_WORKERS if not from_cache else 4) as pool:
        for path, digest, size, got, got_size in pool.map(one, items):
            if got is None:
                report.not_cached += 1
                continue
            paths = [p for p, _ in by_digest.get(digest, [(path, size)])]
            if got == "":
                report.mismatches += [Mismatch(p, digest, "missing from the store") for p in paths]
                continue
            report.checked += 1
            report.bytes += got_size or 0
            if got != digest:
                report.mismatches += [
                    Mismatch(p, digest, f"bytes hash to {got}, the manifest says {digest}")
                    for p in paths
                ]
            elif size >= 0 and got_size != size:
                report.mismatches += [
                    Mismatch(p, digest, f"{got_size} bytes, the manifest says {size}")
                    for p in paths
                ]
    return report
