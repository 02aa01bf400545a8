"""The ``artfs`` command line, run for real in subprocesses."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from artfs.objects import open_store
from artfs.objects.local import LocalStore
from tests.mounting import artfs_cli_on_tty
from tests.trees import blob_keys, make_tree, read_tree, store_snapshot


def _src(tmp_path: Path) -> Path:
    return make_tree(
        tmp_path / "src",
        {
            "README": "hello\n",
            "data/x.bin": bytes(range(256)) * 100,
            "data/deep/y.txt": "y",
            "bin/run.sh": "#!/bin/sh\necho run\n",
        },
        executable=("bin/run.sh",),
        symlinks={"data/link": "../README", "abs": "/nonexistent/target"},
        empty_dirs=("empty", "data/also-empty"),
    )


def test_put_get_round_trip(run_artfs, tmp_path: Path) -> None:
    src = _src(tmp_path)
    put = run_artfs("put", str(src), "-n", "proj/ds", "-t", "dataset", "-a", "best")
    assert put.stdout == "proj/ds:v0\n"
    assert "stored 4 files" in put.stderr
    get = run_artfs("get", "proj/ds:best", "--root", str(tmp_path / "out"))
    assert get.stdout.strip() == str(tmp_path / "out")
    assert read_tree(tmp_path / "out") == read_tree(src)
    # A single file goes under its own name; several inputs merge at the root.
    run_artfs("put", str(src / "README"), str(src / "data"), "-n", "proj/mixed")
    run_artfs("get", "proj/mixed", "--root", str(tmp_path / "mixed"))
    assert sorted(read_tree(tmp_path / "mixed")) == sorted(
        ["README", "x.bin", "deep", "deep/y.txt", "link", "also-empty"]
    )


def test_get_leaves_identical_files_alone_and_links_from_cache(
    run_artfs, artfs_env: dict[str, str], tmp_path: Path
) -> None:
    src = _src(tmp_path)
    run_artfs("put", str(src), "-n", "proj/ds")
    out = tmp_path / "out"
    # Links only when asked (the default is a reflink or copy: test_cache_integrity).
    run_artfs("get", "--link", "proj/ds", "--root", str(out))
    x = out / "data/x.bin"
    cache = Path(artfs_env["ARTFS_CACHE"])
    cached = [p for p in (cache / "blobs").rglob("*") if p.is_file() and p.stat().st_size == 25600]
    assert len(cached) == 1 and os.path.samestat(x.stat(), cached[0].stat())
    assert (out / "bin/run.sh").stat().st_mode & 0o100  # exec files are copies with their bit
    before = {p: (p.lstat().st_ino, p.lstat().st_mtime_ns) for p in out.rglob("*")}

    # A file with other bytes is replaced; the rest is not touched.
    os.unlink(out / "README")
    (out / "README").write_text("edited")
    readme_before = (out / "README").stat().st_ino
    run_artfs("get", "--link", "proj/ds", "--root", str(out))
    assert (out / "README").read_text() == "hello\n"
    assert (out / "README").stat().st_ino != readme_before
    after = {p: (p.lstat().st_ino, p.lstat().st_mtime_ns) for p in out.rglob("*")}
    unchanged = {p for p in before if p.name not in ("README", "deep", "data", "") and p != out}
    for p in unchanged:
        if p.is_dir() and not p.is_symlink():
            continue  # a directory's mtime moves when a file in it is replaced
        assert after[p] == before[p], p
    assert read_tree(out) == read_tree(src)


def test_get_copies_identical_file_is_not_rewritten(run_artfs, tmp_path: Path) -> None:
    src = _src(tmp_path)
    run_artfs("put", str(src), "-n", "proj/ds")
    out = tmp_path / "out"
    out.mkdir()
    (out / "README").write_text("hello\n")  # right bytes, not from the cache
    ino = (out / "README").stat().st_ino
    run_artfs("get", "proj/ds", "--root", str(out))
    assert (out / "README").stat().st_ino == ino


def test_ls_and_show(run_artfs, tmp_path: Path) -> None:
    src = _src(tmp_path)
    run_artfs("put", str(src), "-n", "proj/ds", "-d", "first", "-m", '{"rows": 3}')
    (src / "README").write_text("changed")
    run_artfs("put", str(src), "-n", "proj/ds", "-t", "dataset")
    run_artfs("put", str(src / "README"), "-n", "proj/model", "-t", "model")
    assert run_artfs("ls").stdout == "proj\tprivate\n"
    assert json.loads(run_artfs("ls", "--json").stdout) == [
        {"name": "proj", "visibility": "private"}
    ]
    arts = json.loads(run_artfs("ls", "proj", "--json").stdout)
    assert arts == [
        {"name": "proj/ds", "type": "dataset", "versions": 2},
        {"name": "proj/model", "type": "model", "versions": 1},
    ]
    lines = run_artfs("ls", "proj/ds").stdout.splitlines()
    assert [line.split("\t")[0] for line in lines] == ["v0", "v1"]
    assert lines[1].endswith("latest")
    shown = json.loads(run_artfs("show", "proj/ds:v0", "--json", "--files").stdout)
    assert shown["ref"] == "proj/ds:v0" and shown["description"] == "first"
    assert shown["metadata"] == {"rows": 3} and shown["file_count"] == 4
    assert {f["path"] for f in shown["files"] if f["kind"] == "file"} == {
        "README",
        "data/x.bin",
        "data/deep/y.txt",
        "bin/run.sh",
    }
    text = run_artfs("show", "proj/ds").stdout
    assert "ref:         proj/ds:v1" in text and "aliases:     latest" in text


@pytest.mark.parametrize("store_url", ["local"], indirect=True)  # CLI rules, not the store
def test_alias_describe_meta_delete(run_artfs, tmp_path: Path) -> None:
    src = _src(tmp_path)
    for i in range(3):
        (src / "README").write_text(f"v{i}")
        run_artfs("put", str(src), "-n", "proj/ds")
    assert run_artfs("alias", "set", "proj/ds:v1", "best").stdout == "proj/ds:best -> v1\n"
    run_artfs("alias", "set", "proj/ds:v0", "best")
    assert json.loads(run_artfs("show", "proj/ds:best", "--json").stdout)["version"] == 0
    run_artfs("alias", "set", "proj/ds:v0", "prod")
    run_artfs("alias", "rm", "proj/ds", "best")
    assert json.loads(run_artfs("show", "proj/ds:v0", "--json").stdout)["aliases"] == ["prod"]

    run_artfs("describe", "proj/ds:v0", "the first one")
    run_artfs("meta", "set", "proj/ds:v0", "rows=100", "name=mnist", 'split={"a": 1}')
    shown = json.loads(run_artfs("show", "proj/ds:v0", "--json").stdout)
    assert shown["description"] == "the first one"
    assert shown["metadata"] == {"rows": 100, "name": "mnist", "split": {"a": 1}}
    meta_file = tmp_path / "meta.json"
    meta_file.write_text('{"only": true}')
    run_artfs("meta", "replace", "proj/ds:v0", str(meta_file))
    assert json.loads(run_artfs("show", "proj/ds:v0", "--json").stdout)["metadata"] == {
        "only": True
    }
    run_artfs("meta", "replace", "proj/ds:v0", '{"again": 1}')
    assert json.loads(run_artfs("show", "proj/ds:v0", "--json").stdout)["metadata"] == {"again": 1}

    refused = run_artfs("delete", "proj/ds:v0", check=False)
    assert refused.returncode == 2 and "prod" in refused.stderr
    out = run_artfs("delete", "proj/ds:v0", "--delete-aliases").stdout
    assert out == "deleted proj/ds:v0 (aliases removed: prod)\n"
    refused = run_artfs("delete", "proj/ds:v2", check=False)  # latest holds it, as in W&B
    assert refused.returncode == 2 and "latest" in refused.stderr
    run_artfs("delete", "proj/ds:v2", "--delete-aliases")
    assert json.loads(run_artfs("show", "proj/ds:latest", "--json").stdout)["version"] == 1


def test_metadata_from_file_on_put(run_artfs, tmp_path: Path) -> None:
    src = _src(tmp_path)
    meta = tmp_path / "m.json"
    meta.write_text('{"lr": 0.1}')
    run_artfs("put", str(src), "-n", "proj/ds", "-m", str(meta))
    assert json.loads(run_artfs("show", "proj/ds", "--json").stdout)["metadata"] == {"lr": 0.1}


def test_identical_put_says_so(run_artfs, tmp_path: Path) -> None:
    src = _src(tmp_path)
    run_artfs("put", str(src), "-n", "proj/ds")
    again = run_artfs("put", str(src), "-n", "proj/ds")
    assert again.stdout == "proj/ds:v0\n"
    assert "unchanged" in again.stderr and "no new version" in again.stderr


def _bad_inputs(tmp_path: Path, src: Path) -> list[tuple[list[str], str]]:
    fifo_tree = make_tree(tmp_path / "withfifo", {"ok.txt": "x"})
    os.mkfifo(fifo_tree / "pipe")
    bad_name_tree = make_tree(tmp_path / "badname", {"ok.txt": "x"})
    with open(os.fsencode(bad_name_tree) + b"/sub\xff.txt", "wb") as f:
        f.write(b"x")
    meta_dir = tmp_path / "notjson.txt"
    meta_dir.write_text("not json")
    return [
        (["put", str(tmp_path / "missing"), "-n", "proj/ds"], "no such file"),
        (["put", str(src), "-n", "proj/bad name"], "bad artifact name"),
        (["put", str(src), "-n", "proj"], "bad ref"),
        (["put", str(src), "-n", ".proj/ds"], "bad project name"),
        (["put", str(src), "-n", "proj/ds:v3"], "use -a for aliases"),
        (["put", str(src), "-n", "proj/ds", "-m", "{not json"], "bad metadata"),
        (["put", str(src), "-n", "proj/ds", "-m", "[1, 2]"], "JSON object"),
        (["put", str(src), "-n", "proj/ds", "-m", str(meta_dir)], "file is not JSON"),
        (["put", str(src), "-n", "proj/ds", "-a", "v2"], "names a version"),
        (["put", str(src), "-n", "proj/ds", "-t", "bad/type"], "bad artifact type"),
        (["put", str(fifo_tree), "-n", "proj/ds"], "pipe"),
        (["put", str(bad_name_tree), "-n", "proj/ds"], "bad path 'sub"),
        (["put", "-n", "proj/ds"], "required"),
        (["get", "proj/ds:v9"], "no version proj/ds:v9"),
        (["get", "proj/nope"], "no artifact proj/nope"),
        (["get", "nope/ds"], "no artifact nope/ds"),
        (["get", "proj/ds", "--root", str(meta_dir)], "not a directory"),
        (["show", "proj/ds:nope"], "no alias 'nope'"),
        (["show", "proj/ds:"], "bad ref"),
        (["alias", "set", "proj/ds:v0", "latest"], "latest"),
        (["alias", "set", "proj/ds:v0", "v1"], "names a version"),
        (["alias", "set", "proj/ds:v7", "best"], "no version"),
        (["alias", "rm", "proj/ds", "nope"], "no alias 'nope'"),
        (["alias", "rm", "proj/ds", "latest"], "latest"),
        (["describe", "proj/ds:v5", "text"], "no version"),
        (["meta", "set", "proj/ds", "novalue"], "KEY=VALUE"),
        (["meta", "replace", "proj/ds", "{bad"], "bad metadata"),
        (["meta", "replace", "proj/ds", '"a string"'], "JSON object"),
        (["delete", "proj/ds"], "name the version"),
        (["delete", "proj/ds:v0"], "best"),
        (["delete", "proj/ds:v8"], "no version"),
        (["ls", "nope"], "no project"),
        (["ls", "proj/nope"], "no artifact"),
        (["cache", "cleanup", "lots"], "bad size"),
    ]


@pytest.mark.parametrize("store_url", ["local"], indirect=True)  # CLI rules, not the store
def test_bad_input_is_one_line_exit_2_and_changes_nothing(
    run_artfs, store_url: str, tmp_path: Path
) -> None:
    src = _src(tmp_path)
    run_artfs("put", str(src), "-n", "proj/ds", "-a", "best", "-m", '{"k": 1}')
    store = open_store(store_url)
    before = store_snapshot(store)
    # A local store's directory itself, its temporary files included.
    root = store.root if isinstance(store, LocalStore) else None
    raw_before = _dir_snapshot(root) if root else None
    for args, expected in _bad_inputs(tmp_path, src):
        proc = run_artfs(*args, check=False)
        assert proc.returncode == 2, (args, proc.stderr)
        assert proc.stdout == "", args
        assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("artfs: error: "), (
            args,
            proc.stderr,
        )
        assert expected in proc.stderr, (args, proc.stderr)
        assert store_snapshot(store) == before, args
        if root:
            assert _dir_snapshot(root) == raw_before, args


def _dir_snapshot(root: Path) -> dict[str, tuple[int, int, int]]:
    """path -> (inode, size, mtime) of everything under ``root`` but the lock file."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            if p == root / ".lock":
                continue  # made on first compare-and-swap, holds no data
            st = p.lstat()
            out[str(p.relative_to(root))] = (st.st_ino, st.st_size, st.st_mtime_ns)
    return out


