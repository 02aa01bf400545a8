"""What the registry returns: plain records of projects, artifacts, versions and runs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

VISIBILITIES = ("private", "public", "open")


class RepoError(Exception):
    """A request the registry refuses; the message says why, for a user to read."""


class NotFoundError(RepoError):
    pass


class ConflictError(RepoError):
    pass


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
        cls, project: str, artifact: str, rec: dict[str, Any], etag: str | None = None
    ) -> Version:
        return cls(
            project=project,
            artifact=artifact,
            number=int(rec["version"]),
            manifest=rec["manifest"],
            tree=rec["tree"],
            created=float(rec["created"]),
            size=int(rec["size"]),
            file_count=int(rec["file_count"]),
            description=rec.get("description") or "",
            metadata=dict(rec.get("metadata") or {}),
            logged_by=rec.get("logged_by"),
            tags=[t for t in rec.get("tags") or [] if isinstance(t, str)],
            ttl=float(rec["ttl"]) if rec.get("ttl") is not None else None,
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
