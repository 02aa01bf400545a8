"""A store in an object-store bucket: S3 (and S3-compatible services), GCS, Azure.

Everything goes through obstore's synchronous API, which releases the GIL
and is safe to call from many threads at once; the FUSE daemon calls it from
worker threads (obstore's async API does not run under trio).

Guarantees, and how they map onto the service:

- create-only puts and compare-and-swap are each service's own conditional
  request (``_SERVICES``): S3 and Azure send ``If-None-Match: *`` and
  ``If-Match: <etag>``; GCS sends ``x-goog-if-generation-match: 0`` and
  ``x-goog-if-generation-match: <generation>`` (GCS does not apply If-Match to
  a write). So on GCS the "etag" this store hands out (``put``, ``head``) is
  the object's generation, the token its compare-and-swap takes; callers never
  see the difference. Some services ignore conditions silently, so before the
  first write a store is probed: two create-only puts of one scratch key (the
  second must fail) and one compare-and-swap with a wrong etag or generation
  (it must fail). A store that fails the probe is refused for writing, with a
  message that names the service and the header that was ignored.
- A request that fails on a 5xx, a timeout or a dropped connection is retried
  with exponential backoff (obstore's retries, plus ours for failures obstore
  does not retry, such as a connection dropped halfway through a body), until
  ``timeout`` seconds have passed since the operation began; then it raises
  StoreError. A store that stays down fails after a bounded time, never hangs.
- A retried conditional put may find its own first attempt already landed
  (the answer was lost, not the write). Each conditional put carries a unique
  token in the object's metadata; when one fails its precondition, the
  object's metadata is read: if it holds our token, the put succeeded and
  returns that etag. So a retry never turns a commit's own version record
  into a conflict and a second version, and a real conflict stays one.
- Large files upload in parts, in parallel (``max_concurrency`` parts at a
  time). S3 has no create-only multipart upload in obstore, so a create-only
  put of a file above ``multipart_threshold`` checks that the key is absent and
  then uploads: put_file is for content-addressed blobs, where two writers
  racing on one key write the same bytes. Parts grow past ``part_size`` when
  a file would need more parts than the service allows (10,000 on S3 and
  GCS, 50,000 blocks on Azure).
- Azure leases are not used: a blob someone else leased refuses our writes
  (412), which is reported like any failed precondition.

Configuration, first match wins: the ``options`` argument, the ``[object_store]``
table of the artfs config file (any obstore store option such as ``endpoint``,
``region``, ``access_key_id``, ``service_account``, ``account_name``, plus the
artfs keys below; keys in its ``[object_store.s3]``, ``.gs`` or ``.az`` table
apply to that service only, over the flat ones), the usual environment
(``AWS_*``, ``GOOGLE_*``, ``AZURE_*``, ``AZURITE_BLOB_STORAGE_URL``, read by
obstore; ``GOOGLE_APPLICATION_CREDENTIALS`` too), and for S3 the AWS shared files
(``~/.aws/credentials`` and ``~/.aws/config``, profile from ``AWS_PROFILE`` or
the ``profile`` option). Plain http is allowed only for an endpoint on
loopback (S3 ``endpoint``, GCS ``base_url`` or a service account file's
``gcs_base_url``, Azure ``endpoint`` or the emulator), or with
``allow_http = true``.

artfs keys: ``timeout`` (seconds an operation may take, retries included;
also ``ARTFS_STORE_TIMEOUT``), ``request_timeout``, ``connect_timeout``,
``multipart_threshold``, ``part_size``, ``max_concurrency``, ``allow_http``,
``profile``, ``root_certificate_file`` (a PEM file of CA certificates to
trust for https besides the system's, for a service or an https referent
behind a private CA; ``tls_client_options``; ``SSL_CERT_FILE``, which
obstore's TLS stack reads, replaces the system's instead).
"""

from __future__ import annotations

import configparser
import contextlib
import ipaddress
import json
import math
import os
import random
import threading
import time
import tomllib
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, BinaryIO, TypeVar
from urllib.parse import urlsplit

