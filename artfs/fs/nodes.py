"""The mount's inode table: one node for each thing the kernel can see.

Listing nodes (root, project, artifact, alias link, staging) are few: each
gets an inode the first time it is seen and keeps it for the mount's life, so
``forget`` has nothing to free. Version trees can hold millions of entries,
so their nodes are not stored at all: a version gets a small tree index when
it is first looked up, and an entry's inode is computed from (tree index,
manifest entry id). Inodes are therefore stable for a (version, path) while
mounted, and the daemon's memory does not grow with the size of a tree.

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
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pyfuse3

from artfs import names
from artfs.fs.files import EMPTY, BlobOpener, FileHandle, ReaderPool, VersionFileHandle
from artfs.manifest import DIR, ROOT_ID, Entry, Manifest
from artfs.objects import StoreError
from artfs.repo import NotFoundError, Repo, Version, layout
from artfs.repo.records import Artifact

log = logging.getLogger("artfs.fs")

ROOT_INODE = pyfuse3.ROOT_INODE
# Inodes below 2**32 are listing nodes; above, (tree index << 32) | entry id.
TREE_SHIFT = 32
ENTRY_MASK = (1 << TREE_SHIFT) - 1
# Version trees never change while a version exists: let the kernel keep them.
FOREVER = 24 * 3600.0
BLOCK = 512
# The st_size of every directory, in versions and in staging alike (that of a
# small ext4 directory), so du -sb of a version equals that of its source.
DIR_SIZE = 4096
XATTR_PREFIX = "user.artfs."


def fuse_error(code: int) -> pyfuse3.FUSEError:
    return pyfuse3.FUSEError(code)


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

    def created(self) -> float:
        return self.ctx.started

    def attr(self) -> pyfuse3.EntryAttributes:
        ttl = self.ctx.ttl
        return make_attr(
            self.inode, self.mode, 0, self.created(), self.ctx, entry_timeout=ttl, attr_timeout=ttl
        )

    def list_children(self) -> dict[str, Node]:
        """name -> node, as the store says now."""
        raise NotImplementedError

    def children(self) -> dict[str, Node]:
        with self._lock:
            if time.monotonic() - self._listed_at >= self.ctx.ttl:
                try:
                    self._children = self.list_children()
                except StoreError as e:
                    if self._listed_at < 0:
                        raise
                    # A store that is briefly unreachable should not empty a
                    # directory that was listed a moment ago; try again next time.
                    log.warning("%s: keeping the last listing: %s", self.describe(), e)
                    return self._children
                self._listed_at = time.monotonic()
            return self._children

    def lookup(self, name: str) -> Node | None:
        return self.children().get(name)

    def open_dir(self) -> DirCursor:
        return SnapshotCursor(sorted(self.children().items()))


class RootNode(ListingNode):
    def list_children(self) -> dict[str, Node]:
        return {
            p.name: self.table.intern(
                ("project", p.name), self.table.project_class, p.name, p.created
            )
            for p in self.ctx.repo.projects()
        }

    def describe(self) -> str:
        return "/"

    def xattrs(self) -> dict[str, bytes]:
        return {XATTR_PREFIX + "stats": json.dumps(self.table.stats()).encode()}


class ProjectNode(ListingNode):
    def __init__(self, table: InodeTable, inode: int, name: str, created: float) -> None:
        super().__init__(table, inode)
        self.name = name
        self._created = created

    def created(self) -> float:
        return self._created

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

    def target(self) -> str:
        self.artifact.children()
        number = self.artifact.aliases.get(self.alias)
        if number is None:
            raise fuse_error(errno.ENOENT)
        return f"v{number}"

    def attr(self) -> pyfuse3.EntryAttributes:
        ttl = self.ctx.ttl
        return make_attr(
            self.inode,
            self.mode,
            len(self.target()),
            self.artifact.created(),
            self.ctx,
            entry_timeout=ttl,
            attr_timeout=ttl,
        )

    def readlink(self) -> str:
        return self.target()


class StagingPlaceholder(ListingNode):
    """``staging/`` until the write side replaces it: empty, read-only."""

    mode = stat.S_IFDIR | 0o555

    def __init__(self, table: InodeTable, inode: int, artifact: ArtifactNode) -> None:
        super().__init__(table, inode)
        self.artifact = artifact

    def created(self) -> float:
        return self.artifact.created()

    def parent(self) -> Node:
        return self.artifact

    def list_children(self) -> dict[str, Node]:
        return {}


# Every manifest's root is this directory; a listing of versions shows it
# without fetching any manifest.
ROOT_ENTRY = Entry(ROOT_ID, 0, "", DIR, 0o755, 0)


class VersionTree:
    """One mounted version: its record, its manifest (opened on first use), its inodes."""

    def __init__(self, index: int, artifact: ArtifactNode, version: Version, repo: Repo):
        self.index = index
        self.artifact = artifact
        self.version = version
        self.base = index << TREE_SHIFT
        self._repo = repo
        self._manifest: Manifest | None = None
        self._lock = threading.Lock()

    @property
    def manifest(self) -> Manifest:
        if self._manifest is None:
            with self._lock:
                if self._manifest is None:
                    self._manifest = self._repo.manifest(self.version)
        return self._manifest

    def inode(self, entry_id: int) -> int:
        return self.base | entry_id

    def record(self) -> Version:
        """The version's record as last listed: description and metadata can change."""
        return self.artifact.version_record(self.version.number) or self.version


