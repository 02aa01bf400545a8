"""Staging as tools that write trees see it: .commit, hidden control files, git,
rsync, tar and cp with hard links, modes and mtimes kept into the version."""

from __future__ import annotations

import errno
import os
import stat
import subprocess
from pathlib import Path

import pytest

from artfs.api import Api
from tests.t4_mount_staging import blob_names, mount, version_numbers  # noqa: F401 - fixture
from tests.trees import make_tree, read_tree


@pytest.fixture
def staging(mount):  # noqa: F811 - the fixture imported above
    m = mount()
    (m.path / "proj").mkdir()
    (m.path / "proj/ds").mkdir()
    return m, m.path / "proj/ds/staging"


def sh(script: str, cwd: Path, **kw) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-c", script], cwd=cwd, capture_output=True, text=True, timeout=300, **kw
    )


def python_open_close(staging: Path) -> None:
    open(staging / ".commit", "w").close()


WAYS = {
    "touch": "touch .commit",
    "colon-truncate": ": > .commit",
    "echo-truncate": "echo 1 > .commit",
    "echo-append": "echo 1 >> .commit",
    "python": None,
}


@pytest.mark.parametrize("way", list(WAYS))
def test_every_way_of_writing_commit_commits_once(way, staging, api: Api) -> None:
    _m, st = staging
    for n in range(2):
        (st / f"f{n}.txt").write_text(f"{way} {n}\n")
        if WAYS[way] is None:
            python_open_close(st)
        else:
            r = sh(WAYS[way], st)
            assert r.returncode == 0, r.stderr
        # exactly one version per write, there as soon as the call returned
        assert version_numbers(api.repo.store, "proj", "ds") == list(range(n + 1))
        assert (st / ".status").read_text().startswith(f"committed proj/ds:v{n}: 1 files")
        assert os.listdir(st) == []
    # With nothing staged the commit fails, and the call that commits says so.
    if WAYS[way] is None:
        with pytest.raises(OSError) as e:
            python_open_close(st)
        assert e.value.errno == errno.EINVAL
    else:
        r = sh(WAYS[way], st)
        assert r.returncode != 0
        assert "Invalid argument" in r.stderr, r.stderr
    assert "nothing staged" in (st / ".status").read_text()
    assert version_numbers(api.repo.store, "proj", "ds") == [0, 1]


def test_control_files_are_reachable_but_not_listed(staging) -> None:
    _m, st = staging
    assert sh("ls -A", st).stdout == ""
    assert os.listdir(st) == []
    assert sh("ls .status .commit .base .aliases .description .metadata.json", st).returncode == 0
    assert (st / ".status").read_text().startswith("nothing committed yet")
    (st / ".description").write_text("about\n")
    make_tree(st, {"a.txt": "a", "d/b.txt": "b"})
    assert sorted(os.listdir(st)) == ["a.txt", "d"]
    found = sh("find . -mindepth 1 | sort", st).stdout.split()
    assert found == ["./a.txt", "./d", "./d/b.txt"]
    # dot files of the user's are ordinary files, whatever their names
    for name in (".hidden", ".artfs-copy-1", "d/.status"):
        (st / name).write_text(name)
    assert sorted(os.listdir(st)) == [".artfs-copy-1", ".hidden", "a.txt", "d"]
    assert sorted(os.listdir(st / "d")) == [".status", "b.txt"]
    assert (st / ".description").read_text() == "about\n"
    # a control name can be neither made nor moved onto
    with pytest.raises(FileExistsError):
        os.mkdir(st / ".base")
    with pytest.raises(OSError) as e:
        os.rename(st / "a.txt", st / ".status")
    assert e.value.errno == errno.EEXIST


