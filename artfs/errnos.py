"""Core exceptions become errnos: the one table, for every FUSE node and staging.

Synchronous and free of pyfuse3, so staging (``artfs.staging.errors``) and the
mount (``artfs.fs.errors``) answer the same errno for the same exception: a
name the rules refuse is EINVAL wherever it is refused. The log level says
whether the mount counts it as its own error (ERROR) or as the caller's
(below).
"""

from __future__ import annotations

import errno
import logging
import sqlite3

from artfs import names
from artfs.cache import CacheFull
from artfs.manifest import ManifestError
from artfs.objects import StoreError
from artfs.repo import NotFoundError, RepoError
from artfs.repo.records import CorruptRecord

# Errnos of the disk under a store or the state directory that a wrapped
# error keeps: a full disk says ENOSPC, not EIO.
DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)

# (exception type, errno, log level); first match wins.
TABLE: list[tuple[type[BaseException], int, int]] = [
    (NotFoundError, errno.ENOENT, logging.DEBUG),
    (names.BadName, errno.EINVAL, logging.INFO),
    (CorruptRecord, errno.EIO, logging.ERROR),  # the store's bytes, not the request
    (RepoError, errno.EINVAL, logging.INFO),  # a rule of the registry refused it
    (CacheFull, errno.ENOSPC, logging.ERROR),
    (StoreError, errno.EIO, logging.ERROR),
    (ManifestError, errno.EIO, logging.ERROR),
    (sqlite3.Error, errno.EIO, logging.ERROR),
    (ValueError, errno.EIO, logging.ERROR),
    (OSError, errno.EIO, logging.ERROR),  # one without an errno of its own
]


def classify(e: BaseException) -> tuple[int, int] | None:
    """``(errno, log level)`` for ``e``; None for an exception nobody foresaw."""
    if isinstance(e, OSError) and e.errno:
        return e.errno, logging.ERROR
    own = getattr(e, "errno", None)
    if isinstance(own, int) and own > 0:  # a refusal that names its errno (StagingError)
        return own, logging.WARNING
    if isinstance(e, sqlite3.Error) and "full" in str(e):
        return errno.ENOSPC, logging.ERROR  # the state directory's disk
    cause = e.__cause__ or e.__context__
    if isinstance(cause, OSError) and cause.errno in DISK_ERRNOS:
        return cause.errno, logging.ERROR
    for kind, code, level in TABLE:
        if isinstance(e, kind):
            return code, level
    return None


def errno_of(e: BaseException) -> int:
    """The errno a failed core call answers with (EIO for the unforeseen)."""
    found = classify(e)
    return found[0] if found is not None else errno.EIO
