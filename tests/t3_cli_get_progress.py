"""Progress by bytes: a `get` of one large file from S3 advances as its parts
arrive, through the cache's fetch hook, the API and the CLI's bar."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from artfs.api import Api
from tests.mounting import artfs_cli_on_tty
from tests.trees import make_tree

MiB = 1 << 20


def test_the_fetch_hook_counts_the_bytes_of_one_large_file(s3_url: str, tmp_path: Path) -> None:
    data = os.urandom(16 * MiB + 12345)
    Api(store=s3_url, cache=str(tmp_path / "c0")).put(
        [make_tree(tmp_path / "src", {"big.bin": data})], "proj/ds"
    )
    api = Api(store=s3_url, cache=str(tmp_path / "c1"))
    digest = next(d for _, _, d in api.artifact("proj/ds:v0").files())
    cache = api.repo.cache
    # 17 parts, more than the fetches that run at once (8 workers and the
    # caller): some parts arrive while others are still missing.
    cache.part_size = 1 * MiB
    calls: list[int] = []
    path = cache.ensure(digest, len(data), progress=calls.append)
    assert path.read_bytes() == data
    assert calls == sorted(set(calls)), calls  # strictly growing
    assert calls[-1] == len(data)
    assert any(0 < c < len(data) for c in calls), calls

    # The API's download (what `artfs get` calls): steps that add up to the file.
    api = Api(store=s3_url, cache=str(tmp_path / "c2"))
    api.repo.cache.part_size = 1 * MiB
    steps: list[int] = []
    out = api.artifact("proj/ds:v0").download(tmp_path / "out", progress=steps.append)
    assert (out / "big.bin").read_bytes() == data
    assert sum(steps) == len(data)
    assert len([s for s in steps if s > 0]) > 1, steps  # not one jump from 0 to 100%


def test_the_cli_bar_of_a_single_large_file_shows_intermediate_values(
    s3_url: str, tmp_path: Path
) -> None:
    # 10 parts of 8 MiB: more than the 9 fetches that run at once.
    data = os.urandom(80 * MiB)
    Api(store=s3_url, cache=str(tmp_path / "c0")).put(
        [make_tree(tmp_path / "src", {"big.bin": data})], "proj/ds"
    )
    # A fresh cache: every byte comes from the store. tqdm draws every update.
    env = dict(os.environ)
    env.update(
        ARTFS_STORE=s3_url,
        ARTFS_CACHE=str(tmp_path / "c1"),
        ARTFS_STATE=str(tmp_path / "state"),
        ARTFS_CONFIG=str(tmp_path / "config.toml"),
        TQDM_MININTERVAL="0",
        TQDM_MINITERS="1",
    )
    args = ["get", "proj/ds", "--root", str(tmp_path / "out"), "--json"]
    code, out, err = artfs_cli_on_tty(*args, env=env, timeout=120)
    assert code == 0, err
    # --json stays clean: stdout is the JSON document only.
    assert json.loads(out)["path"] == str(tmp_path / "out")
    assert (tmp_path / "out/big.bin").read_bytes() == data
    percents = {int(p) for p in re.findall(rb"get:\s+(\d+)%", err)}
    assert any(0 < p < 100 for p in percents), err.decode(errors="replace")[-2000:]
