"""Lazy ranged reads of large blobs from S3 through the cache (BlobCache.open_reader).

Requests are counted by a pass-through proxy between artfs and SeaweedFS,
so "fetched once" and "only the part it needs" are measured on the wire.
"""

from __future__ import annotations

import os
import random
import threading
import time
from pathlib import Path

import pytest

from artfs.cache import PART_SIZE, BlobCache, BlobError, LazyBlobReader
from artfs.digest import digest_bytes
from artfs.objects.cloud import CloudStore
from artfs.repo import layout
from tests.faultproxy import FaultProxy
from tests.s3server import BIG_SIZE, SMALL_SIZE, S3Server, TtfbStore

MiB = 1 << 20


@pytest.fixture
def proxy(s3server: S3Server):
    with FaultProxy(s3server.port) as p:
        yield p


@pytest.fixture
def store(proxy: FaultProxy, s3_url: str) -> CloudStore:
    return CloudStore(s3_url, {"endpoint": proxy.url})


def _blob(store: CloudStore, size: int, seed: int = 1) -> tuple[str, bytes]:
    data = random.Random(seed).randbytes(size)
    digest = digest_bytes(data)
    store.put(layout.blob_key(digest), data)
    return digest, data


def _part_gets(proxy: FaultProxy, digest: str) -> list[str]:
    """Range headers of the GETs of ``digest``'s blob (its key is URL-encoded)."""
    hexpart = digest.partition(":")[2]
    return sorted(r for m, p, r in proxy.requests if m == "GET" and hexpart in p and r)


