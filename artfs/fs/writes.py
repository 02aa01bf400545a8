"""Changes above staging: mkdir of projects and artifacts, aliases as symlinks.

The read side's listing nodes refuse every change; these subclasses take
the ones that mean something, and ``install`` puts them into an inode table
together with the real ``staging/``.
"""

from __future__ import annotations

import errno
import logging
import os
import time
from pathlib import Path
from typing import Any

import pyfuse3

from artfs import names
from artfs.fs.access import group_name
from artfs.fs.draft_nodes import install as install_drafts
from artfs.fs.nodes import (
    ROOT_INODE,
    AliasNode,
    ArtifactNode,
    InodeTable,
    Node,
    ProjectNode,
    RootNode,
    fuse_error,
)
from artfs.fs.staging_nodes import StagingNode, reasons
from artfs.repo import Version
from artfs.repo.records import Artifact
from artfs.staging import StagingError, StagingManager

log = logging.getLogger("artfs.fs.writes")


def _refresh(node: Any) -> None:
    """Make a listing node read the store again on its next use."""
    node._listed_at = -1.0


def _made(node: Any, name: str) -> pyfuse3.EntryAttributes:
    """The attributes of what a change just made in listing ``node``."""
    _refresh(node)
    child = node.lookup(name)
    if child is None:
        raise fuse_error(errno.EIO)
    return child.attr()


class WritableRoot(RootNode):
    def mkdir(self, name: str, mode: int, ctx: Any) -> pyfuse3.EntryAttributes:
        # A new project is private to the caller's primary group.
        group = group_name(ctx.gid) if ctx is not None else None
        with reasons(f"mkdir project {name!r}"):
            self.table.staging.create_project(name, group)  # type: ignore[attr-defined]
        log.info("project %s made, private to group %s", name, group)
        return _made(self, name)


class WritableProject(ProjectNode):
    def list_children(self) -> dict[str, Node]:
        out = super().list_children()
        manager: StagingManager = self.table.staging  # type: ignore[attr-defined]
        for name in manager.local_artifacts(self.name):
            if name not in out:
                area = manager.area(self.name, name)
                art = Artifact(self.name, name, area.artifact_type(), _created(area.root))
                out[name] = self.table.intern(
                    ("artifact", self.name, name), self.table.artifact_class, self, art
                )
        return out

    def mkdir(self, name: str, mode: int, ctx: Any) -> pyfuse3.EntryAttributes:
        with reasons(f"mkdir artifact {self.name}/{name}"):
            self.ctx.access.check_write(self.project_access(), ctx, f"mkdir {self.name}/{name}")
            self.table.staging.create_artifact(self.name, name)  # type: ignore[attr-defined]
        return _made(self, name)

    def rmdir(self, name: str, ctx: Any) -> None:
        with reasons(f"rmdir artifact {self.name}/{name}"):
            self.ctx.access.check_write(self.project_access(), ctx, f"rmdir {self.name}/{name}")
            self.table.staging.remove_artifact(self.name, name)  # type: ignore[attr-defined]
        _refresh(self)


def _created(path: Path) -> float:
    try:
        return os.stat(path).st_mtime
    except OSError:
        return time.time()


