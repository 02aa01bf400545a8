"""What the registry returns: plain records of projects, artifacts, versions and runs."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from artfs import names
from artfs.digest import is_digest

VISIBILITIES = ("private", "public", "open")


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
    manifest: str | None

    @classmethod
    def from_record(cls, rec: dict[str, Any], key: str) -> Tombstone:
        number = _int_field(rec, "version", key)
        deleted_at = _time_field(rec, "deleted_at", key) if "deleted_at" in rec else 0.0
        manifest = _digest_field(rec, "manifest", key) if rec.get("manifest") else None
        return cls(number, deleted_at, manifest)


@dataclass(frozen=True)
class Project:
    name: str
    visibility: str = "private"
    group: str | None = None
    created: float = 0.0


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
    manifest: str
    tree: str
    created: float
    size: int
    file_count: int
    description: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)
    logged_by: str | None = None
    tags: list[str] = field(default_factory=list)
    ttl: float | None = None  # seconds after ``created`` when the version expires (gc deletes it)
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
            "manifest": self.manifest,
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
        return cls(
            project=project,
            artifact=artifact,
            number=_int_field(rec, "version", key),
            manifest=_digest_field(rec, "manifest", key),
            tree=_digest_field(rec, "tree", key),
            created=_time_field(rec, "created", key),
            size=_int_field(rec, "size", key),
            file_count=_int_field(rec, "file_count", key),
            description=description,
            metadata=dict(metadata),
            logged_by=logged_by,
            tags=tags,
            ttl=ttl,
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
