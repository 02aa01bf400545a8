"""Faults between artfs and a real S3 server: a proxy on loopback that delays,
resets, answers 500, cuts bodies short, loses replies, or stays down.

The properties: a read returns the right bytes or fails (EIO in the mount),
never wrong bytes; a commit succeeds or fails cleanly, and nothing partial is
ever visible; a lost reply to a write that landed is not mistaken for a
conflict; a store that stays down fails within a bounded time.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest

from artfs.api import Api
from artfs.cache import BlobCache
from artfs.digest import digest_bytes
from artfs.objects import PreconditionFailed, StoreError
from artfs.objects.cloud import CloudStore
from artfs.repo import layout
from tests.faultproxy import FaultProxy, Faults
from tests.s3server import S3Server
from tests.trees import make_tree, read_tree

MiB = 1 << 20


def _blob(store: CloudStore, size: int, seed: int) -> tuple[str, bytes]:
    data = random.Random(seed).randbytes(size)
    digest = digest_bytes(data)
    store.put(layout.blob_key(digest), data)
    return digest, data


def test_reads_through_faults_give_the_right_bytes_or_an_error(
    s3server: S3Server, s3_url: str, tmp_path: Path
) -> None:
    clean = CloudStore(s3_url)
    blobs = [_blob(clean, 20 * MiB + i, seed=i) for i in range(2)]
    blobs += [_blob(clean, 50_000 + i, seed=10 + i) for i in range(6)]
    faults = Faults(error=0.1, reset=0.1, reset_body=0.15, delay=0.1, delay_seconds=0.2)
    outcomes = {"right": 0, "error": 0}
    with FaultProxy(s3server.port, faults, seed=1) as proxy:
        store = CloudStore(s3_url, {"endpoint": proxy.url, "timeout": 20})
        for round in range(3):
            cache = BlobCache(tmp_path / f"cache{round}", store, layout.blob_key)
            for digest, data in blobs:
                try:
                    reader = cache.open_reader(digest, len(data))
                except StoreError:
                    outcomes["error"] += 1
                    continue
                rng = random.Random(round)
                offsets = list(range(0, len(data), 1 * MiB))
                rng.shuffle(offsets)
                for off in offsets:
                    try:
                        got = reader.read(off, 1 * MiB)
                    except StoreError:
                        outcomes["error"] += 1
                        continue
                    assert got == data[off : off + 1 * MiB], "wrong bytes"
                    outcomes["right"] += 1
                reader.close()
        injected = dict(proxy.injected)
    print(outcomes, injected)
    assert injected["reset_body"] > 0 and injected["error"] > 0 and injected["reset"] > 0
    # Retries ride out a fault rate like this one: nearly every read succeeds.
    assert outcomes["right"] > 0.9 * (outcomes["right"] + outcomes["error"])


def test_a_download_cut_off_resumes_where_it_stopped(
    s3server: S3Server, s3_url: str, tmp_path: Path
) -> None:
    _, data = _blob(CloudStore(s3_url), 12 * MiB, seed=20)
    key = layout.blob_key(digest_bytes(data))
    faults = Faults(reset_body=1.0, limit=2, only_methods=frozenset({"GET"}))
    with FaultProxy(s3server.port, faults) as proxy:
        store = CloudStore(s3_url, {"endpoint": proxy.url})
        out = tmp_path / "out"
        with open(out, "wb") as f:
            assert store.download(key, f) == len(data)
        ranges = [r for m, _, r in proxy.requests if m == "GET"]
    assert out.read_bytes() == data
    assert proxy.injected["reset_body"] == 2
    assert ranges[0] is None and ranges[-1] is not None  # the last one resumed mid-object


def test_a_write_whose_reply_was_lost_is_not_a_conflict(s3server: S3Server, s3_url: str) -> None:
    faults = Faults(lost_reply=1.0, limit=1, only_methods=frozenset({"PUT"}))
    with FaultProxy(s3server.port, faults) as proxy:
        store = CloudStore(s3_url, {"endpoint": proxy.url})
        # The probe's first create-only put loses its reply: still no conflict.
        store.put("warm.json", b"{}")
        assert proxy.injected["lost_reply"] == 1
        proxy.set(limit=2)
        etag = store.put("versions/0.json", b'{"v": 0}', if_absent=True)
        assert proxy.injected["lost_reply"] == 2
        # The write landed, its reply was lost, the retry met our own object.
        assert proxy.count("PUT", "versions/0.json") >= 2
        assert store.head("versions/0.json").etag == etag
        # A real conflict is still one.
        with pytest.raises(PreconditionFailed):
            store.put("versions/0.json", b'{"v": "other"}', if_absent=True)
        proxy.set(limit=3)
        etag2 = store.put("versions/0.json", b'{"v": 1}', if_match=etag)
        assert proxy.injected["lost_reply"] == 3
        with pytest.raises(PreconditionFailed):
            store.put("versions/0.json", b'{"v": 2}', if_match=etag)
    assert CloudStore(s3_url).get("versions/0.json") == b'{"v": 1}'
    assert CloudStore(s3_url).head("versions/0.json").etag == etag2


def test_commits_through_faults_succeed_or_fail_cleanly(
    s3server: S3Server, s3_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    trees = [
        make_tree(
            tmp_path / f"t{i}",
            {
                "same.txt": "shared by every tree",
                f"own{i}.bin": random.Random(i).randbytes(300_000),
                "big.bin": random.Random(100 + i).randbytes(9 * MiB),
            },
        )
        for i in range(6)
    ]
    faults = Faults(
        error=0.05, reset=0.05, reset_body=0.05, lost_reply=0.1, delay=0.05, delay_seconds=0.2
    )
    committed: list[int] = []
    failed = 0
    with FaultProxy(s3server.port, faults, seed=3) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        monkeypatch.setenv("ARTFS_STORE_TIMEOUT", "15")
        monkeypatch.setenv("ARTFS_CONFIG", str(tmp_path / "none.toml"))
        api = Api(store=s3_url, cache=str(tmp_path / "cache"))
        for tree in trees:
            try:
                committed.append(api.put([tree], "proj/ds").version.number)
            except StoreError:
                failed += 1
        injected = dict(proxy.injected)
    print("committed", committed, "failed", failed, injected)
    assert injected["lost_reply"] > 0 and sum(injected.values()) >= 10
    assert committed, "no commit got through"

    # Seen from a clean client with a cold cache: every version is complete
    # and right, and no tree was committed twice (a lost reply is no conflict).
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3server.endpoint)
    reader = Api(store=s3_url, cache=str(tmp_path / "clean-cache"))
    versions = reader.artifact_versions("proj/ds")
    numbers = [v.record.number for v in versions]
    assert set(committed) <= set(numbers)
    want = {i: read_tree(t) for i, t in enumerate(trees)}
    seen = []
    for v in versions:
        got = read_tree(v.download(tmp_path / f"out{v.record.number}"))
        matches = [i for i, w in want.items() if w == got]
        assert len(matches) == 1, f"v{v.record.number} is no tree that was committed"
        seen.append(matches[0])
    assert len(seen) == len(set(seen))
    assert numbers == sorted(numbers) and len(numbers) == len(set(numbers))
    latest = reader.artifact("proj/ds:latest").record.number
    assert latest == max(numbers)


def test_a_store_that_stays_down_fails_in_bounded_time(
    s3server: S3Server, s3_url: str, tmp_path: Path
) -> None:
    digest, data = _blob(CloudStore(s3_url), 20 * MiB, seed=30)
    with FaultProxy(s3server.port) as proxy:
        store = CloudStore(s3_url, {"endpoint": proxy.url, "timeout": 3})
        cache = BlobCache(tmp_path / "cache", store, layout.blob_key)
        reader = cache.open_reader(digest, len(data))
        assert reader.read(0, 100) == data[:100]
        proxy.set(down=True)
        for what in (
            lambda: reader.read(17 * MiB, 100),  # a part not fetched (nor read ahead)
            lambda: store.get("anything"),
            lambda: store.list(""),
            lambda: store.put("k", b"v", if_absent=True),
        ):
            start = time.monotonic()
            with pytest.raises(StoreError):
                what()
            # The promise is a time bound (the 3 s timeout); 4x for a loaded machine.
            assert time.monotonic() - start < 12
        # Up again: the same reader carries on.
        proxy.set(down=False)
        assert reader.read(17 * MiB, 100) == data[17 * MiB : 17 * MiB + 100]
        reader.close()

        # A store that hangs (accepts, never answers) is bounded too.
        proxy.set(delay=1.0, delay_seconds=30)
        hung = CloudStore(s3_url, {"endpoint": proxy.url, "timeout": 2, "request_timeout": 1})
        start = time.monotonic()
        with pytest.raises(StoreError):
            hung.get("anything")
        assert time.monotonic() - start < 12

        # The CLI: a one-line error and a failing exit status, in bounded time.
        proxy.set(delay=0.0, down=True)
        env = dict(os.environ, AWS_ENDPOINT_URL=proxy.url, ARTFS_STORE_TIMEOUT="2")
        env.update(ARTFS_CACHE=str(tmp_path / "c"), ARTFS_CONFIG=str(tmp_path / "none.toml"))
        start = time.monotonic()
        proc = subprocess.run(
            [sys.executable, "-m", "artfs.cli", "--store", s3_url, "ls"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert time.monotonic() - start < 30
    assert proc.returncode != 0
    assert proc.stderr.strip().count("\n") == 0 and "failed after" in proc.stderr
