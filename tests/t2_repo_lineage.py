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


def test_cli_run_records_use_and_log_and_gc_sweeps(run_artfs, tmp_path: Path) -> None:
    import json
    import sys

    raw = make_tree(tmp_path / "raw", {"a.csv": "1,2,3"})
    run_artfs("put", str(raw), "-n", "proj/raw")
    script = tmp_path / "train.py"
    script.write_text(
        "import artfs, sys\n"
        "api = artfs.Api()\n"
        f"api.artifact('proj/raw:latest').download({str(tmp_path / 'got')!r})\n"
        f"api.put([{str(raw / 'a.csv')!r}], 'proj/model', type='model')\n"
        "sys.exit(3)\n"
    )
    proc = run_artfs("run", "--", sys.executable, str(script), check=False)
    assert proc.returncode == 3, proc.stderr  # the command's own exit status

    up = json.loads(run_artfs("lineage", "proj/model", "--json").stdout)
    assert up["logged_by"]["exit_code"] == 3
    assert up["logged_by"]["used"] == ["proj/raw:v0"]
    down = json.loads(run_artfs("lineage", "proj/raw", "--json").stdout)
    assert [r["logged"] for r in down["used_by"]] == [["proj/model:v0"]]
    run_id = up["logged_by"]["id"]
    by_run = json.loads(run_artfs("lineage", "--run", run_id, "--json").stdout)
    assert by_run["used"] == ["proj/raw:v0"] and by_run["logged"] == ["proj/model:v0"]

    # Delete a version whose blob nothing else uses: gc keeps it while young,
    # then sweeps it; the model (same bytes) keeps its blob.
    (raw / "b.csv").write_text("only in v1")
    run_artfs("put", str(raw), "-n", "proj/raw")
    run_artfs("delete", "proj/raw:v1", "--delete-aliases")
    assert "swept 0 blobs" in run_artfs("gc").stdout
    swept = run_artfs("gc", "--grace", "0", "--force").stdout
    assert "swept 2 blobs" in swept  # b.csv + v1's manifest
    assert run_artfs("get", "proj/model", "--root", str(tmp_path / "m")).returncode == 0
    assert (tmp_path / "m" / "a.csv").read_text() == "1,2,3"
    bad = run_artfs("gc", "--grace", "soon", check=False)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1
