"""``MNT/proj/name/drafts/<group>/``: a shared draft, seen and written through the mount.

- ``mkdir drafts/<group>`` opens the draft in the store (``artfs.repo.drafts``);
  a draft opened anywhere else shows too. ``rmdir``/``rm -r`` aborts it.
- A file created in a draft is written to local disk (the state directory)
  while open; its first ``flush`` (``close``) uploads it and records it in
  this daemon's part, so ``close`` reports a failed upload or a closed
  draft. One part per daemon: its writer id is kept in the state directory.
- A listing is the union of every part (and this daemon's open files),
  re-read after the mount's listing TTL.
- ``.description``, ``.metadata.json`` and ``.aliases`` (one a line) are
  kept in the draft's record in the store, so any machine may set them and
  any may finish; a bad one fails the ``close`` (EINVAL).
- ``touch .commit`` finishes the draft; two writers' different contents
  under one path give EEXIST, the paths in ``.status``. Neither control
  file is listed.
- ``unlink`` takes a file out of this daemon's part; another writer's file
  is theirs (EPERM).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import stat
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pyfuse3

from artfs import names
from artfs.digest import digest_file
from artfs.fs.files import EMPTY, FileHandle, VersionFileHandle
from artfs.fs.nodes import (
    EMPTY_DIGEST,
    ArtifactSubdir,
    InodeTable,
    Node,
    SnapshotCursor,
    fuse_error,
    make_attr,
)
from artfs.fs.staging_nodes import reasons
from artfs.fsutil import atomic_write
from artfs.manifest import PERMISSION_BITS
from artfs.repo import drafts
from artfs.staging import StagingError
from artfs.staging.errors import error_errno

log = logging.getLogger("artfs.fs.drafts")

COMMIT, STATUS = ".commit", ".status"
DESCRIPTION, METADATA, ALIASES = ".description", ".metadata.json", ".aliases"
CONTROL = (COMMIT, STATUS, DESCRIPTION, METADATA, ALIASES)
_WRITE_FLAGS = os.O_ACCMODE | os.O_TRUNC | os.O_APPEND


class DraftSide:
    """This daemon's writers (one part per draft) and its files being written."""

    def __init__(self, repo: Any, state_dir: Path) -> None:
        self.repo = repo
        self.root = state_dir / "drafts"
        (self.root / "files").mkdir(parents=True, exist_ok=True)
        # Files a killed daemon had open: never closed, so in no part; gone.
        for left in (self.root / "files").iterdir():
            left.unlink(missing_ok=True)
        id_file = self.root / "writer-id"
        try:
            writer = id_file.read_text().strip()
            names.check_name(writer, "writer id")
        except (OSError, names.BadName):
            writer = f"mount-{uuid.uuid4().hex}"
            atomic_write(id_file, writer + "\n")
        self.writer_id = writer
        self._lock = threading.Lock()
        self._writers: dict[tuple[str, str, str], drafts.PartWriter] = {}
        self.open_files: dict[tuple[str, str, str], dict[str, Path]] = {}
        self.dirs: dict[tuple[str, str, str], set[str]] = {}
        self.status: dict[tuple[str, str, str], str] = {}
        self._views: dict[tuple[str, str, str], tuple[float, dict[str, drafts.PartEntry]]] = {}

    def writer(self, key: tuple[str, str, str]) -> drafts.PartWriter:
        with self._lock:
            w = self._writers.get(key)
            if w is None:
                w = drafts.PartWriter(self.repo, *key, writer=self.writer_id)
                self._writers[key] = w
            return w

    def view(self, key: tuple[str, str, str], ttl: float) -> dict[str, drafts.PartEntry]:
        """path -> entry of every part, as read within ``ttl``."""
        with self._lock:
            cached = self._views.get(key)
        if cached is not None and time.monotonic() - cached[0] < ttl:
            return cached[1]
        parts = drafts.read_parts(self.repo, *key, strict=False)
        merged, _ = drafts.merge_parts(parts)
        with self._lock:
            self._views[key] = (time.monotonic(), merged)
        return merged

    def note(self, key: tuple[str, str, str], path: str, entry: drafts.PartEntry | None) -> None:
        """Our own write (or removal) in the cached view: the next create or
        lookup need not read every part again."""
        with self._lock:
            cached = self._views.get(key)
            if cached is None:
                return
            view = dict(cached[1])
            if entry is None:
                view.pop(path, None)
            else:
                view[path] = entry
            self._views[key] = (cached[0], view)

    def forget_view(self, key: tuple[str, str, str]) -> None:
        with self._lock:
            self._views.pop(key, None)

    def new_local_file(self) -> Path:
        return self.root / "files" / uuid.uuid4().hex


