"""Server processes for the tests and benchmarks, started and stopped one way.

SeaweedFS (s3server.py), fake-gcs-server and its front (gcsserver.py) and
Azurite (azureserver.py) each bind 127.0.0.1 on a free port, log to a file in
their data directory, run in a session of their own (so a signal to the test
run does not reach them first), are waited for until they answer, and are
stopped by the pid this run started, SIGTERM first.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn(
    args: Sequence[str],
    data_dir: Path,
    log_name: str,
    *,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.Popen:
    """Start a server with its output in ``data_dir/log_name``; stop it with ``stop_process``."""
    data_dir.mkdir(parents=True, exist_ok=True)
    with open(data_dir / log_name, "wb") as log:
        return subprocess.Popen(
            list(args),
            cwd=cwd or data_dir,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )


def wait_ready(
    proc: subprocess.Popen,
    log: Path,
    what: str,
    ready: Callable[[], bool],
    *,
    timeout: float,
    interval: float = 0.1,
) -> None:
    """Return once ``ready()`` is true. It may raise while the server comes up
    (the last error goes into the timeout's message); a server that exits
    fails at once, with the end of its log."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace")[-3000:] if log.exists() else "(no log)"
            raise RuntimeError(f"{what} exited with {proc.returncode}:\n{tail}")
        try:
            if ready():
                return
        except Exception as e:  # not up yet
            last = e
        time.sleep(interval)
    raise RuntimeError(f"{what} not ready in {timeout}s: {last}")


def stop_process(proc: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL after 15 s: only the process this run started, by its pid."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=15)


@contextlib.contextmanager
def exported(env: dict[str, str]) -> Iterator[None]:
    """``env`` in os.environ for the block (fixtures: CLI subprocesses inherit it)."""
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
