"""The registry: projects, artifacts, versions and aliases, and their rules.

Every rule that involves more than one writer is settled by the store's
conditional writes, never by a lock of ours: versions are numbered by
create-only puts (on conflict: next number), aliases move by compare-and-swap,
and ``latest`` only ever moves forward.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from artfs import names
from artfs.cache import BlobCache
from artfs.hooks import pause_point
from artfs.manifest import Manifest
from artfs.objects import NotFound, ObjectStore, PreconditionFailed
from artfs.objects.referents import Referents
from artfs.repo import layout
from artfs.repo.records import (
    Artifact,
    ConflictError,
    CorruptRecord,
    NotFoundError,
    Project,
    RepoError,
    Tombstone,
    Version,
    check_group,
    check_json_value,
    check_visibility,
)

log = logging.getLogger("artfs.repo")

STORE_FORMAT = 1
_MANIFESTS_KEPT = 64
# Version records read at once when listing an artifact.
READ_WORKERS = 16
# Version records kept by etag for the next listing.
_RECORDS_KEPT = 100_000


def encode_record(obj: Any) -> bytes:
    """A JSON record as stored: sorted keys, so equal records are equal bytes."""
    return json.dumps(obj, indent=1, sort_keys=True, allow_nan=False).encode() + b"\n"


def _parse_record(key: str, data: bytes) -> dict[str, Any]:
    try:
        rec = json.loads(data)
    except ValueError as e:  # UnicodeDecodeError included
        raise CorruptRecord(f"corrupt record in store: {key}: {e}") from None
    if not isinstance(rec, dict):
        raise CorruptRecord(f"corrupt record in store: {key}: not a JSON object")
    return rec


class Repo:
    def __init__(self, store: ObjectStore, cache: BlobCache) -> None:
        self.store = store
        self.cache = cache
        self.referents = Referents()  # reference entries' objects, by URI
        self._manifests: OrderedDict[str, Manifest] = OrderedDict()
        self._manifests_lock = threading.Lock()
        self._config_checked = False
        # version key -> (etag in the listing that preceded its read, live version or None)
        self._records: OrderedDict[str, tuple[str, Version | None]] = OrderedDict()
        self._records_lock = threading.Lock()

    @classmethod
    def open(cls, store: ObjectStore, cache_dir: str, cache_size: int | None = None) -> Repo:
        """A registry over ``store`` with its blob cache in ``cache_dir``, kept
        within ``cache_size`` bytes if given."""
        return cls(store, BlobCache(cache_dir, store, layout.blob_key, cache_size))

    # -- records ------------------------------------------------------------

    def _read_json(self, key: str) -> tuple[dict[str, Any], str]:
        """(record, etag); NotFound if absent."""
        data, etag = self.store.get_tagged(key)
        return _parse_record(key, data), etag

    def _read_json_or_none(self, key: str) -> dict[str, Any] | None:
        try:
            return _parse_record(key, self.store.get(key))
        except NotFound:
            return None

    def ensure_config(self) -> None:
        """Create ``config.json`` on first write; refuse a store of another format."""
        if self._config_checked:
            return
        config = self._read_json_or_none(layout.CONFIG)
        if config is None:
            with contextlib.suppress(PreconditionFailed):
                self.store.put(
                    layout.CONFIG,
                    encode_record({"format": STORE_FORMAT, "hash": "xxh128"}),
                    if_absent=True,
                )
            config = self._read_json_or_none(layout.CONFIG) or {}
        if config.get("format") != STORE_FORMAT or config.get("hash") != "xxh128":
            raise RepoError(
                f"store {self.store.url} has format {config}; this artfs reads "
                f"format {STORE_FORMAT} with xxh128"
            )
        self._config_checked = True

    # -- projects -----------------------------------------------------------

    def project(self, name: str) -> Project:
        names.check_name(name, "project name")
        key = layout.project_key(name)
        rec = self._read_json_or_none(key)
        if rec is None:
            raise NotFoundError(f"no project {name!r}")
        return Project.from_record(name, rec, key)

    def create_project(
        self,
        name: str,
        visibility: str = "private",
        group: str | None = None,
        *,
        exist_ok: bool = True,
    ) -> Project:
        names.check_name(name, "project name")
        check_visibility(visibility)
        if group is not None:
            check_group(group)
        self.ensure_config()
        rec = {"visibility": visibility, "group": group, "created": time.time()}
        try:
            self.store.put(layout.project_key(name), encode_record(rec), if_absent=True)
        except PreconditionFailed:
            if not exist_ok:
                raise ConflictError(f"project {name!r} exists") from None
            return self.project(name)
        return Project(name, visibility, group, rec["created"])

    def set_project(
        self, name: str, *, visibility: str | None = None, group: str | None = None
    ) -> Project:
        """Change a project's visibility and/or owning group, by compare-and-swap
        (two writers changing different fields both keep their change)."""
        names.check_name(name, "project name")
        if visibility is not None:
            check_visibility(visibility)
        if group is not None:
            check_group(group)

        def change(rec: dict[str, Any]) -> None:
            Project.from_record(name, rec, layout.project_key(name))  # refuse a bad one
            if visibility is not None:
                rec["visibility"] = visibility
            if group is not None:
                rec["group"] = group

        self._update_record(layout.project_key(name), change, f"no project {name!r}")
        return self.project(name)

    def projects(self) -> list[Project]:
        out = []
        for prefix in self.store.list(layout.projects_prefix()).prefixes:
            name = layout.key_basename(prefix)
            try:
                out.append(self.project(name))
            except (NotFoundError, names.BadName):
                continue  # a half-made or foreign entry: not a project
            except CorruptRecord as e:
                log.warning("%s", e)  # costs this project, not the listing
        return out

    # -- artifacts ----------------------------------------------------------

    def artifact(self, project: str, name: str) -> Artifact:
        names.check_name(project, "project name")
        names.check_name(name, "artifact name")
        key = layout.artifact_key(project, name)
        rec = self._read_json_or_none(key)
        if rec is None or rec.get("deleted"):
            raise NotFoundError(f"no artifact {project}/{name}")
        type_ = rec.get("type", "dataset")
        created = rec.get("created", 0.0)
        if (
            not isinstance(type_, str)
            or not names.is_name(type_)
            or isinstance(created, bool)
            or not isinstance(created, int | float)
        ):
            raise CorruptRecord(f"corrupt record in store: {key}: bad type or time")
        return Artifact(project, name, type_, float(created))

    def create_artifact(self, project: str, name: str, type: str = "dataset") -> Artifact:
        """The artifact, made (with its project) if it does not exist yet."""
        names.check_name(name, "artifact name")
        names.check_name(type, "artifact type")
        self.create_project(project)
        rec = {"type": type, "created": time.time()}
        key = layout.artifact_key(project, name)
        try:
            self.store.put(key, encode_record(rec), if_absent=True)
        except PreconditionFailed:
            try:
                return self.artifact(project, name)
            except NotFoundError:
                # Deleted as a whole before: made anew, its version numbers
                # (kept by the tombstones) go on from where they were.
                self._update_record(key, lambda r: (r.clear(), r.update(rec)), f"no {key}")
        return Artifact(project, name, type, rec["created"])

    def delete_artifact(self, project: str, name: str) -> list[Version]:
        """Delete every version of an artifact, its aliases and the artifact itself."""
        versions = self.versions(project, name)
        for v in versions:
            self.delete_version(v, delete_aliases=True)
        for alias in self.aliases(project, name):
            self.store.delete(layout.alias_key(project, name, alias))
        self._update_record(
            layout.artifact_key(project, name),
            lambda r: r.update(deleted=True, deleted_at=time.time()),
            f"no artifact {project}/{name}",
        )
        return versions

    def artifacts(self, project: str) -> list[Artifact]:
        self.project(project)
        out = []
        for prefix in self.store.list(layout.project_prefix(project)).prefixes:
            name = layout.key_basename(prefix)
            try:
                out.append(self.artifact(project, name))
            except (NotFoundError, names.BadName):
                continue
            except CorruptRecord as e:
                log.warning("%s", e)
        return out

    # -- versions -----------------------------------------------------------

    def _version_numbers(self, project: str, artifact: str) -> list[int]:
        """Numbers of every version record, live or deleted, ascending."""
        nums = []
        for obj in self.store.list(layout.versions_prefix(project, artifact)).objects:
            stem = layout.key_basename(obj.key).removesuffix(".json")
            if stem.isdigit():
                nums.append(int(stem))
        return sorted(nums)

    def version_record(
        self, project: str, artifact: str, number: int
    ) -> Version | Tombstone | None:
        """The record of version ``number``: a live version, a tombstone, or None if absent.

        CorruptRecord if the record breaks the format (it is read as untrusted input).
        """
        key = layout.version_key(project, artifact, number)
        try:
            rec, etag = self._read_json(key)
        except NotFound:
            return None
        if rec.get("deleted") is True:
            dead = Tombstone.from_record(rec, key)
            if dead.number != number:
                raise CorruptRecord(f"corrupt record in store: {key}: it says v{dead.number}")
            return dead
        if "deleted" in rec and rec["deleted"] is not False:
            raise CorruptRecord(f"corrupt record in store: {key}: 'deleted' must be true or false")
        v = Version.from_record(project, artifact, rec, etag, key)
        if v.number != number:
            raise CorruptRecord(f"corrupt record in store: {key}: it says v{v.number}")
        return v

    def _read_version(self, project: str, artifact: str, number: int) -> Version | None:
        rec = self.version_record(project, artifact, number)
        return rec if isinstance(rec, Version) else None

    def _read_version_or_skip(self, project: str, artifact: str, number: int) -> Version | None:
        """For listings: a corrupt record costs its own version, not the listing."""
        try:
            return self._read_version(project, artifact, number)
        except CorruptRecord as e:
            log.warning("%s", e)
            return None

    def newest_live_versions(self, project: str, artifact: str) -> Iterator[Version]:
        """Live versions from the highest number down, read one record at a time."""
        for n in reversed(self._version_numbers(project, artifact)):
            v = self._read_version_or_skip(project, artifact, n)
            if v is not None:
                yield v

    def highest_live_version(self, project: str, artifact: str) -> Version | None:
        """The live version with the highest number (what ``latest`` must name)."""
        return next(self.newest_live_versions(project, artifact), None)

    def repair_latest(self, project: str, artifact: str) -> tuple[int | None, int | None] | None:
        """Point ``latest`` at the highest live version if it names anything else
        (a commit killed between its record and the alias move leaves it behind).

        Returns (old target, new target) if it changed something, else None.
        The alias is read before the versions: a commit that moves it after
        our read makes our compare-and-swap fail, and one that moved it
        before wrote its record before, so we count its version.
        """
        key = layout.alias_key(project, artifact, "latest")
        first: int | None = None
        changed = False
        while True:
            try:
                rec, etag = self._read_json(key)
                current = rec.get("version")
            except NotFound:
                rec, etag, current = None, None, None
            except CorruptRecord:
                rec, etag, current = {}, self.store.head(key).etag, None
            if not isinstance(current, int):
                current = None
            if not changed:
                first = current
            pause_point("REPAIR_LATEST")
            highest = self.highest_live_version(project, artifact)
            want = highest.number if highest is not None else None
            if current == want and (rec is None) == (want is None):
                return (first, want) if changed else None
            try:
                if want is None:
                    # No conditional delete: look again afterwards, in case a
                    # commit moved latest meanwhile.
                    self.store.delete(key)
                elif etag is None:
                    self.store.put(key, encode_record({"version": want}), if_absent=True)
                else:
                    self.store.put(key, encode_record({"version": want}), if_match=etag)
            except PreconditionFailed:
                continue
            changed = True
            if want is not None:
                return first, want

    def repair_every_latest(self) -> list[tuple[str, int | None, int | None]]:
        """``repair_latest`` for every artifact; returns (artifact, old, new) of each change."""
        from concurrent.futures import ThreadPoolExecutor

        arts = [(p.name, a.name) for p in self.projects() for a in self.artifacts(p.name)]

        def one(pa: tuple[str, str]) -> tuple[str, int | None, int | None] | None:
            changed = self.repair_latest(*pa)
            return None if changed is None else (f"{pa[0]}/{pa[1]}", *changed)

        with ThreadPoolExecutor(max_workers=16) as pool:
            return [c for c in pool.map(one, arts) if c is not None]

    def versions(self, project: str, artifact: str, *, with_aliases: bool = True) -> list[Version]:
        """Every live version: one LIST, then only the records whose etag in
        that listing changed since this registry last read them, read in
        parallel (on a bucket each is a round trip; a thousand in sequence
        took 45 s). A record is kept under the etag the listing showed
        *before* its GET: if it changed in between, the next listing shows
        another etag and it is read again, so a kept record is never staler
        than the last listing."""
        self.artifact(project, artifact)
        listed: list[tuple[int, str, str]] = []  # (number, key, etag in the listing)
        for obj in self.store.list(layout.versions_prefix(project, artifact)).objects:
            stem = layout.key_basename(obj.key).removesuffix(".json")
            if stem.isdigit():
                listed.append((int(stem), obj.key, obj.etag))
        listed.sort()

        def one(item: tuple[int, str, str]) -> Version | None:
            n, key, etag = item
            with self._records_lock:
                kept = self._records.get(key)
            if kept is not None and etag and kept[0] == etag:
                return copy.deepcopy(kept[1])  # callers may change what they get
            v = self._read_version_or_skip(project, artifact, n)
            with self._records_lock:
                self._records[key] = (etag, v)
                while len(self._records) > _RECORDS_KEPT:
                    self._records.popitem(last=False)
            return copy.deepcopy(v)

        with self._records_lock:
            to_read = sum(1 for _, key, etag in listed if self._records.get(key, ("",))[0] != etag)
        if to_read > 1:
            with ThreadPoolExecutor(max_workers=min(READ_WORKERS, len(listed))) as pool:
                found = list(pool.map(one, listed))
        else:
            found = [one(item) for item in listed]
        out = [v for v in found if v is not None]
        if with_aliases:
            by_number: dict[int, list[str]] = {}
            for alias, n in self.aliases(project, artifact).items():
                by_number.setdefault(n, []).append(alias)
            for v in out:
                v.aliases = sorted(by_number.get(v.number, []))
        return out

    def version(self, project: str, artifact: str, number: int) -> Version:
        v = self._read_version(project, artifact, number)
        if v is None:
            raise NotFoundError(f"no version {project}/{artifact}:v{number}")
        v.aliases = sorted(a for a, n in self.aliases(project, artifact).items() if n == number)
        return v

    def resolve(self, ref: names.Ref | str) -> Version:
        """The version a ref names; a ref without selector means ``latest``."""
        if isinstance(ref, str):
            ref = names.Ref.parse(ref)
        self.artifact(ref.project, ref.artifact)
        selector = ref.selector or "latest"
        number = names.version_number(selector)
        if number is None:
            number = self.alias_target(ref.project, ref.artifact, selector)
            if number is None:
                if selector == "latest":
                    raise NotFoundError(f"{ref.name} has no versions")
                raise NotFoundError(f"no alias {selector!r} on {ref.name}")
        return self.version(ref.project, ref.artifact, number)

    def next_version_number(self, project: str, artifact: str) -> int:
        nums = self._version_numbers(project, artifact)
        return nums[-1] + 1 if nums else 0

    def create_version_record(self, version: Version) -> Version:
        """Write a new version record create-only, taking the next free number."""
        number = self.next_version_number(version.project, version.artifact)
        while True:
            version.number = number
            key = layout.version_key(version.project, version.artifact, number)
            try:
                version.etag = self.store.put(
                    key, encode_record(version.to_record()), if_absent=True
                )
                return version
            except PreconditionFailed:
                number += 1

    def update_version(
        self,
        version: Version,
        *,
        description: str | None = None,
        metadata: dict[str, Any] | None = None,
        set_metadata: dict[str, Any] | None = None,
        unset_metadata: Iterable[str] = (),
    ) -> Version:
        """Change a version's description and/or metadata.

        ``metadata`` replaces it all; ``set_metadata`` and ``unset_metadata``
        change single keys and are applied to the record as it is when written,
        so two writers editing different keys both keep their change.
        """
        for value in (metadata, set_metadata):
            if value is not None and not isinstance(value, dict):
                raise RepoError("metadata must be a JSON object")
        unset_metadata = list(unset_metadata)
        if description is not None and not isinstance(description, str):
            raise RepoError("description must be a string")
        if description is None and metadata is None and not set_metadata and not unset_metadata:
            return self.version(version.project, version.artifact, version.number)
        check_json_value(description, "description")
        check_json_value(metadata, "metadata")
        check_json_value(set_metadata, "metadata")

        def change(rec: dict[str, Any]) -> None:
            if rec.get("deleted"):
                raise NotFoundError(f"no version {version.ref}")
            if description is not None:
                rec["description"] = description
            if metadata is not None:
                rec["metadata"] = metadata
            if set_metadata or unset_metadata:
                merged = dict(rec.get("metadata") or {})
                merged.update(set_metadata or {})
                for key in unset_metadata:
                    merged.pop(key, None)
                rec["metadata"] = merged

        self._update_record(
            layout.version_key(version.project, version.artifact, version.number),
            change,
            f"no version {version.ref}",
        )
        return self.version(version.project, version.artifact, version.number)

    def _update_record(self, key: str, change: Any, missing: str) -> None:
        """Read-modify-write a JSON record by compare-and-swap until it sticks."""
        while True:
            try:
                rec, etag = self._read_json(key)
            except NotFound:
                raise NotFoundError(missing) from None
            change(rec)
            try:
                self.store.put(key, encode_record(rec), if_match=etag)
                return
            except PreconditionFailed:
                continue

    def set_ttl(self, version: Version, ttl: float | None) -> Version:
        """Give a version a time to live (seconds after its creation), or none."""
        if ttl is not None and not (isinstance(ttl, int | float) and 0 < ttl < float("inf")):
            raise RepoError(f"bad ttl {ttl!r}: a positive number of seconds")

        def change(rec: dict[str, Any]) -> None:
            if rec.get("deleted"):
                raise NotFoundError(f"no version {version.ref}")
            if ttl is None:
                rec.pop("ttl", None)
            else:
                rec["ttl"] = float(ttl)

        key = layout.version_key(version.project, version.artifact, version.number)
        self._update_record(key, change, f"no version {version.ref}")
        return self.version(version.project, version.artifact, version.number)

    def edit_tags(
        self, version: Version, add: Iterable[str] = (), remove: Iterable[str] = ()
    ) -> Version:
        """Add and remove tags (free labels, unlike aliases shared by many versions)."""
        add = [names.check_name(t, "tag") for t in add]
        remove = [names.check_name(t, "tag") for t in remove]

        def change(rec: dict[str, Any]) -> None:
            if rec.get("deleted"):
                raise NotFoundError(f"no version {version.ref}")
            tags = [t for t in rec.get("tags") or [] if t not in remove]
            tags += [t for t in add if t not in tags]
            if tags:
                rec["tags"] = sorted(tags)
            else:
                rec.pop("tags", None)

        key = layout.version_key(version.project, version.artifact, version.number)
        self._update_record(key, change, f"no version {version.ref}")
        return self.version(version.project, version.artifact, version.number)

    def delete_version(self, version: Version, *, delete_aliases: bool = False) -> list[str]:
        """Delete a version's record (its blobs go at gc). Returns the aliases removed.

        A version with aliases, ``latest`` included, is refused unless
        ``delete_aliases``, as in W&B. ``latest`` then moves back to the highest
        remaining version rather than vanish.
        """
        aliases = [
            a
            for a, n in self.aliases(version.project, version.artifact).items()
            if n == version.number
        ]
        if aliases and not delete_aliases:
            raise ConflictError(
                f"{version.ref} has aliases ({', '.join(sorted(aliases))}); "
                "remove them first or pass --delete-aliases"
            )

        # A tombstone, not a removal: version numbers are never reused, and gc
        # keeps the manifest's blobs for the grace period after deleted_at.
        def bury(r: dict[str, Any]) -> None:
            if r.get("deleted") is True:
                raise NotFoundError(f"no version {version.ref}")
            manifest = r.get("manifest")
            r.clear()
            r.update(version=version.number, deleted=True, deleted_at=time.time())
            if isinstance(manifest, str):
                r["manifest"] = manifest

        self._update_record(
            layout.version_key(version.project, version.artifact, version.number),
            bury,
            f"no version {version.ref}",
        )
        for alias in aliases:
            if alias != "latest":
                self.store.delete(layout.alias_key(version.project, version.artifact, alias))
        if "latest" in aliases:
            self.repair_latest(version.project, version.artifact)
        return sorted(aliases)

    # -- aliases ------------------------------------------------------------

    def aliases(self, project: str, artifact: str) -> dict[str, int]:
        out = {}
        for obj in self.store.list(layout.aliases_prefix(project, artifact)).objects:
            name = layout.key_basename(obj.key)
            alias = name.removesuffix(".json")
            if alias == name or not names.is_alias(alias):
                continue  # not ours: names from a store pass the rules a user's do
            target = self._alias_record_target(obj.key)
            if target is not None:
                out[alias] = target
        return out

    def _alias_record_target(self, key: str) -> int | None:
        rec = self._read_json_or_none(key)
        if rec is None:
            return None
        target = rec.get("version")
        if not isinstance(target, int) or isinstance(target, bool) or target < 0:
            raise CorruptRecord(f"corrupt record in store: {key}: 'version' must be an integer")
        return target

    def alias_target(self, project: str, artifact: str, alias: str) -> int | None:
        return self._alias_record_target(layout.alias_key(project, artifact, alias))

    def set_alias(self, version: Version, alias: str) -> None:
        """Point ``alias`` at ``version``, moving it from wherever it was."""
        names.check_alias(alias)
        self.version(version.project, version.artifact, version.number)
        self.store.put(
            layout.alias_key(version.project, version.artifact, alias),
            encode_record({"version": version.number}),
        )

    def move_alias(self, project: str, artifact: str, alias: str, new_alias: str) -> Version:
        """Rename ``alias`` to ``new_alias`` (``mv best prod``), replacing
        ``new_alias`` if it exists; returns the version both named.

        The store has no transactions, so the order is what keeps a reader
        safe: (1) read ``alias`` and its etag; (2) put ``new_alias`` with a
        conditional put (create-only if it was absent, compare-and-swap on
        its etag if not), so a concurrent change of ``new_alias`` by another
        machine is never overwritten: ConflictError, nothing changed; (3)
        delete ``alias`` if it still has the etag read in (1) (moved
        meanwhile by another writer: left as they set it). Between (2) and
        (3) a reader sees both names on the version, never neither; a crash
        there leaves both, and the same move again finishes it.
        """
        names.check_alias(alias)
        names.check_alias(new_alias)
        old_key = layout.alias_key(project, artifact, alias)
        new_key = layout.alias_key(project, artifact, new_alias)
        try:
            rec, old_etag = self._read_json(old_key)
        except NotFound:
            raise NotFoundError(f"no alias {alias!r} on {project}/{artifact}") from None
        number = rec.get("version")
        if not isinstance(number, int) or isinstance(number, bool) or number < 0:
            raise CorruptRecord(f"corrupt record in store: {old_key}: 'version' must be an integer")
        version = self._read_version(project, artifact, number)
        if version is None:
            raise NotFoundError(f"no version {project}/{artifact}:v{number}")
        if new_alias == alias:
            return version
        try:
            new_etag: str | None = self.store.head(new_key).etag
        except NotFound:
            new_etag = None
        pause_point("ALIAS_MOVE_READ")  # tests: another writer changes new_alias here
        try:
            if new_etag is None:
                self.store.put(new_key, encode_record({"version": number}), if_absent=True)
            else:
                self.store.put(new_key, encode_record({"version": number}), if_match=new_etag)
        except PreconditionFailed:
            raise ConflictError(
                f"alias {new_alias!r} on {project}/{artifact} changed meanwhile; nothing moved"
            ) from None
        pause_point("ALIAS_MOVE_BOTH")  # tests: a reader sees both names here
        try:
            _, etag = self.store.get_tagged(old_key)
        except NotFound:
            return version  # removed meanwhile: the move is done
        # No store offers a conditional delete: the gap between this check
        # and the delete is unguarded, and narrow.
        if etag == old_etag:
            self.store.delete(old_key)
        else:
            log.warning("alias %r on %s/%s moved meanwhile: kept", alias, project, artifact)
        return version

    def remove_alias(self, project: str, artifact: str, alias: str) -> None:
        names.check_alias(alias)
        if self.alias_target(project, artifact, alias) is None:
            raise NotFoundError(f"no alias {alias!r} on {project}/{artifact}")
        self.store.delete(layout.alias_key(project, artifact, alias))

    def advance_latest(self, project: str, artifact: str, number: int) -> None:
        """Move ``latest`` to ``number`` unless it already points at a newer live version."""
        key = layout.alias_key(project, artifact, "latest")
        while True:
            try:
                rec, etag = self._read_json(key)
            except NotFound:
                try:
                    self.store.put(key, encode_record({"version": number}), if_absent=True)
                    return
                except PreconditionFailed:
                    continue
            except CorruptRecord:
                rec, etag = {}, self.store.head(key).etag  # replaced below
            current = rec.get("version")
            if (
                isinstance(current, int)
                and current >= number
                and self._read_version_or_skip(project, artifact, current) is not None
            ):
                return
            try:
                self.store.put(key, encode_record({"version": number}), if_match=etag)
                return
            except PreconditionFailed:
                continue

    # -- manifests ----------------------------------------------------------

    def manifest(self, version: Version) -> Manifest:
        """The version's manifest, fetched into the cache and opened (kept open, LRU)."""
        return self.open_manifest(version.manifest_digest)

    def open_manifest(self, digest: str) -> Manifest:
        """The manifest stored under ``digest`` (also a deleted version's)."""
        with self._manifests_lock:
            m = self._manifests.get(digest)
            if m is not None:
                self._manifests.move_to_end(digest)
                return m
        path = self.cache.source_path(digest)
        m = Manifest(path, digest)
        with self._manifests_lock:
            self._manifests[digest] = m
            while len(self._manifests) > _MANIFESTS_KEPT:
                self._manifests.popitem(last=False)
        return m

    def blob_exists(self, digest: str) -> bool:
        return self.store.exists(layout.blob_key(digest))
