"""CloudStore on real servers: S3 (SeaweedFS), GCS (fake-gcs-server) and Azure
(Azurite) on 127.0.0.1: the conditional-write probe on each service, faults,
configuration by the usual conventions, multipart uploads. (Two daemons
committing at once on each service through faults: t4_mount_s3_bucket.py.)

The store interface itself (puts, create-only, compare-and-swap, listing) is
tested for every backend in t1_objects_store.py through the ``store_url``
fixture.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import random
import re
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from artfs.api import Api
from artfs.cache import PART_SIZE, BlobCache, LazyBlobReader
from artfs.digest import digest_bytes
from artfs.objects import PreconditionFailed, StoreError, open_store
from artfs.objects.cloud import CloudStore
from artfs.repo import Repo, layout
from tests.azureserver import AzureServer
from tests.azureserver import resign as azure_resign
from tests.faultproxy import FaultProxy, Faults
from tests.gcsserver import GcsServer
from tests.s3server import S3Server
from tests.trees import make_tree

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
    assert [o.key for o in honest.iter_objects("")] == ["readable.json"]


def test_the_probe_passes_an_honest_store_and_leaves_nothing(s3_url: str) -> None:
    store = CloudStore(s3_url)
    store.put("a.json", b"1", if_absent=True)
    with pytest.raises(PreconditionFailed):
        store.put("a.json", b"2", if_absent=True)
    raw = CloudStore(s3_url.rsplit("/", 1)[0] + "/")
    prefix = s3_url.rsplit("/", 1)[1] + "/"
    assert [o.key for o in raw.iter_objects(prefix)] == [prefix + "a.json"]
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


def test_gcs_configured_by_the_config_file_or_application_credentials(
    gcsserver: GcsServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = gcsserver.url()
    monkeypatch.delenv("GOOGLE_SERVICE_ACCOUNT")
    # The README's [object_store] example: a service account key file.
    config = tmp_path / "config.toml"
    config.write_text(f'[object_store]\nservice_account = "{gcsserver.service_account}"\n')
    monkeypatch.setenv("ARTFS_CONFIG", str(config))
    CloudStore(url).put("k", b"from the config file", if_absent=True)
    assert CloudStore(url).get("k") == b"from the config file"
    # GOOGLE_APPLICATION_CREDENTIALS naming a real (made-up) service-account key:
    # requests carry a token signed with it; the endpoint from GOOGLE_BASE_URL.
    monkeypatch.setenv("ARTFS_CONFIG", str(tmp_path / "none.toml"))
    key = tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "genpkey", "-algorithm", "RSA", "-out", str(key)], check=True, timeout=60
    )
    email = "artfs@project.iam.gserviceaccount.com"
    credentials = tmp_path / "application.json"
    credentials.write_text(
        json.dumps(
            {
                "type": "service_account",
                "project_id": "project",
                "private_key_id": "k1",
                "private_key": key.read_text(),
                "client_email": email,
                "token_uri": "http://127.0.0.1:9/token",
            }
        )
    )
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(credentials))
    monkeypatch.setenv("GOOGLE_BASE_URL", gcsserver.endpoint)
    store = CloudStore(url)
    assert store.get("k") == b"from the config file"
    store.put("k2", b"signed", if_absent=True)
    token = gcsserver.authorizations()[-1].removeprefix("Bearer ")
    claims = json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))
    assert claims["iss"] == email
    # Plain http only to loopback: Google itself, or any other host, needs https.
    remote = CloudStore("gs://b/p", {"base_url": "http://gcs.example.internal"})
    assert str(remote._store.client_options["allow_http"]).lower() == "false"


def test_azure_configured_by_the_config_file_or_the_emulator_variables(
    azureserver: AzureServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = azureserver.url()
    for var in (
        "AZURE_STORAGE_ACCOUNT_NAME",
        "AZURE_STORAGE_ACCOUNT_KEY",
        "AZURE_STORAGE_ENDPOINT",
    ):
        monkeypatch.delenv(var)
    # The README's [object_store] example: account name and key (and, for
    # Azurite on another port, its endpoint).
    config = tmp_path / "config.toml"
    config.write_text(
        f'[object_store]\naccount_name = "{azureserver.account}"\n'
        f'access_key = "{azureserver.key}"\nendpoint = "{azureserver.endpoint}"\n'
    )
    monkeypatch.setenv("ARTFS_CONFIG", str(config))
    CloudStore(url).put("k", b"from the config file", if_absent=True)
    assert CloudStore(url).get("k") == b"from the config file"
    # AZURE_STORAGE_USE_EMULATOR: Azurite's account and key, at AZURITE_BLOB_STORAGE_URL.
    monkeypatch.setenv("ARTFS_CONFIG", str(tmp_path / "none.toml"))
    monkeypatch.setenv("AZURE_STORAGE_USE_EMULATOR", "true")
    monkeypatch.setenv("AZURITE_BLOB_STORAGE_URL", f"http://127.0.0.1:{azureserver.port}")
    store = CloudStore(url)
    assert store.get("k") == b"from the config file"
    with pytest.raises(PreconditionFailed):
        store.put("k", b"again", if_absent=True)
    # A wrong key is refused by the service, in one line.
    monkeypatch.delenv("AZURE_STORAGE_USE_EMULATOR")
    wrong = base64.b64encode(b"not the key").decode()
    bad = CloudStore(
        url,
        {
            "account_name": azureserver.account,
            "access_key": wrong,
            "endpoint": azureserver.endpoint,
        },
    )
    with pytest.raises(StoreError, match="access denied"):
        bad.get("k")
    remote = CloudStore(
        "az://c/p", {"account_name": "a", "access_key": wrong, "endpoint": "http://az.example"}
    )
    assert str(remote._store.client_options["allow_http"]).lower() == "false"


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


# -- every service: S3 (SeaweedFS), GCS (fake-gcs-server), Azure (Azurite) ------


@dataclass
class Service:
    """One emulated service, and how to send a store's requests through a proxy."""

    kind: str
    name: str  # as the probe's message names it
    port: int  # what a FaultProxy forwards to
    new_url: Callable[[], str]
    options_via: Callable[[str], dict[str, str]]  # CloudStore options through a proxy URL
    env_via: Callable[[str], dict[str, str]]  # the same, as environment for subprocesses
    proxy_args: dict[str, Any]  # FaultProxy keywords (how to sign again)

    def proxy(self, faults: Faults | None = None, seed: int = 0) -> FaultProxy:
        return FaultProxy(self.port, faults, seed=seed, **self.proxy_args)


