"""Who may do what in a shared mount: a project's visibility as owners and modes.

Under ``allow_other`` (the daemon adds ``default_permissions`` to it) the
kernel checks every access against the owners and modes the daemon reports,
so they carry the project's visibility (DESIGN.md, "Access"):

    visibility   project, artifact, staging/   version trees       who writes
    private      0770                          bits & 0770         the group
    public       0775                          bits & 0775         the group
    open         0777                          bits & 0777         everyone

Every node is owned by the mount's owner (uid) and the project's group
(gid); the root is 1777, so anyone may ``mkdir`` a project, which becomes
private to the caller's primary group. Version files keep their committed
permission bits under the mask (a 0600 file stays 0600); set-id bits never
show. A version tree's attributes are kept by the kernel for the listing
TTL only (not for ever, as without ``allow_other``), so a visibility change
reaches files already looked up within that TTL too.

Writes the kernel cannot judge from modes alone (an alias link, ``.commit``,
``mkdir`` of an artifact, through a mount without ``default_permissions``
too) are checked here against the caller's uid, gid and supplementary
groups (``/proc/<pid>/status``): ``check_write`` raises EACCES with the reason.

Owners and modes never come from the store: a project record names only a
visibility and a group, both checked when read (records.py), and a group
this machine does not know grants nothing (the mount's own group stands in).
"""

from __future__ import annotations

import contextlib
import errno
import grp
import logging
import stat
from dataclasses import dataclass
from typing import Any

import pyfuse3

from artfs.repo.records import Project, is_group
from artfs.staging import StagingError

log = logging.getLogger("artfs.fs.access")

ROOT_MODE = 0o1777
DIR_MODES = {"private": 0o770, "public": 0o775, "open": 0o777}


@dataclass(frozen=True)
class Caller:
    """The process behind a FUSE request."""

    uid: int
    gid: int
    groups: frozenset[int]

    def in_group(self, gid: int) -> bool:
        return gid == self.gid or gid in self.groups


def supplementary_groups(pid: int) -> frozenset[int]:
    """The ``Groups:`` of ``/proc/<pid>/status`` (empty if the process is gone)."""
    with contextlib.suppress(OSError, ValueError), open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("Groups:"):
                return frozenset(int(g) for g in line.split()[1:])
    return frozenset()


def caller_of(ctx: Any) -> Caller:
    """The caller of a request from its pyfuse3 ``RequestContext``."""
    return Caller(ctx.uid, ctx.gid, supplementary_groups(ctx.pid))


def group_name(gid: int) -> str:
    """What a project record stores for ``gid``: its name here, else the number."""
    try:
        name = grp.getgrgid(gid).gr_name
    except (KeyError, OverflowError):
        return str(gid)
    return name if is_group(name) else str(gid)


def group_gid(group: str | None) -> int | None:
    """The local gid of a record's group (a name or a number); None if unknown."""
    if group is None or not is_group(group):
        return None
    if group.isdigit():
        return int(group)
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        return None


@dataclass(frozen=True)
class ProjectAccess:
    name: str
    visibility: str
    gid: int  # the owning group's local gid


class Access:
    """The mount's access rules; with ``enforced`` off (no ``allow_other``) every
    node shows the mount's owner and its own mode, and every write is allowed
    (only the mount's owner can reach the mount)."""

    def __init__(self, *, enforced: bool, uid: int, gid: int, ttl: float) -> None:
        self.enforced = enforced
        self.uid = uid
        self.gid = gid
        self.ttl = ttl
        self._unknown_logged: set[str] = set()

    def of_project(self, project: Project | None, name: str = "") -> ProjectAccess:
        """A project's rules from its record; None (unreadable record): private to
        the mount's group."""
        if project is None:
            return ProjectAccess(name, "private", self.gid)
        if not self.enforced:  # shown as the mount's own: no group to look up
            return ProjectAccess(project.name, project.visibility, self.gid)
        gid = group_gid(project.group)
        if gid is None:
            if project.group is not None and project.group not in self._unknown_logged:
                self._unknown_logged.add(project.group)
                log.warning(
                    "project %s: group %r is unknown here; the mount's group owns it",
                    project.name,
                    project.group,
                )
            gid = self.gid
        return ProjectAccess(project.name, project.visibility, gid)

    # -- what the kernel is told --------------------------------------------

    def _own(self, a: pyfuse3.EntryAttributes, pa: ProjectAccess | None) -> None:
        a.st_uid = self.uid
        a.st_gid = pa.gid if pa is not None else self.gid

    def dir_attr(
        self, a: pyfuse3.EntryAttributes, pa: ProjectAccess | None
    ) -> pyfuse3.EntryAttributes:
        """A directory of the mount's own (root, project, artifact, staging/)."""
        if self.enforced:
            self._own(a, pa)
            bits = ROOT_MODE if pa is None else DIR_MODES[pa.visibility]
            a.st_mode = stat.S_IFDIR | bits
        return a

    def link_attr(self, a: pyfuse3.EntryAttributes, pa: ProjectAccess) -> pyfuse3.EntryAttributes:
        if self.enforced:
            self._own(a, pa)
        return a

    def tree_attr(self, a: pyfuse3.EntryAttributes, pa: ProjectAccess) -> pyfuse3.EntryAttributes:
        """An entry of a version tree: its committed bits under the visibility's mask."""
        if self.enforced:
            self._own(a, pa)
            mode = a.st_mode
            if not stat.S_ISLNK(mode):
                a.st_mode = stat.S_IFMT(mode) | (mode & 0o777 & DIR_MODES[pa.visibility])
            a.attr_timeout = min(a.attr_timeout, self.ttl)
        return a

    def control_attr(
        self, a: pyfuse3.EntryAttributes, pa: ProjectAccess, *, read_only: bool
    ) -> pyfuse3.EntryAttributes:
        """A control file of staging (``.commit``, ``.metadata.json``, ``.status`` …)."""
        if self.enforced:
            self._own(a, pa)
            bits = (0o444 if read_only else 0o666) & DIR_MODES[pa.visibility]
            a.st_mode = stat.S_IFREG | bits
        return a

    # -- what the daemon checks ---------------------------------------------

    def may_write(self, pa: ProjectAccess, caller: Caller) -> bool:
        if caller.uid in (0, self.uid) or pa.visibility == "open":
            return True
        return caller.in_group(pa.gid)

    def check_write(self, pa: ProjectAccess, ctx: Any, what: str) -> None:
        """EACCES (a StagingError, so ``reasons`` logs why) unless the caller may
        change project ``pa``."""
        if ctx is None:
            return
        caller = caller_of(ctx)
        if self.may_write(pa, caller):
            return
        raise StagingError(
            errno.EACCES,
            f"{what}: permission denied: uid {caller.uid} (gid {caller.gid}, groups "
            f"{sorted(caller.groups)}) is not in group {pa.gid} of {pa.visibility} "
            f"project {pa.name}",
        )
