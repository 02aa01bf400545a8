"""Shared drafts through the mount: two daemons (two machines) write one draft."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import subprocess
import threading
from pathlib import Path

import pytest

from artfs.api import Api
from artfs.repo.drafts import get_draft
from tests.mounting import mount_factory
from tests.trees import make_tree, read_tree


@pytest.fixture
def mount(store_url, artfs_env, tmp_path):
    """``mount(name)`` -> a Mount with its own state and cache (a machine of its own)."""
    with mount_factory(tmp_path, store_url, env=artfs_env) as new_mount:

        def make(name: str, state: str | None = None, **kw):
            state_dir = tmp_path / f"state-{state}" if state else None
            return new_mount(name=f"-{name}", state_dir=state_dir, **kw)

        yield make


def _touch(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["touch", str(path)], capture_output=True, text=True, timeout=300)


def _files(root: Path) -> dict[str, bytes]:
    return {p: t[1] for p, t in read_tree(root).items() if t[0] == "f"}


def test_two_daemons_write_disjoint_shards_into_one_version(
    mount, store_url: str, tmp_path: Path, run_artfs
) -> None:
    api = Api(store=store_url, cache=str(tmp_path / "api-cache"))
    api.put([make_tree(tmp_path / "v0", {"seed": "0"})], "proj/ds")
    m1, m2 = mount("a"), mount("b")
    d1 = m1.path / "proj/ds/drafts/g"
    os.mkdir(d1)  # opens the draft in the store: the other machine sees it
    d2 = m2.path / "proj/ds/drafts/g"
    assert json.loads(run_artfs("draft", "ls", "proj/ds", "--json").stdout)[0]["group"] == "g"
    expected: dict[str, bytes] = {}
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []

    def write(i: int, root: Path) -> None:
        try:
            barrier.wait()
            (root / f"shard{i}").mkdir()
            for j in range(15):
                (root / f"shard{i}" / f"f{j}.bin").write_bytes(bytes([i, j]) * (500 + j))
        except BaseException as e:
            errors.append(e)

    for i in (1, 2):
        for j in range(15):
            expected[f"shard{i}/f{j}.bin"] = bytes([i, j]) * (500 + j)
    threads = [threading.Thread(target=write, args=(i, r)) for i, r in ((1, d1), (2, d2))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    draft = get_draft(api.repo, "proj", "ds", "g")
    assert (draft.parts, draft.files) == (2, 30)  # one part per daemon
    # Each machine lists the union (the listing TTL has passed for the other's files
    # after a fresh lookup) and reads the other's bytes.
    m3 = mount("c")
    listed = sorted(os.listdir(m3.path / "proj/ds/drafts/g"))
    assert listed == ["shard1", "shard2"]
    assert (m3.path / "proj/ds/drafts/g/shard2/f3.bin").read_bytes() == expected["shard2/f3.bin"]
    assert ".commit" not in listed and ".status" not in listed
    # Finish from the machine that wrote nothing.
    assert _touch(m3.path / "proj/ds/drafts/g/.commit").returncode == 0
    assert "finished as proj/ds:v1" in (m3.path / "proj/ds/drafts/g/.status").read_text()
    assert _files(api.artifact("proj/ds:v1").download(tmp_path / "out")) == expected
    # Closed: a late write on another machine fails, and says so.
    with pytest.raises(OSError) as e:
        (d1 / "late.txt").write_text("late")
    assert e.value.errno in (errno.EROFS, errno.ENOENT)
    assert api.artifact("proj/ds:latest").file_count == 30


def test_a_conflict_through_the_mount_is_eexist_with_paths_in_status(
    mount, store_url: str, tmp_path: Path
) -> None:
    api = Api(store=store_url, cache=str(tmp_path / "api-cache"))
    m1, m2 = mount("a"), mount("b")
    os.makedirs(m1.path / "proj/ds/drafts/g")  # project and artifact made on the way
    (m1.path / "proj/ds/drafts/g/a.txt").write_text("a")
    # Both machines create x.txt before either closed it: neither can know.
    f1 = open(m1.path / "proj/ds/drafts/g/x.txt", "w")  # noqa: SIM115
    f2 = open(m2.path / "proj/ds/drafts/g/x.txt", "w")  # noqa: SIM115
    f1.write("from a")
    f2.write("from b")
    f1.close()
    f2.close()
    # Once one is closed, the other machine sees it: a file is written once.
    with pytest.raises(PermissionError):
        (m1.path / "proj/ds/drafts/g/a.txt").write_text("again")
    r = _touch(m2.path / "proj/ds/drafts/g/.commit")
    assert r.returncode != 0 and "File exists" in r.stderr
    status = (m2.path / "proj/ds/drafts/g/.status").read_text()
    assert "conflicting" in status and "x.txt" in status and "a.txt" not in status
    assert api.repo.versions("proj", "ds") == []
    assert get_draft(api.repo, "proj", "ds", "g").parts == 2  # intact
    # rm -r of the draft aborts it.
    os.unlink(m2.path / "proj/ds/drafts/g/x.txt")  # its own file: out of its part
    shutil.rmtree(m1.path / "proj/ds/drafts/g")
    assert os.listdir(m1.path / "proj/ds/drafts") == []
    assert api.list_drafts("proj/ds") == []


def test_a_file_still_open_when_the_daemon_dies_is_not_in_the_version(
    mount, store_url: str, tmp_path: Path, run_artfs
) -> None:
    """A file is uploaded on close: one open when its daemon is killed is in no
    part, so no partial file reaches the merged version."""
    api = Api(store=store_url, cache=str(tmp_path / "api-cache"))
    survivor = mount("a")
    os.makedirs(survivor.path / "proj/ds/drafts/g")
    (survivor.path / "proj/ds/drafts/g/done.txt").write_text("complete")
    victim = mount("b", check_log=False)
    f = open(victim.path / "proj/ds/drafts/g/half.bin", "wb")  # noqa: SIM115 - held open
    f.write(b"x" * 100_000)
    f.flush()
    os.kill(victim.pid, 9)
    with contextlib.suppress(OSError):
        f.close()
    subprocess.run(["umount", "-l", str(victim.path)], capture_output=True)
    assert list((tmp_path / "state-b/drafts/files").iterdir())  # the half-written file
    mount("b-again", state="b")  # the daemon restarted: what it had open is dropped
    assert not list((tmp_path / "state-b/drafts/files").iterdir())
    run_artfs("draft", "finish", "proj/ds", "g")
    assert _files(api.artifact("proj/ds:v0").download(tmp_path / "out")) == {
        "done.txt": b"complete"
    }


def test_control_files_set_on_one_machine_go_into_the_version_finished_on_another(
    mount, store_url: str, tmp_path: Path
) -> None:
    api = Api(store=store_url, cache=str(tmp_path / "api-cache"))
    m1, m2 = mount("a"), mount("b")
    g1 = m1.path / "proj/ds/drafts/g"
    os.makedirs(g1)
    with pytest.raises(OSError) as e:
        os.mkdir(m1.path / "proj/ds/drafts/bad name")  # group names follow the name rules
    assert e.value.errno == errno.EINVAL
    (g1 / "data.txt").write_text("d")
    (g1 / ".description").write_text("built by many")
    (g1 / ".metadata.json").write_text('{"shards": 2}')
    (g1 / ".aliases").write_text("best\nprod\n")
    with pytest.raises(OSError) as e:
        (g1 / ".metadata.json").write_text("{not json")
    assert e.value.errno == errno.EINVAL
    g2 = m2.path / "proj/ds/drafts/g"
    assert (g2 / ".metadata.json").read_text().replace(" ", "").strip() == '{\n"shards":2\n}'
    assert _touch(g2 / ".commit").returncode == 0
    v = api.artifact("proj/ds:prod")
    assert (v.version, v.description, v.metadata) == ("v0", "built by many", {"shards": 2})
    assert api.repo.aliases("proj", "ds") == {"best": 0, "prod": 0, "latest": 0}
