"""What the registry returns: plain records of projects, artifacts, versions and runs."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

from artfs import names
from artfs.digest import is_digest

VISIBILITIES = ("private", "public", "open")
# A project's owning group: a group name as useradd/groupadd allow, or a
# numeric gid (the id space below the kernel's "no id", 2**32 - 1).
_GROUP_RE = re.compile(r"^(?:[A-Za-z_][A-Za-z0-9_.-]{0,31}\$?|[0-9]{1,10})$")
MAX_ID = 2**32 - 2
# Fields no project record may carry: the daemon alone decides owners and modes.
_OWNER_FIELDS = ("owner", "uid", "user", "gid", "mode")


class RepoError(Exception):
    """A request the registry refuses; the message says why, for a user to read."""


class NotFoundError(RepoError):
    pass


class ConflictError(RepoError):
    pass


class CorruptRecord(RepoError):
    """A record in the store that breaks the format: names the key and what is wrong."""


def check_json_value(value: Any, what: str) -> None:
    """Refuse what JSON cannot carry faithfully: NaN, Infinity, non-UTF-8 text.

    Python's json writes NaN and lone surrogates (from undecodable bytes)
    without complaint, and other readers then fail on the record.
    """
    try:
        json.dumps(value, allow_nan=False, ensure_ascii=False).encode("utf-8")
    except (TypeError, ValueError) as e:  # UnicodeEncodeError is a ValueError
        if isinstance(e, UnicodeEncodeError):
            raise RepoError(f"bad {what}: text must be valid UTF-8") from None
        raise RepoError(f"bad {what}: not JSON-serializable ({e})") from None


def _int_field(rec: dict[str, Any], name: str, key: str) -> int:
    value = rec.get(name)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise CorruptRecord(f"corrupt record in store: {key}: {name!r} must be an integer >= 0")
    return value


def _time_field(rec: dict[str, Any], name: str, key: str) -> float:
    value = rec.get(name)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise CorruptRecord(f"corrupt record in store: {key}: {name!r} must be a time")
    return float(value)


def _digest_field(rec: dict[str, Any], name: str, key: str) -> str:
    value = rec.get(name)
    if not isinstance(value, str) or not is_digest(value):
        raise CorruptRecord(f"corrupt record in store: {key}: {name!r} must be a digest")
    return value


@dataclass(frozen=True)
class Tombstone:
    """What is left of a deleted version: when it died and which manifest it had
    (gc keeps that manifest's blobs for the grace period after ``deleted_at``)."""

    number: int
    deleted_at: float
    manifest_digest: str | None

    @classmethod
    def from_record(cls, rec: dict[str, Any], key: str) -> Tombstone:
        number = _int_field(rec, "version", key)
        deleted_at = _time_field(rec, "deleted_at", key) if "deleted_at" in rec else 0.0
        manifest = _digest_field(rec, "manifest", key) if rec.get("manifest") else None
        return cls(number, deleted_at, manifest)


def is_group(group: object) -> bool:
    """Whether ``group`` may name a project's owning group (a name or a numeric gid)."""
    if not isinstance(group, str) or not _GROUP_RE.match(group):
        return False
    return not group.isdigit() or int(group) <= MAX_ID


def check_group(group: str) -> str:
    if not is_group(group):
        raise RepoError(
            f"bad group {group!r}: a group name (letters, digits, _ . -, at most 32) "
            "or a numeric gid"
        )
    return group


def check_visibility(visibility: str) -> str:
    if visibility not in VISIBILITIES:
        raise RepoError(f"bad visibility {visibility!r}: use one of {', '.join(VISIBILITIES)}")
    return visibility


@dataclass(frozen=True)
class Project:
    name: str
    visibility: str = "private"
    group: str | None = None
    created: float = 0.0

    @classmethod
    def from_record(cls, name: str, rec: dict[str, Any], key: str) -> Project:
        """A project from its stored record, checked (it becomes owners and modes)."""
        visibility = rec.get("visibility", "private")
        group = rec.get("group")
        if visibility not in VISIBILITIES:
            raise CorruptRecord(f"corrupt record in store: {key}: bad visibility {visibility!r}")
        if group is not None and not is_group(group):
            raise CorruptRecord(f"corrupt record in store: {key}: bad group {group!r}")
        for field_name in _OWNER_FIELDS:
            if field_name in rec:
                raise CorruptRecord(
                    f"corrupt record in store: {key}: {field_name!r} is refused "
                    "(a project names its group only; owners and modes are the mount's)"
                )
        created = _time_field(rec, "created", key) if "created" in rec else 0.0
        return cls(name, visibility, group, created)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "visibility": self.visibility,
            "group": self.group,
            "created": self.created,
        }


