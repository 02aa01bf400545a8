"""The mount's inode table: one node for each thing the kernel can see.

Listing nodes (root, project, artifact, alias link, staging) get an inode
the first time they are seen. The table holds a node strongly while the
kernel holds a lookup of it (operations.py counts them); once forgotten, only
weakly: a node still referenced elsewhere (its parent's listing) keeps its
inode, one referenced nowhere is freed. Version trees can hold millions of entries,
so their nodes are not stored at all: a version gets a small tree index when
it is first looked up, and an entry's inode is computed from (tree index,
manifest entry id). Inodes are therefore stable for a (version, path) while
mounted, and the daemon's memory does not grow with the size of a tree.

A version's manifest is verified, pinned in the cache and opened once for
the mount (``MountedManifest``): evicting its cache file, or gc deleting the
store's, does not take it from under the mount. A manifest that cannot be
had or read fails the requests of that version only (EIO).

Listings survive a store outage: after a failed refresh the last good
listing is served at once, and every listing waits out a backoff
(``StoreHealth``) before asking the store again.

Every method here may block (store requests, SQLite queries, disk reads):
``operations.py`` calls them from worker threads, never on the trio loop.
Methods that change something raise EROFS here; the write side overrides
them in its own node types.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import sqlite3
import stat
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyfuse3

from artfs import names
from artfs.cache import BlobError, BlobReader
from artfs.cache.prefetch import Listing
from artfs.digest import digest_bytes, is_digest
from artfs.fs import XATTR_PREFIX
from artfs.fs.access import Access, ProjectAccess
from artfs.fs.files import (
    EMPTY,
    SMALL_FILE,
    BlobOpener,
    FileHandle,
    ReaderPool,
    VersionFileHandle,
)
from artfs.fs.listings import ListingPages, Page
from artfs.manifest import DIR, FILE, ROOT_ID, SYMLINK, Entry, Manifest
from artfs.objects import StoreError
from artfs.repo import NotFoundError, Repo, Version
from artfs.repo.records import Artifact, CorruptRecord, Project

log = logging.getLogger("artfs.fs")

ROOT_INODE = pyfuse3.ROOT_INODE
# Inodes below 2**32 are listing nodes; above, (tree index << 32) | entry id.
TREE_SHIFT = 32
ENTRY_MASK = (1 << TREE_SHIFT) - 1
# Version trees never change while a version exists: the kernel keeps their
# entries and attributes a day (TREE_TTL, seconds), then asks again.
TREE_TTL = 24 * 3600.0
BLOCK = 512
# The st_size of every directory, in versions and in staging alike (that of a
# small ext4 directory), so du -sb of a version equals that of its source.
DIR_SIZE = 4096
EMPTY_DIGEST = digest_bytes(b"")


def fuse_error(code: int) -> pyfuse3.FUSEError:
    return pyfuse3.FUSEError(code)


class StoreHealth:
    """Whether the store answered lately: after a failure, listings wait out a
    backoff (doubling, up to ``MAX_BACKOFF``) before asking it again."""

    FIRST_BACKOFF = 1.0
    MAX_BACKOFF = 30.0

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._failures = 0
        self._until = 0.0

    def backing_off(self) -> bool:
        return time.monotonic() < self._until

    def failed(self) -> float:
        with self._lock:
            self._failures += 1
            delay = min(self.FIRST_BACKOFF * 2 ** (self._failures - 1), self.MAX_BACKOFF)
            self._until = time.monotonic() + delay
            return delay

    def answered(self) -> None:
        if self._failures:
            with self._lock:
                self._failures = 0
                self._until = 0.0


@dataclass
class MountContext:
    """What every node needs: the core, the mount's settings, the owner."""

    repo: Repo
    opener: BlobOpener
    ttl: float
    uid: int
    gid: int
    started: float
    readers: ReaderPool = field(default_factory=ReaderPool)
    listings: ListingPages = field(default_factory=ListingPages)
    health: StoreHealth = field(default_factory=StoreHealth)
    # Owners and modes by project visibility (access.py); off without allow_other.
    access: Access = field(default_factory=lambda: Access(enforced=False, uid=0, gid=0, ttl=0))


