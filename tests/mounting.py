"""Real mounts for tests: ``artfs mount`` in the background, always unmounted.

    with mounted(tmp_path / "mnt", store_url=..., cache_dir=..., state_dir=...) as m:
        (m.path / "proj/ds/latest/a.txt").read_text()

    with mounted_here(tmp_path, store_url, env=artfs_env) as m:  # this test's dirs
        ...

    with mount_factory(tmp_path, store_url, env=artfs_env) as mount:  # many mounts
        one, two = mount(name="-one"), mount("--ttl", "1", name="-two")

The mount is made by the real CLI (so readiness, daemonizing and logging are
what users get) and undone in ``finally`` by ``artfs umount``; if that
fails, the mount is detached and the daemon this mount started is killed by
its pid, so a failing test never leaves a mount or a process behind.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Imports no pyfuse3: the lower tiers (t1, t2) import this module through
# conftest and run where pyfuse3 is not installed.
from artfs.fs import mountpoints


@dataclass
class Mount:
    path: Path
    pid: int
    log: Path
    state_dir: Path
    env: dict[str, str] = field(repr=False)

    def stats(self) -> dict[str, Any]:
        """The daemon's counters: reads, request sizes, cache fetches, verifications."""
        return json.loads(os.getxattr(self.path, "user.artfs.stats"))

    def requests(self) -> dict[str, int]:
        """Requests the daemon has answered so far, by opcode."""
        return {op: n for op, (n, _seconds) in self.stats()["ops"].items()}

    def options(self) -> set[str]:
        """The mount's options as the kernel shows them (``/proc/self/mounts``)."""
        for line in Path("/proc/self/mounts").read_text().splitlines():
            fields = line.split()
            if fields[1] == str(self.path):
                return set(fields[3].split(","))
        raise AssertionError(f"{self.path} is not mounted")

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def artfs_cli_on_tty(
    *args: str, env: dict[str, str], timeout: float = 120
) -> tuple[int, str, bytes]:
    """Run the real CLI with its stderr on a terminal (a pty), as a user sees
    it: (exit code, stdout, everything written to the terminal)."""
    import pty

    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "artfs.cli", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=slave,
        text=True,
    )
    os.close(slave)
    err = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO once the child closed its end
            break
        if not chunk:
            break
        err += chunk
    out, _ = proc.communicate(timeout=timeout)
    os.close(master)
    return proc.returncode, out, err