def side_of(table: InodeTable) -> DraftSide:
    return table.drafts  # type: ignore[attr-defined]


class DraftsNode(ArtifactSubdir):
    """``drafts/``: one directory per open draft of the artifact."""

    mode = stat.S_IFDIR | 0o755

    def attr(self) -> pyfuse3.EntryAttributes:
        # The project's visibility, as staging/'s: the kernel judges who may write.
        return self.ctx.access.dir_attr(super().attr(), self.project_access())

    def describe(self) -> str:
        return f"{self.artifact.describe()}/drafts"

    def _key(self, group: str) -> tuple[str, str, str]:
        return (self.artifact.artifact.project, self.artifact.artifact.name, group)

    def list_children(self) -> dict[str, Node]:
        art = self.artifact.artifact
        out: dict[str, Node] = {}
        for d in drafts.list_drafts(self.ctx.repo, art.project, art.name, counts=False):
            if d.state == "open":
                out[d.group] = self._group_node(d.group)
        return out

    def _group_node(self, group: str) -> Node:
        key = self._key(group)
        return self.table.intern(("draft", *key, ""), DraftDirNode, self, group, "")

    def mkdir(self, name: str, mode: int, ctx: Any) -> pyfuse3.EntryAttributes:
        art = self.artifact.artifact
        with reasons(f"mkdir {self.describe()}/{name}"):
            names.check_name(name, "draft group")
            if self.lookup(name) is not None:
                raise StagingError(errno.EEXIST, f"draft {name} is open already")
            drafts.open_draft(self.ctx.repo, art.project, art.name, name, type=art.type)
        self._listed_at = -1.0
        return self._group_node(name).attr()

    def rmdir(self, name: str, ctx: Any) -> None:
        art = self.artifact.artifact
        with reasons(f"rmdir {self.describe()}/{name}"):
            drafts.abort_draft(self.ctx.repo, art.project, art.name, name)
            side_of(self.table).forget_view(self._key(name))
            log.info("draft %s of %s aborted", name, art.qualified)
        self._listed_at = -1.0


