"""The golden store (tests/data/golden/store, made by tests/golden.py) reads
back exactly, and a store made anew by the same script follows the same
format rules byte for byte (doc/FORMAT.md) unless the format version moved."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from artfs.api import Api
from artfs.manifest import FORMAT as MANIFEST_FORMAT
from artfs.repo import NotFoundError
from artfs.repo.registry import STORE_FORMAT
from tests import golden


@pytest.fixture
def golden_api(tmp_path: Path) -> Api:
    store = tmp_path / "store"
    shutil.copytree(golden.ROOT / "store", store)
    return Api(store=str(store), cache=str(tmp_path / "cache"))


def test_the_golden_store_reads_back(golden_api: Api, tmp_path: Path) -> None:
    api = golden_api
    versions = api.artifact_versions("proj/ds")
    assert [v.version for v in versions] == ["v0", "v1"]
    v0, v1 = versions
    assert (v0.description, v0.metadata, v0.aliases) == ("first", {"rows": 3}, [])
    assert v1.metadata == {"rows": 4, "acc": 0.5} and sorted(v1.aliases) == ["best", "latest"]
    assert v1.tags == ["golden"] and v1.ttl is not None and v1.ttl.total_seconds() == 86400
    kinds = {f.path: (f.kind, f.mode) for f in v0.files()}
    assert kinds == {
        "README.md": ("file", 0o644),
        "data/a.bin": ("file", 0o644),
        "data/b.txt": ("file", 0o600),
        "empty": ("dir", 0o755),
        "link": ("symlink", 0o777),
    }
    got = v0.download(tmp_path / "v0")
    assert (got / "data/a.bin").read_bytes() == bytes(range(256)) * 4
    assert (got / "data/b.txt").read_text() == "b\n" and os.readlink(got / "link") == "data/b.txt"
    assert (v1.download(tmp_path / "v1") / "data/b.txt").read_text() == "b2\n"
    entry = api.repo.manifest(v0.record).lookup("data/a.bin")
    assert entry is not None and entry.mtime_ns == golden.MTIME_NS
    # Lineage: the run used ds:v1 and logged model:v0.
    model = api.artifact("proj/model")
    run = model.logged_by()
    assert run is not None and run.command == ["python", "train.py"] and run.exit_code == 0
    assert [a.qualified_name for a in run.used_artifacts()] == ["proj/ds:v1"]
    # The deleted version stays deleted, and its number is not reused.
    with pytest.raises(NotFoundError):
        api.artifact("proj/tmp:v0")
    from artfs.repo.check import check_store

    assert check_store(api.repo).ok


def test_a_new_store_follows_the_same_rules(tmp_path: Path) -> None:
    store = tmp_path / "store"
    golden.make(store, tmp_path / "work")
    new = golden.normalized(store)
    old = golden.normalized(golden.ROOT / "store")
    config = json.loads((golden.ROOT / "store/config.json").read_text())
    if (config["format"], _manifest_format(old)) != (STORE_FORMAT, str(MANIFEST_FORMAT)):
        pytest.fail(
            "the format version moved: regenerate the golden store (python -m tests.golden) "
            "and describe the change in doc/FORMAT.md"
        )
    assert sorted(new) == sorted(old), "keys differ from the golden store's"
    for key in old:
        assert new[key] == old[key], f"{key} differs from the golden store's without a format bump"


def _manifest_format(normalized: dict) -> str:
    infos = [dict(v["info"]) for k, v in normalized.items() if k.startswith("MANIFEST")]
    formats = {i["format"] for i in infos}
    assert len(formats) == 1
    return formats.pop()
