"""Private, public and open projects on a shared mount, as root and as nobody.

The mount is ``-o allow_other,default_permissions`` and the unprivileged
callers are uid 65534 run through ``setpriv``: a member of the project's
group (gid 4242 as a supplementary group, named in the project record by
number, so no group is added to the machine) and a non-member (no groups).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from artfs.api import Api
from artfs.config import credentials_warning, load_settings
from artfs.fs.access import Access, ProjectAccess, caller_of
from artfs.repo import layout
from artfs.repo.records import CorruptRecord, RepoError
from artfs.repo.registry import encode_record
from artfs.staging import StagingError
from tests.mounting import mounted_here
from tests.trees import make_tree

GID = 4242
NOBODY = 65534
TTL = 0.5
MEMBER = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", f"--groups={GID}"]
OTHER = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
CALLERS = {"member": MEMBER, "other": OTHER}
OPS = ("read", "list", "write_staging", "commit", "alias", "mkdir", "draft")
# visibility -> the operations a non-member may do (a member may do all of them).
OTHER_MAY = {
    "private": set(),
    "public": {"read", "list"},
    "open": set(OPS),
}


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory nobody can reach (pytest's tmp_path is root's only)."""
    d = Path(tempfile.mkdtemp(prefix="artfs-access-", dir="/tmp"))
    d.chmod(0o755)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def as_user(who: list[str], script: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*who, "sh", "-c", script], capture_output=True, text=True, timeout=30, cwd="/"
    )


def outcome(proc: subprocess.CompletedProcess[str]) -> str:
    if proc.returncode == 0:
        return "ok"
    assert "Permission denied" in proc.stderr, proc.stderr  # EACCES, not another failure
    return "EACCES"


def do(op: str, who: str, art: Path) -> str:
    """One operation by ``who`` on artifact directory ``art``: ok or EACCES."""
    if op == "commit":
        (art / "staging" / f"by-root-for-{who}").write_text(who)  # something to commit
    script = {
        "read": f"cat {art}/v0/a.txt",
        "list": f"ls {art}",
        "write_staging": f"echo {who} > {art}/staging/{who}.txt",
        "commit": f"touch {art}/staging/.commit",
        "alias": f"ln -s v0 {art}/alias-{who}",
        "mkdir": f"mkdir {art.parent}/new-{who}",
        "draft": f"mkdir {art}/drafts/g-{who} && echo {who} > {art}/drafts/g-{who}/{who}.txt",
    }[op]
    result = outcome(as_user(CALLERS[who], script))
    if op == "commit" and result == "EACCES":
        (art / "staging" / f"by-root-for-{who}").unlink()
    return result


