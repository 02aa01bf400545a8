"""A real S3 server for the tests: SeaweedFS (``weed mini``) on 127.0.0.1.

``s3server`` starts one server for the whole session, on free ports, with
small volumes, and stops it by its PID at the end. It exports the AWS_*
environment (explicit credentials, endpoint on loopback, no instance-metadata
endpoint) so that artfs, in this process and in CLI subprocesses, talks to it
and to nothing else. ``s3_url`` gives each test a fresh store of its own: a
new prefix in the session's bucket.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.servers import exported, free_port, spawn, stop_process, wait_ready

ACCESS_KEY = "artfs-test"
SECRET_KEY = "artfs-test-secret"
BUCKET = "artfs"
REGION = "us-east-1"


def weed_binary() -> str:
    candidate = Path(sys.executable).parent / "weed"
    return str(candidate) if candidate.exists() else "weed"


@dataclass
class S3Server:
    port: int
    pid: int
    data_dir: Path
    access_key: str = ACCESS_KEY
    secret_key: str = SECRET_KEY
    bucket: str = BUCKET
    region: str = REGION

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, prefix: str | None = None) -> str:
        return f"s3://{self.bucket}/{prefix or 't' + uuid.uuid4().hex[:12]}"

    def raw(self, prefix: str | None = None, **options: Any) -> Any:
        """A plain obstore S3Store on this server (for baselines and test set-up)."""
        from obstore.store import S3Store

        options.setdefault("client_options", {"allow_http": True, "timeout": "120s"})
        return S3Store(
            self.bucket,
            prefix=prefix,
            endpoint=self.endpoint,
            access_key_id=self.access_key,
            secret_access_key=self.secret_key,
            region=self.region,
            **options,
        )

    def env(self, endpoint: str | None = None) -> dict[str, str]:
        """AWS_* variables that point artfs at this server (or ``endpoint``)."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_REGION": self.region,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_ENDPOINT_URL": endpoint or self.endpoint,
            # Never ask an instance-metadata service for credentials.
            "AWS_METADATA_ENDPOINT": "http://127.0.0.1:9",
            "AWS_EC2_METADATA_DISABLED": "true",
        }


def start_seaweedfs(
    data_dir: Path, *, volume_size_mb: int = 64, max_volumes: int = 100, timeout: float = 60
) -> tuple[S3Server, subprocess.Popen]:
    """Start ``weed mini`` bound to 127.0.0.1 on free ports; returns once S3 answers."""
    data_dir.mkdir(parents=True, exist_ok=True)
    ports = {
        name: free_port()
        for name in (
            "master.port",
            "master.port.grpc",
            "volume.port",
            "volume.port.grpc",
            "filer.port",
            "filer.port.grpc",
            "s3.port",
            "s3.port.grpc",
            "admin.port",
            "admin.port.grpc",
        )
    }
    args = [
        weed_binary(),
        "mini",
        f"-dir={data_dir}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        *(f"-{k}={v}" for k, v in ports.items()),
        "-admin.ui=false",
        "-webdav=false",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        "-master.telemetry=false",
        f"-master.volumeSizeLimitMB={volume_size_mb}",
        f"-volume.max={max_volumes}",
        f"-bucket={BUCKET}",
    ]
    # weed mini makes an admin identity from these.
    env = dict(os.environ, AWS_ACCESS_KEY_ID=ACCESS_KEY, AWS_SECRET_ACCESS_KEY=SECRET_KEY)
    proc = spawn(args, data_dir, "weed.log", env=env)
    server = S3Server(ports["s3.port"], proc.pid, data_dir)
    try:
        _wait_ready(server, proc, timeout)
    except BaseException:
        stop_seaweedfs(proc)
        raise
    return server, proc


def _wait_ready(server: S3Server, proc: subprocess.Popen, timeout: float) -> None:
    import obstore

    store = server.raw(
        client_options={"allow_http": True, "timeout": "5s"}, retry_config={"max_retries": 0}
    )
    key = f"ready/{uuid.uuid4().hex}"

    def answers() -> bool:
        obstore.put(store, key, b"ready")
        obstore.delete(store, key)
        return True

    what = f"SeaweedFS S3 on port {server.port}"
    wait_ready(proc, server.data_dir / "weed.log", what, answers, timeout=timeout, interval=0.3)


stop_seaweedfs = stop_process  # the name the benchmarks use


@pytest.fixture(scope="session")
def s3server(tmp_path_factory: pytest.TempPathFactory):
    server, proc = start_seaweedfs(tmp_path_factory.mktemp("seaweedfs"))
    try:
        with exported(server.env()):
            yield server
    finally:
        stop_seaweedfs(proc)


@pytest.fixture
def s3_url(s3server: S3Server) -> str:
    """A fresh, empty store for this test: its own prefix in the session's bucket."""
    return s3server.url()


# -- a 2.5 GiB blob and a 40 MiB one, stored once per session ----------------