@pytest.fixture(params=["s3", "gs", "az"])
def service(request: pytest.FixtureRequest) -> Service:
    if request.param == "s3":
        s3: S3Server = request.getfixturevalue("s3server")
        return Service(
            "s3",
            "S3",
            s3.port,
            s3.url,
            lambda u: {"endpoint": u},
            lambda u: {"AWS_ENDPOINT_URL": u},
            {"secret_key": s3.secret_key},
        )
    if request.param == "gs":
        gcs: GcsServer = request.getfixturevalue("gcsserver")
        return Service(
            "gs",
            "GCS",
            gcs.port,
            gcs.url,
            lambda u: {"base_url": u},
            lambda u: {"GOOGLE_BASE_URL": u},
            {},
        )
    az: AzureServer = request.getfixturevalue("azureserver")
    return Service(
        "az",
        "Azure",
        az.port,
        az.url,
        lambda u: {"endpoint": f"{u}/{az.account}"},
        lambda u: {"AZURE_STORAGE_ENDPOINT": f"{u}/{az.account}"},
        {"resign": azure_resign},
    )


# For what t5_faults_s3.py already proves on S3: the two other services.
NEW_SERVICES = pytest.mark.parametrize("service", ["gs", "az"], indirect=True)

CONDITION_HEADER = {"s3": "If-None-Match: *", "gs": "x-goog-if-generation-match: 0"}
CONDITION_HEADER["az"] = CONDITION_HEADER["s3"]


