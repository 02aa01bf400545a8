"""``Referents.get_range``: one range of a referent, pinned to an etag, for every scheme.

Real services on 127.0.0.1: SeaweedFS (S3), fake-gcs-server (GCS, where the
pin is the generation), Azurite, a loopback web server (tests/refhttp.py,
once honouring If-Match and once ignoring it, so the etag of the answer is
what refuses), and a local file (its stat etag).
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from artfs.objects import NotFound, PreconditionFailed
from artfs.objects.cloud import CloudStore
from artfs.objects.referents import Referents
from tests.refhttp import RefServer

SIZE = 100_000


class _Bucket:
    def __init__(self, url: str) -> None:
        self.store = CloudStore(url)
        self.uri = f"{url}/obj.bin"

    def put(self, data: bytes) -> None:
        self.store.put("obj.bin", data)

    def delete(self) -> None:
        self.store.delete("obj.bin")


class _Http:
    def __init__(self, server: RefServer) -> None:
        self.server = server
        self.uri = f"{server.url}/obj.bin"

    def put(self, data: bytes) -> None:
        self.server.put("/obj.bin", data)

    def delete(self) -> None:
        self.server.delete("/obj.bin")


class _File:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.uri = f"file://{path}"

    def put(self, data: bytes) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_bytes(data)
        tmp.replace(self.path)

    def delete(self) -> None:
        self.path.unlink()


@pytest.fixture(params=["s3", "gs", "az", "http", "http-ignoring-if-match", "file"])
def referent(request: pytest.FixtureRequest, tmp_path: Path):
    kind = request.param
    if kind in ("s3", "gs", "az"):
        server = request.getfixturevalue(
            {"s3": "s3server", "gs": "gcsserver", "az": "azureserver"}[kind]
        )
        yield _Bucket(server.url())
    elif kind == "file":
        yield _File(tmp_path / "obj.bin")
    else:
        with RefServer(honour_if_match=kind == "http") as server:
            yield _Http(server)


def test_a_range_is_of_the_object_with_the_etag_or_refused(referent) -> None:
    data = random.Random(1).randbytes(SIZE)
    referent.put(data)
    referents = Referents()
    etag = referents.head(referent.uri).etag
    assert referents.get_range(referent.uri, 1000, 5000, etag) == data[1000:6000]
    assert referents.get_range(referent.uri, SIZE - 10, 10, etag) == data[-10:]
    referent.put(random.Random(2).randbytes(SIZE))  # same size, other bytes
    with pytest.raises(PreconditionFailed):
        referents.get_range(referent.uri, 1000, 5000, etag)
    now = referents.head(referent.uri).etag
    assert now != etag
    assert referents.get_range(referent.uri, 0, 10, now) == random.Random(2).randbytes(SIZE)[:10]
    referent.delete()
    with pytest.raises((NotFound, PreconditionFailed)):
        referents.get_range(referent.uri, 0, 10, now)
