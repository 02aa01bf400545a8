"""A mount only root may enter runs without the kernel's permission checks
(one request less per file created), and still answers what they answered:
execute needs an x bit, read-only trees stay read-only."""

from __future__ import annotations

import errno
import os
import subprocess
from pathlib import Path

import pytest

from artfs.config import Settings
from artfs.fs.daemon import MountConfig, _fuse_options
from tests.mounting import mounted_here

FILES = 60


def test_only_a_mount_just_root_enters_goes_unchecked(tmp_path: Path) -> None:
    settings = Settings(str(tmp_path / "s"), tmp_path / "c", tmp_path / "st", None, None, {})

    def options(uid: int, *opts: str) -> set[str]:
        return _fuse_options(MountConfig(Path("/mnt"), settings, options=list(opts)), uid=uid)

    assert "default_permissions" not in options(0)
    assert "default_permissions" in options(1000), "a user's own modes must hold for that user"
    assert "default_permissions" in options(0, "allow_other"), "other users would read anything"
    assert "default_permissions" in options(1000, "allow_other")
    assert "default_permissions" in options(0, "default_permissions"), "asked for: kept"


@pytest.fixture
def mnt(api, store_url, artfs_env, tmp_path):
    src = tmp_path / "src"
    (src / "bin").mkdir(parents=True)
    (src / "data.csv").write_text("1,2\n")
    (src / "bin/run.sh").write_text("#!/bin/sh\necho ran\n")
    os.chmod(src / "bin/run.sh", 0o755)
    api.put([src], "proj/tools")
    with mounted_here(tmp_path, store_url, env=artfs_env) as m:
        yield m


def test_root_only_mount_answers_access_and_exec_as_the_kernel_would(mnt) -> None:
    assert os.getuid() == 0
    assert "default_permissions" not in mnt.options()
    v0 = mnt.path / "proj/tools/v0"
    data, script = v0 / "data.csv", v0 / "bin/run.sh"
    assert os.access(data, os.R_OK)
    assert not os.access(data, os.X_OK), "a file without an x bit is not executable, even for root"
    assert os.access(script, os.X_OK)
    assert os.access(v0 / "bin", os.X_OK)
    assert subprocess.run([str(script)], capture_output=True, text=True).stdout == "ran\n"
    with pytest.raises(PermissionError):
        subprocess.run([str(data)])
    with pytest.raises(OSError) as e:
        os.open(data, os.O_WRONLY | os.O_APPEND)
    assert e.value.errno == errno.EROFS


def test_creates_in_staging_no_longer_ask_for_the_parent(mnt, tmp_path: Path) -> None:
    src = tmp_path / "many"
    src.mkdir()
    for i in range(FILES):
        (src / f"f{i:03d}").write_text(f"{i}\n")
    art = mnt.path / "proj/made"
    art.mkdir()
    before = mnt.requests()
    subprocess.run(["cp", "-r", f"{src}/.", str(art / "staging")], check=True, timeout=60)
    after = mnt.requests()
    creates = after["create"] - before.get("create", 0)
    getattrs = after.get("getattr", 0) - before.get("getattr", 0)
    assert creates == FILES
    # Under default_permissions each create made the parent's attributes
    # stale and the next create asked for them: a getattr per file.
    assert getattrs < FILES // 4, f"{getattrs} getattrs for {FILES} creates"
    (art / "staging/.commit").touch()
    assert sorted(os.listdir(art / "v0")) == sorted(os.listdir(src))
