"""Read-ahead of small files opened in listing order (artfs/cache/prefetch.py),
through real mounts on a local store and on S3: it starts only for opens in
order, makes the next opens answerable on the event loop, stays within its
bounds, and never serves a blob damaged after it was read ahead."""

from __future__ import annotations

import errno
import hashlib
import itertools
import time
from pathlib import Path
from typing import Any

import pytest

from artfs.api import Api
from artfs.cache import prefetch
from artfs.repo.layout import blob_key
from tests.mounting import Mount
from tests.trees import damage_in_place, make_tree


def _files(dirs: dict[str, int]) -> dict[str, bytes]:
    """Distinct small files: ``count`` in each directory ``name``."""
    out = {}
    for name, count in dirs.items():
        for i in range(count):
            seed = f"{name}/{i}".encode()
            out[f"{name}/f{i:03d}.bin"] = hashlib.shake_256(seed).digest(1000 + 37 * i)
    return out


def _prefetch(m: Mount) -> dict[str, Any]:
    return m.stats()["prefetch"]


def _settle(m: Mount, running: int = 0) -> dict[str, Any]:
    """Wait until read-ahead has ``running`` warms in progress and nothing else queued."""
    deadline = time.monotonic() + 60
    while True:
        pf = _prefetch(m)
        if pf["running"] == running and (running or pf["queued"] == 0):
            return pf
        assert time.monotonic() < deadline, f"read-ahead never settled: {pf}"
        time.sleep(0.01)


def _put(api: Api, tmp_path: Path, files: dict[str, bytes]) -> None:
    api.put([make_tree(tmp_path / "src", files)], "proj/ds")


def test_small_files_opened_in_listing_order_are_read_ahead(
    api: Api, store_url: str, tmp_path: Path, new_mount
) -> None:
    """``tar`` reads a directory in listing order: after the first few opens,
    the next files are made ready ahead (verified, or fetched into the cache)
    and their opens are answered on the event loop, with the same bytes; no
    blob is hashed or fetched twice for it."""
    files = _files({"d": 200})
    _put(api, tmp_path, files)
    m = new_mount(cache_dir=tmp_path / "cold")  # nothing of the version cached yet
    d = m.path / "proj/ds/v0/d"
    names = sorted(p.name for p in d.iterdir())
    before = m.stats()
    for name in names:
        assert (d / name).read_bytes() == files[f"d/{name}"]
        _settle(m)  # read-ahead is ahead of the next open: the test does not race it
    after = m.stats()
    pf = after["prefetch"]
    assert pf["starts"] == 1
    # The first entry counts as in order: the opens before START-th are not read ahead.
    ahead = len(names) - prefetch.START
    kind = "fetched" if store_url.startswith("s3://") else "verified"
    assert pf[kind] == ahead
    # A parallel test's drop_caches may evict a few warmed pages: most, not all.
    assert after["opens_now"] - before["opens_now"] >= ahead * 0.8
    if kind == "fetched":
        assert after["fetches"] - before["fetches"] == len(names)  # one each: single flight
    else:
        assert after["verified_blobs"] - before["verified_blobs"] == len(names)


def test_opens_out_of_listing_order_start_no_read_ahead(
    api: Api, tmp_path: Path, new_mount
) -> None:
    files = _files({"d": 200})
    _put(api, tmp_path, files)
    m = new_mount(cache_dir=tmp_path / "cold")
    d = m.path / "proj/ds/v0/d"
    names = sorted(p.name for p in d.iterdir())
    order = [(i * 37) % len(names) for i in range(len(names))]  # every file, none near the last
    assert sorted(order) == list(range(len(names)))
    assert not any(0 < b - a <= prefetch.NEAR for a, b in itertools.pairwise(order))
    for i in order:
        assert (d / names[i]).read_bytes() == files[f"d/{names[i]}"]
    pf = _prefetch(m)
    assert pf.get("starts", 0) == 0 and pf.get("planned", 0) == 0, pf


