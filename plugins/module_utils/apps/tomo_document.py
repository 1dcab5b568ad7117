# Copyright: selfhost.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Reading Tomo's JSON document as hostile input (capped, strict JSON, every field checked), and listing documents."""

from __future__ import annotations

import json
import math
import os
import stat
from typing import Any

from .. import safe_fs
from .tomo_schema import (
    BY_NAME,
    CATEGORIES,
    MAX_DOCUMENT_SIZE,
    MAX_NUMBER_DIGITS,
    NAME_PATTERN,
    Key,
    NewerError,
    Row,
    Table,
    TomoError,
    _a_json,
    _check_text,
    _count,
    _from_json,
    _json_type,
    _label,
    _natural_key_of_doc_row,
    _reserved_fields,
    _shown,
    _size_text,
    migrate,
    parse_app_version,
    tables_of,
)


class _RefusedError(Exception):
    """Raised from inside the JSON parser: the document is refused for the reason given."""


def _refuse_constant(name: str) -> Any:
    raise _RefusedError(f"it holds {name}, which JSON does not allow")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        shown = text if len(text) <= 20 else text[:20] + "..."
        raise _RefusedError(f"it holds the number {shown}, too large to be stored")
    return value


def _bounded_int(text: str) -> int:
    digits = len(text) - text.startswith("-")
    if digits > MAX_NUMBER_DIGITS:
        raise _RefusedError(f"it holds a number of {digits} digits, more than any a document holds")
    return int(text)


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object, refused when it names a key twice (JSON parsers disagree on which one wins)."""
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _RefusedError(f"it has the key {_shown(key)} twice in one object")
            seen.add(key)
    return obj


def read_capped(path: str, max_size: int | None = None) -> bytes:
    """The bytes of the regular file ``path``, at most ``max_size`` (MAX_DOCUMENT_SIZE) of them.

    Never through a symbolic link (``O_NOFOLLOW``), never blocking on a FIFO
    (``O_NONBLOCK``, then ``fstat`` of what was opened); the read stops one
    byte past the limit, whatever size the file claims.
    """
    limit = MAX_DOCUMENT_SIZE if max_size is None else max_size
    try:
        return safe_fs.read_regular(path, limit)
    except FileNotFoundError:
        raise TomoError(f"the backup document {path} does not exist") from None
    except safe_fs.NotRegularError as exc:
        if exc.kind == "a symbolic link":
            raise TomoError(
                f"{path} is not a backup document: it is a symbolic link, and a document is never read through one"
            ) from None
        raise TomoError(f"{path} is not a backup document: it is {exc.kind}, not a regular file") from None
    except safe_fs.TooLargeError as exc:
        raise TomoError(_too_large(path, exc.size, limit)) from None
    except OSError as exc:
        raise TomoError(f"the backup document {path} cannot be read: {exc.strerror}") from None


def _too_large(path: str, size: int | None, limit: int) -> str:
    if size is None:  # read past the limit
        return f"{path} is not a backup document: it is larger than the {_size_text(limit)} a document may be"
    return f"{path} is not a backup document: it is {size} bytes, more than the {_size_text(limit)} a document may be"


def parse(raw: bytes, path: str) -> Any:
    """The JSON value of ``raw``; TomoError with one sentence when it is not a sound JSON text.

    Refused beyond what ``json.loads`` refuses: NaN and Infinity (not JSON),
    numbers too long to be stored, keys repeated in one object, and nesting
    too deep for the parser (RecursionError; a document nests 6 levels).
    """
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise TomoError(f"{path} is not a backup document: it is not UTF-8 text") from None
    try:
        return json.loads(
            text,
            object_pairs_hook=_object,
            parse_constant=_refuse_constant,
            parse_float=_finite_float,
            parse_int=_bounded_int,
        )
    except json.JSONDecodeError as exc:
        where = (
            "it is empty" if not text.strip() else f"it is truncated or corrupt at line {exc.lineno} column {exc.colno}"
        )
        raise TomoError(f"{path} is not a complete JSON document: {where}") from None
    except _RefusedError as exc:
        raise TomoError(f"{path} is not a valid Tomo backup: {exc}") from None
    except RecursionError:
        raise TomoError(
            f"{path} is not a valid Tomo backup: its arrays and objects are nested too deeply to be read"
        ) from None
    except MemoryError:
        raise TomoError(f"{path} is not a backup document: there is not enough memory to read it") from None


def load(path: str, max_size: int | None = None) -> dict[str, Any]:
    """Read and check the document at ``path``; raise TomoError with one sentence when it is not one.

    At most ``max_size`` (MAX_DOCUMENT_SIZE) bytes are read; see read_capped.
    """
    doc = parse(read_capped(path, max_size), path)
    try:
        return check_document(doc)
    except NewerError as exc:
        raise NewerError(f"{path}: {exc}") from None
    except TomoError as exc:
        raise TomoError(f"{path} is not a valid Tomo backup: {exc}") from None


def check_document(doc: Any) -> dict[str, Any]:
    """Migrate ``doc`` to the current format and check every type; return the migrated document.

    Everything an import relies on is checked here, before any database is
    opened: the shape of every category, the type of every value, and that no
    two rows of a table share a natural key.
    """
    if not isinstance(doc, dict):
        raise TomoError(f"it holds a JSON {_json_type(doc)}, not an object")
    if "version" not in doc:
        raise TomoError("it has no version")
    doc, migrated_from = migrate(doc)
    if "data" not in doc:
        raise TomoError("it has no data")
    data = doc["data"]
    if not isinstance(data, dict):
        raise TomoError(f"data must be an object, not {_a_json(data)}")
    unknown = [c for c in data if c not in CATEGORIES]
    if unknown:
        raise TomoError(f"data has an unknown category {_shown(unknown[0])}")
    for key in ("created_at", "application_version"):
        if doc.get(key) is not None:
            if not isinstance(doc[key], str):
                raise TomoError(f"{key} must be text, not {_a_json(doc[key])}")
            _check_text(doc[key], key)
    app_version = doc.get("application_version")
    if app_version is not None:  # an import compares it: a bad one fails here, not then
        try:
            parse_app_version(app_version)
        except TomoError:
            raise TomoError(f"application_version {_shown(app_version)} is not a version number") from None
    absent = doc.get("absent_tables", [])
    if not isinstance(absent, list) or not all(isinstance(a, str) for a in absent):
        raise TomoError("absent_tables must be a list of table names")
    for i, name in enumerate(absent):
        _check_text(name, f"absent_tables[{i}]")
    for category, value in data.items():
        _check_category(category, value)
    doc["_migrated_from"] = migrated_from
    return doc


def _check_category(category: str, value: Any) -> None:
    where = f"data.{category}"
    if category == "settings":
        if not isinstance(value, dict):
            raise TomoError(f"{where} must be an object of tables, not {_a_json(value)}")
        names = {t.name for t in tables_of(category)}
        for name, rows in value.items():
            if name not in names:
                raise TomoError(f"{where} has an unknown table {_shown(name)}")
            _check_rows(BY_NAME[name], rows, f"{where}.{name}")
        return
    main, *nested = tables_of(category)
    _check_rows(main, value, where)
    for table in nested:
        for i, entry in enumerate(value):
            child = entry.get(table.nested_as)
            if table.many and child is not None:
                _check_nested_list(table, child, f"{where}[{i}].{table.nested_as}")
            elif child is not None:
                if not isinstance(child, dict):
                    raise TomoError(f"{where}[{i}].{table.nested_as} must be an object or null, not {_a_json(child)}")
                _check_row(table, child, f"{where}[{i}].{table.nested_as}", nested=True)


def _check_nested_list(table: Table, rows: Any, where: str) -> None:
    if not isinstance(rows, list):
        raise TomoError(f"{where} must be a list or null, not {_a_json(rows)}")
    seen: set[Key] = set()
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise TomoError(f"{where}[{i}] must be an object, not {_a_json(row)}")
        _check_row(table, row, f"{where}[{i}]", nested=True)
        key = tuple(row.get(k) for k in table.key)
        if key in seen:
            raise TomoError(f"{where} holds two rows for {_shown(_label(key), 80)}")
        seen.add(key)


def _check_rows(table: Table, rows: Any, where: str) -> None:
    if not isinstance(rows, list):
        raise TomoError(f"{where} must be a list of rows, not {_a_json(rows)}")
    seen: set[Key] = set()
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise TomoError(f"{where}[{i}] must be an object, not {_a_json(row)}")
        _check_row(table, row, f"{where}[{i}]")
        key = _natural_key_of_doc_row(table, row)
        if key in seen:
            raise TomoError(f"{where} holds two rows for {_shown(_label(key), 80)}")
        seen.add(key)


def _check_row(table: Table, row: Row, where: str, nested: bool = False) -> None:
    special = _reserved_fields(table)
    if table.link and not nested:
        parent = BY_NAME[table.link.parent]
        ref = row.get(table.link.field)
        there = f"{where}.{table.link.field}"
        if len(parent.key) == 1:
            if not isinstance(ref, (str, int)) or isinstance(ref, bool):
                raise TomoError(f"{there} must name the {parent.key[0]} it belongs to")
            _from_json(ref, there)
        elif not isinstance(ref, dict) or any(k not in ref for k in parent.key):
            raise TomoError(f"{there} must be an object with {', '.join(parent.key)}")
        else:
            for column in parent.key:
                _check_key_value(ref[column], f"{there}.{column}", f"it is the key of the {parent.name} row")
    for column in table.key:
        _check_key_value(row.get(column), f"{where}.{column}", "it is this row's key")
    for column, value in row.items():
        _check_text(column, f"a column name in {where}")
        if column not in special:
            _from_json(value, f"{where}.{column}")


def _check_key_value(value: Any, where: str, why: str) -> None:
    if value is None or isinstance(value, (bool, dict, list)):
        raise TomoError(f"{where} must be text or a number: {why}")
    _from_json(value, where)


def describe(path: str) -> dict[str, Any]:
    """What a document holds, for a listing: time, versions, rows per category; or why it cannot be read."""
    info: dict[str, Any] = {"path": path, "name": os.path.basename(path), "size": _regular_size(path)}
    try:
        doc = load(path)
    except TomoError as exc:  # load raises nothing else: one hostile document never ends a listing
        info.update(valid=False, error=str(exc))
        return info
    info.update(
        valid=True,
        version=doc["version"],
        migrated_from=doc.get("_migrated_from"),
        created_at=doc.get("created_at"),
        application_version=doc.get("application_version"),
        counts={c: _count(c, v) for c, v in doc["data"].items()},
        absent_tables=doc.get("absent_tables", []),
    )
    return info


def _regular_size(path: str) -> int | None:
    """The size of ``path`` when it is a regular file (a link is not followed), else None."""
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return st.st_size if stat.S_ISREG(st.st_mode) else None


def catalog(directory: str) -> list[dict[str, Any]]:
    """The documents in ``directory`` (by their guide name), newest first.

    Every entry so named is listed; one that is not a readable, valid document
    (a symbolic link, a FIFO, a file too large, malformed JSON) is listed with
    ``valid`` false and the reason in ``error``, and the others are still read.
    """
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        raise TomoError(f"the backup directory {directory} does not exist") from None
    except OSError as exc:
        raise TomoError(f"the backup directory {directory} cannot be read: {exc.strerror}") from None
    found = [describe(os.path.join(directory, n)) for n in sorted(names, reverse=True) if NAME_PATTERN.match(n)]
    return found