def test_git_clone_into_staging(staging, tmp_path: Path) -> None:
    m, st = staging
    src = tmp_path / "repo"
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "a",
        "GIT_AUTHOR_EMAIL": "a@example.com",
        "GIT_COMMITTER_NAME": "a",
        "GIT_COMMITTER_EMAIL": "a@example.com",
        "HOME": str(tmp_path),
    }
    make_tree(src, {"train.py": "print('hi')\n", "data/x.csv": "1,2\n"})
    for cmd in (["init", "-q"], ["add", "."], ["commit", "-qm", "first of all"]):
        subprocess.run(["git", "-C", str(src), *cmd], check=True, env=env)
    r = subprocess.run(["git", "clone", "-q", str(src), str(st)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert sh("touch .commit", st).returncode == 0
    v0 = m.path / "proj/ds/v0"
    log = subprocess.run(
        ["git", "-C", str(v0), "log", "--format=%s"], capture_output=True, text=True, env=env
    )
    assert log.returncode == 0, log.stderr
    assert log.stdout == "first of all\n"
    status = subprocess.run(
        ["git", "-C", str(v0), "diff", "--quiet", "HEAD"], capture_output=True, env=env
    )
    assert status.returncode == 0  # the work tree in the version matches the commit


def test_rsync_delete_into_staging(staging, tmp_path: Path) -> None:
    _m, st = staging
    src = make_tree(tmp_path / "src", {"a": "a", "d/b": "b", "d/c": "c"})
    r = subprocess.run(["rsync", "-a", "--delete", f"{src}/", f"{st}/"], capture_output=True)
    assert r.returncode == 0, r.stderr
    (src / "d/c").unlink()
    r = subprocess.run(
        ["rsync", "-a", "--delete", f"{src}/", f"{st}/"], capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr
    assert read_tree(st) == read_tree(src)
    assert (st / ".status").exists()  # never deleted


def hard_linked_source(tmp_path: Path) -> Path:
    src = make_tree(tmp_path / "src", {"a/one.bin": os.urandom(20_000), "plain": "p"})
    os.mkdir(src / "b")
    os.link(src / "a/one.bin", src / "b/two.bin")
    os.link(src / "a/one.bin", src / "three.bin")
    return src


@pytest.mark.parametrize("tool", ["tar", "cp", "rsync"])
def test_hard_links_from_tools_commit_every_name(tool, staging, api: Api, tmp_path) -> None:
    m, st = staging
    src = hard_linked_source(tmp_path)
    if tool == "tar":
        tar = tmp_path / "src.tar"
        subprocess.run(["tar", "-cf", str(tar), "-C", str(src), "."], check=True)
        r = subprocess.run(["tar", "-xf", str(tar), "-C", str(st)], capture_output=True, text=True)
    elif tool == "cp":
        r = subprocess.run(["cp", "-a", f"{src}/.", str(st)], capture_output=True, text=True)
    else:
        r = subprocess.run(["rsync", "-aH", f"{src}/", f"{st}/"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    names = ("a/one.bin", "b/two.bin", "three.bin")
    stats = [os.lstat(st / n) for n in names]
    assert len({s.st_ino for s in stats}) == 1  # one staged file under three names
    assert all(s.st_nlink == 3 for s in stats)
    before = blob_names(api.repo.store)
    assert sh("touch .commit", st).returncode == 0
    v0 = m.path / "proj/ds/v0"
    assert read_tree(v0) == read_tree(src)
    digests = {os.getxattr(v0 / n, "user.artfs.digest") for n in names}
    assert len(digests) == 1
    # the linked content and "p" once each, and the manifest
    assert len(blob_names(api.repo.store) - before) == 3


def test_link_inside_staging(staging, api: Api) -> None:
    m, st = staging
    (st / "d").mkdir()
    (st / "d/a").write_bytes(b"first")
    os.link(st / "d/a", st / "b")
    a, b = os.lstat(st / "d/a"), os.lstat(st / "b")
    assert a.st_ino == b.st_ino and a.st_nlink == b.st_nlink == 2
    with open(st / "b", "r+b") as f:
        f.write(b"FIRST")
    assert (st / "d/a").read_bytes() == b"FIRST"
    # EEXIST before anything else, as POSIX orders it
    for name in ("b", ".status", "d"):
        with pytest.raises(FileExistsError):
            os.link(st / "d/a", st / name)
    with pytest.raises(PermissionError):
        os.link(st / "d", st / "e")  # no hard links to directories
    os.link(st / "b", st / "c")
    os.unlink(st / "d/a")
    assert os.lstat(st / "b").st_nlink == 2
    os.rename(st / "b", st / "d/moved")
    assert os.lstat(st / "c").st_ino == os.lstat(st / "d/moved").st_ino
    assert sh("touch .commit", st).returncode == 0
    v0 = m.path / "proj/ds/v0"
    assert read_tree(v0) == {
        "c": ("f", b"FIRST", False),
        "d": ("d",),
        "d/moved": ("f", b"FIRST", False),
    }
    assert os.getxattr(v0 / "c", "user.artfs.digest") == os.getxattr(
        v0 / "d/moved", "user.artfs.digest"
    )


def mode_source(tmp_path: Path) -> Path:
    src = make_tree(
        tmp_path / "src",
        {"secret.key": "k", "run.sh": "#!/bin/sh\n", "pub/readme": "r", "priv/deep/x": "x"},
        symlinks={"pub/link": "readme"},
        empty_dirs=("empty",),
    )
    os.chmod(src / "secret.key", 0o600)
    os.chmod(src / "run.sh", 0o750)
    os.chmod(src / "pub/readme", 0o444)
    os.chmod(src / "priv/deep", 0o700)
    os.chmod(src / "priv", 0o750)
    os.chmod(src / "empty", 0o775)
    t = 1_600_000_000_123_456_789
    for i, p in enumerate(sorted(src.rglob("*"), reverse=True)):
        os.utime(p, ns=(t + i, t + 1000 * i), follow_symlinks=False)
    os.utime(src, ns=(t, t + 7))
    return src


def test_rsync_round_trip_keeps_modes_and_mtimes(staging, tmp_path) -> None:
    m, st = staging
    src = mode_source(tmp_path)
    # set-id bits are kept while staged, and never carried into a version
    (st / "tools").mkdir()
    (st / "tools/suid").write_text("s")
    os.chmod(st / "tools/suid", 0o4755)
    os.chmod(st / "tools", 0o2775)
    r = subprocess.run(["rsync", "-a", f"{src}/", f"{st}/"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert stat.S_IMODE(os.stat(st / "tools/suid").st_mode) == 0o4755
    assert stat.S_IMODE(os.stat(st / "tools").st_mode) == 0o2775
    assert sh("touch .commit", st).returncode == 0
    v0 = m.path / "proj/ds/v0"
    r = subprocess.run(
        ["rsync", "-a", "--dry-run", "--itemize-changes", "--exclude=/tools", f"{src}/", f"{v0}/"],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout == ""  # nothing differs: sizes, mtimes, modes, links
    assert stat.S_IMODE(os.stat(v0 / "secret.key").st_mode) == 0o600
    assert stat.S_IMODE(os.stat(v0 / "priv").st_mode) == 0o750
    assert stat.S_IMODE(os.stat(v0 / "tools/suid").st_mode) == 0o755
    assert stat.S_IMODE(os.stat(v0 / "tools").st_mode) == 0o775
    assert os.stat(v0 / "secret.key").st_mtime_ns == os.stat(src / "secret.key").st_mtime_ns
    assert os.stat(v0).st_mtime_ns == os.stat(src).st_mtime_ns
    # directories: one st_size in staging, in the version and on ext4
    du = [
        subprocess.run(["du", "-sb", "--exclude=tools", str(p)], capture_output=True, text=True)
        for p in (src, v0)
    ]
    assert du[0].stdout.split()[0] == du[1].stdout.split()[0]


def test_put_keeps_modes_and_mtimes(mount, api: Api, tmp_path) -> None:  # noqa: F811
    src = mode_source(tmp_path)
    api.put([src], "proj/ds")
    m = mount()
    v0 = m.path / "proj/ds/v0"
    r = subprocess.run(
        ["rsync", "-a", "--dry-run", "--itemize-changes", f"{src}/", f"{v0}/"],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout == ""
    mount_options = [
        line for line in Path("/proc/mounts").read_text().splitlines() if str(m.path) in line
    ]
    assert "nosuid" in mount_options[0] and "nodev" in mount_options[0]
