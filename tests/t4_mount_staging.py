"""The mount, write side: staging/ written by real tools, committed by touch."""

from __future__ import annotations

import contextlib
import errno
import os
import random
import signal
import stat
import subprocess
import threading
import time
from pathlib import Path

import pytest

from artfs.api import Api
from artfs.fs.mountpoints import wait_for_exit
from artfs.objects import ObjectStore, open_store
from artfs.repo import layout
from tests.mounting import artfs_cli, mounted_here, stop_mount
from tests.trees import make_tree, read_tree


@pytest.fixture
def mount(new_mount):
    """``mount(state=...)`` -> Mount on a fresh mountpoint; all unmounted at the end."""

    def make(state: Path | None = None, cache: Path | None = None):
        return new_mount(state_dir=state, cache_dir=cache)

    return make


@pytest.fixture
def source(tmp_path: Path) -> Path:
    rng = random.Random(7)
    return make_tree(
        tmp_path / "src",
        {
            "README.md": "# data\n",
            "train/a.bin": rng.randbytes(300_000),
            "train/b.bin": rng.randbytes(5),
            "train/deep/er/c.txt": "c\n",
            "empty.txt": b"",
            "run.sh": "#!/bin/sh\necho hi\n",
        },
        executable=("run.sh",),
        symlinks={"train/link": "a.bin"},
        empty_dirs=("nothing",),
    )


def touch_commit(staging: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["touch", str(staging / ".commit")], capture_output=True, text=True, timeout=300
    )


def blob_names(store: ObjectStore) -> set[str]:
    return {layout.key_basename(o.key) for o in store.iter_objects("blobs/")}


def version_numbers(store: ObjectStore, project: str, artifact: str) -> list[int]:
    """Numbers of the version records in the store, read as the store, not as a directory."""
    objects = store.list(layout.versions_prefix(project, artifact)).objects
    return sorted(int(layout.key_basename(o.key).removesuffix(".json")) for o in objects)


@pytest.mark.parametrize("tool", ["cp", "rsync", "tar"])
def test_tools_write_and_touch_commits(tool, mount, source, tmp_path, artfs_env, store_url) -> None:
    m = mount()
    (m.path / "proj").mkdir()
    (m.path / "proj/ds").mkdir()
    staging = m.path / "proj/ds/staging"
    if tool == "cp":
        subprocess.run(["cp", "-a", f"{source}/.", str(staging)], check=True)
    elif tool == "rsync":
        subprocess.run(["rsync", "-a", f"{source}/", f"{staging}/"], check=True)
    else:
        tar = tmp_path / "src.tar"
        subprocess.run(["tar", "-cf", str(tar), "-C", str(source), "."], check=True)
        subprocess.run(["tar", "-xf", str(tar), "-C", str(staging)], check=True)
    # the control files answer by name but are not listed
    assert read_tree(staging) == read_tree(source)
    r = touch_commit(staging)
    assert r.returncode == 0, r.stderr
    status = (staging / ".status").read_text()
    assert status.startswith("committed proj/ds:v0: 6 files"), status
    assert read_tree(m.path / "proj/ds/v0") == read_tree(source)
    assert os.readlink(m.path / "proj/ds/latest") == "v0"
    assert read_tree(m.path / "proj/ds/latest") == read_tree(source)
    # staging is empty again
    assert os.listdir(staging) == []
    out = tmp_path / "got"
    artfs_cli("get", "proj/ds:latest", "--root", str(out), env=artfs_env, check=True)
    assert read_tree(out) == read_tree(source)
    # every tool writes each file from its start: all hashed as written, so
    # the commit read nothing back
    assert "commit of proj/ds: 6 files hashed as written, 0 hashed now" in m.log_text()


