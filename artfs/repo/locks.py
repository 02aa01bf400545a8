"""Lock objects in the store: shared for commits, exclusive for gc (as restic's).

There is no server, so a lock is an object ``locks/<id>.json`` that its
holder writes create-only and then refreshes, and every party reads with one
listing of ``locks/``. The rules (the argument is in ``artfs.repo.gc``):

- Shared (a commit, a put): write the lock, *then* list ``locks/``. If a live
  exclusive lock is there, delete ours, wait and start again. A shared holder
  never waits while it holds its lock, so there is no deadlock. It reads only
  the locks not named ``shared-…``: a lock's kind is in its key, and a
  shared lock never blocks a shared holder, so n concurrent commits cost n
  LISTs, not n² GETs.
- Exclusive (gc): write the lock, *then* list ``locks/``; wait, keeping ours,
  until no live shared lock is left. New commits see ours and back off, so gc
  cannot be starved; commits that were already in run to their end. Two gcs
  do not exclude each other: deleting garbage twice is harmless.
- Expiry: a lock carries ``expires`` (its holder's clock + ``ttl``), and its
  holder rewrites it every ``ttl / 6`` by compare-and-swap. Anyone may treat
  a lock whose ``expires`` is past, or whose holder is a dead process on this
  same machine (same boot, same pid namespace, pid gone or reused), as stale:
  ignore it and delete it. So a holder killed by ``kill -9`` or a lost
  machine never blocks the others for more than ``ttl``.
- Lease: a holder may act (write a version record, delete a blob) only while
  its lease is valid: until ``ttl - margin`` after the start of its last
  refresh that landed in time, by its own monotonic clock. A refresh is not
  attempted once the lease has run out, and one that fails its
  compare-and-swap (someone deleted the lock as stale) ends the lease for
  good. ``margin`` covers clock skew between machines plus one store
  request; with it, no observer can find a lock stale while its holder still
  acts.

``ARTFS_LOCK_TTL`` and ``ARTFS_LOCK_WAIT`` (seconds) change the expiry and
how long a party waits for the others before giving up with a message that
names the holders.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from artfs.hooks import mark_point
from artfs.objects import NotFound, ObjectStore, PreconditionFailed, StoreError
from artfs.repo import layout
from artfs.repo.records import RepoError

log = logging.getLogger("artfs.repo.locks")

SHARED, EXCLUSIVE = "shared", "exclusive"
DEFAULT_TTL = 30 * 60.0
DEFAULT_WAIT = 10 * 60.0
_POLL_FIRST, _POLL_MAX = 0.05, 2.0


class LockBusy(RepoError):
    """Waited too long for the other holders; the message names them."""


class LockLost(RepoError):
    """Our lease ran out (a suspended process, an unreachable store): stop acting."""


def _env_seconds(name: str, default: float) -> float:
    text = os.environ.get(name)
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        raise RepoError(f"bad {name}={text!r}: use a number of seconds") from None
    if not math.isfinite(value) or value <= 0:
        raise RepoError(f"bad {name}={text!r}: must be more than 0 seconds")
    return value


def lock_ttl() -> float:
    return _env_seconds("ARTFS_LOCK_TTL", DEFAULT_TTL)


def lock_wait() -> float:
    return _env_seconds("ARTFS_LOCK_WAIT", DEFAULT_WAIT)


def _read_text(path: str) -> str:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return ""


_DEAD = "dead"


def _pid_start(pid: int) -> str:
    """The start time of process ``pid`` in clock ticks since boot; ``_DEAD`` if
    it is gone or a zombie; '' if this process may not see it (hidepid)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return _DEAD
    except PermissionError:
        pass  # it exists, and is someone else's
    text = _read_text(f"/proc/{pid}/stat")
    fields = text.rpartition(")")[2].split()
    if len(fields) < 20:
        return ""
    if fields[0] in ("Z", "X"):
        return _DEAD
    return fields[19]


def _pid_namespace() -> str:
    try:
        return str(os.stat("/proc/self/ns/pid").st_ino)
    except OSError:
        return ""


def process_identity() -> dict[str, Any]:
    """Who holds a lock, precisely enough to tell later whether it still lives."""
    pid = os.getpid()
    return {
        "host": socket.gethostname(),
        "boot": _read_text("/proc/sys/kernel/random/boot_id"),
        "pidns": _pid_namespace(),
        "pid": pid,
        "pid_start": _pid_start(pid),
    }


