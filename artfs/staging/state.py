"""The state database of one staging area: what the upper layer's files cannot say.

``state.db`` (SQLite, WAL) holds, next to the upper layer of files:

- ``kv``: the base ref, the type of an artifact not committed yet, the time
  of the last commit;
- ``whiteout``: paths of the merged view deleted from the base;
- ``opaque``: directories re-made after a delete, which show nothing of the
  base below them;
- ``redirect``: directories moved by ``mv`` whose base content now shows
  under their new path (overlayfs's ``redirect_dir``): path -> base path;
- ``hashed``: digests of files hashed as they were written, by inode.

Paths are those of the merged view. Every change is one transaction, and
the sets are mirrored in memory, since every lookup consults them.

One exception: a digest recorded at a close waits in memory and is saved
with others, ``RECORD_BATCH`` to a transaction (one per file cost ~0.1 ms
of every small file's close). A crash loses only unsaved digests, and a
file without one is hashed at commit. Dropping a digest is never put off:
a row left in the database for a file written since would stand for bytes
the file no longer holds.
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

_SCHEMA = """
CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS whiteout (path TEXT PRIMARY KEY);
CREATE TABLE IF NOT EXISTS opaque (path TEXT PRIMARY KEY);
CREATE TABLE IF NOT EXISTS redirect (path TEXT PRIMARY KEY, base TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS hashed (ino INTEGER PRIMARY KEY, size INTEGER, digest TEXT);
"""


RECORD_BATCH = 512


def _below(path: str, prefix: str) -> bool:
    return path == prefix or path.startswith(prefix + "/")


class StateDb:
    """Thread-safe; each method one transaction (recorded digests: a batch)."""

    def __init__(self, path: Path) -> None:
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False)
        self._db.executescript("PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;" + _SCHEMA)
        self.whiteouts = {r[0] for r in self._db.execute("SELECT path FROM whiteout")}
        self.opaque = {r[0] for r in self._db.execute("SELECT path FROM opaque")}
        self.redirects: dict[str, str] = dict(self._db.execute("SELECT path, base FROM redirect"))
        self._kv_cache: dict[str, str | None] = {}
        self._unsaved: dict[int, tuple[int, str]] = {}  # ino -> (size, digest)

    def close(self) -> None:
        with self._lock:
            self._save_digests()
            self._db.close()

    def has_marks(self) -> bool:
        return bool(self.whiteouts or self.opaque or self.redirects)

    # -- small values --------------------------------------------------------

    def kv(self, key: str) -> str | None:
        # Every lookup asks for the base: keep the few keys in memory too.
        if key not in self._kv_cache:
            with self._lock:
                row = self._db.execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()
            self._kv_cache[key] = row[0] if row else None
        return self._kv_cache[key]

    def set_kv(self, key: str, value: str | None) -> None:
        with self._lock, self._db:
            if value is None:
                self._db.execute("DELETE FROM kv WHERE key = ?", (key,))
            else:
                self._db.execute("INSERT OR REPLACE INTO kv VALUES (?, ?)", (key, value))
        self._kv_cache[key] = value

    # -- whiteouts, opaque directories, redirects ----------------------------

    def set_marks(
        self,
        add_whiteout: str | None = None,
        drop_whiteout: str | None = None,
        add_opaque: str | None = None,
        drop_below: str | None = None,
        add_redirect: tuple[str, str] | None = None,
        drop_opaque: str | None = None,
    ) -> None:
        """Change whiteouts, opaque dirs and redirects in one transaction, and in memory.

        ``drop_below``: every mark strictly below a path, and its own opaque
        mark and redirect (what was there is gone).
        """
        with self._lock, self._db:
            if drop_below is not None:
                prefix = drop_below + "/"
                gone_w = {p for p in self.whiteouts if p.startswith(prefix)}
                gone_o = {p for p in self.opaque if _below(p, drop_below)}
                gone_r = [p for p in self.redirects if _below(p, drop_below)]
                self._db.executemany("DELETE FROM whiteout WHERE path = ?", [(p,) for p in gone_w])
                self._db.executemany("DELETE FROM opaque WHERE path = ?", [(p,) for p in gone_o])
                self._db.executemany("DELETE FROM redirect WHERE path = ?", [(p,) for p in gone_r])
                self.whiteouts -= gone_w
                self.opaque -= gone_o
                for p in gone_r:
                    del self.redirects[p]
            if drop_whiteout is not None and drop_whiteout in self.whiteouts:
                self._db.execute("DELETE FROM whiteout WHERE path = ?", (drop_whiteout,))
                self.whiteouts.discard(drop_whiteout)
            if drop_opaque is not None and drop_opaque in self.opaque:
                self._db.execute("DELETE FROM opaque WHERE path = ?", (drop_opaque,))
                self.opaque.discard(drop_opaque)
            if add_whiteout is not None:
                self._db.execute("INSERT OR IGNORE INTO whiteout VALUES (?)", (add_whiteout,))
                self.whiteouts.add(add_whiteout)
            if add_opaque is not None:
                self._db.execute("INSERT OR IGNORE INTO opaque VALUES (?)", (add_opaque,))
                self.opaque.add(add_opaque)
            if add_redirect is not None:
                self._db.execute("INSERT OR REPLACE INTO redirect VALUES (?, ?)", add_redirect)
                self.redirects[add_redirect[0]] = add_redirect[1]

    def move_marks(self, old: str, new: str) -> None:
        """``mv old new``: the marks at and below ``old`` now belong to ``new``."""

        def moved(p: str) -> str:
            return new + p[len(old) :]

        with self._lock, self._db:
            for table, marks in (("whiteout", self.whiteouts), ("opaque", self.opaque)):
                hit = [p for p in marks if _below(p, old)]
                for p in hit:
                    self._db.execute(f"DELETE FROM {table} WHERE path = ?", (p,))
                    self._db.execute(f"INSERT OR IGNORE INTO {table} VALUES (?)", (moved(p),))
                    marks.discard(p)
                    marks.add(moved(p))
            hit_r = [(p, b) for p, b in self.redirects.items() if _below(p, old)]
            for p, _base in hit_r:
                self._db.execute("DELETE FROM redirect WHERE path = ?", (p,))
                del self.redirects[p]
            for p, b in hit_r:
                self._db.execute("INSERT OR REPLACE INTO redirect VALUES (?, ?)", (moved(p), b))
                self.redirects[moved(p)] = b

    # -- digests of files hashed as written ----------------------------------

    def hashed(self, ino: int, size: int) -> str | None:
        row = self.hashed_row(ino)
        return row[1] if row and row[0] == size else None

    def hashed_row(self, ino: int) -> tuple[int, str] | None:
        with self._lock:
            row = self._unsaved.get(ino)
            if row is not None:
                return row
            return self._db.execute(
                "SELECT size, digest FROM hashed WHERE ino = ?", (ino,)
            ).fetchone()

    def set_hashed(self, ino: int, size: int | None = None, digest: str | None = None) -> None:
        """Record ``ino``'s digest (saved with the next batch), or with none
        given, drop it (at once)."""
        with self._lock:
            if digest is not None:
                assert size is not None
                self._unsaved[ino] = (size, digest)
                if len(self._unsaved) >= RECORD_BATCH:
                    self._save_digests()
                return
            self._unsaved.pop(ino, None)
            # Most drops find nothing (a file just made): a read costs less than
            # a write transaction's commit.
            has = "SELECT 1 FROM hashed WHERE ino = ?"
            if self._db.execute(has, (ino,)).fetchone() is None:
                return
            with self._db:
                self._db.execute("DELETE FROM hashed WHERE ino = ?", (ino,))

    def _save_digests(self) -> None:
        if self._unsaved:
            with self._db:
                self._db.executemany(
                    "INSERT OR REPLACE INTO hashed VALUES (?, ?, ?)",
                    [(ino, size, digest) for ino, (size, digest) in self._unsaved.items()],
                )
            self._unsaved.clear()

    def clear(self) -> None:
        """After a commit: no marks, no digests, no base."""
        with self._lock, self._db:
            self._unsaved.clear()
            for table in ("whiteout", "opaque", "redirect", "hashed"):
                self._db.execute(f"DELETE FROM {table}")
            self._db.execute("DELETE FROM kv WHERE key = 'base'")
        self._kv_cache["base"] = None
        self.whiteouts.clear()
        self.opaque.clear()
        self.redirects.clear()
