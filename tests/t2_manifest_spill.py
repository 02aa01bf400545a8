"""The put's builder on disk (manifest_spill.py) makes what ManifestBuilder makes."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

from artfs.api import Api, build_tree, scan_inputs
from artfs.manifest_spill import SpillingBuilder
from artfs.repo import RepoError, hash_files
from artfs.repo.commit import hash_pending
from tests.trees import blob_keys, make_tree


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    # Names whose byte order differs from their path-component order
    # ("a-b" < "a/" < "a0" as strings), non-ASCII names, empty and shared contents.
    root = make_tree(
        tmp_path / "src",
        {
            "a/x.txt": "x\n",
            "a-b/y.txt": "y\n",
            "a0": "z\n",
            "a/deep/er/f.bin": os.urandom(70_000),
            "é/ü.txt": "unicode\n",
            "empty": b"",
            "same1": "same\n",
            "dir/same2": "same\n",
            "run.sh": "#!/bin/sh\n",
        },
        executable=("run.sh",),
        symlinks={"a/link": "x.txt"},
    )
    os.chmod(root / "a-b", 0o700)
    return root


def _entries(manifest: Path) -> tuple[list[tuple], list[tuple]]:
    db = sqlite3.connect(manifest)
    try:
        entries = db.execute("SELECT * FROM entries ORDER BY id").fetchall()
        info = db.execute("SELECT * FROM info ORDER BY key").fetchall()
        return entries, info
    finally:
        db.close()


def test_the_spilled_builder_writes_the_manifest_and_digest_of_the_in_memory_one(
    tree: Path, tmp_path: Path
) -> None:
    memory, files = build_tree([tree])
    hash_files(files, memory)
    (tmp_path / "spill").mkdir()
    spilled = SpillingBuilder(tmp_path / "spill")
    try:
        scan_inputs([tree], spilled)
        assert spilled.pending_bytes() == sum(os.stat(d).st_size for _, d in files)
        hash_pending(spilled)
        assert spilled.pending_bytes() == 0
        assert spilled.tree_digest() == memory.tree_digest()
        assert len(spilled) == len(memory)
        assert sorted(spilled.files()) == sorted(memory.files())
        memory.write(tmp_path / "memory.sqlite")
        spilled.write(tmp_path / "spilled.sqlite")
        assert _entries(tmp_path / "spilled.sqlite") == _entries(tmp_path / "memory.sqlite")
        # Byte for byte: the manifest blob of a tree is the same whichever wrote it.
        assert (tmp_path / "spilled.sqlite").read_bytes() == (
            tmp_path / "memory.sqlite"
        ).read_bytes()
        sources = spilled.sources()
        digest = next(d for p, _, d in memory.files() if p == "dir/same2")
        assert sources[digest].read_bytes() == b"same\n"
        absent = "xxh128:" + "0" * 32
        assert set(sources.get_many([digest, absent])) == {digest}
        assert sources.having([digest, absent]) == {digest}
        assert len(sources) == len({d for _, _, d in memory.files()})
    finally:
        spilled.close()


def test_a_put_through_the_spilled_builder_reads_back_and_dedups(
    api: Api, tree: Path, tmp_path: Path
) -> None:
    first = api.put([tree], "p/a")
    memory, files = build_tree([tree])
    hash_files(files, memory)
    assert first.version.tree == memory.tree_digest()
    assert first.version.file_count == len(files)
    assert api.put([tree], "p/a").created is False  # the same tree: no new version
    got = api.artifact("p/a:v0").download(tmp_path / "got")
    assert (got / "a/deep/er/f.bin").read_bytes() == (tree / "a/deep/er/f.bin").read_bytes()
    assert (got / "a/link").readlink() == Path("x.txt")
    assert os.access(got / "run.sh", os.X_OK)


def test_two_inputs_with_one_path_are_refused_before_anything_is_stored(
    api: Api, tree: Path
) -> None:
    with pytest.raises(RepoError, match="two inputs give the same path: duplicate path 'a0'"):
        api.put([tree, tree / "a0"], "p/b")
    assert blob_keys(api.repo.store) == set()
