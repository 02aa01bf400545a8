"""Exceptions become errnos: one table for every request of the mount.

A request that fails answers with an errno and logs its reason once; the
daemon goes on. Exceptions the table does not name are bugs or bad input
nobody foresaw (a crafted manifest, a vanished file): they answer EIO and
are logged with their traceback, marked ``unexpected`` so tests can fail on
them. Nothing raised inside one request may end the mount.
"""

from __future__ import annotations

import errno
import logging
import sqlite3

import pyfuse3

from artfs import names
from artfs.cache import CacheFull
from artfs.objects import StoreError
from artfs.repo import NotFoundError, RepoError

log = logging.getLogger("artfs.fs")

# (exception type, errno or None for "its own errno", log level); first match wins.
TABLE: list[tuple[type[BaseException], int | None, int]] = [
    (NotFoundError, errno.ENOENT, logging.DEBUG),
    (names.BadName, errno.ENOENT, logging.DEBUG),
    (CacheFull, errno.ENOSPC, logging.ERROR),
    (StoreError, errno.EIO, logging.ERROR),
    (RepoError, errno.EIO, logging.ERROR),
    (sqlite3.Error, errno.EIO, logging.ERROR),
    (ValueError, errno.EIO, logging.ERROR),
    (OSError, None, logging.ERROR),
]


def to_fuse_error(what: str, e: BaseException) -> tuple[pyfuse3.FUSEError, bool]:
    """The FUSEError to answer ``e`` with, having logged it; and whether it
    counts as an error of the mount (not a plain "no such name")."""
    if isinstance(e, pyfuse3.FUSEError):
        if e.errno == errno.EROFS:
            log.info("%s: refused, read-only", what)
        return e, False
    for kind, code, level in TABLE:
        if isinstance(e, kind):
            if code is None:
                code = getattr(e, "errno", None) or errno.EIO
            log.log(level, "%s: %s", what, e)
            return pyfuse3.FUSEError(code), level >= logging.ERROR
    code = getattr(e, "errno", None)
    if isinstance(code, int) and code > 0:  # a refusal that names its errno (staging's)
        log.warning("%s: %s", what, e)
        return pyfuse3.FUSEError(code), False
    log.error("%s: unexpected %s: %s", what, type(e).__name__, e, exc_info=e)
    return pyfuse3.FUSEError(errno.EIO), True