def make_attr(
    inode: int,
    mode: int,
    size: int,
    mtime: float,
    ctx: MountContext,
    *,
    entry_timeout: float,
    attr_timeout: float,
    mtime_ns: int | None = None,
) -> pyfuse3.EntryAttributes:
    """Attributes of a node; ``mtime_ns``, when given, wins over ``mtime``."""
    a = pyfuse3.EntryAttributes()
    a.st_ino = inode
    a.generation = 0
    a.entry_timeout = entry_timeout
    a.attr_timeout = attr_timeout
    a.st_mode = mode
    # 1 for directories means "unknown" to find(1), so it never skips subdirectories.
    a.st_nlink = 1
    a.st_uid = ctx.uid
    a.st_gid = ctx.gid
    a.st_rdev = 0
    a.st_size = size
    a.st_blksize = 1 << 20
    a.st_blocks = (size + BLOCK - 1) // BLOCK if stat.S_ISREG(mode) else 0
    ns = int(mtime * 1e9) if mtime_ns is None else mtime_ns
    a.st_atime_ns = a.st_mtime_ns = a.st_ctime_ns = ns
    return a


def negative_attr(timeout: float) -> pyfuse3.EntryAttributes:
    """A cached "no such name" (st_ino 0) that the kernel keeps for ``timeout``."""
    a = pyfuse3.EntryAttributes()
    a.st_ino = 0
    a.entry_timeout = timeout
    return a


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat()


class DirCursor:
    """One open directory: entries after an offset, each with the offset after it."""

    def entries(self, offset: int, limit: int) -> list[tuple[str, pyfuse3.EntryAttributes, int]]:
        raise NotImplementedError


class SnapshotCursor(DirCursor):
    """A listing taken at opendir, so a refresh mid-listing skips or repeats nothing."""

    def __init__(self, children: list[tuple[str, Node]]) -> None:
        self._children = children

    def entries(self, offset: int, limit: int) -> list[tuple[str, pyfuse3.EntryAttributes, int]]:
        end = len(self._children) if limit < 0 else offset + limit
        return [
            (name, node.attr(), i + 1)
            for i, (name, node) in enumerate(self._children[offset:end], start=offset)
        ]


class Node:
    """Something with an inode. Defaults: not a directory, not writable."""

    inode: int
    mode: int = stat.S_IFDIR | 0o755

    def __init__(self, table: InodeTable, inode: int) -> None:
        self.table = table
        self.inode = inode

    @property
    def ctx(self) -> MountContext:
        return self.table.ctx

    def attr(self) -> pyfuse3.EntryAttributes:
        raise NotImplementedError

    def describe(self) -> str:
        return f"inode {self.inode}"

    def project_access(self) -> ProjectAccess | None:
        """The rules of the project this node is in (None: the root)."""
        return None

    # -- reading ------------------------------------------------------------

    def lookup(self, name: str) -> Node | None:
        raise fuse_error(errno.ENOTDIR)

    def negative_timeout(self) -> float:
        return self.ctx.ttl

    def parent(self) -> Node:
        return self.table.root

    def open_dir(self) -> DirCursor:
        raise fuse_error(errno.ENOTDIR)

    def readlink(self) -> str:
        raise fuse_error(errno.EINVAL)

    def open(self, flags: int, ctx: Any) -> FileHandle:
        raise fuse_error(errno.EISDIR if stat.S_ISDIR(self.mode) else errno.EACCES)

    def open_now(self, flags: int) -> FileHandle | None:
        """``open`` on the event loop, where it needs no wait; None: call ``open``."""
        return None

    def xattrs(self) -> dict[str, bytes]:
        return {}

    # -- writing: the write side overrides these in its node types ----------

    def refuse(self, *args: Any) -> Any:
        raise fuse_error(errno.EROFS)

    mkdir = create = unlink = rmdir = symlink = rename = link = mknod = refuse
    setattr = setxattr = removexattr = refuse