class WritableArtifact(ArtifactNode):
    """Alias links: ``ln -s v3 best``, ``rm best``, ``ln -sfn v4 best``, ``mv tmp best``."""

    def refresh(self) -> None:
        _refresh(self)

    def _version_target(self, target: str) -> Version:
        number = names.version_number(target.removeprefix("./").rstrip("/"))
        self.refresh()
        version = self.version_record(number) if number is not None else None
        if version is None:
            raise StagingError(
                errno.EINVAL,
                f"an alias must link to an existing version (v0, v1, …), not {target!r}",
            )
        return version

    def _may_change(self, ctx: Any, what: str) -> None:
        """Alias changes are the project group's (all users' in an open project)."""
        self.ctx.access.check_write(self.project_access(), ctx, what)

    def _check_alias(self, name: str) -> None:
        if name == "latest":
            raise StagingError(errno.EPERM, "'latest' is moved by commits only")
        names.check_alias(name)

    def symlink(self, name: str, target: str, ctx: Any) -> pyfuse3.EntryAttributes:
        with reasons(f"ln -s {target} {self.describe()}/{name}"):
            self._may_change(ctx, f"ln -s {target} {self.describe()}/{name}")
            self._check_alias(name)
            version = self._version_target(target)
            if self.lookup(name) is not None:
                raise StagingError(errno.EEXIST, f"{name} exists")
            self.ctx.repo.set_alias(version, name)
            log.info("alias %s:%s -> v%d", self.describe(), name, version.number)
        return _made(self, name)

    def _alias(self, name: str) -> AliasNode:
        """The alias link ``name``, which may be changed by hand."""
        node = self.lookup(name)
        if node is None:
            raise StagingError(errno.ENOENT, f"no {name} in {self.describe()}")
        if not isinstance(node, AliasNode):
            raise StagingError(errno.EPERM, f"{name} is not an alias")
        self._check_alias(name)
        return node

    def unlink(self, name: str, ctx: Any) -> None:
        with reasons(f"rm {self.describe()}/{name}"):
            self._may_change(ctx, f"rm {self.describe()}/{name}")
            self._alias(name)
            art = self.artifact
            self.ctx.repo.remove_alias(art.project, art.name, name)
            log.info("alias %s:%s removed", self.describe(), name)
        self.refresh()

    def rmdir(self, name: str, ctx: Any) -> None:
        with reasons(f"rmdir {self.describe()}/{name}"):
            if self.lookup(name) is None:
                raise StagingError(errno.ENOENT, f"no {name} in {self.describe()}")
            raise StagingError(errno.EPERM, f"{name}: delete versions with `artfs delete`")

    def mkdir(self, name: str, mode: int, ctx: Any) -> pyfuse3.EntryAttributes:
        with reasons(f"mkdir {self.describe()}/{name}"):
            self._may_change(ctx, f"mkdir {self.describe()}/{name}")
            raise StagingError(errno.EPERM, "an artifact directory holds versions and aliases only")

    def rename(
        self, name_old: str, new_parent_inode: int, name_new: str, flags: int, ctx: Any
    ) -> None:
        if new_parent_inode != self.inode:
            raise fuse_error(errno.EXDEV)
        with reasons(f"mv {self.describe()}/{name_old} {name_new}"):
            self._may_change(ctx, f"mv {self.describe()}/{name_old} {name_new}")
            node = self._alias(name_old)
            self._check_alias(name_new)
            existing = self.lookup(name_new)
            if existing is not None:
                if flags & 1:  # RENAME_NOREPLACE
                    raise StagingError(errno.EEXIST, f"{name_new} exists")
                if not isinstance(existing, AliasNode):
                    raise StagingError(errno.EPERM, f"{name_new} is not an alias")
            if flags & ~1:
                raise StagingError(errno.EINVAL, "only plain renames of aliases")
            art = self.artifact
            version = self.ctx.repo.move_alias(art.project, art.name, name_old, name_new)
            # The kernel keeps the moved link's inode under the new name.
            node.alias = name_new
            key = ("alias", art.project, art.name)
            self.table.rekey((*key, name_old), (*key, name_new))
            log.info(
                "alias %s:%s -> v%d (was %s)", art.qualified, name_new, version.number, name_old
            )
        self.refresh()


def install(table: InodeTable, state_dir: Path) -> StagingManager:
    """Give ``table`` the write side; returns the staging manager (close it at exit)."""
    manager = StagingManager(table.ctx.repo, state_dir)
    table.staging = manager  # type: ignore[attr-defined]
    table.project_class = WritableProject
    table.artifact_class = WritableArtifact
    table.artifact_extras["staging"] = StagingNode
    install_drafts(table, state_dir)
    table.replace_root(WritableRoot(table, ROOT_INODE))
    return manager