class VersionNode(Node):
    """A manifest entry of a version tree. Made per request and never stored."""

    def __init__(self, table: InodeTable, tree: VersionTree, entry: Entry) -> None:
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
        return make_attr(
            self.inode,
            mode,
            entry.size if not entry.is_dir else DIR_SIZE,
            self.tree.version.created,
            self.ctx,
            entry_timeout=self.ctx.ttl if self.is_root else FOREVER,
            attr_timeout=FOREVER if settled else self.ctx.ttl,
            mtime_ns=entry.mtime_ns,  # None in a format-1 manifest: the commit time
        )

    def _root_entry(self) -> tuple[Entry, bool]:
        """The manifest's root (its mode and mtime) when at hand without a store
        request; else the stand-in, which the kernel asks again for soon."""
        tree = self.tree
        if tree._manifest is None:
            cache = self.ctx.repo.cache
            digest = tree.version.manifest
            if not cache.has(digest) and cache.store.local_path(layout.blob_key(digest)) is None:
                return ROOT_ENTRY, False
        try:
            return tree.manifest.root(), True
        except Exception as e:  # a bad manifest costs its version's listing, not the artifact's
            log.warning("%s: manifest unreadable: %s", self.describe(), e)
            return ROOT_ENTRY, False

    def negative_timeout(self) -> float:
        # A name absent from an immutable tree stays absent.
        return FOREVER

    def parent(self) -> Node:
        if self.is_root:
            return self.tree.artifact
        parent = self.tree.manifest.entry(self.entry.parent)
        assert parent is not None
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
        assert self.entry.digest is not None
        if self.entry.size == 0:
            return VersionFileHandle(EMPTY)
        pool = self.ctx.readers
        reader = pool.acquire(self.inode)
        if reader is None:
            reader = pool.add(self.inode, self.ctx.opener.open(self.entry.digest, self.entry.size))
        return VersionFileHandle(reader, pool, self.inode)

    def xattrs(self) -> dict[str, bytes]:
        if self.entry.is_file:
            return {XATTR_PREFIX + "digest": (self.entry.digest or "").encode()}
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


class VersionDirCursor(DirCursor):
    """A version directory: offsets are manifest entry ids, stable by construction."""

    def __init__(self, node: VersionNode) -> None:
        self.node = node

    def entries(self, offset: int, limit: int) -> list[tuple[str, pyfuse3.EntryAttributes, int]]:
        node = self.node
        out = []
        for e in node.tree.manifest.children(node.entry.id, offset, limit):
            out.append((e.name, VersionNode(node.table, node.tree, e).attr(), e.id))
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
                node = factory(self, self._next_inode, *args)
                self._next_inode += 1
                self._by_key[key] = node
                self._nodes[node.inode] = node
            return node

    def rekey(self, old: tuple, new: tuple) -> None:
        """A node renamed in place (an alias moved by ``mv``) now answers to ``new``."""
        with self._lock:
            node = self._by_key.pop(old, None)
            if node is not None:
                self._by_key[new] = node

    def replace_root(self, root: RootNode) -> None:
        with self._lock:
            self.root = root
            self._nodes[ROOT_INODE] = root

    def get(self, inode: int) -> Node:
        index = inode >> TREE_SHIFT
        if index == 0:
            node = self._nodes.get(inode)
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
