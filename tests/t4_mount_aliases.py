"""Aliases as symlinks in an artifact directory: ln -s, rm, ln -sfn, mv."""

from __future__ import annotations

import errno
import os
import subprocess
import threading
import time
from pathlib import Path

import pytest

from artfs.api import Api
from tests.mounting import artfs_cli, mounted_here
from tests.trees import make_tree


@pytest.fixture
def art(api: Api, store_url, cache_dir, artfs_env, tmp_path: Path):
    for i in range(3):
        api.put([make_tree(tmp_path / f"v{i}", {"n": str(i)})], "proj/ds")
    with mounted_here(tmp_path, store_url, env=artfs_env) as m:
        yield m.path / "proj/ds"


def aliases(api: Api) -> dict[str, int]:
    return api.repo.aliases("proj", "ds")


def test_ln_s_sets_and_rm_removes(art: Path, api: Api, artfs_env) -> None:
    os.symlink("v1", art / "best")
    assert os.readlink(art / "best") == "v1"
    assert (art / "best/n").read_text() == "1"
    assert aliases(api)["best"] == 1
    shown = artfs_cli("show", "proj/ds:best", env=artfs_env, check=True).stdout
    assert "proj/ds:v1" in shown
    (art / "best").unlink()
    assert "best" not in aliases(api)
    assert not os.path.lexists(art / "best")


def test_ln_sfn_and_rename_move_an_alias(art: Path, api: Api) -> None:
    os.symlink("v0", art / "prod")
    subprocess.run(["ln", "-sfn", "v2", str(art / "prod")], check=True)
    assert os.readlink(art / "prod") == "v2"
    assert aliases(api)["prod"] == 2
    os.symlink("v1", art / "candidate")
    os.rename(art / "candidate", art / "prod")
    assert os.readlink(art / "prod") == "v1"
    assert "candidate" not in aliases(api) and aliases(api)["prod"] == 1
    subprocess.run(["mv", "-T", str(art / "prod"), str(art / "stable")], check=True)
    assert os.readlink(art / "stable") == "v1" and "prod" not in aliases(api)
    # no temporary names were left behind by ln or mv
    assert set(aliases(api)) == {"latest", "stable"}


def test_latest_is_not_set_or_removed_by_hand(art: Path, api: Api) -> None:
    for call in (
        lambda: (art / "latest").unlink(),
        lambda: os.rename(art / "latest", art / "old"),
    ):
        with pytest.raises(OSError) as e:
            call()
        assert e.value.errno == errno.EPERM
    with pytest.raises(OSError) as e:
        os.symlink("v0", art / "latest")
    assert e.value.errno == errno.EEXIST
    r = subprocess.run(["ln", "-sfn", "v0", str(art / "latest")], capture_output=True, text=True)
    assert r.returncode != 0 and "Operation not permitted" in r.stderr
    assert set(aliases(api)) == {"latest"}  # ln's temporary link is gone too
    os.symlink("v0", art / "x")
    with pytest.raises(OSError) as e:
        os.rename(art / "x", art / "latest")
    assert e.value.errno == errno.EPERM
    assert aliases(api)["latest"] == 2 and os.readlink(art / "latest") == "v2"


def test_links_to_anything_but_a_version_are_refused(art: Path, api: Api) -> None:
    for target in ("v9", "latest", "staging", "../other", "/etc", "v1/n", "nonsense"):
        with pytest.raises(OSError) as e:
            os.symlink(target, art / "bad")
        assert e.value.errno == errno.EINVAL, target
    for name in ("v7", "staging", "bad name", ".hidden"):
        with pytest.raises(OSError) as e:
            os.symlink("v0", art / name)
        assert e.value.errno in (errno.EINVAL, errno.EEXIST), name
    assert set(aliases(api)) == {"latest"}
    with pytest.raises(OSError) as e:
        os.rmdir(art / "v0")
    assert e.value.errno == errno.EPERM
    with pytest.raises(OSError) as e:
        os.mkdir(art / "newdir")
    assert e.value.errno == errno.EPERM
    assert (art / "v0/n").read_text() == "0"


def test_existing_alias_needs_force(art: Path, api: Api) -> None:
    os.symlink("v0", art / "best")
    with pytest.raises(OSError) as e:
        os.symlink("v1", art / "best")
    assert e.value.errno == errno.EEXIST
    assert aliases(api)["best"] == 0


def _wait_reached(pause: Path) -> None:
    deadline = time.monotonic() + 30
    while not Path(f"{pause}.reached").exists():
        assert time.monotonic() < deadline, "the move never reached its pause point"
        time.sleep(0.02)


def test_mv_of_an_alias_sets_the_new_name_before_it_removes_the_old(
    api: Api, store_url, cache_dir, artfs_env, tmp_path: Path
) -> None:
    """``mv best prod`` is one ``Repo.move_alias``: held between its two
    writes, a reader on the store sees both names on the version, never
    neither; released, only ``prod``."""
    for i in range(2):
        api.put([make_tree(tmp_path / f"v{i}", {"n": str(i)})], "proj/ds")
    api.repo.set_alias(api.repo.version("proj", "ds", 0), "best")
    pause = tmp_path / "pause"
    env = {**artfs_env, "ARTFS_TEST_PAUSE_ALIAS_MOVE_BOTH": str(pause)}
    with mounted_here(tmp_path, store_url, cache_dir=cache_dir, env=env) as m:
        art = m.path / "proj/ds"
        errors: list[BaseException] = []

        def move() -> None:
            try:
                os.rename(art / "best", art / "prod")
            except BaseException as e:
                errors.append(e)

        mover = threading.Thread(target=move)
        mover.start()
        try:
            _wait_reached(pause)
            seen = aliases(api)
            assert seen["best"] == 0 and seen["prod"] == 0
        finally:
            pause.touch()
            mover.join(30)
        assert not errors and not mover.is_alive()
        assert os.readlink(art / "prod") == "v0" and not os.path.lexists(art / "best")
        assert aliases(api) == {"latest": 1, "prod": 0}
