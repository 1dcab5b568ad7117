# Copyright: selfhost.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Tomo's JSON backup document: export it from a live ``tomo.db``, import it by category.

Standard library only. The document is the one of Tomo's backup guide::

    {"version": "1.0", "created_at": "2026-11-22T03:51:00Z", "application_version": "1.2.0",
     "data": {"servers": [...], "applications": [...], "settings": {...},
              "users": [...], "preferences": [...], "repositories": [...]}}

Numeric (or random) ids differ between two installs of Tomo, so rows are
matched by their natural keys, and the document carries every reference as
the natural key of the row it points to:

- ``servers``: one entry per server, with its ``credentials`` (the
  ``server_credentials`` row, still encrypted with ``TOMO_MASTER_PASSWORD``)
  and its ``agent`` nested in it. Key: ``host``, ``port``, ``username``.
- ``applications``: ``installed_apps`` rows, each with ``server`` (the
  server's key). Key: the server and ``app_id``.
- ``settings``: ``{"system_settings": [...], "retention_settings": [...],
  "system_info": [...]}``. Keys: ``setting_key``, ``id``, ``id``.
- ``users``: ``users`` rows with their password hashes. Key: ``username``.
- ``preferences``: ``user_settings`` rows, each with ``username``. Key: the
  user and ``setting_key``.
- ``repositories``: ``marketplace_repos`` rows. Key: ``id``.

Tables of Tomo's that hold sessions, logs, metrics and the like are never
read. A table this Tomo does not have is listed in ``absent_tables`` and
left alone by an import.

An import runs in one transaction with SQLite's foreign keys enforced: it is
applied whole or not at all. Three modes, per the guide: ``merge`` adds the
backup's rows and updates matching ones, ``skip_duplicates`` only adds rows
without a match, ``replace`` makes the category's rows the backup's (matching
rows are updated in place, keeping their ids so that rows elsewhere that
refer to them stay valid; rows the backup lacks are removed).

Every document is hostile input until checked. It is read with a bound
(``MAX_DOCUMENT_SIZE``), never through a symbolic link and never from a FIFO
or device; its JSON is refused when it holds NaN or Infinity, a key twice in
one object, numbers too long to store or nesting too deep to parse; and every
category, row and value is checked for its type before any database is
opened. Whatever is wrong, the caller gets one TomoError with one sentence.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import json
import math
import os
import re
import sqlite3
import stat
import tempfile
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from .. import safe_fs
from .._common import AppError, write_all
from ..sqlite_snapshot import SnapshotError, fsync_dir, snapshot, snapshot_connection

FORMAT_VERSION = "1.0"
CATEGORIES = ("servers", "applications", "settings", "users", "preferences", "repositories")
MODES = ("merge", "replace", "skip_duplicates")
# Never read, never written: secrets of the moment, logs and measurements.
EXCLUDED_TABLES = frozenset(
    {
        "sessions",
        "csrf_tokens",
        "account_locks",
        "rate_limit_events",
        "log_entries",
        "activity_logs",
        "server_metrics",
        "container_metrics",
        "notifications",
        "settings_audit",
        "agent_registration_codes",
    }
)
# Where the version of the Tomo a database belongs to is kept.
VERSION_COMPONENTS = ("backend", "tomo", "app")
NAME_FORMAT = "tomo-backup-%Y-%m-%dT%H-%M-%S.json"
NAME_PATTERN = re.compile(r"^tomo-backup-\d{4}-\d{2}-\d{2}T\d{2}-\d{2}-\d{2}\.json$")
# Databases above this are copied to a temporary file rather than into memory.
MEMORY_LIMIT = 256 * 1024 * 1024
# The largest document read (and written): 16 MiB. A document is parsed whole, and a hostile one
# of the worst shape (``[{},{},...]``) takes about 25 times its size in memory to parse, so 16 MiB
# keeps the parse under ~400 MiB on a small server. A real document is far below it: the one of a
# Tomo with 3 servers, 3 applications and 3 users is 7 KiB, about 350 bytes a row, so 16 MiB is
# some 45,000 rows. An export that would be larger is refused rather than written unreadable.
MAX_DOCUMENT_SIZE = 16 * 1024 * 1024
# The most digits a number in a document may have: every integer SQLite stores (-2^63 .. 2^63-1)
# has at most 19; longer ones are refused by the parser, before Python converts them.
MAX_NUMBER_DIGITS = 19
INT64 = (-(2**63), 2**63 - 1)

Row = dict[str, Any]
Key = tuple[Any, ...]


class TomoError(AppError):
    """A failure the user can act on; the message is one sentence."""


class NewerError(TomoError):
    """The document or the Tomo it came from is newer than what would read it."""


def _shown(value: object, limit: int = 40) -> str:
    """``value`` for an error message: short text quoted (and cut), anything else by its type."""
    if isinstance(value, str):  # repr escapes control characters and lone surrogates
        return repr(value) if len(value) <= limit else repr(value[:limit]) + "..."
    if value is None or isinstance(value, bool):
        return json.dumps(value)
    if isinstance(value, (int, float)):
        text = repr(value)
        return text if len(text) <= limit else f"a {len(text)}-digit number"
    return _a_json(value)


def _json_type(value: Any) -> str:
    """The JSON name of ``value``'s type: object, list, string, number, boolean or null."""
    names = {dict: "object", list: "list", str: "string", bool: "boolean", type(None): "null"}
    return names.get(type(value), "number")


def _a_json(value: Any) -> str:
    """``an object``, ``a list``, ``null``...: for "must be X, not ..." sentences."""
    name = _json_type(value)
    return name if name == "null" else ("an " if name[0] in "aeiou" else "a ") + name


@dataclass(frozen=True)
class Link:
    """A reference to another table, carried in the document as that row's natural key."""

    column: str  # the referencing column, e.g. server_id
    parent: str  # the table referred to, e.g. servers
    field: str  # the document field holding the parent's key, e.g. server


@dataclass(frozen=True)
class Table:
    name: str
    category: str
    key: tuple[str, ...]  # natural key columns, after the link's key when there is a link
    link: Link | None = None
    nested_as: str = ""  # one row per parent, nested in the parent's entry under this field


SERVER = Link("server_id", "servers", "server")
TABLES = (
    Table("servers", "servers", ("host", "port", "username")),
    Table("server_credentials", "servers", (), SERVER, nested_as="credentials"),
    Table("agents", "servers", (), SERVER, nested_as="agent"),
    Table("installed_apps", "applications", ("app_id",), SERVER),
    Table("system_settings", "settings", ("setting_key",)),
    Table("retention_settings", "settings", ("id",)),
    Table("system_info", "settings", ("id",)),
    Table("users", "users", ("username",)),
    Table("user_settings", "preferences", ("setting_key",), Link("user_id", "users", "username")),
    Table("marketplace_repos", "repositories", ("id",)),
)
BY_NAME = {t.name: t for t in TABLES}


def tables_of(category: str) -> list[Table]:
    return [t for t in TABLES if t.category == category]


# --- versions ---------------------------------------------------------------------------------


def parse_format_version(value: object) -> tuple[int, int]:
    if not isinstance(value, str) or not re.fullmatch(r"[0-9]{1,6}\.[0-9]{1,6}", value):
        raise TomoError(f'the document\'s version must be text like "1.0", not {_shown(value)}')
    major, minor = value.split(".")
    return int(major), int(minor)


def parse_app_version(value: str) -> tuple[int, ...]:
    """``1.2.3``, ``v1.2``, ``1.2.3-beta1`` → ``(1, 2, 3)``: the leading numbers, for comparison."""
    match = re.match(r"^v?([0-9]+(?:\.[0-9]+)*)", value.strip())
    if not match or any(len(p) > 9 for p in match.group(1).split(".")):
        raise TomoError(f"{_shown(value)} is not a version number")
    parts = [int(p) for p in match.group(1).split(".")]
    while len(parts) > 1 and parts[-1] == 0:
        parts.pop()
    return tuple(parts)


def application_version_of(conn: sqlite3.Connection) -> str | None:
    """The Tomo version recorded in the database (``component_versions``), or None."""
    if not _table_exists(conn, "component_versions"):
        return None
    cols = _columns(conn, "component_versions")
    if not {"component", "version"} <= set(cols):
        return None
    for component in VERSION_COMPONENTS:
        row = conn.execute("SELECT version FROM component_versions WHERE component = ?", (component,)).fetchone()
        if row and row[0]:
            return str(row[0])
    return None


def _migrate_pre_1(doc: dict[str, Any]) -> dict[str, Any]:
    """Documents before 1.0 kept the categories at the top level and said ``timestamp``."""
    data = {c: doc[c] for c in CATEGORIES if c in doc}
    if "app_configs" in doc and "applications" not in data:
        data["applications"] = doc["app_configs"]
    return {
        "version": FORMAT_VERSION,
        "created_at": doc.get("created_at", doc.get("timestamp")),
        "application_version": doc.get("application_version"),
        "data": doc.get("data", data),
        "absent_tables": doc.get("absent_tables", []),
    }


# Each migration takes a document of an older version to the next one it names.
MIGRATIONS = {0: _migrate_pre_1}


def migrate(doc: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
    """Bring an older document to the current format; return it and the version it was (None when current)."""
    version = parse_format_version(doc.get("version"))
    current = parse_format_version(FORMAT_VERSION)
    if version > current:
        raise NewerError(
            f"the document's format {doc['version']} is newer than this selfhost.dr understands "
            f"({FORMAT_VERSION}): upgrade selfhost.dr"
        )
    if version == current:
        return doc, None
    if version[0] not in MIGRATIONS:
        raise TomoError(f"the document's format {doc['version']} is too old to be read")
    return MIGRATIONS[version[0]](doc), str(doc["version"])


# --- SQLite helpers ---------------------------------------------------------------------------


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _table_exists(conn: sqlite3.Connection, name: str) -> bool:
    return conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)).fetchone() is not None


