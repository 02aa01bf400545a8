"""https:// references over real TLS, to a server on 127.0.0.1 behind a private CA.

The CA and the server's certificate are made at test time (tests/refhttp.py,
the ``openssl`` command line); the server is Python's http.server wrapped in
ssl, with Range, ETag and If-Match. artfs trusts the CA only when told, in
the two documented ways: ``root_certificate_file`` in the config's
``[object_store]`` table (added to the system's roots), or ``SSL_CERT_FILE``
(read by obstore's TLS stack, replacing them).
"""

from __future__ import annotations

import errno
import os
import random
from pathlib import Path

import pytest

from artfs.api import Api
from artfs.cache import PART_SIZE
from tests.mounting import mounted
from tests.refhttp import RefServer, tls

# The store's kind does not enter a reference's read path (references are
# always fetched into the cache, whatever the store); t4_mount_references.py
# keeps an S3-store variant of the reference tests.
pytestmark = pytest.mark.parametrize("store_url", ["local"], indirect=True)


@pytest.mark.parametrize(
    "checksum,trust",
    [(True, "config"), (False, "SSL_CERT_FILE")],
    ids=["checksum-config", "etag-env"],
)
def test_https_references_over_tls(
    run_artfs, store_url, artfs_env, api: Api, tmp_path: Path, checksum: bool, trust: str
) -> None:
    ca, cert, key = tls(tmp_path / "tls")
    small = os.urandom(300_000)  # above SMALL_FILE: read through a cache reader
    big = random.Random(4).randbytes(2 * PART_SIZE + 7)  # read part by part
    resources = {"/d/small.bin": small, "/d/big.bin": big}
    flags = [] if checksum else ["--no-checksum"]
    with RefServer(resources, certfile=cert, keyfile=key) as server:
        assert server.url.startswith("https://127.0.0.1:")
        small_uri, big_uri = f"{server.url}/d/small.bin", f"{server.url}/d/big.bin"

        # Not told the CA: the certificate is refused, nothing committed.
        r = run_artfs("put", "-n", "proj/t", "--reference", small_uri, *flags, check=False)
        assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
        assert r.stderr.startswith(f"artfs: error: cannot read {small_uri}")
        assert api.repo.highest_live_version("proj", "t") is None
        assert server.count("HEAD", "/d/small.bin") == 0  # no request got past TLS

        if trust == "config":
            Path(artfs_env["ARTFS_CONFIG"]).write_text(
                f'[object_store]\nroot_certificate_file = "{ca}"\n'
            )
            env = artfs_env
        else:
            env = dict(artfs_env, SSL_CERT_FILE=str(ca))
        run_artfs(
            "put", "-n", "proj/t", "--reference", small_uri, "--reference", big_uri, *flags,
            env=env,
        )  # fmt: skip
        entries = {e.path: e for e in api.artifact("proj/t:v0").files() if e.kind == "file"}
        assert {p: e.ref for p, e in entries.items()} == {
            "small.bin": small_uri,
            "big.bin": big_uri,
        }

        run_artfs("get", "proj/t:v0", "--root", str(tmp_path / "out"), env=env)
        assert (tmp_path / "out/small.bin").read_bytes() == small
        assert (tmp_path / "out/big.bin").read_bytes() == big

        server.clear()
        with mounted(
            tmp_path / "mnt",
            store_url=store_url,
            cache_dir=tmp_path / "cache-mount",
            state_dir=tmp_path / "state",
            env=env,
        ) as m:
            root = m.path / "proj/t/v0"
            assert (root / "small.bin").read_bytes() == small
            fd = os.open(root / "big.bin", os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
                at = PART_SIZE + 99
                assert os.pread(fd, 1000, at) == big[at : at + 1000]
            finally:
                os.close(fd)
            if checksum:
                # A checksummed reference with an etag: ranged GETs over TLS.
                assert server.ranged_gets("/d/big.bin") == [
                    f"bytes={PART_SIZE}-{2 * PART_SIZE - 1}"
                ]
            assert (root / "big.bin").read_bytes() == big

        # Changed at the server: EIO through a cold mount, one line from get.
        server.put("/d/small.bin", os.urandom(300_000))
        with mounted(
            tmp_path / "mnt2",
            store_url=store_url,
            cache_dir=tmp_path / "cache-cold",
            state_dir=tmp_path / "state",
            env=env,
            allowed_errors=["changed since the commit"],
        ) as m:
            with pytest.raises(OSError) as e:
                (m.path / "proj/t/v0/small.bin").read_bytes()
            assert e.value.errno == errno.EIO
            assert f"reference {small_uri} changed since the commit" in m.log_text()
            assert (m.path / "proj/t/v0/big.bin").read_bytes() == big  # unchanged: still read
        cold = dict(env, ARTFS_CACHE=str(tmp_path / "cache-get"))
        r = run_artfs("get", "proj/t:v0", "--root", str(tmp_path / "out2"), check=False, env=cold)
        assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
        assert f"reference {small_uri} changed since the commit" in r.stderr
        assert not (tmp_path / "out2/small.bin").exists()
