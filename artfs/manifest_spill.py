"""A manifest builder that keeps its entries in a SQLite file, not in memory.

``artfs put`` of a million files with ``ManifestBuilder`` holds every entry
as Python objects, with the lists of files to hash and the map of sources
beside them: about 1.2 KB a file, 1.19 GB for a million. This builder keeps
the entries in a temporary database instead (directories, a few per
thousand files, also in a set), and everything that walks them streams, so
a put's memory does not grow with the number of files.

A put goes: the scan adds directories, links and *pending* files (a path in
the tree, where its bytes are on disk, its size); the hashing reads the
pending files in chunks and gives each its digest, mode and mtime; the
commit reads unique digests in chunks and their sources. It writes the same
manifest and the same tree digest as ``ManifestBuilder`` would for the same
tree (tests/test_manifest_spill.py): entries in the order of their path's
components, which is the byte order of the path with ``/`` as ``\\0``.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Mapping
from pathlib import Path

import xxhash

from artfs.manifest import (
    _SCHEMA,
    DIR,
    FILE,
    FORMAT,
    PERMISSION_BITS,
    ROOT_ID,
    SYMLINK,
    tree_line,
)
from artfs.names import check_path

_BATCH = 10_000
_TREE = """
CREATE TABLE tree (
    path TEXT NOT NULL UNIQUE,
    sortkey BLOB NOT NULL,
    parent TEXT,
    name TEXT NOT NULL,
    kind TEXT NOT NULL,
    mode INTEGER NOT NULL,
    size INTEGER NOT NULL,
    digest TEXT,
    target TEXT,
    mtime INTEGER,
    source TEXT
);
"""


class DuplicatePath(ValueError):
    """Two entries for one path (two inputs of a put give the same name)."""


def _sortkey(path: str) -> bytes:
    return path.encode().replace(b"/", b"\0")


class SpillingBuilder:
    """Collects a tree by path in a database under ``where``; ``close`` removes nothing
    (the caller owns ``where``, a temporary directory)."""

    def __init__(self, where: Path) -> None:
        self._db = sqlite3.connect(where / "tree.sqlite", check_same_thread=False)
        self._db.executescript(
            "PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF; PRAGMA cache_size=-16384;" + _TREE
        )
        self._dirs: set[str] = set()
        self._rows: list[tuple] = []
        self._insert(("", DIR, 0o755, 0, None, None, None, None), replace=True)
        self._dirs.add("")

    def close(self) -> None:
        self._db.close()

    # -- adding ---------------------------------------------------------------

    def _flush(self) -> None:
        if not self._rows:
            return
        rows, self._rows = self._rows, []
        try:
            with self._db:
                self._db.executemany("INSERT INTO tree VALUES (?,?,?,?,?,?,?,?,?,?,?)", rows)
        except sqlite3.IntegrityError:
            for row in rows:  # which one: the batch was rolled back
                try:
                    with self._db:
                        self._db.execute("INSERT INTO tree VALUES (?,?,?,?,?,?,?,?,?,?,?)", row)
                except sqlite3.IntegrityError:
                    raise DuplicatePath(f"duplicate path {row[0]!r}") from None

    def _insert(self, entry: tuple, *, replace: bool = False) -> None:
        path, kind, mode, size, digest, target, mtime, source = entry
        parent, _, name = path.rpartition("/")
        row = (path, _sortkey(path), parent if path else None, name, kind, mode, size)
        row += (digest, target, mtime, source)
        if replace:
            self._flush()
            with self._db:
                self._db.execute("INSERT OR REPLACE INTO tree VALUES (?,?,?,?,?,?,?,?,?,?,?)", row)
            return
        self._rows.append(row)
        if len(self._rows) >= _BATCH:
            self._flush()

    def _kind_of(self, path: str) -> str | None:
        if path in self._dirs:
            return DIR
        self._flush()
        row = self._db.execute("SELECT kind FROM tree WHERE path = ?", (path,)).fetchone()
        return row[0] if row else None

    def _parent_ready(self, path: str) -> None:
        parent = path.rpartition("/")[0]
        if parent in self._dirs:
            return
        if self._kind_of(parent) is not None:
            raise ValueError(f"bad path {path!r}: {parent!r} is not a directory")
        self.add_dir(parent)

    def _add(self, path: str, entry: tuple) -> None:
        check_path(path)
        self._parent_ready(path)
        if path in self._dirs:
            raise DuplicatePath(f"duplicate path {path!r}")
        self._insert(entry)

    def add_dir(self, path: str, *, mode: int | None = None, mtime_ns: int | None = None) -> None:
        """A directory; ``""`` sets the root's mode and mtime. Twice: the second wins."""
        bits = 0o755 if mode is None else mode & PERMISSION_BITS
        if path:
            check_path(path)
            self._parent_ready(path)
            if path not in self._dirs and self._kind_of(path) is not None:
                raise DuplicatePath(f"duplicate path {path!r}")
        self._insert((path, DIR, bits, 0, None, None, mtime_ns, None), replace=True)
        self._dirs.add(path)

    def add_symlink(self, path: str, target: str, *, mtime_ns: int | None = None) -> None:
        entry = (path, SYMLINK, 0o777, len(target.encode()), None, target, mtime_ns, None)
        self._add(path, entry)

    def add_file(
        self,
        path: str,
        size: int,
        digest: str,
        *,
        mode: int | None = None,
        mtime_ns: int | None = None,
    ) -> None:
        bits = 0o644 if mode is None else mode & PERMISSION_BITS
        self._add(path, (path, FILE, bits, size, digest, None, mtime_ns, None))

    def add_pending(self, path: str, source: str, size: int) -> None:
        """A file still to hash: its bytes are at ``source`` (about ``size`` of them)."""
        self._add(path, (path, FILE, 0o644, size, None, None, None, source))

    # -- hashing pending files ------------------------------------------------

    def pending_bytes(self) -> int:
        self._flush()
        q = "SELECT COALESCE(SUM(size), 0) FROM tree WHERE kind = ? AND digest IS NULL"
        return int(self._db.execute(q, (FILE,)).fetchone()[0])

    def pending(self, chunk: int) -> Iterator[list[tuple[int, str, str]]]:
        """Chunks of (row id, path, source) of the files still to hash."""
        self._flush()
        last = 0
        while True:
            rows = self._db.execute(
                "SELECT rowid, path, source FROM tree WHERE rowid > ? AND kind = ? "
                "AND digest IS NULL ORDER BY rowid LIMIT ?",
                (last, FILE, chunk),
            ).fetchall()
            if not rows:
                return
            last = rows[-1][0]
            yield rows

    def set_hashed(self, rows: list[tuple[int, int, str, int, int]]) -> None:
        """(row id, size, digest, mode, mtime_ns) of hashed pending files."""
        with self._db:
            self._db.executemany(
                "UPDATE tree SET size = ?, digest = ?, mode = ?, mtime = ? WHERE rowid = ?",
                [(size, d, mode & PERMISSION_BITS, t, rid) for rid, size, d, mode, t in rows],
            )

    # -- reading --------------------------------------------------------------

    def __len__(self) -> int:
        self._flush()
        return int(self._db.execute("SELECT COUNT(*) FROM tree").fetchone()[0]) - 1

    def files(self) -> Iterator[tuple[str, int, str]]:
        """(path, size, digest) of every file."""
        self._flush()
        cur = self._db.execute("SELECT path, size, digest FROM tree WHERE kind = ?", (FILE,))
        while rows := cur.fetchmany(_BATCH):
            yield from rows

    def totals(self) -> tuple[int, int]:
        """(file count, sum of file sizes), as ``ManifestBuilder.totals``."""
        count = total = 0
        for _, size, _ in self.files():
            count += 1
            total += size
        return count, total

    def unique_files(self) -> Iterator[tuple[str, int]]:
        """(digest, size) of every distinct file content, in digest order."""
        self._flush()
        cur = self._db.execute(
            "SELECT digest, MIN(size) FROM tree WHERE kind = ? GROUP BY digest", (FILE,)
        )
        while rows := cur.fetchmany(_BATCH):
            yield from rows

    def sources(self) -> SpilledSources:
        self._flush()
        self._db.execute("CREATE INDEX IF NOT EXISTS tree_by_digest ON tree (digest)")
        return SpilledSources(self._db)

    def tree_digest(self) -> str:
        """As ``ManifestBuilder.tree_digest``: entries in sorted path order."""
        self._flush()
        h = xxhash.xxh3_128()
        cur = self._db.execute(
            "SELECT path, kind, mode, size, digest, target, mtime FROM tree ORDER BY path"
        )
        while rows := cur.fetchmany(_BATCH):
            for row in rows:
                h.update(tree_line(*row))
        return f"xxh128:{h.hexdigest()}"

    def write(self, dest: Path) -> None:
        """The manifest, as ``ManifestBuilder.write`` makes it."""
        self._flush()
        self._db.execute("CREATE INDEX IF NOT EXISTS tree_by_sortkey ON tree (sortkey)")
        tree = self.tree_digest()
        dest.unlink(missing_ok=True)
        out = sqlite3.connect(dest)
        try:
            out.executescript("PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF;" + _SCHEMA)
            dir_ids: dict[str, int] = {}  # a parent always comes before its entries
            total_size = file_count = 0
            next_id = ROOT_ID
            cur = self._db.execute(
                "SELECT path, parent, name, kind, mode, size, digest, target, mtime "
                "FROM tree ORDER BY sortkey"
            )
            with out:
                while rows := cur.fetchmany(_BATCH):
                    batch = []
                    for path, parent, name, kind, mode, size, digest, target, mtime in rows:
                        if kind == DIR:
                            dir_ids[path] = next_id
                        elif kind == FILE:
                            total_size += size
                            file_count += 1
                        parent_id = dir_ids[parent] if path else 0
                        batch.append(
                            (next_id, parent_id, name, kind, mode, size, digest, target, mtime)
                        )
                        next_id += 1
                    out.executemany("INSERT INTO entries VALUES (?,?,?,?,?,?,?,?,?)", batch)
                out.executemany(
                    "INSERT INTO info VALUES (?,?)",
                    [
                        ("format", str(FORMAT)),
                        ("file_count", str(file_count)),
                        ("total_size", str(total_size)),
                        ("tree", tree),
                    ],
                )
        finally:
            out.close()


