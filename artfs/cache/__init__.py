"""The local, shared, content-addressed blob cache.

One cache per machine, shared by every mount and the CLI::

    blobs/<2 hex>/<digest>     verified blob, read-only (0444), written once
    stamps/<2 hex>/<digest>    its Stamp when last verified; mtime = last use
    partial/<digest>[.parts]   a large blob being fetched part by part
    tmp/                       downloads in progress (renamed when verified)
    locks/<digest>             single-flight lock file of one digest
    counters                   hits and misses of every process

Rules:

- Never wrong bytes. A byte leaves the cache only from a file that passed
  ``verify.verify_fd`` and whose ``fstat`` still equals the stamp taken then
  (size, mtime, inode, ctime), checked at every open. A changed stamp means
  hash again: a file that still matches is stamped anew, one that does not
  is discarded and fetched again. An open reader checks again after every
  read (``readers.CHECK_INTERVAL``: one fstat, not measurable against a 1 MiB
  read through FUSE); a reader kept for, or shared with, another open is
  checked when that open is made, and replaced if its stamp moved.
- A local store's own files are read in place: hashed once per process,
  then trusted while their stamp (kept in memory) holds.
- Partial fetches (partial.py) serve parts before the whole is verified;
  see that module for why that is acceptable.
- Size limit (eviction.py): least recently used first, by the stamp's
  mtime; only entries held open are pinned; a full disk evicts first and
  raises CacheFull only when nothing more can go.

Which lock guards what (threads of one process / processes):

- ``flock(LOCK_EX)`` on ``locks/<digest>`` (after the per-digest
  ``threading.Lock`` in ``BlobCache._locks``): one download or finalize of a
  digest at a time, across processes; a partial's record is (re)initialized
  under it.
- ``flock(LOCK_SH)`` on a blob or partial file: held by every open reader
  (a pin). Cleanup takes ``LOCK_EX|LOCK_NB`` on the file before unlinking it
  and skips it if that fails. Idle readers (kept by the mount for the next
  open) drop their ``LOCK_SH`` and take it back, non-blocking, when reused.
- ``BlobCache._partials_guard``: the dict of partial fetches of this process
  and their reference counts; ``Partial.cond``: one partial's part states.
- ``BlobCache._size_guard``: the size estimate used to decide when to evict
  (eviction runs under it, so one thread evicts at a time).
- ``BlobCache._locks`` per digest also serializes the hashing of one local
  store file, so concurrent first opens hash it once.
- ``StampBook._lock``: its in-memory copy of stamps. Stamp files are written
  by atomic rename; two processes writing one write the same thing.
- ``flock(LOCK_EX)`` on ``counters``: read-add-write of the totals.
"""

from artfs.cache.eviction import CacheInfo, CleanupResult
from artfs.cache.partial import LazyBlobReader
from artfs.cache.readers import BlobReader
from artfs.cache.store import PART_SIZE, READAHEAD_PARTS, BlobCache, CacheFull
from artfs.cache.verify import BlobError, Stamp, verify_fd

__all__ = [
    "PART_SIZE",
    "READAHEAD_PARTS",
    "BlobCache",
    "BlobError",
    "BlobReader",
    "CacheFull",
    "CacheInfo",
    "CleanupResult",
    "LazyBlobReader",
    "Stamp",
    "verify_fd",
]
