"""Shared drafts: many writers (processes, machines) build one version.

Writers are real CLI processes, each with its own cache (a machine of its
own), on a local store and on SeaweedFS. Races are held open with pause
points (``ARTFS_TEST_PAUSE_<NAME>=<file>``), so each test fails every time
on code without the protocol of ``artfs.repo.drafts``.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from artfs.api import Api, Artifact
from artfs.objects import open_store
from artfs.repo import layout
from artfs.repo.drafts import DraftClosed, DraftConflict, PartEntry, PartWriter, get_draft
from tests.trees import make_tree, read_tree


def _machine(env: dict[str, str], tmp_path: Path, name: str, **extra: str) -> dict[str, str]:
    """The environment of a process on another machine: same store, own cache."""
    return dict(env, ARTFS_CACHE=str(tmp_path / f"cache-{name}"), **extra)


def _popen(*args: str, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "artfs.cli", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for(path: Path, proc: subprocess.Popen[str], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, f"writer exited {proc.returncode}: {proc.stderr.read()}"  # type: ignore[union-attr]
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.02)


def _shard(tmp_path: Path, i: int, n: int = 4) -> tuple[Path, dict[str, bytes]]:
    files = {f"shard{i}/f{j}.bin": random.Random(i * 100 + j).randbytes(3000 + j) for j in range(n)}
    return make_tree(tmp_path / f"src{i}", files), files


def _files(root: Path) -> dict[str, bytes]:
    """path -> bytes of every file under ``root`` (a draft holds files only)."""
    return {p: t[1] for p, t in read_tree(root).items() if t[0] == "f"}


def _versions(env: dict[str, str], run_artfs) -> list[dict]:
    out = run_artfs("versions", "proj/ds", "--json", env=env, check=False)
    return json.loads(out.stdout) if out.returncode == 0 else []


def test_five_writers_at_once_make_one_version_with_every_file(
    artfs_env: dict[str, str], store_url: str, run_artfs, tmp_path: Path
) -> None:
    """Five processes, each its own machine, upload disjoint shards at once: all
    five hold their part unwritten until every one has uploaded, then write
    together. A finish from a sixth machine makes one version with every file."""
    expected: dict[str, bytes] = {}
    procs, releases = [], []
    try:
        for i in range(5):
            src, files = _shard(tmp_path, i)
            expected.update(files)
            pause = tmp_path / f"pause{i}"
            releases.append(pause)
            env = _machine(
                artfs_env, tmp_path, f"w{i}", ARTFS_TEST_PAUSE_DRAFT_BEFORE_PART=str(pause)
            )
            procs.append(_popen("put", str(src), "-n", "proj/ds", "--draft", "g1", env=env))
        for proc, pause in zip(procs, releases, strict=True):
            _wait_for(Path(f"{pause}.reached"), proc)
        for pause in releases:  # every writer is between its upload and its part: go
            pause.touch()
        for proc in procs:
            assert proc.wait(120) == 0, proc.stderr.read()  # type: ignore[union-attr]
    finally:
        for pause in releases:
            pause.touch()
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
    listed = json.loads(run_artfs("draft", "ls", "proj/ds", "--json").stdout)
    assert [(d["group"], d["state"], d["parts"], d["files"]) for d in listed] == [
        ("g1", "open", 5, 20)
    ]
    assert _versions(artfs_env, run_artfs) == []  # nothing is a version before the finish
    finisher = _machine(artfs_env, tmp_path, "finisher")  # wrote nothing, cached nothing
    out = run_artfs("draft", "finish", "proj/ds", "g1", "-a", "best", env=finisher)
    assert out.stdout.strip() == "proj/ds:v0"
    reader = Api(store=store_url, cache=str(tmp_path / "cache-reader"))
    version = reader.artifact("proj/ds:best")
    assert version.file_count == 20
    assert _files(version.download(tmp_path / "out")) == expected
    assert len(_versions(artfs_env, run_artfs)) == 1
    listed = json.loads(run_artfs("draft", "ls", "proj/ds", "--json").stdout)
    assert [(d["state"], d["version"]) for d in listed] == [("closed", 0)]


def test_a_conflicting_path_fails_the_finish_naming_it_and_keeps_the_draft(
    artfs_env: dict[str, str], store_url: str, run_artfs, tmp_path: Path
) -> None:
    a = make_tree(tmp_path / "a", {"same.txt": "same", "clash/x.txt": "from a", "a.txt": "a"})
    b = make_tree(tmp_path / "b", {"same.txt": "same", "clash/x.txt": "from b", "b.txt": "b"})
    run_artfs(
        "put", str(a), "-n", "proj/ds", "--draft", "g", env=_machine(artfs_env, tmp_path, "a")
    )
    run_artfs(
        "put", str(b), "-n", "proj/ds", "--draft", "g", env=_machine(artfs_env, tmp_path, "b")
    )
    store = open_store(store_url)
    before = sorted(
        (o.key, o.etag) for o in store.iter_objects(layout.draft_prefix("proj", "ds", "g"))
    )
    out = run_artfs("draft", "finish", "proj/ds", "g", check=False)
    assert out.returncode == 2
    assert out.stderr.startswith("artfs: error: ") and out.stderr.count("\n") == 1
    assert "clash/x.txt" in out.stderr and "same.txt" not in out.stderr
    assert _versions(artfs_env, run_artfs) == []
    after = sorted(
        (o.key, o.etag) for o in store.iter_objects(layout.draft_prefix("proj", "ds", "g"))
    )
    assert after == before  # the draft is as it was: no marker left, parts unchanged
    # Still open: a writer may still write, and a second finish fails the same way.
    c = make_tree(tmp_path / "c", {"c.txt": "c"})
    run_artfs("put", str(c), "-n", "proj/ds", "--draft", "g")
    with pytest.raises(DraftConflict) as e:
        Api(store=store_url, cache=str(tmp_path / "c2")).finish_artifact("proj/ds", group="g")
    assert e.value.paths == ["clash/x.txt"]
    run_artfs("draft", "abort", "proj/ds", "g")
    assert json.loads(run_artfs("draft", "ls", "proj/ds", "--json").stdout) == []


def test_a_writer_killed_mid_upload_leaves_nothing_in_the_version(
    artfs_env: dict[str, str], store_url: str, run_artfs, tmp_path: Path
) -> None:
    """Killed after its blobs went up but before its part: none of its files
    appear, not even in part; the others' files all do."""
    src0, files0 = _shard(tmp_path, 0)
    src1, _ = _shard(tmp_path, 1)
    run_artfs("put", str(src0), "-n", "proj/ds", "--draft", "g")
    pause = tmp_path / "pause"
    env = _machine(artfs_env, tmp_path, "victim", ARTFS_TEST_PAUSE_DRAFT_BEFORE_PART=str(pause))
    victim = _popen("put", str(src1), "-n", "proj/ds", "--draft", "g", env=env)
    try:
        _wait_for(Path(f"{pause}.reached"), victim)
        victim.send_signal(signal.SIGKILL)
        victim.wait(30)
    finally:
        pause.touch()
        with contextlib.suppress(ProcessLookupError):
            victim.kill()
    run_artfs("draft", "finish", "proj/ds", "g")
    api = Api(store=store_url, cache=str(tmp_path / "reader"))
    assert _files(api.artifact("proj/ds:v0").download(tmp_path / "out")) == files0


