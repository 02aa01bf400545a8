"""Every staging area of one state directory: opened on first use, made and
removed with the artifacts that exist only here (``mkdir proj/name``)."""

from __future__ import annotations

import errno
import os
import shutil
import threading
from pathlib import Path

from artfs import names
from artfs.repo import ConflictError, NotFoundError, Repo
from artfs.staging.area import StagingArea
from artfs.staging.errors import StagingError


class StagingManager:
    """Every staging area of one state directory, opened on first use."""

    def __init__(self, repo: Repo, state_dir: Path) -> None:
        self.repo = repo
        self.root = Path(state_dir) / "staging"
        self.root.mkdir(parents=True, exist_ok=True)
        self._areas: dict[tuple[str, str], StagingArea] = {}
        self._lock = threading.Lock()

    def area(self, project: str, artifact: str) -> StagingArea:
        names.check_name(project, "project name")
        names.check_name(artifact, "artifact name")
        with self._lock:
            a = self._areas.get((project, artifact))
            if a is None:
                a = StagingArea(self.repo, project, artifact, self.root / project / artifact)
                self._areas[(project, artifact)] = a
            return a

    def local_artifacts(self, project: str) -> list[str]:
        """Artifacts made by mkdir here and not committed yet (or with staging in use)."""
        try:
            entries = os.listdir(self.root / project)
        except (FileNotFoundError, NotADirectoryError):
            return []
        out = []
        for name in entries:
            try:
                names.check_name(name)
            except names.BadName:
                continue
            out.append(name)
        return sorted(out)

    def create_artifact(self, project: str, artifact: str) -> StagingArea:
        """``mkdir proj/name``: the artifact exists here until its first commit stores it."""
        names.check_name(artifact, "artifact name")
        self.repo.project(project)
        try:
            self.repo.artifact(project, artifact)
        except NotFoundError:
            pass
        else:
            raise StagingError(errno.EEXIST, f"artifact {project}/{artifact} exists")
        if artifact in self.local_artifacts(project):
            raise StagingError(errno.EEXIST, f"artifact {project}/{artifact} exists")
        return self.area(project, artifact)

    def remove_artifact(self, project: str, artifact: str) -> None:
        """``rmdir proj/name`` of an artifact that was never committed and stages nothing."""
        try:
            self.repo.artifact(project, artifact)
        except NotFoundError:
            pass
        else:
            raise StagingError(errno.EPERM, f"{project}/{artifact} has versions: use artfs delete")
        if artifact not in self.local_artifacts(project):
            raise StagingError(errno.ENOENT, f"no artifact {project}/{artifact}")
        area = self.area(project, artifact)
        with area._lock:
            if not area.is_empty():
                raise StagingError(errno.ENOTEMPTY, f"{project}/{artifact} has staged files")
            area.close()
            with self._lock:
                self._areas.pop((project, artifact), None)
            shutil.rmtree(area.root)

    def create_project(self, name: str, group: str | None = None) -> None:
        names.check_name(name, "project name")
        try:
            self.repo.create_project(name, group=group, exist_ok=False)
        except ConflictError as e:
            raise StagingError(errno.EEXIST, str(e)) from None

    def close(self) -> None:
        with self._lock:
            for a in self._areas.values():
                a.close()
            self._areas.clear()
