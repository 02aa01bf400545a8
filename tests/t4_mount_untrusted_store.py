"""Store objects are untrusted input: crafted manifests and records cost one
version (one-line error, exit 2, EIO in the mount), never a write outside
``--root``, a traceback or the daemon. Bad metadata and descriptions are
refused when they come in."""

from __future__ import annotations

import errno
import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from artfs.api import Api
from artfs.digest import digest_bytes, digest_file
from artfs.fs.mountpoints import process_alive
from artfs.manifest import ManifestBuilder
from artfs.repo import RepoError, Version, layout
from tests.mounting import mounted_here
from tests.trees import make_tree


def _store_manifest(api: Api, path: Path, *, file_count: int = 1) -> Version:
    """Store the manifest file at ``path`` as a blob and make a version of it."""
    digest, _ = digest_file(path)
    api.repo.store.put_file(layout.blob_key(digest), path)
    return api.repo.create_version_record(
        Version("proj", "ds", -1, digest, digest, time.time(), 1, file_count)
    )


def _crafted(tmp_path: Path, name: str, sql: list[tuple[str, tuple]]) -> Path:
    """A real manifest (the builder's schema) with ``sql`` applied to it."""
    b = ManifestBuilder()
    blob = digest_bytes(b"payload")
    b.add_dir("b")
    b.add_file("b/f", 7, blob)
    b.add_file("a", 7, blob)
    path = tmp_path / f"{name}.sqlite"
    b.write(path)
    db = sqlite3.connect(path)
    db.execute("DROP INDEX IF EXISTS entries_by_name")
    for stmt, args in sql:
        db.execute(stmt, args)
    db.commit()
    db.close()
    return path


def _rename(new: str) -> list[tuple[str, tuple]]:
    return [("UPDATE entries SET name = ? WHERE name = 'a'", (new,))]


def _bad_manifests(tmp_path: Path, outside: Path) -> dict[str, Path]:
    cases = {
        "dotdot": _rename(".."),
        "dot": _rename("."),
        "empty": _rename(""),  # would be --root itself
        "slash": _rename("x/../../../escaped"),
        "absolute": _rename(str(outside / "abs")),
        "nul": _rename("a\0b"),
        "long": _rename("x" * 256),
        "kind": [("UPDATE entries SET kind = 'z' WHERE name = 'a'", ())],
        "digest": [("UPDATE entries SET digest = '../../x' WHERE name = 'a'", ())],
        "orphan": [("UPDATE entries SET parent = 99 WHERE name = 'a'", ())],
        # Directory b (id 3), then a link also named b, then b's file (id 10):
        # written in order, the file would land through the link, outside.
        "dup-link": [
            ("UPDATE entries SET id = 10 WHERE name = 'f'", ()),
            (
                "INSERT INTO entries (id, parent, name, kind, mode, size, digest, target) "
                "VALUES (5, 1, 'b', 'l', 511, 3, NULL, ?)",
                (str(outside),),
            ),
        ],
    }
    out = {name: _crafted(tmp_path, name, sql) for name, sql in cases.items()}
    not_sqlite = tmp_path / "not-sqlite.sqlite"
    not_sqlite.write_bytes(b"this is not a database\n" * 200)
    out["not-sqlite"] = not_sqlite
    other = tmp_path / "other-schema.sqlite"
    db = sqlite3.connect(other)
    db.execute("CREATE TABLE t (x)")
    db.commit()
    db.close()
    out["other-schema"] = other
    return out


