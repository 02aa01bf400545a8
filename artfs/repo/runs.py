"""Lineage: runs, the versions they used, the versions they logged.

The graph is bipartite (runs and versions) and is walked from either side,
as in W&B: ``logged_by`` / ``used_by`` from a version, ``used_artifacts`` /
``logged_artifacts`` from a run. Edges are empty marker objects, so recording
one is a single idempotent put and needs no read-modify-write.
"""

from __future__ import annotations

import getpass
import json
import os
import socket
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

    def to_record(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "command": self.command,
            "host": self.host,
            "user": self.user,
            "start": self.start,
            "end": self.end,
            "exit_code": self.exit_code,
            **({"extra": self.extra} if self.extra else {}),
        }

    @classmethod
    def from_record(cls, rec: dict[str, Any]) -> Run:
        return cls(
            rec["id"],
            list(rec.get("command") or []),
            rec.get("host", ""),
            rec.get("user", ""),
            float(rec.get("start", 0.0)),
            rec.get("end"),
            rec.get("exit_code"),
            dict(rec.get("extra") or {}),
        )


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S-", time.gmtime()) + uuid.uuid4().hex[:8]


def check_run_id(run_id: str) -> str:
    return names.check_name(run_id, "run id")


def start_run(repo: Repo, command: list[str]) -> Run:
    repo.ensure_config()
    try:
        user = getpass.getuser()
    except OSError:
        user = str(os.getuid())
    run = Run(new_run_id(), command, socket.gethostname(), user, time.time())
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
        return Run.from_record(json.loads(repo.store.get(layout.run_key(run_id))))
    except NotFound:
        raise NotFoundError(f"no run {run_id!r}") from None


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
    for obj in repo.store.iter_keys(prefix):
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
    return get_run(repo, version.logged_by) if version.logged_by else None


def used_by(repo: Repo, version: Version) -> list[Run]:
    """Runs that used ``version``: one existence check per run in the store."""
    runs = []
    for prefix in repo.store.list("runs/").prefixes:
        run_id = layout.key_basename(prefix)
        key = layout.run_used_key(run_id, version.project, version.artifact, version.number)
        if repo.store.exists(key):
            try:
                runs.append(get_run(repo, run_id))
            except (NotFoundError, names.BadName):
                continue
    return sorted(runs, key=lambda r: r.start)