def test_a_write_that_races_the_finish_fails_and_a_late_write_fails(
    artfs_env: dict[str, str], store_url: str, run_artfs, tmp_path: Path
) -> None:
    """A writer that checked the draft was open, then wrote its part after the
    finish merged, is told so (exit 2), never silently lost; a write after the
    finish is refused."""
    src0, files0 = _shard(tmp_path, 0)
    src1, _ = _shard(tmp_path, 1)
    run_artfs("put", str(src0), "-n", "proj/ds", "--draft", "g")
    pause = tmp_path / "pause"
    env = _machine(artfs_env, tmp_path, "late", ARTFS_TEST_PAUSE_DRAFT_BEFORE_PART=str(pause))
    late = _popen("put", str(src1), "-n", "proj/ds", "--draft", "g", env=env)
    try:
        _wait_for(Path(f"{pause}.reached"), late)
        run_artfs("draft", "finish", "proj/ds", "g")
        pause.touch()
        assert late.wait(60) == 2
        err = late.stderr.read()  # type: ignore[union-attr]
        assert "without this late write" in err and "v0" in err, err
    finally:
        pause.touch()
        with contextlib.suppress(ProcessLookupError):
            late.kill()
    api = Api(store=store_url, cache=str(tmp_path / "reader"))
    assert _files(api.artifact("proj/ds:v0").download(tmp_path / "out")) == files0
    out = run_artfs("put", str(src1), "-n", "proj/ds", "--draft", "g", check=False)
    assert out.returncode == 2 and "closed" in out.stderr
    # A writer holding the draft open from before the finish is refused too.
    writer = PartWriter(api.repo, "proj", "ds", "g")
    blob = tmp_path / "blob"
    blob.write_bytes(b"late")
    from artfs.digest import digest_file

    digest, size = digest_file(blob)
    with pytest.raises(DraftClosed):
        writer.add({"late.txt": PartEntry(size, digest)}, {digest: blob})
    assert api.artifact("proj/ds:latest").file_count == len(files0)


