"""The registry rules: projects, artifacts, versions, aliases, commits."""

from artfs.repo.commit import commit_tree, hash_files
from artfs.repo.records import (
    Artifact,
    CommitResult,
    ConflictError,
    NotFoundError,
    Project,
    RepoError,
    Version,
)
from artfs.repo.registry import Repo

__all__ = [
    "Artifact",
    "CommitResult",
    "ConflictError",
    "NotFoundError",
    "Project",
    "Repo",
    "RepoError",
    "Version",
    "commit_tree",
    "hash_files",
]
