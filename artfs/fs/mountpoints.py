"""Mountpoints and their daemons, seen from outside: what ``artfs umount``,
``artfs mount``'s checks and the tests need, without pyfuse3 or trio (a
process that only unmounts, or only asks what is mounted, does not pay for
importing them).
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from artfs.config import load_settings
from artfs.fs import XATTR_PREFIX

log = logging.getLogger("artfs.fs")

EXIT_TIMEOUT = 60.0


class MountError(Exception):
    """Mounting or unmounting failed; the message says why."""


def mount_files(state_dir: Path, mountpoint: Path) -> tuple[Path, Path]:
    """(pid file, log file) of the mount on ``mountpoint``."""
    name = str(mountpoint).strip("/").replace("/", "_") or "root"
    return state_dir / "mounts" / f"{name}.pid", state_dir / "logs" / f"mount-{name}.log"


# -- the mountpoint -------------------------------------------------------------------


def _unescape(field_: str) -> str:
    # /proc/self/mountinfo writes space, tab, newline and backslash as \ooo.
    out, i = [], 0
    while i < len(field_):
        if field_[i] == "\\" and i + 3 < len(field_) and field_[i + 1 : i + 4].isdigit():
            out.append(chr(int(field_[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field_[i])
            i += 1
    return "".join(out)


def mounted_fs_type(mountpoint: Path) -> str | None:
    """The filesystem type mounted on ``mountpoint`` (e.g. ``fuse.artfs``), or None."""
    target = str(mountpoint)
    found = None
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            parts = left.split()
            if len(parts) >= 5 and _unescape(parts[4]) == target:
                found = right.split()[0]  # the last mount on a path wins
    return found


def is_stale(mountpoint: Path) -> bool:
    # statfs always reaches the daemon; a stat may be answered from the kernel's cache.
    try:
        os.statvfs(mountpoint)
    except OSError as e:
        # ECONNABORTED instead when the daemon died with a request in flight.
        return e.errno in (errno.ENOTCONN, errno.ECONNABORTED)
    return False


def _detach(mountpoint: Path) -> None:
    """Lazily unmount whatever is on ``mountpoint``; raises MountError if nothing works."""
    errors = []
    for cmd in (["fusermount3", "-u", "-z", str(mountpoint)], ["umount", "-l", str(mountpoint)]):
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired) as e:
            errors.append(f"{cmd[0]}: {e}")
            continue
        if r.returncode == 0:
            return
        errors.append(r.stderr.strip() or f"{cmd[0]} exited {r.returncode}")
    raise MountError(f"cannot unmount {mountpoint}: {'; '.join(errors)}")


def prepare_mountpoint(mountpoint: Path) -> None:
    """Make ``mountpoint`` ready to mount on: recover a dead mount, refuse a live one."""
    if is_stale(mountpoint):
        log.warning("%s: a previous daemon died (not connected); detaching it", mountpoint)
        print(f"artfs: {mountpoint}: recovering from a dead mount", file=sys.stderr)
        _detach(mountpoint)
    if not mountpoint.is_dir():
        raise MountError(f"cannot mount on {mountpoint}: no such directory, or not a directory")
    fs_type = mounted_fs_type(mountpoint)
    if fs_type is not None and fs_type.startswith("fuse"):
        raise MountError(f"{mountpoint} is already mounted ({fs_type}); artfs umount it first")


# -- the daemon behind a mountpoint ----------------------------------------------------


def _daemon_pid(mountpoint: Path, pid_file: Path) -> int | None:
    """The serving daemon's pid: asked of the mount itself, else from the pid file."""
    with contextlib.suppress(OSError, ValueError, KeyError):
        return int(json.loads(os.getxattr(mountpoint, XATTR_PREFIX + "stats"))["pid"])
    with contextlib.suppress(OSError, ValueError):
        return int(pid_file.read_text().strip())
    return None


def process_alive(pid: int) -> bool:
    """True while ``pid`` runs; a zombie (no parent reaped it yet) counts as gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def wait_for_exit(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while process_alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def umount_command(args: Any) -> None:
    settings = load_settings(args.store, args.cache, getattr(args, "state", None))
    mountpoint = Path(os.path.abspath(args.mountpoint))
    pid_file, log_file = mount_files(settings.state_dir, mountpoint)
    stale = is_stale(mountpoint)
    pid = None if stale else _daemon_pid(mountpoint, pid_file)
    if stale or getattr(args, "lazy", False):
        _detach(mountpoint)
    elif mounted_fs_type(mountpoint) is None:
        raise MountError(f"{mountpoint} is not mounted")
    else:
        r = subprocess.run(
            ["fusermount3", "-u", str(mountpoint)], capture_output=True, text=True, timeout=60
        )
        if r.returncode != 0:
            r2 = subprocess.run(
                ["umount", str(mountpoint)], capture_output=True, text=True, timeout=60
            )
            if r2.returncode != 0:
                reason = r.stderr.strip() or r2.stderr.strip()
                raise MountError(f"cannot unmount {mountpoint}: {reason} (try --lazy)")
    if pid is not None and not wait_for_exit(pid, EXIT_TIMEOUT):
        raise MountError(
            f"{mountpoint} is unmounted but daemon {pid} has not exited; see {log_file}"
        )
