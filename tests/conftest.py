"""Shared fixtures: real stores, real caches, the real CLI in a subprocess.

``store_url`` is parametrized over the store kinds in ``STORE_KINDS`` so a
test that takes it runs against every backend.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from artfs.api import Api
from tests.azureserver import az_refs_container, az_url, azureserver  # noqa: F401 - fixtures
from tests.gcsserver import gcs_refs_bucket, gcs_url, gcsserver  # noqa: F401 - fixtures
from tests.mounting import artfs_cli
from tests.s3server import refs_bucket, s3_url, s3server, ttfb_store  # noqa: F401 - fixtures

# Every test taking ``store_url`` runs on a local directory and on S3 (SeaweedFS
# on loopback); the tests chosen in CLOUD_TESTS run on GCS (fake-gcs-server)
# and Azure (Azurite) too: the store interface, registry rules, concurrency,
# gc and the mounts, a choice that keeps the suite's time in bounds (the
# probe, fault, lazy-read and two-daemon tests of every service are in
# t1_objects_cloud.py). ARTFS_TEST_STORES names the kinds every such test
# runs on instead (e.g. "local" for a quick loop, "gs,az" for the new
# services everywhere).
# A test about the local directory itself (paths, inodes) pins its kind with
# @pytest.mark.parametrize("store_url", ["local"], indirect=True).
STORE_KINDS = os.environ.get("ARTFS_TEST_STORES", "local,s3").split(",")
MORE_KINDS = [] if os.environ.get("ARTFS_TEST_STORES") else ["gs", "az"]
# Module -> the tests in it that also run on gs and az (None: all of them).
CLOUD_TESTS: dict[str, set[str] | None] = {
    "t1_objects_store": None,  # the store interface: create-only, compare-and-swap, listing
    "t2_repo_registry": None,  # registry rules, concurrent commits and alias moves
    "t2_repo_gc": None,  # the gc protocol
    "t4_mount_aliases": None,  # alias links through the mount
    "t4_mount_staging": {  # commits through the mount (the rest is local staging)
        "test_tools_write_and_touch_commits",
        "test_base_commit_stores_only_new_content",
        "test_two_daemons_commit_one_artifact_at_once",
        "test_mv_of_a_base_directory",
        "test_bad_metadata_fails_the_touch_and_keeps_staging",
    },
    "t4_mount_read": {  # reads through the mount
        "test_tools_read_a_version_like_its_source",
        "test_latest_follows_a_put_from_another_process",
        "test_concurrent_readers_of_an_uncached_blob_make_one_fetch",
        "test_numpy_memmap_and_read_ahead",
        "test_missing_blob_gives_eio",
        "test_a_corrupt_blob_gives_eio_for_that_file_only",
    },
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
    module = metafunc.module.__name__.rpartition(".")[2]
    if module in CLOUD_TESTS:
        chosen = CLOUD_TESTS[module]
        if chosen is None or metafunc.function.__name__ in chosen:
            kinds += [k for k in MORE_KINDS if k not in kinds]
    metafunc.parametrize("store_url", kinds, indirect=True)


@pytest.fixture
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh store; after a test that passed, ``artfs check`` must find it consistent
    (as s3ql runs fsck after its tests). A test that leaves a store broken on purpose
    says so with ``@pytest.mark.store_left_inconsistent``."""
    kind = request.param
    if kind not in _STORE_FIXTURES:
        raise AssertionError(f"unknown store kind {kind}")
    fixture = _STORE_FIXTURES[kind]
    url = str(tmp_path / "store") if fixture is None else request.getfixturevalue(fixture)
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
    if not hasattr(config, "workerinput"):  # once, in the process that starts the workers
        _compile_sources()


def _compile_sources() -> None:
    """Byte-compile artfs and tests once per run. The suite starts the CLI and the
    daemon as ``python -m artfs.cli`` in a subprocess again and again; where
    PYTHONDONTWRITEBYTECODE is set (as on machines that keep checkouts clean of
    __pycache__) no process writes a .pyc and each of them compiles all of artfs
    again (a third of its start-up CPU). A .pyc is still read when there, and
    checked against its source's mtime, so an edit is never run stale."""
    import compileall

    root = Path(__file__).resolve().parent.parent
    for package in ("artfs", "tests"):
        compileall.compile_dir(root / package, quiet=1)


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Make ``--dist loadgroup`` keep an ``xdist_group`` on one worker under pytest 9.
    xdist 3.8 names the group in the test's id by setting ``item._nodeid``, which
    pytest 9 no longer reads (the id is ``item._id``), so without this each test
    of a group goes to whichever worker is free and the group's shared session
    fixture (the 2.5 GiB TTFB blob) is made once per worker."""
    if not getattr(config.option, "loadgroup", False):
        return  # not an xdist worker under --dist loadgroup
    from _pytest.nodeid import coerce_node_id

    for item in items:
        groups = {
            str(m.args[0] if m.args else m.kwargs.get("name", "default"))
            for m in item.iter_markers("xdist_group")
        }
        if groups and "@" not in item.nodeid and hasattr(item, "_id"):
            item._id = coerce_node_id(f"{item.nodeid}@{'_'.join(sorted(groups))}")


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


@pytest.fixture
def new_mount(
    store_url: str, cache_dir: Path, artfs_env: dict[str, str], tmp_path: Path
) -> Iterator[Callable[..., Any]]:
    """``new_mount(*options, **overrides)`` -> a Mount of this test's store, cache,
    state and environment on a fresh mountpoint (``mounting.mount_factory``); all
    unmounted at the end of the test, before its store is checked."""
    from tests.mounting import mount_factory

    state_dir = tmp_path / "state"
    with mount_factory(
        tmp_path, store_url, cache_dir=cache_dir, state_dir=state_dir, env=artfs_env
    ) as mount:
        yield mount