def test_gc_keeps_the_blobs_of_an_open_draft_even_mid_write(
    artfs_env: dict[str, str], store_url: str, run_artfs, tmp_path: Path
) -> None:
    """gc with no grace runs while one writer has uploaded but not yet written
    its part: gc waits for it, and keeps every blob of every part."""
    src0, files0 = _shard(tmp_path, 0)
    src1, files1 = _shard(tmp_path, 1)
    run_artfs("put", str(src0), "-n", "proj/ds", "--draft", "g")
    pause = tmp_path / "pause"
    env = _machine(artfs_env, tmp_path, "w", ARTFS_TEST_PAUSE_DRAFT_BEFORE_PART=str(pause))
    writer = _popen("put", str(src1), "-n", "proj/ds", "--draft", "g", env=env)
    waiting = tmp_path / "gc-waits"
    gc_env = dict(artfs_env, ARTFS_TEST_MARK_LOCK_WAIT_EXCLUSIVE=str(waiting))
    gc = None
    try:
        _wait_for(Path(f"{pause}.reached"), writer)
        gc = _popen("gc", "--grace", "0", "--force", env=gc_env)
        _wait_for(waiting, gc)  # gc waits for the writer's lock
        pause.touch()
        assert writer.wait(60) == 0, writer.stderr.read()  # type: ignore[union-attr]
        assert gc.wait(60) == 0, gc.stderr.read()  # type: ignore[union-attr]
    finally:
        pause.touch()
        for p in (writer, gc):
            if p is not None:
                with contextlib.suppress(ProcessLookupError):
                    p.kill()
    assert "of open drafts kept" in gc.stdout.read()  # type: ignore[union-attr]
    run_artfs("gc", "--grace", "0", "--force")
    run_artfs("draft", "finish", "proj/ds", "g")
    api = Api(store=store_url, cache=str(tmp_path / "reader"))
    assert _files(api.artifact("proj/ds:v0").download(tmp_path / "out")) == {
        **files0,
        **files1,
    }


def test_gc_reports_and_removes_abandoned_drafts(
    artfs_env: dict[str, str], store_url: str, run_artfs, tmp_path: Path
) -> None:
    """A draft whose writers last wrote two hours ago (their records say so)
    goes at ``--draft-age 1h``; one written now stays, blobs and all."""
    src0, _ = _shard(tmp_path, 0)
    run_artfs("put", str(src0), "-n", "proj/ds", "--draft", "old")
    store = open_store(store_url)
    for obj in list(store.iter_objects(layout.draft_prefix("proj", "ds", "old"))):
        rec = json.loads(store.get(obj.key))
        for k in ("created", "updated"):
            if k in rec:
                rec[k] -= 7200
        store.put(obj.key, json.dumps(rec).encode())
    src1, _ = _shard(tmp_path, 1)
    run_artfs("put", str(src1), "-n", "proj/ds", "--draft", "young")
    dry = run_artfs("gc", "--dry-run", "--draft-age", "1h", "--grace", "0", "--force")
    assert "would remove draft proj/ds:old (abandoned)" in dry.stdout
    assert "young" not in dry.stdout
    groups = [d["group"] for d in json.loads(run_artfs("draft", "ls", "proj/ds", "--json").stdout)]
    assert groups == ["old", "young"]  # a dry run removes nothing
    gc = run_artfs("gc", "--draft-age", "1h", "--grace", "0", "--force")
    assert "removed draft proj/ds:old (abandoned)" in gc.stdout
    groups = [d["group"] for d in json.loads(run_artfs("draft", "ls", "proj/ds", "--json").stdout)]
    assert groups == ["young"]
    assert not list(store.iter_objects(layout.draft_prefix("proj", "ds", "old")))
    # The abandoned draft's blobs went with it; the young draft's stayed.
    run_artfs("draft", "finish", "proj/ds", "young")
    assert run_artfs("check").returncode == 0


