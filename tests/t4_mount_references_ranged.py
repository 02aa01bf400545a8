"""Large reference entries read through the mount by ranged GETs, part by part.

A reference larger than one part (PART_SIZE) whose entry recorded the
referent's etag is read as a large blob of the store is: a read waits only
for the parts it touches, sequential reading reads ahead, the complete file
is verified against the digest, and every range is pinned to the committed
etag, so a referent replaced between two part reads gives EIO, never bytes
of two objects. Referents are real: an object in the second SeaweedFS
bucket (its requests counted by the fault proxy in front of SeaweedFS), a
loopback web server (tests/refhttp.py, requests counted there) and a local
file.
"""

from __future__ import annotations

import errno
import os
import random
import time
import uuid
from pathlib import Path

import pytest

from artfs.api import Api
from artfs.cache import PART_SIZE
from artfs.objects.cloud import CloudStore
from tests.faultproxy import FaultProxy
from tests.mounting import mounted
from tests.refhttp import RefServer

# The store's kind does not enter a reference's read path (references are
# always fetched into the cache, whatever the store); t4_mount_references.py
# keeps an S3-store variant of the reference tests.
pytestmark = pytest.mark.parametrize("store_url", ["local"], indirect=True)

SIZE = 3 * PART_SIZE + 5000  # four parts, the last one short
NPARTS = 4


def _part_range(i: int) -> str:
    return f"bytes={i * PART_SIZE}-{min((i + 1) * PART_SIZE, SIZE) - 1}"


class _S3Referent:
    """An object in the referents' bucket; requests counted by a fault proxy."""

    def __init__(self, s3server, bucket: str) -> None:
        self.store = CloudStore(f"s3://{bucket}")
        self.key = f"r{uuid.uuid4().hex[:10]}/big.bin"
        self.uri = f"s3://{bucket}/{self.key}"
        self.proxy = FaultProxy(s3server.port)
        self.env = {"AWS_ENDPOINT_URL": self.proxy.url}

    def put(self, data: bytes) -> None:
        self.store.put(self.key, data)

    def delete(self) -> None:
        self.store.delete(self.key)

    def ranged_gets(self) -> list[str]:
        return [r for m, p, r in self.proxy.requests if m == "GET" and self.key in p and r]

    def whole_gets(self) -> int:
        return sum(1 for m, p, r in self.proxy.requests if m == "GET" and self.key in p and not r)

    def close(self) -> None:
        self.proxy.close()


class _HttpReferent:
    """A resource of a loopback web server, which counts its requests."""

    def __init__(self, honour_if_match: bool = True) -> None:
        self.server = RefServer(honour_if_match=honour_if_match).__enter__()
        self.path = "/d/big.bin"
        self.uri = f"{self.server.url}{self.path}"
        self.env: dict[str, str] = {}

    def put(self, data: bytes) -> None:
        self.server.put(self.path, data)

    def delete(self) -> None:
        self.server.delete(self.path)

    def ranged_gets(self) -> list[str]:
        return self.server.ranged_gets(self.path)

    def whole_gets(self) -> int:
        return self.server.count("GET", self.path) - len(self.ranged_gets())

    def close(self) -> None:
        self.server.__exit__()


