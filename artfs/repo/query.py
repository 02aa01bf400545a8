"""Queries over versions: ``--where 'metadata.val_acc>0.9'``, ``--sort -metadata.val_acc``.

A condition is ``FIELD OP VALUE``. FIELD is ``metadata.KEY`` (dots go deeper),
or one of ``version``, ``created``, ``size``, ``file_count``, ``description``,
``tags``, ``aliases``. OP is ``=``, ``!=``, ``>``, ``>=``, ``<``, ``<=`` or
``~`` (substring). VALUE is read as JSON when it parses (``0.9``, ``true``,
``"x"``), else as a plain string. On ``tags`` and ``aliases``, ``=`` means
"has" and ``!=`` "has not". A version whose field is missing, or of a type
that does not compare with VALUE, does not match.
"""

from __future__ import annotations

import json
import operator
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from artfs.repo.records import RepoError, Version

_FIELDS = ("version", "created", "size", "file_count", "description", "tags", "aliases")
_LISTS = ("tags", "aliases")
_COND_RE = re.compile(r"^\s*([A-Za-z0-9_.\-]+)\s*(>=|<=|!=|==|=|>|<|~)\s*(.*?)\s*$", re.S)
_OPS: dict[str, Callable[[Any, Any], bool]] = {
    "=": operator.eq,
    "==": operator.eq,
    "!=": operator.ne,
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
}
_MISSING = object()


def _check_field(field: str, text: str) -> None:
    if field.startswith("metadata.") and len(field) > len("metadata."):
        return
    if field not in _FIELDS:
        raise RepoError(
            f"bad field {field!r} in {text!r}: use metadata.KEY or one of {', '.join(_FIELDS)}"
        )


def field_value(version: Version, field: str) -> Any:
    """The value of ``field`` in ``version``, or a marker that it is missing."""
    if field == "version":
        return version.number
    if field in _FIELDS:
        return getattr(version, field)
    value: Any = version.metadata
    for part in field.split(".")[1:]:
        if not isinstance(value, dict) or part not in value:
            return _MISSING
        value = value[part]
    return value


@dataclass(frozen=True)
class Condition:
    field: str
    op: str
    value: Any

    @classmethod
    def parse(cls, text: str) -> Condition:
        m = _COND_RE.match(text)
        if not m:
            raise RepoError(f"bad condition {text!r}: use FIELD OP VALUE, e.g. metadata.acc>0.9")
        field, op, raw = m.groups()
        _check_field(field, text)
        try:
            value = json.loads(raw)
        except ValueError:
            value = raw
        return cls(field, op, value)

    def matches(self, version: Version) -> bool:
        have = field_value(version, self.field)
        if have is _MISSING:
            return False
        if self.field in _LISTS:
            if self.op in ("=", "=="):
                return self.value in have
            if self.op == "!=":
                return self.value not in have
        if self.op == "~":
            return isinstance(have, str) and str(self.value) in have
        if isinstance(have, bool) != isinstance(self.value, bool):
            return False  # True is not 1 here
        try:
            return bool(_OPS[self.op](have, self.value))
        except TypeError:
            return False  # "abc" > 0.9: no match rather than an error per version


def select(
    versions: Iterable[Version],
    where: Iterable[str] = (),
    sort: str | None = None,
    limit: int | None = None,
) -> list[Version]:
    """The versions matching every condition, sorted by ``sort`` (``-`` first: descending)."""
    conditions = [Condition.parse(w) for w in where]
    out = [v for v in versions if all(c.matches(v) for c in conditions)]
    if sort:
        field = sort.lstrip("-+")
        _check_field(field, sort)
        values = [(field_value(v, field), v) for v in out]
        numbers = [
            (x, v) for x, v in values if isinstance(x, int | float) and not isinstance(x, bool)
        ]
        strings = [(x, v) for x, v in values if isinstance(x, str)]
        ordered = [
            v
            for group in (numbers, strings)
            for _, v in sorted(group, key=lambda p: p[0], reverse=sort.startswith("-"))
        ]
        # Versions without a comparable value come last, in their own order.
        placed = {id(v) for v in ordered}
        out = ordered + [v for v in out if id(v) not in placed]
    if limit is not None:
        if limit < 0:
            raise RepoError(f"bad limit {limit}: must be 0 or more")
        out = out[:limit]
    return out
