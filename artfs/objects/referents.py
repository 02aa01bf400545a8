"""Referents: objects outside the store that a reference entry points to, by URI.

A reference entry (doc/FORMAT.md §3.4) names its bytes by a URI instead of a
blob: ``s3://bucket/key``, ``gs://bucket/key``, ``az://container/key``,
``file:///abs/path`` or ``https://host/path`` (``http://`` only to a loopback
host, as for stores). This module is the one place that opens such a URI:

- ``check_uri`` validates a URI's shape; every URI read from a manifest is
  untrusted and goes through it before anything is opened.
- ``Referents.head`` gives size and etag, ``download`` streams the bytes
  (with ``etag``, only if the object still has that etag: S3 and Azure send
  ``If-Match``, GCS and HTTP compare the etag of the answer, files compare
  their stat), ``get_range`` reads one range of the object with that etag
  (the parts of a lazy read, ``artfs.cache.partial``), ``expand`` lists a
  prefix (``s3://b/dir/``, a ``file://`` directory) into one object per key.

Buckets are opened through ``CloudStore`` at the bucket's root, so a referent
reads with exactly the credentials, endpoints, timeouts and retries a store
of that service would (the ``[object_store]`` config table, the ``AWS_*``,
``GOOGLE_*``, ``AZURE_*`` environment, the AWS shared files). An https host
is verified against the system's roots plus ``root_certificate_file`` of
``[object_store]`` (a private CA), or the bundle ``SSL_CERT_FILE`` names.
Referents are never written: artfs only reads them.

The etag of a ``file://`` referent is ``<size>-<mtime_ns>-<inode>`` (a file
has no etag; an edit or a replacement changes one of the three).
"""

from __future__ import annotations

import contextlib
import os
import stat
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import urlsplit

from artfs.objects.base import NotFound, PreconditionFailed, StoreError

SCHEMES = ("s3", "gs", "az", "file", "https", "http")
_BUCKET_SCHEMES = ("s3", "gs", "az")
MAX_URI = 4096
MAX_ETAG = 1024
_CHUNK = 8 << 20


class BadReference(ValueError):
    """A reference URI (or its etag) that breaks the rules: refused before any use."""


@dataclass(frozen=True)
class Referent:
    """One object outside the store, as it is now."""

    uri: str
    size: int
    etag: str


def _loopback(host: str) -> bool:
    from artfs.objects.cloud import _loopback as loopback

    return loopback(f"http://{host}/")


def check_uri(uri: object, *, prefix: bool = False) -> str:
    """``uri`` if it is a reference URI artfs opens; else BadReference.

    ``prefix`` allows a trailing ``/`` (a prefix to expand); an object's URI
    never ends in one.
    """
    if not isinstance(uri, str) or not uri or len(uri) > MAX_URI:
        raise BadReference(f"bad reference URI {str(uri)[:80]!r}: empty or too long")
    if any(c in uri for c in "\0\r\n") or not uri.isprintable():
        raise BadReference(f"bad reference URI {uri[:80]!r}: control characters")
    scheme, sep, rest = uri.partition("://")
    if not sep or scheme not in SCHEMES:
        raise BadReference(
            f"bad reference URI {uri[:80]!r}: use s3://, gs://, az://, file:// or https://"
        )
    if "?" in rest or "#" in rest:
        raise BadReference(f"bad reference URI {uri[:80]!r}: no query or fragment")
    if not prefix and uri.endswith("/"):
        raise BadReference(f"bad reference URI {uri[:80]!r}: names a prefix, not an object")
    if scheme == "file":
        if not rest.startswith("/"):
            raise BadReference(f"bad reference URI {uri[:80]!r}: file:// needs an absolute path")
        parts = rest.split("/")[1:]
        if any(p in (".", "..") for p in parts) or "" in parts[:-1]:
            raise BadReference(f"bad reference URI {uri[:80]!r}: not a plain absolute path")
        return uri
    host, slash, path = rest.partition("/")
    if not host or not slash or (not path and not prefix):
        raise BadReference(f"bad reference URI {uri[:80]!r}: no bucket/host or no key")
    if scheme in _BUCKET_SCHEMES:
        if any(p in ("", ".", "..") for p in path.rstrip("/").split("/")) and path:
            raise BadReference(f"bad reference URI {uri[:80]!r}: empty or dot key component")
        return uri
    try:
        hostname = urlsplit(uri).hostname or ""
    except ValueError:
        raise BadReference(f"bad reference URI {uri[:80]!r}: bad host") from None
    if scheme == "http" and not _loopback(hostname):
        raise BadReference(f"bad reference URI {uri[:80]!r}: http:// only to loopback; use https")
    return uri


