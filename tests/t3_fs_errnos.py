"""One table from core exceptions to errnos: the mount and staging agree."""

from __future__ import annotations

import errno
import sqlite3

import pytest

from artfs import names
from artfs.cache import BlobError, CacheFull
from artfs.fs.errors import to_fuse_error
from artfs.manifest import ManifestError
from artfs.objects import NotFound, StoreError
from artfs.repo import ConflictError, NotFoundError, RepoError
from artfs.repo.records import CorruptRecord
from artfs.staging import StagingError, error_errno


def _store_error_from_full_disk() -> StoreError:
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as e:
            raise StoreError("cannot write") from e
    except StoreError as e:
        return e


CASES = [
    (NotFoundError("no proj/x"), errno.ENOENT),
    (names.BadName("bad name 'a b'"), errno.EINVAL),
    (RepoError("metadata must be a JSON object"), errno.EINVAL),
    (ConflictError("project 'p' exists"), errno.EINVAL),
    (CorruptRecord("corrupt record in store: k"), errno.EIO),
    (CacheFull("cache full"), errno.ENOSPC),
    (BlobError("blob x is missing"), errno.EIO),
    (NotFound("k"), errno.EIO),
    (StoreError("timed out"), errno.EIO),
    (_store_error_from_full_disk(), errno.ENOSPC),
    (ManifestError("bad entry"), errno.EIO),
    (sqlite3.OperationalError("database or disk is full"), errno.ENOSPC),
    (sqlite3.DatabaseError("file is not a database"), errno.EIO),
    (ValueError("odd"), errno.EIO),
    (FileNotFoundError(errno.ENOENT, "gone"), errno.ENOENT),
    (OSError("no errno"), errno.EIO),
    (StagingError(errno.EBUSY, "f is open for writing"), errno.EBUSY),
    (RuntimeError("a bug"), errno.EIO),
]


@pytest.mark.parametrize(("exc", "code"), CASES, ids=[type(e).__name__ for e, _ in CASES])
def test_mount_and_staging_answer_the_same_errno(exc: BaseException, code: int) -> None:
    fuse_error, _ = to_fuse_error("test", exc)
    assert fuse_error.errno == code
    assert error_errno(exc) == code


def test_only_the_unforeseen_and_the_stores_failures_count_as_mount_errors() -> None:
    assert to_fuse_error("t", RuntimeError("a bug"))[1]
    assert to_fuse_error("t", StoreError("timed out"))[1]
    assert not to_fuse_error("t", names.BadName("bad"))[1]
    assert not to_fuse_error("t", NotFoundError("no"))[1]
    assert not to_fuse_error("t", StagingError(errno.EBUSY, "busy"))[1]
