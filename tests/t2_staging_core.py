"""The staging core without FUSE: overlay over a base, control files, commit and recovery."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from artfs.api import Api
from artfs.repo import layout
from artfs.staging import (
    ALIASES,
    BASE,
    DESCRIPTION,
    METADATA,
    StagingArea,
    StagingError,
    StagingManager,
)
from tests.trees import make_tree, read_tree


@pytest.fixture
def manager(api: Api, tmp_path: Path) -> StagingManager:
    m = StagingManager(api.repo, tmp_path / "state")
    yield m
    m.close()


def write(area: StagingArea, path: str, data: bytes, mode: int = 0o644) -> None:
    h = area.create(path, mode)
    try:
        h.write(0, data)
    finally:
        h.release()


def read(area: StagingArea, path: str) -> bytes:
    h = area.open(path, os.O_RDONLY)
    try:
        return h.read(0, 1 << 30)
    finally:
        h.release()


def set_control(area: StagingArea, name: str, text: str) -> None:
    h = area.open_control(name, os.O_WRONLY | os.O_TRUNC)
    try:
        h.write(0, text.encode())
    finally:
        h.release()


def blobs(api: Api) -> set[str]:
    return {layout.key_basename(o.key) for o in api.repo.store.iter_objects("blobs/")}


def no_versions(api: Api, artifact: str) -> bool:
    return not api.repo.store.list(layout.versions_prefix("proj", artifact)).objects


@pytest.mark.parametrize("store_url", ["local"], indirect=True)  # reads the store as a directory
def test_commit_makes_a_version_and_empties_staging(
    manager: StagingManager, api: Api, tmp_path: Path, store_url: str
) -> None:
    area = manager.area("proj", "ds")
    area.mkdir("d")
    write(area, "d/a.txt", b"alpha")
    write(area, "run.sh", b"#!/bin/sh\n", 0o755)
    area.symlink("link", "d/a.txt")
    area.mkdir("empty")
    set_control(area, METADATA, '{"rows": 3}')
    set_control(area, DESCRIPTION, "first cut\n")
    set_control(area, ALIASES, "best\nprod\n")
    staged_ino = os.lstat(area.files / "d/a.txt").st_ino
    result = area.commit()
    v = result.version
    # the store took the staged file itself: renamed, not copied
    digest = {p: d for p, _s, d in api.artifact(v.ref).files()}["d/a.txt"]
    assert os.lstat(Path(store_url) / layout.blob_key(digest)).st_ino == staged_ino
    assert (v.number, v.file_count, v.description, v.metadata) == (0, 2, "first cut", {"rows": 3})
    assert sorted(v.aliases) == ["best", "latest", "prod"]
    out = api.artifact("proj/ds:v0").download(tmp_path / "out")
    assert read_tree(out) == {
        "d": ("d",),
        "d/a.txt": ("f", b"alpha", False),
        "run.sh": ("f", b"#!/bin/sh\n", True),
        "link": ("l", "d/a.txt"),
        "empty": ("d",),
    }
    assert area.listdir("") == [] and area.is_empty()
    assert area.read_control(METADATA) == "" and area.read_control(ALIASES) == ""
    assert area.status().startswith("committed proj/ds:v0: 2 files")


def test_sequential_writes_are_hashed_as_written(manager: StagingManager, api: Api) -> None:
    area = manager.area("proj", "ds")
    h = area.create("seq.bin", 0o644)
    for i in range(4):
        h.write(i * 1000, bytes([i]) * 1000)
    h.release()
    h = area.create("random.bin", 0o644)
    h.write(1000, b"b" * 1000)
    h.write(0, b"a" * 1000)
    h.release()
    seq = os.lstat(area.files / "seq.bin")
    rnd = os.lstat(area.files / "random.bin")
    assert area.state.hashed(seq.st_ino, seq.st_size) is not None
    assert area.state.hashed(rnd.st_ino, rnd.st_size) is None
    v = area.commit().version
    files = {p: d for p, _s, d in api.artifact(v.ref).files()}
    from artfs.digest import digest_bytes

    assert files["seq.bin"] == digest_bytes(b"".join(bytes([i]) * 1000 for i in range(4)))
    assert files["random.bin"] == digest_bytes(b"a" * 1000 + b"b" * 1000)


def test_two_opens_writing_one_file_drop_the_hash(manager: StagingManager, api: Api) -> None:
    area = manager.area("proj", "ds")
    a = area.create("f", 0o644)
    a.write(0, b"x" * 10)
    b = area.open("f", os.O_RDWR)
    b.write(2, b"YY")
    a.write(10, b"z")
    b.release()
    a.release()
    v = area.commit().version
    from artfs.digest import digest_bytes

    assert api.artifact(v.ref).files()[0][2] == digest_bytes(b"xxYYxxxxxxz")


def test_base_overlay_commits_only_changes(
    manager: StagingManager, api: Api, tmp_path: Path
) -> None:
    src = make_tree(
        tmp_path / "src",
        {f"d/f{i}.txt": f"file {i}" for i in range(10)} | {"keep/x": "x", "top": "t"},
    )
    api.put([src], "proj/ds")
    before = blobs(api)
    area = manager.area("proj", "ds")
    set_control(area, BASE, "latest\n")
    assert [n for n, _ in area.listdir("")] == ["d", "keep", "top"]
    assert read(area, "d/f3.txt") == b"file 3"
    assert not (area.files / "d").exists()  # nothing copied
    h = area.open("d/f3.txt", os.O_WRONLY | os.O_TRUNC)
    h.write(0, b"changed")
    h.release()
    area.unlink("d/f4.txt")
    area.rename("top", "moved")
    with pytest.raises(StagingError) as e:
        area.rmdir("keep")
    assert e.value.errno == errno.ENOTEMPTY
    area.unlink("keep/x")
    area.rmdir("keep")
    area.mkdir("keep")  # re-made: must not show the old contents
    assert area.listdir("keep") == []
    write(area, "new.txt", b"new")
    result = area.commit()
    assert result.version.number == 1
    new = blobs(api) - before
    # the changed file, the new file and the manifest; nothing else was stored
    assert result.new_blobs == 2 and len(new) == 3
    out = read_tree(api.artifact("proj/ds:v1").download(tmp_path / "out"))
    assert out["d/f3.txt"] == ("f", b"changed", False)
    assert "d/f4.txt" not in out and "top" not in out
    assert out["moved"] == ("f", b"t", False)
    assert out["keep"] == ("d",) and "keep/x" not in out
    assert out["new.txt"] == ("f", b"new", False)
    assert out["d/f5.txt"] == ("f", b"file 5", False)


def test_base_refs_and_errors(manager: StagingManager, api: Api, tmp_path: Path) -> None:
    api.put([make_tree(tmp_path / "a", {"a": "1"})], "proj/ds")
    api.put([make_tree(tmp_path / "b", {"b": "2"})], "proj/ds")
    area = manager.area("proj", "ds")
    set_control(area, BASE, "v0")
    assert [n for n, _ in area.listdir("")] == ["a"]
    with pytest.raises(StagingError) as e:
        set_control(area, BASE, "v9")
    assert e.value.errno == errno.EINVAL
    assert "bad .base 'v9'" in area.status()
    assert [n for n, _ in area.listdir("")] == ["a"]  # the base is still v0
    set_control(area, BASE, "proj/ds:v1")
    assert [n for n, _ in area.listdir("")] == ["b"]
    set_control(area, BASE, "")
    assert area.listdir("") == [] and area.is_empty()


def test_bad_metadata_fails_and_leaves_staging(manager: StagingManager, api: Api) -> None:
    area = manager.area("proj", "ds")
    write(area, "a", b"data")
    write(area, "x.sh", b"run", 0o755)
    set_control(area, METADATA, "[1, 2]")
    before = (read_tree(area.files), read_tree(area.control))
    with pytest.raises(StagingError) as e:
        area.commit()
    assert e.value.errno == errno.EINVAL
    assert "bad .metadata.json" in area.status()
    assert (read_tree(area.files), read_tree(area.control)) == before
    assert no_versions(api, "ds")


@pytest.mark.parametrize("store_url", ["local"], indirect=True)  # reads the store as a directory
def test_failed_store_write_restores_staging(
    manager: StagingManager, api: Api, store_url: str
) -> None:
    """The store takes the staged files' inodes, then the version record fails."""
    area = manager.area("proj", "ds")
    write(area, "a", b"aaaa")
    write(area, "x.sh", b"#!/bin/sh\n", 0o755)
    st_before = {n: os.lstat(area.files / n) for n in ("a", "x.sh")}
    versions = Path(store_url) / layout.versions_prefix("proj", "ds")
    api.repo.create_artifact("proj", "ds")
    versions.parent.mkdir(parents=True, exist_ok=True)
    versions.write_text("not a directory")  # the record cannot be written
    try:
        with pytest.raises(Exception):  # noqa: B017 - whatever the store raises
            area.commit()
    finally:
        versions.unlink()
    for n, st in st_before.items():
        now = os.lstat(area.files / n)
        assert now.st_nlink == 1, "a staged file still shares its inode with the store"
        assert (now.st_mode, now.st_mtime_ns, now.st_size) == (
            st.st_mode,
            st.st_mtime_ns,
            st.st_size,
        )
    assert (area.files / "a").read_bytes() == b"aaaa"
    assert "failed" in area.status()
    assert area.commit().version.number == 0


