"""The cache stays within its size limit, evicting least recently used blobs."""

from __future__ import annotations

import os
from pathlib import Path

from artfs.api import Api
from artfs.config import load_settings
from tests.trees import make_tree, read_tree


def test_cache_is_kept_under_cache_size_and_gets_stay_whole(
    store_url: str, cache_dir: Path, tmp_path: Path, monkeypatch
) -> None:
    files = {f"f{i}.bin": os.urandom(100_000) for i in range(10)}
    src = make_tree(tmp_path / "src", files)
    monkeypatch.setenv("ARTFS_CONFIG", str(tmp_path / "config.toml"))
    monkeypatch.setenv("ARTFS_CACHE_SIZE", "350KB")
    api = Api(settings=load_settings(store_url, str(cache_dir)))
    assert api.repo.cache.max_bytes == 350 * 1024
    api.put([src], "proj/ds")
    api.repo.cache.cleanup(0)  # start cold: every blob comes from the store

    # Links come from the cache on every store kind (a copy from a local
    # store reads the store's own file and needs no cache).
    out = api.artifact("proj/ds:v0").download(tmp_path / "out", link=True)
    # Eviction never takes bytes from a download in progress: the copy is whole.
    assert read_tree(out) == read_tree(src)
    assert api.repo.cache.size() <= 350 * 1024
    assert api.repo.cache.fetches >= 10  # one manifest + ten files came through the cache

    # The most recently used blobs are the ones kept.
    newest = max(files, key=lambda n: (out / n).stat().st_mtime_ns)
    digest = next(d for p, _, d in api.artifact("proj/ds:v0").files() if p == newest)
    assert api.repo.cache.has(digest)


def test_no_limit_keeps_everything(api, tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src", {f"f{i}": os.urandom(50_000) for i in range(4)})
    api.put([src], "proj/ds")
    api.repo.cache.cleanup(0)
    api.artifact("proj/ds").download(tmp_path / "out", link=True)
    assert api.repo.cache.max_bytes is None
    assert api.repo.cache.size() >= 4 * 50_000
