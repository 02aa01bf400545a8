"""The one error staging raises, and the errno every failure maps to."""

from __future__ import annotations

import errno
import sqlite3

from artfs import names
from artfs.repo import NotFoundError, RepoError


class StagingError(Exception):
    """A staging request refused; ``errno`` is what the filesystem returns."""

    def __init__(self, err: int, message: str) -> None:
        super().__init__(message)
        self.errno = err


def error_errno(e: BaseException) -> int:
    """The errno a failed staging or commit call maps to."""
    if isinstance(e, StagingError):
        return e.errno
    if isinstance(e, OSError) and e.errno:
        return e.errno
    if isinstance(e, sqlite3.Error) and "full" in str(e):
        return errno.ENOSPC  # the state directory's disk
    # A store error caused by the disk (a full store: ENOSPC) says so.
    cause = e.__cause__ or e.__context__
    if isinstance(cause, OSError) and cause.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
        return cause.errno
    if isinstance(e, NotFoundError):
        return errno.ENOENT
    if isinstance(e, names.BadName | RepoError | ValueError):
        return errno.EINVAL
    return errno.EIO
