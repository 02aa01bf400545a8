from pathlib import Path

from tests.trees import make_tree, read_tree


def test_put_get_round_trip(api, tmp_path: Path) -> None:
    src = make_tree(
        tmp_path / "src",
        {"a.txt": "alpha", "d/b.bin": b"\0\1\2", "run.sh": "#!/bin/sh"},
        executable=("run.sh",),
        symlinks={"d/link": "../a.txt"},
        empty_dirs=("empty",),
    )
    result = api.put([src], "proj/ds")
    assert result.created and result.version.number == 0
    out = api.artifact("proj/ds:latest").download(tmp_path / "out")
    assert read_tree(out) == read_tree(src)
