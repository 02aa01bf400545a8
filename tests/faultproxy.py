"""A small HTTP/1.1 proxy on 127.0.0.1 that injects faults between artfs and an S3 server.

It understands just enough HTTP to forward one request at a time per
connection (Content-Length and chunked bodies, keep-alive), so it can act per
request: delay it, answer 500 without forwarding it, reset the connection
before forwarding it, reset it halfway through the response body, or strip the
conditional headers (If-None-Match / If-Match) as some S3-compatible services
silently do, or forward it and then drop the answer (the request took
effect, the client cannot know). ``down`` makes it reset every connection at once: a store that
stays down.

Every fault is chosen per request with a seeded RNG, so a run is repeatable
up to thread scheduling. ``requests`` records (method, path, range) of every
request that reached the proxy, for tests that count fetches.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import random
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

_HOP_HEADERS = {b"expect"}
_UPSTREAM_IDLE = 1.0  # seconds an upstream connection may idle before a fresh one
# S3 and Azure: If-None-Match / If-Match; GCS: its generation precondition.
_CONDITIONAL_HEADERS = {b"if-none-match", b"if-match", b"x-goog-if-generation-match"}


@dataclass
class Faults:
    """Shares (0..1) of requests that get each fault; at most one fault per request."""

    delay: float = 0.0
    delay_seconds: float = 0.5
    error: float = 0.0  # answer 500 without forwarding
    reset: float = 0.0  # reset the connection before forwarding
    reset_body: float = 0.0  # forward, then reset halfway through the response body
    lost_reply: float = 0.0  # forward (the request takes effect), then reset: the answer is lost
    strip_conditions: bool = False
    down: bool = False
    only_methods: frozenset[str] = field(default_factory=frozenset)  # empty: every method
    limit: int | None = None  # inject at most this many faults (``down`` aside)


class _Closed(Exception):
    pass


def _recv_until(sock: socket.socket, buf: bytearray, marker: bytes) -> bytes:
    while True:
        i = buf.find(marker)
        if i >= 0:
            out = bytes(buf[: i + len(marker)])
            del buf[: i + len(marker)]
            return out
        chunk = sock.recv(65536)
        if not chunk:
            raise _Closed
        buf += chunk


def _recv_exact(sock: socket.socket, buf: bytearray, n: int) -> bytes:
    while len(buf) < n:
        chunk = sock.recv(max(65536, n - len(buf)))
        if not chunk:
            raise _Closed
        buf += chunk
    out = bytes(buf[:n])
    del buf[:n]
    return out


def _parse_head(head: bytes) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    lines = head.split(b"\r\n")
    headers = []
    for line in lines[1:]:
        if not line:
            continue
        name, _, value = line.partition(b":")
        headers.append((name.strip(), value.strip()))
    return lines[0], headers


def _header(headers: list[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    for k, v in headers:
        if k.lower() == name:
            return v
    return None


def _build_head(first: bytes, headers: list[tuple[bytes, bytes]]) -> bytes:
    return first + b"\r\n" + b"".join(k + b": " + v + b"\r\n" for k, v in headers) + b"\r\n"


def _read_chunked(sock: socket.socket, buf: bytearray) -> bytes:
    """A whole chunked body, raw (size lines included), to forward as is."""
    out = bytearray()
    while True:
        line = _recv_until(sock, buf, b"\r\n")
        out += line
        size = int(line.split(b";")[0].strip() or b"0", 16)
        if size == 0:
            while True:
                trailer = _recv_until(sock, buf, b"\r\n")
                out += trailer
                if trailer == b"\r\n":
                    return bytes(out)
        out += _recv_exact(sock, buf, size + 2)


def _resign(
    first: bytes, headers: list[tuple[bytes, bytes]], secret: str
) -> list[tuple[bytes, bytes]]:
    """Sign a request again (AWS SigV4) after headers were dropped from it.

    S3 clients sign the conditional headers; a service that ignores them is
    emulated by dropping them and signing what is left, as a server that never
    saw them would accept it.
    """
    auth = _header(headers, b"authorization")
    if auth is None:
        return headers
    fields = dict(part.strip().split("=", 1) for part in auth.decode().split(" ", 1)[1].split(","))
    present = {k.lower().decode() for k, _ in headers}
    signed = [h for h in fields["SignedHeaders"].split(";") if h in present]
    method, target = first.decode().split(" ")[:2]
    path, _, query = target.partition("?")
    canonical_query = "&".join(sorted(q if "=" in q else q + "=" for q in query.split("&") if q))
    values = {k.lower().decode(): v.decode().strip() for k, v in headers}
    canonical_headers = "".join(f"{h}:{values[h]}\n" for h in signed)
    payload = values.get("x-amz-content-sha256", "UNSIGNED-PAYLOAD")
    request = "\n".join(
        [method, path, canonical_query, canonical_headers, ";".join(signed), payload]
    )
    credential = fields["Credential"]
    _, date, region, service, _ = credential.split("/")
    scope = f"{date}/{region}/{service}/aws4_request"
    to_sign = "\n".join(
        [
            "AWS4-HMAC-SHA256",
            values["x-amz-date"],
            scope,
            hashlib.sha256(request.encode()).hexdigest(),
        ]
    )
    key = ("AWS4" + secret).encode()
    for part in (date, region, service, "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    new_auth = (
        f"AWS4-HMAC-SHA256 Credential={credential}, SignedHeaders={';'.join(signed)}, "
        f"Signature={signature}"
    ).encode()
    return [(k, new_auth if k.lower() == b"authorization" else v) for k, v in headers]


def _reset(sock: socket.socket) -> None:
    """Close with RST instead of FIN: the peer sees a dropped connection."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.close()