def _columns(conn: sqlite3.Connection, table: str) -> list[str]:
    return [str(r[1]) for r in conn.execute(f"PRAGMA table_info({_q(table)})")]


@dataclass
class _Shape:
    """What a table looks like in one database."""

    columns: list[str]
    pk: list[str]  # primary key columns, in order
    integer_pk: bool  # a single INTEGER PRIMARY KEY: SQLite numbers new rows itself


def _shape(conn: sqlite3.Connection, table: str) -> _Shape:
    info = conn.execute(f"PRAGMA table_info({_q(table)})").fetchall()
    pk = [str(r[1]) for r in sorted((r for r in info if r[5]), key=lambda r: r[5])]
    integer_pk = len(pk) == 1 and any(str(r[1]) == pk[0] and str(r[2]).upper() == "INTEGER" for r in info)
    return _Shape([str(r[1]) for r in info], pk, integer_pk)


def _sort_key(key: Key) -> tuple[Any, ...]:
    return tuple((v is None, type(v).__name__, v if v is not None else 0) for v in key)


def _to_json(value: Any) -> Any:
    if isinstance(value, bytes):
        return {"base64": base64.b64encode(value).decode("ascii")}
    return value


def _check_text(value: str, where: str) -> str:
    """``value`` when it can be stored and reported: UTF-8 text (JSON's \\ud800 escapes can make it not)."""
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise TomoError(f"{where} is not valid Unicode text: it holds a lone surrogate") from None
    return value


