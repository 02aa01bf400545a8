"""Mount at boot: the unit files, sd_notify readiness, clean stop, the fstab helper."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from artfs.fs.mountpoints import mounted_fs_type, wait_for_exit
from tests.mounting import artfs_cli

ROOT = Path(__file__).resolve().parent.parent
UNITS = sorted((ROOT / "systemd").rglob("*.service"))
VENV_ARTFS = Path(sys.executable).parent / "artfs"


def test_there_are_units() -> None:
    assert {p.relative_to(ROOT / "systemd").as_posix() for p in UNITS} >= {
        "artfs.service",
        "user/artfs.service",
    }


@pytest.mark.parametrize("unit", UNITS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_unit_verifies(unit: Path, tmp_path: Path) -> None:
    # The unit names the installed /usr/local/bin/artfs; verify checks that
    # commands exist, so point it at this checkout's artfs.
    copy = tmp_path / unit.name
    copy.write_text(unit.read_text().replace("/usr/local/bin/artfs", str(VENV_ARTFS)))
    env = dict(os.environ)
    cmd = ["systemd-analyze", "verify", "--man=no", str(copy)]
    if unit.parent.name == "user":
        runtime = tmp_path / "xdg"
        runtime.mkdir(mode=0o700)
        env["XDG_RUNTIME_DIR"] = str(runtime)
        cmd.insert(1, "--user")
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=60)
    complaints = [line for line in (r.stdout + r.stderr).splitlines() if copy.name in line]
    assert r.returncode == 0 and not complaints, r.stdout + r.stderr


def test_system_unit_settings() -> None:
    text = (ROOT / "systemd/artfs.service").read_text()
    for line in (
        "Type=notify",
        "Restart=on-failure",
        "CacheDirectory=artfs",
        "StateDirectory=artfs",
        "ConfigurationDirectory=artfs",
    ):
        assert line in text.splitlines(), line
    exec_start = next(x for x in text.splitlines() if x.startswith("ExecStart="))
    assert "--system" in exec_start and "allow_other" in exec_start and "/mnt/art" in exec_start
    for forbidden in ("PrivateTmp=", "ProtectSystem=", "ProtectHome=", "PrivateMounts="):
        assert not any(x.startswith(forbidden) for x in text.splitlines()), forbidden


@contextlib.contextmanager
def notify_socket(path: Path):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    try:
        yield sock
    finally:
        sock.close()


def receive(sock: socket.socket, timeout: float) -> list[str]:
    sock.settimeout(timeout)
    try:
        return sock.recv(4096).decode().splitlines()
    except TimeoutError:
        return []


def daemon_env(artfs_env: dict[str, str], notify: Path) -> dict[str, str]:
    env = dict(artfs_env)
    env["NOTIFY_SOCKET"] = str(notify)
    return env


@contextlib.contextmanager
def foreground_daemon(mnt: Path, env: dict[str, str]):
    """``artfs mount --foreground`` as systemd runs it; stopped and unmounted at the end."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "artfs.cli", "mount", "--foreground", str(mnt)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if mounted_fs_type(mnt) is not None:
            subprocess.run(["fusermount3", "-u", "-z", str(mnt)], capture_output=True)


def test_ready_only_once_the_mount_answers_and_stop_keeps_staging(
    artfs_env, tmp_path: Path
) -> None:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    env = daemon_env(artfs_env, tmp_path / "notify.sock")
    with notify_socket(tmp_path / "notify.sock") as sock:
        with foreground_daemon(mnt, env) as proc:
            msg = receive(sock, 60)
            # The moment READY=1 arrives, the mount must already answer.
            assert "READY=1" in msg, msg
            assert mounted_fs_type(mnt) == "fuse.artfs"
            assert os.stat(mnt).st_ino == 1
            os.mkdir(mnt / "proj")
            os.mkdir(mnt / "proj/ds")
            (mnt / "proj/ds/staging/kept.txt").write_text("staged")
            proc.send_signal(signal.SIGTERM)
            assert "STOPPING=1" in receive(sock, 30)
            assert proc.wait(timeout=60) == 0
        assert mounted_fs_type(mnt) is None
        # staged data survives the stop and shows on the next start
        with foreground_daemon(mnt, env):
            assert "READY=1" in receive(sock, 60)
            assert (mnt / "proj/ds/staging/kept.txt").read_text() == "staged"


# The mountpoint is refused before the store is opened: one store kind is enough.
@pytest.mark.parametrize("store_url", ["local"], indirect=True)
def test_no_ready_when_the_mount_fails(artfs_env, tmp_path: Path) -> None:
    env = daemon_env(artfs_env, tmp_path / "notify.sock")
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    with notify_socket(tmp_path / "notify.sock") as sock:
        proc = subprocess.run(
            [sys.executable, "-m", "artfs.cli", "mount", "--foreground", str(not_a_dir)],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode != 0
        messages = []
        while msg := receive(sock, 0.5):
            messages += msg
        assert "READY=1" not in messages


@pytest.mark.parametrize("store_url", ["local"], indirect=True)  # reads the store as a directory
def test_fstab_helper_mounts_like_mount_8(artfs_env, store_url, tmp_path: Path) -> None:
    helper = ROOT / "systemd/mount.fuse.artfs"
    assert os.access(helper, os.X_OK)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    env = dict(artfs_env)
    env["ARTFS_BIN"] = str(VENV_ARTFS)
    env["PATH"] = f"{VENV_ARTFS.parent}:{env['PATH']}"
    options = (
        f"rw,nofail,_netdev,x-systemd.automount,default_permissions,"
        f"cache={tmp_path / 'cache'},state={tmp_path / 'state'}"
    )
    r = subprocess.run(
        [str(helper), store_url, str(mnt), "-o", options],
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
    )
    try:
        assert r.returncode == 0, r.stderr
        assert mounted_fs_type(mnt) == "fuse.artfs"
        os.mkdir(mnt / "proj")
        assert (Path(store_url) / "projects/proj/project.json").exists()
    finally:
        pid_file = tmp_path / "state/mounts" / (str(mnt).strip("/").replace("/", "_") + ".pid")
        pid = int(pid_file.read_text()) if pid_file.exists() else None
        artfs_cli("umount", str(mnt), "--state", str(tmp_path / "state"), env=env)
        if mounted_fs_type(mnt) is not None:
            subprocess.run(["fusermount3", "-u", "-z", str(mnt)], capture_output=True)
        if pid is not None and not wait_for_exit(pid, 10):
            os.kill(pid, signal.SIGKILL)
    assert mounted_fs_type(mnt) is None