@dataclass(frozen=True)
class Committer:
    """Who made a version: the user name and uid of the committing process."""

    user: str
    uid: int

    def to_record(self) -> dict[str, Any]:
        return {"user": self.user, "uid": self.uid}

    @classmethod
    def of_uid(cls, uid: int) -> Committer:
        """The user ``uid`` as this machine names it (the number if it has no usable name)."""
        import pwd

        try:
            user = pwd.getpwuid(uid).pw_name
        except (KeyError, OverflowError):
            user = str(uid)
        return cls(user if _USER_RE.match(user) else str(uid), uid)

    @classmethod
    def from_record(cls, rec: object, key: str) -> Committer:
        bad = CorruptRecord(f"corrupt record in store: {key}: 'committed_by' must be {{user, uid}}")
        if not isinstance(rec, dict):
            raise bad
        user, uid = rec.get("user"), rec.get("uid")
        if not isinstance(user, str) or not _USER_RE.match(user):
            raise bad
        if not isinstance(uid, int) or isinstance(uid, bool) or not 0 <= uid <= MAX_ID:
            raise bad
        return cls(user, uid)


# A user name as shown: printable, no spaces or slashes, short.
_USER_RE = re.compile(r"^[A-Za-z0-9_.@$-]{1,64}$")


@dataclass(frozen=True)
class Artifact:
    project: str
    name: str
    type: str
    created: float

    @property
    def qualified(self) -> str:
        return f"{self.project}/{self.name}"


@dataclass
class Version:
    project: str
    artifact: str
    number: int
    manifest_digest: str
    tree: str
    created: float
    size: int
    file_count: int
    description: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)
    logged_by: str | None = None
    tags: list[str] = field(default_factory=list)
    ttl: float | None = None  # seconds after ``created`` when the version expires (gc deletes it)
    committed_by: Committer | None = None
    aliases: list[str] = field(default_factory=list)
    etag: str | None = None  # of the record as read, for compare-and-swap edits

    @property
    def name(self) -> str:
        return f"v{self.number}"

    @property
    def ref(self) -> str:
        return f"{self.project}/{self.artifact}:v{self.number}"

    @property
    def expires(self) -> float | None:
        return None if self.ttl is None else self.created + self.ttl

    def to_record(self) -> dict[str, Any]:
        rec = {
            "version": self.number,
            "manifest": self.manifest_digest,
            "tree": self.tree,
            "created": self.created,
            "size": self.size,
            "file_count": self.file_count,
            "description": self.description,
            "metadata": self.metadata,
            "logged_by": self.logged_by,
        }
        # Written only when set, so a record without them keeps its bytes.
        if self.tags:
            rec["tags"] = list(self.tags)
        if self.ttl is not None:
            rec["ttl"] = self.ttl
        if self.committed_by is not None:
            rec["committed_by"] = self.committed_by.to_record()
        return rec

    @classmethod
    def from_record(
        cls,
        project: str,
        artifact: str,
        rec: dict[str, Any],
        etag: str | None = None,
        key: str = "version record",
    ) -> Version:
        """A version from its stored record, checked field by field (it is untrusted)."""
        description = rec.get("description") or ""
        metadata = rec.get("metadata") or {}
        logged_by = rec.get("logged_by")
        if not isinstance(description, str):
            raise CorruptRecord(f"corrupt record in store: {key}: 'description' must be text")
        if not isinstance(metadata, dict):
            raise CorruptRecord(f"corrupt record in store: {key}: 'metadata' must be an object")
        if logged_by is not None and not (isinstance(logged_by, str) and names.is_name(logged_by)):
            raise CorruptRecord(f"corrupt record in store: {key}: 'logged_by' must be a run id")
        tags = rec.get("tags") or []
        if not isinstance(tags, list) or not all(
            isinstance(t, str) and names.is_name(t) for t in tags
        ):
            raise CorruptRecord(f"corrupt record in store: {key}: 'tags' must be a list of names")
        ttl = _time_field(rec, "ttl", key) if rec.get("ttl") is not None else None
        committer = rec.get("committed_by")
        committed_by = Committer.from_record(committer, key) if committer is not None else None
        return cls(
            project=project,
            artifact=artifact,
            number=_int_field(rec, "version", key),
            manifest_digest=_digest_field(rec, "manifest", key),
            tree=_digest_field(rec, "tree", key),
            created=_time_field(rec, "created", key),
            size=_int_field(rec, "size", key),
            file_count=_int_field(rec, "file_count", key),
            description=description,
            metadata=dict(metadata),
            logged_by=logged_by,
            tags=tags,
            ttl=ttl,
            committed_by=committed_by,
            etag=etag,
        )

    def to_json(self, artifact_type: str | None = None) -> dict[str, Any]:
        out = {"ref": self.ref, "type": artifact_type, **self.to_record(), "aliases": self.aliases}
        if artifact_type is None:
            out.pop("type")
        return out


@dataclass(frozen=True)
class CommitResult:
    version: Version
    created: bool  # False when the tree was identical to latest
    new_blobs: int
    new_bytes: int
    reused_blobs: int
