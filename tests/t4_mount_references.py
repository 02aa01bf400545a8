"""Reference entries: files of a version whose bytes stay outside the store.

Referents are real: objects in a second bucket of each service (SeaweedFS's
``refs_bucket``, fake-gcs-server's ``gcs_refs_bucket``, Azurite's
``az_refs_container``) and files in a local directory. Every test reads them
back through the real mount and the real CLI. artfs reaches each service the
way it reaches a store there: the session's servers export their ``AWS_*``,
``GOOGLE_SERVICE_ACCOUNT`` and ``AZURE_*`` environment, or the config file's
``[object_store.<service>]`` tables (``test_per_service_config_tables``).

The tests about the referent's service run three ways (``BY_SERVICE``): S3
referents on an S3 store, GCS and Azure referents on a local store; what they
prove depends on where the referent lives, not on the store.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import re
import sqlite3
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from artfs.api import Api, Artifact
from artfs.manifest import Manifest
from artfs.objects import PreconditionFailed
from artfs.objects.cloud import CloudStore
from artfs.objects.referents import Referents
from artfs.repo.gc import collect_garbage
from tests import azureserver as azure
from tests.mounting import mounted
from tests.trees import blob_keys

# (store, referents' service): S3's referents on an S3 store, GCS's and Azure's
# on a local store.
BY_SERVICE = pytest.mark.parametrize(
    "store_url,bucket",
    [("s3", "s3"), ("local", "gs"), ("local", "az")],
    indirect=True,
    ids=["s3-s3", "local-gs", "local-az"],
)


@dataclass
class RefBucket:
    """A fresh prefix in the referents' bucket of one service."""

    service: str  # "s3", "gs" or "az": the scheme of its URIs
    name: str  # the bucket (container)
    prefix: str
    store: CloudStore  # at the bucket's root, configured as artfs configures it
    # A key kept literally, as tools make "dir/" placeholders (obstore drops
    # the trailing "/"); None on S3 (SeaweedFS keeps no such objects).
    put_raw: Callable[[str, bytes], None] | None

    def key(self, path: str) -> str:
        return f"{self.prefix}/{path}"

    def uri(self, path: str = "") -> str:
        """The URI of ``path`` below the prefix; of the prefix itself by default."""
        return f"{self.service}://{self.name}/{self.prefix}/{path}"


@pytest.fixture
def bucket(request: pytest.FixtureRequest, s3server, gcsserver, azureserver) -> RefBucket:
    """The referents' bucket of the service ``request.param`` (default S3).

    Taking every server here makes them session fixtures of the test, set up
    (their environment exported) before ``artfs_env`` copies the environment."""
    service = getattr(request, "param", "s3")
    put_raw: Callable[[str, bytes], None] | None = None
    if service == "s3":
        name = request.getfixturevalue("refs_bucket")
    elif service == "gs":
        name = request.getfixturevalue("gcs_refs_bucket")
        put_raw = lambda key, data: gcsserver.put_raw(name, key, data)  # noqa: E731
    else:
        name = request.getfixturevalue("az_refs_container")
        put_raw = lambda key, data: azure.put_raw(azureserver, name, key, data)  # noqa: E731
    store = CloudStore(f"{service}://{name}")
    return RefBucket(service, name, f"r{uuid.uuid4().hex[:10]}", store, put_raw)


@pytest.fixture
def mount(store_url, artfs_env, tmp_path):
    """``with mount(cache) as m``: a Mount of this test's store with that cache."""
    count = iter(range(100))

    def make(cache: Path):
        return mounted(
            tmp_path / f"mnt{next(count)}",
            store_url=store_url,
            cache_dir=cache,
            state_dir=tmp_path / "state",
            env=artfs_env,
            # The referents' changes are refused on purpose.
            allowed_errors=["changed since the commit", "is gone"],
        )

    return make


def _put_referents(bucket: RefBucket, tmp_path: Path) -> tuple[str, dict[str, bytes], Path]:
    """An object in the bucket and a local directory of two files."""
    obj = os.urandom(300_000)  # above SMALL_FILE: read through a cache reader
    bucket.store.put(bucket.key("weights.bin"), obj)
    local = tmp_path / "referents"
    (local / "sub").mkdir(parents=True)
    (local / "a.txt").write_bytes(b"local a\n")
    (local / "sub" / "b.txt").write_bytes(b"local b\n")
    uri = bucket.uri("weights.bin")
    return uri, {"weights.bin": obj, "a.txt": b"local a\n", "sub/b.txt": b"local b\n"}, local


