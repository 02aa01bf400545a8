"""The one error staging raises, and the errno every failure maps to."""

from __future__ import annotations

from artfs.errnos import errno_of


class StagingError(Exception):
    """A staging request refused; ``errno`` is what the filesystem returns."""

    def __init__(self, err: int, message: str) -> None:
        super().__init__(message)
        self.errno = err


def error_errno(e: BaseException) -> int:
    """The errno a failed staging or commit call maps to: the mount's one table."""
    return errno_of(e)
