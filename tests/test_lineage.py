"""The lineage graph is walked from both sides, as in the W&B FAQ."""

from __future__ import annotations

from pathlib import Path

from artfs.repo import runs
from tests.trees import make_tree


def test_walk_from_artifact_and_from_run(api, tmp_path: Path) -> None:
    repo = api.repo
    raw = api.put([make_tree(tmp_path / "raw", {"a.csv": "1,2"})], "proj/raw").version

    prep = runs.start_run(repo, ["python", "prep.py"])
    runs.record_use(repo, prep.id, raw)
    clean_src = make_tree(tmp_path / "clean", {"a.csv": "1"})
    clean = api.put([clean_src], "proj/clean", logged_by=prep.id).version
    runs.finish_run(repo, prep, 0)

    train = runs.start_run(repo, ["python", "train.py"])
    runs.record_use(repo, train.id, clean)
    model = api.put(
        [make_tree(tmp_path / "m", {"w.bin": b"\1\2"})],
        "proj/model",
        type="model",
        logged_by=train.id,
    ).version
    runs.finish_run(repo, train, 0)

    # Up from the model: who logged it, and what that run used.
    producer = runs.logged_by(repo, model)
    assert producer is not None and producer.id == train.id
    assert producer.command == ["python", "train.py"] and producer.exit_code == 0
    assert [v.ref for v in runs.used_artifacts(repo, producer.id)] == [clean.ref]
    earlier = runs.logged_by(repo, runs.used_artifacts(repo, producer.id)[0])
    assert earlier is not None and earlier.id == prep.id

    # Down from the raw data: who used it, and what they logged.
    consumers = runs.used_by(repo, raw)
    assert [r.id for r in consumers] == [prep.id]
    assert [v.ref for v in runs.logged_artifacts(repo, prep.id)] == [clean.ref]
    assert runs.used_by(repo, model) == []