@BY_SERVICE
def test_references_read_back_through_the_mount_and_get(
    bucket: RefBucket, run_artfs, mount, tmp_path: Path, cache_dir: Path, api: Api
) -> None:
    uri, want, local = _put_referents(bucket, tmp_path)
    plain = tmp_path / "plain.txt"
    plain.write_bytes(b"a plain file\n")
    run_artfs(
        "put", str(plain), "-n", "proj/refs", "--reference", uri, "--reference", f"file://{local}"
    )
    v = api.artifact("proj/refs:v0")
    assert v.record.file_count == 4
    assert v.record.size == sum(len(b) for b in want.values()) + len(b"a plain file\n")
    # Only the plain file was uploaded: the referents' bytes are not in the store.
    entries = {e.path: e for e in v.files() if e.kind == "file"}
    assert entries["plain.txt"].ref is None
    assert entries["weights.bin"].ref == uri
    assert entries["sub/b.txt"].ref == f"file://{local}/sub/b.txt"
    stored = blob_keys(api.repo.store)
    assert not any(entries[p].digest in k for p in want for k in stored)
    manifest = Manifest(api.repo.cache.ensure(v.record.manifest_digest))
    assert manifest.format == 3

    with mount(tmp_path / "cache-mount") as m:
        root = m.path / "proj/refs/v0"
        for path, data in want.items():
            assert (root / path).read_bytes() == data
            assert os.stat(root / path).st_size == len(data)
        assert (root / "plain.txt").read_bytes() == b"a plain file\n"
        assert os.getxattr(root / "weights.bin", "user.artfs.reference") == uri.encode()

    run_artfs("get", "proj/refs:v0", "--root", str(tmp_path / "out"))
    for path, data in want.items():
        assert (tmp_path / "out" / path).read_bytes() == data

    shown = run_artfs("show", "--files", "proj/refs:v0").stdout
    assert f"weights.bin  (reference: {uri})" in shown
    assert "plain.txt" in shown and "plain.txt  (reference" not in shown
    files = json.loads(run_artfs("show", "--files", "--json", "proj/refs:v0").stdout)["files"]
    marked = {f["path"]: f.get("reference") for f in files if f["kind"] == "file"}
    assert marked == {
        "plain.txt": None,
        "weights.bin": uri,
        "a.txt": f"file://{local}/a.txt",
        "sub/b.txt": f"file://{local}/sub/b.txt",
    }
    # The store_url fixture then runs `artfs check`: references are no missing blobs.


# What a --no-checksum reference records: the token the service changes with
# every write of the object (doc/FORMAT.md 3.4).
_ETAG_SHAPES = {
    "s3": r'"[0-9a-f]{32}"',  # the quoted ETag (an MD5 for a single-part put)
    "gs": r"[0-9]+",  # the generation, not the ETag
    "az": r'"0x[0-9A-F]+"',  # the quoted ETag, as HEAD gives it
}


@BY_SERVICE
def test_ref_name_and_no_checksum_record_etags(
    bucket: RefBucket, run_artfs, tmp_path: Path, api: Api
) -> None:
    uri, want, local = _put_referents(bucket, tmp_path)
    bucket.store.put(bucket.key("more/w2.bin"), b"second object\n")
    run_artfs("put", "-n", "proj/e", "--no-checksum", "--reference", uri, "--ref-name", "m/w.bin")
    run_artfs("put", "-n", "proj/d", "--reference", f"file://{local}/", "--ref-name", "data")
    # A prefix's etags come from a listing: they must be the ones a HEAD gives
    # (GCS lists ETags, not generations; Azure lists its ETags without quotes).
    run_artfs("put", "-n", "proj/p", "--no-checksum", "--reference", bucket.uri())
    e = {x.path: x for x in api.artifact("proj/e:v0").files() if x.kind == "file"}
    assert list(e) == ["m/w.bin"] and e["m/w.bin"].digest == ""  # an etag, no digest
    manifest = api.repo.manifest(api.artifact("proj/e:v0").record)
    entry = manifest.lookup("m/w.bin")
    assert entry is not None and entry.etag == bucket.store.head(bucket.key("weights.bin")).etag
    assert re.fullmatch(_ETAG_SHAPES[bucket.service], entry.etag), entry.etag
    listed = api.repo.manifest(api.artifact("proj/p:v0").record)
    for path in ("weights.bin", "more/w2.bin"):
        entry = listed.lookup(path)
        assert entry is not None and entry.digest is None
        assert entry.etag == bucket.store.head(bucket.key(path)).etag, path
    d = {x.path for x in api.artifact("proj/d:v0").files() if x.kind == "file"}
    assert d == {"data/a.txt", "data/sub/b.txt"}
    run_artfs("get", "proj/e:v0", "--root", str(tmp_path / "out"))
    assert (tmp_path / "out/m/w.bin").read_bytes() == want["weights.bin"]
    run_artfs("get", "proj/p:v0", "--root", str(tmp_path / "out-p"))
    assert (tmp_path / "out-p/weights.bin").read_bytes() == want["weights.bin"]
    assert (tmp_path / "out-p/more/w2.bin").read_bytes() == b"second object\n"


