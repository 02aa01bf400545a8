"""gc against commits, readers and kills: the protocol of artfs.repo.gc, on real stores.

The race windows are held open on purpose with pause points
(``ARTFS_TEST_PAUSE_<NAME>=<file>``: the process waits at NAME until the file
exists), so each test fails every time on code without the protocol.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from artfs.api import Api
from artfs.objects import open_store
from artfs.repo import Repo, layout
from artfs.repo.check import check_store
from artfs.repo.gc import collect_garbage
from artfs.repo.locks import list_locks
from tests.mounting import mounted_here
from tests.trees import make_tree, read_tree

MiB = 1 << 20


def _cli(*args: str, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "artfs.cli", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for(path: Path, timeout: float = 60, proc: subprocess.Popen | None = None) -> bool:
    """True once ``path`` exists; False if ``proc`` exits first."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc is not None and proc.poll() is not None:
            return False
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.02)
    return True


def _fresh_read(store_url: str, cache: Path, ref: str, dest: Path) -> dict[str, bytes]:
    """Download ``ref`` through a new, empty cache: every byte comes from the store."""
    api = Api(store=store_url, cache=str(cache))
    return read_tree(api.artifact(ref).download(dest))


def _no_missing_blobs(store_url: str, cache: Path) -> None:
    report = check_store(Repo.open(open_store(store_url), str(cache)))
    assert not [p for p in report.problems if p.kind in ("missing-blob", "bad-manifest")], [
        str(p) for p in report.problems
    ]


def test_gc_waits_for_a_put_that_reuses_a_deleted_versions_blobs(
    artfs_env: dict[str, str], store_url: str, run_artfs, tmp_path: Path
) -> None:
    """The race of the issue: put dedups against blobs of a just-deleted version,
    gc runs between its existence checks and its record. The put's version must
    keep every blob, manifest included (an identical tree has the same manifest)."""
    files = {f"f{i}.bin": random.Random(i).randbytes(2000 + i) for i in range(6)}
    src = make_tree(tmp_path / "src", files)
    run_artfs("put", str(src), "-n", "proj/ds")
    run_artfs("put", str(make_tree(tmp_path / "other", {"x": "other"})), "-n", "proj/ds")
    run_artfs("delete", "proj/ds:v0")

    pause = tmp_path / "pause"
    env = dict(artfs_env, ARTFS_TEST_PAUSE_BEFORE_RECORD=str(pause))
    put = _cli("put", str(src), "-n", "proj/ds", env=env)
    try:
        _wait_for(Path(f"{pause}.reached"), proc=put)
        waiting = tmp_path / "gc-waits"
        gc_env = dict(artfs_env, ARTFS_TEST_MARK_LOCK_WAIT_EXCLUSIVE=str(waiting))
        gc = _cli("gc", "--grace", "0", "--force", env=gc_env)
        # gc must wait for the put's lock (code without the protocol sweeps now).
        waited = _wait_for(waiting, proc=gc)
        pause.touch()
        assert put.wait(60) == 0, put.stderr.read() if put.stderr else ""
        assert gc.wait(60) == 0, gc.stderr.read() if gc.stderr else ""
    finally:
        pause.touch()
        for p in (put,):
            with contextlib.suppress(ProcessLookupError):
                p.kill()
    assert waited, "gc did not wait for the commit in progress"
    assert "proj/ds:v2" in put.stdout.read()
    _no_missing_blobs(store_url, tmp_path / "check-cache")
    assert _fresh_read(store_url, tmp_path / "c2", "proj/ds:v2", tmp_path / "out") == read_tree(src)


