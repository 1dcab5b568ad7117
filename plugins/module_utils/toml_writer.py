# Copyright: selfhost.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A small TOML writer (standard library only; Python's ``tomllib`` only reads): a mapping as a TOML document that
``tomllib`` reads back as exactly that mapping.

Tables (nested to any depth) become ``[a.b]`` sections, mappings inside arrays inline tables. Values are strings,
integers (64-bit), finite floats, booleans, dates and times, and arrays of them. Anything TOML cannot say (``None``,
a key that is not a string, bytes, an integer beyond 64 bits, NaN, a string that is not Unicode text, a loop) is
refused with one sentence naming where it is. Keys are written bare when they can be, quoted otherwise."""

from __future__ import annotations

import datetime
import json
import re
from collections.abc import Mapping, Sequence

from ._common import Error

BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")
_INT64 = (-(2**63), 2**63 - 1)


class TomlError(Error):
    """A value TOML cannot say."""


def _refuse(where: str, document: str, why: str) -> TomlError:
    return TomlError(f"{where or 'the top level'} cannot be written to {document}: {why}")


def string(value: str, where: str = "", document: str = "a TOML document") -> str:
    """``value`` as a TOML basic string (one line: control characters, newlines and quotes escaped)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise _refuse(where, document, "it is not valid Unicode text") from exc
    # A JSON string is a TOML basic string once DEL is escaped too (json escapes the other control characters).
    return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")


def key(name: object, where: str = "", document: str = "a TOML document") -> str:
    """``name`` as a TOML key: bare when it is letters, digits, ``_`` and ``-``, else quoted."""
    if not isinstance(name, str):
        inside = f" in {where}" if where else ""
        raise TomlError(
            f"the key {name!r}{inside} cannot be written to {document}: "
            f"TOML keys are strings, not {type(name).__name__} (quote it)"
        )
    return name if BARE_KEY.match(name) else string(name, _join(where, repr(name)), document)


def _join(where: str, part: str) -> str:
    return f"{where}.{part}" if where else part


def _container_guard(value: object, seen: tuple[int, ...], where: str, document: str) -> tuple[int, ...]:
    if id(value) in seen:
        raise _refuse(where, document, "it contains itself")
    return (*seen, id(value))


def value(item: object, where: str = "", document: str = "a TOML document", _seen: tuple[int, ...] = ()) -> str:
    """``item`` as a TOML value on one line: a scalar, an array or an inline table."""
    if isinstance(item, bool):
        return "true" if item else "false"
    if isinstance(item, int):
        if not _INT64[0] <= item <= _INT64[1]:
            raise _refuse(where, document, f"{item} does not fit in a 64-bit TOML integer")
        return str(int(item))
    if isinstance(item, float):
        if item != item or item in (float("inf"), float("-inf")):
            raise _refuse(where, document, f"{item} is not a number")
        return repr(float(item))
    if isinstance(item, str):
        return string(item, where, document)
    if isinstance(item, datetime.datetime):
        return item.isoformat()
    if isinstance(item, datetime.date):
        return item.isoformat()
    if isinstance(item, datetime.time):
        if item.tzinfo is not None:
            raise _refuse(where, document, "TOML has no time of day with a time zone")
        return item.isoformat()
    if isinstance(item, Mapping):
        seen = _container_guard(item, _seen, where, document)
        parts = []
        for name, inner in item.items():
            written = key(name, where, document)
            parts.append(f"{written} = {value(inner, _join(where, written), document, seen)}")
        return "{" + ", ".join(parts) + "}"
    if isinstance(item, Sequence) and not isinstance(item, (str, bytes, bytearray)):
        seen = _container_guard(item, _seen, where, document)
        return "[" + ", ".join(value(v, f"{where}[{i}]", document, seen) for i, v in enumerate(item)) + "]"
    if item is None:
        raise _refuse(where, document, "TOML has no null (leave the key out instead)")
    raise _refuse(where, document, f"{type(item).__name__} is not a TOML value")


def dumps(document_data: Mapping[str, object], document: str = "a TOML document") -> str:
    """``document_data`` as a TOML document: its top-level values first, then one ``[table]`` section per mapping,
    each followed by its own sub-tables (``[table.sub]``)."""
    if not isinstance(document_data, Mapping):
        raise TomlError(f"{document} must be written from a mapping, not {type(document_data).__name__}")
    lines: list[str] = []
    _table(lines, document_data, [], document, ())
    return "\n".join(lines) + "\n" if lines else ""


def _table(
    lines: list[str], table: Mapping[object, object], path: list[str], document: str, seen: tuple[int, ...]
) -> None:
    where = ".".join(path)
    seen = _container_guard(table, seen, where, document)
    values: list[str] = []
    tables: list[tuple[str, Mapping[object, object]]] = []
    for name, item in table.items():
        written = key(name, where, document)
        if isinstance(item, Mapping):
            tables.append((written, item))
        else:
            values.append(f"{written} = {value(item, _join(where, written), document, seen)}")
    if path:
        if lines:
            lines.append("")
        lines.append(f"[{where}]")
    lines.extend(values)
    for written, inner in tables:
        _table(lines, inner, [*path, written], document, seen)