def check_etag(etag: object) -> str:
    if not isinstance(etag, str) or not etag or len(etag) > MAX_ETAG or not etag.isprintable():
        raise BadReference(f"bad reference etag {str(etag)[:80]!r}")
    return etag


def _file_etag(st: os.stat_result) -> str:
    return f"{st.st_size}-{st.st_mtime_ns}-{st.st_ino}"


def _file_path(uri: str) -> Path:
    return Path(uri.partition("://")[2])  # literal: no percent-decoding


class Referents:
    """Opens referents by URI; one backend per bucket or host, made on first use.

    Thread-safe. Errors: NotFound (no such object), PreconditionFailed (it
    no longer has the etag asked for), StoreError (anything else),
    BadReference (the URI)."""

    def __init__(self, options: dict[str, Any] | None = None) -> None:
        self._options = options
        self._stores: dict[str, Any] = {}
        self._lock = threading.Lock()

    # -- backends ---------------------------------------------------------

    def _bucket(self, uri: str) -> tuple[Any, str]:
        """(CloudStore at the bucket's root, key) for an s3/gs/az URI."""
        scheme, _, rest = uri.partition("://")
        bucket, _, key = rest.partition("/")
        from artfs.objects.cloud import CloudStore

        root = f"{scheme}://{bucket}"
        return self._store(root, lambda: CloudStore(root, self._options)), key

    def _http(self, uri: str) -> tuple[Any, str]:
        """(obstore HTTPStore at the host's root, path) for an http(s) URI."""
        from datetime import timedelta

        from obstore.store import HTTPStore

        from artfs.objects.cloud import tls_client_options

        scheme, _, rest = uri.partition("://")
        host, _, path = rest.partition("/")
        root = f"{scheme}://{host}/"

        def make() -> Any:
            return HTTPStore.from_url(
                root,
                client_options={
                    "allow_http": scheme == "http",  # check_uri allowed only loopback
                    "timeout": timedelta(seconds=60),
                    "connect_timeout": timedelta(seconds=5),
                    **tls_client_options(self._options),
                },
                retry_config={"max_retries": 3, "retry_timeout": timedelta(seconds=20)},
            )

        return self._store(root, make), path

    def _store(self, root: str, make: Callable[[], Any]) -> Any:
        """The store for ``root``, made on first use (outside the lock: making
        one may read config files) and shared after."""
        with self._lock:
            store = self._stores.get(root)
        if store is None:
            store = make()
            with self._lock:
                store = self._stores.setdefault(root, store)
        return store

    # -- operations ---------------------------------------------------------

    def head(self, uri: str) -> Referent:
        """Size and etag of the object now."""
        check_uri(uri)
        scheme = uri.partition("://")[0]
        if scheme == "file":
            try:
                st = os.stat(_file_path(uri))
            except FileNotFoundError:
                raise NotFound(uri) from None
            except OSError as e:
                raise StoreError(f"cannot stat {uri}: {e.strerror}") from None
            if not stat.S_ISREG(st.st_mode):
                raise StoreError(f"{uri} is not a regular file")
            return Referent(uri, st.st_size, _file_etag(st))
        if scheme in _BUCKET_SCHEMES:
            store, key = self._bucket(uri)
            info = store.head(key)
            return Referent(uri, info.size, info.etag)
        meta = self._http_call(uri, lambda s, p: __import__("obstore").head(s, p))
        return Referent(uri, int(meta["size"]), meta.get("e_tag") or "")

    def _http_call(self, uri: str, fn: Callable[[Any, str], Any]) -> Any:
        from obstore import exceptions as obx

        store, path = self._http(uri)
        try:
            return fn(store, path)
        except (obx.NotFoundError, FileNotFoundError):
            raise NotFound(uri) from None
        except obx.PreconditionError:
            raise PreconditionFailed(f"changed: {uri}") from None
        except obx.BaseError as e:
            raise StoreError(f"{uri}: {str(e).splitlines()[0] if str(e) else e}") from None

    def download(self, uri: str, out: BinaryIO, etag: str | None = None) -> int:
        """Stream the whole object into ``out``; with ``etag``, PreconditionFailed
        unless the bytes are those of the object with that etag."""
        check_uri(uri)
        scheme = uri.partition("://")[0]
        if scheme == "file":
            return self._download_file(uri, out, etag)
        if scheme in _BUCKET_SCHEMES:
            store, key = self._bucket(uri)
            if etag is None or store.service.tag_is_generation:
                # GCS: the etag we hold is a generation, which If-Match does
                # not take; compare it before and after instead.
                if etag is not None and store.head(key).etag != etag:
                    raise PreconditionFailed(f"changed: {uri}")
                n = store.download(key, out)
                if etag is not None and store.head(key).etag != etag:
                    raise PreconditionFailed(f"changed while read: {uri}")
                return n
            return store.download(key, out, if_match=etag)

        def fetch(store: Any, path: str) -> int:
            import obstore

            result = obstore.get(store, path)
            if etag is not None and result.meta.get("e_tag") != etag:
                raise PreconditionFailed(f"changed: {uri}")
            n = 0
            for chunk in result.stream(min_chunk_size=_CHUNK):
                out.write(chunk)
                n += len(chunk)
            return n

        return self._http_call(uri, fetch)

    def get_range(self, uri: str, offset: int, length: int, etag: str) -> bytes:
        """``length`` bytes at ``offset`` of the object, only if it still has
        ``etag`` (PreconditionFailed else): a reader's part, pinned to the
        committed object. S3 and Azure send ``If-Match``, GCS compares the
        generation of the answer, HTTP sends ``If-Match`` and compares the
        answer's etag (a server may ignore the header), a file compares its
        stat before and after."""
        check_uri(uri)
        if length <= 0:
            return b""
        scheme = uri.partition("://")[0]
        if scheme == "file":
            return self._file_range(uri, offset, length, etag)
        if scheme in _BUCKET_SCHEMES:
            store, key = self._bucket(uri)
            return store.get_range(key, offset, length, if_match=etag)  # type: ignore[no-any-return]

        def fetch(store: Any, path: str) -> bytes:
            import obstore

            options: Any = {"range": (offset, offset + length), "if_match": etag}
            result = obstore.get(store, path, options=options)
            if result.meta.get("e_tag") != etag:
                raise PreconditionFailed(f"changed: {uri}")
            return bytes(result.bytes())

        return self._http_call(uri, fetch)  # type: ignore[no-any-return]

    def _file_range(self, uri: str, offset: int, length: int, etag: str) -> bytes:
        fd = self._open_file(uri)
        try:
            if _file_etag(os.fstat(fd)) != etag:
                raise PreconditionFailed(f"changed: {uri}")
            data = bytearray()
            while len(data) < length:
                chunk = os.pread(fd, length - len(data), offset + len(data))
                if not chunk:
                    break
                data += chunk
            if _file_etag(os.fstat(fd)) != etag:
                raise PreconditionFailed(f"changed while read: {uri}")
            return bytes(data)
        finally:
            os.close(fd)

    def _open_file(self, uri: str) -> int:
        """A read-only fd of a regular file (not through a final symlink)."""
        try:
            fd = os.open(_file_path(uri), os.O_RDONLY | os.O_NOFOLLOW)
        except FileNotFoundError:
            raise NotFound(uri) from None
        except OSError as e:
            raise StoreError(f"cannot open {uri}: {e.strerror}") from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise StoreError(f"{uri} is not a regular file")
        return fd

    def _download_file(self, uri: str, out: BinaryIO, etag: str | None) -> int:
        fd = self._open_file(uri)
        try:
            before = os.fstat(fd)
            if etag is not None and _file_etag(before) != etag:
                raise PreconditionFailed(f"changed: {uri}")
            n = 0
            with os.fdopen(os.dup(fd), "rb") as src:
                while chunk := src.read(_CHUNK):
                    out.write(chunk)
                    n += len(chunk)
            if etag is not None and _file_etag(os.fstat(fd)) != etag:
                raise PreconditionFailed(f"changed while read: {uri}")
            return n
        finally:
            os.close(fd)

    def expand(self, uri: str, max_objects: int | None = None) -> list[Referent]:
        """The objects a URI names: itself, or every object under a prefix
        (``.../`` or a ``file://`` directory), sorted by URI. More than
        ``max_objects`` is refused (BadReference) before any is read."""
        check_uri(uri, prefix=True)
        scheme = uri.partition("://")[0]
        found: list[Referent]
        if scheme == "file":
            path = _file_path(uri)
            if path.is_dir():
                found = self._walk(path, max_objects)
            elif uri.endswith("/"):
                raise NotFound(uri)
            else:
                found = [self.head(uri)]
        elif scheme in _BUCKET_SCHEMES and uri.endswith("/"):
            store, key = self._bucket(uri)
            listed = []
            for info in store.iter_objects(key):
                listed.append(info)
                _limit(uri, len(listed), max_objects)
            found = _as_headed(scheme, _bucket_of(uri), store, listed)
        elif uri.endswith("/"):
            raise BadReference(f"cannot list {uri}: an https prefix has no listing")
        else:
            found = [self.head(uri)]
        _limit(uri, len(found), max_objects)
        if not found:
            raise NotFound(uri)
        return sorted(found, key=lambda r: r.uri)

    def _walk(self, root: Path, max_objects: int | None) -> list[Referent]:
        out: list[Referent] = []
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            for name in sorted(filenames):
                full = Path(dirpath) / name
                with contextlib.suppress(FileNotFoundError):
                    st = full.lstat()
                    if stat.S_ISREG(st.st_mode):
                        out.append(Referent(f"file://{full}", st.st_size, _file_etag(st)))
                        _limit(f"file://{root}", len(out), max_objects)
        return out


