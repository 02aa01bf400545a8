"""Names and refs: the rules every name from a user or from a store must pass."""

from __future__ import annotations

import re
from dataclasses import dataclass

_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")
_VERSION_RE = re.compile(r"^v(\d+)$")
# Inside an artifact directory these names mean something already.
RESERVED_ALIASES = frozenset({"latest", "staging", "drafts"})


class BadName(ValueError):
    """A name or ref that breaks the rules; the message names it."""


def check_name(name: str, what: str = "name") -> str:
    if not _NAME_RE.match(name) or name.startswith("."):
        raise BadName(
            f"bad {what} {name!r}: use 1-128 of A-Z a-z 0-9 _ . - and do not start with '.'"
        )
    return name


def is_name(name: str) -> bool:
    """Whether ``name`` passes ``check_name`` (for names read from a store)."""
    return bool(_NAME_RE.match(name)) and not name.startswith(".")


def check_entry_name(name: object) -> str:
    """A manifest entry's name, as read from a store: one path component.

    Refuses what would make a path escape or alias another: empty, ``.``,
    ``..``, ``/`` or NUL inside, over 255 bytes, not UTF-8 text.
    """
    if not isinstance(name, str):
        raise BadName(f"bad entry name {name!r}: not text")
    check_path_component(name, name)
    return name


def version_number(text: str) -> int | None:
    """``v3`` -> 3; anything else -> None."""
    m = _VERSION_RE.match(text)
    return int(m.group(1)) if m else None


def check_alias(alias: str, *, allow_latest: bool = False) -> str:
    check_name(alias, "alias")
    if version_number(alias) is not None:
        raise BadName(f"bad alias {alias!r}: v<digits> names a version")
    if alias in RESERVED_ALIASES and not (allow_latest and alias == "latest"):
        if alias == "latest":
            raise BadName("'latest' is moved by commits and cannot be set or removed by hand")
        raise BadName(f"bad alias {alias!r}: the name is reserved")
    return alias


def is_alias(name: str) -> bool:
    """Whether an alias record may have this name (``latest`` included)."""
    try:
        check_alias(name, allow_latest=True)
    except BadName:
        return False
    return True


def check_path_component(name: str, path: str) -> None:
    raw = name.encode("utf-8", "surrogateescape")
    if not raw or len(raw) > 255 or b"\0" in raw or name in (".", ".."):
        raise BadName(f"bad path {path!r}: component {name!r} must be 1-255 bytes, not . or ..")
    if "/" in name:
        raise BadName(f"bad path {path!r}: '/' inside a component")
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BadName(f"bad path {path!r}: names must be UTF-8") from None


def check_path(path: str) -> str:
    """A relative '/'-separated path inside an artifact."""
    if not path or path.startswith("/"):
        raise BadName(f"bad path {path!r}: must be relative and not empty")
    for part in path.split("/"):
        check_path_component(part, path)
    return path


@dataclass(frozen=True)
class Ref:
    """``proj/name`` with an optional selector (``v3``, ``latest``, ``best``)."""

    project: str
    artifact: str
    selector: str | None = None

    @classmethod
    def parse(cls, text: str, *, default_selector: str | None = None) -> Ref:
        base, sep, selector = text.partition(":")
        parts = base.split("/")
        if len(parts) != 2 or (sep and not selector):
            raise BadName(f"bad ref {text!r}: expected project/artifact[:version-or-alias]")
        project = check_name(parts[0], "project name")
        artifact = check_name(parts[1], "artifact name")
        if sep:
            check_name(selector, "version or alias")
        return cls(project, artifact, selector if sep else default_selector)

    @property
    def name(self) -> str:
        return f"{self.project}/{self.artifact}"

    def __str__(self) -> str:
        return f"{self.name}:{self.selector}" if self.selector else self.name
