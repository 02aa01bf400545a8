"""POSIX behaviour of staging/ on a real mount: what a local filesystem would do."""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from artfs.api import Api
from tests.t4_mount_staging import mount, touch_commit, version_numbers  # noqa: F401 - fixture
from tests.trees import read_tree


@pytest.fixture
def staging(mount):  # noqa: F811 - the fixture imported above
    m = mount()
    (m.path / "proj").mkdir()
    (m.path / "proj/ds").mkdir()
    return m, m.path / "proj/ds/staging"


def raises(err: int, fn, *args, **kw) -> None:
    with pytest.raises(OSError) as e:
        fn(*args, **kw)
    assert e.value.errno == err, (errno.errorcode.get(e.value.errno), errno.errorcode[err])


def test_open_flags(staging) -> None:
    _m, st = staging
    p = st / "f"
    fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
    assert os.write(fd, b"hello world") == 11
    os.close(fd)
    assert stat.S_IMODE(os.stat(p).st_mode) == 0o640
    raises(errno.EEXIST, os.open, p, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    raises(errno.ENOENT, os.open, st / "missing", os.O_RDONLY)
    raises(errno.EISDIR, os.open, st, os.O_WRONLY)
    raises(errno.ENOTDIR, os.open, st / "f/x", os.O_RDONLY)
    fd = os.open(p, os.O_WRONLY | os.O_APPEND)
    os.write(fd, b"!")
    os.close(fd)
    assert p.read_bytes() == b"hello world!"
    fd = os.open(p, os.O_RDONLY)
    raises(errno.EBADF, os.write, fd, b"x")
    os.close(fd)
    fd = os.open(p, os.O_RDWR | os.O_TRUNC)
    assert os.fstat(fd).st_size == 0
    os.pwrite(fd, b"abc", 5)
    assert os.pread(fd, 10, 0) == b"\0" * 5 + b"abc"
    os.close(fd)
    fd = os.open(st / "g", os.O_RDWR | os.O_CREAT, 0o600)  # O_CREAT without O_EXCL
    os.close(fd)
    fd = os.open(st / "g", os.O_RDWR | os.O_CREAT, 0o600)  # again: opens the same file
    os.close(fd)
    assert os.stat(st / "g").st_size == 0


def test_rename_rules(staging) -> None:
    _m, st = staging
    (st / "a").write_text("a")
    (st / "b").write_text("b")
    (st / "d1").mkdir()
    (st / "d2").mkdir()
    (st / "full").mkdir()
    (st / "full/x").write_text("x")
    os.rename(st / "a", st / "b")  # over a file: replaces it
    assert (st / "b").read_text() == "a" and not (st / "a").exists()
    raises(errno.EISDIR, os.rename, st / "b", st / "d1")
    raises(errno.ENOTDIR, os.rename, st / "d1", st / "b")
    raises(errno.ENOTEMPTY, os.rename, st / "d1", st / "full")
    raises(errno.EINVAL, os.rename, st / "full", st / "full/inside")
    raises(errno.ENOENT, os.rename, st / "nothing", st / "x")
    os.rename(st / "d1", st / "d2")  # over an empty directory
    assert sorted(os.listdir(st)) == ["b", "d2", "full"]
    os.rename(st / "full", st / "d2/full")
    os.rename(st / "b", st / "d2/full/b")
    assert (st / "d2/full/b").read_text() == "a" and (st / "d2/full/x").read_text() == "x"
    os.link(st / "d2/full/b", st / "c")
    os.rename(st / "c", st / "d2/full/b")  # two names of one file: nothing happens
    assert (st / "c").exists() and os.stat(st / "c").st_nlink == 2


def test_unlink_and_rmdir_rules(staging) -> None:
    _m, st = staging
    (st / "d/e").mkdir(parents=True)
    (st / "d/e/f").write_text("f")
    raises(errno.EISDIR, os.unlink, st / "d")
    raises(errno.ENOTEMPTY, os.rmdir, st / "d")
    raises(errno.ENOTDIR, os.rmdir, st / "d/e/f")
    raises(errno.ENOENT, os.unlink, st / "d/none")
    raises(errno.ENOENT, os.rmdir, st / "none")
    os.unlink(st / "d/e/f")
    os.rmdir(st / "d/e")
    os.rmdir(st / "d")
    assert os.listdir(st) == []
    # a name removed and made again as another kind
    (st / "n").write_text("file")
    os.unlink(st / "n")
    (st / "n").mkdir()
    assert stat.S_ISDIR(os.lstat(st / "n").st_mode)


def test_symlinks(staging) -> None:
    _m, st = staging
    (st / "t").write_text("target")
    os.symlink("t", st / "l")
    os.symlink("../nowhere", st / "dangling")
    assert os.readlink(st / "l") == "t" and (st / "l").read_text() == "target"
    assert stat.S_ISLNK(os.lstat(st / "dangling").st_mode)
    raises(errno.EEXIST, os.symlink, "x", st / "l")
    raises(errno.EINVAL, os.readlink, st / "t")
    os.utime(st / "l", ns=(1_000_000_000, 2_000_000_000), follow_symlinks=False)
    assert os.lstat(st / "l").st_mtime_ns == 2_000_000_000
    assert (st / "t").stat().st_mtime_ns != 2_000_000_000


def test_truncate(staging) -> None:
    _m, st = staging
    p = st / "f"
    p.write_bytes(b"0123456789")
    os.truncate(p, 4)
    assert p.read_bytes() == b"0123"
    os.truncate(p, 8)
    assert p.read_bytes() == b"0123\0\0\0\0"
    with open(p, "r+b") as f:
        f.truncate(2)
        assert os.fstat(f.fileno()).st_size == 2
    raises(errno.EISDIR, os.truncate, st, 0)


def test_times_and_modes(staging, api: Api) -> None:
    m, st = staging
    p = st / "f"
    p.write_text("x")
    os.utime(p, ns=(1_111_111_111_111_111_111, 1_222_222_222_222_222_222))
    s = os.stat(p)
    assert (s.st_atime_ns, s.st_mtime_ns) == (1_111_111_111_111_111_111, 1_222_222_222_222_222_222)
    # one time at a time (UTIME_OMIT for the other)
    subprocess.run(["touch", "-m", "-d", "@1300000000", str(p)], check=True)
    s = os.stat(p)
    assert (s.st_atime_ns, s.st_mtime_ns) == (1_111_111_111_111_111_111, 1_300_000_000 * 10**9)
    subprocess.run(["touch", "-a", "-d", "@1400000000", str(p)], check=True)
    s = os.stat(p)
    assert (s.st_atime_ns, s.st_mtime_ns) == (1_400_000_000 * 10**9, 1_300_000_000 * 10**9)
    os.chmod(p, 0o600)
    assert stat.S_IMODE(os.stat(p).st_mode) == 0o600
    (st / "d").mkdir(mode=0o700)
    os.chmod(st / "d", 0o750)
    os.utime(st / "d", ns=(5, 1_500_000_000_000_000_000))
    # owners are kept while staged; versions do not record them
    os.chown(p, 1234, 5678)
    assert (os.stat(p).st_uid, os.stat(p).st_gid) == (1234, 5678)
    assert touch_commit(st).returncode == 0
    v = m.path / "proj/ds/v0"
    assert stat.S_IMODE(os.stat(v / "f").st_mode) == 0o600
    assert os.stat(v / "f").st_mtime_ns == 1_300_000_000 * 10**9
    assert stat.S_IMODE(os.stat(v / "d").st_mode) == 0o750
    assert os.stat(v / "d").st_mtime_ns == 1_500_000_000_000_000_000
    assert os.stat(v / "f").st_uid == os.stat(m.path).st_uid  # the mount's owner
    files = {p: e for p, e in api.repo.manifest(api.repo.version("proj", "ds", 0)).walk()}
    assert files["f"].mode == 0o600 and files["f"].mtime_ns == 1_300_000_000 * 10**9


def test_refused_node_types_and_eexist_first(staging) -> None:
    _m, st = staging
    (st / "f").write_text("f")
    raises(errno.EEXIST, os.mkfifo, st / "f")
    raises(errno.EEXIST, os.mknod, st / "f", stat.S_IFCHR | 0o600, os.makedev(1, 3))
    raises(errno.EEXIST, os.mkfifo, st / ".status")
    raises(errno.EEXIST, os.link, st / "f", st / "f")
    # a filesystem without FIFOs, devices or sockets answers EPERM
    raises(errno.EPERM, os.mkfifo, st / "fifo")
    raises(errno.EPERM, os.mknod, st / "dev", stat.S_IFCHR | 0o600, os.makedev(1, 3))
    with contextlib.closing(socket.socket(socket.AF_UNIX)) as s:
        raises(errno.EPERM, s.bind, str(st / "sock"))
    assert os.listdir(st) == ["f"]


def test_unlinked_open_file_lives_until_last_close(staging, api: Api) -> None:
    m, st = staging
    (st / "keep").write_text("k")
    fd = os.open(st / "tmp", os.O_RDWR | os.O_CREAT, 0o600)
    os.write(fd, b"abcdef")
    os.unlink(st / "tmp")
    assert os.listdir(st) == ["keep"]
    s = os.fstat(fd)
    assert s.st_size == 6 and s.st_nlink == 0
    assert os.pread(fd, 3, 1) == b"bcd"
    os.ftruncate(fd, 2)
    assert os.fstat(fd).st_size == 2
    os.pwrite(fd, b"Z", 4)
    assert os.pread(fd, 10, 0) == b"ab\0\0Z"
    os.fchmod(fd, 0o640)
    assert stat.S_IMODE(os.fstat(fd).st_mode) == 0o640
    # an open unlinked file is part of no version and holds no commit back
    assert touch_commit(st).returncode == 0
    assert read_tree(m.path / "proj/ds/v0") == {"keep": ("f", b"k", False)}
    assert os.pread(fd, 10, 0) == b"ab\0\0Z"
    os.close(fd)


def test_unlinked_open_base_file_stays_readable(mount, api: Api, tmp_path) -> None:  # noqa: F811
    src = tmp_path / "src"
    src.mkdir()
    (src / "a").write_bytes(b"base bytes")
    api.put([src], "proj/ds")
    st = mount().path / "proj/ds/staging"
    (st / ".base").write_text("v0")
    with open(st / "a", "rb") as f:
        os.unlink(st / "a")
        assert not (st / "a").exists()
        assert os.fstat(f.fileno()).st_size == 10
        assert f.read() == b"base bytes"


def test_tempfile_in_staging(staging) -> None:
    _m, st = staging
    with tempfile.TemporaryFile(dir=st) as f:
        f.write(b"x" * 100_000)
        f.seek(0)
        assert f.read(10) == b"x" * 10
        f.truncate(50)
        assert os.fstat(f.fileno()).st_size == 50
        assert os.listdir(st) == []
    with tempfile.NamedTemporaryFile(dir=st) as f:
        f.write(b"named")
        f.flush()
        assert Path(f.name).read_bytes() == b"named"
    assert os.listdir(st) == []


def test_statfs_is_the_state_directory(staging) -> None:
    m, st = staging
    got, want = os.statvfs(st), os.statvfs(m.state_dir)
    assert got.f_blocks == want.f_blocks > 0
    assert got.f_frsize == want.f_frsize
    assert abs(got.f_bavail - want.f_bavail) * want.f_frsize < 1 << 30
    df = subprocess.run(["df", "-P", str(st)], capture_output=True, text=True)
    assert df.returncode == 0
    total = int(df.stdout.splitlines()[1].split()[1])
    assert total == want.f_blocks * want.f_frsize // 1024


def test_bad_base_is_einval_with_the_reason(staging, api: Api, tmp_path) -> None:
    _m, st = staging
    raises(errno.EINVAL, (st / ".base").write_text, "v7\n")
    assert "bad .base 'v7'" in (st / ".status").read_text()
    raises(errno.EINVAL, (st / ".base").write_text, "nope/none:v0\n")
    assert "bad .base 'nope/none:v0'" in (st / ".status").read_text()
    assert (st / ".base").read_text() == ""


@contextlib.contextmanager
def opened_dir(path: Path | str, dir_fd: int | None = None) -> Iterator[int]:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY, dir_fd=dir_fd)
    try:
        yield fd
    finally:
        os.close(fd)


