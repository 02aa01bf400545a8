"""An Azure Blob Storage emulator for the tests: Azurite (npm package ``azurite``,
installed by scripts/setup.sh into ``.tools/node_modules``) on 127.0.0.1.

``azureserver`` starts one ``azurite-blob`` for the session on a free port, in
memory, creates the container, and points artfs at it the usual way
(``AZURE_STORAGE_ACCOUNT_NAME``, ``AZURE_STORAGE_ACCOUNT_KEY``,
``AZURE_STORAGE_ENDPOINT``), with Azurite's well-known development account.
Azurite checks SharedKey signatures and honours ``If-None-Match: *`` and
``If-Match`` on PUT as Azure does (409 BlobAlreadyExists, 412 ConditionNotMet).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.client
import shutil
import subprocess
import urllib.parse
import uuid
from dataclasses import dataclass
from email.utils import formatdate
from pathlib import Path

import pytest

from tests.servers import exported, free_port, spawn, stop_process, wait_ready

# Azurite's development account (public, the same in every Azurite).
ACCOUNT = "devstoreaccount1"
ACCOUNT_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)
CONTAINER = "artfs"
_SIGNED = (
    "content-encoding",
    "content-language",
    "content-length",
    "content-md5",
    "content-type",
    "date",
    "if-modified-since",
    "if-match",
    "if-none-match",
    "if-unmodified-since",
    "range",
)


def azurite_binary() -> str:
    local = Path(__file__).resolve().parent.parent / ".tools/node_modules/.bin/azurite-blob"
    if local.exists():
        return str(local)
    found = shutil.which("azurite-blob")
    if found is None:
        raise RuntimeError("azurite-blob not found: run scripts/setup.sh (it installs Azurite)")
    return found


def shared_key(method: str, target: str, headers: dict[str, str], account: str = ACCOUNT) -> str:
    """The SharedKey Authorization value for a request (``target``: path?query)."""
    h = {k.lower(): v.strip() for k, v in headers.items()}
    values = [h.get(name, "") for name in _SIGNED]
    if values[2] == "0":
        values[2] = ""  # a zero Content-Length is signed as empty
    canonical_headers = "".join(f"{k}:{h[k]}\n" for k in sorted(h) if k.startswith("x-ms-"))
    split = urllib.parse.urlsplit(target)
    resource = f"/{account}{split.path}"
    query = urllib.parse.parse_qs(split.query, keep_blank_values=True)
    for name in sorted(query, key=str.lower):
        resource += f"\n{name.lower()}:{','.join(sorted(query[name]))}"
    to_sign = "\n".join([method, *values]) + "\n" + canonical_headers + resource
    key = base64.b64decode(ACCOUNT_KEY)
    signature = base64.b64encode(hmac.new(key, to_sign.encode(), hashlib.sha256).digest())
    return f"SharedKey {account}:{signature.decode()}"


def resign(first: bytes, headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """Sign a request again after headers were dropped (for tests.faultproxy)."""
    method, target = first.decode().split(" ")[:2]
    plain = {k.decode(): v.decode() for k, v in headers if k.lower() != b"authorization"}
    auth = shared_key(method, target, plain).encode()
    return [(k, auth if k.lower() == b"authorization" else v) for k, v in headers]


@dataclass
class AzureServer:
    port: int
    pid: int
    data_dir: Path
    account: str = ACCOUNT
    key: str = ACCOUNT_KEY
    container: str = CONTAINER

    @property
    def endpoint(self) -> str:
        return self.endpoint_at(self.port)

    def endpoint_at(self, port: int) -> str:
        """The account's URL through ``port`` (a proxy in front, say)."""
        return f"http://127.0.0.1:{port}/{self.account}"

    def url(self, prefix: str | None = None) -> str:
        return f"az://{self.container}/{prefix or 't' + uuid.uuid4().hex[:12]}"

    def raw(self, prefix: str | None = None, **options):
        """A plain obstore AzureStore on this server (for baselines and set-up)."""
        from obstore.store import AzureStore

        options.setdefault("client_options", {"allow_http": True, "timeout": "120s"})
        return AzureStore(
            self.container,
            prefix=prefix,
            account_name=self.account,
            access_key=self.key,
            endpoint=self.endpoint,
            **options,
        )

    def env(self, endpoint: str | None = None) -> dict[str, str]:
        return {
            "AZURE_STORAGE_ACCOUNT_NAME": self.account,
            "AZURE_STORAGE_ACCOUNT_KEY": self.key,
            "AZURE_STORAGE_ENDPOINT": endpoint or self.endpoint,
        }


