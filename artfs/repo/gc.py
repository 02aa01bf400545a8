"""Garbage collection: sweep blobs that no live version references.

Safe against commits running at the same time on other machines, with no
lock: a commit writes its blobs before its version record, so a blob it
just wrote is young and the grace period keeps it; a commit that reused an
old blob checks after writing its record that the blob is still there and
uploads it again if a sweep took it (see ``commit_tree``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from artfs.digest import is_digest
from artfs.repo import layout
from artfs.repo.registry import Repo

DEFAULT_GRACE = 6 * 3600.0


@dataclass(frozen=True)
class GcResult:
    live_versions: int
    live_blobs: int
    swept_blobs: int
    swept_bytes: int
    young_kept: int
    dry_run: bool


def live_digests(repo: Repo) -> tuple[set[str], int]:
    """Every blob digest a live version needs (files and manifests), and the version count."""
    digests: set[str] = set()
    count = 0
    for project in repo.projects():
        for art in repo.artifacts(project.name):
            for version in repo.versions(project.name, art.name, with_aliases=False):
                count += 1
                digests.add(version.manifest)
                digests |= repo.manifest(version).digests()
    return digests, count


def collect_garbage(repo: Repo, *, grace: float = DEFAULT_GRACE, dry_run: bool = False) -> GcResult:
    """Delete unreferenced blobs older than ``grace`` seconds."""
    # List blobs before reading versions: a blob written after the listing
    # is not considered at all, and one listed before is either referenced by
    # a version we are about to read or protected by its age.
    blobs = list(repo.store.iter_keys("blobs/"))
    live, versions = live_digests(repo)
    cutoff = time.time() - grace
    swept = swept_bytes = young = 0
    for obj in blobs:
        digest = layout.key_basename(obj.key)
        if digest in live or not is_digest(digest):
            continue  # live, or not ours to judge (a foreign object under blobs/)
        if obj.mtime > cutoff:
            young += 1
            continue
        if not dry_run:
            repo.store.delete(obj.key)
        swept += 1
        swept_bytes += obj.size
    return GcResult(versions, len(live), swept, swept_bytes, young, dry_run)