def test_put_killed_mid_upload_leaves_no_version(
    run_artfs, artfs_env: dict[str, str], store_url: str, tmp_path: Path
) -> None:
    small = make_tree(tmp_path / "small", {"a.txt": "a"})
    run_artfs("put", str(small), "-n", "proj/ds")
    big = tmp_path / "big"
    big.mkdir()
    chunk = os.urandom(1 << 20)
    for i in range(64):  # 256 MiB in 64 distinct files
        with open(big / f"part{i:02d}", "wb") as f:
            for j in range(4):
                f.write(i.to_bytes(4, "big") + j.to_bytes(4, "big") + chunk[8:])
    store = open_store(store_url)
    blobs_before = len(blob_keys(store))
    proc = subprocess.Popen(
        [sys.executable, "-m", "artfs.cli", "put", str(big), "-n", "proj/ds"],
        env=artfs_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    # Uploading has started when blobs appear; a local store first copies a
    # batch of them to temporary names, all made durable at once, then links.
    local_tmp = store.root / ".tmp" if isinstance(store, LocalStore) else None

    def uploading() -> bool:
        if local_tmp is not None:
            return len(os.listdir(local_tmp)) >= 3
        return len(blob_keys(store)) >= blobs_before + 3

    try:
        deadline = time.monotonic() + 60
        while not uploading():
            assert proc.poll() is None, "put finished before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.005)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    versions = json.loads(run_artfs("ls", "proj/ds", "--json").stdout)
    assert [v["version"] for v in versions] == [0]
    assert json.loads(run_artfs("show", "proj/ds", "--json").stdout)["version"] == 0

    again = run_artfs("put", str(big), "-n", "proj/ds")
    assert again.stdout == "proj/ds:v1\n"
    run_artfs("get", "proj/ds:v1", "--root", str(tmp_path / "out"))
    for i in (0, 31, 63):
        name = f"part{i:02d}"
        assert (tmp_path / "out" / name).read_bytes() == (big / name).read_bytes()


def test_progress_bars_on_a_terminal(artfs_env: dict[str, str], tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src", {f"f{i}": os.urandom(1 << 20) for i in range(8)})

    def on_tty(*args: str) -> tuple[int, str, str]:
        code, out, err = artfs_cli_on_tty(*args, env=artfs_env, timeout=60)
        return code, out, err.decode(errors="replace")

    code, out, err = on_tty("put", str(src), "-n", "proj/ds")
    assert code == 0 and out == "proj/ds:v0\n"
    assert "hashing" in err and "uploading" in err and "8.39M" in err
    code, out, err = on_tty("get", "proj/ds", "--root", str(tmp_path / "out"))
    assert code == 0 and "get:" in err and "8.39M" in err
    # Not a terminal: no bars.
    proc = subprocess.run(
        [sys.executable, "-m", "artfs.cli", "put", str(src), "-n", "proj/other"],
        env=artfs_env,
        capture_output=True,
        text=True,
    )
    assert "hashing" not in proc.stderr and "%" not in proc.stderr


@pytest.fixture
def clean_env(tmp_path: Path) -> dict[str, str]:
    """An environment with no artfs settings, its platformdirs under tmp_path."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ARTFS_")}
    env.update(
        XDG_DATA_HOME=str(tmp_path / "xdg-data"),
        XDG_CONFIG_HOME=str(tmp_path / "xdg-config"),
        XDG_CACHE_HOME=str(tmp_path / "xdg-cache"),
        XDG_STATE_HOME=str(tmp_path / "xdg-state"),
    )
    return env


@pytest.mark.parametrize("store_url", ["local"], indirect=True)
def test_local_config_chain(run_artfs, clean_env: dict[str, str], tmp_path: Path) -> None:
    """--store, then $ARTFS_STORE, then the config file, then the default."""
    src = make_tree(tmp_path / "src", {"a": "a"})

    def put_into(name: str, *flags: str, **env: str) -> None:
        run_artfs(*flags, "put", str(src), "-n", f"proj/{name}", env={**clean_env, **env})

    put_into("default")
    default_store = tmp_path / "xdg-data/artfs/store"
    assert (default_store / "projects/proj/default/versions/0.json").is_file()
    assert (tmp_path / "xdg-cache/artfs/blobs").is_dir()

    config = tmp_path / "xdg-config/artfs/config.toml"
    config.parent.mkdir(parents=True)
    config.write_text(f'store = "{tmp_path / "from-config"}"\ncache = "{tmp_path / "c1"}"\n')
    put_into("cfg")
    assert (tmp_path / "from-config/projects/proj/cfg").is_dir()
    run_artfs("get", "proj/cfg", "--root", str(tmp_path / "o"), env=clean_env)
    assert (tmp_path / "c1/blobs").is_dir()

    other = tmp_path / "other.toml"
    other.write_text(f'store = "{tmp_path / "from-artfs-config"}"\n')
    put_into("cfg2", ARTFS_CONFIG=str(other))
    assert (tmp_path / "from-artfs-config/projects/proj/cfg2").is_dir()

    put_into("env", ARTFS_STORE=str(tmp_path / "from-env"), ARTFS_CACHE=str(tmp_path / "c2"))
    assert (tmp_path / "from-env/projects/proj/env").is_dir()
    assert not (tmp_path / "from-config/projects/proj/env").exists()

    # The flag wins over everything, before or after the command.
    put_into("flag", "--store", str(tmp_path / "from-flag"), ARTFS_STORE=str(tmp_path / "x"))
    assert (tmp_path / "from-flag/projects/proj/flag").is_dir()
    run_artfs(
        "put",
        str(src),
        "-n",
        "proj/flag2",
        "--store",
        f"file://{tmp_path / 'from-flag'}",
        "--cache",
        str(tmp_path / "c3"),
        env={**clean_env, "ARTFS_STORE": str(tmp_path / "x")},
    )
    assert (tmp_path / "from-flag/projects/proj/flag2").is_dir()
    assert not (tmp_path / "x").exists()

    config.write_text("store = [unclosed")
    bad = run_artfs("ls", check=False, env=clean_env)
    assert bad.returncode == 2 and "cannot read config" in bad.stderr


def test_get_over_a_version_with_other_exec_bits_keeps_the_cache_intact(
    run_artfs, artfs_env: dict[str, str], tmp_path: Path
) -> None:
    src = make_tree(tmp_path / "src", {"tool": "#!/bin/sh\n", "data": "d"})
    run_artfs("put", str(src), "-n", "proj/ds")
    out = tmp_path / "out"
    run_artfs("get", "--link", "proj/ds:v0", "--root", str(out))
    assert (out / "tool").stat().st_nlink == 2  # linked from the cache
    (src / "tool").chmod(0o755)
    run_artfs("put", str(src), "-n", "proj/ds")
    run_artfs("get", "--link", "proj/ds:v1", "--root", str(out))
    assert (out / "tool").stat().st_mode & 0o111 == 0o111
    cached = [p for p in (Path(artfs_env["ARTFS_CACHE"]) / "blobs").rglob("xxh128:*")]
    assert cached and all(p.stat().st_mode & 0o777 == 0o444 for p in cached)
    run_artfs("get", "--link", "proj/ds:v0", "--root", str(out))
    assert (out / "tool").stat().st_mode & 0o111 == 0
    assert read_tree(out) == {"tool": ("f", b"#!/bin/sh\n", False), "data": ("f", b"d", False)}


@pytest.mark.parametrize("store_url", ["local"], indirect=True)
def test_config_values_of_the_wrong_type_are_one_line_errors(
    run_artfs, clean_env: dict[str, str], tmp_path: Path
) -> None:
    config = tmp_path / "c.toml"
    config.write_text("store = 42\n")
    bad = run_artfs("ls", check=False, env={**clean_env, "ARTFS_CONFIG": str(config)})
    assert bad.returncode == 2 and "store must be a string" in bad.stderr
    assert bad.stderr.count("\n") == 1


def test_get_replaces_entries_of_the_wrong_kind(run_artfs, tmp_path: Path) -> None:
    src = _src(tmp_path)
    run_artfs("put", str(src), "-n", "proj/ds")
    out = tmp_path / "out"
    make_tree(out, {"README/inner.txt": "a dir where a file goes", "empty": "a file"})
    os.symlink("elsewhere", out / "bin")  # a link where a directory goes
    (out / "data").mkdir()
    (out / "data" / "link").mkdir()  # a directory where a link goes
    extra = make_tree(out, {"untracked.txt": "kept"}) / "untracked.txt"
    run_artfs("get", "proj/ds", "--root", str(out))
    got = read_tree(out)
    assert got.pop("untracked.txt") == ("f", b"kept", False)  # not ours: left alone
    assert got == read_tree(src)
    assert extra.exists()


@pytest.mark.parametrize("store_url", ["local"], indirect=True)  # CLI rules, not the store
def test_output_cut_short_by_a_closed_pipe_is_no_error(
    run_artfs, artfs_env, tmp_path: Path
) -> None:
    src = tmp_path / "many"
    src.mkdir()
    for i in range(3000):
        (src / f"f{i}").write_text(str(i))
    run_artfs("put", str(src), "-n", "proj/many")
    proc = subprocess.Popen(
        [sys.executable, "-m", "artfs.cli", "show", "proj/many", "--files"],
        env=artfs_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stdout.readline().startswith(b"ref:")
    proc.stdout.close()  # as `| head -1` does
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert b"error" not in err