class ListingNode(Node):
    """A directory whose children come from the store, re-read after ``ttl``."""

    def __init__(self, table: InodeTable, inode: int) -> None:
        super().__init__(table, inode)
        self._lock = threading.Lock()
        self._listed_at = -1.0
        self._children: dict[str, Node] = {}
        self._have_listing = False
        self._refreshing = False

    def created(self) -> float:
        return self.ctx.started

    def attr(self) -> pyfuse3.EntryAttributes:
        ttl = self.ctx.ttl
        a = make_attr(
            self.inode, self.mode, 0, self.created(), self.ctx, entry_timeout=ttl, attr_timeout=ttl
        )
        return self.ctx.access.dir_attr(a, self.project_access())

    def list_children(self) -> dict[str, Node]:
        """name -> node, as the store says now."""
        raise NotImplementedError

    def children(self) -> dict[str, Node]:
        if time.monotonic() - self._listed_at < self.ctx.ttl:
            return self._children
        # Stale: while another thread refreshes it, or the store is backing
        # off after a failure, the last listing answers at once.
        if (
            self._have_listing
            and self._listed_at >= 0
            and (self._refreshing or self.ctx.health.backing_off())
        ):
            return self._children
        with self._lock:
            if time.monotonic() - self._listed_at < self.ctx.ttl:
                return self._children
            self._refreshing = True
            try:
                children = self.list_children()
            except StoreError as e:
                delay = self.ctx.health.failed()
                if not self._have_listing:
                    raise
                # A store that is briefly unreachable should not empty a
                # directory that was listed a moment ago.
                log.warning(
                    "%s: keeping the last listing (next try in %.0f s): %s",
                    self.describe(),
                    delay,
                    e,
                )
                self._listed_at = max(self._listed_at, 0.0)
                return self._children
            finally:
                self._refreshing = False
            self.ctx.health.answered()
            self._children = children
            self._have_listing = True
            self._listed_at = time.monotonic()
            return children

    def lookup(self, name: str) -> Node | None:
        return self.children().get(name)

    def open_dir(self) -> DirCursor:
        return SnapshotCursor(sorted(self.children().items()))


class RootNode(ListingNode):
    def list_children(self) -> dict[str, Node]:
        out = {}
        for p in self.ctx.repo.projects():
            node = self.table.intern(
                ("project", p.name), self.table.project_class, p.name, p.created
            )
            node.seen(p)  # type: ignore[attr-defined]
            out[p.name] = node
        return out

    def describe(self) -> str:
        return "/"

    def xattrs(self) -> dict[str, bytes]:
        return {XATTR_PREFIX + "stats": json.dumps(self.table.stats()).encode()}


class ProjectNode(ListingNode):
    def __init__(self, table: InodeTable, inode: int, name: str, created: float) -> None:
        super().__init__(table, inode)
        self.name = name
        self._created = created
        self._access: ProjectAccess | None = None
        self._record_at = -1.0

    def created(self) -> float:
        return self._created

    def seen(self, record: Project | None) -> None:
        """The project's record as just read (None: unreadable): its rules, resolved
        once here rather than on every attribute request."""
        self._access = self.ctx.access.of_project(record, self.name)
        self._record_at = time.monotonic()

    def project_access(self) -> ProjectAccess:
        """Visibility and group, re-read after the listing TTL (only when enforced)."""
        access = self.ctx.access
        stale = time.monotonic() - self._record_at >= self.ctx.ttl
        if access.enforced and stale and not self.ctx.health.backing_off():
            try:
                self.seen(self.ctx.repo.project(self.name))
            except (NotFoundError, CorruptRecord) as e:
                log.warning("project %s: %s; private to the mount's group", self.name, e)
                self.seen(None)
            except StoreError as e:  # keep the last record while the store is away
                delay = self.ctx.health.failed()
                log.warning(
                    "project %s: keeping its last record (next try in %.0f s): %s",
                    self.name,
                    delay,
                    e,
                )
        if self._access is None:
            self.seen(None)
        assert self._access is not None
        return self._access

    def describe(self) -> str:
        return self.name

    def list_children(self) -> dict[str, Node]:
        try:
            artifacts = self.ctx.repo.artifacts(self.name)
        except NotFoundError:
            return {}
        return {
            a.name: self.table.intern(
                ("artifact", self.name, a.name), self.table.artifact_class, self, a
            )
            for a in artifacts
        }