def test_deep_trees_and_long_paths(staging) -> None:
    m, st = staging
    # 40 levels: each call costs one step per level (it was doubling per level)
    deep = st.joinpath(*[f"l{i}" for i in range(40)])
    deep.mkdir(parents=True)
    (deep / "leaf").write_text("deep")
    # A path of 4,000 bytes below staging, made through directory descriptors
    # (the test's own absolute path would pass PATH_MAX).
    part = "p" * 199
    fds = [os.open(st, os.O_RDONLY | os.O_DIRECTORY)]
    try:
        for _ in range(19):
            os.mkdir(part, dir_fd=fds[-1])
            fds.append(os.open(part, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fds[-1]))
        name = "f" * 200
        fd = os.open(name, os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fds[-1])
        os.write(fd, b"long")
        os.close(fd)
        rel = "/".join([part] * 19 + [name])
        assert len(rel.encode()) == 4000
        assert os.stat(rel, dir_fd=fds[0]).st_size == 4
    finally:
        for fd in fds:
            os.close(fd)
    assert touch_commit(st).returncode == 0
    v0 = m.path / "proj/ds/v0"
    assert v0.joinpath(*[f"l{i}" for i in range(40)], "leaf").read_text() == "deep"
    with opened_dir(v0) as top:
        fd = os.open(rel, os.O_RDONLY, dir_fd=top)
        assert os.read(fd, 10) == b"long"
        os.close(fd)