def _from_json(value: Any, where: str) -> Any:
    """A document's value → the one SQLite stores; TomoError when it is none SQLite can store."""
    if isinstance(value, dict) and set(value) == {"base64"} and isinstance(value["base64"], str):
        try:
            return base64.b64decode(value["base64"], validate=True)
        except ValueError:
            raise TomoError(f"{where} is not valid base64") from None
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        if not INT64[0] <= value <= INT64[1]:
            raise TomoError(f"{where} is a number outside SQLite's 64-bit integers")
        return value
    if isinstance(value, str):
        return _check_text(value, where)
    if isinstance(value, float) and not math.isfinite(value):
        raise TomoError(f"{where} must be a finite number, not {value}")
    if value is None or isinstance(value, float):
        return value
    raise TomoError(f"{where} must be text, a number or null, not {_a_json(value)}")


# --- where the database is ------------------------------------------------------------------


def database_candidates() -> list[str]:
    """Where Tomo keeps ``tomo.db``: the packaged path, then ``~/.tomo`` of the tomo user and of ours (older docs)."""
    candidates = ["/var/lib/tomo/tomo.db"]
    try:
        import pwd

        candidates.append(os.path.join(pwd.getpwnam("tomo").pw_dir, ".tomo", "tomo.db"))
    except (ImportError, KeyError):
        pass
    candidates.append(os.path.join(os.path.expanduser("~"), ".tomo", "tomo.db"))
    return list(dict.fromkeys(candidates))