def artfs_cli(
    *args: str,
    env: dict[str, str],
    timeout: float = 120,
    check: bool = False,
    input: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run the real CLI in a subprocess; with ``check``, fail on a non-zero exit."""
    proc = subprocess.run(
        [sys.executable, "-m", "artfs.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        input=input,
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"artfs {' '.join(args)} exited {proc.returncode}:\n{proc.stderr}")
    return proc


def start_mount(
    mountpoint: Path,
    *,
    store_url: str,
    cache_dir: Path,
    state_dir: Path,
    env: dict[str, str] | None = None,
    args: Sequence[str] = (),
) -> Mount:
    """Run ``artfs mount``; the caller must ``stop_mount`` (``mounted`` does)."""
    mountpoint.mkdir(parents=True, exist_ok=True)
    env = dict(env if env is not None else os.environ)
    env.setdefault("ARTFS_CONFIG", str(state_dir / "config.toml"))
    proc = artfs_cli(
        "mount",
        str(mountpoint),
        "--store",
        store_url,
        "--cache",
        str(cache_dir),
        "--state",
        str(state_dir),
        *args,
        env=env,
        timeout=90,
    )
    pid_file, log_file = mountpoints.mount_files(state_dir, mountpoint.absolute())
    if proc.returncode != 0:
        log = log_file.read_text(errors="replace") if log_file.exists() else "(no log)"
        raise AssertionError(f"artfs mount exited {proc.returncode}:\n{proc.stderr}\nlog:\n{log}")
    pid = int(pid_file.read_text())
    return Mount(mountpoint.absolute(), pid, log_file, state_dir, env)


def stop_mount(m: Mount) -> None:
    """Unmount and make sure the daemon is gone, whatever state the mount is in."""
    try:
        if mountpoints.mounted_fs_type(m.path) is not None:
            proc = artfs_cli("umount", str(m.path), "--state", str(m.state_dir), env=m.env)
            if proc.returncode != 0:
                subprocess.run(["fusermount3", "-u", "-z", str(m.path)], capture_output=True)
    finally:
        if not mountpoints.wait_for_exit(m.pid, 10) and mountpoints.process_alive(m.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(m.pid, signal.SIGKILL)
            mountpoints.wait_for_exit(m.pid, 10)
        if mountpoints.mounted_fs_type(m.path) is not None:
            subprocess.run(["fusermount3", "-u", "-z", str(m.path)], capture_output=True)


def log_problems(text: str, allowed_errors: Sequence[str] | None = None) -> list[str]:
    """Lines of a daemon log that show a bug: tracebacks and ``unexpected``
    errors always; with ``allowed_errors``, also every ERROR line that
    contains none of those strings."""
    bad = []
    for line in text.splitlines():
        error = " ERROR " in line
        bug = "Traceback (most recent call last)" in line or (error and " unexpected " in line)
        strict = allowed_errors is not None and not any(a in line for a in allowed_errors)
        if bug or (error and strict):
            bad.append(line)
    return bad


@contextlib.contextmanager
def mounted(
    mountpoint: Path,
    *,
    store_url: str,
    cache_dir: Path,
    state_dir: Path,
    env: dict[str, str] | None = None,
    args: Sequence[str] = (),
    check_log: bool = True,
    allowed_errors: Sequence[str] | None = None,
) -> Iterator[Mount]:
    """A mount for the ``with`` block. On a clean exit the daemon's log is
    checked (``log_problems``): a traceback fails the test unless
    ``check_log=False``."""
    m = start_mount(
        mountpoint,
        store_url=store_url,
        cache_dir=cache_dir,
        state_dir=state_dir,
        env=env,
        args=args,
    )
    try:
        yield m
    except BaseException:
        stop_mount(m)
        raise
    stop_mount(m)
    if check_log:
        problems = log_problems(m.log_text(), allowed_errors)
        assert not problems, "the daemon logged:\n" + "\n".join(problems)


def mounted_here(
    tmp_path: Path,
    store_url: str,
    *,
    name: str = "",
    mountpoint: Path | None = None,
    cache_dir: Path | None = None,
    state_dir: Path | None = None,
    env: dict[str, str] | None = None,
    **kw: Any,
) -> contextlib.AbstractContextManager[Mount]:
    """``mounted`` on a test's own directories: ``tmp_path/mnt<name>``, with the
    cache ``tmp_path/cache<name>`` and the state ``tmp_path/state<name>`` unless
    given: each name is a machine of its own. With no name these are conftest's
    ``cache_dir`` and the state directory of its ``artfs_env``."""
    return mounted(
        mountpoint or tmp_path / f"mnt{name}",
        store_url=store_url,
        cache_dir=cache_dir or tmp_path / f"cache{name}",
        state_dir=state_dir or tmp_path / f"state{name}",
        env=env,
        **kw,
    )


@contextlib.contextmanager
def mount_factory(
    tmp_path: Path, store_url: str, **defaults: Any
) -> Iterator[Callable[..., Mount]]:
    """``mount(*options, name=None, **overrides)`` -> a Mount made by
    ``mounted_here`` with ``defaults`` (an override of None keeps the default);
    unnamed mounts go on ``mnt0``, ``mnt1``, ...; every one is unmounted when
    the block ends, whatever happened in it."""
    with contextlib.ExitStack() as stack:
        count = itertools.count()

        def mount(*options: str, name: str | None = None, **overrides: Any) -> Mount:
            opts = {**defaults, **{k: v for k, v in overrides.items() if v is not None}}
            url = opts.pop("store_url", store_url)
            if options:
                opts["args"] = options
            label = str(next(count)) if name is None else name
            return stack.enter_context(mounted_here(tmp_path, url, name=label, **opts))

        yield mount
