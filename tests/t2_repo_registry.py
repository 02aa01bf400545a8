"""The registry's rules through the Python API: dedup, numbering under
concurrency, latest and other aliases, edits after commit, deletion."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from artfs.api import Api
from artfs.names import BadName
from artfs.repo import ConflictError, NotFoundError, RepoError
from tests.trees import blob_keys, make_tree, read_tree, store_snapshot


def _tree(tmp_path: Path, name: str, n: int = 1, salt: str = "") -> Path:
    return make_tree(tmp_path / name, {f"f{i}.txt": f"{name} {salt} {i}" for i in range(n)})


def test_faq_dedup_two_changed_files_add_two_blobs(api: Api, tmp_path: Path) -> None:
    """W&B's FAQ: v0 has 5 files, v1 changes 2 of them; the store grows by
    exactly those 2 blobs, v1's manifest and v1's record."""
    files = {f"images/{i}.png": f"image {i}" * 100 for i in range(5)}
    src = make_tree(tmp_path / "src", files)
    assert api.put([src], "proj/ds").version.number == 0
    store = api.repo.store
    before = store_snapshot(store)
    blobs_before = blob_keys(store)
    assert len(blobs_before) == 5 + 1  # files and v0's manifest

    (src / "images/0.png").write_text("retouched 0")
    (src / "images/3.png").write_text("retouched 3")
    result = api.put([src], "proj/ds")
    assert result.created and result.version.number == 1
    assert (result.new_blobs, result.reused_blobs) == (2, 3)

    after = store_snapshot(store)
    added = set(after) - set(before)
    new_blobs = {k for k in added if k.startswith("blobs/")}
    assert len(new_blobs) == 3
    manifest_key = (
        f"blobs/{result.version.manifest_digest.split(':')[1][:2]}/{result.version.manifest_digest}"
    )
    assert manifest_key in new_blobs
    assert added - new_blobs == {"projects/proj/ds/versions/1.json"}
    # Nothing already stored was rewritten; only latest moved.
    changed = {k for k in before if after.get(k) != before[k]}
    assert changed == {"projects/proj/ds/aliases/latest.json"}


def test_identical_tree_makes_no_version(api: Api, tmp_path: Path) -> None:
    src = _tree(tmp_path, "src", 3)
    api.put([src], "proj/ds")
    before = store_snapshot(api.repo.store)
    again = api.put([src], "proj/ds")
    assert not again.created and again.version.number == 0
    assert store_snapshot(api.repo.store) == before
    (src / "f1.txt").chmod(0o755)  # an exec bit is part of the tree
    assert api.put([src], "proj/ds").version.number == 1


def test_four_processes_put_at_once(api: Api, artfs_env: dict[str, str], tmp_path: Path) -> None:
    trees = [_tree(tmp_path, f"src{i}", 20, salt="x" * i) for i in range(4)]
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "artfs.cli", "put", str(t), "-n", "proj/ds"],
            env=artfs_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for t in trees
    ]
    refs = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        refs.append(out.strip())
    assert sorted(refs) == [f"proj/ds:v{i}" for i in range(4)]
    versions = api.repo.versions("proj", "ds")
    assert [v.number for v in versions] == [0, 1, 2, 3]
    assert api.artifact("proj/ds:latest").record.number == 3
    # Each version is complete and is exactly one of the four trees.
    contents = {str(read_tree(t)) for t in trees}
    got = {
        str(read_tree(api.artifact(f"proj/ds:v{i}").download(tmp_path / f"out{i}")))
        for i in range(4)
    }
    assert got == contents


def test_latest_never_moves_back(api: Api, tmp_path: Path) -> None:
    for i in range(6):
        api.put([_tree(tmp_path, f"s{i}")], "proj/ds")
    repo = api.repo
    assert repo.alias_target("proj", "ds", "latest") == 5
    # A slow committer of v4 arrives after v5 moved latest.
    repo.advance_latest("proj", "ds", 4)
    assert repo.alias_target("proj", "ds", "latest") == 5
    repo.advance_latest("proj", "ds", 2)
    assert repo.alias_target("proj", "ds", "latest") == 5
    # If latest names a version that is gone, a commit may move it.
    repo.delete_version(repo.version("proj", "ds", 5), delete_aliases=True)
    assert repo.alias_target("proj", "ds", "latest") == 4
    api.put([_tree(tmp_path, "s6")], "proj/ds")
    assert repo.alias_target("proj", "ds", "latest") == 6


def test_alias_set_move_remove_and_rules(api: Api, tmp_path: Path) -> None:
    for i in range(3):
        api.put([_tree(tmp_path, f"s{i}")], "proj/ds", aliases=["first"] if i == 0 else [])
    repo = api.repo
    assert repo.aliases("proj", "ds") == {"first": 0, "latest": 2}
    v1 = repo.version("proj", "ds", 1)
    repo.set_alias(v1, "best")
    assert api.artifact("proj/ds:best").record.number == 1
    repo.set_alias(repo.version("proj", "ds", 0), "best")  # move: one version per alias
    assert repo.aliases("proj", "ds") == {"best": 0, "first": 0, "latest": 2}
    assert api.artifact("proj/ds:v0").record.aliases == ["best", "first"]
    repo.remove_alias("proj", "ds", "best")
    assert "best" not in repo.aliases("proj", "ds")
    with pytest.raises(NotFoundError):
        api.artifact("proj/ds:best")
    before = store_snapshot(repo.store)
    for bad in ("latest", "v3", "v0", "staging", "drafts", ".hidden", "a/b", ""):
        with pytest.raises(BadName):
            repo.set_alias(v1, bad)
    with pytest.raises(BadName):
        repo.remove_alias("proj", "ds", "latest")
    with pytest.raises(NotFoundError):
        repo.remove_alias("proj", "ds", "nope")
    with pytest.raises(BadName):
        api.put([_tree(tmp_path, "s9")], "proj/ds", aliases=["v7"])
    assert store_snapshot(repo.store) == before


def test_description_and_metadata_edits(api: Api, tmp_path: Path) -> None:
    api.put(
        [_tree(tmp_path, "s")], "proj/ds", description="raw", metadata={"rows": 1, "src": "web"}
    )
    art = api.artifact("proj/ds:latest")
    assert (art.description, art.metadata) == ("raw", {"rows": 1, "src": "web"})
    art.description = "cleaned"
    art.metadata["rows"] = 60000
    art.metadata["split"] = {"train": 0.9}
    del art.metadata["src"]
    art.save()
    again = api.artifact("proj/ds:v0")
    assert again.description == "cleaned"
    assert again.metadata == {"rows": 60000, "split": {"train": 0.9}}

    # Two writers editing different keys both keep their change.
    one, two = api.artifact("proj/ds:v0"), api.artifact("proj/ds:v0")
    one.metadata["a"] = 1
    two.metadata["b"] = 2
    one.save()
    two.save()
    assert api.artifact("proj/ds:v0").metadata == {
        "rows": 60000,
        "split": {"train": 0.9},
        "a": 1,
        "b": 2,
    }
    # A writer that saved only metadata leaves another's description alone.
    three = api.artifact("proj/ds:v0")
    api.repo.update_version(three.record, description="by someone else")
    three.metadata["c"] = 3
    three.save()
    assert api.artifact("proj/ds:v0").description == "by someone else"

    # Aliases through save(), W&B style.
    art = api.artifact("proj/ds:v0")
    art.aliases.append("prod")
    art.save()
    assert api.artifact("proj/ds:prod").record.number == 0
    art.aliases.remove("prod")
    art.save()
    assert "prod" not in api.repo.aliases("proj", "ds")

    bad = api.artifact("proj/ds:v0")
    bad.metadata = ["not", "an", "object"]  # type: ignore[assignment]
    with pytest.raises(RepoError):
        bad.save()
    with pytest.raises(RepoError):
        api.repo.update_version(bad.record, metadata={"x": object()})


def test_delete_with_and_without_aliases(api: Api, tmp_path: Path) -> None:
    for i in range(4):
        api.put([_tree(tmp_path, f"s{i}")], "proj/ds")
    repo = api.repo
    repo.set_alias(repo.version("proj", "ds", 1), "best")

    # latest holds a version back like any alias (as in W&B); once asked,
    # it moves to the highest version left instead of vanishing.
    before = store_snapshot(repo.store)
    with pytest.raises(ConflictError, match="latest"):
        repo.delete_version(repo.version("proj", "ds", 3))
    assert store_snapshot(repo.store) == before
    assert repo.delete_version(repo.version("proj", "ds", 3), delete_aliases=True) == ["latest"]
    assert repo.alias_target("proj", "ds", "latest") == 2

    before = store_snapshot(repo.store)
    with pytest.raises(ConflictError, match="best"):
        repo.delete_version(repo.version("proj", "ds", 1))
    assert store_snapshot(repo.store) == before
    assert repo.delete_version(repo.version("proj", "ds", 1), delete_aliases=True) == ["best"]
    assert "best" not in repo.aliases("proj", "ds")
    with pytest.raises(NotFoundError):
        api.artifact("proj/ds:v1")
    assert [v.number for v in repo.versions("proj", "ds")] == [0, 2]

    # Numbers are never reused.
    assert api.put([_tree(tmp_path, "s9")], "proj/ds").version.number == 4
    for n in (4, 2, 0):
        repo.delete_version(repo.version("proj", "ds", n), delete_aliases=True)
    assert repo.alias_target("proj", "ds", "latest") is None
    with pytest.raises(NotFoundError, match="no versions"):
        api.artifact("proj/ds")


def test_unknown_refs_and_types(api: Api, tmp_path: Path) -> None:
    api.put([_tree(tmp_path, "s")], "proj/ds", type="model")
    with pytest.raises(NotFoundError):
        api.artifact("proj/nope")
    with pytest.raises(NotFoundError):
        api.artifact("nope/ds")
    with pytest.raises(NotFoundError):
        api.artifact("proj/ds:v9")
    with pytest.raises(RepoError, match="type 'model'"):
        api.put([_tree(tmp_path, "t")], "proj/ds", type="dataset")
    # Without a type, a put keeps the artifact's.
    assert api.put([_tree(tmp_path, "u")], "proj/ds").version.number == 1
    assert api.artifact("proj/ds").type == "model"
    assert api.put([_tree(tmp_path, "w")], "proj/new").version.number == 0
    assert api.artifact("proj/new").type == "dataset"
    with pytest.raises(BadName):
        api.put([_tree(tmp_path, "t")], "proj/ds:v1")


@pytest.mark.store_left_inconsistent  # a corrupt alias record, on purpose
def test_foreign_and_corrupt_records(api: Api, tmp_path: Path) -> None:
    """Names from a store pass the rules a user's do; a corrupt record is an error, not a crash."""
    api.put([_tree(tmp_path, "s")], "proj/ds")
    store = api.repo.store
    store.put("projects/proj/ds/aliases/v7.json", b'{"version": 0}')
    store.put("projects/proj/ds/aliases/.x.json", b'{"version": 0}')
    store.put("projects/proj/ds/aliases/notes.txt", b"hello")
    assert api.repo.aliases("proj", "ds") == {"latest": 0}
    store.put("projects/proj/ds/aliases/best.json", b"[1]")
    with pytest.raises(RepoError, match="corrupt record"):
        api.artifact("proj/ds:best")
    store.put("projects/proj/ds/aliases/best.json", b"{not json")
    with pytest.raises(RepoError, match="corrupt record"):
        api.repo.aliases("proj", "ds")


