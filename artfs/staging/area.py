"""One artifact's staging area: where its parts live, its type and its base.

Each (project, artifact) has a ``StagingArea`` under the state directory::

    staging/<project>/<artifact>/
        files/      what was written: an upper layer over the base version
        control/    .metadata.json .description .aliases .base, as plain files
        state.db    marks over the base, the base itself, digests of files
                    hashed as they were written, the type (state.py)
        status      what the last commit did or why it failed (read as .status)
        lock        flock held by a commit
        commit/     journal.json and hard links while a commit runs
        copying/    copies in progress, renamed into files/ when whole

Everything lives on disk, so a restart or a crash loses nothing staged. The
jobs are split by module: ``overlay`` (the merged view and its changes),
``handles`` (open files, hashing as written), ``control`` (control files),
``commit`` (commit, journal, recovery).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import threading
import time
from pathlib import Path

from artfs import names
from artfs.manifest import Manifest
from artfs.objects import StoreError
from artfs.repo import NotFoundError, Repo, RepoError, Version
from artfs.staging.commit import Commits
from artfs.staging.control import Controls
from artfs.staging.errors import StagingError
from artfs.staging.handles import Handles, StagedFile
from artfs.staging.nowait import WouldBlock, acquired, waiting_forbidden
from artfs.staging.overlay import CONTROL_FILES, Overlay
from artfs.staging.state import StateDb

DEFAULT_TYPE = "dataset"
STALE_COPY = 3600.0


def _remove_stale(copying: Path) -> None:
    """Copies a killed daemon left (another daemon may be copying right now)."""
    now = time.time()
    for p in copying.iterdir():
        with contextlib.suppress(OSError):
            if now - p.lstat().st_mtime > STALE_COPY:
                p.unlink()


class StagingArea(Overlay, Handles, Controls, Commits):
    """The staging directory of one artifact. Thread-safe; blocking calls."""

    log = logging.getLogger("artfs.staging")

    def __init__(self, repo: Repo, project: str, artifact: str, root: Path) -> None:
        self.repo = repo
        self.project = project
        self.artifact = artifact
        self.root = root
        self.files = root / "files"
        self.control = root / "control"
        self.commit_dir = root / "commit"
        for d in (self.files, self.control):
            d.mkdir(parents=True, exist_ok=True)
        for name in CONTROL_FILES:
            (self.control / name).touch(exist_ok=True)
        # Every upper-layer call is relative to this descriptor (see overlay).
        self._fd = os.open(self.files, os.O_RDONLY | os.O_DIRECTORY)
        # Copies in progress (copy-up, recovery): beside the upper layer, never in it.
        copying = root / "copying"
        copying.mkdir(exist_ok=True)
        self._copy_fd = os.open(copying, os.O_RDONLY | os.O_DIRECTORY)
        _remove_stale(copying)
        # Namespace changes, writes and commits of this area, one at a time
        # (``locked()`` where a call may come from the event loop).
        self._lock = threading.RLock()
        self._idle = threading.Condition(self._lock)
        self.state = StateDb(root / "state.db")
        self._open: dict[int, set[StagedFile]] = {}
        self._base: tuple[Version, Manifest] | None = None
        self._base_key: str | None = None
        with self._lock, self._commit_lock():
            self._recover()

    def locked(self) -> contextlib.AbstractContextManager[None]:
        """``with self._lock``; on the event loop (nowait.py), only if it is free now."""
        return acquired(self._lock, f"staging of {self.ref}")

    @property
    def ref(self) -> str:
        return f"{self.project}/{self.artifact}"

    def close(self) -> None:
        self.state.close()
        if self._fd >= 0:
            os.close(self._fd)
            os.close(self._copy_fd)
            self._fd = self._copy_fd = -1

    # -- type --------------------------------------------------------------

    def artifact_type(self) -> str:
        try:
            return self.repo.artifact(self.project, self.artifact).type
        except NotFoundError:
            return self.state.kv("type") or DEFAULT_TYPE

    def set_type(self, type: str) -> None:
        names.check_name(type, "artifact type")
        try:
            current = self.repo.artifact(self.project, self.artifact).type
        except NotFoundError:
            self.state.set_kv("type", type)
            return
        if current != type:
            raise StagingError(
                errno.EPERM,
                f"{self.ref} is of type {current!r}; the type is set at the first commit",
            )

    # -- the base ----------------------------------------------------------

    def base(self) -> tuple[Version, Manifest] | None:
        key = self.state.kv("base")
        if key is None:
            self._base, self._base_key = None, None
            return None
        if key != self._base_key:
            if waiting_forbidden():
                raise WouldBlock(f"{self.ref}: base {key} is not read yet")
            ref = names.Ref.parse(key)
            try:
                version = self.repo.version(ref.project, ref.artifact, int(ref.selector or "0"))
                self._base = (version, self.repo.manifest(version))
            except (RepoError, StoreError) as e:
                self.log.warning("%s: base %s is unreadable: %s", self.ref, key, e)
                self._base = None
            self._base_key = key
        return self._base
