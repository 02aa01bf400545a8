"""Manifests: the file tree of one version, as a SQLite database.

One row per entry keyed by (parent, name), as in CernVM-FS catalogs, so that
a lookup or a directory listing is an indexed query and a version of a
million files opens without being parsed. Entry ids are assigned in sorted
path order, so the children of a directory come out in name order when
sorted by id, and an id is a stable readdir offset.

A manifest is written once, stored as a blob, and opened read-only.

Format 2 adds ``mtime`` (nanoseconds) to every entry and keeps the
permission bits of files and directories (``mode & 0o777``: setuid, setgid
and sticky bits are never stored). A format-1 manifest still reads: its
entries have no mtime (``Entry.mtime_ns`` is None, shown as the version's
commit time) and modes as they were written (0644/0755 files, 0755 dirs).

Format 3 adds ``ref`` and ``etag``: a **reference entry** is a file whose
bytes live outside the store, at the URI in ``ref`` (``artfs.objects.
referents``), with ``digest`` the digest of those bytes (read once at commit)
or NULL and ``etag`` the object's etag then. Format 3 is written only for a
tree with a reference, so every other manifest stays byte for byte format 2.
``ManifestBuilder.files`` and ``Manifest.digests`` name only blobs of the
store; a reference is never one (gc, check and commits look for none).
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import xxhash

from artfs.digest import is_digest
from artfs.names import BadName, check_entry_name, check_path, check_path_component
from artfs.objects.referents import BadReference, check_etag, check_uri

FORMAT = 2
REFERENCE_FORMAT = 3  # written only when the tree has a reference entry
READABLE_FORMATS = (1, 2, 3)
ROOT_ID = 1
# What a version keeps of a mode: permission bits only, never set-id or sticky.
PERMISSION_BITS = 0o777
DIR, FILE, SYMLINK = "d", "f", "l"

_SCHEMA = """
CREATE TABLE info (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE entries (
    id INTEGER PRIMARY KEY,
    parent INTEGER NOT NULL,
    name TEXT NOT NULL,
    kind TEXT NOT NULL,
    mode INTEGER NOT NULL,
    size INTEGER NOT NULL,
    digest TEXT,
    target TEXT,
    mtime INTEGER
);
CREATE UNIQUE INDEX entries_by_name ON entries (parent, name);
"""
# Format 3: the same, with a reference's URI and etag after the mtime.
_SCHEMA_REFS = _SCHEMA.replace(
    "    mtime INTEGER\n", "    mtime INTEGER,\n    ref TEXT,\n    etag TEXT\n"
)


class ManifestError(ValueError):
    """A manifest from the store that breaks the format: one version is unusable."""


# Columns every manifest has (later formats may add more after them).
_REQUIRED = {
    "info": {"key", "value"},
    "entries": {"id", "parent", "name", "kind", "mode", "size", "digest", "target"},
}


def _entry(row: tuple, where: object) -> Entry:
    """An entry read from a manifest, checked like user input before it becomes a path."""
    entry_id, parent, name, kind, mode, size, digest, target, mtime_ns = row[:9]
    ref, etag = row[9:11] if len(row) > 9 else (None, None)
    bad = None
    if not all(isinstance(x, int) for x in (entry_id, parent, mode, size)):
        bad = "non-integer id, parent, mode or size"
    elif mtime_ns is not None and not isinstance(mtime_ns, int):
        bad = f"bad mtime {mtime_ns!r}"
    elif size < 0 or not 0 <= mode <= 0o177777:
        bad = f"bad size {size} or mode {mode}"
    elif kind not in (DIR, FILE, SYMLINK):
        bad = f"bad kind {kind!r}"
    elif entry_id == ROOT_ID:
        if kind != DIR or parent != 0 or name != "":
            bad = "the root is not a directory named ''"
    elif parent >= entry_id or parent < ROOT_ID:
        bad = f"entry {entry_id} has parent {parent}"
    elif ref is not None or etag is not None:
        bad = _reference_problem(kind, ref, digest, etag)
    elif kind == FILE and not (isinstance(digest, str) and is_digest(digest)):
        bad = f"file with bad digest {digest!r}"
    elif kind == SYMLINK and not (isinstance(target, str) and target and "\0" not in target):
        bad = "symlink with bad target"
    if bad is None and entry_id != ROOT_ID:
        try:
            check_entry_name(name)
        except BadName as e:
            bad = str(e)
    if bad is not None:
        raise ManifestError(f"bad manifest {where}: {bad}")
    return Entry(*row)


def _reference_problem(kind: object, ref: object, digest: object, etag: object) -> str | None:
    """Why a reference entry read from a manifest is unusable, or None."""
    if kind != FILE or ref is None:
        return "an etag or reference on an entry that is no reference file"
    try:
        check_uri(ref)
        if etag is not None:
            check_etag(etag)
    except BadReference as e:
        return str(e)
    if digest is None:
        return None if etag is not None else "reference with neither digest nor etag"
    if not (isinstance(digest, str) and is_digest(digest)):
        return f"reference with bad digest {digest!r}"
    return None


@dataclass(frozen=True)
class Entry:
    id: int
    parent: int
    name: str
    kind: str
    mode: int
    size: int
    digest: str | None = None
    target: str | None = None
    mtime_ns: int | None = None  # None: a format-1 entry, shown at its commit time
    ref: str | None = None  # a reference entry's URI (format 3): its bytes are there
    etag: str | None = None  # a reference's etag at commit (checksum=False: no digest)

    @property
    def is_reference(self) -> bool:
        return self.ref is not None

    @property
    def is_dir(self) -> bool:
        return self.kind == DIR

    @property
    def is_file(self) -> bool:
        return self.kind == FILE

    @property
    def is_symlink(self) -> bool:
        return self.kind == SYMLINK

    @property
    def executable(self) -> bool:
        return bool(self.mode & 0o100)


def file_mode(executable: bool) -> int:
    return 0o755 if executable else 0o644


# path -> (kind, mode, size, digest, target, mtime_ns, ref, etag)
_Row = tuple[str, int, int, str | None, str | None, int | None, str | None, str | None]


def tree_line(
    path: str,
    kind: str,
    mode: int,
    size: int,
    digest: str | None,
    target: str | None,
    mtime: int | None,
    ref: str | None = None,
    etag: str | None = None,
) -> bytes:
    """One entry's line of the tree digest (doc/FORMAT.md §3.3), for every builder."""
    # An entry without an mtime hashes as in format 1, one without a
    # reference as in format 2.
    when = "" if mtime is None else f"\0{mtime}"
    if ref is not None:
        when += f"\0ref\0{ref}\0{etag or ''}"
    return f"{path}\0{kind}\0{mode:o}\0{size}\0{digest or ''}\0{target or ''}{when}\n".encode()


class ManifestBuilder:
    """Collects a tree by path, then writes it as a manifest file."""

    def __init__(self) -> None:
        # "" is the root.
        self._entries: dict[str, _Row] = {"": (DIR, 0o755, 0, None, None, None, None, None)}

    def __len__(self) -> int:
        return len(self._entries) - 1

    def __contains__(self, path: str) -> bool:
        return bool(path) and path in self._entries

    def _add(self, path: str, row: _Row) -> None:
        check_path(path)
        parent, _, _ = path.rpartition("/")
        if parent and parent not in self._entries:
            self.add_dir(parent)
        elif self._entries.get(parent, (DIR,))[0] != DIR:
            raise ValueError(f"bad path {path!r}: {parent!r} is not a directory")
        existing = self._entries.get(path)
        if existing is not None and not (existing[0] == DIR == row[0]):
            raise ValueError(f"duplicate path {path!r}")
        self._entries[path] = row

    def add_file(
        self,
        path: str,
        size: int,
        digest: str,
        *,
        executable: bool = False,
        mode: int | None = None,
        mtime_ns: int | None = None,
    ) -> None:
        """A file; ``mode`` (its permission bits) wins over ``executable``."""
        bits = file_mode(executable) if mode is None else mode & PERMISSION_BITS
        self._add(path, (FILE, bits, size, digest, None, mtime_ns, None, None))

    def add_reference(
        self,
        path: str,
        uri: str,
        size: int,
        *,
        digest: str | None = None,
        etag: str | None = None,
        mode: int = 0o644,
        mtime_ns: int | None = None,
    ) -> None:
        """A file whose bytes stay at ``uri``: with their ``digest``, or (no
        checksum) the object's ``etag``."""
        check_uri(uri)
        if digest is None and etag is None:
            raise ValueError(f"reference {uri}: a digest or an etag is needed")
        if digest is not None and not is_digest(digest):
            raise ValueError(f"reference {uri}: bad digest {digest!r}")
        if etag is not None:
            check_etag(etag)
        if size < 0:
            raise ValueError(f"reference {uri}: bad size {size}")
        row = (FILE, mode & PERMISSION_BITS, size, digest, None, mtime_ns, uri, etag)
        self._add(path, row)

    def add_dir(self, path: str, *, mode: int | None = None, mtime_ns: int | None = None) -> None:
        """A directory; ``""`` sets the root's mode and mtime."""
        bits = 0o755 if mode is None else mode & PERMISSION_BITS
        if path == "":
            self._entries[""] = (DIR, bits, 0, None, None, mtime_ns, None, None)
            return
        self._add(path, (DIR, bits, 0, None, None, mtime_ns, None, None))

    def add_symlink(self, path: str, target: str, *, mtime_ns: int | None = None) -> None:
        row = (SYMLINK, 0o777, len(target.encode()), None, target, mtime_ns, None, None)
        self._add(path, row)

    def remove(self, path: str) -> None:
        """Drop an entry and, for a directory, everything below it."""
        row = self._entries.pop(path, None)
        if row is None or row[0] != DIR:
            return  # nothing can be below a file, a link or a missing path
        prefix = path + "/"
        for p in [p for p in self._entries if p.startswith(prefix)]:
            del self._entries[p]

    def files(self) -> Iterator[tuple[str, int, str]]:
        """(path, size, digest) of every file stored as a blob (not references)."""
        for path, (kind, _mode, size, digest, _t, _m, ref, _e) in self._entries.items():
            if kind == FILE and ref is None:
                yield path, size, digest  # type: ignore[misc]

    def file_rows(self) -> Iterator[tuple[str, int, str, int, int | None]]:
        """(path, size, digest, mode, mtime_ns) of every file stored as a blob."""
        for path, (kind, mode, size, digest, _t, mtime_ns, ref, _e) in self._entries.items():
            if kind == FILE and ref is None:
                yield path, size, digest, mode, mtime_ns  # type: ignore[misc]

    def references(self) -> Iterator[tuple[str, int, str]]:
        """(path, size, URI) of every reference entry."""
        for path, (kind, _mode, size, _d, _t, _m, ref, _e) in self._entries.items():
            if kind == FILE and ref is not None:
                yield path, size, ref

    def totals(self) -> tuple[int, int]:
        """(file count, sum of file sizes), references included."""
        sizes = [row[2] for row in self._entries.values() if row[0] == FILE]
        return len(sizes), sum(sizes)

    def symlinks(self) -> list[str]:
        """Paths of the symbolic links."""
        return [p for p, row in self._entries.items() if row[0] == SYMLINK]

    def tree_digest(self) -> str:
        """A digest of the tree's content, independent of how SQLite lays it out."""
        h = xxhash.xxh3_128()
        for path in sorted(self._entries):
            h.update(tree_line(path, *self._entries[path]))
        return f"xxh128:{h.hexdigest()}"

    def write(self, dest: Path) -> None:
        paths = sorted(self._entries, key=lambda p: p.split("/"))
        ids = {p: i for i, p in enumerate(paths, start=ROOT_ID)}
        total_size = 0
        file_count = 0
        rows = []
        refs = any(row[6] is not None for row in self._entries.values())
        for path in paths:
            kind, mode, size, digest, target, mtime, ref, etag = self._entries[path]
            parent, _, name = path.rpartition("/")
            row = (ids[path], ids[parent] if path else 0, name, kind, mode, size, digest, target)
            # Format 2 has no reference columns: its rows stay as they were.
            rows.append((*row, mtime, ref, etag) if refs else (*row, mtime))
            if kind == FILE:
                total_size += size
                file_count += 1
        dest.unlink(missing_ok=True)
        db = sqlite3.connect(dest)
        try:
            schema = _SCHEMA_REFS if refs else _SCHEMA
            db.executescript("PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF;" + schema)
            with db:
                marks = ",".join("?" * len(rows[0]))
                db.executemany(f"INSERT INTO entries VALUES ({marks})", rows)
                db.executemany(
                    "INSERT INTO info VALUES (?,?)",
                    [
                        ("format", str(REFERENCE_FORMAT if refs else FORMAT)),
                        ("file_count", str(file_count)),
                        ("total_size", str(total_size)),
                        ("tree", self.tree_digest()),
                    ],
                )
        finally:
            db.close()

    @classmethod
    def from_manifest(
        cls, manifest: Manifest, default_mtime_ns: int | None = None
    ) -> ManifestBuilder:
        """A builder holding an existing version's tree, to edit into the next.

        Entries of a format-1 manifest have no mtime: they get
        ``default_mtime_ns`` (that version's commit time), as they showed.
        """
        builder = cls()
        root = manifest.root()
        entries = [("", root), *manifest.walk()]
        for path, e in entries:
            mtime = e.mtime_ns if e.mtime_ns is not None else default_mtime_ns
            mode = e.mode & PERMISSION_BITS
            row = (e.kind, mode, e.size, e.digest, e.target, mtime, e.ref, e.etag)
            builder._entries[path] = row
        return builder


def scan_tree(root: Path, builder: ManifestBuilder, prefix: str = "") -> list[tuple[str, Path]]:
    """Add a directory tree's directories and symlinks to ``builder``.

    Returns the regular files as (path in artifact, path on disk), for the
    caller to hash. Symlinks are kept as links and never followed; anything
    else (sockets, devices) is refused. Directories keep their permission
    bits and mtimes (``root`` gives the tree's root, or ``prefix``).
    """
    return [(path, Path(disk)) for path, disk in iter_tree(root, builder, prefix)]


def iter_tree(root: Path, builder: Any, prefix: str = "") -> Iterator[tuple[str, str]]:
    """``scan_tree`` as it goes: each regular file as it is found, its path on
    disk a ``str`` (a ``Path`` per file was a third of a warm scan's time;
    ``builder`` has ``add_dir`` and ``add_symlink``: a ManifestBuilder or
    SpillingBuilder)."""
    st = os.stat(root)
    builder.add_dir(prefix, mode=st.st_mode, mtime_ns=st.st_mtime_ns)
    stack: list[tuple[str | Path, str]] = [(root, prefix)]
    while stack:
        d, rel = stack.pop()
        with os.scandir(d) as it:
            for entry in it:
                path = f"{rel}/{entry.name}" if rel else entry.name
                check_path_component(entry.name, path)
                # The kinds come from readdir's d_type: no stat per entry.
                if entry.is_symlink():
                    target = os.readlink(entry.path)
                    try:
                        target.encode()
                    except UnicodeEncodeError:
                        raise BadName(f"bad link {path!r}: its target must be UTF-8") from None
                    mtime = entry.stat(follow_symlinks=False).st_mtime_ns
                    builder.add_symlink(path, target, mtime_ns=mtime)
                elif entry.is_dir(follow_symlinks=False):
                    st = entry.stat(follow_symlinks=False)
                    builder.add_dir(path, mode=st.st_mode, mtime_ns=st.st_mtime_ns)
                    stack.append((entry.path, path))
                elif entry.is_file(follow_symlinks=False):
                    yield path, entry.path
                else:
                    raise ValueError(f"cannot store {entry.path}: not a file, directory or link")


class Manifest:
    """A manifest opened read-only. Safe to share between threads."""

    def __init__(self, path: Path, digest: str | None = None) -> None:
        self.path = Path(path)
        self.digest = digest
        self._local = threading.local()
        where = digest or path
        try:
            for table, required in _REQUIRED.items():
                cols = {r[1] for r in self._db().execute(f"PRAGMA table_info({table})")}
                if not required <= cols:
                    raise ManifestError(f"bad manifest {where}: no table {table} as expected")
            info = dict(self._db().execute("SELECT key, value FROM info"))
            self.format = int(info.get("format", "0"))
            if self.format not in READABLE_FORMATS:
                raise ManifestError(f"bad manifest {where}: unknown format {info.get('format')}")
            if self.format == 1:  # no mtime column
                self._COLS = "id, parent, name, kind, mode, size, digest, target, NULL"
            elif "mtime" not in cols:
                raise ManifestError(f"bad manifest {where}: format 2 without mtimes")
            elif self.format == REFERENCE_FORMAT:
                if not {"ref", "etag"} <= cols:
                    raise ManifestError(f"bad manifest {where}: format 3 without references")
                self._COLS = Manifest._COLS + ", ref, etag"
                self._NOT_REF = " AND ref IS NULL"
            self.file_count = int(info["file_count"])
            self.total_size = int(info["total_size"])
            self.tree_digest = str(info["tree"])
        except (sqlite3.Error, KeyError, ValueError, TypeError) as e:
            self.close()
            if isinstance(e, ManifestError):
                raise
            raise ManifestError(f"bad manifest {where}: not an artfs manifest ({e})") from None

    def _db(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            uri = f"file:{self.path}?mode=ro&immutable=1"
            db = sqlite3.connect(uri, uri=True, check_same_thread=False)
            self._local.db = db
        return db

    _COLS = "id, parent, name, kind, mode, size, digest, target, mtime"
    _NOT_REF = ""  # a condition that leaves reference entries out (format 3)

    def _rows(self, sql: str, args: tuple = ()) -> list[tuple]:
        """Rows of a query; a database that fails to read is a bad manifest."""
        try:
            return self._db().execute(sql, args).fetchall()
        except sqlite3.Error as e:
            raise ManifestError(f"bad manifest {self.digest or self.path}: {e}") from None

    def _entries(self, sql: str, args: tuple = ()) -> list[Entry]:
        where = self.digest or self.path
        return [_entry(r, where) for r in self._rows(sql, args)]

    def entry(self, entry_id: int) -> Entry | None:
        rows = self._entries(f"SELECT {self._COLS} FROM entries WHERE id = ?", (entry_id,))
        return rows[0] if rows else None

    def root(self) -> Entry:
        root = self.entry(ROOT_ID)
        if root is None:
            raise ManifestError(f"bad manifest {self.digest or self.path}: no root entry")
        return root

    def child(self, parent_id: int, name: str) -> Entry | None:
        rows = self._entries(
            f"SELECT {self._COLS} FROM entries WHERE parent = ? AND name = ? LIMIT 1",
            (parent_id, name),
        )
        return rows[0] if rows else None

    def children(self, parent_id: int, after_id: int = 0, limit: int = -1) -> list[Entry]:
        """Entries of one directory in name order, starting after ``after_id``."""
        return self._entries(
            f"SELECT {self._COLS} FROM entries WHERE parent = ? AND id > ? ORDER BY id LIMIT ?",
            (parent_id, after_id, limit),
        )

    def lookup(self, path: str) -> Entry | None:
        entry: Entry | None = self.root()
        for part in (p for p in path.split("/") if p):
            if entry is None or not entry.is_dir:
                return None
            entry = self.child(entry.id, part)
        return entry

    def walk(self) -> Iterator[tuple[str, Entry]]:
        """Every entry but the root, parents before children.

        ManifestError on an entry whose parent is no directory before it, or
        a path that two entries claim (either could turn a directory into a
        link that a later entry is written through).
        """
        where = self.digest or self.path
        self.root()
        paths = {ROOT_ID: ""}
        seen: set[str] = set()
        try:
            rows = self._db().execute(
                f"SELECT {self._COLS} FROM entries WHERE id > ? ORDER BY id", (ROOT_ID,)
            )
            for row in rows:
                e = _entry(row, where)
                parent = paths.get(e.parent)
                if parent is None:
                    raise ManifestError(f"bad manifest {where}: {e.name!r} has no parent directory")
                path = f"{parent}/{e.name}" if parent else e.name
                if path in seen:
                    raise ManifestError(f"bad manifest {where}: two entries for {path!r}")
                seen.add(path)
                if e.is_dir:
                    paths[e.id] = path
                yield path, e
        except sqlite3.Error as e:
            raise ManifestError(f"bad manifest {where}: {e}") from None

    def files(self) -> Iterator[tuple[str, Entry]]:
        return ((p, e) for p, e in self.walk() if e.is_file)

    def digests(self) -> set[str]:
        """Digests of the store's blobs that the tree uses (references are not blobs)."""
        sql = f"SELECT DISTINCT digest FROM entries WHERE kind = 'f'{self._NOT_REF}"
        out = {r[0] for r in self._rows(sql)}
        bad = next((d for d in out if not (isinstance(d, str) and is_digest(d))), None)
        if bad is not None or None in out:
            raise ManifestError(f"bad manifest {self.digest or self.path}: bad digest {bad!r}")
        return out

    def close(self) -> None:
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None