def locate_database(database: str | None = None, candidates: Sequence[str] | None = None) -> str:
    """``database`` when given (it must exist), else the first of the usual places that holds one."""
    if database:
        if not os.path.isfile(database):
            raise TomoError(f"Tomo's database {database} does not exist")
        return database
    places = list(candidates if candidates is not None else database_candidates())
    for place in places:
        if os.path.isfile(place):
            return place
    raise TomoError(f"no Tomo database was found at {' or '.join(places)}: set database to where tomo.db is")


# --- export -----------------------------------------------------------------------------------


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


def _reserved_fields(table: Table) -> set[str]:
    """Fields of the table's entries in the document that are not columns: its link, its nested children."""
    fields = {t.nested_as for t in TABLES if t.nested_as and t.link and t.link.parent == table.name}
    if table.link and not table.nested_as:
        fields.add(table.link.field)
    return fields


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
    app_version = application_version or application_version_of(conn)
    present = {t.name for t in TABLES if _table_exists(conn, t.name)}
    absent = sorted(t.name for t in TABLES if t.category in categories and t.name not in present)
    rows: dict[str, list[Row]] = {}
    for table in TABLES:
        if table.category not in categories or table.name not in present:
            continue
        table_rows = _read_table(conn, table)
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


def _natural_key_of_doc_row(table: Table, row: Row) -> Key:
    parent: Key = ()
    if table.link:
        ref = row.get(table.link.field)
        ptable = BY_NAME[table.link.parent]
        parent = tuple(ref.get(k) for k in ptable.key) if isinstance(ref, dict) else (ref,)
    return parent + tuple(row.get(k) for k in table.key)


def _join(category: str, rows: dict[str, list[Row]]) -> Any:
    """Per-table rows → the category's shape in the document."""
    if category == "settings":
        return {t.name: rows[t.name] for t in tables_of(category) if t.name in rows}
    main, *nested = tables_of(category)
    entries = rows.get(main.name, [])
    for table in nested:
        if table.name not in rows:
            continue  # absent here: recorded in absent_tables, no field at all
        by_parent = {}
        for row in rows[table.name]:
            ref = row.pop(table.link.field)
            if isinstance(ref, dict):
                by_parent[tuple(ref.get(k) for k in main.key)] = row
        for entry in entries:
            entry[table.nested_as] = by_parent.get(tuple(entry.get(k) for k in main.key))
    return entries


def _count(category: str, value: Any) -> int:
    if category == "settings":
        return sum(len(v) for v in value.values())
    return len(value)


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


# --- reading a document -----------------------------------------------------------------------


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


def _size_text(size: int) -> str:
    return f"{size // (1024 * 1024)} MiB" if size >= 1024 * 1024 and size % (1024 * 1024) == 0 else f"{size} bytes"


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
            if child is not None:
                if not isinstance(child, dict):
                    raise TomoError(f"{where}[{i}].{table.nested_as} must be an object or null, not {_a_json(child)}")
                _check_row(table, child, f"{where}[{i}].{table.nested_as}", nested=True)


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


# --- import -----------------------------------------------------------------------------------


