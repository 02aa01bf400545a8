"""Manifest format 2 (mtimes, permission bits) and format 1, which still reads."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import stat
import time
from pathlib import Path

from artfs.api import Api
from artfs.digest import digest_bytes, digest_file
from artfs.manifest import Manifest, ManifestBuilder
from artfs.repo import Version, layout
from tests.mounting import mounted


def format_1(path: Path) -> None:
    """Turn a manifest file into what format 1 wrote: no mtime column."""
    db = sqlite3.connect(path)
    with contextlib.closing(db):
        db.execute("ALTER TABLE entries DROP COLUMN mtime")
        db.execute("UPDATE info SET value = '1' WHERE key = 'format'")
        db.commit()


def test_format_2_keeps_modes_and_mtimes(tmp_path: Path) -> None:
    b = ManifestBuilder()
    b.add_dir("", mode=0o750, mtime_ns=5)
    b.add_dir("d", mode=0o2700, mtime_ns=6)
    b.add_file("d/f", 1, digest_bytes(b"f"), mode=0o4600, mtime_ns=1_234_567_890_123_456_789)
    b.add_symlink("l", "d/f", mtime_ns=7)
    b.write(tmp_path / "m")
    m = Manifest(tmp_path / "m")
    got = {p: (e.mode, e.mtime_ns) for p, e in m.walk()}
    # set-id and sticky bits are never stored
    assert got == {"d": (0o700, 6), "d/f": (0o600, 1_234_567_890_123_456_789), "l": (0o777, 7)}
    assert (m.root().mode, m.root().mtime_ns) == (0o750, 5)
    again = ManifestBuilder.from_manifest(m)
    assert again.tree_digest() == b.tree_digest() == m.tree_digest
    other = ManifestBuilder.from_manifest(m)
    other.remove("d/f")
    other.add_file("d/f", 1, digest_bytes(b"f"), mode=0o600, mtime_ns=1)
    assert other.tree_digest() != b.tree_digest()  # an mtime is part of the tree


def test_format_1_still_reads(tmp_path: Path, api: Api, store_url, cache_dir, artfs_env) -> None:
    b = ManifestBuilder()
    b.add_file("a/x.txt", 2, digest_bytes(b"x\n"), executable=True)
    b.write(tmp_path / "m")
    tree = b.tree_digest()
    format_1(tmp_path / "m")
    old = Manifest(tmp_path / "m")
    assert old.format == 1 and old.tree_digest == tree
    entries = dict(old.walk())
    assert entries["a/x.txt"].mtime_ns is None and entries["a/x.txt"].mode == 0o755
    # an edit of a format-1 version: its entries take that version's commit time
    edited = ManifestBuilder.from_manifest(old, default_mtime_ns=42)
    edited.write(tmp_path / "m2")
    assert {p: e.mtime_ns for p, e in Manifest(tmp_path / "m2").walk()} == {"a": 42, "a/x.txt": 42}

    # A version in the store whose manifest is format 1, shown by a mount.
    repo = api.repo
    repo.create_project("proj", exist_ok=True)
    repo.create_artifact("proj", "old", "dataset")
    blob = tmp_path / "x"
    blob.write_bytes(b"x\n")
    repo.store.put_file(layout.blob_key(digest_bytes(b"x\n")), blob)
    manifest_digest, _ = digest_file(tmp_path / "m")
    repo.store.put_file(layout.blob_key(manifest_digest), tmp_path / "m")
    created = time.time() - 1000
    v = repo.create_version_record(
        Version(
            project="proj",
            artifact="old",
            number=-1,
            manifest_digest=manifest_digest,
            tree=tree,
            created=created,
            size=2,
            file_count=1,
        )
    )
    repo.advance_latest("proj", "old", v.number)
    with mounted(
        tmp_path / "mnt",
        store_url=store_url,
        cache_dir=cache_dir,
        state_dir=tmp_path / "state",
        env=artfs_env,
    ) as mnt:
        f = mnt.path / "proj/old/v0/a/x.txt"
        assert f.read_text() == "x\n"
        st = os.stat(f)
        assert stat.S_IMODE(st.st_mode) == 0o755
        assert abs(st.st_mtime - created) < 1e-3
        assert abs(os.stat(mnt.path / "proj/old/v0/a").st_mtime - created) < 1e-3
