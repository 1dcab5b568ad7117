# Copyright: selfhost.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Exporting Tomo's JSON document from a consistent snapshot of the live database."""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import sqlite3
import tempfile
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from .._common import write_all
from ..sqlite_snapshot import SnapshotError, fsync_dir, snapshot, snapshot_connection
from .tomo_schema import (
    BY_NAME,
    CATEGORIES,
    FORMAT_VERSION,
    MAX_DOCUMENT_SIZE,
    MEMORY_LIMIT,
    NAME_FORMAT,
    TABLES,
    USER_REFS,
    Key,
    Link,
    Row,
    Table,
    TomoError,
    _columns,
    _count,
    _natural_key_of_doc_row,
    _q,
    _reserved_fields,
    _shape,
    _size_text,
    _sort_key,
    _table_exists,
    _to_json,
    installed_version,
    tables_of,
)


@contextlib.contextmanager
def consistent_copy(database: str, lock_timeout: float = 30.0) -> Iterator[sqlite3.Connection]:
    """A private copy of the live ``database`` at one point in time (in memory when it is small)."""
    try:
        size = os.path.getsize(database)
    except OSError as exc:
        raise TomoError(f"Tomo's database {database} cannot be read: {exc.strerror}") from None
    try:
        if size <= MEMORY_LIMIT:
            conn, _ = snapshot_connection(database, lock_timeout)
            with contextlib.closing(conn):
                yield conn
            return
        with tempfile.TemporaryDirectory(prefix="selfhost-dr-tomo-") as tmp:
            copy = os.path.join(tmp, "tomo.db")
            snapshot(database, copy, lock_timeout=lock_timeout, check_integrity=False, durable=False, digest=False)
            with contextlib.closing(sqlite3.connect(copy, isolation_level=None)) as conn:
                yield conn
    except SnapshotError as exc:
        raise TomoError(str(exc)) from None


def _read_table(conn: sqlite3.Connection, table: Table) -> list[Row]:
    cols = _columns(conn, table.name)
    clash = sorted(_reserved_fields(table) & set(cols))
    if clash:
        raise TomoError(f"table {table.name} has a column named {clash[0]}, which the document uses for a reference")
    rows = conn.execute(f"SELECT {', '.join(_q(c) for c in cols)} FROM {_q(table.name)}").fetchall()
    return [{c: _to_json(v) for c, v in zip(cols, row)} for row in rows]


def _parent_keys(conn: sqlite3.Connection, link: Link) -> dict[Any, Key]:
    """Parent id → parent natural key, in ``conn``."""
    parent = BY_NAME[link.parent]
    pk = _shape(conn, parent.name).pk
    target = pk[0] if len(pk) == 1 else "rowid"
    cols = ", ".join(_q(c) for c in (target, *parent.key))
    return {r[0]: tuple(r[1:]) for r in conn.execute(f"SELECT {cols} FROM {_q(parent.name)}")}


def _key_value(parent: Table, key: Key) -> Any:
    """A parent's natural key as the document writes it: the value alone when the key is one column."""
    return key[0] if len(parent.key) == 1 else dict(zip(parent.key, key))


@dataclass
class Export:
    document: dict[str, Any]
    counts: dict[str, int]
    absent_tables: list[str]


def build_document(
    conn: sqlite3.Connection,
    created_at: datetime.datetime,
    application_version: str | None = None,
    categories: Sequence[str] = CATEGORIES,
) -> Export:
    """The document for the database behind ``conn`` (a private, consistent copy)."""
    app_version = application_version or installed_version()
    present = {t.name for t in TABLES if _table_exists(conn, t.name)}
    names = _user_names(conn) if "users" in present else {}
    absent = sorted(t.name for t in TABLES if t.category in categories and t.name not in present)
    rows: dict[str, list[Row]] = {}
    for table in TABLES:
        if table.category not in categories or table.name not in present:
            continue
        table_rows = _read_table(conn, table)
        for column, field in USER_REFS.get(table.name, ()):
            for row in table_rows:  # a user named outside a foreign key: by name too, which means the same here
                if row.get(column) in names:
                    row[field] = names[row[column]]
        if table.link:
            parents = _parent_keys(conn, table.link) if table.link.parent in present else {}
            parent = BY_NAME[table.link.parent]
            for row in table_rows:
                # The parent's natural key replaces its id, which means nothing in another install.
                key = parents.get(row.pop(table.link.column, None))
                row[table.link.field] = None if key is None else _key_value(parent, key)
        table_rows.sort(key=lambda r, t=table: _sort_key(_natural_key_of_doc_row(t, r)))
        rows[table.name] = table_rows
    data: dict[str, Any] = {}
    for category in categories:
        data[category] = _join(category, rows)
    counts = {c: _count(c, data[c]) for c in categories}
    document = {
        "version": FORMAT_VERSION,
        "created_at": created_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "application_version": app_version,
        "generator": "selfhost.dr",
        "absent_tables": absent,
        "data": data,
    }
    return Export(document, counts, absent)