class ArtifactNode(ListingNode):
    """``v0 … vN``, alias links, and the extra entries the table names (``staging``)."""

    def __init__(self, table: InodeTable, inode: int, project: ProjectNode, art: Artifact) -> None:
        super().__init__(table, inode)
        self.project = project
        self.artifact = art
        self.versions: dict[int, Version] = {}
        self.aliases: dict[str, int] = {}

    def created(self) -> float:
        return self.artifact.created

    def parent(self) -> Node:
        return self.project

    def describe(self) -> str:
        return self.artifact.qualified

    def project_access(self) -> ProjectAccess:
        return self.project.project_access()

    def list_children(self) -> dict[str, Node]:
        repo = self.ctx.repo
        p, a = self.artifact.project, self.artifact.name
        try:
            versions = repo.versions(p, a, with_aliases=False)
            aliases = repo.aliases(p, a)
        except NotFoundError:
            versions, aliases = [], {}
        self.versions = {v.number: v for v in versions}
        self.aliases = {
            alias: n
            for alias, n in aliases.items()
            if n in self.versions and alias not in names.RESERVED_ALIASES - {"latest"}
        }
        out: dict[str, Node] = {}
        for v in versions:
            out[v.name] = self.table.version_root(self, v)
        for alias in self.aliases:
            out[alias] = self.table.intern(("alias", p, a, alias), AliasNode, self, alias)
        for name, factory in self.table.artifact_extras.items():
            out[name] = self.table.intern(("extra", p, a, name), factory, self)
        return out

    def version_record(self, number: int) -> Version | None:
        self.children()
        return self.versions.get(number)


class AliasNode(Node):
    """``latest -> v7``: a relative symlink that follows the alias within ``ttl``."""

    mode = stat.S_IFLNK | 0o777

    def __init__(self, table: InodeTable, inode: int, artifact: ArtifactNode, alias: str) -> None:
        super().__init__(table, inode)
        self.artifact = artifact
        self.alias = alias

    def parent(self) -> Node:
        return self.artifact

    def describe(self) -> str:
        return f"{self.artifact.describe()}/{self.alias}"

    def project_access(self) -> ProjectAccess:
        return self.artifact.project_access()

    def target(self) -> str:
        self.artifact.children()
        number = self.artifact.aliases.get(self.alias)
        if number is None:
            raise fuse_error(errno.ENOENT)
        return f"v{number}"

    def attr(self) -> pyfuse3.EntryAttributes:
        ttl = self.ctx.ttl
        a = make_attr(
            self.inode,
            self.mode,
            len(self.target()),
            self.artifact.created(),
            self.ctx,
            entry_timeout=ttl,
            attr_timeout=ttl,
        )
        return self.ctx.access.link_attr(a, self.project_access())

    def readlink(self) -> str:
        return self.target()


class ArtifactSubdir(ListingNode):
    """A directory of an artifact's own (``staging/``, ``drafts/``): its
    artifact's time, parent and project rules."""

    def __init__(self, table: InodeTable, inode: int, artifact: ArtifactNode) -> None:
        super().__init__(table, inode)
        self.artifact = artifact

    def created(self) -> float:
        return self.artifact.created()

    def parent(self) -> Node:
        return self.artifact

    def project_access(self) -> ProjectAccess:
        return self.artifact.project_access()


class StagingPlaceholder(ArtifactSubdir):
    """``staging/`` until the write side replaces it: empty, read-only."""

    mode = stat.S_IFDIR | 0o555

    def list_children(self) -> dict[str, Node]:
        return {}


# Every manifest's root is this directory; a listing of versions shows it
# without fetching any manifest.
ROOT_ENTRY = Entry(ROOT_ID, 0, "", DIR, 0o755, 0)


class MountedManifest(Manifest):
    """A version's manifest held for the mount's use.

    One SQLite connection, opened once on the verified file and shared by
    every thread (SQLite serializes them), keeps its own descriptor: the
    cache may evict the file, or gc delete the store's, and it still reads
    the verified bytes. ``pin`` holds the file pinned in the cache; its
    stamp is checked on every query (an unlink moves only ctime: hashed
    again, and still good), so a file changed in place fails (and is
    reopened, so verified again) instead of answering with wrong entries.
    """

    def __init__(self, path: Path, digest: str, pin: BlobReader) -> None:
        self._pin = pin
        self._shared: sqlite3.Connection | None = None
        self.changed = False
        super().__init__(path, digest)

    def _db(self) -> sqlite3.Connection:
        try:
            self._pin.check()
        except BlobError as e:
            self.changed = True  # the next request opens (and so verifies) it again
            raise BlobError(f"manifest {self.digest} changed on disk: {e}") from None
        if self._shared is None:
            self._shared = super()._db()
        return self._shared