def _as_headed(scheme: str, bucket: str, store: Any, listed: list[Any]) -> list[Referent]:
    """A listing's objects as referents whose etag is the one a HEAD gives,
    the one readers compare: GCS lists ETags, not generations, so each object
    is HEADed; Azure lists its ETags without the quotes of a HEAD. obstore
    lists a "dir/" placeholder (0 bytes) as "dir", which no GET finds: a
    0-byte object a HEAD does not find is skipped (as is, on GCS, any object
    deleted between the listing and its HEAD)."""
    from concurrent.futures import ThreadPoolExecutor

    def headed(info: Any) -> Any:
        if scheme != "gs" and info.size:
            return info
        try:
            return store.head(info.key)
        except NotFound:
            return None

    with ThreadPoolExecutor(max_workers=16) as pool:
        infos = [i for i in pool.map(headed, listed) if i is not None]
    out = []
    for info in infos:
        etag = info.etag
        if scheme == "az" and etag and not etag.startswith('"'):
            etag = f'"{etag}"'
        out.append(Referent(f"{scheme}://{bucket}/{info.key}", info.size, etag))
    return out


def _bucket_of(uri: str) -> str:
    return uri.partition("://")[2].partition("/")[0]


def _limit(uri: str, count: int, max_objects: int | None) -> None:
    if max_objects is not None and count > max_objects:
        raise BadReference(
            f"{uri} holds more than {max_objects} objects (--max-objects {max_objects}): "
            "name a narrower prefix or raise the limit"
        )


def relative_name(prefix_uri: str, uri: str) -> str:
    """The path of ``uri`` below the prefix it was listed from."""
    if prefix_uri.partition("://")[0] == "file":
        base = str(_file_path(prefix_uri)).rstrip("/") + "/"
        return str(_file_path(uri))[len(base) :]
    base = prefix_uri if prefix_uri.endswith("/") else prefix_uri + "/"
    return uri[len(base) :]
