"""``artfs check``, ``artfs verify``, gc's grace floor and its locks, from the CLI."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from artfs.api import Api
from artfs.repo import layout
from artfs.repo.locks import process_identity
from tests.trees import make_tree


def _lock_record(kind: str, *, expires_in: float, host: str = "elsewhere") -> bytes:
    now = time.time()
    holder = {"host": host, "boot": "another-boot", "pidns": "1", "pid": 4242, "pid_start": "1"}
    return json.dumps(
        {
            "kind": kind,
            "purpose": kind,
            "created": now,
            "expires": now + expires_in,
            "holder": holder,
        }
    ).encode()


def test_check_a_healthy_store_then_each_kind_of_damage(
    api: Api, run_artfs, tmp_path: Path, store_url: str
) -> None:
    src = make_tree(tmp_path / "src", {"a.txt": "alpha", "b.txt": "bravo", "d/c.txt": "charlie"})
    api.put([src], "proj/ds")
    (src / "a.txt").write_text("alpha 2")
    api.put([src], "proj/ds", aliases=["best"])
    ok = run_artfs("check", "--read-data")
    assert "no problems" in ok.stdout and "re-hashed" in ok.stdout
    assert json.loads(run_artfs("check", "--json").stdout)["ok"] is True
    store = api.repo.store
    files = {p: d for p, _, d in api.artifact("proj/ds:v1").files()}

    # Same size, other bytes: only --read-data and verify see it.
    store.put(layout.blob_key(files["b.txt"]), b"BRAVO")
    assert run_artfs("check").returncode == 0
    bad = run_artfs("check", "--read-data", check=False)
    assert bad.returncode == 1 and files["b.txt"] in bad.stdout and "corrupt" in bad.stdout
    v = run_artfs("verify", "proj/ds:v1", check=False)
    assert v.returncode == 1 and "mismatch: b.txt:" in v.stdout
    assert "a.txt" not in v.stdout and "1 mismatches" in v.stdout
    store.put(layout.blob_key(files["b.txt"]), b"bravo")
    assert run_artfs("verify", "proj/ds:v1").returncode == 0

    # The local cache's copy, re-hashed by verify --cache.
    run_artfs("get", "proj/ds:v1", "--root", str(tmp_path / "out"))
    assert "all match" in run_artfs("verify", "proj/ds:v1", "--cache").stdout

    # A missing blob of a live version.
    store.delete(layout.blob_key(files["d/c.txt"]))
    miss = run_artfs("check", check=False)
    assert miss.returncode == 1 and files["d/c.txt"] in miss.stdout
    store.put(layout.blob_key(files["d/c.txt"]), b"charlie")

    # latest behind, an alias naming a deleted version: found; latest repaired.
    store.put(layout.alias_key("proj", "ds", "latest"), b'{"version": 0}\n')
    store.put(layout.alias_key("proj", "ds", "old"), b'{"version": 7}\n')
    report = json.loads(run_artfs("check", "--json", check=False).stdout)
    assert report["ok"] is False
    assert {p["kind"] for p in report["problems"]} == {"latest", "alias"}
    fixed = run_artfs("check", "--repair", check=False)
    assert "repaired: proj/ds:latest" in fixed.stdout and fixed.returncode == 1  # the alias stays
    assert api.repo.alias_target("proj", "ds", "latest") == 1
    store.delete(layout.alias_key("proj", "ds", "old"))
    assert run_artfs("check").returncode == 0


def test_check_holds_open_drafts_to_their_blobs(api: Api, run_artfs, tmp_path: Path) -> None:
    """An open draft's part names blobs its finish will need: a missing one,
    or a part that does not parse, is a problem, as for a live version;
    a finished draft's blobs are the version's."""
    src = make_tree(tmp_path / "src", {"a.txt": "alpha", "b.txt": "bravo"})
    run_artfs("put", str(src), "-n", "proj/ds", "--draft", "g")
    assert run_artfs("check").returncode == 0
    store = api.repo.store
    (part_key,) = [o.key for o in store.iter_objects(layout.draft_parts_prefix("proj", "ds", "g"))]
    part = json.loads(store.get(part_key))
    digest = part["files"]["a.txt"]["digest"]
    blob = store.get(layout.blob_key(digest))

    store.delete(layout.blob_key(digest))
    miss = run_artfs("check", check=False)
    assert miss.returncode == 1 and digest in miss.stdout and "open draft" in miss.stdout
    store.put(layout.blob_key(digest), blob)

    evil = layout.draft_part_key("proj", "ds", "g", "evil")
    store.put(evil, b'{"format": 1, "files": {"../x": {}}}')
    bad = json.loads(run_artfs("check", "--json", check=False).stdout)
    assert [p["kind"] for p in bad["problems"]] == ["corrupt-record"]
    assert "draft g" in bad["problems"][0]["where"]
    store.delete(evil)

    run_artfs("draft", "finish", "proj/ds", "g")
    assert run_artfs("check").returncode == 0


@pytest.mark.parametrize("store_url", ["local"], indirect=True)
def test_check_reports_and_repairs_orphan_temp_files(api: Api, run_artfs, store_url: str) -> None:
    api.put([make_tree(Path(store_url).parent / "src", {"a": "x"})], "proj/ds")
    orphan = Path(store_url) / ".tmp" / "0123abcd"
    orphan.write_bytes(b"x" * 1000)
    old = time.time() - 2 * 3600
    os.utime(orphan, (old, old))
    r = run_artfs("check", check=False)
    assert r.returncode == 1 and "orphan temp object, 1000 bytes" in r.stdout
    assert "repaired: .tmp/0123abcd" in run_artfs("check", "--repair").stdout
    assert not orphan.exists()


def test_gc_grace_floor_and_dry_run(api: Api, run_artfs, tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src", {"a": "x" * 5000})
    api.put([src], "proj/ds")
    (src / "a").write_text("y")
    api.put([src], "proj/ds")
    api.repo.delete_version(api.artifact("proj/ds:v0").record)
    for grace in ("0", "nan", "10m", "-1h", "inf"):
        r = run_artfs("gc", "--grace", grace, check=False)
        assert r.returncode == 2, (grace, r.stderr)
        assert r.stderr.startswith("artfs: error: ") and r.stderr.count("\n") == 1
    assert "floor" in run_artfs("gc", "--grace", "0", check=False).stderr
    # Deleted just now: the default grace keeps its blobs, and says so.
    assert "2 of versions deleted less than the grace period ago kept" in run_artfs("gc").stdout
    dry = run_artfs("gc", "--grace", "0", "--force", "--dry-run").stdout
    assert "would sweep 2 blobs" in dry and "would free" in dry
    assert len(list(api.repo.store.iter_objects("blobs/"))) == 4
    assert "swept 2 blobs" in run_artfs("gc", "--grace", "0", "--force").stdout
    assert len(list(api.repo.store.iter_objects("blobs/"))) == 2


def test_locks_of_others_block_until_they_expire(
    api: Api, run_artfs, tmp_path: Path, artfs_env: dict[str, str]
) -> None:
    """A live exclusive lock (a gc on another machine) makes a put wait and give up;
    a live shared lock (a commit elsewhere) makes gc wait and give up; expired
    ones are ignored, and removed by gc and check --repair."""
    src = make_tree(tmp_path / "src", {"a": "x"})
    api.put([src], "proj/ds")
    store = api.repo.store
    env = dict(artfs_env, ARTFS_LOCK_WAIT="1")
    gc_lock = layout.lock_key("exclusive-elsewhere")
    store.put(gc_lock, _lock_record("exclusive", expires_in=600))
    (src / "b").write_text("new")
    r = run_artfs("put", str(src), "-n", "proj/ds", env=env, check=False)
    assert r.returncode == 2 and "the store is busy: exclusive on elsewhere" in r.stderr
    assert len(api.repo.versions("proj", "ds")) == 1
    store.put(gc_lock, _lock_record("exclusive", expires_in=-1))  # its holder stopped refreshing
    run_artfs("put", str(src), "-n", "proj/ds", env=env)
    assert len(api.repo.versions("proj", "ds")) == 2

    commit_lock = layout.lock_key("shared-elsewhere")
    store.put(commit_lock, _lock_record("shared", expires_in=600))
    r = run_artfs("gc", "--grace", "0", "--force", env=env, check=False)
    assert r.returncode == 2 and "the store is busy: shared on elsewhere" in r.stderr
    assert "gc waits for 1 commit(s)" in r.stderr
    store.put(commit_lock, _lock_record("shared", expires_in=-1))
    out = run_artfs("gc", "--grace", "0", "--force", env=env).stdout
    assert "removed 2 stale locks" in out
    assert list(store.iter_objects("locks/")) == []

    # A lock of a dead process on this machine is stale at once.
    me = process_identity()
    dead = dict(me, pid=me["pid"], pid_start="0")
    now = time.time()
    record = {
        "kind": "shared",
        "purpose": "x",
        "created": now,
        "expires": now + 600,
        "holder": dead,
    }
    store.put(layout.lock_key("shared-dead"), json.dumps(record).encode())
    check = run_artfs("check")
    assert "note: locks/shared-dead.json: stale lock" in check.stdout
    assert "repaired: locks/shared-dead.json" in run_artfs("check", "--repair").stdout
    assert list(store.iter_objects("locks/")) == []
