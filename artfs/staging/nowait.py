"""Calls the mount makes on its event loop: what they may not wait for there.

The mount answers some staging requests on its event loop (the trio
thread) rather than through a worker thread, because the hop costs more
than the answer (a local ``stat``, ``pwrite`` or ``close``). It does so
inside ``without_waiting()``, and the core then refuses, by raising
``WouldBlock`` before it has changed anything, to do what could hold the
loop: fetch the base manifest from the store (``StagingArea.base``), or
wait for an area's lock, which a commit holds while it hashes and uploads
(``StagingArea.locked``). The mount then makes the same call again in a
worker thread, where waiting is allowed.

What the loop may still wait for: the state database's lock, held for one
SQLite transaction of local state (a WAL checkpoint's fsync at worst), and
``_nodes_lock``/the inode table's lock, held for bookkeeping only. Both
are also taken by workers, which hold them for no I/O beyond that.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

_local = threading.local()


class WouldBlock(Exception):
    """The call would wait for I/O or a busy lock: make it in a worker thread."""


def waiting_forbidden() -> bool:
    return getattr(_local, "forbidden", False)


@contextlib.contextmanager
def without_waiting() -> Iterator[None]:
    """Within: staging calls of this thread raise ``WouldBlock`` rather than wait."""
    before = waiting_forbidden()
    _local.forbidden = True
    try:
        yield
    finally:
        _local.forbidden = before


@contextlib.contextmanager
def acquired(lock: threading.RLock | threading.Lock, what: str) -> Iterator[None]:
    """``with lock``, but for a thread that may not wait: taken at once or ``WouldBlock``."""
    if waiting_forbidden():
        if not lock.acquire(blocking=False):
            raise WouldBlock(f"{what} is busy")
    else:
        lock.acquire()
    try:
        yield
    finally:
        lock.release()