# Every change on S3; on GCS and Azure the two that depend on the service: a
# changed object known by etag (HEAD's generation or ETag compared, the fetch
# conditional on it) and a deleted checksummed one (the fetch's not-found). A
# checksummed change is a digest mismatch and an etag-known deletion a HEAD's
# not-found on every service alike: those run on S3 only (two mounts each).
_CHANGES = [
    *(
        pytest.param("s3", "s3", checksum, change, id=f"{change}-{mode}-s3-s3")
        for checksum, mode in ((True, "checksum"), (False, "etag"))
        for change in ("changed", "deleted")
    ),
    *(
        pytest.param("local", service, checksum, change, id=f"{change}-{mode}-local-{service}")
        for service in ("gs", "az")
        for checksum, mode, change in ((False, "etag", "changed"), (True, "checksum", "deleted"))
    ),
]


@pytest.mark.parametrize(
    "store_url,bucket,checksum,change", _CHANGES, indirect=["store_url", "bucket"]
)
def test_a_changed_or_deleted_referent_is_eio_and_a_get_error(
    bucket: RefBucket, run_artfs, mount, tmp_path: Path, artfs_env, checksum: bool, change: str
) -> None:
    uri, want, local = _put_referents(bucket, tmp_path)
    flags = [] if checksum else ["--no-checksum"]
    run_artfs("put", "-n", "proj/x", *flags, "--reference", uri)
    run_artfs("put", "-n", "proj/y", *flags, "--reference", f"file://{local}/a.txt")
    warm = tmp_path / "cache-warm"
    with mount(warm) as m:
        x, y = m.path / "proj/x/v0/weights.bin", m.path / "proj/y/v0/a.txt"
        assert x.read_bytes() == want["weights.bin"] and y.read_bytes() == b"local a\n"
        if change == "changed":
            bucket.store.put(bucket.key("weights.bin"), os.urandom(300_000))  # same size
            (local / "a.txt").write_bytes(b"LOCAL A\n")
        else:
            bucket.store.delete(bucket.key("weights.bin"))
            (local / "a.txt").unlink()
        if checksum:
            # The committed bytes, verified against the digest, are still served.
            assert x.read_bytes() == want["weights.bin"] and y.read_bytes() == b"local a\n"
        else:
            # Known by etag only: every open asks the URI, cached bytes or not.
            for path in (x, y):
                with pytest.raises(OSError) as e:
                    path.read_bytes()
                assert e.value.errno == errno.EIO
    why = "is gone" if change == "deleted" else "changed since the commit"
    with mount(tmp_path / "cache-cold") as m:  # nothing cached: fetched from the URI
        for path in (m.path / "proj/x/v0/weights.bin", m.path / "proj/y/v0/a.txt"):
            with pytest.raises(OSError) as e:
                path.read_bytes()
            assert e.value.errno == errno.EIO
            assert os.stat(path).st_size in (300_000, 8)  # metadata still answers
        log = m.log_text()
        assert f"reference {uri} {why}" in log
        assert f"reference file://{local}/a.txt {why}" in log

    env = dict(artfs_env, ARTFS_CACHE=str(tmp_path / "cache-get"))
    for ref in ("proj/x:v0", "proj/y:v0"):
        out = tmp_path / f"out-{ref[5]}"
        r = run_artfs("get", ref, "--root", str(out), check=False, env=env)
        assert r.returncode == 2
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("artfs: error: reference "), r.stderr
        assert why in lines[0] and "Traceback" not in r.stderr
        assert not [p for p in out.rglob("*") if p.is_file()]  # no file with other bytes