@pytest.mark.parametrize("store_url", ["local"], indirect=True)  # reads the store as a directory
def test_failed_commit_keeps_hard_links_apart_from_the_store(
    manager: StagingManager, api: Api, store_url: str
) -> None:
    """Names of one staged inode get one inode of their own back, still shared."""
    area = manager.area("proj", "ds")
    write(area, "a", b"linked")
    area.mkdir("d")
    area.link("a", "d/b")
    area.link("d/b", "c")
    assert os.lstat(area.files / "a").st_nlink == 3
    versions = Path(store_url) / layout.versions_prefix("proj", "ds")
    api.repo.create_artifact("proj", "ds")
    versions.parent.mkdir(parents=True, exist_ok=True)
    versions.write_text("not a directory")  # the record cannot be written
    try:
        with pytest.raises(Exception):  # noqa: B017 - whatever the store raises
            area.commit()
    finally:
        versions.unlink()
    stats = [os.lstat(area.files / n) for n in ("a", "d/b", "c")]
    assert len({st.st_ino for st in stats}) == 1 and stats[0].st_nlink == 3
    stored = [p for p in (Path(store_url) / "blobs").rglob("xxh128:*") if p.stat().st_size == 6]
    assert stored and all(p.stat().st_ino != stats[0].st_ino for p in stored)
    v = area.commit().version
    files = {p: d for p, _s, d in api.artifact(v.ref).files()}
    assert sorted(files) == ["a", "c", "d/b"] and len(set(files.values())) == 1