@dataclass
class TableChange:
    added: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # matched an existing row (skip_duplicates)
    orphaned: list[str] = field(default_factory=list)  # the row it belongs to is not in this Tomo
    unchanged: int = 0
    note: str = ""

    def summary(self) -> dict[str, Any]:
        return {
            "added": len(self.added),
            "updated": len(self.updated),
            "removed": len(self.removed),
            "skipped": len(self.skipped) + len(self.orphaned),
            "unchanged": self.unchanged,
            "keys": {
                k: v
                for k, v in (
                    ("added", self.added),
                    ("updated", self.updated),
                    ("removed", self.removed),
                    ("skipped", self.skipped),
                    ("orphaned", self.orphaned),
                )
                if v
            },
            **({"note": self.note} if self.note else {}),
        }

    @property
    def changed(self) -> bool:
        return bool(self.added or self.updated or self.removed)


def _label(key: Key) -> str:
    return ", ".join("null" if v is None else str(v) for v in key)


def _split(category: str, value: Any) -> dict[str, list[Row]]:
    """The category's shape in the document → per-table rows, each child carrying its parent's key."""
    if category == "settings":
        return {name: [dict(r) for r in rows] for name, rows in value.items()}
    main, *nested = tables_of(category)
    out: dict[str, list[Row]] = {t.name: [] for t in (main, *nested)}
    for entry in value:
        entry = dict(entry)
        for table in nested:
            child = entry.pop(table.nested_as, None)
            if child is not None:  # null: this entry has none
                child = dict(child)
                child[table.link.field] = {k: entry.get(k) for k in main.key}
                out[table.name].append(child)
        out[main.name].append(entry)
    return out


class _Importer:
    def __init__(self, conn: sqlite3.Connection, mode: str) -> None:
        self.conn = conn
        self.mode = mode

    def parent_ids(self, link: Link) -> dict[Key, Any]:
        """Parent natural key → id, in the target."""
        return {key: pid for pid, key in _parent_keys(self.conn, link).items()}

    def target_rows(self, table: Table, shape: _Shape) -> dict[Key, Row]:
        cols = shape.columns
        rows = self.conn.execute(f"SELECT rowid, {', '.join(_q(c) for c in cols)} FROM {_q(table.name)}").fetchall()
        parents = _parent_keys(self.conn, table.link) if table.link else {}
        out: dict[Key, Row] = {}
        for r in rows:
            row = dict(zip(cols, r[1:]))
            row["__rowid__"] = r[0]
            parent: Key = ()
            if table.link:
                parent = parents.get(row.get(table.link.column), (None,) * len(BY_NAME[table.link.parent].key))
            out[parent + tuple(row.get(k) for k in table.key)] = row
        return out

    def upsert(self, table: Table, doc_rows: list[Row], where: str) -> tuple[TableChange, set[Key]]:
        change = TableChange()
        shape = _shape(self.conn, table.name)
        existing = self.target_rows(table, shape)
        parent_ids = self.parent_ids(table.link) if table.link else {}
        reserved = _reserved_fields(table) | ({table.link.field} if table.link else set())
        dropped: set[str] = set()
        seen: set[Key] = set()
        for doc_row in doc_rows:
            key = _natural_key_of_doc_row(table, doc_row)
            label = _label(key)
            if key in seen:
                raise TomoError(f"{where} holds two rows for {_shown(label, 80)}")
            seen.add(key)
            values = {c: _from_json(v, where) for c, v in doc_row.items() if c in shape.columns}
            dropped.update(c for c in doc_row if c not in shape.columns and c not in reserved)
            if table.link:
                parent_key = key[: len(BY_NAME[table.link.parent].key)]
                if parent_key not in parent_ids:
                    change.orphaned.append(label)
                    continue
                values[table.link.column] = parent_ids[parent_key]
            match = existing.get(key)
            if match is not None:
                if self.mode == "skip_duplicates":
                    change.skipped.append(label)
                    continue
                fixed = set(shape.pk) | ({table.link.column} if table.link else set())
                updates = {c: v for c, v in values.items() if c not in fixed and match.get(c) != v}
                if not updates:
                    change.unchanged += 1
                    continue
                self._run(
                    f"UPDATE {_q(table.name)} SET {', '.join(f'{_q(c)} = ?' for c in updates)} WHERE rowid = ?",
                    [*updates.values(), match["__rowid__"]],
                    f"could not update {table.name} row {label}",
                )
                change.updated.append(label)
                continue
            self._free_identity(table, shape, values)
            self._run(
                f"INSERT INTO {_q(table.name)} ({', '.join(map(_q, values))}) VALUES ({', '.join('?' * len(values))})",
                list(values.values()),
                f"could not add {table.name} row {label}",
            )
            change.added.append(label)
        if dropped:
            change.note = f"column(s) this Tomo does not have were left out: {', '.join(sorted(dropped))}"
        return change, seen

    def _free_identity(self, table: Table, shape: _Shape, values: Row) -> None:
        """Keep the backup's id when it is free here; otherwise let SQLite number the row, or make a new random id."""
        identity = [c for c in shape.pk if c not in table.key and not (table.link and c == table.link.column)]
        if len(identity) != 1 or identity[0] not in values:
            return
        column = identity[0]
        taken = self.conn.execute(
            f"SELECT 1 FROM {_q(table.name)} WHERE {_q(column)} = ?", (values[column],)
        ).fetchone()
        if not taken:
            return
        if shape.integer_pk:
            del values[column]
        else:
            values[column] = str(uuid.uuid4())

    def remove_unmatched(self, table: Table, keep: set[Key]) -> list[str]:
        shape = _shape(self.conn, table.name)
        removed = []
        for key, row in sorted(self.target_rows(table, shape).items(), key=lambda kv: _sort_key(kv[0])):
            if key in keep:
                continue
            self._run(
                f"DELETE FROM {_q(table.name)} WHERE rowid = ?",
                [row["__rowid__"]],
                f"could not remove {table.name} row {_label(key)}",
            )
            removed.append(_label(key))
        return removed

    def _run(self, sql: str, params: list[Any], what: str) -> None:
        try:
            self.conn.execute(sql, params)
        except sqlite3.IntegrityError as exc:
            hint = " (rows elsewhere still refer to it)" if "FOREIGN KEY" in str(exc) else ""
            raise TomoError(f"{what}: {exc}{hint}") from None