@dataclass
class LockInfo:
    key: str
    kind: str  # shared, exclusive, or "unknown" for a record we cannot read
    purpose: str
    created: float
    expires: float
    holder: dict[str, Any] = field(default_factory=dict)

    def holder_dead(self) -> bool:
        """True only when the holder is surely a dead process of this machine."""
        h = self.holder
        me = process_identity()
        if not h.get("boot") or not h.get("pidns"):
            return False
        if (h.get("boot"), h.get("pidns")) != (me["boot"], me["pidns"]):
            return False  # another machine or container: only expiry tells
        pid = h.get("pid")
        if not isinstance(pid, int) or pid <= 0:
            return False
        start = _pid_start(pid)
        # Gone, or the pid now names another process; unknown ('') is alive.
        return start == _DEAD or (start != "" and start != h.get("pid_start"))

    def stale(self, now: float | None = None) -> bool:
        return (now if now is not None else time.time()) > self.expires or self.holder_dead()

    def describe(self) -> str:
        h = self.holder
        since = time.strftime("%H:%M:%S", time.localtime(self.created))
        return (
            f"{self.purpose or self.kind} on {h.get('host', '?')} (pid {h.get('pid', '?')}) "
            f"since {since}"
        )


def _parse_lock(store: ObjectStore, key: str, mtime: float, ttl: float) -> LockInfo | None:
    try:
        data = store.get(key)
    except NotFound:
        return None  # released meanwhile
    try:
        rec = json.loads(data)
        kind = rec["kind"]
        created = float(rec["created"])
        expires = float(rec["expires"])
        if kind not in (SHARED, EXCLUSIVE) or not math.isfinite(expires):
            raise ValueError(kind)
        holder = rec.get("holder") if isinstance(rec.get("holder"), dict) else {}
        purpose = str(rec.get("purpose", ""))
    except (ValueError, KeyError, TypeError):
        # Unreadable: it blocks everyone, as the strictest lock would, until
        # it is as old as any lock may be.
        return LockInfo(key, "unknown", "unreadable lock", mtime, mtime + ttl)
    return LockInfo(key, kind, purpose, created, expires, holder)


def list_locks(
    store: ObjectStore, ttl: float | None = None, *, blocking_for: str | None = None
) -> list[LockInfo]:
    """Every lock in the store, each read (one GET a lock).

    ``blocking_for=SHARED`` leaves out, unread, the locks named shared (see
    ``_named_shared``): they never block a shared holder, whatever they
    say, so a commit among many concurrent ones costs one LIST, not one GET
    per other holder.
    """
    ttl = ttl if ttl is not None else lock_ttl()
    out = []
    for obj in store.list(layout.locks_prefix(), recursive=True).objects:
        if not obj.key.endswith(".json"):
            continue
        if blocking_for == SHARED and _named_shared(obj.key):
            continue
        info = _parse_lock(store, obj.key, obj.mtime, ttl)
        if info is not None:
            out.append(info)
    return out


def _named_shared(key: str) -> bool:
    # A lock's key carries its kind (``StoreLock._write``): the name is chosen
    # by the holder, as the body is, so it is as much the holder's word.
    return layout.key_basename(key).startswith(f"{SHARED}-")


def remove_stale_locks(store: ObjectStore, locks: list[LockInfo] | None = None) -> list[LockInfo]:
    """Delete the locks whose holders can no longer act; returns them."""
    now = time.time()
    stale = [
        lock for lock in (locks if locks is not None else list_locks(store)) if lock.stale(now)
    ]
    for lock in stale:
        store.delete(lock.key)
    return stale