def test_random_offset_writes_match_a_model(mount) -> None:
    m = mount()
    (m.path / "proj").mkdir()
    (m.path / "proj/rnd").mkdir()
    staging = m.path / "proj/rnd/staging"
    rng = random.Random(11)
    model: dict[str, bytearray] = {}
    for i in range(4):
        name = f"f{i}.bin"
        model[name] = bytearray()
        fd = os.open(staging / name, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            for _ in range(60):
                op = rng.random()
                if op < 0.8:
                    off = rng.randrange(0, len(model[name]) + 5000)
                    data = rng.randbytes(rng.randrange(1, 20_000))
                    os.pwrite(fd, data, off)
                    buf = model[name]
                    if off > len(buf):
                        buf.extend(b"\0" * (off - len(buf)))
                    buf[off : off + len(data)] = data
                else:
                    size = rng.randrange(0, len(model[name]) + 100)
                    os.ftruncate(fd, size)
                    buf = model[name]
                    del buf[size:]
                    buf.extend(b"\0" * (size - len(buf)))
        finally:
            os.close(fd)
    for name, data in model.items():
        assert (staging / name).read_bytes() == bytes(data)
    assert touch_commit(staging).returncode == 0
    for name, data in model.items():
        assert (m.path / "proj/rnd/v0" / name).read_bytes() == bytes(data)


def test_posix_operations_in_staging(mount) -> None:
    m = mount()
    (m.path / "p").mkdir()
    (m.path / "p/a").mkdir()
    s = m.path / "p/a/staging"
    (s / "dir/sub").mkdir(parents=True)
    (s / "dir/sub/x.txt").write_text("x")
    (s / "dir/sub/x.txt").rename(s / "dir/y.txt")
    (s / "dir/sub").rmdir()
    (s / "tool").write_text("#!/bin/sh\n")
    os.chmod(s / "tool", 0o755)
    os.symlink("dir/y.txt", s / "ln")
    os.utime(s / "dir/y.txt", (1_000_000, 1_000_000))
    assert (s / "dir/y.txt").stat().st_mtime == 1_000_000
    with open(s / "synced", "wb") as f:
        f.write(b"abc" * 1000)
        f.flush()
        os.fsync(f.fileno())
    os.truncate(s / "synced", 10)
    (s / "gone").write_text("bye")
    (s / "gone").unlink()
    with pytest.raises(OSError) as e:
        os.rmdir(s / "dir")
    assert e.value.errno == errno.ENOTEMPTY
    with pytest.raises(OSError) as e:
        os.mkdir(s / "bad\\nname" if False else s / ".status")
    assert e.value.errno == errno.EEXIST
    with pytest.raises(OSError) as e:
        (s / ".status").write_text("no")
    assert e.value.errno in (errno.EPERM, errno.EACCES)
    assert touch_commit(s).returncode == 0
    v = m.path / "p/a/v0"
    assert read_tree(v) == {
        "dir": ("d",),
        "dir/y.txt": ("f", b"x", False),
        "tool": ("f", b"#!/bin/sh\n", True),
        "ln": ("l", "dir/y.txt"),
        "synced": ("f", b"abcabcabca", False),
    }


def test_base_commit_stores_only_new_content(mount, api: Api, tmp_path) -> None:
    rng = random.Random(5)
    src = make_tree(
        tmp_path / "src", {f"part/{i:02}.bin": rng.randbytes(20_000) for i in range(20)}
    )
    api.put([src], "proj/ds")
    m = mount()
    staging = m.path / "proj/ds/staging"
    (staging / ".base").write_text("latest\n")
    assert sorted(os.listdir(staging / "part")) == sorted(os.listdir(src / "part"))
    assert (staging / "part/03.bin").read_bytes() == (src / "part/03.bin").read_bytes()
    r = subprocess.run(["bash", "-c", f"echo v9 > {staging}/.base"], capture_output=True, text=True)
    assert r.returncode != 0 and "Invalid argument" in r.stderr
    assert (staging / ".base").read_text() == "latest\n"
    assert "bad .base 'v9'" in (staging / ".status").read_text()
    assert len(os.listdir(staging / "part")) == 20
    before = blob_names(api.repo.store)
    (staging / "part/00.bin").write_bytes(b"changed 0")
    with open(staging / "part/01.bin", "r+b") as f:
        f.seek(100)
        f.write(b"patched")
    (staging / "part/02.bin").unlink()
    (staging / "new.txt").write_text("new")
    os.chmod(staging / "part/04.bin", 0o755)
    r = touch_commit(staging)
    assert r.returncode == 0, r.stderr
    new = blob_names(api.repo.store) - before
    # three new contents and the manifest: the 17 unchanged files were not stored again
    assert len(new) == 4, new
    expected = read_tree(src)
    expected["part/00.bin"] = ("f", b"changed 0", False)
    p1 = bytearray(expected["part/01.bin"][1])
    p1[100:107] = b"patched"
    expected["part/01.bin"] = ("f", bytes(p1), False)
    del expected["part/02.bin"]
    expected["part/04.bin"] = ("f", expected["part/04.bin"][1], True)
    expected["new.txt"] = ("f", b"new", False)
    assert read_tree(m.path / "proj/ds/v1") == expected
    assert (staging / ".base").read_text() == ""
    assert "committed proj/ds:v1: 20 files" in (staging / ".status").read_text()


def test_bad_metadata_fails_the_touch_and_keeps_staging(mount, store_url) -> None:
    m = mount()
    (m.path / "proj").mkdir()
    (m.path / "proj/ds").mkdir()
    staging = m.path / "proj/ds/staging"
    (staging / "a.txt").write_text("a")
    (staging / ".metadata.json").write_text("{not json")
    (staging / ".description").write_text("desc")
    before = read_tree(staging)
    r = touch_commit(staging)
    assert r.returncode != 0
    assert "Invalid argument" in r.stderr
    assert "bad .metadata.json" in (staging / ".status").read_text()
    after = read_tree(staging)
    assert {k: v for k, v in after.items() if k != ".status"} == {
        k: v for k, v in before.items() if k != ".status"
    }
    assert version_numbers(open_store(store_url), "proj", "ds") == []
    assert "bad .metadata.json" in m.log_text()
    (staging / ".metadata.json").write_text('{"rows": 1}')
    (staging / ".aliases").write_text("best\n")
    assert touch_commit(staging).returncode == 0
    show = artfs_cli("show", "proj/ds:best", "--json", env=m.env, check=True).stdout
    assert '"rows": 1' in show and '"description": "desc"' in show


def test_mkdir_names_and_type(mount, api: Api) -> None:
    m = mount()
    for bad in ("bad name", ".hidden", "a" * 200):
        with pytest.raises(OSError) as e:
            os.mkdir(m.path / bad)
        assert e.value.errno == errno.EINVAL, bad
    (m.path / "proj").mkdir()
    with pytest.raises(OSError) as e:
        os.mkdir(m.path / "proj")
    assert e.value.errno == errno.EEXIST
    with pytest.raises(OSError) as e:
        os.mkdir(m.path / "proj/sta ging")
    assert e.value.errno == errno.EINVAL
    (m.path / "proj/model").mkdir()
    staging = m.path / "proj/model/staging"
    assert os.getxattr(staging, "user.artfs.type") == b"dataset"
    os.setxattr(staging, "user.artfs.type", b"model")
    (staging / "w.bin").write_bytes(b"weights")
    assert touch_commit(staging).returncode == 0
    assert api.repo.artifact("proj", "model").type == "model"
    with pytest.raises(OSError) as e:
        os.setxattr(staging, "user.artfs.type", b"dataset")
    assert e.value.errno == errno.EPERM
    (m.path / "proj/scratch").mkdir()
    assert "scratch" in os.listdir(m.path / "proj")
    os.rmdir(m.path / "proj/scratch")
    assert "scratch" not in os.listdir(m.path / "proj")
    with pytest.raises(OSError) as e:
        os.rmdir(m.path / "proj/model")
    assert e.value.errno == errno.EPERM
    # survives a remount: the artifact made by mkdir and never committed, too
    (m.path / "proj/pending").mkdir()
    (m.path / "proj/pending/staging/kept.txt").write_text("kept")
    stop_mount(m)
    m2 = mount()
    assert (m2.path / "proj/pending/staging/kept.txt").read_text() == "kept"


def test_two_daemons_commit_one_artifact_at_once(mount, api: Api, tmp_path) -> None:
    api.put([make_tree(tmp_path / "v0", {"a": "0"})], "proj/ds")
    m1 = mount(state=tmp_path / "state1", cache=tmp_path / "cache1")
    m2 = mount(state=tmp_path / "state2", cache=tmp_path / "cache2")
    for i, m in enumerate((m1, m2), start=1):
        s = m.path / "proj/ds/staging"
        for j in range(30):
            (s / f"{i}-{j}.txt").write_text(f"writer {i} file {j}")
    results: dict[int, subprocess.CompletedProcess[str]] = {}
    barrier = threading.Barrier(2)

    def run(i: int, m) -> None:
        barrier.wait()
        results[i] = touch_commit(m.path / "proj/ds/staging")

    threads = [threading.Thread(target=run, args=(i, m)) for i, m in ((1, m1), (2, m2))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(r.returncode == 0 for r in results.values()), results
    assert version_numbers(api.repo.store, "proj", "ds") == [0, 1, 2]
    assert api.repo.alias_target("proj", "ds", "latest") == 2
    seen = set()
    for n in (1, 2):
        files = {p for p, _s, _d in api.artifact(f"proj/ds:v{n}").files()}
        writer = {p.split("-")[0] for p in files}
        assert len(files) == 30 and len(writer) == 1
        seen |= writer
    assert seen == {"1", "2"}


@pytest.mark.parametrize("store_url", ["local"], indirect=True)  # reads the store as a directory
def test_kill_9_during_a_large_commit(mount, tmp_path, store_url) -> None:
    rng = random.Random(3)
    src = make_tree(
        tmp_path / "big", {f"d{i % 8}/f{i:03}.bin": rng.randbytes(256 * 1024) for i in range(256)}
    )
    m = mount()
    (m.path / "proj").mkdir()
    (m.path / "proj/big").mkdir()
    staging = m.path / "proj/big/staging"
    subprocess.run(["cp", "-r", f"{src}/.", str(staging)], check=True)
    store = open_store(store_url)
    touch = subprocess.Popen(
        ["touch", str(staging / ".commit")], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(blob_names(store)) < 3:
            time.sleep(0.001)
        os.kill(m.pid, signal.SIGKILL)
        assert wait_for_exit(m.pid, 10)
    finally:
        touch.wait(timeout=60)
    assert touch.returncode != 0
    assert len(blob_names(store)) >= 3, "the commit never reached the store"
    assert version_numbers(store, "proj", "big") == [], "the kill came too late"
    stop_mount(m)
    m2 = mount()
    staging = m2.path / "proj/big/staging"
    expected = read_tree(src)
    assert {k: v for k, v in read_tree(staging).items() if not k.startswith(".")} == expected
    assert "interrupted" in (staging / ".status").read_text()
    assert not (m2.path / "proj/big/v0").exists()
    r = touch_commit(staging)
    assert r.returncode == 0, r.stderr
    assert version_numbers(store, "proj", "big") == [0]
    assert read_tree(m2.path / "proj/big/v0") == expected
    for p in (Path(store_url) / "blobs").rglob("xxh128:*"):
        assert stat.S_IMODE(p.stat().st_mode) == 0o444


@contextlib.contextmanager
def tiny_disk(path: Path, size: str):
    """A tmpfs of ``size`` on ``path``, unmounted at the end."""
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


@pytest.mark.parametrize("store_url", ["local"], indirect=True)  # its own store, on a tmpfs
def test_full_disks_give_enospc_and_keep_staging(store_url, cache_dir, artfs_env, tmp_path):
    with (
        tiny_disk(tmp_path / "small-store", "1m") as small_store,
        tiny_disk(tmp_path / "small-state", "2m") as small_state,
        mounted_here(
            tmp_path, str(small_store / "store"), state_dir=small_state, env=artfs_env
        ) as m,
    ):
        (m.path / "proj").mkdir()
        (m.path / "proj/ds").mkdir()
        staging = m.path / "proj/ds/staging"
        with pytest.raises(OSError) as e:
            (staging / "huge.bin").write_bytes(os.urandom(3 << 20))
        assert e.value.errno == errno.ENOSPC
        (staging / "huge.bin").unlink()
        data = os.urandom(1536 << 10)  # fits the state disk, not the store
        (staging / "big.bin").write_bytes(data)
        r = touch_commit(staging)
        assert r.returncode != 0 and "No space left on device" in r.stderr
        assert "commit of proj/ds failed" in (staging / ".status").read_text()
        assert (staging / "big.bin").read_bytes() == data
        assert version_numbers(open_store(str(small_store / "store")), "proj", "ds") == []


def test_mv_of_a_base_directory(mount, api: Api, tmp_path) -> None:
    """A base directory moves by a redirect: no EXDEV, no bytes copied."""
    src = make_tree(
        tmp_path / "src", {"part/a": "a", "part/sub/b": "b", "part/sub/c": "c", "keep": "k"}
    )
    api.put([src], "proj/ds")
    m = mount()
    staging = m.path / "proj/ds/staging"
    (staging / ".base").write_text("v0")
    os.rename(staging / "part", staging / "moved")
    assert not (staging / "part").exists()
    assert sorted(os.listdir(staging / "moved")) == ["a", "sub"]
    # inside the moved directory: a move again, a delete, a new file
    os.rename(staging / "moved/sub", staging / "sub2")
    (staging / "sub2/c").unlink()
    (staging / "moved/new").write_text("n")
    assert not (m.state_dir / "staging/proj/ds/files/moved/a").exists()  # nothing copied
    before = blob_names(api.repo.store)
    assert touch_commit(staging).returncode == 0
    assert len(blob_names(api.repo.store) - before) == 2  # "n" and the manifest
    assert read_tree(m.path / "proj/ds/v1") == {
        "keep": ("f", b"k", False),
        "moved": ("d",),
        "moved/a": ("f", b"a", False),
        "moved/new": ("f", b"n", False),
        "sub2": ("d",),
        "sub2/b": ("f", b"b", False),
    }