@pytest.mark.parametrize("store_url", ["local"], indirect=True)  # reads the store as a directory
def test_kill_during_commit_then_recover(api: Api, tmp_path: Path, store_url: str) -> None:
    """kill -9 a process in the middle of a commit: no version, staging intact, then it works."""
    state = tmp_path / "state"
    manager = StagingManager(api.repo, state)
    area = manager.area("proj", "big")
    expected = {}
    for i in range(400):
        data = os.urandom(2048)
        write(area, f"f{i:03}", data)
        expected[f"f{i:03}"] = data
    manager.close()
    script = textwrap.dedent(
        f"""
        from pathlib import Path
        from artfs.api import Api
        from artfs.staging import StagingManager
        api = Api(store={store_url!r}, cache={str(tmp_path / "cache")!r})
        StagingManager(api.repo, Path({str(state)!r})).area("proj", "big").commit()
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], env=dict(os.environ))
    try:
        blob_dir = Path(store_url) / "blobs"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(list(blob_dir.rglob("xxh128:*"))) < 5:
            time.sleep(0.002)
        proc.kill()
    finally:
        proc.wait()
    assert len(list(blob_dir.rglob("xxh128:*"))) >= 5, "the commit never started"
    assert no_versions(api, "big")
    manager = StagingManager(api.repo, state)
    try:
        area = manager.area("proj", "big")
        assert "interrupted" in area.status()
        for name, data in expected.items():
            st = os.lstat(area.files / name)
            assert st.st_nlink == 1 and (area.files / name).read_bytes() == data
        v = area.commit().version
        assert v.number == 0 and v.file_count == 400
    finally:
        manager.close()


def test_mkdir_artifact_and_type(manager: StagingManager, api: Api) -> None:
    api.repo.create_project("proj")
    area = manager.create_artifact("proj", "model1")
    assert manager.local_artifacts("proj") == ["model1"]
    area.set_type("model")
    write(area, "w.bin", b"weights")
    area.commit()
    assert api.repo.artifact("proj", "model1").type == "model"
    with pytest.raises(StagingError) as e:
        area.set_type("dataset")
    assert e.value.errno == errno.EPERM
    with pytest.raises(StagingError) as e:
        manager.create_artifact("proj", "model1")
    assert e.value.errno == errno.EEXIST


def test_empty_commit_is_refused(manager: StagingManager) -> None:
    area = manager.area("proj", "ds")
    with pytest.raises(StagingError) as e:
        area.commit()
    assert e.value.errno == errno.EINVAL
    assert "nothing staged" in area.status()


def test_status_is_json_free_text(manager: StagingManager) -> None:
    area = manager.area("proj", "ds")
    write(area, "a", b"1")
    area.commit()
    text = area.status()
    with pytest.raises(ValueError):
        json.loads(text)
    assert "proj/ds:v0" in text


def test_two_commits_of_one_staging_never_overlap(api: Api, tmp_path: Path) -> None:
    """Two managers on one state directory (as two processes would be): one commit wins."""
    import threading

    state = tmp_path / "state"
    first, second = StagingManager(api.repo, state), StagingManager(api.repo, state)
    try:
        a, b = first.area("proj", "ds"), second.area("proj", "ds")
        for i in range(200):
            write(a, f"f{i}", os.urandom(1000))
        outcomes: list[object] = []
        barrier = threading.Barrier(2)

        def run(area: StagingArea) -> None:
            barrier.wait()
            try:
                outcomes.append(area.commit().version.number)
            except StagingError as e:
                outcomes.append(e.errno)

        threads = [threading.Thread(target=run, args=(x,)) for x in (a, b)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(outcomes, key=str) == sorted([0, errno.EINVAL], key=str)
        assert [v.number for v in api.repo.versions("proj", "ds")] == [0]
    finally:
        first.close()
        second.close()


def test_writes_after_a_flush_drop_the_recorded_digest(manager: StagingManager, api: Api) -> None:
    from artfs.digest import digest_bytes

    area = manager.area("proj", "ds")
    h = area.create("f", 0o644)
    h.write(0, b"a" * 100)
    h.flush()  # close(2) of one descriptor: the digest of 100 a's is recorded
    h.write(0, b"b")  # through another descriptor of the same open
    h.release()
    g = area.create("g", 0o644)
    g.write(0, b"x" * 10)
    other = area.open("g", os.O_RDWR)
    g.flush()
    other.write(5, b"Y")
    other.release()
    g.release()
    files = {p: d for p, _s, d in api.artifact(area.commit().version.ref).files()}
    assert files["f"] == digest_bytes(b"b" + b"a" * 99)
    assert files["g"] == digest_bytes(b"xxxxxYxxxx")


def test_a_crash_loses_unsaved_digests_never_a_drop(
    manager: StagingManager, api: Api, tmp_path: Path
) -> None:
    """Digests recorded at close are saved in batches; a drop (a write after
    the close) reaches the database at once. Read by a second StateDb on the
    same file while the first is still open: what a daemon killed now leaves."""
    from artfs.digest import digest_bytes
    from artfs.staging.state import RECORD_BATCH, StateDb

    area = manager.area("proj", "ds")
    write(area, "early", b"e" * 10)
    for i in range(RECORD_BATCH - 1):  # fills the batch: saved with "early"
        write(area, f"f{i}", b"%d" % i)
    write(area, "late", b"l" * 10)  # a new batch: in memory only
    ino = {p: os.lstat(area.files / p).st_ino for p in ("early", "late")}
    assert area.state.hashed(ino["late"], 10) == digest_bytes(b"l" * 10)
    h = area.open("early", os.O_RDWR)
    h.write(0, b"E")  # same size, other bytes: the saved digest is wrong now
    after_crash = StateDb(area.root / "state.db")
    try:
        assert after_crash.hashed(ino["early"], 10) is None  # dropped at once
        assert after_crash.hashed(ino["late"], 10) is None  # lost: hashed at commit
    finally:
        after_crash.close()
    h.release()
    files = {p: d for p, _s, d in api.artifact(area.commit().version.ref).files()}
    assert files["early"] == digest_bytes(b"E" + b"e" * 9)
    assert files["late"] == digest_bytes(b"l" * 10)


def test_commit_on_a_deleted_base_is_refused(manager: StagingManager, api: Api, tmp_path) -> None:
    api.put([make_tree(tmp_path / "a", {"a": "1", "b": "2"})], "proj/ds")
    area = manager.area("proj", "ds")
    set_control(area, BASE, "v0")
    write(area, "c", b"3")
    api.repo.delete_version(api.repo.version("proj", "ds", 0), delete_aliases=True)
    with pytest.raises(StagingError) as e:
        area.commit()
    assert e.value.errno == errno.ENOENT
    assert "proj/ds:v0 was deleted" in area.status()
    assert read(area, "c") == b"3"


def test_open_writers_and_commits(manager: StagingManager, api: Api) -> None:
    area = manager.area("proj", "ds")
    h = area.create("f", 0o644)
    h.write(0, b"half")
    with pytest.raises(StagingError) as e:
        area.commit()  # still being written: refused, nothing stored
    assert e.value.errno == errno.EBUSY and "f is open for writing" in area.status()
    assert no_versions(api, "ds")
    h.write(4, b" done")
    h.flush()  # closed by the program; the kernel's release may come later
    v = area.commit().version
    assert api.artifact(v.ref).files()[0][1] == 9
    # the file's inode is a stored blob now: a late write must not reach it
    with pytest.raises(StagingError) as e:
        h.write(0, b"XXXX")
    assert e.value.errno == errno.ESTALE
    h.release()
    blob = layout.blob_key(api.artifact(v.ref).files()[0][2])
    assert api.repo.store.get(blob) == b"half done"