def _counts(conn: sqlite3.Connection) -> dict[str, int]:
    return {
        t.name: int(conn.execute(f"SELECT count(*) FROM {_q(t.name)}").fetchone()[0])
        for t in TABLES
        if _table_exists(conn, t.name)
    }


def _fk_violations(conn: sqlite3.Connection) -> set[tuple[Any, ...]]:
    return {tuple(r) for r in conn.execute("PRAGMA foreign_key_check")}


def apply(conn: sqlite3.Connection, doc: dict[str, Any], categories: Sequence[str], mode: str) -> dict[str, Any]:
    """Import ``categories`` of the checked ``doc`` into ``conn`` in one transaction; return what changed per table.

    ``conn`` must be in autocommit mode (``isolation_level=None``). On any
    error everything is rolled back and TomoError says what failed.
    """
    if mode not in MODES:
        raise TomoError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
    _check_categories(categories)
    absent_in_backup = set(doc.get("absent_tables", []))
    data = doc["data"]
    conn.execute("PRAGMA foreign_keys = ON")
    violations_before = _fk_violations(conn)
    importer = _Importer(conn, mode)
    changes: dict[str, dict[str, TableChange]] = {}
    conn.execute("BEGIN IMMEDIATE")
    try:
        before = _counts(conn)
        kept: dict[str, set[Key]] = {}
        order = [t for t in TABLES if t.category in categories]
        split = {c: _split(c, data[c]) for c in categories if c in data}
        for table in order:
            category_changes = changes.setdefault(table.category, {})
            if table.category not in data:
                category_changes[table.name] = TableChange(note="the backup has no such category: left as it is")
                continue
            rows = split[table.category]
            if table.name in absent_in_backup or table.name not in rows:
                category_changes[table.name] = TableChange(note="not in the backup: left as it is")
                continue
            if not _table_exists(conn, table.name):
                n = len(rows[table.name])
                category_changes[table.name] = TableChange(
                    skipped=[_label(_natural_key_of_doc_row(table, r)) for r in rows[table.name]],
                    note=f"this Tomo has no table {table.name}: its {n} row(s) were not imported",
                )
                continue
            change, kept[table.name] = importer.upsert(table, rows[table.name], f"data.{table.category}")
            category_changes[table.name] = change
        if mode == "replace":
            for table in reversed(order):
                if table.name in kept:
                    changes[table.category][table.name].removed = importer.remove_unmatched(table, kept[table.name])
        new = _fk_violations(conn) - violations_before
        if new:
            table, _, parent, _ = next(iter(new))
            raise TomoError(f"the import would leave rows of {table} pointing at missing {parent} rows")
        after = _counts(conn)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    cascaded = {}
    for name, n in before.items():
        change = next((c[name] for c in changes.values() if name in c), TableChange())
        gone = n + len(change.added) - len(change.removed) - after.get(name, 0)
        if gone:
            cascaded[name] = gone
    return {
        "changes": {cat: {t: c.summary() for t, c in tables.items()} for cat, tables in changes.items()},
        "changed": any(c.changed for tables in changes.values() for c in tables.values()) or bool(cascaded),
        "cascaded": cascaded,
        "rows_before": before,
        "rows_after": after,
    }