def test_api_upsert_and_finish_as_wandb(store_url: str, tmp_path: Path) -> None:
    """``upsert_artifact(group=...)`` from several runs, ``finish_artifact`` with
    aliases; the draft's description and metadata go into the version."""
    api = Api(store=store_url, cache=str(tmp_path / "cache"))
    expected = {}
    for i in range(3):
        art = Artifact("proj/tables", type="dataset", description="parts", metadata={"n": 3})
        src = make_tree(tmp_path / f"t{i}", {f"table{i}.json": f'{{"i": {i}}}'})
        art.add_dir(src, name="tables")
        expected[f"tables/table{i}.json"] = f'{{"i": {i}}}'.encode()
        d = api.upsert_artifact(art, group="run-group-1")
        assert d.parts == i + 1
    other = Api(store=store_url, cache=str(tmp_path / "other-cache"))
    v = other.finish_artifact("proj/tables", group="run-group-1", aliases=["prod"])
    assert (v.version, v.description, v.metadata, v.type) == ("v0", "parts", {"n": 3}, "dataset")
    assert _files(api.artifact("proj/tables:prod").download(tmp_path / "out")) == expected
    assert get_draft(api.repo, "proj", "tables", "run-group-1").state == "closed"
    art = Artifact("proj/tables")
    art.add_file(make_tree(tmp_path / "t9", {"x": "x"}) / "x")
    with pytest.raises(DraftClosed):
        api.upsert_artifact(art, group="run-group-1")


def test_a_corrupt_part_fails_the_finish_in_one_line(
    artfs_env: dict[str, str], store_url: str, run_artfs, tmp_path: Path
) -> None:
    src0, _ = _shard(tmp_path, 0)
    run_artfs("put", str(src0), "-n", "proj/ds", "--draft", "g")
    store = open_store(store_url)
    bad = {"format": 1, "files": {"../escape": {"size": 1, "digest": "xxh128:" + "0" * 32}}}
    store.put(layout.draft_part_key("proj", "ds", "g", "evil"), json.dumps(bad).encode())
    out = run_artfs("draft", "finish", "proj/ds", "g", check=False)
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "../escape" in out.stderr
    assert _versions(artfs_env, run_artfs) == []
    assert get_draft(Api(store=store_url, cache=str(tmp_path / "c")).repo, "proj", "ds", "g")
    store.delete(layout.draft_part_key("proj", "ds", "g", "evil"))
    run_artfs("draft", "abort", "proj/ds", "g")


def test_bad_group_names_are_one_line_errors(run_artfs, tmp_path: Path) -> None:
    src = make_tree(tmp_path / "s", {"a": "a"})
    for group in ("../x", ".hidden", "a/b"):
        out = run_artfs("put", str(src), "-n", "proj/ds", "--draft", group, check=False)
        assert out.returncode == 2 and out.stderr.startswith("artfs: error: bad draft group")
    out = run_artfs("draft", "finish", "proj/ds", "nothere", check=False)
    assert out.returncode == 2 and "no draft nothere" in out.stderr
    assert os.path.exists(src)


def test_a_writer_adding_one_file_at_a_time_rewrites_bounded_segments(
    store_url: str, tmp_path: Path
) -> None:
    """A daemon records one file per close: its part grows in segments, so no
    object is rewritten with its whole history; a rewritten path stays in
    its segment (no conflict with itself), and the finish merges them all."""
    from artfs.digest import digest_file
    from artfs.repo.drafts import open_draft, read_parts

    api = Api(store=store_url, cache=str(tmp_path / "cache"))
    open_draft(api.repo, "proj", "ds", "g")
    writer = PartWriter(api.repo, "proj", "ds", "g", writer="w1")
    writer.SEGMENT_FILES = 4
    expected = {}
    for i in range(10):
        f = tmp_path / f"f{i}"
        f.write_bytes(b"%d" % i)
        digest, size = digest_file(f)
        writer.add({f"f{i}": PartEntry(size, digest)}, {digest: f})
        expected[f"f{i}"] = b"%d" % i
    f = tmp_path / "again"
    f.write_bytes(b"rewritten")
    digest, size = digest_file(f)
    writer.add({"f1": PartEntry(size, digest)}, {digest: f})  # f1 lives in segment 0
    expected["f1"] = b"rewritten"
    parts = read_parts(api.repo, "proj", "ds", "g")
    assert sorted(parts) == ["w1", "w1.1", "w1.2"]
    assert max(len(entries) for _e, entries in parts.values()) == 4
    # A new writer object for the same id (a restarted daemon) carries on.
    again = PartWriter(api.repo, "proj", "ds", "g", writer="w1")
    assert set(again.entries()) == set(expected)
    v = api.finish_artifact("proj/ds", group="g")
    assert _files(v.download(tmp_path / "out")) == expected