import obstore
from obstore import exceptions as obx
from obstore.store import AzureStore, GCSStore, S3Store

from artfs.objects.base import (
    Listing,
    NotFound,
    ObjectInfo,
    ObjectStore,
    PreconditionFailed,
    StoreError,
)

T = TypeVar("T")

DEFAULTS: dict[str, Any] = {
    "timeout": 60.0,
    "request_timeout": 60.0,
    "connect_timeout": 5.0,
    "multipart_threshold": 64 << 20,
    "part_size": 16 << 20,
    "max_concurrency": 8,
}
_ARTFS_KEYS = {*DEFAULTS, "allow_http", "profile", "root_certificate_file"}
MiB = 1 << 20
_DOWNLOAD_CHUNK = 8 << 20
_PROBE_PREFIX = ".artfs-probe/"
# Metadata name of a conditional put's token: letters only, the one spelling
# every service takes (Azure wants an identifier, some proxies drop "_").
_WRITE_TOKEN = "artfswritetoken"


@dataclass(frozen=True)
class _Service:
    """What differs between the services, in the words of their own APIs."""

    name: str
    create_only: str  # the condition a create-only put sends
    compare_and_swap: str  # the condition a compare-and-swap put sends
    tag_is_generation: bool  # compare-and-swap takes the generation, not the etag
    max_parts: int  # parts (S3, GCS) or blocks (Azure) one object may have


_SERVICES = {
    "s3": _Service("S3", "If-None-Match: *", "If-Match: <etag>", False, 10_000),
    "gs": _Service(
        "GCS",
        "x-goog-if-generation-match: 0",
        "x-goog-if-generation-match: <generation>",
        True,
        10_000,
    ),
    "az": _Service("Azure", "If-None-Match: *", "If-Match: <etag>", False, 50_000),
}


def _loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _as_bool(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)