def _wait_until(cond, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_a_read_waits_only_for_the_part_it_needs(
    store: CloudStore, proxy: FaultProxy, tmp_path: Path
) -> None:
    digest, data = _blob(store, 40 * MiB)
    cache = BlobCache(tmp_path / "cache", store, layout.blob_key)
    proxy.clear()
    reader = cache.open_reader(digest, len(data))
    assert isinstance(reader, LazyBlobReader)
    offset = 2 * PART_SIZE + 12345
    assert reader.read(offset, 1000) == data[offset : offset + 1000]
    # One ranged GET, of the one part the read touched; no whole-object GET.
    assert _part_gets(proxy, digest) == [f"bytes={2 * PART_SIZE}-{3 * PART_SIZE - 1}"]
    assert proxy.count("GET", digest.partition(":")[2]) == 1
    sparse = cache.root / "partial" / digest
    assert os.stat(sparse).st_blocks * 512 <= PART_SIZE + MiB
    assert not cache.has(digest)
    # A read across a part boundary waits for both parts, fetches only the new one.
    edge = 3 * PART_SIZE - 10
    assert reader.read(edge, 20) == data[edge : edge + 20]
    assert proxy.count("GET", digest.partition(":")[2]) == 2
    reader.close()


def test_sequential_reading_reads_ahead_and_ends_as_a_verified_cached_blob(
    store: CloudStore, proxy: FaultProxy, tmp_path: Path
) -> None:
    digest, data = _blob(store, 40 * MiB + 5)
    cache = BlobCache(tmp_path / "cache", store, layout.blob_key)
    proxy.clear()
    reader = cache.open_reader(digest, len(data))
    for off in range(0, MiB, 128 << 10):  # the first MiB, as the kernel would read it
        assert reader.read(off, 128 << 10) == data[off : off + (128 << 10)]
    # Readahead alone brings in every part of this 6-part blob ...
    nparts = -(-len(data) // PART_SIZE)
    _wait_until(lambda: cache.part_fetches == nparts)
    # ... and the complete blob is verified and becomes an ordinary cached blob.
    _wait_until(lambda: cache.has(digest))
    assert cache.path(digest).read_bytes() == data
    assert not (cache.root / "partial" / digest).exists()
    assert not (cache.root / "partial" / f"{digest}.parts").exists()
    assert cache.fetches == 1
    got = bytearray()
    off = 0
    while chunk := reader.read(off, 1 << 20):
        got += chunk
        off += len(chunk)
    assert bytes(got) == data
    assert len(_part_gets(proxy, digest)) == nparts  # every part fetched exactly once
    reader.close()
    # The next open reads the cached blob: no request at all.
    proxy.clear()
    again = cache.open_reader(digest, len(data))
    assert again.read(len(data) - 5, 10) == data[-5:]
    again.close()
    assert proxy.count() == 0


def test_many_readers_of_one_blob_share_part_fetches(
    store: CloudStore, proxy: FaultProxy, tmp_path: Path
) -> None:
    digest, data = _blob(store, 32 * MiB, seed=3)
    cache = BlobCache(tmp_path / "cache", store, layout.blob_key)
    proxy.clear()
    barrier = threading.Barrier(8)
    results: list[object] = [None] * 8

    def read_all(i: int) -> None:
        try:
            reader = cache.open_reader(digest, len(data))
            barrier.wait()
            rng = random.Random(i)
            chunks = {}
            offsets = list(range(0, len(data), 256 << 10))
            if i % 2:
                rng.shuffle(offsets)  # half the readers read in random order
            for off in offsets:
                chunks[off] = reader.read(off, 256 << 10)
            reader.close()
            results[i] = b"".join(chunks[o] for o in sorted(chunks)) == data
        except BaseException as e:
            results[i] = e

    threads = [threading.Thread(target=read_all, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert results == [True] * 8
    gets = _part_gets(proxy, digest)
    assert len(gets) == len(set(gets)) == 4  # each of the 4 parts once, for 8 readers
    _wait_until(lambda: cache.has(digest))
    assert cache.fetches == 1


def test_a_partly_fetched_blob_survives_a_restart(
    store: CloudStore, proxy: FaultProxy, tmp_path: Path
) -> None:
    digest, data = _blob(store, 40 * MiB, seed=4)
    first = BlobCache(tmp_path / "cache", store, layout.blob_key)
    reader = first.open_reader(digest, len(data))
    for part in (0, 3):  # random reads: no readahead
        off = part * PART_SIZE + 100
        assert reader.read(off, 100) == data[off : off + 100]
    reader.close()
    del first, reader

    proxy.clear()
    restarted = BlobCache(tmp_path / "cache", store, layout.blob_key)
    path = restarted.ensure(digest)  # no size given: the record on disk says it
    assert path.read_bytes() == data
    fetched = _part_gets(proxy, digest)
    assert fetched == sorted(
        f"bytes={p * PART_SIZE}-{min((p + 1) * PART_SIZE, len(data)) - 1}" for p in (1, 2, 4)
    )
    assert restarted.fetches == 1


def test_a_blob_that_fails_its_digest_is_discarded_and_reads_fail(
    store: CloudStore, tmp_path: Path
) -> None:
    data = random.Random(5).randbytes(20 * MiB)
    digest = digest_bytes(data)
    evil = bytearray(data)
    evil[-1] ^= 0xFF  # same size, one byte differs, in the last part
    store.put(layout.blob_key(digest), bytes(evil))
    cache = BlobCache(tmp_path / "cache", store, layout.blob_key)
    reader = cache.open_reader(digest, len(data))
    assert reader.read(0, 100) == data[:100]  # the first part is the same bytes
    # Reading the rest completes the blob; it fails verification once complete.
    reader.read(len(data) - 10, 10)
    _wait_until(lambda: not (cache.root / "partial" / digest).exists())
    with pytest.raises(BlobError, match="corrupt"):
        reader.read(0, 100)
    reader.close()
    assert not cache.has(digest)
    assert not (cache.root / "partial" / f"{digest}.parts").exists()
    with pytest.raises(BlobError, match="corrupt"):
        cache.ensure(digest, len(data))
    assert not cache.has(digest)


def test_a_blob_shorter_in_the_store_than_its_size_fails(store: CloudStore, tmp_path: Path) -> None:
    digest, data = _blob(store, 12 * MiB, seed=6)
    cache = BlobCache(tmp_path / "cache", store, layout.blob_key)
    reader = cache.open_reader(digest, 20 * MiB)  # the manifest says 20 MiB
    assert reader.read(0, 10) == data[:10]
    with pytest.raises(BlobError, match="not 20971520 bytes"):
        reader.read(12 * MiB, 10)
    reader.close()
    missing = cache.open_reader("xxh128:" + "0" * 32, 20 * MiB)
    with pytest.raises(BlobError, match="missing"):
        missing.read(0, 10)
    missing.close()


def test_cleanup_keeps_a_partial_blob_while_it_is_open(store: CloudStore, tmp_path: Path) -> None:
    digest, data = _blob(store, 20 * MiB, seed=7)
    cache = BlobCache(tmp_path / "cache", store, layout.blob_key)
    reader = cache.open_reader(digest, len(data))
    reader.read(PART_SIZE, 10)
    assert cache.size() >= PART_SIZE
    result = cache.cleanup(0)
    assert result.pinned == 1 and result.removed == 0
    assert (cache.root / "partial" / digest).exists()
    reader.close()
    result = cache.cleanup(0)
    assert result.removed == 1 and cache.size() == 0
    assert not (cache.root / "partial" / f"{digest}.parts").exists()


def _gets_for_the_first_byte(
    url: str, proxy: FaultProxy, digest: str, size: int, cache_dir: Path
) -> list[str | None]:
    """The GETs of the blob made by the time a cold read in its middle returns:
    their Range headers (None: the whole object)."""
    cache = BlobCache(cache_dir, CloudStore(url, {"endpoint": proxy.url}), layout.blob_key)
    proxy.clear()
    reader = cache.open_reader(digest, size)
    first = reader.read(size // 2, 4096)
    hexpart = digest.partition(":")[2]
    gets = [r for m, p, r in proxy.requests if m == "GET" and hexpart in p]
    assert len(first) == 4096
    reader.close()
    return gets


# One worker runs both TTFB tests, so the 2.5 GiB upload is made once a run.
@pytest.mark.xdist_group("ttfb_store")
def test_the_first_byte_costs_one_part_whatever_the_file_size(
    ttfb_store: TtfbStore, proxy: FaultProxy, tmp_path: Path
) -> None:
    """A cold read waits for the one part it touches, of a 40 MiB file as of a
    64x larger one: counted on the wire, not timed (bench_s3 times it)."""
    for size, digest in ((SMALL_SIZE, ttfb_store.small_digest), (BIG_SIZE, ttfb_store.big_digest)):
        part = (size // 2) // PART_SIZE
        want = f"bytes={part * PART_SIZE}-{(part + 1) * PART_SIZE - 1}"
        gets = _gets_for_the_first_byte(ttfb_store.url, proxy, digest, size, tmp_path / str(size))
        assert gets == [want], (size, gets)


def test_a_download_of_a_large_file_fetches_its_parts_in_parallel(
    proxy: FaultProxy, s3_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from artfs.api import Api
    from tests.trees import make_tree, read_tree

    src = make_tree(tmp_path / "src", {"big.bin": random.Random(8).randbytes(30 * MiB)})
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
    Api(store=s3_url, cache=str(tmp_path / "c1")).put([src], "proj/ds")
    proxy.clear()
    out = (
        Api(store=s3_url, cache=str(tmp_path / "c2"))
        .artifact("proj/ds:v0")
        .download(tmp_path / "out")
    )
    assert read_tree(out) == read_tree(src)
    digest = digest_bytes((src / "big.bin").read_bytes())
    assert len(_part_gets(proxy, digest)) == 4  # 30 MiB in 8 MiB ranged GETs
    assert proxy.max_inflight > 1
