"""The read-ahead's trigger and failure rules (artfs/cache/prefetch.py), in
process on a real local store and cache, fed the opens a walk makes."""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from artfs.api import Api
from artfs.cache.prefetch import FIRST_WINDOW, START, Listing, Prefetcher
from artfs.cache.store import NEAR_LIMIT
from artfs.config import load_settings
from artfs.manifest import Manifest
from artfs.repo.layout import blob_key
from tests.trees import make_tree


def _listing(manifest: Manifest, parent: int) -> Listing:
    def listing(after: int, count: int) -> list[tuple[int, str | None, int]]:
        rows = manifest.children(parent, after, count)
        return [(e.id, e.digest if e.is_file and e.size else None, e.size) for e in rows]

    return listing


def _idle(p: Prefetcher) -> dict:
    deadline = time.monotonic() + 30
    while (s := p.stats())["queued"] or s["running"]:
        assert time.monotonic() < deadline, s
        time.sleep(0.01)
    return s


@pytest.fixture
def walk(tmp_path: Path) -> Iterator[tuple[Api, Manifest, Prefetcher]]:
    files = {f"d/a{i:02d}.txt": f"a {i}\n" for i in range(10)}
    files |= {f"d/m/x{i:02d}.txt": f"x {i}\n" for i in range(30)}  # between a* and z*
    files |= {f"d/z{i:02d}.txt": f"z {i}\n" for i in range(10)}
    api = Api(store=str(tmp_path / "store"), cache=str(tmp_path / "cache"))
    api.put([make_tree(tmp_path / "src", files)], "proj/ds")
    manifest = api.repo.manifest(api.repo.version("proj", "ds", 0))
    p = Prefetcher(Api(store=str(tmp_path / "store"), cache=str(tmp_path / "c2")).repo.cache)
    try:
        yield api, manifest, p
    finally:
        p.close()


def _open(p: Prefetcher, manifest: Manifest, path: str) -> None:
    e = manifest.lookup(path)
    assert e is not None
    p.opened(e.parent, e.id, _listing(manifest, e.parent), first=e.id == e.parent + 1)
    _idle(p)


def test_a_walk_past_a_subdirectory_stays_in_order(walk) -> None:
    """tar goes into ``d/m`` between ``d/a09`` and ``d/z00``: ids jump by the
    subdirectory's whole tree, but ``d/z00`` is the next file of ``d``'s
    listing, so ``d``'s read-ahead goes on instead of starting over."""
    _, manifest, p = walk
    for i in range(10):
        _open(p, manifest, f"d/a{i:02d}.txt")
    for i in range(30):
        _open(p, manifest, f"d/m/x{i:02d}.txt")
    for i in range(10):
        _open(p, manifest, f"d/z{i:02d}.txt")
    s = _idle(p)
    assert s["starts"] == 2, s  # d and d/m, each once
    # Everything but the first START opens of each directory was made ready ahead.
    assert s["verified"] == 50 - 2 * 2, s


@pytest.mark.store_left_inconsistent  # a blob is deleted from the store on purpose
def test_a_failed_read_ahead_is_only_logged_at_debug_level(
    walk, caplog: pytest.LogCaptureFixture
) -> None:
    api, manifest, p = walk
    missing = manifest.lookup("d/a05.txt")
    assert missing is not None and missing.digest is not None
    path = api.repo.store.local_path(blob_key(missing.digest))
    assert path is not None
    path.unlink()
    with caplog.at_level(logging.DEBUG, logger="artfs"):
        for i in range(5):
            _open(p, manifest, f"d/a{i:02d}.txt")
    s = _idle(p)
    assert s["failed"] == 1 and s["verified"] >= 4, s
    failures = [r for r in caplog.records if missing.digest in r.getMessage()]
    assert failures and all(r.levelno == logging.DEBUG for r in failures)


def test_a_walk_in_order_reads_the_next_directory_ahead(tmp_path: Path) -> None:
    """At the end of ``d0``'s listing, the first files of ``d1`` (where the
    walk goes next) are made ready before any of them is opened."""
    files = {f"d{k}/f{i:02d}.txt": f"{k} {i}\n" for k in range(3) for i in range(20)}
    api = Api(store=str(tmp_path / "store"), cache=str(tmp_path / "cache"))
    api.put([make_tree(tmp_path / "src", files)], "proj/ds")
    manifest = api.repo.manifest(api.repo.version("proj", "ds", 0))
    p = Prefetcher(api.repo.cache)

    def next_dir_of(parent: int):
        def next_dir():
            here = manifest.entry(parent)
            assert here is not None
            for e in manifest.children(here.parent, here.id, 16):
                if e.is_dir:
                    return e.id, e.id, _listing(manifest, e.id)
            return None

        return next_dir

    def open_(path: str) -> None:
        e = manifest.lookup(path)
        assert e is not None
        listing = _listing(manifest, e.parent)
        p.opened(e.parent, e.id, listing, e.id == e.parent + 1, next_dir_of(e.parent))
        _idle(p)

    try:
        for i in range(20):
            open_(f"d0/f{i:02d}.txt")
        s = _idle(p)
        assert s["chained"] == 1, s
        # d0 past its first START files, and a first window of d1.
        assert s["verified"] - (20 - START) >= FIRST_WINDOW, s
        for i in range(20):
            open_(f"d1/f{i:02d}.txt")
        s = _idle(p)
        assert s["chained"] == 2 and s["verified"] - (20 - START) - 20 >= FIRST_WINDOW, s
        d1 = [(d, n) for path, n, d in api.artifact("proj/ds:v0").files() if path[:3] == "d1/"]
        assert len(d1) == 20
        assert all(api.repo.cache.warm(d, n) == "ready" for d, n in d1)  # all verified before
    finally:
        p.close()


def test_read_ahead_stops_near_the_cache_size_limit(
    s3_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On an object store read-ahead fetches into the cache only while the
    cache stays under NEAR_LIMIT of its size (fetches in flight included):
    it never makes it evict."""
    files = {f"d/f{i:02d}.bin": hashlib.shake_256(b"%d" % i).digest(1000) for i in range(40)}
    api = Api(store=s3_url, cache=str(tmp_path / "put-cache"))
    api.put([make_tree(tmp_path / "src", files)], "proj/ds")
    manifest = api.repo.manifest(api.repo.version("proj", "ds", 0))
    monkeypatch.setenv("ARTFS_CONFIG", str(tmp_path / "config.toml"))
    monkeypatch.setenv("ARTFS_CACHE_SIZE", "20KB")
    cache = Api(settings=load_settings(s3_url, str(tmp_path / "cold"))).repo.cache
    assert cache.max_bytes == 20 * 1024
    p = Prefetcher(cache)
    try:
        for i in range(40):
            _open(p, manifest, f"d/f{i:02d}.bin")
        s = _idle(p)
    finally:
        p.close()
    room = int(cache.max_bytes * NEAR_LIMIT) // 1000
    assert s["fetched"] == room and s["full"] == 40 - START - room, s
    assert cache.size() == room * 1000  # nothing evicted, nothing past the limit
