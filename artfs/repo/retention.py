"""Retention: versions that expire (a TTL) and pruning by rules.

A version's TTL is kept in its record (``ttl``, seconds after ``created``).
Expiry never deletes a version that holds an alias (``latest`` included), as
W&B keeps aliased versions: the alias must go first. ``gc`` deletes expired
versions before it sweeps, so their blobs go in the same pass's grace rules.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from artfs.repo.records import Version
from artfs.repo.registry import Repo


@dataclass(frozen=True)
class PruneRules:
    keep_last: int | None = None  # the N highest versions are kept
    older_than: float | None = None  # only versions older than this many seconds go
    keep_aliased: bool = True  # versions holding an alias are kept

    def doomed(self, versions: list[Version], now: float) -> list[Version]:
        """The versions these rules delete, from ``versions`` (ascending numbers)."""
        keep = set()
        if self.keep_last is not None:
            keep = {v.number for v in versions[len(versions) - self.keep_last :]}
            if self.keep_last == 0:
                keep = set()
        out = []
        for v in versions:
            if v.number in keep:
                continue
            if self.older_than is not None and now - v.created < self.older_than:
                continue
            if v.aliases and self.keep_aliased:
                continue
            out.append(v)
        return out


def prune(
    repo: Repo,
    project: str,
    artifact: str,
    rules: PruneRules,
    *,
    dry_run: bool = False,
    now: float | None = None,
) -> list[Version]:
    """Delete (or with ``dry_run`` only name) the versions ``rules`` select."""
    doomed = rules.doomed(repo.versions(project, artifact), time.time() if now is None else now)
    if not dry_run:
        for v in doomed:
            repo.delete_version(v, delete_aliases=not rules.keep_aliased)
    return doomed


def expired_versions(repo: Repo, now: float | None = None) -> list[Version]:
    """Live versions whose TTL has passed and that hold no alias."""
    now = time.time() if now is None else now
    out = []
    for project in repo.projects():
        for art in repo.artifacts(project.name):
            for v in repo.versions(project.name, art.name):
                if v.expires is not None and v.expires <= now and not v.aliases:
                    out.append(v)
    return out


def delete_expired(repo: Repo, *, dry_run: bool = False, now: float | None = None) -> list[Version]:
    """Delete (or name) every expired version that holds no alias."""
    expired = expired_versions(repo, now)
    if not dry_run:
        for v in expired:
            repo.delete_version(v)
    return expired