@pytest.mark.store_left_inconsistent  # crafted project records, on purpose
def test_every_visibility_for_members_and_others(
    api: Api, store_url: str, cache_dir: Path, artfs_env: dict[str, str], tmp_path: Path, shared_dir
) -> None:
    src = make_tree(tmp_path / "src", {"a.txt": "hello", "secret": "s3cr3t"})
    (src / "secret").chmod(0o600)
    for vis in ("private", "public", "open"):
        api.create_project(vis, vis, str(GID))
        api.put([src], f"{vis}/ds")
    # A crafted record: an owner, a mode and a group that is no name.
    api.repo.store.put(
        layout.project_key("evil"),
        encode_record({"visibility": "open", "group": "0", "uid": 1000, "mode": 0o4777}),
    )
    api.repo.store.put(
        layout.project_key("badgroup"), encode_record({"visibility": "open", "group": "../x"})
    )
    mnt = shared_dir / "mnt"
    with mounted_here(
        tmp_path,
        store_url,
        mountpoint=mnt,
        env=artfs_env,
        args=["--ttl", str(TTL), "-o", "allow_other,default_permissions"],
    ) as m:
        got = {
            (vis, op, who): do(op, who, mnt / vis / "ds")
            for vis in ("private", "public", "open")
            for who in ("member", "other")
            for op in OPS
        }
        want = {
            (vis, op, who): "ok" if who == "member" or op in OTHER_MAY[vis] else "EACCES"
            for (vis, op, who) in got
        }
        assert got == want

        # What the kernel is told: the mount's owner, the project's group, the
        # visibility's modes; a 0600 file stays 0600 (the member cannot read it).
        for vis, bits in (("private", 0o770), ("public", 0o775), ("open", 0o777)):
            for path in (mnt / vis, mnt / vis / "ds", mnt / vis / "ds/staging"):
                st = os.stat(path)
                assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (0, GID, bits), path
            secret = os.stat(mnt / vis / "ds/v0/secret")
            assert stat.S_IMODE(secret.st_mode) == 0o600
            assert (secret.st_uid, secret.st_gid) == (0, GID)
            assert stat.S_IMODE(os.stat(mnt / vis / "ds/v0/a.txt").st_mode) == 0o644 & bits
        member_secret = as_user(MEMBER, f"cat {mnt}/public/ds/v0/secret")
        assert outcome(member_secret) == "EACCES"
        assert (mnt / "public/ds/v0/secret").read_text() == "s3cr3t"  # root reads it

        # Commits record their caller; in an open project a non-member made one.
        committers = {v.committed_by.uid for v in api.repo.versions("open", "ds") if v.committed_by}
        assert committers == {0, NOBODY}
        assert api.repo.versions("private", "ds")[-1].committed_by.user == "nobody"

        # A set-id bit staged is never shown, nor given another owner.
        tool = mnt / "public/ds/staging/tool"
        tool.write_text("#!/bin/sh\n")
        tool.chmod(0o4755)
        (mnt / "public/ds/staging/.commit").touch()
        n = max(v.number for v in api.repo.versions("public", "ds"))
        st = os.stat(mnt / f"public/ds/v{n}/tool")
        assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o755, 0, GID)

        # The crafted records are refused: no such projects in the mount.
        assert sorted(os.listdir(mnt)) == ["open", "private", "public"]
        with pytest.raises(FileNotFoundError):
            os.stat(mnt / "evil")
        with pytest.raises(CorruptRecord, match="'uid' is refused"):
            api.project("evil")
        with pytest.raises(CorruptRecord, match="bad group"):
            api.project("badgroup")

        # mkdir of a project by nobody: private to nobody's primary group.
        assert outcome(as_user(OTHER, f"mkdir {mnt}/mine")) == "ok"
        p = api.project("mine")
        assert (p.visibility, p.group) == ("private", "nogroup")
        st = os.stat(mnt / "mine")
        assert (st.st_gid, stat.S_IMODE(st.st_mode)) == (NOBODY, 0o770)
        assert "corrupt record in store: projects/evil/project.json" in m.log_text()


def test_a_visibility_change_shows_within_the_ttl(
    api: Api, store_url: str, cache_dir: Path, artfs_env: dict[str, str], tmp_path: Path, shared_dir
) -> None:
    api.create_project("p", "private", str(GID))
    api.put([make_tree(tmp_path / "src", {"a.txt": "hello"})], "p/ds")
    mnt = shared_dir / "mnt"
    with mounted_here(
        tmp_path,
        store_url,
        mountpoint=mnt,
        env=artfs_env,
        args=["--ttl", str(TTL), "-o", "allow_other,default_permissions"],
    ):
        read = f"cat {mnt}/p/ds/v0/a.txt"
        assert outcome(as_user(OTHER, read)) == "EACCES"
        api.set_project("p", visibility="public")
        # Within the TTL (twice: the kernel's cached entry, then the daemon's record).
        time.sleep(2 * TTL + 0.2)
        assert outcome(as_user(OTHER, read)) == "ok"
        assert outcome(as_user(OTHER, f"echo x > {mnt}/p/ds/staging/x")) == "EACCES"
        api.set_project("p", visibility="open")
        time.sleep(2 * TTL + 0.2)
        assert outcome(as_user(OTHER, f"echo x > {mnt}/p/ds/staging/x")) == "ok"
        api.set_project("p", visibility="private")
        time.sleep(2 * TTL + 0.2)
        assert outcome(as_user(OTHER, read)) == "EACCES"  # the file was looked up before
        assert outcome(as_user(MEMBER, read)) == "ok"