class StoreLock:
    """One shared or exclusive lock object, held with a lease (see the module doc).

    with StoreLock(store, SHARED, "commit proj/ds") as lock:
        ...
        lock.check()  # before each step that must be covered
    """

    def __init__(
        self,
        store: ObjectStore,
        kind: str,
        purpose: str,
        *,
        ttl: float | None = None,
        wait: float | None = None,
        on_wait: Callable[[list[LockInfo]], None] | None = None,
    ) -> None:
        assert kind in (SHARED, EXCLUSIVE)
        self.store = store
        self.kind = kind
        self.purpose = purpose
        self.ttl = ttl if ttl is not None else lock_ttl()
        self.wait = wait if wait is not None else lock_wait()
        self.margin = self.ttl / 3
        self.on_wait = on_wait
        self.key: str | None = None
        self._etag = ""
        self._record: dict[str, Any] = {}
        self._valid_until = 0.0
        self._lost: str | None = None
        self._stop = threading.Event()
        self._refresher: threading.Thread | None = None
        self._guard = threading.Lock()
        self.waited = 0.0

    # -- the object -------------------------------------------------------

    def _encode(self, record: dict[str, Any]) -> bytes:
        return json.dumps(record, indent=1, sort_keys=True).encode() + b"\n"

    def _write(self) -> None:
        self.key = layout.lock_key(f"{self.kind}-{uuid.uuid4().hex}")
        started = time.monotonic()
        now = time.time()
        self._record = {
            "kind": self.kind,
            "purpose": self.purpose,
            "created": now,
            "expires": now + self.ttl,
            "holder": process_identity(),
        }
        self._etag = self.store.put(self.key, self._encode(self._record), if_absent=True)
        self._valid_until = started + self.ttl - self.margin
        self._lost = None

    def _delete(self) -> None:
        if self.key is not None:
            with contextlib.suppress(StoreError):
                self.store.delete(self.key)
            self.key = None

    def _others(self) -> list[LockInfo]:
        """The other locks that may block us (a shared holder reads no shared lock)."""
        wanted = SHARED if self.kind == SHARED else None
        locks = list_locks(self.store, self.ttl, blocking_for=wanted)
        return [lock for lock in locks if lock.key != self.key]

    # -- acquire / release ------------------------------------------------------

    def acquire(self) -> StoreLock:
        started = time.monotonic()
        deadline = started + self.wait
        poll = _POLL_FIRST
        told = False
        if self.kind == EXCLUSIVE:
            self._write()
            self._start_refresher()
        while True:
            if self.kind == SHARED:
                self._write()
            now = time.time()
            others = self._others()
            if self.kind == SHARED:
                blocking = [lock for lock in others if lock.kind != SHARED and not lock.stale(now)]
            else:
                blocking = [
                    lock for lock in others if lock.kind != EXCLUSIVE and not lock.stale(now)
                ]
            if not blocking:
                break
            if self.kind == SHARED:
                self._delete()  # never wait while holding: no deadlock
            if time.monotonic() > deadline:
                self.release()
                holders = "; ".join(lock.describe() for lock in blocking[:3])
                raise LockBusy(
                    f"the store is busy: {holders} (waited {self.wait:.0f}s; "
                    "retry later, or set ARTFS_LOCK_WAIT)"
                )
            if not told:
                told = True
                log.info("waiting for %s", "; ".join(lock.describe() for lock in blocking[:3]))
                mark_point(f"LOCK_WAIT_{self.kind.upper()}")
                if self.on_wait:
                    self.on_wait(blocking)
            time.sleep(poll)
            poll = min(poll * 1.5, _POLL_MAX)
        self.waited = time.monotonic() - started
        if self.kind == SHARED:
            self._start_refresher()
        return self

    def release(self) -> None:
        self._stop.set()
        if self._refresher is not None:
            self._refresher.join()
            self._refresher = None
        self._delete()

    def __enter__(self) -> StoreLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()

    # -- the lease ---------------------------------------------------------------

    def check(self) -> None:
        """Raise LockLost unless the lease still covers the next store request."""
        with self._guard:
            lost = self._lost
            if lost is None and time.monotonic() >= self._valid_until:
                lost = f"lease of {self.key} ran out (held without refresh for too long)"
        if lost is not None:
            raise LockLost(f"lost the store lock for {self.purpose}: {lost}; retry")

    def _start_refresher(self) -> None:
        self._stop.clear()
        self._refresher = threading.Thread(
            target=self._refresh_loop, name=f"artfs-lock-{self.kind}", daemon=True
        )
        self._refresher.start()

    def _refresh_loop(self) -> None:
        while not self._stop.wait(self.ttl / 6):
            self.refresh()

    def refresh(self) -> None:
        """Extend the lease by rewriting the lock (compare-and-swap on our own etag)."""
        started = time.monotonic()
        with self._guard:
            if self._lost is not None or self.key is None:
                return
            if started >= self._valid_until:
                self._lost = "lease ran out before it could be refreshed"
                return
            record = dict(self._record, expires=time.time() + self.ttl)
            key, etag = self.key, self._etag
        try:
            new_etag = self.store.put(key, self._encode(record), if_match=etag)
        except (PreconditionFailed, NotFound):
            with self._guard:
                self._lost = "the lock was removed as stale by another process"
            return
        except StoreError as e:
            log.warning("cannot refresh %s: %s (will retry)", key, e)
            return
        with self._guard:
            if time.monotonic() >= self._valid_until:
                self._lost = "a refresh landed after the lease ran out"
                return
            self._record, self._etag = record, new_etag
            self._valid_until = started + self.ttl - self.margin
