"""SQLite manifests: built from a real tree, then looked up, listed and walked."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from artfs.digest import digest_bytes
from artfs.manifest import Manifest, ManifestBuilder, scan_tree
from artfs.names import BadName
from artfs.repo import hash_files
from tests.trees import make_tree


def _build(src: Path, dest: Path) -> Manifest:
    builder = ManifestBuilder()
    hash_files(scan_tree(src, builder), builder)
    builder.write(dest)
    return Manifest(dest)


def test_tree_with_files_exec_bits_empty_dirs_and_symlinks(tmp_path: Path) -> None:
    src = make_tree(
        tmp_path / "src",
        {"b.txt": "bee", "a/z.bin": b"\0zz", "a/run.sh": "#!/bin/sh\n"},
        executable=("a/run.sh",),
        symlinks={"a/up": "../b.txt", "out": "/etc/passwd"},
        empty_dirs=("a/empty",),
    )
    m = _build(src, tmp_path / "m.sqlite")
    assert (m.file_count, m.total_size) == (3, 3 + 3 + 10)
    b = m.lookup("b.txt")
    assert b is not None and b.is_file and b.digest == digest_bytes(b"bee") and not b.executable
    run = m.lookup("a/run.sh")
    assert run is not None and run.executable and run.mode == 0o755
    empty = m.lookup("a/empty")
    assert empty is not None and empty.is_dir and m.children(empty.id) == []
    # Links are kept as links, never followed, even when they point out of the tree.
    out = m.lookup("out")
    assert out is not None and out.is_symlink and out.target == "/etc/passwd"
    assert m.lookup("a/up").target == "../b.txt"  # type: ignore[union-attr]
    assert m.lookup("missing") is None and m.lookup("b.txt/x") is None
    a = m.lookup("a")
    assert a is not None
    assert [e.name for e in m.children(a.id)] == ["empty", "run.sh", "up", "z.bin"]
    # A listing resumes after any entry id: readdir offsets.
    first = m.children(a.id, limit=2)
    assert [e.name for e in m.children(a.id, after_id=first[-1].id)] == ["up", "z.bin"]
    assert [p for p, _ in m.walk()] == [
        "a",
        "a/empty",
        "a/run.sh",
        "a/up",
        "a/z.bin",
        "b.txt",
        "out",
    ]
    assert sorted(p for p, _ in m.files()) == ["a/run.sh", "a/z.bin", "b.txt"]
    assert m.digests() == {
        digest_bytes(b"bee"),
        digest_bytes(b"\0zz"),
        digest_bytes(b"#!/bin/sh\n"),
    }


def test_tree_digest_depends_on_content_not_on_order(tmp_path: Path) -> None:
    one, two = ManifestBuilder(), ManifestBuilder()
    one.add_file("x/a", 1, digest_bytes(b"a"))
    one.add_file("b", 1, digest_bytes(b"b"))
    two.add_file("b", 1, digest_bytes(b"b"))
    two.add_file("x/a", 1, digest_bytes(b"a"))
    assert one.tree_digest() == two.tree_digest()
    two.add_file("x/c", 1, digest_bytes(b"c"), executable=True)
    assert one.tree_digest() != two.tree_digest()
    one.write(tmp_path / "m")
    again = ManifestBuilder.from_manifest(Manifest(tmp_path / "m"))
    assert again.tree_digest() == one.tree_digest()


def test_many_files_open_without_parsing(tmp_path: Path) -> None:
    builder = ManifestBuilder()
    for i in range(20_000):
        builder.add_file(f"d{i % 100:02d}/f{i:05d}", i, digest_bytes(str(i).encode()))
    builder.write(tmp_path / "m")
    m = Manifest(tmp_path / "m")
    assert m.file_count == 20_000
    e = m.lookup("d42/f19942")
    assert e is not None and e.size == 19942


def test_duplicate_and_bad_paths_are_refused() -> None:
    builder = ManifestBuilder()
    builder.add_file("a", 1, digest_bytes(b"a"))
    with pytest.raises(ValueError, match="duplicate path 'a'"):
        builder.add_file("a", 1, digest_bytes(b"a"))
    with pytest.raises(ValueError, match="'a' is not a directory"):
        builder.add_file("a/b", 1, digest_bytes(b"b"))
    for bad in ("x/../y", "x/./y", "/abs", "x//y", "x\0y", "n" * 256):
        with pytest.raises(BadName, match="bad path"):
            builder.add_file(bad, 1, digest_bytes(b"z"))


def test_scan_names_the_bad_path(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src", {"ok/fine.txt": "x"})
    os.mkfifo(src / "ok" / "pipe")
    with pytest.raises(ValueError, match=r"ok/pipe.*not a file, directory or link"):
        scan_tree(src, ManifestBuilder())
    os.unlink(src / "ok" / "pipe")
    bad = os.fsencode(src / "ok") + b"/bad\xffname"
    with open(bad, "wb") as f:
        f.write(b"x")
    with pytest.raises(BadName, match=r"bad path 'ok/bad.*UTF-8"):
        scan_tree(src, ManifestBuilder())
    os.unlink(bad)
    os.symlink(b"target\xff", os.fsencode(src / "ok") + b"/link")
    with pytest.raises(BadName, match=r"bad link 'ok/link'"):
        scan_tree(src, ManifestBuilder())