@pytest.mark.parametrize("bucket", ["s3", "gs", "az"], indirect=True)
def test_a_download_under_an_etag_refuses_another_object(
    bucket: RefBucket, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``Referents.download(uri, out, etag=)``, the fetch of a --no-checksum
    reference after its HEAD, under each service's condition: S3 and Azure
    send If-Match with the ETag; on GCS the token is a generation, which
    If-Match does not take, so it is compared before and after the GET. An
    object replaced before the fetch, or (a hook, in-process) between the
    check and the GET, is refused on every service: never its bytes."""
    referents = Referents()
    uri = bucket.uri("w.bin")
    bucket.store.put(bucket.key("w.bin"), os.urandom(300_000))
    committed = referents.head(uri).etag
    bucket.store.put(bucket.key("w.bin"), os.urandom(300_000))  # same size, other bytes
    out = io.BytesIO()
    with pytest.raises(PreconditionFailed):
        referents.download(uri, out, etag=committed)
    assert out.getvalue() == b""

    now = referents.head(uri).etag
    real = CloudStore.download

    def replaced_first(self: CloudStore, key: str, *args, **kwargs) -> int:
        bucket.store.put(bucket.key("w.bin"), os.urandom(300_000))  # lands before the GET
        return real(self, key, *args, **kwargs)

    monkeypatch.setattr(CloudStore, "download", replaced_first)
    with pytest.raises(PreconditionFailed):
        referents.download(uri, io.BytesIO(), etag=now)


# Objects under the prefix: the 1,000 on S3; fewer on the emulators,
# where one put costs several times more and the count changes nothing (one
# listing page either way).
_PREFIX_OBJECTS = {"s3": 1000, "gs": 150, "az": 150}


@BY_SERVICE
def test_a_prefix_of_1000_objects_and_max_objects(
    bucket: RefBucket, run_artfs, tmp_path: Path, api: Api
) -> None:
    count = _PREFIX_OBJECTS[bucket.service]
    with ThreadPoolExecutor(max_workers=16) as pool:
        list(
            pool.map(
                lambda i: bucket.store.put(
                    bucket.key(f"shard/{i:04d}.txt"), f"object {i}\n".encode()
                ),
                range(count),
            )
        )
    too_many = run_artfs(
        "put", "-n", "proj/p", "--reference", bucket.uri(), "--max-objects", str(count - 1),
        check=False,
    )  # fmt: skip
    assert too_many.returncode == 2
    assert too_many.stderr.count("\n") == 1, too_many.stderr
    assert f"more than {count - 1} objects" in too_many.stderr
    assert api.repo.highest_live_version("proj", "p") is None  # nothing committed

    run_artfs(
        "put", "-n", "proj/p", "--reference", bucket.uri(), "--max-objects", str(count),
        "--no-checksum",
    )  # fmt: skip
    v = api.artifact("proj/p:v0")
    assert v.record.file_count == count
    paths = sorted(e.path for e in v.files() if e.kind == "file")
    assert paths == [f"shard/{i:04d}.txt" for i in range(count)]
    last = f"shard/{count - 1:04d}.txt"
    run_artfs("get", "proj/p:v0", "--root", str(tmp_path / "out"), "--path-prefix", last)
    assert (tmp_path / "out" / last).read_text() == f"object {count - 1}\n"


@pytest.mark.parametrize(
    "store_url,bucket", [("local", "gs"), ("local", "az")], indirect=True, ids=["gs", "az"]
)
@pytest.mark.parametrize("checksum", [True, False], ids=["checksum", "etag"])
def test_a_prefix_skips_directory_placeholders(
    bucket: RefBucket, run_artfs, tmp_path: Path, api: Api, checksum: bool
) -> None:
    """Consoles and tools make 0-byte "dir/" objects for folders. obstore lists
    one as "dir": a file no GET finds, clashing with the files below it. A
    prefix expands to the real objects only; a real empty object stays."""
    assert bucket.put_raw is not None
    for placeholder in ("d/", "d/sub/", "d/empty/"):  # "d/" is the prefix itself
        bucket.put_raw(bucket.key(placeholder), b"")
    want = {"a.txt": b"a\n", "sub/x.bin": os.urandom(1000), "zero": b""}
    for path, data in want.items():
        bucket.store.put(bucket.key(f"d/{path}"), data)
    flags = [] if checksum else ["--no-checksum"]
    run_artfs("put", "-n", "proj/m", *flags, "--reference", bucket.uri("d/"))
    v = api.artifact("proj/m:v0")
    assert {e.path for e in v.files() if e.kind == "file"} == set(want)
    run_artfs("get", "proj/m:v0", "--root", str(tmp_path / "out"))
    for path, data in want.items():
        assert (tmp_path / "out" / path).read_bytes() == data


@BY_SERVICE
def test_gc_leaves_referents_alone(bucket: RefBucket, tmp_path: Path, api: Api) -> None:
    uri, want, local = _put_referents(bucket, tmp_path)
    art = Artifact("proj/g")
    assert art.add_reference(uri) == 1
    assert art.add_reference(f"file://{local}", name="loc", checksum=False) == 2
    plain = tmp_path / "plain.txt"
    plain.write_bytes(b"ours\n")
    art.add_file(plain)
    v = api.log_artifact(art)
    assert {e.path: e.ref is not None for e in v.files() if e.kind == "file"} == {
        "weights.bin": True,
        "loc/a.txt": True,
        "loc/sub/b.txt": True,
        "plain.txt": False,
    }
    got = v.download(tmp_path / "dl")  # the API's download() fetches them from their URIs
    assert (got / "weights.bin").read_bytes() == want["weights.bin"]
    assert (got / "loc/sub/b.txt").read_bytes() == b"local b\n"
    api.repo.delete_version(v.record, delete_aliases=True)
    result = collect_garbage(api.repo, grace=0, force=True)
    assert result.swept_blobs == 2  # the plain file's blob and the manifest: ours
    assert bucket.store.get(bucket.key("weights.bin")) == want["weights.bin"]
    assert (local / "a.txt").read_bytes() == b"local a\n"
    assert (local / "sub/b.txt").read_bytes() == b"local b\n"


@pytest.mark.parametrize(
    "store_url,bucket", [("s3", "gs"), ("s3", "az")], indirect=True, ids=["s3-gs", "s3-az"]
)
def test_per_service_config_tables(
    bucket: RefBucket,
    run_artfs,
    artfs_env,
    s3server,
    gcsserver,
    azureserver,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An S3 store and a GCS or Azure referent, both configured only in the
    config file, each service in its own ``[object_store.<service>]`` table:
    one flat table cannot hold both (S3's ``endpoint`` would be Azure's too,
    and GCS refuses S3's keys)."""
    from artfs.config import credentials_warning, load_settings

    uri, want, _ = _put_referents(bucket, tmp_path)
    config = Path(artfs_env["ARTFS_CONFIG"])
    config.write_text(
        f"[object_store]\ntimeout = 30\n"
        f'[object_store.s3]\nendpoint = "{s3server.endpoint}"\nregion = "{s3server.region}"\n'
        f'access_key_id = "{s3server.access_key}"\n'
        f'secret_access_key = "{s3server.secret_key}"\n'
        f'[object_store.gs]\nservice_account = "{gcsserver.service_account}"\n'
        f'[object_store.az]\naccount_name = "{azureserver.account}"\n'
        f'access_key = "{azureserver.key}"\nendpoint = "{azureserver.endpoint}"\n'
    )
    config.chmod(0o644)
    monkeypatch.setenv("ARTFS_CONFIG", str(config))
    assert "secret_access_key" in (credentials_warning(load_settings()) or "")  # in a sub-table
    config.chmod(0o600)
    # Nothing from the environment: no AWS_*, GOOGLE_* or AZURE_* settings.
    for name in (*s3server.env(), *gcsserver.env(), *azureserver.env()):
        if name not in ("AWS_METADATA_ENDPOINT", "AWS_EC2_METADATA_DISABLED"):
            monkeypatch.delitem(artfs_env, name)
    run_artfs("put", "-n", "proj/c", "--reference", uri)
    run_artfs("put", "-n", "proj/c", "--reference", uri, "--no-checksum")
    for version in ("v0", "v1"):
        run_artfs("get", f"proj/c:{version}", "--root", str(tmp_path / version))
        assert (tmp_path / version / "weights.bin").read_bytes() == want["weights.bin"]


def test_bad_references_are_refused(run_artfs, tmp_path: Path, api: Api, bucket) -> None:
    for uri, why in [
        ("ftp://host/x", "use s3://"),
        ("http://example.com/x", "only to loopback"),
        ("file://relative/x", "absolute path"),
        (f"file://{tmp_path}/nothing", "no such object"),
        ("s3://bucket", "no bucket/host or no key"),
    ]:
        r = run_artfs("put", "-n", "proj/bad", "--reference", uri, check=False)
        assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
        assert why in r.stderr, (uri, r.stderr)
    assert api.repo.highest_live_version("proj", "bad") is None


@pytest.mark.parametrize(
    "column,value,why",
    [
        ("ref", "ftp://evil/x", "use s3://"),
        ("ref", "file://../../etc/passwd", "absolute path"),
        ("etag", "", "bad reference etag"),
        ("digest", "md5:1234", "bad digest"),
    ],
)
def test_a_crafted_reference_in_a_manifest_is_refused(
    tmp_path: Path, column: str, value: str, why: str
) -> None:
    """A manifest is untrusted: a reference's URI, etag and digest are
    checked before the entry is used."""
    from artfs.manifest import ManifestBuilder, ManifestError

    (tmp_path / "f").write_bytes(b"x")
    b = ManifestBuilder()
    b.add_reference("r", f"file://{tmp_path}/f", 1, etag="1-2-3")
    b.write(tmp_path / "m")
    db = sqlite3.connect(tmp_path / "m")
    with db:
        db.execute(f"UPDATE entries SET {column} = ? WHERE name = 'r'", (value,))
    db.close()
    m = Manifest(tmp_path / "m")
    with pytest.raises(ManifestError, match=why):
        list(m.walk())


def test_plain_manifests_stay_format_2(tmp_path: Path, api: Api) -> None:
    (tmp_path / "f.txt").write_bytes(b"plain")
    v = api.put([tmp_path / "f.txt"], "proj/plain").version
    assert api.repo.manifest(v).format == 2


class _Resources(BaseHTTPRequestHandler):
    """GET and HEAD of ``resources`` on loopback, with an ETag from the bytes."""

    resources: dict[str, bytes] = {}

    def _answer(self) -> bytes | None:
        body = self.resources.get(self.path)
        self.send_response(200 if body is not None else 404)
        self.send_header("Content-Length", str(len(body) if body is not None else 0))
        if body is not None:
            self.send_header("ETag", f'"{hashlib.md5(body).hexdigest()}"')
            self.send_header("Last-Modified", "Tue, 01 Dec 2026 10:00:00 GMT")
        self.end_headers()
        return body

    def do_HEAD(self) -> None:
        self._answer()

    def do_GET(self) -> None:
        body = self._answer()
        if body is not None:
            self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.mark.parametrize("checksum", [True, False], ids=["checksum", "etag"])
def test_http_references_on_loopback(
    run_artfs, tmp_path: Path, artfs_env, api: Api, checksum: bool
) -> None:
    """The https:// path (plain GETs through obstore), over http to 127.0.0.1."""
    _Resources.resources = {"/d/model.bin": os.urandom(200_000)}
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Resources)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        uri = f"http://127.0.0.1:{server.server_address[1]}/d/model.bin"
        flags = [] if checksum else ["--no-checksum"]
        run_artfs("put", "-n", "proj/h", "--reference", uri, *flags)
        run_artfs("get", "proj/h:v0", "--root", str(tmp_path / "out"))
        assert (tmp_path / "out/model.bin").read_bytes() == _Resources.resources["/d/model.bin"]
        _Resources.resources["/d/model.bin"] = os.urandom(200_000)
        env = dict(artfs_env, ARTFS_CACHE=str(tmp_path / "cold"))
        r = run_artfs("get", "proj/h:v0", "--root", str(tmp_path / "out2"), check=False, env=env)
        assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
        assert f"reference {uri} changed since the commit" in r.stderr
        assert not (tmp_path / "out2/model.bin").exists()
    finally:
        server.shutdown()
        server.server_close()
