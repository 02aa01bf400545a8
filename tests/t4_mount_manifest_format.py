"""A version whose manifest is format 1 (no mtimes), shown by a mount: the
modes it recorded and its commit time as every entry's mtime."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

from artfs.api import Api
from artfs.digest import digest_bytes, digest_file
from artfs.manifest import ManifestBuilder
from artfs.repo import Version, layout
from tests.mounting import mounted_here
from tests.t2_manifest_format import format_1


def test_a_format_1_version_shows_through_the_mount(
    tmp_path: Path, api: Api, store_url, cache_dir, artfs_env
) -> None:
    b = ManifestBuilder()
    b.add_file("a/x.txt", 2, digest_bytes(b"x\n"), executable=True)
    b.write(tmp_path / "m")
    tree = b.tree_digest()
    format_1(tmp_path / "m")
    repo = api.repo
    repo.create_project("proj", exist_ok=True)
    repo.create_artifact("proj", "old", "dataset")
    blob = tmp_path / "x"
    blob.write_bytes(b"x\n")
    repo.store.put_file(layout.blob_key(digest_bytes(b"x\n")), blob)
    manifest_digest, _ = digest_file(tmp_path / "m")
    repo.store.put_file(layout.blob_key(manifest_digest), tmp_path / "m")
    created = time.time() - 1000
    # project, artifact, number (-1: the next), manifest digest, tree, created, size, files
    v = repo.create_version_record(Version("proj", "old", -1, manifest_digest, tree, created, 2, 1))
    repo.advance_latest("proj", "old", v.number)
    with mounted_here(tmp_path, store_url, env=artfs_env) as mnt:
        f = mnt.path / "proj/old/v0/a/x.txt"
        assert f.read_text() == "x\n"
        st = os.stat(f)
        assert stat.S_IMODE(st.st_mode) == 0o755
        assert abs(st.st_mtime - created) < 1e-3
        assert abs(os.stat(mnt.path / "proj/old/v0/a").st_mtime - created) < 1e-3