class SpilledSources(Mapping[str, Path]):
    """digest -> a file on disk with those bytes, read from the builder's database."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __getitem__(self, digest: str) -> Path:
        row = self._db.execute(
            "SELECT source FROM tree WHERE digest = ? AND source IS NOT NULL LIMIT 1", (digest,)
        ).fetchone()
        if row is None:
            raise KeyError(digest)
        return Path(row[0])

    def _many(self, digests: list[str]) -> Iterator[tuple[str, str]]:
        for i in range(0, len(digests), 500):  # a query per 500, not each
            some = digests[i : i + 500]
            yield from self._db.execute(
                f"SELECT digest, MIN(source) FROM tree WHERE source IS NOT NULL AND digest IN "
                f"({','.join('?' * len(some))}) GROUP BY digest",
                some,
            )

    def get_many(self, digests: list[str]) -> dict[str, Path]:
        """The sources of those of ``digests`` that have one."""
        return {d: Path(src) for d, src in self._many(digests)}

    def having(self, digests: list[str]) -> set[str]:
        """Those of ``digests`` that have a source."""
        return {d for d, _ in self._many(digests)}

    def __iter__(self) -> Iterator[str]:
        cur = self._db.execute(
            "SELECT DISTINCT digest FROM tree WHERE source IS NOT NULL AND digest IS NOT NULL"
        )
        while rows := cur.fetchmany(_BATCH):
            yield from (r[0] for r in rows)

    def __len__(self) -> int:
        q = "SELECT COUNT(DISTINCT digest) FROM tree WHERE source IS NOT NULL"
        return int(self._db.execute(q).fetchone()[0])
