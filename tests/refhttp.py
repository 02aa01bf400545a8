"""A loopback HTTP(S) server of referents for the reference tests.

``RefServer`` serves ``resources`` (path -> bytes) on 127.0.0.1 as a plain
web server does: HEAD and GET, ``Range: bytes=a-b`` answered with 206 and
``Content-Range``, an ``ETag`` (the md5 of the bytes, quoted) and
``If-Match`` answered with 412 when it names another etag. With
``honour_if_match=False`` it ignores ``If-Match``, as some servers do, so a
test shows that artfs compares the etag of the answer as well. Every request
is logged as (method, path, Range, If-Match), so tests count ranged GETs on
the wire.

``tls(dir)`` makes a throwaway CA and a certificate it signs for 127.0.0.1
and localhost with the ``openssl`` command line (scripts/setup.sh installs
it); ``RefServer(certfile=..., keyfile=...)`` then serves https, and artfs
trusts it when told the CA (``root_certificate`` in ``[object_store]``).
"""

from __future__ import annotations

import hashlib
import re
import ssl
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

_RANGE = re.compile(r"bytes=(\d+)-(\d*)$")


def etag_of(body: bytes) -> str:
    return f'"{hashlib.md5(body).hexdigest()}"'


def tls(directory: Path) -> tuple[Path, Path, Path]:
    """(CA certificate, server certificate, server key): a fresh CA, and a
    certificate it signs for 127.0.0.1 and localhost (rustls, under obstore,
    refuses a CA certificate used as the server's own)."""
    directory.mkdir(parents=True, exist_ok=True)
    ca, ca_key = directory / "ca.pem", directory / "ca-key.pem"
    cert, key, csr = directory / "cert.pem", directory / "key.pem", directory / "cert.csr"
    ext = directory / "ext.cnf"
    ext.write_text(
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth\n"
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
    )

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)

    openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-keyout", str(ca_key),
        "-out", str(ca), "-subj", "/CN=artfs test CA",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    )  # fmt: skip
    openssl(
        "req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(csr),
        "-subj", "/CN=127.0.0.1",
    )  # fmt: skip
    openssl(
        "x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key),
        "-CAcreateserial", "-days", "2", "-out", str(cert), "-extfile", str(ext),
    )  # fmt: skip
    return ca, cert, key


class RefServer:
    def __init__(
        self,
        resources: dict[str, bytes] | None = None,
        *,
        certfile: Path | None = None,
        keyfile: Path | None = None,
        honour_if_match: bool = True,
    ) -> None:
        self.resources: dict[str, bytes] = dict(resources or {})
        self.requests: list[tuple[str, str, str | None, str | None]] = []
        self.honour_if_match = honour_if_match
        self._lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_HEAD(self) -> None:
                owner._answer(self, body=False)

            def do_GET(self) -> None:
                owner._answer(self, body=True)

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.scheme = "http"
        if certfile is not None:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(certfile, keyfile)
            self._server.socket = ctx.wrap_socket(self._server.socket, server_side=True)
            self.scheme = "https"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> RefServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def put(self, path: str, body: bytes) -> None:
        with self._lock:
            self.resources[path] = body

    def delete(self, path: str) -> None:
        with self._lock:
            self.resources.pop(path, None)

    def clear(self) -> None:
        with self._lock:
            self.requests.clear()

    def ranged_gets(self, path: str) -> list[str]:
        """The Range headers of the ranged GETs of ``path``, in order."""
        with self._lock:
            return [r for m, p, r, _ in self.requests if m == "GET" and p == path and r]

    def count(self, method: str, path: str) -> int:
        with self._lock:
            return sum(1 for m, p, _, _ in self.requests if m == method and p == path)

    def _answer(self, h: BaseHTTPRequestHandler, body: bool) -> None:
        rng, if_match = h.headers.get("Range"), h.headers.get("If-Match")
        with self._lock:
            self.requests.append((h.command, h.path, rng, if_match))
            data = self.resources.get(h.path)
        if data is None:
            h.send_response(404)
            h.send_header("Content-Length", "0")
            h.end_headers()
            return
        etag = etag_of(data)
        if self.honour_if_match and if_match is not None and if_match not in ("*", etag):
            h.send_response(412)
            h.send_header("Content-Length", "0")
            h.end_headers()
            return
        start, end = 0, len(data)
        m = _RANGE.match(rng or "")
        if m is not None and body:
            start = int(m.group(1))
            end = min(len(data), int(m.group(2)) + 1) if m.group(2) else len(data)
            if start >= len(data):
                h.send_response(416)
                h.send_header("Content-Range", f"bytes */{len(data)}")
                h.send_header("Content-Length", "0")
                h.end_headers()
                return
            h.send_response(206)
            h.send_header("Content-Range", f"bytes {start}-{end - 1}/{len(data)}")
        else:
            h.send_response(200)
        h.send_header("Content-Length", str(end - start))
        h.send_header("ETag", etag)
        h.send_header("Accept-Ranges", "bytes")
        h.send_header("Last-Modified", "Tue, 01 Dec 2026 10:00:00 GMT")
        h.end_headers()
        if body:
            h.wfile.write(data[start:end])