def test_mount_commit_and_base_commit_survive_gc_in_their_window(
    store_url: str, cache_dir: Path, tmp_path: Path, artfs_env: dict[str, str]
) -> None:
    """The same window, for a mount's .commit and a .base commit (whose carried-over
    blobs the commit never uploads)."""
    api = Api(store=store_url, cache=str(cache_dir))
    files = {f"d/f{i}": random.Random(10 + i).randbytes(3000) for i in range(5)}
    api.put([make_tree(tmp_path / "src", files)], "proj/ds")  # v0
    api.put([make_tree(tmp_path / "o", {"o": "x"})], "proj/ds")  # v1
    api.repo.delete_version(api.artifact("proj/ds:v0").record)
    pause = tmp_path / "pause"
    env = dict(os.environ, ARTFS_TEST_PAUSE_BEFORE_RECORD=str(pause))
    env["ARTFS_CONFIG"] = artfs_env["ARTFS_CONFIG"]
    gc_env = dict(artfs_env)

    def commit_in_window(staging: Path, before_gc=lambda: None) -> None:
        """touch .commit, with gc (after ``before_gc``) run while it waits before its record."""
        Path(f"{pause}.reached").unlink(missing_ok=True)
        pause.unlink(missing_ok=True)
        # touch(1), not Path.touch: Python drops the error of utime.
        touch = subprocess.Popen(["touch", str(staging / ".commit")], stderr=subprocess.PIPE)
        try:
            _wait_for(Path(f"{pause}.reached"))
            before_gc()
            waiting = tmp_path / f"gc-waits-{time.monotonic_ns()}"
            gc = _cli(
                "gc",
                "--grace",
                "0",
                "--force",
                env=dict(gc_env, ARTFS_TEST_MARK_LOCK_WAIT_EXCLUSIVE=str(waiting)),
            )
            waited = _wait_for(waiting, proc=gc)
        finally:
            pause.touch()
            touch.wait(60)
        assert gc.wait(60) == 0
        assert touch.returncode == 0, touch.stderr.read() if touch.stderr else ""
        assert waited, "gc did not wait for the commit in progress"

    with mounted_here(tmp_path, store_url, cache_dir=tmp_path / "mcache", env=env) as m:
        staging = m.path / "proj/ds/staging"
        make_tree(staging, files)  # the same bytes as deleted v0: all deduplicated
        commit_in_window(staging)  # -> v2
        # A .base commit: v2's files carried over (never uploaded), one added;
        # v2 is deleted while the commit waits before its record.
        (staging / ".base").write_text("v2\n")
        (staging / "added").write_text("new")

        def delete_base() -> None:
            api.repo.delete_version(api.artifact("proj/ds:v2").record, delete_aliases=True)

        commit_in_window(staging, delete_base)  # -> v3
    _no_missing_blobs(store_url, tmp_path / "check-cache")
    v3 = _fresh_read(store_url, tmp_path / "c3", "proj/ds:v3", tmp_path / "o3")
    assert v3 == read_tree(make_tree(tmp_path / "want", {**files, "added": "new"}))


def test_a_base_commit_after_its_base_was_collected_fails_cleanly(
    store_url: str, cache_dir: Path, tmp_path: Path, artfs_env: dict[str, str]
) -> None:
    """The other order: the base is deleted and collected before the commit takes
    its lock. The commit must fail (its blobs are gone), not make a broken version."""
    api = Api(store=store_url, cache=str(cache_dir))
    files = {"a": "only in v0", "b": "also only in v0"}
    api.put([make_tree(tmp_path / "src", files)], "proj/ds")
    env = dict(os.environ, ARTFS_CONFIG=artfs_env["ARTFS_CONFIG"])
    with mounted_here(tmp_path, store_url, cache_dir=tmp_path / "mcache", env=env) as m:
        staging = m.path / "proj/ds/staging"
        (staging / ".base").write_text("v0\n")
        (staging / "c").write_text("new")
        api.repo.delete_version(api.artifact("proj/ds:v0").record, delete_aliases=True)
        collect_garbage(api.repo, grace=0, force=True)
        r = subprocess.run(["touch", str(staging / ".commit")], capture_output=True, text=True)
        status = (staging / ".status").read_text()
        assert r.returncode != 0, status
    assert api.repo.versions("proj", "ds") == [], status
    assert "failed" in status, status