# 64x the small one, and past 2**31: an offset that a signed 32-bit int would
# wrap is read (t4_mount_read covers offsets past 2**32 on a local store).
BIG_SIZE = 5 << 29
SMALL_SIZE = 40 << 20
_ZERO_CHUNK = 16 << 20


@dataclass
class TtfbStore:
    """A store holding ``proj/ttfb:v0`` with ``big.bin`` (2.5 GiB of zeros) and
    ``small.bin`` (40 MiB, random). Read-only for the tests that use it."""

    url: str
    big_digest: str
    small_digest: str
    small_data: bytes


def store_ttfb_version(
    server: S3Server, cache_dir: Path, big_size: int = BIG_SIZE, small_size: int = SMALL_SIZE
) -> TtfbStore:
    """A new store prefix holding ``proj/ttfb:v0``: ``big.bin`` (zeros) and
    ``small.bin`` (random).

    The big blob is streamed from memory with an unsigned payload (no file to
    read, no SHA-256 of gigabytes) and its digest computed in memory; both are
    then committed through the real registry, which finds the blobs stored.
    """
    import obstore
    import xxhash

    from artfs.digest import digest_bytes
    from artfs.manifest import ManifestBuilder
    from artfs.objects.cloud import CloudStore
    from artfs.repo import Repo, commit_tree, layout

    prefix = "ttfb-" + uuid.uuid4().hex[:8]
    zeros = memoryview(bytes(_ZERO_CHUNK))
    whole, rest = divmod(big_size, _ZERO_CHUNK)
    pieces = [zeros] * whole + ([zeros[:rest]] if rest else [])
    h = xxhash.xxh3_128()
    for piece in pieces:
        h.update(piece)
    big_digest = "xxh128:" + h.hexdigest()
    small_data = random.Random(40).randbytes(small_size)
    small_digest = digest_bytes(small_data)
    obstore.put(
        server.raw(prefix, unsigned_payload=True),
        layout.blob_key(big_digest),
        pieces,
        chunk_size=_ZERO_CHUNK,
        max_concurrency=8,
    )
    url = server.url(prefix)
    store = CloudStore(url)
    store.put(layout.blob_key(small_digest), small_data)
    builder = ManifestBuilder()
    builder.add_file("big.bin", big_size, big_digest)
    builder.add_file("small.bin", small_size, small_digest)
    commit_tree(Repo.open(store, str(cache_dir)), "proj", "ttfb", builder, {})
    return TtfbStore(url, big_digest, small_digest, small_data)


@pytest.fixture(scope="session")
def ttfb_store(s3server: S3Server, tmp_path_factory: pytest.TempPathFactory) -> TtfbStore:
    """Built once per session: the 2.5 GiB upload takes SeaweedFS ~20 s."""
    return store_ttfb_version(s3server, tmp_path_factory.mktemp("ttfb-cache"))


# -- a second bucket, for what lives outside a store (reference entries) -----

REFS_BUCKET = "artfs-refs"


def create_bucket(server: S3Server, bucket: str) -> None:
    """``PUT /<bucket>`` signed with AWS Signature V4 (obstore cannot create
    buckets); a bucket that exists already is fine."""
    import datetime
    import hashlib
    import hmac
    import urllib.error
    import urllib.request

    now = datetime.datetime.now(datetime.UTC)
    amz_date, day = now.strftime("%Y%m%dT%H%M%SZ"), now.strftime("%Y%m%d")
    host = f"127.0.0.1:{server.port}"
    payload = hashlib.sha256(b"").hexdigest()
    headers = {"host": host, "x-amz-content-sha256": payload, "x-amz-date": amz_date}
    signed = ";".join(sorted(headers))
    canonical = "\n".join(
        ["PUT", f"/{bucket}", "", *(f"{k}:{headers[k]}" for k in sorted(headers)), "", signed]
    )
    canonical += "\n" + payload
    scope = f"{day}/{server.region}/s3/aws4_request"
    to_sign = "\n".join(
        ["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()]
    )
    key = ("AWS4" + server.secret_key).encode()
    for part in (day, server.region, "s3", "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    request = urllib.request.Request(f"http://{host}/{bucket}", method="PUT")
    for k, v in headers.items():
        if k != "host":
            request.add_header(k, v)
    request.add_header(
        "Authorization",
        f"AWS4-HMAC-SHA256 Credential={server.access_key}/{scope}, "
        f"SignedHeaders={signed}, Signature={signature}",
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            answer.read()
    except urllib.error.HTTPError as e:
        body = e.read().decode(errors="replace")
        if e.code != 409 and "BucketAlready" not in body:
            raise RuntimeError(f"cannot create bucket {bucket}: {e.code} {body[:300]}") from None


@pytest.fixture(scope="session")
def refs_bucket(s3server: S3Server) -> str:
    """A second bucket on the session's server, apart from the stores' bucket:
    objects there are referents, not the store's. Returns its name."""
    create_bucket(s3server, REFS_BUCKET)
    return REFS_BUCKET
