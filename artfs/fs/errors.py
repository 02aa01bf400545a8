"""Exceptions become errnos, by the one table in ``artfs.errnos``.

A request that fails answers with an errno and logs its reason once; the
daemon goes on. Exceptions the table does not name are bugs or bad input
nobody foresaw (a crafted manifest, a vanished file): they answer EIO and
are logged with their traceback, marked ``unexpected`` so tests can fail on
them. Nothing raised inside one request may end the mount.
"""

from __future__ import annotations

import errno
import logging

import pyfuse3

from artfs.errnos import TABLE, classify

__all__ = ["TABLE", "to_fuse_error"]

log = logging.getLogger("artfs.fs")


def to_fuse_error(what: str, e: BaseException) -> tuple[pyfuse3.FUSEError, bool]:
    """The FUSEError to answer ``e`` with, having logged it; and whether it
    counts as an error of the mount (not a plain "no such name")."""
    if isinstance(e, pyfuse3.FUSEError):
        if e.errno == errno.EROFS:
            log.info("%s: refused, read-only", what)
        return e, False
    found = classify(e)
    if found is None:
        log.error("%s: unexpected %s: %s", what, type(e).__name__, e, exc_info=e)
        return pyfuse3.FUSEError(errno.EIO), True
    code, level = found
    log.log(level, "%s: %s", what, e)
    return pyfuse3.FUSEError(code), level >= logging.ERROR
