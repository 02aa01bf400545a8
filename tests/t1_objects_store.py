"""The store interface: plain, create-only and compare-and-swap puts, listing,
and the guarantees under concurrent processes. Runs against every backend;
the tests named ``test_local_*`` are about the local directory itself."""

from __future__ import annotations

import json
import multiprocessing
import os
import stat
from pathlib import Path

import pytest

from artfs.objects import NotFound, ObjectStore, PreconditionFailed, StoreError, open_store
from artfs.objects import local as local_store
from artfs.objects.local import LocalStore


@pytest.fixture
def store(store_url: str) -> ObjectStore:
    return open_store(store_url)


def test_put_get_head_range_delete(store: ObjectStore) -> None:
    etag = store.put("a/b/one.json", b"0123456789")
    assert store.get("a/b/one.json") == b"0123456789"
    assert store.get_range("a/b/one.json", 3, 4) == b"3456"
    assert store.get_range("a/b/one.json", 8, 100) == b"89"
    info = store.head("a/b/one.json")
    assert (info.key, info.size, info.etag) == ("a/b/one.json", 10, etag)
    assert store.exists("a/b/one.json") and not store.exists("a/b/two.json")
    store.delete("a/b/one.json")
    store.delete("a/b/one.json")  # absent is not an error
    with pytest.raises(NotFound):
        store.get("a/b/one.json")
    with pytest.raises(NotFound):
        store.head("a/b/one.json")


def test_list_recursive_or_not(store: ObjectStore) -> None:
    for key in ("p/x.json", "p/q/y.json", "p/q/r/z.json", "other.json"):
        store.put(key, b"{}")
    top = store.list("p/")
    assert [o.key for o in top.objects] == ["p/x.json"]
    assert top.prefixes == ["p/q/"]
    deep = store.list("p/", recursive=True)
    assert [o.key for o in deep.objects] == ["p/q/r/z.json", "p/q/y.json", "p/x.json"]
    assert sorted(o.key for o in store.iter_objects("p/q/")) == ["p/q/r/z.json", "p/q/y.json"]
    assert store.list("nothing/").objects == []


def test_create_only_never_replaces(store: ObjectStore, tmp_path: Path) -> None:
    store.put("k.json", b"first", if_absent=True)
    with pytest.raises(PreconditionFailed):
        store.put("k.json", b"second", if_absent=True)
    src = tmp_path / "f"
    src.write_bytes(b"third")
    with pytest.raises(PreconditionFailed):
        store.put_file("k.json", src, if_absent=True)
    assert store.get("k.json") == b"first"


def test_compare_and_swap_needs_the_current_etag(store: ObjectStore) -> None:
    first = store.put("c.json", b"1")
    second = store.put("c.json", b"2", if_match=first)
    assert second != first
    with pytest.raises(PreconditionFailed):
        store.put("c.json", b"3", if_match=first)
    assert store.get("c.json") == b"2"
    # Same length, same content, written again: still a new etag on a local
    # store. On S3 an etag is the content's MD5, so it stays: harmless, since
    # a compare-and-swap then compares the very bytes the caller read.
    third = store.put("c.json", b"2", if_match=second)
    if isinstance(store, LocalStore):
        with pytest.raises(PreconditionFailed):
            store.put("c.json", b"4", if_match=second)
    assert store.head("c.json").etag == third


def _increment(store_url: str, key: str, times: int) -> None:
    store = open_store(store_url)
    for _ in range(times):
        while True:
            info = store.head(key)
            count = json.loads(store.get(key))["count"]
            # get after head: if it changed in between, the put below fails.
            try:
                store.put(key, json.dumps({"count": count + 1}).encode(), if_match=info.etag)
                break
            except PreconditionFailed:
                continue


def test_compare_and_swap_loses_no_update_across_processes(
    store: ObjectStore, store_url: str
) -> None:
    store.put("counter.json", b'{"count": 0}')
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_increment, args=(store_url, "counter.json", 40)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    assert json.loads(store.get("counter.json")) == {"count": 160}


def test_put_file_copies_or_moves(store: ObjectStore, tmp_path: Path) -> None:
    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom(100_000))
    data = src.read_bytes()
    store.put_file("blobs/aa/one", src)
    assert src.exists() and store.get("blobs/aa/one") == data
    store.put_file("blobs/aa/two", src, move=True)
    assert store.get("blobs/aa/two") == data