def test_the_daemon_checks_writes_against_the_callers_groups(tmp_path: Path) -> None:
    """What the daemon decides (for mounts the kernel does not check): uid,
    gid and the supplementary groups it reads from /proc/<pid>/status."""
    access = Access(enforced=True, uid=0, gid=0, ttl=1)
    pa = {v: ProjectAccess("p", v, GID) for v in ("private", "public", "open")}
    procs = {who: subprocess.Popen([*argv, "sleep", "30"]) for who, argv in CALLERS.items()}
    try:
        for p in procs.values():  # wait until setpriv has set the ids and exec'd sleep
            deadline = time.monotonic() + 10
            while Path(f"/proc/{p.pid}/comm").read_text().strip() != "sleep":
                assert time.monotonic() < deadline
                time.sleep(0.01)
        ctx = {who: SimpleNamespace(uid=NOBODY, gid=NOBODY, pid=p.pid) for who, p in procs.items()}
        assert GID in caller_of(ctx["member"]).groups
        assert not caller_of(ctx["other"]).groups
        for vis in ("private", "public"):
            access.check_write(pa[vis], ctx["member"], "ln -s")
            with pytest.raises(StagingError) as e:
                access.check_write(pa[vis], ctx["other"], "ln -s v0 p/ds/best")
            assert e.value.errno == errno.EACCES
            assert "uid 65534" in str(e.value) and f"group {GID}" in str(e.value)
        access.check_write(pa["open"], ctx["other"], "ln -s")
        root = SimpleNamespace(uid=0, gid=0, pid=os.getpid())
        access.check_write(pa["private"], root, "ln -s")
    finally:
        for p in procs.values():
            p.kill()
            p.wait()


@pytest.mark.store_left_inconsistent  # a crafted project record, on purpose
@pytest.mark.parametrize("store_url", ["local"], indirect=True)  # CLI rules, any store
def test_project_commands_and_crafted_records(
    api: Api, run_artfs, artfs_env: dict[str, str], tmp_path: Path
) -> None:
    out = run_artfs("project", "create", "team", "--group", "4242", "--json").stdout
    assert json.loads(out)["visibility"] == "private" and json.loads(out)["group"] == "4242"
    r = run_artfs("project", "create", "team", check=False)
    assert r.returncode == 2 and "exists" in r.stderr
    run_artfs("project", "set", "team", "--visibility", "public")
    assert "visibility:  public" in run_artfs("project", "show", "team").stdout
    assert api.project("team").group == "4242"  # the set kept the other field
    r = run_artfs("project", "set", "team", "--group", "../etc", check=False)
    assert r.returncode == 2 and "bad group" in r.stderr and "Traceback" not in r.stderr
    with pytest.raises(RepoError, match="bad visibility"):
        api.set_project("team", visibility="secret")

    # A version records who committed it; show prints it.
    api.put([make_tree(tmp_path / "src", {"a": "1"})], "team/ds")
    shown = run_artfs("show", "team/ds").stdout
    assert "committed by: root (uid 0)" in shown
    # ...and a crafted committer is refused when read.
    key = layout.version_key("team", "ds", 0)
    rec = json.loads(api.repo.store.get(key))
    rec["committed_by"] = {"user": "x/../y", "uid": -1}
    api.repo.store.put(key, encode_record(rec))
    r = run_artfs("show", "team/ds:v0", check=False)
    assert r.returncode == 2 and "committed_by" in r.stderr
    api.repo.store.put(key, encode_record({**rec, "committed_by": {"user": "root", "uid": 0}}))

    # A crafted project record naming an owner is refused by the CLI in one line.
    api.repo.store.put(
        layout.project_key("evil"), encode_record({"visibility": "open", "owner": "alice"})
    )
    r = run_artfs("project", "show", "evil", check=False)
    assert r.returncode == 2 and "'owner' is refused" in r.stderr


@pytest.mark.parametrize("store_url", ["local"], indirect=True)
def test_credentials_warning_only_for_a_config_others_can_read(
    store_url: str, cache_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "config.toml"
    monkeypatch.setenv("ARTFS_CONFIG", str(config))
    config.write_text('store = "/x"\n[object_store]\nregion = "eu"\n')
    config.chmod(0o644)
    assert credentials_warning(load_settings()) is None  # no secret in it
    config.write_text('store = "/x"\n[object_store]\nsecret_access_key = "k"\n')
    assert "readable by others" in (credentials_warning(load_settings()) or "")
    with mounted_here(tmp_path, store_url) as m:
        assert "readable by others" in m.log_text()  # the daemon says so at start
    config.chmod(0o600)
    assert credentials_warning(load_settings()) is None