class FaultProxy:
    def __init__(
        self,
        upstream_port: int,
        faults: Faults | None = None,
        seed: int = 0,
        secret_key: str | None = None,
        resign: Callable[[bytes, list[tuple[bytes, bytes]]], list[tuple[bytes, bytes]]]
        | None = None,
    ) -> None:
        self.upstream = ("127.0.0.1", upstream_port)
        self._secret_key = secret_key  # to sign requests again after stripping headers
        self._resign = resign  # the same for other signatures (Azure's SharedKey)
        self.faults = faults or Faults()
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self.requests: list[tuple[str, str, str | None]] = []
        self.injected = dict.fromkeys(
            ("delay", "error", "reset", "reset_body", "lost_reply", "down"), 0
        )
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(128)
        self.port = self._listener.getsockname()[1]
        self._closing = False
        self._inflight = 0
        self.max_inflight = 0  # most requests being served at once
        self._conns: set[socket.socket] = set()
        self._thread = threading.Thread(target=self._accept, daemon=True, name="faultproxy")
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def set(self, **changes) -> None:
        """Change fault settings while running (e.g. ``proxy.set(down=True)``)."""
        with self._lock:
            for k, v in changes.items():
                if not hasattr(self.faults, k):
                    raise AttributeError(k)
                setattr(self.faults, k, v)

    def count(self, method: str | None = None, path_contains: str = "") -> int:
        with self._lock:
            return sum(
                1
                for m, p, _ in self.requests
                if (method is None or m == method) and path_contains in p
            )

    def clear(self) -> None:
        with self._lock:
            self.requests.clear()

    def close(self) -> None:
        self._closing = True
        with contextlib.suppress(OSError):
            self._listener.close()
        with self._lock:
            conns = list(self._conns)
        for c in conns:
            with contextlib.suppress(OSError):
                c.close()

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- machinery ----------------------------------------------------------

    def _accept(self) -> None:
        while not self._closing:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                self._conns.add(client)
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _choose(self, method: str) -> str | None:
        with self._lock:
            f = self.faults
            if f.down:
                self.injected["down"] += 1
                return "down"
            if f.only_methods and method not in f.only_methods:
                return None
            if f.limit is not None and sum(self.injected.values()) >= f.limit:
                return None
            r = self._rng.random()
            for name in ("error", "reset", "reset_body", "lost_reply", "delay"):
                share = getattr(f, name)
                if r < share:
                    self.injected[name] += 1
                    return name
                r -= share
            return None

    def _serve(self, client: socket.socket) -> None:
        upstream: list = []  # [socket, when last answered], opened on the first forwarded request
        cbuf = bytearray()
        ubuf = bytearray()
        try:
            while True:
                try:
                    head = _recv_until(client, cbuf, b"\r\n\r\n")
                except (_Closed, OSError):
                    return
                first, headers = _parse_head(head)
                method, path = first.decode().split(" ")[:2]
                rng = _header(headers, b"range")
                with self._lock:
                    self.requests.append((method, path, rng.decode() if rng is not None else None))
                if (_header(headers, b"transfer-encoding") or b"").lower() == b"chunked":
                    body = _read_chunked(client, cbuf)
                else:
                    body = _recv_exact(client, cbuf, int(_header(headers, b"content-length") or 0))
                fault = self._choose(method)
                with self._lock:
                    self._inflight += 1
                    self.max_inflight = max(self.max_inflight, self._inflight)
                try:
                    keep = self._forward(client, upstream, ubuf, first, headers, body, fault)
                finally:
                    with self._lock:
                        self._inflight -= 1
                if not keep:
                    return
        except (_Closed, OSError):
            return
        finally:
            with self._lock:
                self._conns.discard(client)
            for s in (client, *upstream[:1]):
                with contextlib.suppress(OSError):
                    s.close()

    def _forward(
        self,
        client: socket.socket,
        upstream: list,
        ubuf: bytearray,
        first: bytes,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
        fault: str | None,
    ) -> bool:
        """Serve one request, with its fault; False when the connection is to be dropped."""
        if fault in ("down", "reset"):
            _reset(client)
            return False
        if fault == "error":
            client.sendall(
                b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n"
                b"Connection: close\r\n\r\n"
            )
            return False
        if fault == "delay":
            time.sleep(self.faults.delay_seconds)
        drop = set(_HOP_HEADERS)
        if self.faults.strip_conditions:
            drop |= _CONDITIONAL_HEADERS
        stripped = any(k.lower() in drop for k, _ in headers)
        headers = [(k, v) for k, v in headers if k.lower() not in drop]
        if stripped and self._secret_key is not None:
            headers = _resign(first, headers, self._secret_key)
        elif stripped and self._resign is not None:
            headers = self._resign(first, headers)
        if upstream and time.monotonic() - upstream[1] > _UPSTREAM_IDLE:
            # Azurite (Node) closes a keep-alive connection after 5 s idle: a
            # request sent on it would get no answer, the client would retry
            # it, and a test counting requests would count it twice.
            with contextlib.suppress(OSError):
                upstream[0].close()
            upstream.clear()
            ubuf.clear()
        if not upstream:
            upstream[:] = [socket.create_connection(self.upstream), 0.0]
        upstream[0].sendall(_build_head(first, headers) + body)
        method = first.split(b" ")[0].decode()
        keep = self._relay_response(upstream[0], ubuf, client, method, fault)
        upstream[1] = time.monotonic()
        return keep

    def _relay_response(
        self,
        upstream: socket.socket,
        ubuf: bytearray,
        client: socket.socket,
        method: str,
        fault: str | None,
    ) -> bool:
        """Forward one response; False when the connection is to be dropped."""
        while True:
            head = _recv_until(upstream, ubuf, b"\r\n\r\n")
            first, headers = _parse_head(head)
            status = int(first.split(b" ")[1])
            if status >= 200:
                break
            client.sendall(head)  # 1xx: pass through, wait for the final answer
        keep = (_header(headers, b"connection") or b"").lower() != b"close"
        if method == "HEAD" or status in (204, 304):
            client.sendall(head)
            return keep
        if (_header(headers, b"transfer-encoding") or b"").lower() == b"chunked":
            body = _read_chunked(upstream, ubuf)
        elif (length := _header(headers, b"content-length")) is not None:
            body = _recv_exact(upstream, ubuf, int(length))
        else:
            body = bytes(ubuf)
            ubuf.clear()
            while chunk := upstream.recv(65536):
                body += chunk
            keep = False
        if fault == "lost_reply":
            _reset(client)
            return False
        if fault == "reset_body" and len(body) > 1:
            client.sendall(head + body[: len(body) // 2])
            _reset(client)
            return False
        client.sendall(head + body)
        return keep
