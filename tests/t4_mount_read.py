"""The mount, read side: real mounts, real tools, real stores."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import signal
import stat
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import save_file

from artfs.api import Api
from artfs.fs.mountpoints import is_stale, mounted_fs_type, process_alive, wait_for_exit
from artfs.manifest import ManifestBuilder
from artfs.repo import commit_tree, hash_files
from artfs.repo.layout import blob_key
from tests.mounting import artfs_cli
from tests.trees import make_tree, read_tree

DEEP = "/".join(f"d{i}" for i in range(40))


@pytest.fixture
def mount(new_mount):
    """``mount(*args)`` -> Mount on a fresh mountpoint; all unmounted at the end."""

    def make(*args: str, mountpoint: Path | None = None, store: str | None = None):
        return new_mount(*args, mountpoint=mountpoint, store_url=store)

    return make


@pytest.fixture
def source(tmp_path: Path) -> Path:
    rng = np.random.default_rng(3)
    return make_tree(
        tmp_path / "src",
        {
            "README.md": "# a dataset\n",
            "train/x0.bin": rng.bytes(70_000),
            "train/x1.bin": rng.bytes(5),
            "train/labels.csv": "a,b\n1,2\n",
            "données/été ☀.txt": "non-ASCII names\n",
            "empty.txt": b"",
            f"{DEEP}/leaf.txt": "deep\n",
            "bin/run.sh": "#!/bin/sh\necho hi\n",
        },
        executable=("bin/run.sh",),
        symlinks={"train/latest.bin": "x0.bin", "up": "train/../README.md"},
        empty_dirs=("nothing/here",),
    )


def _run(*cmd: str, cwd: Path | None = None) -> str:
    return subprocess.run(
        cmd, cwd=cwd, check=True, capture_output=True, text=True, timeout=120
    ).stdout


def test_tools_read_a_version_like_its_source(api, mount, source: Path, tmp_path: Path) -> None:
    api.put([source], "proj/ds", description="first")
    m = mount()
    root = m.path / "proj" / "ds" / "v0"

    assert sorted(os.listdir(m.path)) == ["proj"]
    assert sorted(os.listdir(m.path / "proj" / "ds")) == ["drafts", "latest", "staging", "v0"]
    assert os.readlink(m.path / "proj" / "ds" / "latest") == "v0"
    assert read_tree(root) == read_tree(source)
    assert read_tree(m.path / "proj" / "ds" / "latest") == read_tree(source)

    # ls and find list what the source holds
    assert _run("ls", "-A", str(root)).split() == _run("ls", "-A", str(source)).split()
    assert sorted(_run("find", ".", cwd=root).splitlines()) == sorted(
        _run("find", ".", cwd=source).splitlines()
    )

    # stat: sizes, modes, the version's time, stable distinct inodes, blocks for du
    seen_inodes = set()
    for rel in ("README.md", "train/x0.bin", "empty.txt", "bin/run.sh", f"{DEEP}/leaf.txt"):
        st, src_st = os.stat(root / rel), os.stat(source / rel)
        assert st.st_size == src_st.st_size
        assert stat.S_IMODE(st.st_mode) == stat.S_IMODE(src_st.st_mode)
        assert st.st_mtime_ns == src_st.st_mtime_ns  # versions keep mtimes (manifest format 2)
        assert st.st_blocks == (st.st_size + 511) // 512
        assert os.stat(root / rel).st_ino == st.st_ino
        seen_inodes.add(st.st_ino)
    assert len(seen_inodes) == 5
    assert os.lstat(root / "up").st_size == len("train/../README.md")
    out = _run("stat", "-c", "%s %a %F", str(root / "bin/run.sh"))
    assert out.strip() == "18 755 regular file"

    # du counts the files' blocks
    expected = sum(
        (p.stat().st_size + 511) // 512 * 512
        for p in source.rglob("*")
        if p.is_file() and not p.is_symlink()
    )
    assert int(_run("du", "-s", "-B1", str(root)).split()[0]) == expected

    # cat, cp -r, tar c, rsync -rc
    assert _run("cat", str(root / "données/été ☀.txt")) == "non-ASCII names\n"
    _run("cp", "-r", str(root), str(tmp_path / "copy"))
    assert read_tree(tmp_path / "copy") == read_tree(source)
    (tmp_path / "untar").mkdir()
    tar = subprocess.run(["tar", "cf", "-", "-C", str(root), "."], capture_output=True, check=True)
    subprocess.run(["tar", "xf", "-", "-C", str(tmp_path / "untar")], input=tar.stdout, check=True)
    assert read_tree(tmp_path / "untar") == read_tree(source)
    diff = _run(
        "rsync", "-rlc", "--dry-run", "--itemize-changes", "--delete", f"{root}/", f"{source}/"
    )
    assert diff.strip() == ""


def test_latest_follows_a_put_from_another_process(api, mount, run_artfs, tmp_path: Path) -> None:
    src = make_tree(tmp_path / "one", {"model.txt": "v0 weights"})
    api.put([src], "proj/model", type="model")
    m = mount("--ttl", "1")
    latest = m.path / "proj" / "model" / "latest"
    assert (latest / "model.txt").read_text() == "v0 weights"

    make_tree(tmp_path / "one", {"model.txt": "v1 weights"})
    run_artfs("put", str(src), "-n", "proj/model", "-t", "model")
    # The promise is a time bound: the new version shows once the TTL (1 s) is
    # over, for the kernel's entry and the daemon's listing; the bound leaves
    # room for a loaded machine.
    start = time.monotonic()
    while (latest / "model.txt").read_text() != "v1 weights":
        assert time.monotonic() - start < 2 * 1 + 6, "latest did not follow the new version"
        time.sleep(0.1)
    assert os.readlink(latest) == "v1"
    assert "v1" in os.listdir(m.path / "proj" / "model")
    # the old version is still there, unchanged
    assert (m.path / "proj/model/v0/model.txt").read_text() == "v0 weights"


def test_xattrs(api, mount, source: Path) -> None:
    result = api.put([source], "proj/ds", description="cleaned", metadata={"rows": 3})
    m = mount()
    vdir = m.path / "proj/ds/v0"
    assert os.getxattr(vdir, "user.artfs.ref") == b"proj/ds:v0"
    assert os.getxattr(vdir, "user.artfs.version") == b"v0"
    assert os.getxattr(vdir, "user.artfs.type") == b"dataset"
    assert os.getxattr(vdir, "user.artfs.description") == b"cleaned"
    assert os.getxattr(vdir, "user.artfs.metadata") == b'{"rows": 3}'
    created = os.getxattr(vdir, "user.artfs.created").decode()
    assert created.startswith(time.strftime("%Y-%m-%dT", time.gmtime(result.version.created)))
    assert set(os.listxattr(vdir)) == {
        f"user.artfs.{k}" for k in ("ref", "version", "type", "created", "description", "metadata")
    }
    files = {p: d for p, _, d in api.artifact("proj/ds:v0").files()}
    assert os.getxattr(vdir / "train/x0.bin", "user.artfs.digest").decode() == files["train/x0.bin"]
    assert os.listxattr(vdir / "train/x0.bin") == ["user.artfs.digest"]
    with pytest.raises(OSError) as e:
        os.getxattr(vdir / "train/x0.bin", "user.artfs.nope")
    assert e.value.errno == errno.ENODATA


def test_numpy_memmap_and_read_ahead(api, mount, tmp_path: Path) -> None:
    arr = np.arange(4 << 20, dtype=np.float32).reshape(1024, -1)  # 16 MiB
    src = tmp_path / "weights"
    src.mkdir()
    np.save(src / "w.npy", arr)
    api.put([src], "proj/weights", type="model")
    api.put([src], "proj/weights2", type="model")
    m = mount()
    path = m.path / "proj/weights/latest/w.npy"
    mapped = np.load(path, mmap_mode="r")
    assert mapped.shape == arr.shape
    assert np.array_equal(mapped[::97], arr[::97])
    assert np.array_equal(np.asarray(mapped), arr)
    raw = np.memmap(path, dtype=np.uint8, mode="r")
    assert raw.size == (src / "w.npy").stat().st_size
    del mapped, raw

    # a sequential read of a cold file arrives in requests larger than the default 128 KiB
    st = os.stat(m.path)
    bdi = Path(f"/sys/class/bdi/{os.major(st.st_dev)}:{os.minor(st.st_dev)}/read_ahead_kb")
    assert int(bdi.read_text()) >= 1024
    with open(m.path / "proj/weights2/v0/w.npy", "rb") as f:
        while f.read(4 << 20):
            pass
    assert m.stats()["max_read"] > 128 << 10


def test_safetensors_and_the_page_cache(api, mount, tmp_path: Path) -> None:
    tensors = {
        "embed": np.arange(50_000, dtype=np.float32).reshape(500, 100),
        "bias": np.ones(7, dtype=np.float16),
    }
    src = tmp_path / "model"
    src.mkdir()
    save_file(tensors, str(src / "model.safetensors"))
    api.put([src], "proj/model", type="model")
    m = mount()
    path = m.path / "proj/model/latest/model.safetensors"
    with safe_open(str(path), framework="numpy") as f:
        assert sorted(f.keys()) == ["bias", "embed"]
        for name, want in tensors.items():
            assert np.array_equal(f.get_tensor(name), want)

    # version files are kept in the page cache across opens: a second read
    # of the whole file asks the daemon for nothing
    first = path.read_bytes()
    reads = m.stats()["reads"]
    assert path.read_bytes() == first == (src / "model.safetensors").read_bytes()
    assert m.stats()["reads"] == reads


def _expect_errno(code: int, fn, *args) -> None:
    with pytest.raises(OSError) as e:
        fn(*args)
    assert e.value.errno == code, f"{fn.__name__}{args}: {e.value}"


def test_writes_in_a_version_tree_are_refused(api, mount, source: Path) -> None:
    api.put([source], "proj/ds")
    m = mount()
    root = m.path / "proj/ds/v0"
    f = root / "README.md"
    for flags in (os.O_WRONLY, os.O_RDWR, os.O_RDONLY | os.O_TRUNC, os.O_WRONLY | os.O_APPEND):
        _expect_errno(errno.EROFS, os.open, f, flags)
    _expect_errno(errno.EROFS, os.open, root / "new.txt", os.O_WRONLY | os.O_CREAT)
    _expect_errno(errno.EROFS, os.unlink, f)
    _expect_errno(errno.EROFS, os.rename, f, root / "moved.md")
    _expect_errno(errno.EROFS, os.mkdir, root / "newdir")
    _expect_errno(errno.EROFS, os.rmdir, root / "nothing/here")
    _expect_errno(errno.EROFS, os.symlink, "README.md", root / "ln")
    _expect_errno(errno.EROFS, os.link, f, root / "hard")
    _expect_errno(errno.EROFS, os.mkfifo, root / "fifo")
    _expect_errno(errno.EROFS, os.chmod, f, 0o600)
    _expect_errno(errno.EROFS, os.chown, f, 1, 1)
    _expect_errno(errno.EROFS, os.utime, f, (1, 1))
    _expect_errno(errno.EROFS, os.truncate, f, 0)
    _expect_errno(errno.EROFS, os.setxattr, f, "user.x", b"1")
    _expect_errno(errno.EROFS, os.removexattr, f, "user.artfs.digest")
    # and nothing changed
    assert f.read_text() == "# a dataset\n"
    assert "refused, read-only" in m.log_text()

    # unknown names: ENOENT at every level
    for p in (
        "nope",
        "proj/nope",
        "proj/ds/v9",
        "proj/ds/v00",
        "proj/ds/v0/nope",
        "proj/ds/v0/README.md/x",
    ):
        _expect_errno(errno.ENOTDIR if p.endswith("/x") else errno.ENOENT, os.stat, m.path / p)


def test_concurrent_readers_of_an_uncached_blob_make_one_fetch(
    api, mount, tmp_path: Path, cache_dir: Path
) -> None:
    data = np.random.default_rng(7).bytes(100 << 20)
    src = make_tree(tmp_path / "big", {"blob.bin": data, "small.txt": "s"})
    api.put([src], "proj/big")
    digest = dict((p, d) for p, _, d in api.artifact("proj/big:v0").files())["blob.bin"]
    assert not api.repo.cache.has(digest)

    m = mount("--via-cache")
    path = m.path / "proj/big/v0/blob.bin"
    assert path.stat().st_size == len(data)  # manifest loaded before counting
    before = m.stats()["fetches"]

    barrier = threading.Barrier(20)
    results: list[str | BaseException] = [""] * 20

    def reader(i: int) -> None:
        try:
            barrier.wait()
            with open(path, "rb") as f:
                results[i] = hashlib.sha256(f.read()).hexdigest()
        except BaseException as e:
            results[i] = e

    threads = [threading.Thread(target=reader, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    want = hashlib.sha256(data).hexdigest()
    assert results == [want] * 20
    assert m.stats()["fetches"] - before == 1
    assert api.repo.cache.has(digest)
    assert m.stats()["opens"] >= 20


@pytest.mark.parametrize("mode", ["direct", "via-cache"])
def test_a_corrupt_blob_gives_eio_for_that_file_only(
    api, mount, tmp_path: Path, store_url: str, mode: str
) -> None:
    src = make_tree(tmp_path / "src", {"good.txt": "good bytes", "bad.txt": "bad bytes!"})
    api.put([src], "proj/ds")
    files = {p: d for p, _, d in api.artifact("proj/ds:v0").files()}
    api.repo.store.put(blob_key(files["bad.txt"]), b"evil bytes")  # same size, other bytes

    m = mount(*(["--via-cache"] if mode == "via-cache" else []))
    v0 = m.path / "proj/ds/v0"
    with pytest.raises(OSError) as e:
        (v0 / "bad.txt").read_bytes()
    assert e.value.errno == errno.EIO
    assert (v0 / "good.txt").read_text() == "good bytes"
    assert os.stat(v0 / "bad.txt").st_size == 10  # metadata still answers
    assert f"blob {files['bad.txt']} is corrupt" in m.log_text()
    assert not api.repo.cache.has(files["bad.txt"])
    # still refused on a second try: a bad blob is never remembered as good
    with pytest.raises(OSError):
        (v0 / "bad.txt").read_bytes()


@pytest.mark.store_left_inconsistent  # a blob deleted on purpose
def test_missing_blob_gives_eio(api, mount, tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src", {"a.txt": "aaa", "b.txt": "bbb"})
    api.put([src], "proj/ds")
    files = {p: d for p, _, d in api.artifact("proj/ds:v0").files()}
    api.repo.store.delete(blob_key(files["a.txt"]))
    m = mount()
    _expect_errno(errno.EIO, (m.path / "proj/ds/v0/a.txt").read_bytes)
    assert (m.path / "proj/ds/v0/b.txt").read_text() == "bbb"
    assert "missing from the store" in m.log_text()


@pytest.mark.parametrize("store_url", ["local"], indirect=True)  # its own local store
def test_file_over_4_gib(cache_dir: Path, tmp_path: Path, mount) -> None:
    # Always a local store: what is tested is the mount's 64-bit sizes and
    # offsets, and a local store takes the sparse file without copying it.
    local = str(tmp_path / "local-store")
    api = Api(store=local, cache=str(cache_dir))
    big = tmp_path / "huge" / "sparse.bin"
    big.parent.mkdir()
    size = (4 << 30) + (1 << 20)
    tail = b"beyond 4 GiB"
    with open(big, "wb") as f:
        f.truncate(size)
        f.seek(size - 100)
        f.write(tail)
    builder = ManifestBuilder()
    sources = hash_files([("sparse.bin", big)], builder)
    # move: the store takes the (sparse) file instead of copying 4 GiB
    commit_tree(api.repo, "proj", "huge", builder, sources, move=True)
    m = mount(store=local)
    path = m.path / "proj/huge/v0/sparse.bin"
    assert path.stat().st_size == size
    with open(path, "rb") as f:
        f.seek(size - 100)
        assert f.read(200) == tail + b"\0" * (100 - len(tail))
        f.seek(4 << 30)
        assert f.read(16) == b"\0" * 16


@pytest.mark.parametrize("store_url", ["local"], indirect=True)  # its own local store
def test_a_slow_fetch_holds_up_no_other_request(cache_dir: Path, tmp_path: Path, mount) -> None:
    # A local store whose blob is a named pipe: its fetch waits until the
    # test writes the bytes, as long as a slow network would.
    local = str(tmp_path / "local-store")
    api = Api(store=local, cache=str(cache_dir))
    data = np.random.default_rng(5).bytes(1 << 20)
    src = make_tree(tmp_path / "src", {"slow.bin": data, "fast.txt": "fast"})
    api.put([src], "proj/ds")
    files = {p: d for p, _, d in api.artifact("proj/ds:v0").files()}
    blob = api.repo.store.local_path(blob_key(files["slow.bin"]))
    assert blob is not None
    blob.unlink()
    os.mkfifo(blob)

    m = mount("--via-cache", store=local)
    v0 = m.path / "proj/ds/v0"
    got: dict[str, object] = {}

    def slow_reader() -> None:
        try:
            got["data"] = (v0 / "slow.bin").read_bytes()
        except OSError as e:
            got["error"] = e

    t = threading.Thread(target=slow_reader)
    t.start()
    try:
        time.sleep(0.5)
        assert t.is_alive(), got
        seen: list[object] = []

        def others() -> None:
            seen.append((v0 / "fast.txt").read_text())
            seen.append(sorted(os.listdir(v0)))
            seen.append(os.getxattr(v0, "user.artfs.version"))
            seen.append(sorted(os.listdir(m.path / "proj" / "ds")))

        fast = threading.Thread(target=others, daemon=True)
        fast.start()
        fast.join(10)  # a blocked event loop would hold these until the fetch ends
        assert seen == [
            "fast",
            ["fast.txt", "slow.bin"],
            b"v0",
            ["drafts", "latest", "staging", "v0"],
        ]
        assert t.is_alive()  # still waiting for its bytes
        fd = os.open(blob, os.O_WRONLY | os.O_NONBLOCK)  # ENXIO if nobody is fetching
        os.set_blocking(fd, True)
        with open(fd, "wb") as pipe:
            pipe.write(data)
        t.join(30)
        assert got == {"data": data}
    finally:
        if t.is_alive():  # let a stuck fetch end (it fails its digest check)
            with contextlib.suppress(OSError):
                os.close(os.open(blob, os.O_WRONLY | os.O_NONBLOCK))
            t.join(30)


def test_sigterm_unmounts_cleanly(api, mount, source: Path) -> None:
    api.put([source], "proj/ds")
    m = mount()
    assert (m.path / "proj/ds/v0/README.md").exists()
    os.kill(m.pid, signal.SIGTERM)
    assert wait_for_exit(m.pid, 20)
    assert mounted_fs_type(m.path) is None
    assert not is_stale(m.path)
    assert "got SIGTERM: unmounting" in m.log_text()


def test_a_dead_daemon_is_recovered_by_mounting_again(
    api, mount, source: Path, tmp_path: Path
) -> None:
    api.put([source], "proj/ds")
    mp = tmp_path / "mnt-dead"
    first = mount(mountpoint=mp)
    os.kill(first.pid, signal.SIGKILL)
    assert wait_for_exit(first.pid, 20)
    with pytest.raises(OSError) as e:
        os.listdir(mp)
    assert e.value.errno in (errno.ENOTCONN, errno.ECONNABORTED)
    assert is_stale(mp)

    second = mount(mountpoint=mp)
    assert (second.path / "proj/ds/v0/README.md").read_text() == "# a dataset\n"
    assert second.pid != first.pid


def test_mount_and_umount_commands(api, mount, artfs_env, tmp_path: Path, source: Path) -> None:
    api.put([source], "proj/ds")
    # bad mountpoint: non-zero exit with the reason
    proc = artfs_cli("mount", str(tmp_path / "absent"), env=artfs_env)
    assert proc.returncode != 0 and "not a directory" in proc.stderr
    m = mount()
    # mounting twice on one place is refused
    proc = artfs_cli("mount", str(m.path), env=artfs_env)
    assert proc.returncode != 0 and "already mounted" in proc.stderr
    # umount returns once the daemon is gone
    proc = artfs_cli("umount", str(m.path), env=artfs_env)
    assert proc.returncode == 0, proc.stderr
    assert not process_alive(m.pid)
    assert mounted_fs_type(m.path) is None
    proc = artfs_cli("umount", str(m.path), env=artfs_env)
    assert proc.returncode != 0 and "not mounted" in proc.stderr
