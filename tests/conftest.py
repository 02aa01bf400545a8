"""Shared fixtures: real stores, real caches, the real CLI in a subprocess.

``store_url`` is parametrized over the store kinds in ``STORE_KINDS`` so a
test that takes it runs against every backend.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
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
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh store; after a test that passed, ``artfs check`` must find it consistent
    (as s3ql runs fsck after its tests). A test that leaves a store broken on purpose
    says so with ``@pytest.mark.store_left_inconsistent``."""
    if request.param == "local":
        url = str(tmp_path / "store")
    elif request.param == "s3":
        url = request.getfixturevalue("s3_url")
    else:
        raise AssertionError(f"unknown store kind {request.param}")
    yield url
    call = getattr(request.node, "rep_call", None)
    if call is None or not call.passed:
        return  # the test's own failure says more
    if request.node.get_closest_marker("store_left_inconsistent") is None:
        assert_store_consistent(url, tmp_path / "check-cache")


@pytest.fixture(autouse=True)
def _check_s3_store_after(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[None]:
    """The same check for a test that takes ``s3_url`` without ``store_url``."""
    names = request.fixturenames
    # Asked for here, so that it is torn down after this check.
    url = request.getfixturevalue("s3_url") if "s3_url" in names else None
    yield
    if url is None or "store_url" in names:
        return
    call = getattr(request.node, "rep_call", None)
    if call is None or not call.passed:
        return
    if request.node.get_closest_marker("store_left_inconsistent") is None:
        assert_store_consistent(url, tmp_path / "check-cache")


def assert_store_consistent(url: str, cache: Path) -> None:
    """``artfs check`` (in-process, without --read-data) of the store at ``url``."""
    from artfs.objects import open_store
    from artfs.repo import Repo
    from artfs.repo.check import check_store

    if "://" not in url and not Path(url).exists():
        return  # never written
    report = check_store(Repo.open(open_store(url), str(cache)))
    problems = [str(p) for p in report.problems if not p.repaired]
    assert not problems, "artfs check after the test: " + "; ".join(problems)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "store_left_inconsistent: the test breaks its store on purpose; skip the check"
    )


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    rep = outcome.get_result()
    if rep.when == "call":
        item.rep_call = rep  # type: ignore[attr-defined] - read by the store_url teardown


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