class _FileReferent:
    """A local file (no wire: only the replacement tests use it)."""

    def __init__(self, tmp_path: Path) -> None:
        self.file = tmp_path / "referents" / "big.bin"
        self.file.parent.mkdir(parents=True, exist_ok=True)
        self.uri = f"file://{self.file}"
        self.env: dict[str, str] = {}

    def put(self, data: bytes) -> None:
        tmp = self.file.with_suffix(".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, self.file)

    def delete(self) -> None:
        self.file.unlink()

    def close(self) -> None:
        pass


@pytest.fixture
def referent(request, tmp_path: Path):
    kind = request.param
    if kind == "s3":
        r = _S3Referent(request.getfixturevalue("s3server"), request.getfixturevalue("refs_bucket"))
    elif kind == "file":
        r = _FileReferent(tmp_path)
    else:
        r = _HttpReferent(honour_if_match=kind != "http-ignoring-if-match")
    try:
        yield r
    finally:
        r.close()


@pytest.fixture
def mount(store_url, artfs_env, tmp_path):
    """``with mount(name, extra_env) as m``: a mount of this test's store on a
    cache of its own."""

    def make(name: str, extra_env: dict[str, str]):
        return mounted(
            tmp_path / f"mnt-{name}",
            store_url=store_url,
            cache_dir=tmp_path / f"cache-{name}",
            state_dir=tmp_path / "state",
            env=dict(artfs_env, **extra_env),
            allowed_errors=["changed since the commit", "is gone"],
        )

    return make


def _clear(referent) -> None:
    if isinstance(referent, _S3Referent):
        referent.proxy.clear()
    elif isinstance(referent, _HttpReferent):
        referent.server.clear()


def _pread(path: Path, offset: int, length: int) -> bytes:
    """One read, with the kernel's readahead off: the daemon sees this read only."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
        return os.pread(fd, length, offset)
    finally:
        os.close(fd)


def _wait_until(cond, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def _cached(cache: Path, digest: str | None) -> Path:
    """The cache entry of ``digest``, or (etag-only) of the one digest mapped."""
    if digest is None:
        mapped = list((cache / "refs").glob("ref-*"))
        assert len(mapped) == 1, mapped
        digest = mapped[0].read_text().strip()
    return cache / "blobs" / digest.partition(":")[2][:2] / digest


@pytest.mark.parametrize("checksum", [True, False], ids=["checksum", "etag"])
@pytest.mark.parametrize("referent", ["s3", "http"], indirect=True)
def test_a_read_of_a_large_reference_fetches_only_the_parts_it_touches(
    referent, checksum: bool, run_artfs, mount, api: Api, artfs_env, tmp_path: Path
) -> None:
    data = random.Random(1).randbytes(SIZE)
    referent.put(data)
    flags = [] if checksum else ["--no-checksum"]
    run_artfs("put", "-n", "proj/big", "--reference", referent.uri, *flags)
    entry = api.repo.manifest(api.artifact("proj/big:v0").record).lookup("big.bin")
    assert entry is not None and entry.etag  # the pin of every range
    assert (entry.digest is not None) == checksum
    _clear(referent)
    with mount("cold", referent.env) as m:
        path = m.path / "proj/big/v0/big.bin"
        assert path.stat().st_size == SIZE
        middle = 2 * PART_SIZE + 12345
        assert _pread(path, middle, 4096) == data[middle : middle + 4096]
        # One ranged GET, of the one part the read touched; no whole GET.
        assert referent.ranged_gets() == [_part_range(2)]
        # Across the boundary of parts 1 and 2: only part 1 is new.
        edge = 2 * PART_SIZE - 10
        assert _pread(path, edge, 20) == data[edge : edge + 20]
        assert referent.ranged_gets() == [_part_range(2), _part_range(1)]
        assert m.stats()["part_fetches"] == 2
        # The whole file, read as cat does: the rest, each part exactly once.
        assert path.read_bytes() == data
        assert sorted(referent.ranged_gets()) == sorted(_part_range(i) for i in range(NPARTS))
        assert referent.whole_gets() == 0
        # Complete, it was verified against the digest (or, etag-only, hashed
        # and mapped) and is an ordinary cache entry.
        _wait_until(lambda: not list((tmp_path / "cache-cold/partial").iterdir()))
        cached = _cached(tmp_path / "cache-cold", entry.digest)
        assert cached.read_bytes() == data
        _clear(referent)
        assert path.read_bytes() == data  # served from the cache: no request at all
        assert referent.ranged_gets() == [] and referent.whole_gets() == 0

    # Sequential reading of the first MiB (part 0) reads ahead: part 1 comes
    # before anyone reads it.
    _clear(referent)
    with mount("ahead", referent.env) as m:
        path = m.path / "proj/big/v0/big.bin"
        with open(path, "rb") as f:
            assert f.read(1 << 20) == data[: 1 << 20]
            # Parts this reader has not reached yet were fetched ahead of it.
            _wait_until(lambda: _part_range(1) in referent.ranged_gets())
        assert path.read_bytes() == data
        assert len(referent.ranged_gets()) == NPARTS  # none fetched twice

    # get fetches the parts in parallel ranged GETs too, verified before it writes.
    _clear(referent)
    env = dict(artfs_env, ARTFS_CACHE=str(tmp_path / "cache-get"), **referent.env)
    run_artfs("get", "proj/big:v0", "--root", str(tmp_path / "out"), env=env)
    assert (tmp_path / "out/big.bin").read_bytes() == data
    assert sorted(referent.ranged_gets()) == sorted(_part_range(i) for i in range(NPARTS))
    assert referent.whole_gets() == 0


@pytest.mark.parametrize(
    "referent", ["s3", "http", "http-ignoring-if-match", "file"], indirect=True
)
@pytest.mark.parametrize("change", ["replaced", "deleted"])
@pytest.mark.parametrize("checksum", [True, False], ids=["checksum", "etag"])
def test_a_referent_replaced_between_two_part_reads_is_eio_not_mixed_bytes(
    referent, change: str, checksum: bool, run_artfs, mount, artfs_env, tmp_path: Path
) -> None:
    data = random.Random(2).randbytes(SIZE)
    referent.put(data)
    flags = [] if checksum else ["--no-checksum"]
    run_artfs("put", "-n", "proj/big", "--reference", referent.uri, *flags)
    with mount("cold", referent.env) as m:
        path = m.path / "proj/big/v0/big.bin"
        middle = 2 * PART_SIZE + 100
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
            assert os.pread(fd, 4096, middle) == data[middle : middle + 4096]
            if change == "replaced":
                referent.put(random.Random(3).randbytes(SIZE))  # same size, other bytes
            else:
                referent.delete()
            # The next part cannot come from the committed object: EIO, whatever
            # the server answers (one that ignores If-Match sends the new bytes,
            # under a new etag).
            for offset in (100, PART_SIZE + 100, 3 * PART_SIZE):
                with pytest.raises(OSError) as e:
                    os.pread(fd, 4096, offset)
                assert e.value.errno == errno.EIO
            # The part fetched before the change is the committed object's.
            assert os.pread(fd, 4096, middle) == data[middle : middle + 4096]
        finally:
            os.close(fd)
        # A new open asks the URI first: EIO too.
        with pytest.raises(OSError) as e:
            path.read_bytes()
        assert e.value.errno == errno.EIO
        why = "changed since the commit" if change == "replaced" else "is gone"
        assert f"reference {referent.uri} {why}" in m.log_text()
    # A cold get: one line, no file with other bytes.
    env = dict(artfs_env, ARTFS_CACHE=str(tmp_path / "cache-get"), **referent.env)
    r = run_artfs("get", "proj/big:v0", "--root", str(tmp_path / "out"), check=False, env=env)
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert f"reference {referent.uri} {why}" in r.stderr
    assert not (tmp_path / "out/big.bin").exists()