def _option_text(value: Any) -> Any:
    """obstore takes its config values as strings: TOML's true and 3 as "true" and "3"."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value) if isinstance(value, int | float) else value


def _config_file_options(service: str | None = None) -> dict[str, Any]:
    """The ``[object_store]`` table of the artfs config file, if any, with its
    ``[object_store.<service>]`` table (``s3``, ``gs``, ``az``) over it. Each
    service refuses the others' keys, so one flat table cannot configure an
    S3 store and a GCS or Azure reference entry's bucket at once. No
    ``service`` (an https referent): the flat table alone."""
    from artfs.config import config_path

    path = config_path()
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise StoreError(f"cannot read config {path}: {e}") from None
    table = raw.get("object_store", {})
    if not isinstance(table, dict):
        raise StoreError(f"config {path}: [object_store] must be a table")
    options = {k: v for k, v in table.items() if k not in _SERVICES}
    for name in _SERVICES:
        if not isinstance(table.get(name, {}), dict):
            raise StoreError(f"config {path}: [object_store.{name}] must be a table")
    if service is not None:
        options.update(table.get(service, {}))
    return options


def tls_client_options(options: dict[str, Any] | None = None) -> dict[str, Any]:
    """obstore client options for the ``root_certificate_file`` artfs key
    (``options``, else the config file's ``[object_store]``): the PEM text as
    ``root_certificate``, added to the system's trusted roots. StoreError if
    the file cannot be read or holds no certificate."""
    path = (options or {}).get("root_certificate_file")
    if path is None:
        path = _config_file_options().get("root_certificate_file")
    if path is None:
        return {}
    try:
        pem = Path(str(path)).expanduser().read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise StoreError(f"cannot read root_certificate_file {path}: {e}") from None
    if "-----BEGIN CERTIFICATE-----" not in pem:
        raise StoreError(f"root_certificate_file {path} holds no PEM certificate")
    return {"root_certificate": pem}


def _aws_profile(profile: str | None) -> dict[str, str]:
    """Credentials, region and endpoint from the AWS shared files, for one profile."""
    name = profile or os.environ.get("AWS_PROFILE") or os.environ.get("AWS_DEFAULT_PROFILE")
    home = Path.home()
    creds_file = Path(
        os.environ.get("AWS_SHARED_CREDENTIALS_FILE") or home / ".aws" / "credentials"
    )
    config_file = Path(os.environ.get("AWS_CONFIG_FILE") or home / ".aws" / "config")
    section = name or "default"
    out: dict[str, str] = {}

    def read(path: Path) -> configparser.ConfigParser | None:
        parser = configparser.ConfigParser(interpolation=None)
        try:
            parser.read(path)
        except (OSError, configparser.Error):
            return None
        return parser

    creds = read(creds_file)
    if creds is not None and creds.has_section(section):
        s = creds[section]
        for src, dst in (
            ("aws_access_key_id", "access_key_id"),
            ("aws_secret_access_key", "secret_access_key"),
            ("aws_session_token", "session_token"),
        ):
            if s.get(src):
                out[dst] = s[src]
    config = read(config_file)
    config_section = section if section == "default" else f"profile {section}"
    if config is not None and config.has_section(config_section):
        s = config[config_section]
        for src, dst in (
            ("region", "region"),
            ("endpoint_url", "endpoint"),
            ("aws_access_key_id", "access_key_id"),
            ("aws_secret_access_key", "secret_access_key"),
            ("aws_session_token", "session_token"),
        ):
            if s.get(src) and dst not in out:
                out[dst] = s[src]
    if name and not out:
        raise StoreError(f"AWS profile {name!r} not found in {creds_file} or {config_file}")
    return out


def _gcs_endpoint(store_config: dict[str, Any]) -> str | None:
    """Where GCS requests go: ``base_url``, else a service account file's
    ``gcs_base_url`` (how emulators are configured), else Google."""
    for key in ("base_url", "google_base_url"):
        if store_config.get(key):
            return store_config[key]
    if os.environ.get("GOOGLE_BASE_URL"):
        return os.environ["GOOGLE_BASE_URL"]
    keys = [p + n for p in ("", "google_") for n in ("service_account", "service_account_path")]
    path = next(
        (store_config[k] for k in keys if store_config.get(k)),
        os.environ.get("GOOGLE_SERVICE_ACCOUNT") or os.environ.get("GOOGLE_SERVICE_ACCOUNT_PATH"),
    )
    raw = (
        store_config.get("service_account_key")
        or store_config.get("google_service_account_key")
        or os.environ.get("GOOGLE_SERVICE_ACCOUNT_KEY")
    )
    try:
        if raw:
            key = json.loads(raw)
        elif path:
            key = json.loads(Path(path).read_text())
        else:
            return None
    except (OSError, ValueError):
        return None  # obstore says what is wrong with it when the store opens
    return key.get("gcs_base_url") if isinstance(key, dict) else None


def _azure_endpoint(store_config: dict[str, Any]) -> str | None:
    """Where Azure requests go: ``endpoint``, the emulator's URL, else Azure."""
    for key in ("endpoint", "azure_storage_endpoint", "azure_endpoint"):
        if store_config.get(key):
            return store_config[key]
    if os.environ.get("AZURE_STORAGE_ENDPOINT"):
        return os.environ["AZURE_STORAGE_ENDPOINT"]
    emulator = store_config.get("use_emulator") or os.environ.get("AZURE_STORAGE_USE_EMULATOR")
    if emulator and _as_bool(emulator):
        return os.environ.get("AZURITE_BLOB_STORAGE_URL") or "http://127.0.0.1:10000"
    return None


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


def _transient(e: BaseException) -> bool:
    """Worth retrying: 5xx, timeouts, dropped or refused connections."""
    if isinstance(
        e,
        obx.NotFoundError
        | obx.AlreadyExistsError
        | obx.PreconditionError
        | obx.PermissionDeniedError
        | obx.UnauthenticatedError
        | obx.InvalidPathError
        | obx.NotSupportedError
        | obx.UnknownConfigurationKeyError
        | FileNotFoundError,
    ):
        return False
    text = str(e)
    if "status code: 408" in text or "status code: 429" in text:
        return True  # request timeout, throttling: retry, with backoff
    # Any other 4xx the service meant (bad request, range, auth): same answer next time.
    return "status code: 4" not in text


class CloudStore(ObjectStore):
    def __init__(self, url: str, options: dict[str, Any] | None = None) -> None:
        self.url = url
        scheme = url.partition("://")[0]
        # Precedence: the options given, then the environment, then the config file.
        opts = _config_file_options(scheme if scheme in _SERVICES else "az")
        if os.environ.get("ARTFS_STORE_TIMEOUT"):
            opts["timeout"] = os.environ["ARTFS_STORE_TIMEOUT"]
        opts.update(options or {})
        artfs_opts = {k: opts.pop(k) for k in list(opts) if k in _ARTFS_KEYS}
        settings = {**DEFAULTS, **{k: v for k, v in artfs_opts.items() if k in DEFAULTS}}
        try:
            self.timeout = float(settings["timeout"])
            request_timeout = float(settings["request_timeout"])
            connect_timeout = float(settings["connect_timeout"])
            self.multipart_threshold = int(settings["multipart_threshold"])
            self.part_size = max(5 << 20, int(settings["part_size"]))
            self.max_concurrency = max(1, int(settings["max_concurrency"]))
        except (TypeError, ValueError) as e:
            raise StoreError(f"bad object store option: {e}") from None
        # One request may not outlast the whole operation's deadline, retries
        # included: a hung store fails a syscall within ``timeout``.
        request_timeout = min(request_timeout, self.timeout)
        connect_timeout = min(connect_timeout, self.timeout)

        store_config = {k: _option_text(v) for k, v in opts.items()}
        self.service = _SERVICES.get(scheme, _SERVICES["az"])
        endpoint = None
        if scheme == "s3":
            if "access_key_id" not in store_config and not os.environ.get("AWS_ACCESS_KEY_ID"):
                for k, v in _aws_profile(artfs_opts.get("profile")).items():
                    store_config.setdefault(k, v)
            endpoint = (
                store_config.get("endpoint")
                or os.environ.get("AWS_ENDPOINT_URL_S3")
                or os.environ.get("AWS_ENDPOINT_URL")
                or os.environ.get("AWS_ENDPOINT")
            )
            if endpoint:
                store_config["endpoint"] = endpoint
        elif scheme == "gs":
            endpoint = _gcs_endpoint(store_config)
        else:
            endpoint = _azure_endpoint(store_config)
        allow_http = artfs_opts.get("allow_http")
        if allow_http is None:
            allow_http = bool(endpoint) and endpoint.startswith("http://") and _loopback(endpoint)
        self.endpoint = endpoint

        client_options: dict[str, Any] = {
            "allow_http": _as_bool(allow_http),
            "timeout": timedelta(seconds=request_timeout),
            "connect_timeout": timedelta(seconds=connect_timeout),
            **tls_client_options(artfs_opts),
        }
        # obstore retries within a third of the deadline; _call retries the
        # rest only while a whole such window still fits, so an operation
        # against a store that stays down ends near ``timeout``, not at twice it.
        self._retry_window = self.timeout / 3
        retry_config: dict[str, Any] = {
            "max_retries": 10,
            "retry_timeout": timedelta(seconds=self._retry_window),
            "backoff": {
                "init_backoff": timedelta(milliseconds=100),
                "max_backoff": timedelta(seconds=min(5.0, max(0.2, self.timeout / 4))),
                "base": 2,
            },
        }
        kind: Any = {"s3": S3Store, "gs": GCSStore}.get(scheme, AzureStore)
        try:
            self._store = kind.from_url(
                url, config=store_config, client_options=client_options, retry_config=retry_config
            )
        except obx.BaseError as e:
            raise StoreError(f"cannot open store {url}: {_first_line(e)}") from None
        except (ValueError, TypeError) as e:
            raise StoreError(f"cannot open store {url}: {e}") from None
        self._probe_lock = threading.Lock()
        self._probed: bool = False
        self._probe_failure: str | None = None

    # -- error mapping and retries ----------------------------------------

    def _call(
        self,
        what: str,
        key: str,
        fn: Callable[[], T],
        progress: Callable[[], int] | None = None,
    ) -> T:
        """Run ``fn`` with retries on transient failures, until ``timeout``.

        obstore retries 5xx and connection failures itself within the same
        window; this loop adds the failures it does not retry (a body cut off
        halfway) and maps errors onto the store's exceptions. With
        ``progress`` (a byte count), an attempt that moved it forward starts
        the window afresh: a long transfer is bounded by a stall, not its size.
        """
        deadline = time.monotonic() + self.timeout
        delay = 0.1
        attempt = 0
        done = progress() if progress else 0
        while True:
            if progress is not None and progress() != done:
                done = progress()
                deadline = time.monotonic() + self.timeout
                delay = 0.1
            attempt += 1
            try:
                return fn()
            except obx.AlreadyExistsError:
                raise PreconditionFailed(f"exists: {key}") from None
            except obx.PreconditionError:
                raise PreconditionFailed(f"changed since read: {key}") from None
            except (obx.NotFoundError, FileNotFoundError):
                raise NotFound(key) from None
            except (obx.PermissionDeniedError, obx.UnauthenticatedError) as e:
                raise StoreError(
                    f"{what} {key} in {self.url}: access denied: {_first_line(e)}"
                ) from None
            except obx.BaseError as e:
                if not _transient(e) or time.monotonic() + delay + self._retry_window > deadline:
                    raise StoreError(
                        f"{what} {key} in {self.url} failed after {attempt} attempt(s): "
                        f"{_first_line(e)}"
                    ) from None
            except OSError as e:  # local file errors during put_file
                raise StoreError(f"{what} {key}: {e}") from None
            time.sleep(delay * (0.5 + random.random() / 2))
            delay = min(delay * 2, 5.0)

    # -- the conditional-write probe ------------------------------------------

    def _check_writable(self) -> None:
        if self._probed:
            if self._probe_failure:
                raise StoreError(self._probe_failure)
            return
        with self._probe_lock:
            if not self._probed:
                self._probe_failure = self._probe()
                self._probed = True
        if self._probe_failure:
            raise StoreError(self._probe_failure)

    def _probe(self) -> str | None:
        """None if the store honours conditional writes, else why not."""
        key = f"{_PROBE_PREFIX}{uuid.uuid4().hex}"
        service = self.service
        failure = None
        tag = self._put_bytes(key, b"first", "create")
        try:
            try:
                self._put_bytes(key, b"second", "create")
                failure = f"{service.create_only} (two create-only puts of one key both succeeded)"
            except PreconditionFailed:
                pass
            if failure is None:
                # A tag the object cannot have: GCS generations are numbers.
                wrong = "1" if service.tag_is_generation else '"0123456789abcdef0123456789abcdef"'
                if wrong == tag:  # never in practice; the probe must use another one
                    wrong = "2" if service.tag_is_generation else '"fedcba9876543210fedcba98"'
                try:
                    self._put_bytes(key, b"third", self._update_mode(wrong))
                    what = "generation" if service.tag_is_generation else "etag"
                    failure = f"{service.compare_and_swap} (a put with a wrong {what} succeeded)"
                except PreconditionFailed:
                    pass
        finally:
            with contextlib.suppress(StoreError):
                self._call("probe", key, lambda: obstore.delete(self._store, key))
        if failure is None:
            return None
        return (
            f"{service.name} store {self.url} ignores conditional writes: {failure}. artfs "
            "numbers versions and moves aliases with create-only and compare-and-swap puts, "
            "so writing to this store could lose commits; refusing to write to it. "
            "Use a service that honours conditional puts (AWS S3, GCS, Azure Blob Storage, "
            "recent MinIO, Ceph RGW or SeaweedFS)."
        )

    def _update_mode(self, tag: str) -> dict[str, str]:
        """obstore's compare-and-swap mode for a tag this store handed out."""
        return {"version": tag} if self.service.tag_is_generation else {"e_tag": tag}

    def _tag(self, meta: Any) -> str:
        """The token compare-and-swap takes: the generation on GCS, else the etag."""
        if self.service.tag_is_generation and meta.get("version"):
            return str(meta["version"])
        return meta.get("e_tag") or meta.get("version") or ""

    # -- interface ----------------------------------------------------------

    def get(self, key: str) -> bytes:
        return self._call("get", key, lambda: bytes(obstore.get(self._store, key).bytes()))

    def get_tagged(self, key: str) -> tuple[bytes, str]:
        def fetch() -> tuple[bytes, Any]:
            result = obstore.get(self._store, key)
            return bytes(result.bytes()), result.meta

        data, meta = self._call("get", key, fetch)
        if self.service.tag_is_generation and not meta.get("version"):
            # No generation in this answer: only head's tag is safe for a swap.
            return data, self.head(key).etag
        return data, self._tag(meta)

    def get_range(self, key: str, start: int, length: int, *, if_match: str | None = None) -> bytes:
        """``length`` bytes at ``start``; with ``if_match`` (a tag ``head`` gave),
        only of the object with that tag, else PreconditionFailed (for reference
        entries: S3 and Azure send ``If-Match``; GCS compares the generation
        of the answer; every service compares the answer's tag too)."""
        if length <= 0:
            return b""
        if if_match is not None:
            return self._call(
                "get_range", key, lambda: self._get_range_of(key, start, length, if_match)
            )

        def fetch() -> bytes:
            try:
                return bytes(obstore.get_range(self._store, key, start=start, length=length))
            except obx.GenericError as e:
                if "status code: 416" in str(e):
                    return b""  # start at or past the end of the object
                raise

        return self._call("get_range", key, fetch)

    def _get_range_of(self, key: str, start: int, length: int, tag: str) -> bytes:
        options: dict[str, Any] = {"range": (start, start + length)}
        if not self.service.tag_is_generation:
            options["if_match"] = tag
        result = obstore.get(self._store, key, options=options)
        data = bytes(result.bytes())
        got = self._tag(result.meta)
        if self.service.tag_is_generation and not result.meta.get("version"):
            # No generation in the answer: the object's now. Generations only
            # grow, so if it is still ``tag``, it was ``tag`` when read.
            got = self.head(key).etag
        if got != tag:
            raise PreconditionFailed(f"changed since read: {key}")
        return data

    def download(self, key: str, out: BinaryIO, *, if_match: str | None = None) -> int:
        """Stream the object into ``out``; a body cut off is resumed where it stopped.

        ``if_match``: only the object with that etag (PreconditionFailed else;
        S3 and Azure, whose tags are etags), for reference entries."""
        written = 0
        etag: str | None = if_match
        total: int | None = None

        def stream() -> int:
            nonlocal written, etag, total
            options: dict[str, Any] = {"if_match": etag} if etag else {}
            if written:
                if total is not None and written >= total:
                    return written  # cut off after the last byte
                options["range"] = {"offset": written}
                options["if_match"] = etag  # resume only the same object
            result = obstore.get(self._store, key, options=options or None)
            if total is None:
                etag = etag or result.meta.get("e_tag")
                total = int(result.meta["size"])
            for chunk in result.stream(min_chunk_size=_DOWNLOAD_CHUNK):
                out.write(chunk)
                written += len(chunk)
            return written

        return self._call("download", key, stream, progress=lambda: written)

    def put(
        self, key: str, data: bytes, *, if_absent: bool = False, if_match: str | None = None
    ) -> str:
        self._check_writable()
        mode: Any = "overwrite"
        if if_absent:
            mode = "create"
        elif if_match is not None:
            mode = self._update_mode(if_match)
        return self._put_bytes(key, data, mode)

    def _put_bytes(self, key: str, data: bytes, mode: Any) -> str:
        # A conditional put carries a token of its own in the object's metadata:
        # if a retry fails its precondition, the token says whether the object
        # there is our own earlier attempt (its answer lost) or another writer's.
        token = uuid.uuid4().hex
        attributes = None if mode == "overwrite" else {_WRITE_TOKEN: token}
        try:
            result = self._call(
                "put",
                key,
                lambda: obstore.put(self._store, key, data, mode=mode, attributes=attributes),
            )
        except PreconditionFailed:
            if attributes is None:
                raise
            etag = self._written_by(key, token)
            if etag is None:
                raise
            return etag
        return self._tag(result) or self.head(key).etag

    def _written_by(self, key: str, token: str) -> str | None:
        """The object's etag if our write with ``token`` is the one in place."""
        try:
            result = self._call(
                "head", key, lambda: obstore.get(self._store, key, options={"head": True})
            )
        except NotFound:
            return None
        if result.attributes.get(_WRITE_TOKEN) != token:
            return None
        return self._tag(result.meta)

    def put_file(
        self, key: str, path: Path, *, if_absent: bool = False, move: bool = False
    ) -> None:
        self._check_writable()
        try:
            size = path.stat().st_size
        except OSError as e:
            raise StoreError(f"cannot upload {path}: {e.strerror}") from None
        if size <= self.multipart_threshold:
            mode = "create" if if_absent else "overwrite"
            self._call(
                "put",
                key,
                lambda: obstore.put(self._store, key, path, mode=mode, use_multipart=False),
            )
            return
        if if_absent and self.exists(key):
            raise PreconditionFailed(f"exists: {key}")
        # Past the service's part count, parts grow (their size stays a MiB multiple).
        part_size = max(self.part_size, math.ceil(size / self.service.max_parts / MiB) * MiB)
        self._call(
            "put",
            key,
            lambda: obstore.put(
                self._store,
                key,
                path,
                use_multipart=True,
                chunk_size=part_size,
                max_concurrency=self.max_concurrency,
            ),
        )

    def head(self, key: str) -> ObjectInfo:
        meta = self._call("head", key, lambda: obstore.head(self._store, key))
        return self._info(meta)

    def _info(self, meta: Any) -> ObjectInfo:
        # A GCS listing carries no generation, so its entries have the etag: a
        # compare-and-swap given one fails its precondition, never overwrites.
        # Tags for compare-and-swap come from put() and head().
        return ObjectInfo(
            meta["path"], int(meta["size"]), self._tag(meta), meta["last_modified"].timestamp()
        )

    def list(self, prefix: str, *, recursive: bool = False) -> Listing:
        if recursive:
            return Listing(objects=sorted(self.iter_objects(prefix), key=lambda o: o.key))
        result = self._call(
            "list",
            prefix,
            lambda: obstore.list_with_delimiter(self._store, prefix or None),
        )
        listing = Listing()
        for p in sorted(result["common_prefixes"]):
            p = p.rstrip("/") + "/"
            if not p[len(prefix) :].startswith("."):
                listing.prefixes.append(p)
        for meta in sorted(result["objects"], key=lambda m: m["path"]):
            if not meta["path"][len(prefix) :].startswith("."):
                listing.objects.append(self._info(meta))
        return listing

    def iter_objects(self, prefix: str) -> Iterator[ObjectInfo]:
        def collect() -> list[ObjectInfo]:
            out = []
            for chunk in obstore.list(self._store, prefix or None, chunk_size=1000):
                out.extend(self._info(m) for m in chunk)
            return out

        # Collected per call so a listing cut off by a fault is retried whole.
        yield from (
            o for o in self._call("list", prefix, collect) if not o.key.startswith(_PROBE_PREFIX)
        )

    def temp_objects(self) -> list[ObjectInfo]:
        """Scratch keys of probes a killed process did not get to delete."""
        return list(
            self._call(
                "list",
                _PROBE_PREFIX,
                lambda: [
                    self._info(m)
                    for chunk in obstore.list(self._store, _PROBE_PREFIX, chunk_size=1000)
                    for m in chunk
                ],
            )
        )

    def delete_temp(self, key: str) -> None:
        if not key.startswith(_PROBE_PREFIX):
            raise ValueError(f"bad temp key {key!r}")
        self.delete(key)

    def delete(self, key: str) -> None:
        self._check_writable()
        with contextlib.suppress(NotFound):
            self._call("delete", key, lambda: obstore.delete(self._store, key))