def test_the_seeds_parallel_writers_with_runs_in_a_group(
    store_url: str, artfs_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The W&B FAQ's last section: writers in ``init(group=...)`` each
    ``run.upsert_artifact``, then one run ``finish_artifact``s; the version is
    logged by the finishing run, and the draft refuses later upserts."""
    import artfs

    monkeypatch.setenv("ARTFS_CONFIG", artfs_env["ARTFS_CONFIG"])
    monkeypatch.setenv("ARTFS_CACHE", str(tmp_path / "cache"))
    group = "writer-group-1"
    for i in range(5):
        with artfs.init(project="proj", group=group, store=store_url) as run:
            art = artfs.Artifact("parallel-artifact", type="dataset")
            src = tmp_path / f"table_{i}.json"
            src.write_text(json.dumps({"a": i, "b": i * 2, "c": 2**i}))
            art.add_file(src, name=f"parts/table_{i}.json")
            run.upsert_artifact(art)
    with artfs.init(project="proj", group=group, store=store_url) as run:
        art = artfs.Artifact("parallel-artifact", type="dataset")
        v = run.finish_artifact(art)
        finisher = run.id
    assert v.file_count == 5 and v.logged_by().id == finisher
    with artfs.init(project="proj", group=group, store=store_url) as run:
        late = artfs.Artifact("parallel-artifact", type="dataset")
        late.add_file(tmp_path / "table_0.json", name="parts/late.json")
        with pytest.raises(DraftClosed):
            run.upsert_artifact(late)


def test_closes_queued_behind_a_part_write_share_the_next_one(
    store_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A daemon's concurrent closes are a group commit: while one add holds
    the part (held at its pause point), the adds that queue behind it go into
    the store in one write together, and each returns only once its file is
    in. (One write per add serialised every close of a mount on one PUT.)"""
    import threading

    from artfs.digest import digest_file
    from artfs.repo.drafts import open_draft, read_parts

    class CountingWriter(PartWriter):
        writes = 0

        def _write(self, name, entries):  # type: ignore[no-untyped-def]
            CountingWriter.writes += 1
            return super()._write(name, entries)

    api = Api(store=store_url, cache=str(tmp_path / "cache"))
    open_draft(api.repo, "proj", "ds", "g")
    writer = CountingWriter(api.repo, "proj", "ds", "g", writer="w1")
    pause = tmp_path / "pause"
    monkeypatch.setenv("ARTFS_TEST_PAUSE_DRAFT_BEFORE_PART", str(pause))
    errors: list[BaseException] = []

    def add(i: int) -> None:
        f = tmp_path / f"f{i}"
        f.write_bytes(b"file %d" % i)
        digest, size = digest_file(f)
        try:
            writer.add({f"f{i}": PartEntry(size, digest)}, {digest: f})
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=add, args=(i,), daemon=True) for i in range(3)]
    try:
        threads[0].start()
        deadline = time.monotonic() + 60
        while not Path(f"{pause}.reached").exists():
            assert time.monotonic() < deadline
            time.sleep(0.02)
        for t in threads[1:]:
            t.start()
        while len(writer._queue) < 2:  # both queued behind the held write
            assert time.monotonic() < deadline and all(t.is_alive() for t in threads)
            time.sleep(0.02)
    finally:
        pause.touch()  # never leave a writer held
        for t in threads:
            if t.is_alive() or t.ident is not None:
                t.join(60)
    assert not errors
    assert CountingWriter.writes == 2  # f0 alone, then f1 and f2 in one write
    (part,) = read_parts(api.repo, "proj", "ds", "g").values()
    assert sorted(part[1]) == ["f0", "f1", "f2"]