def _snapshot(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")} if root.exists() else set()


@pytest.mark.store_left_inconsistent  # crafted versions, on purpose
def test_crafted_manifests_cost_one_version(
    api: Api, run_artfs, tmp_path: Path, store_url: str, artfs_env: dict[str, str]
) -> None:
    good = make_tree(tmp_path / "good", {"ok.txt": "fine"})
    api.put([good], "proj/ds")  # v0
    work = tmp_path / "work"
    outside = work / "outside"
    outside.mkdir(parents=True)
    (outside / "keep").write_text("untouched")
    api.repo.store.put_file(
        layout.blob_key(digest_bytes(b"payload")), make_tree(tmp_path / "p", {"x": "payload"}) / "x"
    )
    bad = {name: _store_manifest(api, p) for name, p in _bad_manifests(tmp_path, outside).items()}
    before = _snapshot(work)
    for name, v in bad.items():
        root = work / "root"
        r = run_artfs("get", v.ref, "--root", str(root), check=False)
        assert r.returncode == 2, (name, r.stderr)
        assert r.stderr.startswith("artfs: error: ") and r.stderr.count("\n") == 1, (name, r.stderr)
        assert "Traceback" not in r.stderr
        assert _snapshot(work) == before, name  # nothing written anywhere, --root included
        assert (outside / "keep").read_text() == "untouched"
        show = run_artfs("show", v.ref, "--files", check=False)
        assert show.returncode == 2 and "Traceback" not in show.stderr, (name, show.stderr)
    ls = run_artfs("ls", "proj/ds")
    assert ls.stdout.count("\n") == 1 + len(bad)
    assert run_artfs("get", "proj/ds:v0", "--root", str(tmp_path / "v0")).returncode == 0

    check = run_artfs("check", check=False)
    assert check.returncode == 1
    for v in bad.values():
        assert v.ref in check.stdout

    env = dict(os.environ, ARTFS_CONFIG=artfs_env["ARTFS_CONFIG"])
    with mounted_here(tmp_path, store_url, cache_dir=tmp_path / "mc", env=env) as m:
        art = m.path / "proj/ds"
        for name, v in bad.items():
            if name in ("orphan", "dup-link"):
                continue  # a lookup by (parent, name) never meets these: no path is built
            with pytest.raises(OSError) as e:
                os.listdir(art / v.name)
            assert e.value.errno == errno.EIO, name
        assert (art / "v0/ok.txt").read_text() == "fine"
        assert process_alive(m.pid)
        assert "bad manifest" in m.log_text()


@pytest.mark.store_left_inconsistent  # crafted records, on purpose
def test_crafted_version_records_cost_one_version(api: Api, run_artfs, tmp_path: Path) -> None:
    api.put([make_tree(tmp_path / "good", {"ok.txt": "fine"})], "proj/ds")  # v0
    good = api.repo.version("proj", "ds", 0).to_record()
    records = {
        1: b'{"version": 1}',  # fields missing
        2: json.dumps({**good, "version": 2, "size": "big"}).encode(),
        3: b'{"version": 3, "manifest": "%s", "tree": "%s", "created": NaN, "size": 1, '
        b'"file_count": 1}' % (good["manifest"].encode(), good["tree"].encode()),
        4: b"{not json",
        5: b"\xff\xfe not utf-8",
        6: b'{"version": 7, "manifest": "%s", "tree": "%s", "created": 1, "size": 1, '
        b'"file_count": 1}' % (good["manifest"].encode(), good["tree"].encode()),
        7: b'{"version": 7, "deleted": "yes"}',
        8: b'{"version": 8, "manifest": "xxh128:../../etc", "tree": "%s", "created": 1, '
        b'"size": 1, "file_count": 1}' % good["tree"].encode(),
    }
    for n, data in records.items():
        api.repo.store.put(layout.version_key("proj", "ds", n), data)
    for n in records:
        r = run_artfs("show", f"proj/ds:v{n}", check=False)
        assert r.returncode == 2, (n, r.stderr)
        assert r.stderr.startswith("artfs: error: ") and r.stderr.count("\n") == 1, (n, r.stderr)
    assert [line.split()[0] for line in run_artfs("ls", "proj/ds").stdout.splitlines()] == ["v0"]
    assert run_artfs("get", "proj/ds", "--root", str(tmp_path / "out")).returncode == 0
    # gc refuses to judge what a record it cannot read keeps alive.
    gc = run_artfs("gc", "--grace", "0", "--force", check=False)
    assert gc.returncode == 2 and "corrupt record" in gc.stderr
    check = run_artfs("check", check=False)
    assert check.returncode == 1
    assert all(f"proj/ds:v{n}" in check.stdout for n in records)


def test_nan_metadata_and_bad_descriptions_are_refused_at_input(
    api: Api, run_artfs, tmp_path: Path, artfs_env: dict[str, str]
) -> None:
    src = make_tree(tmp_path / "src", {"a": "x"})
    for text in ('{"loss": NaN}', '{"loss": Infinity}', '{"x": [-Infinity]}'):
        r = run_artfs("put", str(src), "-n", "proj/ds", "-m", text, check=False)
        assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    # A description that is not UTF-8 (bytes from the command line).
    proc = subprocess.run(
        [sys.executable, "-m", "artfs.cli", "put", str(src), "-n", "proj/ds", "-d", b"caf\xe9"],
        env=artfs_env,
        capture_output=True,
    )
    assert proc.returncode == 2 and b"UTF-8" in proc.stderr, proc.stderr
    assert not api.repo.store.list(layout.projects_prefix()).prefixes or not api.repo.versions(
        "proj", "ds"
    )
    with pytest.raises(RepoError):
        api.put([src], "proj/ds", metadata={"loss": float("nan")})
    api.put([src], "proj/ds", metadata={"loss": 0.5}, description="ok")
    r = run_artfs("meta", "set", "proj/ds:v0", "loss=NaN", check=False)
    assert r.returncode == 2
    proc = subprocess.run(
        [sys.executable, "-m", "artfs.cli", "describe", "proj/ds:v0", b"\xff"],
        env=artfs_env,
        capture_output=True,
    )
    assert proc.returncode == 2 and b"Traceback" not in proc.stderr
    v = api.repo.version("proj", "ds", 0)
    assert (v.metadata, v.description) == ({"loss": 0.5}, "ok")


@pytest.mark.parametrize(
    ("control", "data", "reason"),
    [
        (".metadata.json", b'{"loss": NaN}', "metadata"),
        (".description", b"caf\xe9 latin-1\n", "not UTF-8"),
    ],
    ids=["nan-metadata", "latin1-description"],
)
def test_bad_control_files_through_staging_fail_the_commit(
    store_url: str,
    tmp_path: Path,
    artfs_env: dict[str, str],
    api: Api,
    control: str,
    data: bytes,
    reason: str,
) -> None:
    env = dict(os.environ, ARTFS_CONFIG=artfs_env["ARTFS_CONFIG"])
    with mounted_here(tmp_path, store_url, cache_dir=tmp_path / "mc", env=env) as m:
        os.makedirs(m.path / "proj/ds")
        staging = m.path / "proj/ds/staging"
        (staging / "a").write_text("x")
        (staging / control).write_bytes(data)
        r = subprocess.run(["touch", str(staging / ".commit")], capture_output=True, text=True)
        assert r.returncode != 0
        assert reason in (staging / ".status").read_text()
        assert (staging / "a").read_text() == "x"  # staging as it was
        assert (staging / control).read_bytes() == data
    assert not api.repo.store.list(layout.versions_prefix("proj", "ds")).objects
