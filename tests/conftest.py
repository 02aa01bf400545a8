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
from tests.azureserver import az_url, azureserver  # noqa: F401 - fixtures
from tests.gcsserver import gcs_url, gcsserver  # noqa: F401 - fixtures
from tests.mounting import artfs_cli
from tests.s3server import s3_url, s3server, ttfb_store  # noqa: F401 - fixtures

# Every test taking ``store_url`` runs on a local directory and on S3 (SeaweedFS
# on loopback); the tests of the modules in CLOUD_MODULES run on GCS
# (fake-gcs-server) and Azure (Azurite) too: the registry rules, concurrency,
# gc, the store interface and the mounts, chosen to keep the suite's time in
# bounds. ARTFS_TEST_STORES names the kinds every such test runs on instead
# (e.g. "local" for a quick loop, "gs,az" for the new services everywhere).
# A test about the local directory itself (paths, inodes) pins its kind with
# @pytest.mark.parametrize("store_url", ["local"], indirect=True).
STORE_KINDS = os.environ.get("ARTFS_TEST_STORES", "local,s3").split(",")
MORE_KINDS = [] if os.environ.get("ARTFS_TEST_STORES") else ["gs", "az"]
CLOUD_MODULES = {
    "test_local_store",  # the store interface: create-only, compare-and-swap, listing
    "test_repo",  # registry rules, concurrent commits and alias moves
    "test_gc",  # the gc protocol
    "test_aliases_mount",  # mounts
    "test_staging_mount",
}
_STORE_FIXTURES = {"local": None, "s3": "s3_url", "gs": "gcs_url", "az": "az_url"}


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "store_url" not in metafunc.fixturenames:
        return
    for marker in metafunc.definition.iter_markers("parametrize"):
        names = marker.args[0]
        if "store_url" in (names.split(",") if isinstance(names, str) else names):
            return  # the test pinned its kinds
    kinds = list(STORE_KINDS)
    if metafunc.module.__name__.rpartition(".")[2] in CLOUD_MODULES:
        kinds += [k for k in MORE_KINDS if k not in kinds]
    metafunc.parametrize("store_url", kinds, indirect=True)


@pytest.fixture
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    kind = request.param
    if kind not in _STORE_FIXTURES:
        raise AssertionError(f"unknown store kind {kind}")
    if kind == "local":
        return str(tmp_path / "store")
    return request.getfixturevalue(_STORE_FIXTURES[kind])


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