def start_azurite(
    data_dir: Path, *, in_memory: bool = True, timeout: float = 60
) -> tuple[AzureServer, subprocess.Popen]:
    """``azurite-blob`` on a free loopback port, the container made."""
    data_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    storage = ["--inMemoryPersistence"] if in_memory else ["--location", str(data_dir / "data")]
    proc = spawn(
        [
            azurite_binary(),
            "--blobHost",
            "127.0.0.1",
            "--blobPort",
            str(port),
            *storage,
            "--skipApiVersionCheck",
            "--disableTelemetry",
            "--silent",
        ],
        data_dir,
        "azurite.log",
    )
    server = AzureServer(port, proc.pid, data_dir)
    try:
        _make_container(server, proc, timeout)
    except BaseException:
        stop_process(proc)
        raise
    return server, proc


def _signed_put(server: AzureServer, target: str, data: bytes, **extra: str) -> int:
    """A SharedKey-signed PUT of ``target`` (path?query); its status."""
    headers = {
        "Content-Length": str(len(data)),
        "x-ms-date": formatdate(usegmt=True),
        "x-ms-version": "2021-08-06",
        **extra,
    }
    headers["Authorization"] = shared_key("PUT", target, headers)
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        conn.request("PUT", target, body=data, headers=headers)
        resp = conn.getresponse()
        resp.read()
    finally:
        conn.close()
    return resp.status


def create_container(server: AzureServer, container: str) -> None:
    """A container on Azurite; one that exists already is fine."""
    status = _signed_put(server, f"/{server.account}/{container}?restype=container", b"")
    if status not in (201, 409):
        raise RuntimeError(f"creation of container {container} answered {status}")


def put_raw(server: AzureServer, container: str, name: str, data: bytes) -> None:
    """A blob whose name is kept literally (obstore drops a trailing ``/``, so a
    "directory" placeholder such as ``dir/`` is made here)."""
    target = f"/{server.account}/{container}/{urllib.parse.quote(name)}"
    status = _signed_put(server, target, data, **{"x-ms-blob-type": "BlockBlob"})
    if status != 201:
        raise RuntimeError(f"PUT {container}/{name} answered {status}")


def _make_container(server: AzureServer, proc: subprocess.Popen, timeout: float) -> None:
    def container_made() -> bool:
        create_container(server, server.container)
        return True

    log = server.data_dir / "azurite.log"
    wait_ready(proc, log, f"azurite on port {server.port}", container_made, timeout=timeout)


@pytest.fixture(scope="session")
def azureserver(tmp_path_factory: pytest.TempPathFactory):
    server, proc = start_azurite(tmp_path_factory.mktemp("azurite"))
    try:
        with exported(server.env()):
            yield server
    finally:
        stop_process(proc)


@pytest.fixture
def az_url(azureserver: AzureServer) -> str:
    """A fresh, empty store for this test: its own prefix in the session's container."""
    return azureserver.url()


# -- a second container, for what lives outside a store (reference entries) --

REFS_CONTAINER = "artfs-refs"


@pytest.fixture(scope="session")
def az_refs_container(azureserver: AzureServer) -> str:
    """A second container on the session's Azurite, apart from the stores'
    container: blobs there are referents, not the store's. Returns its name."""
    create_container(azureserver, REFS_CONTAINER)
    return REFS_CONTAINER