def test_local_bad_keys_are_refused(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "s")
    for key in ("", "../x", "a/../../x", "/abs", "a//b", ".tmp/x", "a/./b"):
        with pytest.raises(ValueError):
            store.put(key, b"x")
    assert not (tmp_path / "x").exists()


def test_local_writes_leave_no_temp_files_and_hide_internals(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "s")
    src = tmp_path / "f"
    src.write_bytes(b"data")
    store.put("a.json", b"1")
    etag = store.put("a.json", b"2")
    store.put("a.json", b"3", if_match=etag)
    with pytest.raises(PreconditionFailed):
        store.put("a.json", b"4", if_absent=True)
    with pytest.raises(PreconditionFailed):
        store.put("a.json", b"5", if_match=etag)
    store.put_file("blobs/ab/c", src, if_absent=True)
    assert os.listdir(tmp_path / "s" / ".tmp") == []
    assert sorted(o.key for o in store.iter_objects("")) == ["a.json", "blobs/ab/c"]
    assert store.list("").prefixes == ["blobs/"]
    # Blobs are read-only on disk: nothing rewrites them in place.
    assert (tmp_path / "s" / "blobs" / "ab" / "c").stat().st_mode & 0o222 == 0


def test_local_moved_file_counts_as_new(tmp_path: Path) -> None:
    """A staged file moved in keeps no old mtime: gc's grace period measures from the put."""
    store = LocalStore(tmp_path / "s")
    src = tmp_path / "old"
    src.write_bytes(b"old bytes")
    os.utime(src, (0, 0))
    store.put_file("blobs/aa/old", src, move=True)
    assert store.head("blobs/aa/old").mtime > 1e9


def test_local_put_files_moving_takes_the_files_themselves(tmp_path: Path) -> None:
    """With ``move``, a file on the store's filesystem becomes the object as it
    is (one inode, no copy, no temp file), read-only and with a new mtime
    (gc's grace period measures from the put); one elsewhere is copied."""
    store = LocalStore(tmp_path / "s")
    here = []
    for i in range(3):
        p = tmp_path / f"f{i}"
        p.write_bytes(b"bytes %d" % i)
        os.utime(p, (0, 0))
        here.append(p)
    store.put("blobs/00/f2", b"already here")
    elsewhere = Path("/dev/shm") / f"artfs-test-{os.getpid()}-{tmp_path.name}"
    elsewhere.write_bytes(b"from another filesystem")
    try:
        assert os.stat(elsewhere).st_dev != os.stat(tmp_path).st_dev
        items = [(f"blobs/00/f{i}", p) for i, p in enumerate(here)]
        written = store.put_files([*items, ("blobs/00/shm", elsewhere)], if_absent=True, move=True)
        assert written == [True, True, False, True]
        for i in (0, 1):
            stored = tmp_path / "s" / "blobs" / "00" / f"f{i}"
            assert os.path.samefile(stored, here[i])  # taken, not copied
            assert stored.stat().st_mode & 0o222 == 0
            assert store.head(f"blobs/00/f{i}").mtime > 1e9
            assert store.get(f"blobs/00/f{i}") == b"bytes %d" % i
        assert store.get("blobs/00/f2") == b"already here"
        shm = tmp_path / "s" / "blobs" / "00" / "shm"
        assert shm.read_bytes() == b"from another filesystem"
        assert not os.path.samefile(shm, elsewhere)
        assert os.listdir(tmp_path / "s" / ".tmp") == []
    finally:
        elsewhere.unlink()