# How long a version whose manifest could not be had waits before trying again.
MANIFEST_RETRY = 5.0


class VersionTree:
    """One mounted version: its record, its manifest (opened on first use), its inodes."""

    def __init__(self, index: int, artifact: ArtifactNode, version: Version, repo: Repo):
        self.index = index
        self.artifact = artifact
        self.version = version
        self.base = index << TREE_SHIFT
        self._repo = repo
        self._manifest: MountedManifest | None = None
        self._failed: tuple[float, BlobError] | None = None
        self._lock = threading.Lock()

    @property
    def manifest(self) -> Manifest:
        m = self._manifest
        if m is not None and not m.changed:
            return m
        with self._lock:
            m = self._manifest
            if m is None or m.changed:
                if self._failed is not None and time.monotonic() < self._failed[0]:
                    raise self._failed[1]
                try:
                    m = self._manifest = self._open()
                except BlobError as e:
                    self._failed = (time.monotonic() + MANIFEST_RETRY, e)
                    raise
                self._failed = None
        return m

    def _open(self) -> MountedManifest:
        digest = self.version.manifest_digest
        ref = self.version.ref
        if not is_digest(digest):
            raise BlobError(f"{ref}: its record names no manifest digest ({digest!r})")
        try:
            pin, path = self._repo.cache.open_whole(digest)
        except BlobError as e:
            raise BlobError(f"{ref}: cannot open its manifest: {e}") from None
        try:
            return MountedManifest(path, digest, pin)
        except (sqlite3.Error, KeyError, ValueError, TypeError) as e:
            pin.close()
            raise BlobError(f"{ref}: its manifest {digest} is unreadable: {e}") from None
        except BaseException:
            pin.close()
            raise

    def inode(self, entry_id: int) -> int:
        return self.base | entry_id

    def record(self) -> Version:
        """The version's record as last listed: description and metadata can change."""
        return self.artifact.version_record(self.version.number) or self.version

    def check(self, entry: Entry) -> Entry:
        """A manifest row is untrusted input: refuse one that cannot be served."""
        ok = (
            isinstance(entry.id, int)
            and 0 < entry.id <= ENTRY_MASK
            and isinstance(entry.mode, int)
            and isinstance(entry.size, int)
            and entry.size >= 0
            and entry.kind in (DIR, FILE, SYMLINK)
            and (
                entry.kind != FILE
                or (isinstance(entry.digest, str) and is_digest(entry.digest))
                or (entry.ref is not None and entry.digest is None and entry.etag is not None)
            )
            and (entry.kind != SYMLINK or isinstance(entry.target, str))
        )
        if ok and entry.id != ROOT_ID:
            try:
                names.check_path_component(entry.name, entry.name)
            except (names.BadName, TypeError, AttributeError):
                ok = False
        if not ok:
            raise BlobError(f"{self.version.ref}: manifest entry {entry.id!r} is malformed")
        return entry


