"""gc sweeps exactly the blobs no live version needs, and never young ones."""

from __future__ import annotations

from pathlib import Path

from artfs.repo.gc import collect_garbage
from tests.trees import make_tree, read_tree


def _blob_digests(api) -> set[str]:
    return {o.key.rpartition("/")[2] for o in api.repo.store.iter_objects("blobs/")}


def test_gc_sweeps_only_what_deleted_versions_alone_used(api, tmp_path: Path) -> None:
    files = {f"f{i}.txt": f"content {i}" for i in range(5)}
    src = make_tree(tmp_path / "src", files)
    v0 = api.put([src], "proj/ds").version
    (src / "f0.txt").write_text("changed 0")
    (src / "f1.txt").write_text("changed 1")
    v1 = api.put([src], "proj/ds").version
    api.repo.store.put("blobs/zz/not-a-digest", b"someone else's")
    before = _blob_digests(api)
    v0_only = {d for _, _, d in api.artifact("proj/ds:v0").files()} - {
        d for _, _, d in api.artifact("proj/ds:v1").files()
    }
    assert len(v0_only) == 2

    # Nothing is swept while every version lives, even with no grace.
    assert collect_garbage(api.repo, grace=0, force=True).swept_blobs == 0

    api.repo.delete_version(v0)
    # The blobs of a just-deleted version are kept by the default grace period.
    kept = collect_garbage(api.repo)
    assert kept.swept_blobs == 0 and kept.deleted_kept == 3
    assert _blob_digests(api) == before

    dry = collect_garbage(api.repo, grace=0, dry_run=True, force=True)
    assert dry.swept_blobs == 3 and _blob_digests(api) == before

    result = collect_garbage(api.repo, grace=0, force=True)
    assert result.swept_blobs == 3  # two file blobs and v0's manifest
    assert _blob_digests(api) == before - v0_only - {v0.manifest_digest}
    assert v1.manifest_digest in _blob_digests(api)

    out = api.artifact("proj/ds:latest").download(tmp_path / "out")
    assert read_tree(out) == read_tree(src)