def test_local_put_files_failing_leaves_no_copies(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch is copied while the one before it is flushed and linked. When a
    file cannot be copied, or a batch cannot be linked, every copy made for
    the call is removed and the objects already linked stay whole."""
    monkeypatch.setattr(local_store, "_BATCH_FILES", 4)
    monkeypatch.setattr(local_store, "_STAGE_CHUNK", 2)
    store = LocalStore(tmp_path / "s")
    files = []
    for i in range(12):
        p = tmp_path / f"f{i:02d}"
        p.write_bytes(b"bytes %d" % i)
        files.append(p)
    items = [(f"blobs/{i:02d}/f", p) for i, p in enumerate(files)]

    # One source unreadable, in the second chunk of the second batch: the
    # other chunks of that batch were copied, the first batch was linked.
    missing = [*items[:7], ("blobs/07/f", tmp_path / "no-such-file"), *items[8:]]
    with pytest.raises(StoreError, match="no-such-file"):
        store.put_files(missing, if_absent=True)
    assert os.listdir(tmp_path / "s" / ".tmp") == []
    assert [store.get(f"blobs/{i:02d}/f") for i in range(4)] == [p.read_bytes() for p in files[:4]]
    assert not store.exists("blobs/04/f")

    # The second batch cannot be linked (a file stands where its directory
    # would go) while the third is being copied.
    (tmp_path / "s" / "blobs" / "05").write_bytes(b"not a directory")
    with pytest.raises(StoreError, match="cannot write into"):
        store.put_files(items, if_absent=True)
    assert os.listdir(tmp_path / "s" / ".tmp") == []
    assert not store.exists("blobs/08/f")
    assert store.get("blobs/04/f") == files[4].read_bytes()


def test_put_files_in_one_call(store: ObjectStore, tmp_path: Path) -> None:
    paths = []
    for i in range(5):
        p = tmp_path / f"f{i}"
        p.write_bytes(f"bytes {i}".encode() * 1000)
        paths.append(p)
    store.put("blobs/00/f1", b"already here")
    done: list[int] = []
    written = store.put_files(
        [(f"blobs/00/f{i}", p) for i, p in enumerate(paths)], if_absent=True, progress=done.append
    )
    assert written == [True, False, True, True, True]
    assert sorted(done) == sorted(p.stat().st_size for p in paths)
    assert store.get("blobs/00/f1") == b"already here"
    for i in (0, 2, 3, 4):
        assert store.get(f"blobs/00/f{i}") == paths[i].read_bytes()
    assert all(p.exists() for p in paths)


def test_local_sweeps_temp_files_a_killed_writer_left(tmp_path: Path) -> None:
    LocalStore(tmp_path / "s")
    tmp_dir = tmp_path / "s" / ".tmp"
    (tmp_dir / "stale").write_bytes(b"x")
    os.utime(tmp_dir / "stale", (0, 0))
    (tmp_dir / "in-use").write_bytes(b"y")
    LocalStore(tmp_path / "s")
    assert os.listdir(tmp_dir) == ["in-use"]


def test_local_every_create_and_swap_is_fsynced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The object's bytes and its directory entry are on disk before put returns."""
    store = LocalStore(tmp_path / "s")
    synced: list[tuple[int, bool]] = []  # (inode, is a directory)
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        st = os.fstat(fd)
        synced.append((st.st_ino, stat.S_ISDIR(st.st_mode)))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    root = tmp_path / "s"
    for kwargs in ({"if_absent": True}, {}):
        synced.clear()
        etag = store.put("p/a/x.json", b"{}", **kwargs)
        obj = (root / "p/a/x.json").stat()
        assert (obj.st_ino, False) in synced, kwargs
        assert ((root / "p/a").stat().st_ino, True) in synced, kwargs
    synced.clear()
    store.put("p/a/x.json", b"{1}", if_match=etag)
    assert ((root / "p/a/x.json").stat().st_ino, False) in synced
    assert ((root / "p/a").stat().st_ino, True) in synced
    synced.clear()
    store.delete("p/a/x.json")
    assert ((root / "p/a").stat().st_ino, True) in synced


def test_get_tagged_returns_the_etag_compare_and_swap_takes(store: ObjectStore) -> None:
    tag = store.put("r.json", b'{"v": 1}')
    assert store.get_tagged("r.json") == (b'{"v": 1}', tag)
    _, etag = store.get_tagged("r.json")
    new = store.put("r.json", b'{"v": 2}', if_match=etag)
    assert store.get_tagged("r.json") == (b'{"v": 2}', new)
    with pytest.raises(PreconditionFailed):
        store.put("r.json", b'{"v": 3}', if_match=etag)  # the old read's etag is spent
    with pytest.raises(NotFound):
        store.get_tagged("absent.json")
    store.put("dir/x", b"")
    with pytest.raises(NotFound):
        store.get_tagged("dir")


def test_is_local_says_whether_objects_are_files_here(store: ObjectStore) -> None:
    """The capability callers ask instead of probing ``local_path``."""
    store.put("a/one", b"1")
    assert store.is_local == isinstance(store, LocalStore)
    path = store.local_path("a/one")
    assert (path is not None) == store.is_local
    if path is not None:
        assert path.read_bytes() == b"1"