class VersionNode(Node):
    """A manifest entry of a version tree. Made per request and never stored."""

    def __init__(self, table: InodeTable, tree: VersionTree, entry: Entry) -> None:
        if entry is not ROOT_ENTRY:
            tree.check(entry)
        super().__init__(table, tree.inode(entry.id))
        self.tree = tree
        self.entry = entry
        if entry.is_dir:
            self.mode = stat.S_IFDIR | (entry.mode & 0o777)
        elif entry.is_symlink:
            self.mode = stat.S_IFLNK | 0o777
        else:
            self.mode = stat.S_IFREG | (entry.mode & 0o777)  # never set-id bits

    @property
    def is_root(self) -> bool:
        return self.entry.id == ROOT_ID

    def describe(self) -> str:
        return f"{self.tree.version.ref} entry {self.entry.id} ({self.entry.name or '/'})"

    def attr(self) -> pyfuse3.EntryAttributes:
        # The root's name lives in the artifact listing, which changes (a
        # version can be deleted); everything below it never does.
        entry, settled = self.entry, True
        if self.is_root:
            entry, settled = self._root_entry()
        mode = self.mode
        if entry.is_dir:
            mode = stat.S_IFDIR | (entry.mode & 0o777)
        a = make_attr(
            self.inode,
            mode,
            entry.size if not entry.is_dir else DIR_SIZE,
            self.tree.version.created,
            self.ctx,
            entry_timeout=self.ctx.ttl if self.is_root else TREE_TTL,
            attr_timeout=TREE_TTL if settled else self.ctx.ttl,
            mtime_ns=entry.mtime_ns,  # None in a format-1 manifest: the commit time
        )
        access = self.ctx.access
        return access.tree_attr(a, self.project_access()) if access.enforced else a

    def project_access(self) -> ProjectAccess:
        return self.tree.artifact.project_access()

    def _root_entry(self) -> tuple[Entry, bool]:
        """The manifest's root (its mode and mtime) when at hand without a store
        request; else the stand-in, which the kernel asks again for soon."""
        tree = self.tree
        if tree._manifest is None:
            cache = self.ctx.repo.cache
            digest = tree.version.manifest_digest
            if not cache.has(digest) and not cache.store.is_local:
                return ROOT_ENTRY, False
        try:
            return tree.manifest.root(), True
        except Exception as e:  # a bad manifest costs its version's listing, not the artifact's
            log.warning("%s: manifest unreadable: %s", self.describe(), e)
            return ROOT_ENTRY, False

    def negative_timeout(self) -> float:
        # A name absent from an immutable tree stays absent.
        return TREE_TTL

    def parent(self) -> Node:
        if self.is_root:
            return self.tree.artifact
        parent = self.tree.manifest.entry(self.entry.parent)
        if parent is None or not parent.is_dir:
            raise BlobError(f"{self.tree.version.ref}: entry {self.entry.id} has no parent")
        return VersionNode(self.table, self.tree, parent)

    def lookup(self, name: str) -> Node | None:
        if not self.entry.is_dir:
            raise fuse_error(errno.ENOTDIR)
        child = self.tree.manifest.child(self.entry.id, name)
        return VersionNode(self.table, self.tree, child) if child is not None else None

    def open_dir(self) -> DirCursor:
        if not self.entry.is_dir:
            raise fuse_error(errno.ENOTDIR)
        return VersionDirCursor(self)

    def readlink(self) -> str:
        if not self.entry.is_symlink:
            raise fuse_error(errno.EINVAL)
        return self.entry.target or ""

    def open(self, flags: int, ctx: Any) -> FileHandle:
        if flags & os.O_ACCMODE != os.O_RDONLY or flags & (os.O_TRUNC | os.O_APPEND):
            raise fuse_error(errno.EROFS)
        if not self.entry.is_file:
            return super().open(flags, ctx)
        if self.entry.is_reference:
            # Not pooled: every open of one with only an etag asks its URI again.
            return VersionFileHandle(self.ctx.opener.open_reference(self.entry))
        assert self.entry.digest is not None
        if self.entry.size == 0 and self.entry.digest == EMPTY_DIGEST:
            return VersionFileHandle(EMPTY)
        self._read_ahead()
        pool = self.ctx.readers
        reader = pool.acquire(self.inode)
        if reader is None:
            reader = pool.add(self.inode, self.ctx.opener.open(self.entry.digest, self.entry.size))
        return VersionFileHandle(reader, pool, self.inode)

    def open_now(self, flags: int) -> FileHandle | None:
        """``open`` of a small file whose verified bytes are at hand (no fetch,
        no hashing, no disk read: ``BlobOpener.open_now``); None otherwise."""
        e = self.entry
        if flags & (os.O_ACCMODE | os.O_TRUNC | os.O_APPEND) != os.O_RDONLY:
            return None  # refused by ``open``, with its errno
        if not e.is_file or e.is_reference or e.digest is None:
            return None
        reader = self.ctx.opener.open_now(e.digest, e.size)
        if reader is None:
            return None
        self._read_ahead()
        pool = self.ctx.readers
        return VersionFileHandle(pool.add(self.inode, reader), pool, self.inode)

    def _read_ahead(self) -> None:
        """Tell the read-ahead (cache/prefetch.py) that this small file was opened."""
        if self.entry.size > SMALL_FILE:
            return
        tree, parent = self.tree, self.entry.parent

        def next_dir() -> tuple[tuple[int, int], int, Listing] | None:
            m = tree.manifest
            here = m.entry(parent)
            if here is None or here.id == ROOT_ID:
                return None
            for e in m.children(here.parent, here.id, 16):
                if e.is_dir:
                    return (tree.index, e.id), e.id, _listing(tree, e.id)
            return None

        # A directory's first entry comes right after it: ids follow sorted paths.
        first = self.entry.id == parent + 1
        self.ctx.opener.prefetch.opened(
            (tree.index, parent), self.entry.id, _listing(tree, parent), first, next_dir
        )

    def xattrs(self) -> dict[str, bytes]:
        if self.entry.is_file:
            out = {XATTR_PREFIX + "digest": (self.entry.digest or "").encode()}
            if self.entry.ref is not None:
                out[XATTR_PREFIX + "reference"] = self.entry.ref.encode()
            return out
        if not self.is_root:
            return {}
        v = self.tree.record()
        fields = {
            "ref": v.ref,
            "version": v.name,
            "type": self.tree.artifact.artifact.type,
            "created": _iso(v.created),
            "description": v.description,
            "metadata": json.dumps(v.metadata, sort_keys=True),
        }
        return {XATTR_PREFIX + k: val.encode() for k, val in fields.items()}