def test_every_service_refuses_writes_when_its_conditions_are_ignored(
    service: Service, tmp_path: Path
) -> None:
    url = service.new_url()
    honest = CloudStore(url)
    honest.put("readable.json", b"{}")
    with service.proxy(Faults(strip_conditions=True)) as proxy:
        liar = CloudStore(url, service.options_via(proxy.url))
        header = re.escape(CONDITION_HEADER[service.kind])
        with pytest.raises(StoreError, match=f"^{service.name} store .*: {header} ") as e:
            liar.put("projects/p/project.json", b"{}", if_absent=True)
        assert "refusing to write" in str(e.value)
        with pytest.raises(StoreError, match="refusing to write"):
            liar.delete("readable.json")
        assert liar.get("readable.json") == b"{}"
        assert proxy.count("PUT") == 2  # the probe's two create-only puts, nothing after
        # The CLI says so in one line, naming the service and the header.
        src = tmp_path / "f"
        src.write_bytes(b"x")
        env = dict(os.environ, **service.env_via(proxy.url), ARTFS_CACHE=str(tmp_path / "c"))
        env["ARTFS_CONFIG"] = str(tmp_path / "none.toml")
        proc = subprocess.run(
            [sys.executable, "-m", "artfs.cli", "--store", url, "put", str(src), "-n", "p/a"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("artfs: error: ") and len(proc.stderr.strip().splitlines()) == 1
    assert f"{service.name} store" in proc.stderr and CONDITION_HEADER[service.kind] in proc.stderr
    assert [o.key for o in honest.iter_objects("")] == ["readable.json"]


def test_every_service_passes_the_probe_and_keeps_its_guarantees(service: Service) -> None:
    url = service.new_url()
    store = CloudStore(url)
    tag = store.put("a.json", b"1", if_absent=True)
    with pytest.raises(PreconditionFailed):
        store.put("a.json", b"2", if_absent=True)
    assert store.head("a.json").etag == tag  # the token compare-and-swap takes
    new = store.put("a.json", b"3", if_match=tag)
    with pytest.raises(PreconditionFailed):
        store.put("a.json", b"4", if_match=tag)  # lost the race: the object moved on
    assert store.get("a.json") == b"3" and store.head("a.json").etag == new != tag
    # The probe left nothing behind, and a listing shows only what was written.
    assert [o.key for o in store.iter_objects("")] == ["a.json"]
    assert [o.key for o in store.list("").objects] == ["a.json"]


@NEW_SERVICES
def test_a_write_whose_reply_was_lost_is_no_conflict_on_gcs_and_azure(service: Service) -> None:
    url = service.new_url()
    faults = Faults(lost_reply=1.0, limit=1, only_methods=frozenset({"PUT"}))
    with service.proxy(faults) as proxy:
        store = CloudStore(url, service.options_via(proxy.url))
        store.put("warm.json", b"{}")  # the probe's first put loses its reply
        assert proxy.injected["lost_reply"] == 1
        proxy.set(limit=2)
        tag = store.put("versions/0.json", b'{"v": 0}', if_absent=True)
        assert proxy.injected["lost_reply"] == 2
        assert proxy.count("PUT", "versions") >= 2  # retried, and met its own object
        with pytest.raises(PreconditionFailed):
            store.put("versions/0.json", b'{"v": "other"}', if_absent=True)
        proxy.set(limit=3)
        tag2 = store.put("versions/0.json", b'{"v": 1}', if_match=tag)
        assert proxy.injected["lost_reply"] == 3
        with pytest.raises(PreconditionFailed):
            store.put("versions/0.json", b'{"v": 2}', if_match=tag)
    assert CloudStore(url).get("versions/0.json") == b'{"v": 1}'
    assert CloudStore(url).head("versions/0.json").etag == tag2


@NEW_SERVICES
def test_reads_through_faults_are_right_or_fail_on_gcs_and_azure(
    service: Service, tmp_path: Path
) -> None:
    url = service.new_url()
    clean = CloudStore(url)
    blobs = []
    for i, size in enumerate((12 * MiB + 1, 200_000, 70_001)):
        data = random.Random(i).randbytes(size)
        clean.put(f"blobs/{i}", data)
        blobs.append((f"blobs/{i}", data))
    faults = Faults(error=0.1, reset=0.1, reset_body=0.15, delay=0.1, delay_seconds=0.1)
    right = failed = 0
    with service.proxy(faults, seed=2) as proxy:
        store = CloudStore(url, {**service.options_via(proxy.url), "timeout": 20})
        for key, data in blobs:
            for off in range(0, len(data), 3 * MiB):
                try:
                    got = store.get_range(key, off, 1 * MiB)
                except StoreError:
                    failed += 1
                    continue
                assert got == data[off : off + 1 * MiB], "wrong bytes"
                right += 1
            out = tmp_path / "out"
            with open(out, "wb") as f:
                try:
                    store.download(key, f)
                except StoreError:
                    failed += 1
                    continue
            assert out.read_bytes() == data, "wrong bytes"
            right += 1
        injected = dict(proxy.injected)
    assert injected["reset_body"] + injected["error"] + injected["reset"] > 0, injected
    assert right > 0.9 * (right + failed)


def _parts(proxy: FaultProxy) -> list[str]:
    """Part uploads seen: S3 and GCS number parts, Azure puts blocks."""
    return [
        p for m, p, _ in proxy.requests if m == "PUT" and ("partNumber=" in p or "comp=block&" in p)
    ]


def test_large_files_upload_in_parallel_parts_on_every_service(
    service: Service, tmp_path: Path
) -> None:
    url = service.new_url()
    data = random.Random(9).randbytes(23 * MiB)
    src = tmp_path / "big.bin"
    src.write_bytes(data)
    with service.proxy() as proxy:
        options = {"multipart_threshold": 8 * MiB, "part_size": 5 * MiB, "max_concurrency": 4}
        store = CloudStore(url, {**service.options_via(proxy.url), **options})
        store.put_file("blobs/aa/big", src, if_absent=True)
        assert len(_parts(proxy)) == 5  # 23 MiB in 5 MiB parts
        assert proxy.max_inflight > 1  # parts went up side by side
        with pytest.raises(PreconditionFailed):
            store.put_file("blobs/aa/big", src, if_absent=True)
        # A file that would need more parts than the service allows gets bigger parts.
        store.service = dataclasses.replace(store.service, max_parts=2)
        proxy.clear()
        store.put_file("blobs/aa/big2", src)
        assert len(_parts(proxy)) == 2  # 12 MiB parts
    for key in ("blobs/aa/big", "blobs/aa/big2"):
        assert CloudStore(url).get(key) == data
    out = tmp_path / "back.bin"
    with open(out, "wb") as f:
        assert CloudStore(url).download("blobs/aa/big", f) == len(data)
    assert out.read_bytes() == data


def test_lazy_reads_fetch_only_the_parts_read_on_every_service(
    service: Service, tmp_path: Path
) -> None:
    url = service.new_url()
    data = random.Random(5).randbytes(4 * PART_SIZE + 7)
    digest = digest_bytes(data)
    CloudStore(url).put(layout.blob_key(digest), data)
    hexpart = digest.partition(":")[2]
    with service.proxy() as proxy:
        store = CloudStore(url, service.options_via(proxy.url))
        cache = BlobCache(tmp_path / "cache", store, layout.blob_key)
        proxy.clear()
        reader = cache.open_reader(digest, len(data))
        assert isinstance(reader, LazyBlobReader)
        offset = 2 * PART_SIZE + 12345
        assert reader.read(offset, 1000) == data[offset : offset + 1000]
        # One ranged GET, of the one part the read touched.
        gets = [r for m, p, r in proxy.requests if m == "GET" and hexpart in p]
        assert gets == [f"bytes={2 * PART_SIZE}-{3 * PART_SIZE - 1}"]
        # Reading on fetches the rest once each; the whole is verified into the cache.
        got = bytearray()
        while chunk := reader.read(len(got), 1 << 20):
            got += chunk
        assert bytes(got) == data
        reader.close()
        deadline = time.monotonic() + 60
        while not cache.has(digest):
            assert time.monotonic() < deadline, "never verified into the cache"
            time.sleep(0.02)
        gets = [r for m, p, r in proxy.requests if m == "GET" and hexpart in p]
        assert len(gets) == len(set(gets)) == 5 and all(gets)
    assert cache.path(digest).read_bytes() == data


@NEW_SERVICES
def test_gcs_or_azure_staying_down_or_hanging_fails_in_bounded_time(service: Service) -> None:
    url = service.new_url()
    CloudStore(url).put("k", b"v")
    with service.proxy() as proxy:
        store = CloudStore(url, {**service.options_via(proxy.url), "timeout": 3})
        assert store.get("k") == b"v"
        proxy.set(down=True)
        for what in (
            lambda: store.get("k"),
            lambda: store.list(""),
            lambda: store.put("k2", b"v", if_absent=True),
        ):
            start = time.monotonic()
            with pytest.raises(StoreError, match="failed after"):
                what()
            # The promise is a time bound (the 3 s timeout); 4x for a loaded machine.
            assert time.monotonic() - start < 12
        proxy.set(down=False)
        assert store.get("k") == b"v"  # up again: the same store carries on
        proxy.set(delay=1.0, delay_seconds=30)  # accepts, never answers in time
        hung = CloudStore(
            url, {**service.options_via(proxy.url), "timeout": 2, "request_timeout": 1}
        )
        start = time.monotonic()
        with pytest.raises(StoreError):
            hung.get("k")
        assert time.monotonic() - start < 12


@pytest.mark.parametrize("service", ["s3", "gs", "az"], indirect=True)
def test_listing_an_artifact_costs_one_list_and_parallel_gets_on_every_service(
    service: Service, tmp_path: Path
) -> None:
    """Issue 11: version records are read with a GET that carries the etag (no
    HEAD each), many at once; resolving ``latest`` or ``vN`` costs the same
    few requests whatever the number of versions."""
    url = service.new_url()
    api = Api(store=url, cache=str(tmp_path / "c"))
    src = tmp_path / "src"
    count = 12
    for i in range(count):
        make_tree(src, {"f.txt": f"version {i}\n"})
        api.put([src], "p/a")
    api.repo.set_alias(api.repo.version("p", "a", 3), "best")
    faults = Faults(delay=1.0, delay_seconds=0.05, only_methods=frozenset({"GET", "HEAD"}))
    with service.proxy(faults) as proxy:
        store = CloudStore(url, service.options_via(proxy.url))
        repo = Repo.open(store, str(tmp_path / "c2"))
        proxy.clear()
        versions = repo.versions("p", "a")
        assert [v.number for v in versions] == list(range(count))
        assert versions[3].aliases == ["best"] and versions[-1].aliases == ["latest"]
        assert proxy.count("HEAD") == 0
        assert proxy.count("GET", "/versions/") <= count + 1  # a LIST of versions/, then GETs
        assert proxy.max_inflight > 1, "version records read one at a time"

        for ref, want in (("p/a", count - 1), ("p/a:v5", 5), ("p/a:best", 3)):
            proxy.clear()
            assert repo.resolve(ref).number == want
            # artifact record, alias, version record, the aliases listing and their records
            assert len(proxy.requests) <= 6, (ref, proxy.requests)
            assert proxy.count("GET", "/versions/") <= 1

        # The etag a GET carried is the one compare-and-swap takes.
        repo.set_alias(repo.version("p", "a", 7), "best")
        assert repo.resolve("p/a:best").number == 7

        # Listing again reads only the records whose etag the LIST shows changed:
        # another writer's description change, a deletion, a new version.
        other = Api(store=url, cache=str(tmp_path / "c3")).repo
        other.update_version(other.version("p", "a", 5), description="changed elsewhere")
        other.delete_version(other.version("p", "a", 2))
        api.put([make_tree(src, {"f.txt": "one more\n"})], "p/a")
        proxy.clear()
        again = repo.versions("p", "a")
        assert [v.number for v in again] == [n for n in range(count + 1) if n != 2]
        assert next(v for v in again if v.number == 5).description == "changed elsewhere"
        assert proxy.count("GET", "/versions/") <= 1 + 3  # the LIST, then v2, v5, v12
        again[0].metadata["mutated"] = True  # a caller's change stays the caller's
        assert "mutated" not in repo.versions("p", "a")[0].metadata
