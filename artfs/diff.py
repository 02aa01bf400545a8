"""Differences: between two versions (from their manifests alone, no bytes
fetched) and between a version and a directory on disk (``verify``)."""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from artfs.digest import digest_file
from artfs.manifest import Entry, Manifest


@dataclass(frozen=True)
class Change:
    path: str
    status: str  # "added", "removed" or "changed"
    kind: str  # "file", "dir" or "symlink" (the new one for a change)
    old_size: int | None
    new_size: int | None

    def to_json(self) -> dict[str, object]:
        return {
            "path": self.path,
            "status": self.status,
            "kind": self.kind,
            "old_size": self.old_size,
            "new_size": self.new_size,
        }


_KINDS = {"f": "file", "d": "dir", "l": "symlink"}


def _content(e: Entry) -> tuple[str, str | None, str | None, str | None, str | None]:
    # A reference known by its etag has no digest: its URI and etag are its content.
    return (e.kind, e.digest, e.target, e.ref, e.etag)


def diff_manifests(old: Manifest, new: Manifest) -> list[Change]:
    """Paths added, removed and changed (content or kind) from ``old`` to ``new``."""
    before = dict(old.walk())
    after = dict(new.walk())
    out = []
    for path in sorted(before.keys() | after.keys(), key=lambda p: p.split("/")):
        a, b = before.get(path), after.get(path)
        if a is None:
            assert b is not None
            out.append(Change(path, "added", _KINDS[b.kind], None, b.size))
        elif b is None:
            out.append(Change(path, "removed", _KINDS[a.kind], a.size, None))
        elif _content(a) != _content(b):
            out.append(Change(path, "changed", _KINDS[b.kind], a.size, b.size))
    return out


def diff_tree(manifest: Manifest, root: Path) -> list[str]:
    """What differs between a version and the directory ``root``: one line per
    changed, missing or extra path (empty when they match)."""
    problems = []
    expected = {}
    for path, e in manifest.walk():
        expected[path] = e
        full = root / path
        try:
            st = full.lstat()
        except FileNotFoundError:
            problems.append(f"missing: {path}")
            continue
        if e.is_dir and not stat.S_ISDIR(st.st_mode):
            problems.append(f"changed: {path} (not a directory)")
        elif e.is_symlink and (not stat.S_ISLNK(st.st_mode) or os.readlink(full) != e.target):
            problems.append(f"changed: {path} (link)")
        elif e.is_file and (
            not stat.S_ISREG(st.st_mode) or st.st_size != e.size or digest_file(full)[0] != e.digest
        ):
            problems.append(f"changed: {path}")
    if not root.is_dir():
        return [f"missing: {root}"]
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            rel = (Path(dirpath) / name).relative_to(root).as_posix()
            if rel not in expected:
                problems.append(f"extra: {rel}")
        dirnames[:] = [
            d for d in dirnames if (Path(dirpath) / d).relative_to(root).as_posix() in expected
        ]
    return problems
