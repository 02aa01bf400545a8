"""CloudStore on a real S3 server (SeaweedFS on 127.0.0.1): the conditional-write
probe, configuration by the usual conventions, multipart uploads.

The store interface itself (puts, create-only, compare-and-swap, listing) is
tested for every backend in test_local_store.py through the ``store_url``
fixture.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from artfs.objects import PreconditionFailed, StoreError, open_store
from artfs.objects.cloud import CloudStore
from tests.faultproxy import FaultProxy, Faults
from tests.s3server import S3Server

MiB = 1 << 20


def test_the_probe_refuses_a_store_that_ignores_conditional_writes(
    s3server: S3Server, s3_url: str, tmp_path: Path
) -> None:
    honest = CloudStore(s3_url)
    honest.put("readable.json", b"{}")
    with FaultProxy(
        s3server.port, Faults(strip_conditions=True), secret_key=s3server.secret_key
    ) as proxy:
        liar = CloudStore(s3_url, {"endpoint": proxy.url})
        with pytest.raises(StoreError, match="ignores conditional writes: If-None-Match"):
            liar.put("projects/p/project.json", b"{}", if_absent=True)
        # Refused for every kind of write, without probing again; reads still work.
        src = tmp_path / "f"
        src.write_bytes(b"x")
        with pytest.raises(StoreError, match="refusing to write"):
            liar.put_file("blobs/aa/x", src)
        with pytest.raises(StoreError, match="refusing to write"):
            liar.delete("readable.json")
        assert liar.get("readable.json") == b"{}"
        assert proxy.count("PUT") == 2  # the probe's two create-only puts, nothing after

        # The CLI says so, in one line, and writes nothing.
        env = dict(os.environ, AWS_ENDPOINT_URL=proxy.url, ARTFS_CACHE=str(tmp_path / "c"))
        env["ARTFS_CONFIG"] = str(tmp_path / "none.toml")
        proc = subprocess.run(
            [sys.executable, "-m", "artfs.cli", "--store", s3_url, "put", str(src), "-n", "p/a"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert proc.returncode != 0
    assert "ignores conditional writes" in proc.stderr
    assert [o.key for o in honest.iter_keys("")] == ["readable.json"]


def test_the_probe_passes_an_honest_store_and_leaves_nothing(s3_url: str) -> None:
    store = CloudStore(s3_url)
    store.put("a.json", b"1", if_absent=True)
    with pytest.raises(PreconditionFailed):
        store.put("a.json", b"2", if_absent=True)
    raw = CloudStore(s3_url.rsplit("/", 1)[0] + "/")
    prefix = s3_url.rsplit("/", 1)[1] + "/"
    assert [o.key for o in raw.iter_keys(prefix)] == [prefix + "a.json"]
    assert store.list("").objects[0].key == "a.json" and store.list("").prefixes == []


def test_plain_http_only_to_loopback_or_when_configured(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # No request is made here: the client options are only inspected.
    def allowed(store: CloudStore) -> bool:
        return str(store._store.client_options["allow_http"]).lower() == "true"

    def allow_http(endpoint: str, **options: object) -> bool:
        return allowed(CloudStore("s3://bucket/pre", {"endpoint": endpoint, **options}))

    assert allow_http("http://127.0.0.1:9000")
    assert allow_http("http://localhost:9000")
    assert allow_http("http://[::1]:9000")
    assert not allow_http("http://minio.example.internal:9000")
    assert not allow_http("https://s3.example.com")
    assert allow_http("http://minio.example.internal:9000", allow_http=True)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://10.1.2.3:9000")
    assert not allowed(CloudStore("s3://bucket/pre"))


def test_gcs_and_azure_urls_open_stores() -> None:
    gcs = open_store("gs://bucket/some/prefix")
    assert isinstance(gcs, CloudStore) and gcs._store.prefix == "some/prefix"
    az = CloudStore("az://container/pre", {"account_name": "acct", "skip_signature": True})
    assert az._store.prefix == "pre"
    with pytest.raises(StoreError, match="cannot open store"):
        CloudStore("s3://bucket/pre", {"no_such_option": "x"})


def test_options_from_the_artfs_config_file(
    s3server: S3Server, s3_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "config.toml"
    config.write_text(
        f'[object_store]\nendpoint = "{s3server.endpoint}"\ntimeout = 7\nmax_concurrency = 3\n'
    )
    monkeypatch.setenv("ARTFS_CONFIG", str(config))
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # overridden by the file
    store = CloudStore(s3_url)
    assert (store.timeout, store.max_concurrency) == (7.0, 3)
    store.put("k", b"v")
    assert store.get("k") == b"v"
    # The environment beats the file, options given in code beat both.
    monkeypatch.setenv("ARTFS_STORE_TIMEOUT", "9")
    assert CloudStore(s3_url).timeout == 9.0
    assert CloudStore(s3_url, {"timeout": 4}).timeout == 4.0
    monkeypatch.setenv("ARTFS_STORE_TIMEOUT", "soon")
    with pytest.raises(StoreError, match="bad object store option"):
        CloudStore(s3_url)


def test_credentials_from_an_aws_profile(
    s3server: S3Server, s3_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    creds = tmp_path / "credentials"
    creds.write_text(
        f"[artfs]\naws_access_key_id = {s3server.access_key}\n"
        f"aws_secret_access_key = {s3server.secret_key}\n"
        f"[wrong]\naws_access_key_id = {s3server.access_key}\naws_secret_access_key = nope\n"
    )
    config = tmp_path / "config"
    config.write_text(f"[profile artfs]\nregion = {s3server.region}\n")
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(var)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(creds))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    monkeypatch.setenv("AWS_PROFILE", "artfs")
    store = CloudStore(s3_url)
    store.put("k", b"from a profile")
    assert store.get("k") == b"from a profile"
    with pytest.raises(StoreError, match="access denied"):
        CloudStore(s3_url, {"profile": "wrong"}).get("k")
    with pytest.raises(StoreError, match="profile 'absent' not found"):
        CloudStore(s3_url, {"profile": "absent"})


def test_large_files_upload_in_parallel_parts(
    s3server: S3Server, s3_url: str, tmp_path: Path
) -> None:
    data = random.Random(9).randbytes(23 * MiB)
    src = tmp_path / "big.bin"
    src.write_bytes(data)
    with FaultProxy(s3server.port) as proxy:
        store = CloudStore(
            s3_url,
            {
                "endpoint": proxy.url,
                "multipart_threshold": 8 * MiB,
                "part_size": 5 * MiB,
                "max_concurrency": 4,
            },
        )
        store.put_file("blobs/aa/big", src, if_absent=True)
        parts = [p for m, p, _ in proxy.requests if m == "PUT" and "partNumber=" in p]
        assert len(parts) == 5  # 23 MiB in 5 MiB parts
        assert proxy.max_inflight > 1  # parts went up side by side
        with pytest.raises(PreconditionFailed):
            store.put_file("blobs/aa/big", src, if_absent=True)
    assert CloudStore(s3_url).get("blobs/aa/big") == data
    out = tmp_path / "back.bin"
    with open(out, "wb") as f:
        assert CloudStore(s3_url).download("blobs/aa/big", f) == len(data)
    assert out.read_bytes() == data
