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
- ``repositories``: ``marketplace_repos`` rows, each with its
  ``marketplace_apps`` nested in it as ``apps`` (a list). Keys: ``id``; the
  repository and ``id``.

Ids are Tomo's TEXT ids (users uuid4, servers ``server-`` + 8 hex...). Users
are also named outside foreign keys, in ``system_info.setup_by_user_id``,
``retention_settings.updated_by_user_id`` and ``system_settings.updated_by``:
the document carries each as the user's name too (``setup_by_username``,
``updated_by_username``), and an import points it at this install's user of
that name. ``system_info``'s identity (``installation_id`` and the license) is
never changed on an existing row.

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
import json
import math
import os
import re
import sqlite3
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .._common import AppError

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


# The Debian package database, where a packaged Tomo's version is (``component_versions`` holds placeholders).
DPKG_STATUS = "/var/lib/dpkg/status"


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
    nested_as: str = ""  # nested in the parent's entry under this field: one row per parent, or a list (many)
    many: bool = False


SERVER = Link("server_id", "servers", "server")


TABLES = (
    Table("users", "users", ("username",)),
    Table("servers", "servers", ("host", "port", "username")),
    Table("server_credentials", "servers", (), SERVER, nested_as="credentials"),
    Table("agents", "servers", (), SERVER, nested_as="agent"),
    Table("installed_apps", "applications", ("app_id",), SERVER),
    Table("system_settings", "settings", ("setting_key",)),
    Table("retention_settings", "settings", ("id",)),
    Table("system_info", "settings", ("id",)),
    Table("user_settings", "preferences", ("setting_key",), Link("user_id", "users", "username")),
    Table("marketplace_repos", "repositories", ("id",)),
    Table("marketplace_apps", "repositories", ("id",), Link("repo_id", "marketplace_repos", "repo"), "apps", True),
)


# Columns naming a user outside any foreign key, and the document field that names the same user by name.
USER_REFS = {
    "system_info": (("setup_by_user_id", "setup_by_username"),),
    "retention_settings": (("updated_by_user_id", "updated_by_username"),),
    "system_settings": (("updated_by", "updated_by_username"),),
}


# An install's identity: only a restore of the whole install (the set) carries it; an import never changes it.
IDENTITY = {"system_info": ("installation_id", "license_type", "license_key", "license_expires_at")}


# Columns Tomo's own triggers set on every update (to the time of the update): an update never compares or writes them.
MAINTAINED = {"system_info": ("updated_at",)}


def new_id(table: str) -> str:
    """A fresh id in Tomo's own format for a row of ``table`` whose id is taken here."""
    hex8 = uuid.uuid4().hex[:8]
    return {"servers": f"server-{hex8}", "installed_apps": f"inst-{hex8}", "marketplace_repos": hex8}.get(
        table, str(uuid.uuid4())
    )


BY_NAME = {t.name: t for t in TABLES}


def tables_of(category: str) -> list[Table]:
    return [t for t in TABLES if t.category == category]


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


def installed_version(status: str | None = None) -> str | None:
    """The version of the installed Tomo package (``dpkg``'s status file, without the Debian revision), or None.

    Never ``component_versions``: Tomo fills it with ``1.0.0`` placeholders and
    never updates them.
    """
    try:
        with open(status or DPKG_STATUS, encoding="utf-8", errors="replace") as handle:
            text = handle.read(64 * 1024 * 1024)
    except OSError:
        return None
    for stanza in text.split("\n\n"):
        fields = dict(line.split(":", 1) for line in stanza.splitlines() if ":" in line and not line.startswith(" "))
        if fields.get("Package", "").strip() == "tomo" and "installed" in fields.get("Status", "").split():
            version = fields.get("Version", "").strip()
            version = version.split(":", 1)[-1].rsplit("-", 1)[0] if "-" in version else version.split(":", 1)[-1]
            return version or None
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
    required: list[str]  # NOT NULL without a default: a new row cannot do without them


def _shape(conn: sqlite3.Connection, table: str) -> _Shape:
    info = conn.execute(f"PRAGMA table_info({_q(table)})").fetchall()
    pk = [str(r[1]) for r in sorted((r for r in info if r[5]), key=lambda r: r[5])]
    integer_pk = len(pk) == 1 and any(str(r[1]) == pk[0] and str(r[2]).upper() == "INTEGER" for r in info)
    required = [str(r[1]) for r in info if r[3] and r[4] is None and not (integer_pk and str(r[1]) == pk[0])]
    return _Shape([str(r[1]) for r in info], pk, integer_pk, required)


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


def _reserved_fields(table: Table) -> set[str]:
    """Fields of the table's entries in the document that are not columns: its link, its nested children."""
    fields = {t.nested_as for t in TABLES if t.nested_as and t.link and t.link.parent == table.name}
    fields.update(field for _, field in USER_REFS.get(table.name, ()))
    if table.link and not table.nested_as:
        fields.add(table.link.field)
    return fields


def _natural_key_of_doc_row(table: Table, row: Row) -> Key:
    parent: Key = ()
    if table.link:
        ref = row.get(table.link.field)
        ptable = BY_NAME[table.link.parent]
        parent = tuple(ref.get(k) for k in ptable.key) if isinstance(ref, dict) else (ref,)
    return parent + tuple(row.get(k) for k in table.key)


def _count(category: str, value: Any) -> int:
    if category == "settings":
        return sum(len(v) for v in value.values())
    return len(value)


def _size_text(size: int) -> str:
    return f"{size // (1024 * 1024)} MiB" if size >= 1024 * 1024 and size % (1024 * 1024) == 0 else f"{size} bytes"


def _label(key: Key) -> str:
    return ", ".join("null" if v is None else str(v) for v in key)