def import_document(
    path: str,
    database: str,
    categories: Sequence[str] = CATEGORIES,
    mode: str = "merge",
    application_version: str | None = None,
    lock_timeout: float = 30.0,
    check: bool = False,
) -> dict[str, Any]:
    """Import the document at ``path`` into the Tomo database ``database``.

    ``check=True`` runs the very same import on a private copy of the
    database and throws the copy away: it reports what would change and
    changes nothing.

    The document is read and checked whole (``load``) before the database is
    opened: a malformed document fails without the database being touched.
    """
    doc = load(path)
    if not os.path.exists(database):
        raise TomoError(f"Tomo's database {database} does not exist")
    with consistent_copy(database, lock_timeout) if check else _open_live(database, lock_timeout) as conn:
        try:
            target_version = application_version or application_version_of(conn)
            _check_app_version(doc.get("application_version"), target_version, path)
            result = apply(conn, doc, categories, mode)
        except sqlite3.Error as exc:
            if _is_locked(exc):
                raise TomoError(_locked(database, lock_timeout)) from None
            raise TomoError(f"the import into {database} failed: {exc}; nothing was changed") from None
        except NewerError:
            raise
        except TomoError as exc:
            raise TomoError(f"{exc}; nothing was changed") from None
    result.update(
        {
            "src": path,
            "version": doc["version"],
            "migrated_from": doc.get("_migrated_from"),
            "created_at": doc.get("created_at"),
            "application_version": doc.get("application_version"),
            "target_application_version": target_version,
            "categories": list(categories),
            "mode": mode,
        }
    )
    return result


@contextlib.contextmanager
def _open_live(database: str, lock_timeout: float) -> Iterator[sqlite3.Connection]:
    try:
        conn = sqlite3.connect(database, isolation_level=None, timeout=lock_timeout)
    except sqlite3.Error as exc:
        raise TomoError(f"Tomo's database {database} cannot be opened: {exc}") from None
    with contextlib.closing(conn):
        try:
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        except sqlite3.DatabaseError as exc:
            if _is_locked(exc):
                raise TomoError(_locked(database, lock_timeout)) from None
            raise TomoError(f"{database} is not a usable SQLite database: {exc}; nothing was changed") from None
        yield conn


def _is_locked(exc: sqlite3.Error) -> bool:
    return "locked" in str(exc) or "busy" in str(exc)


def _locked(database: str, lock_timeout: float) -> str:
    return (
        f"Tomo's database {database} stayed locked by another process for longer than {lock_timeout:g} s; "
        "nothing was changed"
    )


def _check_app_version(backup: str | None, target: str | None, path: str) -> None:
    if backup is None:
        return
    if target is None:
        raise TomoError(
            f"{path} comes from Tomo {backup}, and the version of this Tomo is unknown (its database has no "
            "component_versions row): set application_version to the installed Tomo's version"
        )
    if parse_app_version(backup) > parse_app_version(target):
        raise NewerError(
            f"{path} comes from Tomo {backup}, newer than this Tomo ({target}): upgrade Tomo first, "
            "a backup is never imported into an older version"
        )


# --- listing ----------------------------------------------------------------------------------


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
