"""Never wrong bytes: edits of `get` output, damaged cache files and damaged
store files are caught by the cache's stamps, through the API, the CLI and
real mounts, on a local store and on S3."""

from __future__ import annotations

import errno
import json
import os
import time
from pathlib import Path

import pytest

from artfs.api import Api
from artfs.cache.readers import CHECK_INTERVAL
from artfs.repo.layout import blob_key
from tests.trees import damage_in_place, make_tree, read_tree

MiB = 1 << 20


def _drop_page_cache(path: Path) -> None:
    """Make the kernel ask the daemon again for this file's bytes."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


@pytest.fixture
def mount(new_mount):
    def make(*args: str, allowed_errors=None):
        return new_mount(*args, allowed_errors=allowed_errors)

    return make


def test_get_shares_no_inode_with_the_cache_unless_asked(
    api: Api, run_artfs, cache_dir: Path, tmp_path: Path
) -> None:
    src = make_tree(tmp_path / "src", {"a.txt": "original\n", "big.bin": os.urandom(300_000)})
    api.put([src], "proj/ds")
    digest = {p: d for p, _, d in api.artifact("proj/ds:v0").files()}["a.txt"]

    run_artfs("get", "proj/ds", "--root", str(tmp_path / "g1"))
    g1 = tmp_path / "g1/a.txt"
    cached = api.repo.cache.path(digest)
    assert not (cached.exists() and os.path.samestat(g1.stat(), cached.stat()))
    assert g1.stat().st_nlink == 1 and g1.stat().st_mode & 0o200  # the user's own, writable
    with open(g1, "a") as f:
        f.write("BAD\n")
    run_artfs("get", "proj/ds", "--root", str(tmp_path / "g2"))
    assert (tmp_path / "g2/a.txt").read_text() == "original\n"
    assert read_tree(api.artifact("proj/ds:v0").download(tmp_path / "g3")) == read_tree(src)


def test_an_edited_linked_get_never_changes_a_later_get(
    api: Api, run_artfs, store_url: str, cache_dir: Path, artfs_env, tmp_path: Path, mount
) -> None:
    src = make_tree(tmp_path / "src", {"a.txt": "original\n", "b.txt": "other\n"})
    api.put([src], "proj/ds")
    digest = {p: d for p, _, d in api.artifact("proj/ds:v0").files()}["a.txt"]

    run_artfs("get", "--link", "proj/ds", "--root", str(tmp_path / "g1"))
    g1 = tmp_path / "g1/a.txt"
    cached = api.repo.cache.path(digest)
    assert os.path.samestat(g1.stat(), cached.stat())  # asked for: the cache's inode
    assert g1.stat().st_mode & 0o777 == 0o444  # read-only
    # Root writes anyway (as `echo BAD >> g1/a.txt` would after a chmod).
    with open(g1, "a") as f:
        f.write("BAD\n")

    for how in ("get", "get --link"):
        out = tmp_path / how.replace(" ", "")
        run_artfs(*how.split(), "proj/ds", "--root", str(out))
        assert (out / "a.txt").read_text() == "original\n", how
    assert api.artifact("proj/ds:v0").download(tmp_path / "api", link=True).joinpath(
        "a.txt"
    ).read_text() == ("original\n")
    assert cached.read_text() == "original\n"  # discarded and fetched again
    assert g1.read_text() == "original\nBAD\n"  # the user's edit is the user's
    # A mount reading through the cache serves the right bytes too.
    m = mount("--via-cache") if not store_url.startswith("s3://") else mount()
    assert (m.path / "proj/ds/v0/a.txt").read_text() == "original\n"


def test_a_damaged_cache_entry_is_fetched_again(
    api: Api, store_url: str, cache_dir: Path, tmp_path: Path
) -> None:
    small, large = os.urandom(100_000), os.urandom(9 * MiB)  # whole and part by part
    api.put([make_tree(tmp_path / "src", {"s.bin": small, "l.bin": large})], "proj/ds")
    files = {p: d for p, _, d in api.artifact("proj/ds:v0").files()}
    api.repo.cache.cleanup(0)
    cache = Api(store=store_url, cache=str(cache_dir)).repo.cache
    for name, data in (("s.bin", small), ("l.bin", large)):
        cache.ensure(files[name], len(data))
        damage_in_place(cache.path(files[name]), offset=len(data) // 2)
        before = cache.fetches
        reader = cache.open_verified(files[name], len(data))
        try:
            assert reader.read(0, len(data)) == data
        finally:
            reader.close()
        assert cache.fetches == before + 1, name  # re-fetched, not served


@pytest.mark.store_left_inconsistent  # a local store's blob is damaged on purpose
@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_a_reader_kept_across_opens_is_checked_again(
    api: Api, store_url: str, cache_dir: Path, tmp_path: Path, mount, damage: str
) -> None:
    """A file read once through the mount, then damaged where the mount reads
    it (the store's own file, or the cache's entry): the next read is EIO
    or the right bytes, never the damaged ones."""
    data = os.urandom(300_000)  # above the in-memory size: a kept fd reader
    api.put([make_tree(tmp_path / "src", {"f.bin": data, "ok.txt": "fine"})], "proj/ds")
    digest = {p: d for p, _, d in api.artifact("proj/ds:v0").files()}["f.bin"]
    local = not store_url.startswith("s3://")
    m = mount(allowed_errors=["is corrupt", "changed"])
    f = m.path / "proj/ds/v0/f.bin"
    assert f.read_bytes() == data
    target = api.repo.store.local_path(blob_key(digest)) if local else api.repo.cache.path(digest)
    if damage == "flip":
        damage_in_place(target, offset=1000)
    else:
        os.chmod(target, 0o644)
        os.truncate(target, 1000)
    try:
        _drop_page_cache(f)  # an open: may fail already
        got = f.read_bytes()
    except OSError as e:
        assert e.errno == errno.EIO
        assert local, "a damaged cache entry is fetched again from the store"
    else:
        assert not local and got == data
    assert (m.path / "proj/ds/v0/ok.txt").read_text() == "fine"
    if local:
        assert f"blob {digest} is corrupt" in m.log_text()


def test_an_open_file_whose_cache_entry_is_damaged_fails_its_read(
    api: Api, store_url: str, cache_dir: Path, tmp_path: Path, mount
) -> None:
    data = os.urandom(2 * MiB)
    api.put([make_tree(tmp_path / "src", {"f.bin": data})], "proj/ds")
    digest = {p: d for p, _, d in api.artifact("proj/ds:v0").files()}["f.bin"]
    m = mount(
        *([] if store_url.startswith("s3://") else ["--via-cache"]),
        allowed_errors=["is corrupt", "changed"],
    )
    f = m.path / "proj/ds/v0/f.bin"
    with open(f, "rb") as fh:
        assert fh.read(4096) == data[:4096]
        damage_in_place(api.repo.cache.path(digest), offset=MiB + 5)
        time.sleep(CHECK_INTERVAL * 1.5)  # an open reader checks its stamp this often
        _drop_page_cache(f)
        fh.seek(0)
        try:
            got = fh.read()
        except OSError as e:
            assert e.errno == errno.EIO
        else:
            assert got == data
    _drop_page_cache(f)
    assert f.read_bytes() == data  # the next open fetches it again


def test_a_lazy_reader_checks_the_verified_blob_it_ends_up_reading(
    s3_url: str, tmp_path: Path
) -> None:
    from artfs.cache import BlobError

    data = os.urandom(9 * MiB)  # two parts: read lazily
    api = Api(store=s3_url, cache=str(tmp_path / "c1"))
    api.put([make_tree(tmp_path / "src", {"l.bin": data})], "proj/ds")
    digest = next(d for _, _, d in api.artifact("proj/ds:v0").files())
    cache = Api(store=s3_url, cache=str(tmp_path / "c2")).repo.cache
    reader = cache.open_reader(digest, len(data))
    try:
        assert reader.read(0, len(data)) == data
        deadline = time.monotonic() + 30
        while not cache.has(digest):  # verified and moved into blobs/
            assert time.monotonic() < deadline
            time.sleep(0.05)
        os.link(cache.path(digest), tmp_path / "linked")  # moves ctime only: still good
        time.sleep(CHECK_INTERVAL * 1.5)
        assert reader.read(MiB, 100) == data[MiB : MiB + 100]
        damage_in_place(cache.path(digest), offset=MiB + 10)
        time.sleep(CHECK_INTERVAL * 1.5)
        with pytest.raises(BlobError):
            reader.read(MiB, 100)
    finally:
        reader.close()
    assert not cache.has(digest)  # discarded


def _opens_now(mount_path: Path) -> int:
    return json.loads(os.getxattr(mount_path, "user.artfs.stats"))["opens_now"]


@pytest.mark.store_left_inconsistent  # a local store's blob is damaged on purpose
def test_small_files_opened_on_the_event_loop_are_checked_as_any_open(
    api: Api, store_url: str, tmp_path: Path, mount
) -> None:
    """A small file whose blob this daemon verified before is opened on the
    event loop (its bytes read from the page cache, no worker thread): the
    next epoch over a dataset. That open is held to the same stamp: a blob
    damaged where the mount reads it is EIO (the store's own file) or
    fetched again (a cache entry), never served."""
    files = {f"f{i:02d}.txt": f"small file {i}\n" * (i + 1) for i in range(20)}
    src = make_tree(tmp_path / "src", files)
    artifacts = ["a", "b", "c", "d", "e"]
    for name in artifacts:  # the same blobs under other inodes: no kept readers
        api.put([src], f"proj/{name}")
    m = mount(allowed_errors=["is corrupt", "changed"])
    for p, text in files.items():  # the first epoch verifies each blob, in a worker
        assert (m.path / "proj/a/v0" / p).read_text() == text
    # A parallel test's drop_caches may evict the store's pages between two
    # epochs (those opens then go to a worker): one whole epoch must be "now".
    for name in artifacts[1:4]:
        before = _opens_now(m.path)
        for p, text in files.items():
            assert (m.path / f"proj/{name}/v0" / p).read_text() == text
        if _opens_now(m.path) - before == len(files):
            break
    else:
        raise AssertionError("no epoch was opened on the event loop")

    digest = {p: d for p, _, d in api.artifact("proj/a:v0").files()}["f03.txt"]
    local = not store_url.startswith("s3://")
    target = api.repo.store.local_path(blob_key(digest)) if local else api.repo.cache.path(digest)
    damage_in_place(target, offset=3)
    f = m.path / "proj/e/v0/f03.txt"
    try:
        got = f.read_text()
    except OSError as e:
        assert e.errno == errno.EIO
        assert local, "a damaged cache entry is fetched again from the store"
        assert f"blob {digest} is corrupt" in m.log_text()
    else:
        assert not local and got == files["f03.txt"]
    assert (m.path / "proj/e/v0/f04.txt").read_text() == files["f04.txt"]
