"""Manifests: the file tree of one version, as a SQLite database.

One row per entry keyed by (parent, name), as in CernVM-FS catalogs, so that
a lookup or a directory listing is an indexed query and a version of a
million files opens without being parsed. Entry ids are assigned in sorted
path order, so the children of a directory come out in name order when
sorted by id, and an id is a stable readdir offset.

A manifest is written once, stored as a blob, and opened read-only.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import xxhash

from artfs.names import BadName, check_path, check_path_component

FORMAT = 1
ROOT_ID = 1
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
    target TEXT
);
CREATE UNIQUE INDEX entries_by_name ON entries (parent, name);
"""


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


class ManifestBuilder:
    """Collects a tree by path, then writes it as a manifest file."""

    def __init__(self) -> None:
        # path -> (kind, mode, size, digest, target); "" is the root.
        self._entries: dict[str, tuple[str, int, int, str | None, str | None]] = {
            "": (DIR, 0o755, 0, None, None)
        }

    def __len__(self) -> int:
        return len(self._entries) - 1

    def __contains__(self, path: str) -> bool:
        return bool(path) and path in self._entries

    def _add(self, path: str, row: tuple[str, int, int, str | None, str | None]) -> None:
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

    def add_file(self, path: str, size: int, digest: str, *, executable: bool = False) -> None:
        self._add(path, (FILE, file_mode(executable), size, digest, None))

    def add_dir(self, path: str) -> None:
        self._add(path, (DIR, 0o755, 0, None, None))

    def add_symlink(self, path: str, target: str) -> None:
        self._add(path, (SYMLINK, 0o777, len(target.encode()), None, target))

    def remove(self, path: str) -> None:
        """Drop an entry and, for a directory, everything below it."""
        row = self._entries.pop(path, None)
        if row is None or row[0] != DIR:
            return  # nothing can be below a file, a link or a missing path
        prefix = path + "/"
        for p in [p for p in self._entries if p.startswith(prefix)]:
            del self._entries[p]

    def files(self) -> Iterator[tuple[str, int, str]]:
        """(path, size, digest) of every file."""
        for path, (kind, _mode, size, digest, _t) in self._entries.items():
            if kind == FILE:
                yield path, size, digest  # type: ignore[misc]

    def tree_digest(self) -> str:
        """A digest of the tree's content, independent of how SQLite lays it out."""
        h = xxhash.xxh3_128()
        for path in sorted(self._entries):
            kind, mode, size, digest, target = self._entries[path]
            h.update(f"{path}\0{kind}\0{mode:o}\0{size}\0{digest or ''}\0{target or ''}\n".encode())
        return f"xxh128:{h.hexdigest()}"

    def write(self, dest: Path) -> None:
        paths = sorted(self._entries, key=lambda p: p.split("/"))
        ids = {p: i for i, p in enumerate(paths, start=ROOT_ID)}
        total_size = 0
        file_count = 0
        rows = []
        for path in paths:
            kind, mode, size, digest, target = self._entries[path]
            parent, _, name = path.rpartition("/")
            rows.append(
                (ids[path], ids[parent] if path else 0, name, kind, mode, size, digest, target)
            )
            if kind == FILE:
                total_size += size
                file_count += 1
        dest.unlink(missing_ok=True)
        db = sqlite3.connect(dest)
        try:
            db.executescript("PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF;" + _SCHEMA)
            with db:
                db.executemany("INSERT INTO entries VALUES (?,?,?,?,?,?,?,?)", rows)
                db.executemany(
                    "INSERT INTO info VALUES (?,?)",
                    [
                        ("format", str(FORMAT)),
                        ("file_count", str(file_count)),
                        ("total_size", str(total_size)),
                        ("tree", self.tree_digest()),
                    ],
                )
        finally:
            db.close()

    @classmethod
    def from_manifest(cls, manifest: Manifest) -> ManifestBuilder:
        """A builder holding an existing version's tree, to edit into the next."""
        builder = cls()
        for path, e in manifest.walk():
            builder._entries[path] = (e.kind, e.mode, e.size, e.digest, e.target)
        return builder


