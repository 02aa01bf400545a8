"""Store locks: what a shared holder reads, and that the rules still hold.

Through a counting proxy in front of the S3 server, so the requests a lock
costs are seen, not guessed.
"""

from __future__ import annotations

import pytest

from artfs.objects.cloud import CloudStore
from artfs.repo import layout
from artfs.repo.locks import EXCLUSIVE, SHARED, LockBusy, StoreLock, list_locks
from tests.faultproxy import FaultProxy
from tests.s3server import S3Server


def test_a_shared_lock_among_many_reads_none_of_theirs(s3server: S3Server, s3_url: str) -> None:
    """Concurrent commits (a daemon's many draft closes) each list ``locks/``
    once; reading every other shared holder's lock made one acquire cost a
    GET per holder, though no shared lock can block a shared one."""
    with FaultProxy(s3server.port) as proxy:
        store = CloudStore(s3_url, {"endpoint": proxy.url})
        held = [StoreLock(store, SHARED, f"commit {i}").acquire() for i in range(6)]
        try:
            proxy.clear()
            with StoreLock(store, SHARED, "one more"):
                assert proxy.count("PUT", "/locks/") == 1
                assert proxy.count("GET", "list-type") == 1
                assert proxy.count("GET", "/locks/shared-") == 0, proxy.requests
            # gc, the exclusive side, still reads every lock: it must see them all.
            assert len(list_locks(store)) == 6
        finally:
            for lock in held:
                lock.release()


def test_a_shared_lock_still_waits_for_gc_and_gc_for_shared(s3_url: str) -> None:
    store = CloudStore(s3_url)
    with StoreLock(store, EXCLUSIVE, "gc elsewhere"), pytest.raises(LockBusy, match="gc else"):
        StoreLock(store, SHARED, "commit", wait=0.3).acquire()
    assert list_locks(store) == []  # the waiting commit left no lock behind
    with StoreLock(store, SHARED, "commit elsewhere"), pytest.raises(LockBusy, match="commit"):
        StoreLock(store, EXCLUSIVE, "gc", wait=0.3).acquire()


def test_a_lock_named_other_than_shared_is_read_by_a_shared_holder(s3_url: str) -> None:
    """Only a key that says ``shared-`` is skipped: an unreadable lock of any
    other name still blocks, as the strictest lock would."""
    store = CloudStore(s3_url)
    store.put(layout.lock_key("someone-else"), b"not json")
    with pytest.raises(LockBusy, match="unreadable lock"):
        StoreLock(store, SHARED, "commit", wait=0.3).acquire()