class DraftDirNode(Node):
    """The draft ``group`` (``prefix`` ""), or a directory inside it."""

    mode = stat.S_IFDIR | 0o755

    def __init__(
        self, table: InodeTable, inode: int, drafts_node: DraftsNode, group: str, prefix: str
    ) -> None:
        super().__init__(table, inode)
        self.drafts_node = drafts_node
        self.group = group
        self.prefix = prefix
        self.key = drafts_node._key(group)

    @property
    def side(self) -> DraftSide:
        return side_of(self.table)

    def describe(self) -> str:
        p, a, g = self.key
        return f"{p}/{a}/drafts/{g}" + (f"/{self.prefix}" if self.prefix else "")

    def parent(self) -> Node:
        if not self.prefix:
            return self.drafts_node
        up = self.prefix.rpartition("/")[0]
        return self.table.intern(
            ("draft", *self.key, up), DraftDirNode, self.drafts_node, self.group, up
        )

    def attr(self) -> pyfuse3.EntryAttributes:
        ttl = self.ctx.ttl
        out = make_attr(
            self.inode,
            self.mode,
            0,
            self.drafts_node.created(),
            self.ctx,
            entry_timeout=ttl,
            attr_timeout=ttl,
        )
        return self.ctx.access.dir_attr(out, self.drafts_node.project_access())

    def _path(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name

    def _entries(self) -> tuple[dict[str, drafts.PartEntry], dict[str, Path], set[str]]:
        with reasons(f"list {self.describe()}"):
            view = self.side.view(self.key, self.ctx.ttl)
        local = dict(self.side.open_files.get(self.key, {}))
        return view, local, set(self.side.dirs.get(self.key, set()))

    def children(self) -> dict[str, Node]:
        view, local, dirs = self._entries()
        start = self.prefix + "/" if self.prefix else ""
        out: dict[str, Node] = {}
        for path in [*view, *local, *dirs]:
            if not path.startswith(start):
                continue
            rest = path[len(start) :]
            name, sep, _ = rest.partition("/")
            if not name or name in out:
                continue
            if sep or (path in dirs and path not in view and path not in local):
                child = self._path(name)
                out[name] = self.table.intern(
                    ("draft", *self.key, child), DraftDirNode, self.drafts_node, self.group, child
                )
            else:
                out[name] = self._file_node(path)
        return out

    def _file_node(self, path: str) -> Node:
        return self.table.intern(("draft-file", *self.key, path), DraftFileNode, self, path)

    def lookup(self, name: str) -> Node | None:
        if not self.prefix and name in CONTROL:
            return self.table.intern(("draft-ctl", *self.key, name), DraftControlNode, self, name)
        return self.children().get(name)

    def open_dir(self) -> Any:
        return SnapshotCursor(sorted(self.children().items()))

    def mkdir(self, name: str, mode: int, ctx: Any) -> pyfuse3.EntryAttributes:
        with reasons(f"mkdir {self.describe()}/{name}"):
            names.check_path(self._path(name))
            if self.lookup(name) is not None:
                raise StagingError(errno.EEXIST, f"{name} exists")
            self.side.dirs.setdefault(self.key, set()).add(self._path(name))
        node = self.lookup(name)
        assert node is not None
        return node.attr()

    def create(self, name: str, mode: int, flags: int, ctx: Any) -> tuple[FileHandle, Any]:
        path = self._path(name)
        with reasons(f"create {self.describe()}/{name}"):
            names.check_path(path)
            if self.lookup(name) is not None and path not in self.side.open_files.get(self.key, {}):
                raise StagingError(errno.EEXIST, f"{name} is in the draft already")
            draft = drafts.get_draft(self.ctx.repo, *self.key)
            if draft.state != "open":
                raise StagingError(errno.EROFS, f"draft {self.group} is {draft.state}")
            local = self.side.new_local_file()
            fd = os.open(local, os.O_RDWR | os.O_CREAT | os.O_EXCL, mode & PERMISSION_BITS)
            self.side.open_files.setdefault(self.key, {})[path] = local
        node = self._file_node(path)
        return DraftWriteHandle(node, fd, local), node.attr()  # type: ignore[arg-type]

    def unlink(self, name: str, ctx: Any) -> None:
        path = self._path(name)
        with reasons(f"rm {self.describe()}/{name}"):
            local = self.side.open_files.get(self.key, {}).pop(path, None)
            if local is not None:
                local.unlink(missing_ok=True)
                return
            writer = self.side.writer(self.key)
            if path not in writer.entries():
                if path in self.side.view(self.key, 0):
                    raise StagingError(errno.EPERM, f"{path} was written by another writer")
                raise StagingError(errno.ENOENT, f"no {path} in the draft")
            writer.remove(path)
            self.side.note(self.key, path, None)

    def rmdir(self, name: str, ctx: Any) -> None:
        path = self._path(name)
        with reasons(f"rmdir {self.describe()}/{name}"):
            node = self.lookup(name)
            if not isinstance(node, DraftDirNode):
                raise StagingError(errno.ENOTDIR if node else errno.ENOENT, f"{name}")
            if node.children():
                raise StagingError(errno.ENOTEMPTY, f"{name} is not empty")
            self.side.dirs.get(self.key, set()).discard(path)

    def finish(self) -> None:
        p, a, g = self.key
        try:
            result = drafts.finish_draft(self.ctx.repo, p, a, g)
        except drafts.DraftConflict as e:
            self.side.status[self.key] = (
                "finish failed: conflicting paths\n" + "\n".join(e.paths) + "\n"
            )
            log.warning("finish %s: %s", self.describe(), e)
            raise fuse_error(errno.EEXIST) from None
        except Exception as e:
            self.side.status[self.key] = f"finish failed: {e}\n"
            log.warning("finish %s: %s", self.describe(), e)
            raise fuse_error(error_errno(e)) from None
        v = result.version
        self.side.status[self.key] = f"finished as {v.ref}: {v.file_count} files\n"
        log.info("draft %s finished as %s", self.describe(), v.ref)
        self.side.forget_view(self.key)
        self.drafts_node._listed_at = -1.0
        self.drafts_node.artifact._listed_at = -1.0


class DraftFileNode(Node):
    mode = stat.S_IFREG | 0o644

    def __init__(self, table: InodeTable, inode: int, group: DraftDirNode, path: str) -> None:
        super().__init__(table, inode)
        self.group = group
        self.path = path

    def describe(self) -> str:
        return f"{self.group.describe()}/{self.path.rpartition('/')[2]}"

    def parent(self) -> Node:
        return self.group

    def _local(self) -> Path | None:
        return self.group.side.open_files.get(self.group.key, {}).get(self.path)

    def _entry(self) -> drafts.PartEntry | None:
        with reasons(f"stat {self.describe()}"):
            return self.group.side.view(self.group.key, self.ctx.ttl).get(self.path)

    def attr(self) -> pyfuse3.EntryAttributes:
        local = self._local()
        if local is not None:
            st = os.stat(local)
            out = make_attr(
                self.inode,
                stat.S_IFREG | (st.st_mode & PERMISSION_BITS),
                st.st_size,
                st.st_mtime,
                self.ctx,
                entry_timeout=0,
                attr_timeout=0,
                mtime_ns=st.st_mtime_ns,
            )
            return self.ctx.access.tree_attr(out, self.group.drafts_node.project_access())
        e = self._entry()
        if e is None:
            raise fuse_error(errno.ENOENT)
        ttl = self.ctx.ttl
        out = make_attr(
            self.inode,
            stat.S_IFREG | e.mode,
            e.size,
            time.time(),
            self.ctx,
            entry_timeout=ttl,
            attr_timeout=ttl,
            mtime_ns=e.mtime_ns,
        )
        return self.ctx.access.tree_attr(out, self.group.drafts_node.project_access())

    def open(self, flags: int, ctx: Any) -> FileHandle:
        local = self._local()
        if local is not None:
            fd = os.open(local, flags & (os.O_ACCMODE | os.O_TRUNC | os.O_APPEND))
            return DraftWriteHandle(self, fd, local)
        if flags & _WRITE_FLAGS != os.O_RDONLY:
            with reasons(f"open {self.describe()}"):
                raise StagingError(errno.EPERM, "a file of a draft is written once, when created")
        e = self._entry()
        if e is None:
            raise fuse_error(errno.ENOENT)
        if e.size == 0 and e.digest == EMPTY_DIGEST:
            return VersionFileHandle(EMPTY)
        with reasons(f"open {self.describe()}"):
            return VersionFileHandle(self.ctx.opener.open(e.digest, e.size))

    def setattr(self, attr: Any, fields: Any, fh: Any, ctx: Any) -> pyfuse3.EntryAttributes:
        local = self._local()
        if local is None:
            raise fuse_error(errno.EPERM)
        if fields.update_size:
            os.truncate(local, attr.st_size)
        if fields.update_mode:
            os.chmod(local, attr.st_mode & PERMISSION_BITS)
        if fields.update_mtime:
            os.utime(local, ns=(attr.st_mtime_ns, attr.st_mtime_ns))
        return self.attr()


class DraftWriteHandle(FileHandle):
    """A file of a draft while it is written: local until its close uploads it."""

    def __init__(self, node: DraftFileNode, fd: int, local: Path) -> None:
        self.node = node
        self.fd = fd
        self.local = local
        self.dirty = False
        self._lock = threading.Lock()

    def read(self, offset: int, length: int) -> bytes:
        return os.pread(self.fd, length, offset)

    def write(self, offset: int, data: bytes) -> int:
        self.dirty = True
        return os.pwrite(self.fd, data, offset)

    def flush(self) -> None:
        with self._lock:
            if not self.dirty and self.node._local() is None:
                return
            self.dirty = False
            self.upload()

    def upload(self) -> None:
        """Blobs up, then this daemon's part names the file (protocol W)."""
        group = self.node.group
        if group.side.open_files.get(group.key, {}).get(self.node.path) != self.local:
            return  # unlinked meanwhile, or uploaded by another handle
        with reasons(f"close {self.node.describe()}"):
            try:
                os.fsync(self.fd)
                st = os.fstat(self.fd)
                digest, size = digest_file(self.local)
                entry = drafts.PartEntry(size, digest, st.st_mode & PERMISSION_BITS, st.st_mtime_ns)
                group.side.writer(group.key).add({self.node.path: entry}, {digest: self.local})
            except drafts.DraftClosed as e:
                raise StagingError(errno.EROFS, str(e)) from None
            group.side.note(group.key, self.node.path, entry)
            group.side.open_files.get(group.key, {}).pop(self.node.path, None)
            self.local.unlink(missing_ok=True)

    def release(self) -> None:
        try:
            self.flush()
        except pyfuse3.FUSEError:
            pass  # the close already reported it
        finally:
            os.close(self.fd)


class DraftControlNode(Node):
    """``.commit`` (touch or write: finish) and ``.status`` (what the last finish did)."""

    def __init__(self, table: InodeTable, inode: int, group: DraftDirNode, name: str) -> None:
        super().__init__(table, inode)
        self.group = group
        self.name = name
        self.mode = stat.S_IFREG | (0o444 if name == STATUS else 0o644)

    def parent(self) -> Node:
        return self.group

    def _text(self) -> bytes:
        if self.name == COMMIT:
            return b""
        if self.name == STATUS:
            return self.group.side.status.get(self.group.key, "not finished yet\n").encode()
        with reasons(f"read {self.describe()}"):
            d = drafts.get_draft(self.ctx.repo, *self.group.key)
        if self.name == DESCRIPTION:
            return d.description.encode()
        if self.name == ALIASES:
            return "".join(f"{a}\n" for a in d.aliases).encode()
        return (json.dumps(d.metadata, indent=1, sort_keys=True) + "\n").encode()

    def describe(self) -> str:
        return f"{self.group.describe()}/{self.name}"

    def save(self, data: bytes) -> None:
        """A changed ``.description``, ``.metadata.json`` or ``.aliases``, into the draft."""
        with reasons(f"write {self.describe()}"):
            text = data.decode("utf-8")
            change: dict[str, Any] = {}
            if self.name == DESCRIPTION:
                change["description"] = text
            elif self.name == ALIASES:
                change["aliases"] = [line.strip() for line in text.splitlines() if line.strip()]
            else:
                try:
                    change["metadata"] = json.loads(text) if text.strip() else {}
                except ValueError as e:
                    raise StagingError(errno.EINVAL, f"bad JSON in .metadata.json: {e}") from None
            drafts.update_draft(self.ctx.repo, *self.group.key, **change)

    def attr(self) -> pyfuse3.EntryAttributes:
        out = make_attr(
            self.inode,
            self.mode,
            len(self._text()),
            time.time(),
            self.ctx,
            entry_timeout=0,
            attr_timeout=0,
        )
        pa = self.group.drafts_node.project_access()
        return self.ctx.access.control_attr(out, pa, read_only=self.name == STATUS)

    def open(self, flags: int, ctx: Any) -> FileHandle:
        if self.name == STATUS:
            if flags & _WRITE_FLAGS != os.O_RDONLY:
                raise fuse_error(errno.EPERM)
            handle = _TextHandle(self._text())
            handle.direct_io = True
            return handle
        if self.name != COMMIT:
            initial = b"" if flags & os.O_TRUNC else self._text()
            buffer = _BufferHandle(self, initial, dirty=bool(flags & os.O_TRUNC))
            buffer.direct_io = True
            return buffer
        handle = _CommitHandle(self.group)
        if flags & os.O_TRUNC:
            handle.finish_once()
        return handle

    def setattr(self, attr: Any, fields: Any, fh: Any, ctx: Any) -> pyfuse3.EntryAttributes:
        if self.name in (DESCRIPTION, METADATA, ALIASES):
            if fields.update_size:
                self.save(self._text()[: attr.st_size])
            return self.attr()
        if self.name != COMMIT:
            raise fuse_error(errno.EPERM)
        if fields.update_atime or fields.update_mtime or fields.update_size:
            self.group.finish()
        return self.attr()


class _TextHandle(FileHandle):
    def __init__(self, data: bytes) -> None:
        self.data = data

    def read(self, offset: int, length: int) -> bytes:
        return self.data[offset : offset + length]


class _BufferHandle(FileHandle):
    """An open control file: bytes in memory, saved into the draft on close."""

    def __init__(self, node: DraftControlNode, data: bytes, dirty: bool) -> None:
        self.node = node
        self.data = bytearray(data)
        self.dirty = dirty

    def read(self, offset: int, length: int) -> bytes:
        return bytes(self.data[offset : offset + length])

    def write(self, offset: int, data: bytes) -> int:
        if offset > len(self.data):
            self.data.extend(b"\0" * (offset - len(self.data)))
        self.data[offset : offset + len(data)] = data
        self.dirty = True
        return len(data)

    def flush(self) -> None:
        if self.dirty:
            self.dirty = False
            self.node.save(bytes(self.data))


class _CommitHandle(FileHandle):
    def __init__(self, group: DraftDirNode) -> None:
        self.group = group
        self.done = False

    def finish_once(self) -> None:
        if not self.done:
            self.done = True
            self.group.finish()

    def write(self, offset: int, data: bytes) -> int:
        self.finish_once()
        return len(data)

    def read(self, offset: int, length: int) -> bytes:
        return b""


def install(table: InodeTable, state_dir: Path) -> DraftSide:
    """Give every artifact directory of ``table`` its ``drafts/``."""
    side = DraftSide(table.ctx.repo, state_dir)
    table.drafts = side  # type: ignore[attr-defined]
    table.artifact_extras["drafts"] = DraftsNode
    return side
