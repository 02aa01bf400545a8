"""What the kernel asks the daemon, counted (issue 11): the cheap answers stay cheap.

The daemon counts requests by opcode (``user.artfs.stats``); these tests read
the counts around real tools so a change that sends a request per file again
(an xattr probe, a reopen through a worker thread) fails here.
"""

from __future__ import annotations

import errno
import os
import subprocess

import pytest

from tests.mounting import mounted_here

FILES = 300


@pytest.fixture
def mnt(api, store_url, cache_dir, artfs_env, tmp_path):
    src = tmp_path / "src"
    for i in range(FILES):
        d = src / f"d{i % 3}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"f{i:04d}.txt").write_bytes(f"file {i}\n".encode() * (i + 1))
    api.put([src], "proj/many")
    with mounted_here(tmp_path, store_url, env=artfs_env) as m:
        yield m, src


def test_requests_are_counted_by_opcode(mnt) -> None:
    m, _ = mnt
    before = m.requests()
    os.listdir(m.path / "proj/many/v0/d0")
    after = m.requests()
    assert after["opendir"] == before.get("opendir", 0) + 1
    assert after["readdir"] > before.get("readdir", 0)
    again = m.requests()
    # Each count is taken inside its own request, the next one sees it; a read
    # of the stats is two (os.getxattr tries a 128-byte buffer first: ERANGE).
    assert again["getxattr"] == after["getxattr"] + 2
    assert again["opendir"] == after["opendir"]


def test_ls_l_probes_cost_one_request_per_run_not_per_file(mnt) -> None:
    m, src = mnt
    version = m.path / "proj/many/v0"
    f = version / "d0/f0000.txt"
    with pytest.raises(OSError) as e:
        os.getxattr(f, "security.selinux")
    assert e.value.errno == errno.ENOTSUP
    with pytest.raises(OSError) as e:
        os.getxattr(f, "system.posix_acl_access")
    assert e.value.errno == errno.ENOTSUP
    with pytest.raises(OSError) as e:
        os.getxattr(f, "user.artfs.nope")
    assert e.value.errno == errno.ENODATA  # user.* is supported: this name is just absent
    assert os.getxattr(f, "user.artfs.digest").startswith(b"xxh128:")

    for _ in range(2):  # the second pass too (it used to be the slower one)
        before = m.requests()
        out = subprocess.run(
            ["ls", "-lR", str(version)], check=True, capture_output=True, text=True
        ).stdout
        after = m.requests()
        assert out.count(".txt") == FILES
        assert after["getxattr"] - before["getxattr"] <= 5, "an xattr probe per file again"
    # ls -l shows the same sizes and modes as the source
    listed = subprocess.run(
        ["ls", "-l", str(version / "d1")], check=True, capture_output=True, text=True
    ).stdout
    for line in listed.splitlines()[1:]:
        parts = line.split()
        assert int(parts[4]) == (src / "d1" / parts[-1]).stat().st_size


def test_second_epoch_reopens_small_files_without_a_worker_thread(mnt) -> None:
    m, src = mnt
    version = m.path / "proj/many/v0"
    paths = sorted(p.relative_to(src) for p in src.rglob("*.txt"))
    assert len(paths) == FILES  # more than the 256 idle readers that hold an fd
    for p in paths:
        assert (version / p).read_bytes() == (src / p).read_bytes()
    before = m.stats()
    for p in paths:
        assert (version / p).read_bytes() == (src / p).read_bytes()
    after = m.stats()
    assert after["opens"] - before["opens"] == FILES
    assert after["reopens"] - before["reopens"] == FILES


def test_a_second_listing_pass_is_answered_from_kept_pages(mnt) -> None:
    m, src = mnt
    version = m.path / "proj/many/v0"

    def listing() -> list[tuple[str, int, int]]:
        out = []
        for d in sorted(os.listdir(version)):
            with os.scandir(version / d) as it:
                for e in it:
                    st = e.stat(follow_symlinks=False)
                    out.append((f"{d}/{e.name}", st.st_size, st.st_ino))
        return sorted(out)

    first = listing()
    assert [(p, size) for p, size, _ in first] == sorted(
        (str(p.relative_to(src)), p.stat().st_size) for p in src.rglob("*.txt")
    )
    before = m.stats()
    assert listing() == first
    after = m.stats()
    readdirs = after["ops"]["readdir"][0] - before["ops"]["readdir"][0]
    assert readdirs > 0, "the kernel cached the listing: nothing was tested"
    # Every page of the second pass (the version's root page, which is kept
    # too, and each directory's) came from the kept pages.
    assert after["listing_hits"] - before["listing_hits"] == readdirs


def test_attributes_asked_again_after_reads_come_from_kept_pages(mnt) -> None:
    m, src = mnt
    version = m.path / "proj/many/v0"
    listed = {}
    for d in sorted(os.listdir(version)):
        for e in os.scandir(version / d):  # readdirplus: pages kept, attributes with them
            st = e.stat(follow_symlinks=False)
            listed[f"{d}/{e.name}"] = (st.st_ino, st.st_size, st.st_mode, st.st_mtime_ns)
    before = m.stats()
    for rel, (ino, size, mode, mtime_ns) in listed.items():
        with open(version / rel, "rb") as f:
            assert f.read() == (src / rel).read_bytes()
            # The read marked the atime stale (a writable mount): fstat asks again.
            st = os.fstat(f.fileno())
        assert (st.st_ino, st.st_size, st.st_mode, st.st_mtime_ns) == (ino, size, mode, mtime_ns)
        assert st.st_size == (src / rel).stat().st_size
    after = m.stats()
    getattrs = after["ops"]["getattr"][0] - before["ops"]["getattr"][0]
    assert getattrs >= FILES, "the kernel asked nothing: nothing was tested"
    # Every file's getattr was answered from its kept listing page.
    assert after["attr_hits"] - before["attr_hits"] >= FILES


def test_reads_of_a_file_in_the_page_cache_are_answered_without_a_worker_thread(
    api, store_url, artfs_env, tmp_path
) -> None:
    data = os.urandom(4 << 20)  # above the in-memory size: read through an fd
    src = tmp_path / "big"
    src.mkdir()
    (src / "f.bin").write_bytes(data)
    api.put([src], "proj/big")
    with mounted_here(tmp_path, store_url, env=artfs_env) as m:
        f = m.path / "proj/big/v0/f.bin"
        assert f.read_bytes() == data  # fetched (or hashed) once: now in the page cache
        with open(f, "rb") as held:
            # The kernel's copy goes; the daemon's file (cache entry or the
            # local store's own) stays in the page cache.
            os.posix_fadvise(held.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
            before = m.stats()
            assert held.read() == data
            after = m.stats()
    reads = after["reads"] - before["reads"]
    now = after["now"].get("read", 0) - before["now"].get("read", 0)
    assert reads > 0, "the kernel kept its copy: nothing reached the daemon"
    assert now == reads, f"{reads - now} of {reads} reads went to a worker thread"