def _user_names(conn: sqlite3.Connection) -> dict[Any, str]:
    """User id → user name."""
    if not {"id", "username"} <= set(_columns(conn, "users")):
        return {}
    return {r[0]: r[1] for r in conn.execute("SELECT id, username FROM users")}


def _join(category: str, rows: dict[str, list[Row]]) -> Any:
    """Per-table rows → the category's shape in the document."""
    if category == "settings":
        return {t.name: rows[t.name] for t in tables_of(category) if t.name in rows}
    main, *nested = tables_of(category)
    entries = rows.get(main.name, [])
    for table in nested:
        if table.name not in rows:
            continue  # absent here: recorded in absent_tables, no field at all
        by_parent: dict[Key, Any] = {}
        for row in rows[table.name]:
            ref = row.pop(table.link.field)
            ref_key = tuple(ref.get(k) for k in main.key) if isinstance(ref, dict) else (ref,)
            if table.many:
                by_parent.setdefault(ref_key, []).append(row)
            elif ref is not None:
                by_parent[ref_key] = row
        for entry in entries:
            entry[table.nested_as] = by_parent.get(tuple(entry.get(k) for k in main.key), [] if table.many else None)
    return entries


def document_name(created_at: datetime.datetime) -> str:
    return created_at.strftime(NAME_FORMAT)


def write_document(document: dict[str, Any], dest_dir: str, created_at: datetime.datetime) -> str:
    """Write ``document`` into ``dest_dir`` under its guide name, atomically and mode 0600; return the path.

    When a document of the same second exists, the time moves on to the next
    free second (and ``created_at`` with it): an export never replaces one.
    """
    if not os.path.isdir(dest_dir):
        raise TomoError(f"the backup directory {dest_dir} does not exist")
    encoded = _encode(document)
    fd, tmp = _temp_file(dest_dir)
    try:
        try:
            write_all(fd, encoded)
            os.fsync(fd)
        finally:
            os.close(fd)
        while True:
            path = os.path.join(dest_dir, document_name(created_at))
            try:
                os.link(tmp, path)  # fails when the name is taken: never replaces a document
                break
            except FileExistsError:
                created_at += datetime.timedelta(seconds=1)
                document["created_at"] = created_at.strftime("%Y-%m-%dT%H:%M:%SZ")
                with open(tmp, "wb") as handle:
                    handle.write(_encode(document))
                    handle.flush()
                    os.fsync(handle.fileno())
        fsync_dir(dest_dir)
    except OSError as exc:
        raise TomoError(f"could not write the backup document in {dest_dir}: {exc.strerror}") from None
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
    return path


def _encode(document: dict[str, Any]) -> bytes:
    """The document's bytes; TomoError when they are more than load would read back."""
    encoded = json.dumps(document, indent=2, ensure_ascii=False).encode("utf-8") + b"\n"
    if len(encoded) > MAX_DOCUMENT_SIZE:
        raise TomoError(
            f"the document would be {len(encoded)} bytes, more than the {_size_text(MAX_DOCUMENT_SIZE)} a document "
            "may be to be read back, so it was not written"
        )
    return encoded


def _temp_file(directory: str) -> tuple[int, str]:
    for _ in range(100):
        tmp = os.path.join(directory, f".tomo-backup-{uuid.uuid4().hex}.tmp")
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), tmp
        except FileExistsError:
            continue
        except OSError as exc:
            raise TomoError(f"could not write the backup document in {directory}: {exc.strerror}") from None
    raise TomoError(f"could not find a free temporary name in {directory}")


def export(
    database: str,
    dest_dir: str,
    categories: Sequence[str] = CATEGORIES,
    application_version: str | None = None,
    lock_timeout: float = 30.0,
    write: bool = True,
    now: datetime.datetime | None = None,
) -> dict[str, Any]:
    """Export the live ``database`` into ``dest_dir``; return what was written (never the data)."""
    _check_categories(categories)
    created_at = (now or datetime.datetime.now(datetime.timezone.utc)).replace(microsecond=0)
    with consistent_copy(database, lock_timeout) as conn:
        result = build_document(conn, created_at, application_version, categories)
    path = os.path.join(dest_dir, document_name(created_at))
    if write:
        path = write_document(result.document, dest_dir, created_at)
    else:
        _encode(result.document)  # check mode fails as the export would when the document is too large
    return {
        "path": path,
        "created_at": result.document["created_at"],
        "version": FORMAT_VERSION,
        "application_version": result.document["application_version"],
        "counts": result.counts,
        "absent_tables": result.absent_tables,
        "size": os.path.getsize(path) if write else 0,
    }


def _check_categories(categories: Sequence[str]) -> None:
    unknown = [c for c in categories if c not in CATEGORIES]
    if unknown:
        raise TomoError(f"unknown category {', '.join(unknown)}: choose from {', '.join(CATEGORIES)}")
    if not categories:
        raise TomoError("no category chosen")
