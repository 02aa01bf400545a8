"""Read-ahead of a version directory's small files, for readers that walk a
directory in listing order (``tar c``, ``cp -r``, a loader over sorted files).

On a cold page cache every open of a small file waits for its blob: a local
store's file read at random on disk and hashed, an object store's fetched.
One reader opening files one at a time leaves the disk (or S3) and the
daemon idle most of the time; both serve parallel requests far better. So
when opens come in listing order, the next files of the directory are made
ready ahead of them, a few at a time in parallel, and their opens are then
answered on the event loop (``BlobCache.read_small_now``).

Trigger. Every open of a small file of a version tree tells ``opened`` its
directory (a key: tree and parent entry), its entry id and how to list the
directory. An open is *in order* when it comes after the directory's last
open and at most ``NEAR`` entries past it: counted in ids before anything is
planned, in planned listing entries after (a directory's entries are
numbered in listing order, but a subdirectory's whole tree is numbered
between two siblings). A first open that is of the directory's first entry
counts as in order (a walk starts there). ``START`` in-order opens in a row
start read-ahead;
from then on every in-order open keeps a window of entries past it planned,
``FIRST_WINDOW`` growing to ``MAX_WINDOW`` (doubling every ``FIRST_WINDOW``
in-order opens) while the order holds. An open out of order (random access,
a seek back) stops the directory's read-ahead: its window starts over.
Opens in random order therefore start none. Re-opening the last file
changes nothing. Once the planned window reaches the end of a directory's
listing, the next in-order open there also plans the first window of the
directory the walk goes to next (``next_dir``: its next sibling directory),
as if its walk had begun: the first opens of each directory of a ``tar``
need not wait either. That is done once per run in order.

Work, and its bounds. Planning is one indexed query of the directory's next
entries in the open's own thread (``listing``: the manifest is open, so it
needs no store; the event loop may run it, as it answers lookups); warming
(``BlobCache.warm``) runs on ``workers_for`` daemon threads of this
process's own (``WORKERS`` for a local store, ``REMOTE_WORKERS`` for an
object store), so at most that many blobs are being made ready at once. At most
``MAX_QUEUED`` warms are queued or running over all directories: a plan
takes only the room left, and a later in-order open plans the rest. At most
``MAX_DIRS`` directories are followed (the least recently opened is
forgotten). Warming a local store's blob verifies it as an open would (its
stamp becomes known, its pages are read); an object store's blob is fetched
into the cache (single flight with any real open of it, by
``BlobCache.ensure``) unless the cache would then hold more than
``NEAR_LIMIT`` of its size limit (store.py; fetches in flight included):
read-ahead stops there and never makes the cache evict for a guess; an
entry already cached has its stamp checked and its pages read.

What it may not do. It never serves bytes nor hands out a reader: every
real open checks stamps and verifies exactly as without it, so a blob
damaged after it was warmed is still never served (EIO from a local store,
fetched again into the cache). A failure (blob missing or corrupt, store
down, manifest unreadable) is logged at debug level and otherwise ignored:
the real open reports it, as it would have. ``ARTFS_TEST_PAUSE_PREFETCH``
(artfs/hooks.py) holds every warm before it starts, for tests of the bounds.
"""

from __future__ import annotations

import bisect
import logging
import os
import queue
import sqlite3
import threading
from collections import Counter, OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any, Protocol

from artfs.hooks import pause_point
from artfs.objects import StoreError

log = logging.getLogger("artfs.cache")

NEAR = 3
START = 2
FIRST_WINDOW = 8
MAX_WINDOW = 64
# Threads warming blobs: a local disk gains little past a few requests at
# once; an object store's requests mostly wait out its latency, so more pay
# (bench/bench_prefetch.py). ARTFS_PREFETCH_WORKERS sets both (0: read-ahead
# off, for bench/ to measure it on and off).
WORKERS = 4
REMOTE_WORKERS = 16
MAX_QUEUED = 128
MAX_DIRS = 64

# A directory's next entries: (after entry id, how many) -> [(entry id, blob
# digest to warm or None for an entry that is no small file, size)], in
# listing order; fewer than asked: the listing ended.
Listing = Callable[[int, int], list[tuple[int, str | None, int]]]


