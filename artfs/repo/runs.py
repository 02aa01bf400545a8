"""Lineage: runs, the versions they used, the versions they logged.

The graph is bipartite (runs and versions) and is walked from either side,
as in W&B: ``logged_by`` / ``used_by`` from a version, ``used_artifacts`` /
``logged_artifacts`` from a run. Edges are empty marker objects, so recording
one is a single idempotent put and needs no read-modify-write.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from artfs import names
from artfs.objects import NotFound
from artfs.repo import layout
from artfs.repo.records import NotFoundError, RepoError, Version
from artfs.repo.registry import Repo, encode_record

RUN_ENV = "ARTFS_RUN"


@dataclass
class Run:
    id: str
    command: list[str]
    host: str
    user: str
    start: float
    end: float | None = None
    exit_code: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    name: str = ""
    cwd: str = ""
    git_commit: str | None = None

    def to_record(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "command": self.command,
            "host": self.host,
            "user": self.user,
            "start": self.start,
            "end": self.end,
            "exit_code": self.exit_code,
            "name": self.name,
            "cwd": self.cwd,
            "git_commit": self.git_commit,
            **({"extra": self.extra} if self.extra else {}),
        }

    @classmethod
    def from_record(cls, rec: dict[str, Any]) -> Run:
        """A run from its stored record; fields of the wrong type are dropped, not trusted."""

        def text(key: str) -> str:
            value = rec.get(key)
            return value if isinstance(value, str) else ""

        def number(key: str) -> float | None:
            value = rec.get(key)
            ok = isinstance(value, int | float) and not isinstance(value, bool)
            return float(value) if ok else None

        command = rec.get("command")
        exit_code = rec.get("exit_code")
        extra = rec.get("extra")
        return cls(
            check_run_id(text("id")),
            [c for c in command if isinstance(c, str)] if isinstance(command, list) else [],
            text("host"),
            text("user"),
            number("start") or 0.0,
            number("end"),
            exit_code if isinstance(exit_code, int) and not isinstance(exit_code, bool) else None,
            dict(extra) if isinstance(extra, dict) else {},
            text("name"),
            text("cwd"),
            text("git_commit") or None,
        )


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S-", time.gmtime()) + uuid.uuid4().hex[:8]


def check_run_id(run_id: str) -> str:
    return names.check_name(run_id, "run id")


def _git_commit(cwd: str) -> str | None:
    """The commit checked out in ``cwd``, if it is a git work tree (as W&B records)."""
    try:
        out = subprocess.run(
            ["git", "-C", cwd, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    commit = out.stdout.strip()
    return commit if out.returncode == 0 and len(commit) in (40, 64) else None


def start_run(repo: Repo, command: list[str], name: str = "") -> Run:
    repo.ensure_config()
    try:
        user = getpass.getuser()
    except (OSError, KeyError):
        user = str(os.getuid())
    cwd = os.getcwd()
    run_id = new_run_id()
    run = Run(
        run_id,
        command,
        socket.gethostname(),
        user,
        time.time(),
        name=name or run_id,
        cwd=cwd,
        git_commit=_git_commit(cwd),
    )
    repo.store.put(layout.run_key(run.id), encode_record(run.to_record()), if_absent=True)
    return run


def finish_run(repo: Repo, run: Run, exit_code: int) -> Run:
    run.end = time.time()
    run.exit_code = exit_code
    repo.store.put(layout.run_key(run.id), encode_record(run.to_record()))
    return run


def get_run(repo: Repo, run_id: str) -> Run:
    check_run_id(run_id)
    try:
        rec = json.loads(repo.store.get(layout.run_key(run_id)))
    except NotFound:
        raise NotFoundError(f"no run {run_id!r}") from None
    except ValueError as e:
        raise RepoError(f"corrupt run record {run_id!r}: {e}") from None
    if not isinstance(rec, dict) or rec.get("id") != run_id:
        raise RepoError(f"corrupt run record {run_id!r}")
    try:
        return Run.from_record(rec)
    except names.BadName as e:
        raise RepoError(f"corrupt run record {run_id!r}: {e}") from None


def list_runs(repo: Repo) -> list[Run]:
    """Every run with a readable record, oldest first."""
    out = []
    for obj in repo.store.list("runs/").objects:
        run_id = layout.key_basename(obj.key).removesuffix(".json")
        with contextlib.suppress(RepoError, names.BadName):
            out.append(get_run(repo, run_id))
    return sorted(out, key=lambda r: r.start)


_warned: set[str] = set()


def active_run_id(repo: Repo) -> str | None:
    """The run named by ``ARTFS_RUN``, if it is one this store knows.

    A stale or unknown id (a leftover variable, another store's run) warns once
    per process and records nothing, rather than fail the caller's work.
    """
    run_id = os.environ.get(RUN_ENV) or None
    if run_id is None:
        return None
    try:
        get_run(repo, run_id)
        return run_id
    except (RepoError, names.BadName) as e:
        if run_id not in _warned:
            _warned.add(run_id)
            print(f"artfs: warning: {RUN_ENV}={run_id!r} ignored: {e}", file=sys.stderr)
        return None


def record_use(repo: Repo, run_id: str, version: Version) -> None:
    check_run_id(run_id)
    repo.store.put(
        layout.run_used_key(run_id, version.project, version.artifact, version.number), b""
    )


def record_log(repo: Repo, run_id: str, version: Version) -> None:
    check_run_id(run_id)
    repo.store.put(
        layout.run_logged_key(run_id, version.project, version.artifact, version.number), b""
    )


def _versions_under(repo: Repo, prefix: str) -> list[Version]:
    out = []
    for obj in repo.store.iter_objects(prefix):
        rest = obj.key[len(prefix) :].split("/")
        if len(rest) != 3 or not rest[2].isdigit():
            continue
        try:
            out.append(repo.version(rest[0], rest[1], int(rest[2])))
        except (NotFoundError, RepoError):
            continue  # the version was deleted since; the edge goes with it
    return sorted(out, key=lambda v: (v.project, v.artifact, v.number))


def used_artifacts(repo: Repo, run_id: str) -> list[Version]:
    return _versions_under(repo, layout.run_used_prefix(run_id))


def logged_artifacts(repo: Repo, run_id: str) -> list[Version]:
    return _versions_under(repo, layout.run_logged_prefix(run_id))


def logged_by(repo: Repo, version: Version) -> Run | None:
    """The run that logged ``version``; None if none did or its record is gone."""
    if not version.logged_by:
        return None
    try:
        return get_run(repo, version.logged_by)
    except (RepoError, names.BadName):
        return None


def used_by(repo: Repo, version: Version) -> list[Run]:
    """Runs that used ``version``: one existence check per run in the store."""
    runs = []
    for prefix in repo.store.list("runs/").prefixes:
        run_id = layout.key_basename(prefix)
        key = layout.run_used_key(run_id, version.project, version.artifact, version.number)
        if repo.store.exists(key):
            try:
                runs.append(get_run(repo, run_id))
            except (RepoError, names.BadName):
                continue
    return sorted(runs, key=lambda r: r.start)