def test_rounds_of_delete_and_gc_racing_puts_lose_nothing(
    store_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Bounded multi-round version, no pauses: each round deletes the newest version
    and gcs with no grace while a put of the same tree (all blobs deduplicated)
    runs in another thread with its own Repo (another machine)."""
    monkeypatch.setenv("ARTFS_CONFIG", str(tmp_path / "none.toml"))
    a = Api(store=store_url, cache=str(tmp_path / "ca"))
    b = Api(store=store_url, cache=str(tmp_path / "cb"))
    trees = [
        make_tree(
            tmp_path / f"t{k}",
            {f"f{i}": random.Random(k * 100 + i).randbytes(999) for i in range(8)},
        )
        for k in range(2)
    ]
    a.put([trees[0]], "proj/ds")
    rounds = int(os.environ.get("ARTFS_TEST_GC_ROUNDS", "8"))  # the 100: set it
    for r in range(rounds):
        newest = a.repo.highest_live_version("proj", "ds")
        if newest is None:  # the last round's put found its tree identical, then lost it
            newest = a.put([trees[(r + 1) % 2]], "proj/ds").version
        put_result: list = []
        t = threading.Thread(
            target=lambda out=put_result, k=r: out.append(b.put([trees[k % 2]], "proj/ds"))
        )
        t.start()
        with contextlib.suppress(Exception):
            a.repo.delete_version(newest, delete_aliases=True)
        collect_garbage(a.repo, grace=0, force=True)
        t.join(120)
        assert put_result, "the put failed"
    _no_missing_blobs(store_url, tmp_path / "check-cache")
    for v in a.repo.versions("proj", "ds"):
        got = _fresh_read(store_url, tmp_path / f"c{v.number}", v.ref, tmp_path / f"o{v.number}")
        assert got == read_tree(trees[0]) or got == read_tree(trees[1])


def test_a_reader_on_another_machine_finishes_a_version_deleted_and_collected(
    store_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Grace counts from deletion: machine B (a mount with its own cache) reads a
    large file of v0 while machine A deletes v0 and runs gc with a 2 s grace.
    v0 was uploaded longer ago than that, so a grace counted from upload sweeps
    its blob mid-read."""
    monkeypatch.setenv("ARTFS_CONFIG", str(tmp_path / "none.toml"))
    a = Api(store=store_url, cache=str(tmp_path / "cache-a"))
    big = random.Random(7).randbytes(48 * MiB)
    a.put([make_tree(tmp_path / "src", {"big.bin": big})], "proj/ds")
    a.put([make_tree(tmp_path / "src1", {"other": "v1"})], "proj/ds")
    time.sleep(2.5)  # older than the grace below
    env = dict(os.environ, ARTFS_CONFIG=str(tmp_path / "none.toml"))
    with mounted_here(
        tmp_path,
        store_url,
        name="-b",  # another machine: mnt-b, cache-b, state-b
        env=env,
        args=["--via-cache"],  # a local store too is read through B's own cache
    ) as m:
        with open(m.path / "proj/ds/v0/big.bin", "rb") as f:
            head = f.read(MiB)
            a.repo.delete_version(a.artifact("proj/ds:v0").record)
            r = collect_garbage(a.repo, grace=2, force=True)
            assert r.deleted_kept >= 2  # big.bin and v0's manifest
            rest = f.read()
        assert head + rest == big
    # Once the grace has passed, the next gc frees them.
    time.sleep(2.2)
    r = collect_garbage(a.repo, grace=2, force=True)
    assert r.swept_blobs >= 2 and r.swept_bytes >= len(big)


def test_kill_put_at_its_record_then_retry_makes_no_duplicate(
    artfs_env: dict[str, str], store_url: str, run_artfs, tmp_path: Path
) -> None:
    """kill -9 of put the moment its version record exists (before latest moves):
    the next put repairs latest and, being identical to the highest live version,
    makes no new one."""
    src1 = make_tree(tmp_path / "s1", {"a": "one"})
    src2 = make_tree(tmp_path / "s2", {"a": "two"})
    run_artfs("put", str(src1), "-n", "proj/ds")
    pause = tmp_path / "pause"
    put = _cli(
        "put",
        str(src2),
        "-n",
        "proj/ds",
        env=dict(artfs_env, ARTFS_TEST_PAUSE_AFTER_RECORD=str(pause)),
    )
    try:
        _wait_for(Path(f"{pause}.reached"), proc=put)
        put.send_signal(signal.SIGKILL)
        put.wait(30)
    finally:
        with contextlib.suppress(ProcessLookupError):
            put.kill()
    api = Api(store=store_url, cache=str(tmp_path / "c"))
    assert api.repo.alias_target("proj", "ds", "latest") == 0  # left behind by the kill
    check = run_artfs("check", check=False)
    assert check.returncode == 1 and "latest" in check.stdout
    out = run_artfs("put", str(src2), "-n", "proj/ds")
    assert "identical to latest" in out.stderr and out.stdout.strip() == "proj/ds:v1"
    assert [v.number for v in api.repo.versions("proj", "ds")] == [0, 1]
    assert api.repo.alias_target("proj", "ds", "latest") == 1
    assert run_artfs("check").returncode == 0


def test_check_repair_and_mount_start_repair_latest(
    store_url: str, tmp_path: Path, run_artfs, artfs_env: dict[str, str]
) -> None:
    api = Api(store=store_url, cache=str(tmp_path / "c"))
    for i in range(3):
        api.put([make_tree(tmp_path / f"s{i}", {"a": f"v{i}"})], "proj/ds")
    behind = layout.alias_key("proj", "ds", "latest")
    api.repo.store.put(behind, b'{"version": 0}\n')
    r = run_artfs("check", "--repair")
    assert "repaired: proj/ds:latest" in r.stdout and r.returncode == 0
    assert api.repo.alias_target("proj", "ds", "latest") == 2
    api.repo.store.put(behind, b'{"version": 1}\n')
    env = dict(os.environ, ARTFS_CONFIG=artfs_env["ARTFS_CONFIG"])
    with mounted_here(tmp_path, store_url, cache_dir=tmp_path / "mc", env=env) as m:
        assert api.repo.alias_target("proj", "ds", "latest") == 2
        assert os.readlink(m.path / "proj/ds/latest") == "v2"


def test_kill_daemon_at_its_record_recovers_at_mount_start(
    store_url: str, tmp_path: Path, artfs_env: dict[str, str], run_artfs
) -> None:
    """kill -9 of the daemon the moment a staging commit's record exists: the next
    mount finishes the commit before it serves (latest moved, staging empty)."""
    api = Api(store=store_url, cache=str(tmp_path / "c"))
    api.put([make_tree(tmp_path / "s0", {"a": "zero"})], "proj/ds")
    pause = tmp_path / "pause"
    base_env = dict(os.environ, ARTFS_CONFIG=artfs_env["ARTFS_CONFIG"])
    mc = tmp_path / "mc"
    with mounted_here(
        tmp_path,
        store_url,
        cache_dir=mc,
        env=dict(base_env, ARTFS_TEST_PAUSE_AFTER_RECORD=str(pause)),
    ) as m:
        (m.path / "proj/ds/staging/b").write_text("one")
        touch = subprocess.Popen(
            ["touch", str(m.path / "proj/ds/staging/.commit")], stderr=subprocess.PIPE, text=True
        )
        _wait_for(Path(f"{pause}.reached"))
        os.kill(m.pid, signal.SIGKILL)
        assert touch.wait(30) != 0  # the commit's caller sees the daemon die
    assert api.repo.alias_target("proj", "ds", "latest") == 0  # the kill left it behind
    with mounted_here(tmp_path, store_url, cache_dir=mc, env=base_env) as m:
        assert api.repo.alias_target("proj", "ds", "latest") == 1
        assert os.readlink(m.path / "proj/ds/latest") == "v1"
        assert [n for n in os.listdir(m.path / "proj/ds/staging") if not n.startswith(".")] == []
        assert (m.path / "proj/ds/v1/b").read_text() == "one"
    assert [v.number for v in api.repo.versions("proj", "ds")] == [0, 1]


def test_killed_upload_leaves_temp_files_that_gc_reports_and_reclaims(
    store_url: str, tmp_path: Path, artfs_env: dict[str, str], run_artfs
) -> None:
    """kill -9 of put while its blobs sit in the store's temp area, under its
    lock: dry-run reports the temp files, gc is not blocked by the dead
    holder's lock and leaves no temp file and no lock."""
    src = make_tree(tmp_path / "src", {f"f{i}": random.Random(i).randbytes(4096) for i in range(5)})
    pause = tmp_path / "pause"
    local = "://" not in store_url
    # STORE_STAGED: the local store's temp copies are written, not linked yet
    # (an object store keeps an upload's parts to itself).
    points = ("STORE_STAGED", "BEFORE_RECORD") if local else ("BEFORE_RECORD",)
    for point in points:
        pause.unlink(missing_ok=True)
        Path(f"{pause}.reached").unlink(missing_ok=True)
        put = _cli(
            "put",
            str(src),
            "-n",
            "proj/ds",
            env=dict(artfs_env, **{f"ARTFS_TEST_PAUSE_{point}": str(pause)}),
        )
        try:
            _wait_for(Path(f"{pause}.reached"), proc=put)
            put.send_signal(signal.SIGKILL)
            put.wait(30)
        finally:
            with contextlib.suppress(ProcessLookupError):
                put.kill()
    store = open_store(store_url)
    temps = store.temp_objects()
    if local:
        assert len(temps) == 5  # the staged copies of the first killed put
    assert len(list_locks(store)) == len(points)  # each put died holding its lock
    env = dict(artfs_env, ARTFS_TEST_TEMP_QUIET="0.5")
    time.sleep(0.6)
    dry = run_artfs("gc", "--grace", "0", "--force", "--dry-run", env=env).stdout
    if local:
        assert "would remove 5 temp files" in dry
    r = run_artfs("gc", "--grace", "0", "--force", env=env, timeout=60)
    assert f"removed {len(points)} stale locks" in r.stdout
    assert store.temp_objects() == [] and list_locks(store) == []
    # The blobs the second put uploaded were never referenced: swept too.
    assert list(store.iter_objects("blobs/")) == []


def test_latest_repair_racing_a_commit_never_moves_latest_back(
    store_url: str, tmp_path: Path, artfs_env: dict[str, str], run_artfs, monkeypatch
) -> None:
    """A repair (here: check --repair's, in this process) that read the versions
    before a commit on another machine landed must not then move ``latest``
    back over that commit: the repair pauses between its two reads while a
    put makes v2 and moves latest."""
    api = Api(store=store_url, cache=str(tmp_path / "c"))
    api.put([make_tree(tmp_path / "s0", {"a": "0"})], "proj/ds")
    api.put([make_tree(tmp_path / "s1", {"a": "1"})], "proj/ds")
    api.repo.store.put(layout.alias_key("proj", "ds", "latest"), b'{"version": 0}\n')
    pause = tmp_path / "pause"
    monkeypatch.setenv("ARTFS_TEST_PAUSE_REPAIR_LATEST", str(pause))
    done: list = []
    t = threading.Thread(target=lambda: done.append(api.repo.repair_latest("proj", "ds")))
    t.start()
    try:
        _wait_for(Path(f"{pause}.reached"))
        run_artfs("put", str(make_tree(tmp_path / "s2", {"a": "2"})), "-n", "proj/ds")
        assert api.repo.alias_target("proj", "ds", "latest") == 2
    finally:
        pause.touch()
        t.join(60)
    assert done
    assert api.repo.alias_target("proj", "ds", "latest") == 2