# The directory a walk goes to after this one (its next sibling directory):
# (key, its own entry id, its listing), or None.
NextDir = Callable[[], "tuple[Hashable, int, Listing] | None"]


class Warmer(Protocol):
    def warm(self, digest: str, size: int) -> str: ...


@dataclass
class _Dir:
    last_id: int
    streak: int = 0  # in-order opens in a row
    ahead: list[int] = field(default_factory=list)  # planned ids past last_id, ascending
    planned_to: int = 0  # the next plan lists entries after this id
    done: bool = False  # the listing ended
    planning: bool = False
    chained: bool = False  # the next directory was planned
    generation: int = 0  # moved by every restart: a plan of before is dropped


def workers_for(local: bool) -> int:
    """Warming threads for a store in a local directory or not (ARTFS_PREFETCH_WORKERS wins)."""
    env = os.environ.get("ARTFS_PREFETCH_WORKERS", "")
    if env.isdigit():
        return int(env)
    return WORKERS if local else REMOTE_WORKERS


def window(streak: int) -> int:
    """Entries kept planned past an open that is the ``streak``-th in order."""
    doublings = min(max(streak - START, 0) // FIRST_WINDOW, 8)
    return min(MAX_WINDOW, FIRST_WINDOW << doublings)


class Prefetcher:
    """Read-ahead for one process (the mount's daemon). Thread-safe; ``opened``
    never blocks (the event loop calls it)."""

    def __init__(self, cache: Warmer, workers: int = WORKERS, max_queued: int = MAX_QUEUED) -> None:
        self.cache = cache
        self.workers = workers
        self.max_queued = max_queued
        self._lock = threading.Lock()
        self._dirs: OrderedDict[Hashable, _Dir] = OrderedDict()
        self._jobs: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._closed = False
        self._queued = 0  # warms queued or running, and room reserved by a plan
        self._running = 0
        self.counts: Counter[str] = Counter()  # warms by outcome, plans, starts
        self.max_queued_seen = 0
        self.max_running_seen = 0

    def opened(
        self,
        key: Hashable,
        entry_id: int,
        listing: Listing,
        first: bool = False,
        next_dir: NextDir | None = None,
    ) -> None:
        """A small file ``entry_id`` of directory ``key`` was opened; ``first``:
        it is the directory's first entry (a walk starts there: it counts as
        one open in order); ``next_dir``: where the walk goes after it."""
        if self.workers <= 0:
            return
        with self._lock:
            plan = self._note(key, entry_id, first)
            d = self._dirs.get(key)
            chain = d is not None and d.done and d.streak >= START and not d.chained
            if chain and d is not None:
                d.chained = True
                want = window(d.streak)
        try:  # never fails the open that called it
            if plan is not None:
                self._plan(*plan, listing)
            if chain and next_dir is not None:
                self._chain(next_dir, want)
        except Exception:
            log.exception("read-ahead failed unexpectedly")

    def _chain(self, next_dir: NextDir, want: int) -> None:
        """A walk in order reached the end of its directory's listing: plan the
        first ``want`` entries of the directory it goes to next."""
        try:
            nxt = next_dir()
        except (StoreError, OSError, sqlite3.Error, ValueError) as e:  # ManifestError too
            log.debug("read-ahead: cannot find the next directory: %s", e)
            return
        if nxt is None:
            return
        key, start_id, listing = nxt
        with self._lock:
            if key in self._dirs:
                return
            # Its own id as the last open: its first entry comes next, in order.
            d = self._follow(key, _Dir(start_id, streak=START - 1, planned_to=start_id))
            need = min(want, self.max_queued - self._queued)
            if need <= 0:
                return
            d.planning = True
            self._queued += need
            self.counts["chained"] += 1
        self._plan(d, d.generation, start_id, need, listing)

    def _note(self, key: Hashable, entry_id: int, first: bool) -> tuple[_Dir, int, int, int] | None:
        """Record the open; what to plan now (directory, generation, after, count), if anything."""
        d = self._dirs.get(key)
        if d is None:
            self._follow(key, _Dir(entry_id, streak=int(first), planned_to=entry_id))
            return None
        self._dirs.move_to_end(key)
        if entry_id == d.last_id:
            return None
        in_order = entry_id > d.last_id and self._near(d, entry_id)
        d.last_id = entry_id
        del d.ahead[: bisect.bisect_right(d.ahead, entry_id)]
        if not in_order:
            d.streak, d.done, d.planning, d.chained = 0, False, False, False
            d.ahead.clear()
            d.planned_to = entry_id
            d.generation += 1
            return None
        d.streak += 1
        if d.streak < START or d.planning or d.done:
            return None
        if d.streak == START:
            self.counts["starts"] += 1
        d.planned_to = max(d.planned_to, entry_id)
        want = window(d.streak)
        need = want - len(d.ahead)
        if need < max(1, want // 4):  # plan in batches, not one query an open
            return None
        need = min(need, self.max_queued - self._queued)
        if need <= 0:
            return None
        d.planning = True
        self._queued += need  # reserved for the warms the plan may queue
        return d, d.generation, d.planned_to, need

    def _follow(self, key: Hashable, d: _Dir) -> _Dir:
        """Start following directory ``key`` (the lock held), forgetting the
        least recently opened one past ``MAX_DIRS``."""
        self._dirs[key] = d
        if len(self._dirs) > MAX_DIRS:
            self._dirs.popitem(last=False)
        return d

    @staticmethod
    def _near(d: _Dir, entry_id: int) -> bool:
        if entry_id - d.last_id <= NEAR:
            return True
        i = bisect.bisect_left(d.ahead, entry_id)
        return i < NEAR and i < len(d.ahead) and d.ahead[i] == entry_id

    def _plan(self, d: _Dir, generation: int, after: int, need: int, listing: Listing) -> None:
        rows: list[tuple[int, str | None, int]] | None
        try:
            rows = listing(after, need)
        except (StoreError, OSError, sqlite3.Error, ValueError) as e:  # ManifestError too
            log.debug("read-ahead: cannot list the next entries: %s", e)
            rows = None
        except Exception:  # a bug: still give back the room reserved below
            log.exception("read-ahead: listing failed unexpectedly")
            rows = None
        warms = []
        with self._lock:
            self._queued -= need
            d.planning = False
            if d.generation != generation:
                return
            if rows is None or len(rows) < need:
                d.done = True
            if rows:
                d.planned_to = rows[-1][0]
                d.ahead.extend(i for i, _, _ in rows if i > d.last_id)
                warms = [(dg, n) for i, dg, n in rows if dg is not None and i > d.last_id]
            self._queued += len(warms)
            self.max_queued_seen = max(self.max_queued_seen, self._queued)
            self.counts["plans"] += 1
            self.counts["planned"] += len(warms)
        for digest, size in warms:
            self._submit(lambda digest=digest, size=size: self._warm(digest, size))

    def _warm(self, digest: str, size: int) -> None:
        with self._lock:
            self._running += 1
            self.max_running_seen = max(self.max_running_seen, self._running)
        outcome = "failed"
        try:
            pause_point("PREFETCH")
            outcome = self.cache.warm(digest, size)
        except (StoreError, OSError) as e:  # the real open reports it
            log.debug("read-ahead of blob %s: %s", digest, e)
        finally:
            with self._lock:
                self._running -= 1
                self._queued -= 1
                self.counts[outcome] += 1

    def _submit(self, job: Callable[[], None]) -> None:
        with self._lock:
            if self._closed:
                return
            if len(self._threads) < self.workers:
                t = threading.Thread(target=self._work, name="artfs-prefetch", daemon=True)
                self._threads.append(t)
                t.start()
        self._jobs.put(job)

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            try:
                job()
            except Exception:
                log.exception("read-ahead failed unexpectedly")

    def stats(self) -> dict[str, Any]:
        """What read-ahead did in this process, for the daemon's stats."""
        with self._lock:
            return {
                **dict(sorted(self.counts.items())),
                "queued": self._queued,
                "running": self._running,
                "max_queued": self.max_queued_seen,
                "max_running": self.max_running_seen,
                "dirs": len(self._dirs),
                "workers": self.workers,
            }

    def close(self) -> None:
        """Stop the workers (after the job each is doing); queued jobs are dropped."""
        with self._lock:
            self._closed = True
            threads = list(self._threads)
        while True:
            try:
                self._jobs.get_nowait()
            except queue.Empty:
                break
        for _ in threads:
            self._jobs.put(None)