def _listing(tree: VersionTree, parent: int) -> Listing:
    """Read-ahead's view of directory ``parent``: its entries after an id."""

    def listing(after: int, count: int) -> list[tuple[int, str | None, int]]:
        return [_warmable(tree, e) for e in tree.manifest.children(parent, after, count)]

    return listing


def _warmable(tree: VersionTree, e: Entry) -> tuple[int, str | None, int]:
    """A listed entry for read-ahead: (id, digest of a small blob to warm or None, size)."""
    try:
        tree.check(e)  # untrusted: a malformed row is only skipped here
    except BlobError:
        return e.id, None, 0
    small = e.is_file and not e.is_reference and 0 < e.size <= SMALL_FILE
    if not small or e.digest is None or e.digest == EMPTY_DIGEST:
        return e.id, None, 0
    return e.id, e.digest, e.size


class VersionDirCursor(DirCursor):
    """A version directory: offsets are manifest entry ids, stable by construction."""

    def __init__(self, node: VersionNode) -> None:
        self.node = node

    def entries(self, offset: int, limit: int) -> Page:
        node = self.node
        # A child is never a version's root, so its attributes are settled;
        # owners and modes under allow_other follow the project's access.
        kept = not node.ctx.access.enforced
        key = (node.tree.index, node.entry.id, offset, limit)
        if kept and (page := node.ctx.listings.get(key)) is not None:
            return page
        out = []
        for e in node.tree.manifest.children(node.entry.id, offset, limit):
            out.append((e.name, VersionNode(node.table, node.tree, e).attr(), e.id))
        if kept:
            node.ctx.listings.put(key, out)
        return out


NodeFactory = Callable[..., Node]


