"""Shared fixtures: real stores, real caches, the real CLI in a subprocess.

``store_url`` is parametrized over the store kinds in ``STORE_KINDS`` so a
test that takes it runs against every backend.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from artfs.api import Api
from tests.mounting import artfs_cli
from tests.s3server import s3_url, s3server, ttfb_store  # noqa: F401 - fixtures

# Every test taking ``store_url`` runs on a local directory and on S3 (SeaweedFS
# on loopback). ARTFS_TEST_STORES=local runs only one kind (e.g. a quick loop).
# A test about the local directory itself (paths, inodes) pins its kind with
# @pytest.mark.parametrize("store_url", ["local"], indirect=True).
STORE_KINDS = os.environ.get("ARTFS_TEST_STORES", "local,s3").split(",")


@pytest.fixture(params=STORE_KINDS)
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "local":
        return str(tmp_path / "store")
    if request.param == "s3":
        return request.getfixturevalue("s3_url")
    raise AssertionError(f"unknown store kind {request.param}")


@pytest.fixture
def cache_dir(tmp_path: Path) -> Path:
    return tmp_path / "cache"


@pytest.fixture
def artfs_env(store_url: str, cache_dir: Path, tmp_path: Path) -> dict[str, str]:
    """Environment for artfs subprocesses: this test's store, cache and config."""
    env = dict(os.environ)
    env.update(
        ARTFS_STORE=store_url,
        ARTFS_CACHE=str(cache_dir),
        ARTFS_STATE=str(tmp_path / "state"),
        ARTFS_CONFIG=str(tmp_path / "config.toml"),
    )
    return env


@pytest.fixture
def api(
    store_url: str, cache_dir: Path, artfs_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> Api:
    monkeypatch.setenv("ARTFS_CONFIG", artfs_env["ARTFS_CONFIG"])
    return Api(store=store_url, cache=str(cache_dir))


@pytest.fixture
def run_artfs(artfs_env: dict[str, str]):
    """Run the real CLI: ``run_artfs("ls", check=True)`` -> CompletedProcess."""

    def run(
        *args: str,
        check: bool = True,
        input: str | None = None,
        env: dict[str, str] | None = None,
        timeout: float = 120,
    ) -> subprocess.CompletedProcess[str]:
        return artfs_cli(*args, env=env or artfs_env, timeout=timeout, check=check, input=input)

    return run