def scan_tree(root: Path, builder: ManifestBuilder, prefix: str = "") -> list[tuple[str, Path]]:
    """Add a directory tree's directories and symlinks to ``builder``.

    Returns the regular files as (path in artifact, path on disk), for the
    caller to hash. Symlinks are kept as links and never followed; anything
    else (sockets, devices) is refused.
    """
    files: list[tuple[str, Path]] = []
    if prefix:
        builder.add_dir(prefix)
    stack = [(root, prefix)]
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
                    builder.add_symlink(path, target)
                elif entry.is_dir(follow_symlinks=False):
                    builder.add_dir(path)
                    stack.append((Path(entry.path), path))
                elif entry.is_file(follow_symlinks=False):
                    files.append((path, Path(entry.path)))
                else:
                    raise ValueError(f"cannot store {entry.path}: not a file, directory or link")
    return files


class Manifest:
    """A manifest opened read-only. Safe to share between threads."""

    def __init__(self, path: Path, digest: str | None = None) -> None:
        self.path = Path(path)
        self.digest = digest
        self._local = threading.local()
        info = dict(self._db().execute("SELECT key, value FROM info"))
        if int(info.get("format", "0")) != FORMAT:
            raise ValueError(f"manifest {path}: unknown format {info.get('format')}")
        self.file_count = int(info["file_count"])
        self.total_size = int(info["total_size"])
        self.tree_digest = info["tree"]

    def _db(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            uri = f"file:{self.path}?mode=ro&immutable=1"
            db = sqlite3.connect(uri, uri=True, check_same_thread=False)
            self._local.db = db
        return db

    _COLS = "id, parent, name, kind, mode, size, digest, target"

    def entry(self, entry_id: int) -> Entry | None:
        row = (
            self._db()
            .execute(f"SELECT {self._COLS} FROM entries WHERE id = ?", (entry_id,))
            .fetchone()
        )
        return Entry(*row) if row else None

    def root(self) -> Entry:
        root = self.entry(ROOT_ID)
        assert root is not None
        return root

    def child(self, parent_id: int, name: str) -> Entry | None:
        row = (
            self._db()
            .execute(
                f"SELECT {self._COLS} FROM entries WHERE parent = ? AND name = ?", (parent_id, name)
            )
            .fetchone()
        )
        return Entry(*row) if row else None

    def children(self, parent_id: int, after_id: int = 0, limit: int = -1) -> list[Entry]:
        """Entries of one directory in name order, starting after ``after_id``."""
        rows = self._db().execute(
            f"SELECT {self._COLS} FROM entries WHERE parent = ? AND id > ? ORDER BY id LIMIT ?",
            (parent_id, after_id, limit),
        )
        return [Entry(*r) for r in rows]

    def lookup(self, path: str) -> Entry | None:
        entry: Entry | None = self.root()
        for part in (p for p in path.split("/") if p):
            if entry is None or not entry.is_dir:
                return None
            entry = self.child(entry.id, part)
        return entry

    def walk(self) -> Iterator[tuple[str, Entry]]:
        """Every entry but the root, parents before children."""
        paths = {ROOT_ID: ""}
        for row in self._db().execute(
            f"SELECT {self._COLS} FROM entries WHERE id > ? ORDER BY id", (ROOT_ID,)
        ):
            e = Entry(*row)
            parent = paths[e.parent]
            path = f"{parent}/{e.name}" if parent else e.name
            if e.is_dir:
                paths[e.id] = path
            yield path, e

    def files(self) -> Iterator[tuple[str, Entry]]:
        return ((p, e) for p, e in self.walk() if e.is_file)

    def digests(self) -> set[str]:
        return {
            r[0] for r in self._db().execute("SELECT DISTINCT digest FROM entries WHERE kind = 'f'")
        }

    def close(self) -> None:
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None
