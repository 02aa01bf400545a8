"""Training code under `artfs run` records lineage through the mount with no artfs code."""

from __future__ import annotations

import json
from pathlib import Path

from tests.mounting import mounted_here
from tests.trees import make_tree


def test_reads_and_commits_through_the_mount_are_attributed_to_the_run(
    run_artfs, store_url: str, cache_dir: Path, artfs_env: dict[str, str], tmp_path: Path
) -> None:
    run_artfs("put", str(make_tree(tmp_path / "raw", {"x.csv": "1,2"})), "-n", "proj/raw")
    run_artfs("put", str(make_tree(tmp_path / "other", {"y": "y"})), "-n", "proj/other")
    with mounted_here(tmp_path, store_url, env=artfs_env) as m:
        (m.path / "proj" / "model").mkdir()
        train = (
            f"cat {m.path}/proj/raw/latest/x.csv > /dev/null && "
            f"cat {m.path}/proj/raw/v0/x.csv > /dev/null && "
            f"echo weights > {m.path}/proj/model/staging/w.bin && "
            f"touch {m.path}/proj/model/staging/.commit"
        )
        run_artfs("run", "--", "sh", "-c", train)
        # A read outside any run records nothing.
        assert (m.path / "proj/other/v0/y").read_text() == "y"

    model = json.loads(run_artfs("lineage", "proj/model", "--json").stdout)
    assert model["logged_by"] is not None, "the commit was not attributed to the run"
    assert model["logged_by"]["used"] == ["proj/raw:v0"]
    raw = json.loads(run_artfs("lineage", "proj/raw", "--json").stdout)
    assert [r["logged"] for r in raw["used_by"]] == [["proj/model:v0"]]
    other = json.loads(run_artfs("lineage", "proj/other", "--json").stdout)
    assert other["used_by"] == []
