"""Every open checks the reader it is handed: a blob damaged while another
open holds its reader is never served to the next open."""

from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path

import pytest

from artfs.api import Api
from artfs.repo.layout import blob_key
from tests.mounting import mounted
from tests.trees import damage_in_place, make_tree

MiB = 1 << 20


def _read_again(path: Path) -> bytes:
    """A new open, with the page cache of the file dropped so the reads reach
    the daemon (the drop itself is an open too)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    return path.read_bytes()


@pytest.mark.store_left_inconsistent  # a local store's blob is damaged on purpose
@pytest.mark.parametrize("via_cache", [False, True])
def test_a_reader_in_use_is_checked_when_the_file_is_opened_again(
    api: Api,
    store_url: str,
    cache_dir: Path,
    artfs_env: dict[str, str],
    tmp_path: Path,
    via_cache: bool,
) -> None:
    data = os.urandom(2 * MiB)  # above the in-memory size: an fd reader, shared by opens
    api.put([make_tree(tmp_path / "src", {"f.bin": data})], "proj/ds")
    digest = next(d for _, _, d in api.artifact("proj/ds:v0").files())
    from_store = not via_cache and not store_url.startswith("s3://")
    # Reads within one open never check again here: what the test sees is the
    # check every open makes, nothing else.
    env = {**artfs_env, "ARTFS_READER_CHECK_INTERVAL": "3600"}
    with mounted(
        tmp_path / "mnt",
        store_url=store_url,
        cache_dir=cache_dir,
        state_dir=tmp_path / "state",
        env=env,
        args=["--via-cache"] if via_cache else [],
        allowed_errors=["is corrupt", "changed"],
    ) as m:
        f = m.path / "proj/ds/v0/f.bin"
        with open(f, "rb") as held:
            assert held.read(4096) == data[:4096]  # the reader is now in use
            target = api.repo.store.local_path(blob_key(digest)) if from_store else None
            target = target or api.repo.cache.path(digest)
            damage_in_place(target, offset=MiB + 5)
            try:
                got = _read_again(f)
            except OSError as e:
                assert e.errno == errno.EIO
                assert from_store, "a damaged cache entry is fetched again from the store"
            else:
                assert not from_store, "the damaged store file was served"
                assert got == data
        # The reader that was replaced went with its last open; the file reads
        # as before (from the fetched-again entry, or EIO from the damaged store).
        with contextlib.suppress(OSError):
            assert _read_again(f) == data
        if from_store:
            with pytest.raises(OSError) as e:
                _read_again(f)
            assert e.value.errno == errno.EIO
        else:
            assert _read_again(f) == data