@pytest.mark.store_left_inconsistent  # a local store's blob is damaged on purpose
def test_a_blob_damaged_after_its_read_ahead_is_never_served(
    api: Api, store_url: str, tmp_path: Path, new_mount
) -> None:
    """Read-ahead serves nothing: the open of a file read ahead still checks
    its blob's stamp, so one damaged after it was made ready is EIO (the
    store's own file) or fetched again (the cache's entry)."""
    files = _files({"d": 40})
    _put(api, tmp_path, files)
    cold = tmp_path / "cold"
    m = new_mount(cache_dir=cold, allowed_errors=["is corrupt", "changed"])
    d = m.path / "proj/ds/v0/d"
    for i in range(10):
        assert (d / f"f{i:03d}.bin").read_bytes() == files[f"d/f{i:03d}.bin"]
    _settle(m)
    victim = "f012.bin"
    digest = {p: dg for p, _, dg in api.artifact("proj/ds:v0").files()}[f"d/{victim}"]
    local = not store_url.startswith("s3://")
    if local:
        target = api.repo.store.local_path(blob_key(digest))
        assert m.stats()["verified_blobs"] >= 13  # f000 .. f012: read ahead in order
    else:
        target = Api(store=store_url, cache=str(cold)).repo.cache.path(digest)
        assert target.exists()  # fetched by read-ahead: no open asked for it
    assert target is not None
    damage_in_place(target, offset=7)
    before = m.stats()
    try:
        got = (d / victim).read_bytes()
    except OSError as e:
        assert e.errno == errno.EIO
        assert local, "a damaged cache entry is fetched again from the store"
        assert f"blob {digest} is corrupt" in m.log_text()
    else:
        assert not local and got == files[f"d/{victim}"]
        after = _settle(m) and m.stats()  # the open read further ahead: not counted
        by_opens = after["fetches"] - after["prefetch"]["fetched"]
        assert by_opens == before["fetches"] - before["prefetch"]["fetched"] + 1
    assert (d / "f013.bin").read_bytes() == files["d/f013.bin"]


def test_read_ahead_stays_within_its_bounds(
    api: Api, store_url: str, tmp_path: Path, new_mount, artfs_env: dict[str, str]
) -> None:
    """With every warm held at a pause point, opens still work (read-ahead
    never blocks them), a directory is planned at most its window past its
    last open, at most its workers' count of warms run and at most MAX_QUEUED are queued."""
    files = _files({"a": 100, "b": 100, "c": 100})
    _put(api, tmp_path, files)
    gate = tmp_path / "go"
    env = {**artfs_env, "ARTFS_TEST_PAUSE_PREFETCH": str(gate)}
    m = new_mount(cache_dir=tmp_path / "cold", env=env)
    try:
        root = m.path / "proj/ds/v0"
        for top in "abc":
            list((root / top).iterdir())
        opened = 10
        for i in range(opened):
            assert (root / f"a/f{i:03d}.bin").read_bytes() == files[f"a/f{i:03d}.bin"]
        pf = _prefetch(m)
        # Planned from the START-th open on (the first entry counts as in order),
        # never more than the window past the last open.
        assert pf["planned"] <= opened - prefetch.START + prefetch.window(opened)
        assert pf["planned"] >= prefetch.window(opened)
        for name, data in files.items():  # all three directories, in order
            assert (root / name).read_bytes() == data
        workers = pf["workers"]
        remote = store_url.startswith("s3://")
        assert workers == (prefetch.REMOTE_WORKERS if remote else prefetch.WORKERS)
        pf = _settle(m, running=workers)  # each worker held at the pause point
        assert pf["max_running"] == workers
        assert pf["max_queued"] == prefetch.MAX_QUEUED == pf["planned"]
        assert pf["queued"] <= prefetch.MAX_QUEUED
    finally:
        gate.write_text("")
    pf = _settle(m)
    assert pf["max_running"] == workers and pf["max_queued"] == prefetch.MAX_QUEUED
    assert (root / "c/f099.bin").read_bytes() == files["c/f099.bin"]
