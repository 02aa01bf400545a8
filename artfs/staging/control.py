"""The control files of staging: reachable by name, never listed.

``.metadata.json``, ``.description``, ``.aliases`` and ``.base`` are plain
files under ``control/``; ``.status`` is read-only (what the last commit did
or why it failed); ``.commit`` is empty, and any change to it (create,
truncate, write, a time change) commits. Like ZFS's ``.zfs`` with
``snapdir=hidden`` they answer a lookup but stay out of ``readdir``, so a
fresh staging is an empty directory for git, rsync --delete and find.
"""

from __future__ import annotations

import errno
import os
import time
from typing import TYPE_CHECKING

from artfs import names
from artfs.fsutil import atomic_write
from artfs.manifest import FILE
from artfs.repo import NotFoundError, Version
from artfs.staging.errors import StagingError
from artfs.staging.handles import StagedFile
from artfs.staging.overlay import (
    ALIASES,
    BASE,
    COMMIT,
    CONTROL_FILES,
    DESCRIPTION,
    METADATA,
    STATUS,
    Attr,
    attr_from_stat,
)

if TYPE_CHECKING:
    from artfs.staging.area import StagingArea

__all__ = ["ALIASES", "BASE", "COMMIT", "CONTROL_FILES", "DESCRIPTION", "METADATA", "STATUS"]
_BASE_MAX = 4096


class BytesFile(StagedFile):
    """A read-only view of fixed bytes (.status) or nothing (.commit)."""

    def __init__(self, area: StagingArea, name: str, data: bytes) -> None:
        super().__init__(area, name, None, None, writable=False, control=name)
        self._data = data

    def read(self, offset: int, size: int) -> bytes:
        return self._data[offset : offset + size]

    def write(self, offset: int, data: bytes) -> int:
        return len(data) if self.path == COMMIT else 0

    def truncate(self, size: int) -> None:
        pass

    def release(self) -> None:
        pass


class Controls:
    """The control files (a part of ``StagingArea``)."""

    # -- .base ---------------------------------------------------------------

    def _resolve_base(self: StagingArea, text: str) -> Version | None:
        ref_text = text.strip()
        if not ref_text:
            return None
        try:
            if "/" in ref_text:
                ref = names.Ref.parse(ref_text, default_selector="latest")
            else:
                names.check_name(ref_text, "version or alias")
                ref = names.Ref(self.project, self.artifact, ref_text)
            return self.repo.resolve(ref)
        except (NotFoundError, names.BadName) as e:
            raise StagingError(errno.EINVAL, f"bad .base {ref_text!r}: {e}") from None

    def _apply_base(self: StagingArea, text: str) -> None:
        try:
            version = self._resolve_base(text)
        except StagingError as e:
            self._set_status(f"{e}; .base unchanged")
            self.log.warning("%s: %s", self.ref, e)
            raise
        if version is None:
            self.state.set_kv("base", None)
        else:
            self.state.set_kv("base", f"{version.project}/{version.artifact}:{version.number}")
        self.base()

    # -- reading and writing -------------------------------------------------

    def control_attr(self: StagingArea, name: str) -> Attr:
        if name == STATUS:
            text = self.status().encode()
            status = self.root / "status"
            st = os.stat(status if status.exists() else self.control)
            return Attr(FILE, 0o444, len(text), st.st_mtime_ns, st.st_ctime_ns)
        if name == COMMIT:  # its time: the last commit made here
            last = self.state.kv("last_commit")
            t = int(float(last) * 1e9) if last else os.stat(self.root).st_mtime_ns
            return Attr(FILE, 0o644, 0, t, t)
        return attr_from_stat(os.stat(self.control / name))

    def open_control(self: StagingArea, name: str, flags: int) -> StagedFile:
        writable = (flags & os.O_ACCMODE) != os.O_RDONLY or bool(flags & os.O_TRUNC)
        if name == STATUS:
            if writable:
                raise StagingError(errno.EPERM, ".status is written by commits only")
            return BytesFile(self, STATUS, self.status().encode())
        if name == COMMIT:
            return BytesFile(self, COMMIT, b"")
        fd = os.open(self.control / name, os.O_RDWR if writable else os.O_RDONLY)
        h = StagedFile(self, name, fd, None, writable=writable, control=name)
        if name == BASE and writable:
            # `echo v9 > .base` truncates before it writes: a refused ref
            # puts back what was there.
            h.backup = ((self.control / BASE).read_bytes(), self.state.kv("base"))
        if flags & os.O_TRUNC:
            self.truncate_control(name, 0)
        return h

    def read_control(self: StagingArea, name: str) -> str:
        if name == STATUS:
            return self.status()
        try:
            return (self.control / name).read_bytes().decode()
        except UnicodeDecodeError:
            # A commit must not store text other than what was written.
            raise StagingError(errno.EINVAL, f"bad {name}: not UTF-8 text") from None

    def _write_control(self: StagingArea, h: StagedFile, offset: int, data: bytes) -> int:
        assert h.fd is not None and h.control is not None
        with self._lock:
            if h.control == BASE:
                current = (self.control / BASE).read_bytes()
                if offset + len(data) > _BASE_MAX:
                    raise StagingError(errno.EFBIG, ".base holds one ref")
                new = current[:offset].ljust(offset, b"\0") + data + current[offset + len(data) :]
                try:
                    self._apply_base(new.decode())
                except (StagingError, names.BadName, UnicodeDecodeError) as e:
                    if h.backup is not None:
                        (self.control / BASE).write_bytes(h.backup[0])
                        self.state.set_kv("base", h.backup[1])
                        self.base()
                    if isinstance(e, UnicodeDecodeError):
                        raise StagingError(errno.EINVAL, ".base must be text") from None
                    raise
            return os.pwrite(h.fd, data, offset)

    def truncate_control(self: StagingArea, name: str, size: int) -> None:
        with self._lock:
            path = self.control / name
            if name == BASE:
                self._apply_base(path.read_bytes()[:size].decode(errors="replace"))
            os.truncate(path, size)

    def clear_control(self: StagingArea, name: str) -> None:
        """``rm staging/.description``: the control file becomes empty."""
        if name in (STATUS, COMMIT):
            raise StagingError(errno.EPERM, f"{name} cannot be removed")
        self.truncate_control(name, 0)

    # -- .status ---------------------------------------------------------------

    def status(self: StagingArea) -> str:
        try:
            return (self.root / "status").read_text()
        except FileNotFoundError:
            return "nothing committed yet\n"

    def _set_status(self: StagingArea, text: str) -> None:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())
        # Not durable: a report for people; a crash that loses it loses nothing
        # the store or the journal does not hold, and it is rewritten often.
        atomic_write(self.root / "status", f"{text}\n{stamp} UTC\n", durable=False)
