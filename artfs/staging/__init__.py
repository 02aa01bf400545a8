"""Staging: the writable directory of one artifact, on local disk, and its commit.

The modules, by job: ``state`` (the state database), ``overlay`` (the merged
view: lookup, copy-up, namespace operations), ``handles`` (open files and
hashing as written), ``control`` (control files), ``commit`` (commit,
journal, recovery), ``area`` (one artifact's staging), ``manager`` (all of a
state directory).
"""

from artfs.staging.area import DEFAULT_TYPE, StagingArea
from artfs.staging.commit import RELEASE_WAIT
from artfs.staging.control import BytesFile
from artfs.staging.errors import StagingError, error_errno
from artfs.staging.handles import StagedFile
from artfs.staging.manager import StagingManager
from artfs.staging.overlay import (
    ALIASES,
    BASE,
    COMMIT,
    CONTROL_FILES,
    DESCRIPTION,
    METADATA,
    RESERVED,
    STATUS,
    Attr,
)

__all__ = [
    "ALIASES",
    "BASE",
    "COMMIT",
    "CONTROL_FILES",
    "DEFAULT_TYPE",
    "DESCRIPTION",
    "METADATA",
    "RELEASE_WAIT",
    "RESERVED",
    "STATUS",
    "Attr",
    "BytesFile",
    "StagedFile",
    "StagingArea",
    "StagingError",
    "StagingManager",
    "error_errno",
]