def test_save_without_changes_writes_nothing(api: Api, tmp_path: Path) -> None:
    api.put([_tree(tmp_path, "s")], "proj/ds", metadata={"a": 1})
    art = api.artifact("proj/ds")
    before = store_snapshot(api.repo.store)
    art.save()
    art.metadata["a"] = 1
    art.save()
    assert store_snapshot(api.repo.store) == before


def test_version_size_counts_every_file(api: Api, tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src", {"a": "x" * 1000, "b": "x" * 1000, "c": "y" * 10})
    result = api.put([src], "proj/ds")
    assert (result.version.size, result.version.file_count) == (2010, 3)
    assert (result.new_blobs, result.new_bytes) == (2, 1010)


def _paused_move(
    api: Api, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, point: str, meanwhile
) -> list[BaseException]:
    """Run ``move_alias(best -> prod)`` held at pause ``point`` while
    ``meanwhile()`` (another writer) runs; returns what the move raised."""
    pause = tmp_path / f"pause-{point}"
    monkeypatch.setenv(f"ARTFS_TEST_PAUSE_{point}", str(pause))
    raised: list[BaseException] = []

    def move() -> None:
        try:
            api.repo.move_alias("proj", "ds", "best", "prod")
        except BaseException as e:
            raised.append(e)

    mover = threading.Thread(target=move)
    mover.start()
    try:
        deadline = time.monotonic() + 30
        while not Path(f"{pause}.reached").exists():
            assert time.monotonic() < deadline and mover.is_alive(), raised
            time.sleep(0.01)
        meanwhile()
    finally:
        pause.touch()
        mover.join(30)
    return raised


@pytest.fixture
def two_versions(api: Api, tmp_path: Path) -> None:
    for i in range(2):
        api.put([_tree(tmp_path, f"v{i}")], "proj/ds")
    api.repo.set_alias(api.repo.version("proj", "ds", 0), "best")


@pytest.mark.usefixtures("two_versions")
def test_move_alias_never_overwrites_a_concurrent_change_of_the_new_name(
    api: Api, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    other = Api(store=api.repo.store.url, cache=str(tmp_path / "other-cache")).repo
    raised = _paused_move(
        api,
        tmp_path,
        monkeypatch,
        "ALIAS_MOVE_READ",
        lambda: other.set_alias(other.version("proj", "ds", 1), "prod"),
    )
    assert len(raised) == 1 and isinstance(raised[0], ConflictError)
    assert api.repo.aliases("proj", "ds") == {"latest": 1, "best": 0, "prod": 1}


@pytest.mark.usefixtures("two_versions")
def test_move_alias_keeps_the_old_name_if_another_writer_moved_it(
    api: Api, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    other = Api(store=api.repo.store.url, cache=str(tmp_path / "other-cache")).repo
    raised = _paused_move(
        api,
        tmp_path,
        monkeypatch,
        "ALIAS_MOVE_BOTH",
        lambda: other.set_alias(other.version("proj", "ds", 1), "best"),
    )
    assert not raised
    assert api.repo.aliases("proj", "ds") == {"latest": 1, "best": 1, "prod": 0}


@pytest.mark.usefixtures("two_versions")
def test_move_alias_replaces_an_existing_name_and_refuses_a_missing_one(api: Api) -> None:
    repo = api.repo
    repo.set_alias(repo.version("proj", "ds", 1), "prod")
    assert repo.move_alias("proj", "ds", "best", "prod").number == 0
    assert repo.aliases("proj", "ds") == {"latest": 1, "prod": 0}
    with pytest.raises(NotFoundError):
        repo.move_alias("proj", "ds", "best", "other")
    with pytest.raises(BadName):
        repo.move_alias("proj", "ds", "prod", "latest")
    assert repo.aliases("proj", "ds") == {"latest": 1, "prod": 0}
