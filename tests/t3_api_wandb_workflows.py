"""The seed documents' W&B snippets, translated only in the import line and
the ref strings, run against a real store (../shared/seeds/)."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import artfs
from artfs.repo import NotFoundError, RepoError
from artfs.repo.retention import PruneRules, delete_expired, prune


@pytest.fixture
def wandb_env(api, artfs_env, monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """The environment a user's script sees: this test's store, cache and cwd."""
    for key in ("ARTFS_STORE", "ARTFS_CACHE", "ARTFS_CONFIG"):
        monkeypatch.setenv(key, artfs_env[key])
    monkeypatch.delenv("ARTFS_RUN", raising=False)
    monkeypatch.chdir(tmp_path)
    return api


def run_script(body: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(body)],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    return proc


def test_log_and_use_artifact_as_in_the_first_seed(wandb_env, artfs_env, tmp_path: Path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data/train.csv").write_text("a,b\n1,2\n")
    proc = run_script(
        """
        import artfs as wandb

        # Initialize a W&B run
        wandb.init(project="my-ml-project")

        # Create an artifact for a dataset
        artifact = wandb.Artifact(name="training-data", type="dataset")

        # Add a local file to the artifact
        artifact.add_file("data/train.csv")

        # Log the artifact to W&B
        wandb.log_artifact(artifact)

        # Later, to use the artifact in another run
        run = wandb.init(project="my-ml-project")
        artifact = run.use_artifact("training-data:latest")
        artifact_dir = artifact.download()

        print(f"Dataset downloaded to: {artifact_dir}")
        """,
        artfs_env,
        tmp_path,
    )
    out = Path(proc.stdout.split("Dataset downloaded to: ")[1].strip())
    assert out == tmp_path / "artifacts" / "training-data:v0"
    assert (out / "train.csv").read_text() == "a,b\n1,2\n"
    art = wandb_env.artifact("my-ml-project/training-data:v0")
    assert (art.type, art.version, art.name) == ("dataset", "v0", "training-data:v0")
    producer = art.logged_by()
    consumers = art.used_by()
    assert producer is not None and len(consumers) == 1 and consumers[0].id != producer.id
    assert [a.qualified_name for a in producer.logged_artifacts()] == [art.qualified_name]
    assert [a.qualified_name for a in consumers[0].used_artifacts()] == [art.qualified_name]


def test_programmatic_update_as_in_the_faq(wandb_env, tmp_path: Path):
    api = wandb_env
    (tmp_path / "bikes").mkdir()
    (tmp_path / "bikes/1.jpg").write_bytes(b"bike")
    api.put([tmp_path / "bikes"], "car-vision-project/bike-dataset", metadata={"oldKey": "x"})
    api.repo.set_alias(api.artifact("car-vision-project/bike-dataset:v0").record, "old-alias")

    artifact = api.artifact("car-vision-project/bike-dataset:latest")
    artifact.description = "My new description"
    artifact.metadata["oldKey"] = "new value"
    artifact.metadata = {"newKey": "new value"}
    artifact.aliases.append("best")
    artifact.aliases.remove("best")
    artifact.aliases = ["replaced"]
    artifact.save()

    again = api.artifact("car-vision-project/bike-dataset:v0")
    assert again.description == "My new description"
    assert again.metadata == {"newKey": "new value"}
    # latest stays where commits put it; the hand-set aliases are replaced.
    assert sorted(again.aliases) == ["latest", "replaced"]


def test_walk_the_graph_from_an_artifact_and_from_a_run(wandb_env, artfs_env, tmp_path: Path):
    (tmp_path / "raw.csv").write_text("1,2,3")
    (tmp_path / "model.bin").write_bytes(b"weights")
    run_script(
        """
        import artfs as wandb
        with wandb.init(project="project") as run:
            a = wandb.Artifact("raw", type="dataset")
            a.add_file("raw.csv")
            run.log_artifact(a, aliases=["alias"])
        with wandb.init(project="project") as run:
            run.use_artifact("raw:alias")
            m = wandb.Artifact("model", type="model")
            m.add_file("model.bin")
            run.log_artifact(m)
        """,
        artfs_env,
        tmp_path,
    )
    api = artfs.Api(overrides={"project": "project"})
    # From an artifact (the FAQ's lines, refs translated):
    artifact = api.artifact("project/raw:alias")
    producer_run = artifact.logged_by()
    consumer_runs = artifact.used_by()
    next_artifacts = consumer_runs[0].logged_artifacts()
    previous_artifacts = producer_run.used_artifacts()
    assert [a.name for a in next_artifacts] == ["model:v0"]
    assert previous_artifacts == []
    # From a run:
    run = api.run(f"entity/project/{consumer_runs[0].id}")
    produced_artifacts = run.logged_artifacts()
    consumed_artifacts = run.used_artifacts()
    earlier_run = consumed_artifacts[0].logged_by()
    consumer_runs = produced_artifacts[0].used_by()
    assert earlier_run.id == producer_run.id and consumer_runs == []
    assert run.command[0] == "-c" and run.cwd == str(tmp_path) and run.exit_code == 0
    assert {r.id for r in api.runs(project="project")} == {producer_run.id, run.id}
    assert api.runs(project="elsewhere") == []


def test_clean_up_versions_without_aliases_as_in_the_faq(wandb_env, tmp_path: Path):
    api = wandb_env
    for i in range(4):
        (tmp_path / "ckpt.bin").write_bytes(b"epoch %d" % i)
        api.put([tmp_path / "ckpt.bin"], "capsule-gpt/ckpt", type="model")
    api.repo.set_alias(api.artifact("capsule-gpt/ckpt:v1").record, "best")

    api = artfs.Api(overrides={"project": "capsule-gpt", "entity": "geoff"})
    artifact_type, artifact_name = "model", "ckpt"
    for version in api.artifact_versions(artifact_type, artifact_name):
        if len(version.aliases) == 0:
            version.delete()
    assert [v.version for v in api.artifact_versions("ckpt")] == ["v1", "v3"]
    with pytest.raises(NotFoundError):
        api.artifact_versions("dataset", "ckpt")  # not of that type


def test_best_version_of_a_sweep_by_metadata(wandb_env, run_artfs, tmp_path: Path):
    api = wandb_env
    accs = [0.71, 0.93, 0.88, 0.93, 0.65]
    for i, acc in enumerate(accs):
        (tmp_path / "m.bin").write_bytes(b"run %d" % i)
        api.put([tmp_path / "m.bin"], "sweep/sweep_name", type="model", metadata={"val_acc": acc})
    api.put([tmp_path / "m.bin"], "sweep/sweep_name", metadata={"note": "no acc"})  # identical
    best = api.artifact_versions(
        "sweep/sweep_name", where=["metadata.val_acc>0.9"], sort="-metadata.val_acc"
    )
    assert [v.version for v in best] == ["v1", "v3"]
    out = run_artfs(
        "versions", "sweep/sweep_name", "--sort", "-metadata.val_acc", "--limit", "1", "--json"
    ).stdout
    import json

    top = json.loads(out)
    assert [v["version"] for v in top] == [1] and top[0]["metadata"]["val_acc"] == 0.93
    low = run_artfs("versions", "sweep/sweep_name", "--where", "metadata.val_acc<0.7").stdout
    assert [line.split("\t")[0] for line in low.splitlines()] == ["v4"]
    bad = run_artfs("versions", "sweep/sweep_name", "--where", "colour=red", check=False)
    assert bad.returncode == 2 and bad.stderr.startswith("artfs: error: bad field")


def test_ttl_expiry_with_a_clock_the_test_controls(wandb_env, tmp_path: Path):
    api = wandb_env
    for i in range(3):
        (tmp_path / "f").write_bytes(b"%d" % i)
        api.put([tmp_path / "f"], "p/tmp", ttl=3600)
    v0 = api.artifact("p/tmp:v0")
    assert v0.ttl is not None and v0.ttl.total_seconds() == 3600
    now = v0.record.created
    assert delete_expired(api.repo, now=now + 3599) == []
    gone = delete_expired(api.repo, now=now + 7200)
    # v2 holds latest: an aliased version never expires.
    assert [v.ref for v in gone] == ["p/tmp:v0", "p/tmp:v1"]
    assert [v.version for v in api.artifact_versions("p/tmp")] == ["v2"]
    v2 = api.artifact("p/tmp:v2")
    v2.ttl = None
    v2.save()
    assert api.artifact("p/tmp:v2").ttl is None


def test_prune_rules(wandb_env, tmp_path: Path):
    api = wandb_env
    for i in range(6):
        (tmp_path / "f").write_bytes(b"%d" % i)
        api.put([tmp_path / "f"], "p/ck")
    api.repo.set_alias(api.artifact("p/ck:v0").record, "prod")
    created = {v.record.number: v.record.created for v in api.artifact_versions("p/ck")}
    dry = prune(api.repo, "p", "ck", PruneRules(keep_last=2), dry_run=True)
    assert [v.number for v in dry] == [1, 2, 3]  # v0 has prod, v4 and v5 are the last two
    assert len(api.artifact_versions("p/ck")) == 6
    older = PruneRules(older_than=10.0)
    assert prune(api.repo, "p", "ck", older, dry_run=True, now=created[2] + 5) == []
    gone = prune(api.repo, "p", "ck", PruneRules(keep_last=2))
    assert [v.number for v in gone] == [1, 2, 3]
    assert [v.version for v in api.artifact_versions("p/ck")] == ["v0", "v4", "v5"]


@pytest.mark.parametrize("store_url", ["local"], indirect=True)  # CLI rules, not the store
def test_prune_and_ttl_from_the_cli(run_artfs, tmp_path: Path):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(3):
        (src / "f").write_text(str(i))
        run_artfs("put", str(src), "-n", "p/a", "--ttl", "30d")
    out = run_artfs("prune", "p/a", "--keep-last", "1", "--dry-run").stdout
    assert out.split() == ["would", "delete", "p/a:v0", "would", "delete", "p/a:v1"]
    run_artfs("prune", "p/a", "--keep-last", "1")
    assert [ln.split("\t")[0] for ln in run_artfs("ls", "p/a").stdout.splitlines()] == ["v2"]
    assert "expires" in run_artfs("show", "p/a").stdout
    run_artfs("ttl", "rm", "p/a:v2")
    assert "expires" not in run_artfs("show", "p/a").stdout
    run_artfs("tag", "add", "p/a:v2", "keep", "final")
    assert "#final #keep" in run_artfs("ls", "p/a").stdout
    tagged = run_artfs("versions", "p/a", "--where", "tags=keep").stdout
    assert tagged.startswith("v2\t")
    run_artfs("delete", "p/a", "--all")
    assert run_artfs("ls", "p").stdout == ""
    (src / "f").write_text("again")
    assert run_artfs("put", str(src), "-n", "p/a").stdout.strip() == "p/a:v3"  # never reused


def test_checkout_verify_and_entries(wandb_env, tmp_path: Path):
    api = wandb_env
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "empty").mkdir()
    (src / "a.txt").write_text("a")
    (src / "sub/b.txt").write_text("b")
    os.symlink("a.txt", src / "link")
    api.put([src], "p/tree")
    art = api.artifact("p/tree")
    kinds = {f.path: f.kind for f in art.files()}
    assert kinds == {"a.txt": "file", "empty": "dir", "link": "symlink", "sub/b.txt": "file"}
    root = tmp_path / "co"
    root.mkdir()
    (root / "extra.txt").write_text("not in the version")
    art.checkout(root)
    assert not (root / "extra.txt").exists() and (root / "sub/b.txt").read_text() == "b"
    art.verify(root)
    (root / "a.txt").unlink()
    (root / "a.txt").write_text("changed")
    (root / "new").write_text("x")
    (root / "sub/b.txt").unlink()
    with pytest.raises(RepoError) as err:
        art.verify(root)
    msg = str(err.value)
    assert "changed: a.txt" in msg and "extra: new" in msg and "missing: sub/b.txt" in msg
    one = art.get_entry("sub/b.txt").download(tmp_path / "one")
    assert sorted(p.relative_to(one).as_posix() for p in one.rglob("*")) == ["sub", "sub/b.txt"]
    with pytest.raises(NotFoundError):
        art.get_entry("nope")


def test_new_draft_stores_only_what_changed(wandb_env, tmp_path: Path):
    api = wandb_env
    src = tmp_path / "src"
    src.mkdir()
    for i in range(5):
        (src / f"{i}.bin").write_bytes(os.urandom(1000))
    api.put([src], "p/d")
    draft = api.artifact("p/d").new_draft()
    (tmp_path / "new.bin").write_bytes(b"new")
    draft.add_file(tmp_path / "new.bin", name="0.bin")
    draft.remove("4.bin")
    logged = api.log_artifact(draft)
    assert logged.version == "v1"
    changes = {(c.path, c.status) for c in api.artifact("p/d:v0").diff(logged)}
    assert changes == {("0.bin", "changed"), ("4.bin", "removed")}
    got = logged.download(tmp_path / "got")
    assert (got / "0.bin").read_bytes() == b"new" and not (got / "4.bin").exists()
    assert (got / "1.bin").read_bytes() == (src / "1.bin").read_bytes()


def test_api_shape(wandb_env, tmp_path: Path):
    api = artfs.Api(overrides={"project": "proj"})
    a = artfs.Artifact("imgs", type="dataset", description="d", metadata={"k": 1})
    (tmp_path / "x").write_text("x")
    a.add_file(tmp_path / "x")
    v = api.log_artifact(a, aliases=["best"], tags=["t1"])
    assert (v.name, v.version, v.qualified_name) == ("imgs:v0", "v0", "proj/imgs:v0")
    assert (v.size, v.file_count, v.tags, v.metadata) == (1, 1, ["t1"], {"k": 1})
    assert v.digest.startswith("xxh128:") and v.created_at.startswith("20")
    assert sorted(v.aliases) == ["best", "latest"]
    assert api.artifact_exists("imgs:best") and not api.artifact_exists("imgs:nope")
    assert api.artifact_types() == ["dataset"]
    assert [x.qualified_name for x in api.artifacts("proj", type="dataset")] == ["proj/imgs:v0"]
    assert api.artifacts("proj", type="model") == []
    with pytest.raises(Exception, match="name the project"):
        artfs.Api().artifact("imgs:latest")
    # Identical content under a run is still recorded as logged by that run.
    run = artfs.init(project="proj")
    b = artfs.Artifact("imgs")
    b.add_file(tmp_path / "x")
    assert run.log_artifact(b).version == "v0"
    run.finish()
    assert [x.version for x in api.run(run.id).logged_artifacts()] == ["v0"]


def test_stale_run_id_warns_once_and_records_nothing(run_artfs, artfs_env, tmp_path: Path):
    (tmp_path / "f").write_text("f")
    env = dict(artfs_env, ARTFS_RUN="20200101-000000-deadbeef")
    proc = run_artfs("put", str(tmp_path / "f"), "-n", "p/a", env=env)
    assert proc.stderr.count("warning") == 1 and "ignored" in proc.stderr
    lineage = run_artfs("lineage", "p/a").stdout
    assert lineage.strip() == "p/a:v0"
    missing = run_artfs("run", "--", "/nonexistent/cmd", check=False)
    assert missing.returncode == 127 and "Traceback" not in missing.stderr


def test_lineage_formats(run_artfs, tmp_path: Path):
    (tmp_path / "raw.csv").write_text("1")
    script = tmp_path / "step.py"
    script.write_text(
        "import sys, artfs\n"
        "api = artfs.Api()\n"
        "api.use_artifact('proj/raw')\n"
        f"api.put([{str(tmp_path / 'raw.csv')!r}], 'proj/model', type='model')\n"
    )
    run_artfs("put", str(tmp_path / "raw.csv"), "-n", "proj/raw")
    run_artfs("run", "--", sys.executable, str(script))
    dot = run_artfs("lineage", "proj/model", "--format", "dot").stdout
    lines = dot.splitlines()
    assert lines[0] == "digraph lineage {" and lines[-1] == "}"
    edges = [ln.strip().rstrip(";") for ln in lines if "->" in ln]
    assert len(edges) == 2
    assert edges[0].startswith('"proj/raw:v0" -> "run:') or edges[1].startswith('"proj/raw:v0"')
    assert any(e.endswith('-> "proj/model:v0"') for e in edges)
    up_only = run_artfs("lineage", "proj/raw", "--up", "--format", "dot").stdout
    assert "->" not in up_only  # nothing led to raw
    shallow = run_artfs("lineage", "proj/model", "--depth", "1", "--json").stdout
    import json

    graph = json.loads(shallow)["graph"]
    assert {n["kind"] for n in graph["nodes"]} == {"version", "run"} and len(graph["edges"]) == 1
    text = run_artfs("lineage", "proj/model").stdout.splitlines()
    assert text[0] == "proj/model:v0" and text[1].strip().startswith("logged by run")
    assert text[2].strip() == "which used proj/raw:v0"


def test_diff_from_the_cli(run_artfs, tmp_path: Path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "keep").write_text("k")
    (src / "change").write_text("1")
    (src / "gone").write_text("g")
    run_artfs("put", str(src), "-n", "p/a")
    (src / "change").write_text("22")
    (src / "gone").unlink()
    (src / "new").write_text("n")
    run_artfs("put", str(src), "-n", "p/a")
    import json

    out = json.loads(run_artfs("diff", "p/a:v0", "p/a:v1", "--json").stdout)
    assert [(c["path"], c["status"], c["old_size"], c["new_size"]) for c in out["changes"]] == [
        ("change", "changed", 1, 2),
        ("gone", "removed", 1, None),
        ("new", "added", None, 1),
    ]
    text = run_artfs("diff", "p/a:v0", "p/a:v1").stdout.splitlines()
    assert [ln.split()[0] for ln in text] == ["M", "-", "+"]


@pytest.mark.parametrize("store_url", ["local"], indirect=True)
def test_every_help_page_says_something(run_artfs):
    from artfs.cli import build_parser

    parser = build_parser()
    pages = [[]]
    actions = [a for a in parser._actions if a.dest == "command"]
    for name, sub in actions[0].choices.items():
        pages.append([name])
        for a in sub._actions:
            if getattr(a, "choices", None) and isinstance(a.choices, dict):
                pages += [[name, s] for s in a.choices]
    assert len(pages) > 20
    assert "usage: artfs" in run_artfs("--help").stdout  # the real entry point, once
    for page in pages:  # the others rendered in-process: a process each cost 13 s
        text = io.StringIO()
        with contextlib.redirect_stdout(text), pytest.raises(SystemExit):
            build_parser().parse_args([*page, "--help"])
        out = text.getvalue()
        assert "usage: artfs" in out, page
        for line in out.splitlines():
            assert "_command" not in line and "json_value" not in line, (page, line)
    # every option of every command has help text
    for name, sub in actions[0].choices.items():
        for a in sub._actions:
            if a.option_strings and a.dest != "help":
                assert a.help, (name, a.option_strings)
    assert run_artfs("--version").stdout.startswith("artfs ")
    assert run_artfs("alias", check=False).stderr.count("\n") == 1