class InodeTable:
    """inode -> node, for the mount's lifetime. Thread-safe."""

    def __init__(self, ctx: MountContext) -> None:
        self.ctx = ctx
        self._lock = threading.Lock()
        self.root = RootNode(self, ROOT_INODE)
        self._nodes: dict[int, Node] = {ROOT_INODE: self.root}
        self._by_key: dict[tuple, Node] = {}
        # Nodes the kernel forgot: kept only while something else refers to them.
        self._weak: weakref.WeakValueDictionary[int, Node] = weakref.WeakValueDictionary()
        self._weak_by_key: weakref.WeakValueDictionary[tuple, Node] = weakref.WeakValueDictionary()
        self._keys: dict[int, tuple] = {}
        self._forgotten = 0
        self._next_inode = ROOT_INODE + 1
        self._trees: list[VersionTree | None] = [None]
        self._tree_index: dict[tuple[str, str, int], int] = {}
        # Extra names inside every artifact directory: the write side
        # replaces the placeholder with real staging (and adds drafts).
        self.artifact_extras: dict[str, NodeFactory] = {"staging": StagingPlaceholder}
        # The write side (fs/writes.py) swaps in node types that take changes.
        self.project_class: NodeFactory = ProjectNode
        self.artifact_class: NodeFactory = ArtifactNode
        self.stats: Callable[[], dict[str, Any]] = dict

    def intern(self, key: tuple, factory: NodeFactory, *args: Any) -> Node:
        """The node for ``key``, made with ``factory(table, inode, *args)`` on first sight."""
        with self._lock:
            node = self._by_key.get(key)
            if node is None:
                node = self._weak_by_key.get(key)
                if node is None:
                    node = factory(self, self._next_inode, *args)
                    self._next_inode += 1
                self._by_key[key] = node
                self._nodes[node.inode] = node
                self._keys[node.inode] = key
            return node

    def hold(self, inode: int) -> None:
        """The kernel holds ``inode`` again: keep its node strongly."""
        if inode >> TREE_SHIFT or inode == ROOT_INODE:
            return
        with self._lock:
            node = self._weak.get(inode)
            if node is not None and inode not in self._nodes:
                self._nodes[inode] = node
                key = self._keys.get(inode)
                if key is not None and key not in self._by_key:
                    self._by_key[key] = node

    def forget(self, inode: int) -> None:
        """The kernel forgot ``inode``: keep its node only while others refer to it."""
        if inode >> TREE_SHIFT or inode == ROOT_INODE:
            return
        with self._lock:
            node = self._nodes.pop(inode, None)
            if node is None:
                return
            self._weak[inode] = node
            key = self._keys.get(inode)
            if key is not None and self._by_key.get(key) is node:
                del self._by_key[key]
                self._weak_by_key[key] = node
            self._forgotten += 1
            if self._forgotten >= max(1024, len(self._keys) // 2):
                # Drop the keys of nodes that are gone (amortized: no finalizer per node).
                self._forgotten = 0
                self._keys = {
                    i: k for i, k in self._keys.items() if i in self._nodes or i in self._weak
                }

    def size(self) -> int:
        """Nodes held strongly (for tests and stats)."""
        return len(self._nodes)

    def live(self) -> int:
        """Nodes still in memory: held, or forgotten but referred to elsewhere."""
        with self._lock:
            return len(self._nodes.keys() | self._weak.keys())

    def rekey(self, old: tuple, new: tuple) -> None:
        """A node renamed in place (an alias moved by ``mv``) now answers to ``new``."""
        with self._lock:
            node = self._by_key.pop(old, None)
            if node is not None:
                self._by_key[new] = node
                self._keys[node.inode] = new

    def replace_root(self, root: RootNode) -> None:
        with self._lock:
            self.root = root
            self._nodes[ROOT_INODE] = root

    def get(self, inode: int) -> Node:
        index = inode >> TREE_SHIFT
        if index == 0:
            node = self._nodes.get(inode) or self._weak.get(inode)
            if node is None:
                raise fuse_error(errno.ENOENT)
            return node
        try:
            tree = self._trees[index]
        except IndexError:
            tree = None
        if tree is None:
            raise fuse_error(errno.ENOENT)
        entry_id = inode & ENTRY_MASK
        entry = ROOT_ENTRY if entry_id == ROOT_ID else tree.manifest.entry(entry_id)
        if entry is None:
            raise fuse_error(errno.ENOENT)
        return VersionNode(self, tree, entry)

    def answers_now(self, inode: int, *, root: bool = True) -> bool:
        """Whether a request about ``inode`` needs no store or blob I/O: an entry
        of a version tree whose manifest is open (an indexed query on an open
        SQLite file), so the event loop may answer it without a worker thread.
        ``root=False`` leaves out the version's root, whose xattrs come from the
        artifact's listing (which a TTL refreshes from the store)."""
        index = inode >> TREE_SHIFT
        if index == 0 or index >= len(self._trees):
            return False
        if not root and inode & ENTRY_MASK == ROOT_ID:
            return False
        tree = self._trees[index]
        manifest = tree._manifest if tree is not None else None
        return manifest is not None and not manifest.changed

    def version_root(self, artifact: ArtifactNode, version: Version) -> VersionNode:
        """``vN``: its inode is assigned now, its manifest fetched only when first used."""
        key = (version.project, version.artifact, version.number)
        with self._lock:
            index = self._tree_index.get(key)
            if index is None:
                index = len(self._trees)
                self._trees.append(VersionTree(index, artifact, version, self.ctx.repo))
                self._tree_index[key] = index
            tree = self._trees[index]
        assert tree is not None
        return VersionNode(self, tree, ROOT_ENTRY)
