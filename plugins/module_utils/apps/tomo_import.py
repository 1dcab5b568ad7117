# Copyright: selfhost.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Importing Tomo's JSON document into the live database: all or chosen categories, merge, replace or
skip_duplicates, in one transaction (check mode runs it on a private copy)."""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from . import tomo_audit, tomo_enc
from .tomo_document import load
from .tomo_export import _check_categories, _parent_keys, consistent_copy
from .tomo_schema import (
    BY_NAME,
    CATEGORIES,
    IDENTITY,
    MAINTAINED,
    MODES,
    TABLES,
    USER_REFS,
    Key,
    Link,
    NewerError,
    Row,
    Table,
    TomoError,
    _from_json,
    _label,
    _natural_key_of_doc_row,
    _q,
    _reserved_fields,
    _Shape,
    _shape,
    _shown,
    _sort_key,
    _table_exists,
    installed_version,
    new_id,
    parse_app_version,
    tables_of,
)


@dataclass
class TableChange:
    added: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # matched an existing row (skip_duplicates)
    orphaned: list[str] = field(default_factory=list)  # the row it belongs to is not in this Tomo
    incomplete: list[str] = field(default_factory=list)  # new here, and the backup lacks a column it needs
    unchanged: int = 0
    note: str = ""

    def summary(self) -> dict[str, Any]:
        return {
            "added": len(self.added),
            "updated": len(self.updated),
            "removed": len(self.removed),
            "skipped": len(self.skipped) + len(self.orphaned) + len(self.incomplete),
            "unchanged": self.unchanged,
            "keys": {
                k: v
                for k, v in (
                    ("added", self.added),
                    ("updated", self.updated),
                    ("removed", self.removed),
                    ("skipped", self.skipped),
                    ("orphaned", self.orphaned),
                    ("incomplete", self.incomplete),
                )
                if v
            },
            **({"note": self.note} if self.note else {}),
        }

    @property
    def changed(self) -> bool:
        return bool(self.added or self.updated or self.removed)


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
            if table.many:
                for row in child or []:
                    row = dict(row)
                    row[table.link.field] = (
                        entry.get(main.key[0]) if len(main.key) == 1 else {k: entry.get(k) for k in main.key}
                    )
                    out[table.name].append(row)
            elif child is not None:  # null: this entry has none
                child = dict(child)
                child[table.link.field] = {k: entry.get(k) for k in main.key}
                out[table.name].append(child)
        out[main.name].append(entry)
    return out


class _Importer:
    def __init__(self, conn: sqlite3.Connection, mode: str, source_users: dict[Any, str] | None = None) -> None:
        self.conn = conn
        self.mode = mode
        self.source_users = source_users or {}  # the backed-up install's user ids → names
        self.dependents: dict[str, int] = {}  # rows of other tables removed with removed rows

    def user_ids(self) -> dict[str, Any]:
        """User name → id, here."""
        if not _table_exists(self.conn, "users"):
            return {}
        return {str(r[1]): r[0] for r in self.conn.execute("SELECT id, username FROM users")}

    def map_users(self, table: Table, doc_row: Row, values: Row, users: dict[str, Any]) -> list[str]:
        """Point the user references outside foreign keys at this install's users; return those that name none."""
        unresolved = []
        for column, name_field in USER_REFS.get(table.name, ()):
            if column not in values and name_field not in doc_row:
                continue
            if name_field in doc_row:
                name = doc_row[name_field]
            elif values.get(column) in self.source_users:  # a document without the names: by the backup's ids
                name = self.source_users[values[column]]
            else:
                continue  # names no user of the backed-up install ('system', null): kept as it is
            if isinstance(name, str) and name in users:
                values[column] = users[name]
            else:
                values[column] = None
                unresolved.append(column)
        return unresolved

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
        users = self.user_ids() if table.name in USER_REFS else {}
        unnamed: list[str] = []
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
            unresolved = self.map_users(table, doc_row, values, users)
            unnamed.extend(f"{label} ({c})" for c in unresolved)
            match = existing.get(key)
            if match is not None:
                if self.mode == "skip_duplicates":
                    change.skipped.append(label)
                    continue
                fixed = set(shape.pk) | ({table.link.column} if table.link else set())
                # The install's identity, what Tomo's triggers maintain and users not here: the target's stay.
                fixed |= set(IDENTITY.get(table.name, ())) | set(MAINTAINED.get(table.name, ())) | set(unresolved)
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
            if any(c not in values for c in shape.required):
                change.incomplete.append(label)
                continue
            self._free_identity(table, shape, values)
            self._run(
                f"INSERT INTO {_q(table.name)} ({', '.join(map(_q, values))}) VALUES ({', '.join('?' * len(values))})",
                list(values.values()),
                f"could not add {table.name} row {label}",
            )
            change.added.append(label)
        notes = []
        if dropped:
            notes.append(f"column(s) this Tomo does not have were left out: {', '.join(sorted(dropped))}")
        if change.incomplete:
            missing = sorted({c for c in shape.required if all(c not in r for r in doc_rows)} or shape.required)
            notes.append(f"row(s) new here that the backup gives no {', '.join(missing)} were not added")
        if unnamed:
            notes.append(f"user(s) not in this Tomo, so not named: {'; '.join(unnamed)}")
        change.note = "; ".join(notes)
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
            values[column] = new_id(table.name)

    def remove_unmatched(self, table: Table, keep: set[Key]) -> list[str]:
        shape = _shape(self.conn, table.name)
        removed = []
        for key, row in sorted(self.target_rows(table, shape).items(), key=lambda kv: _sort_key(kv[0])):
            if key in keep:
                continue
            self._remove_dependents(table, row)
            self._run(
                f"DELETE FROM {_q(table.name)} WHERE rowid = ?",
                [row["__rowid__"]],
                f"could not remove {table.name} row {_label(key)}",
            )
            removed.append(_label(key))
            if table.name == "users":
                self._forget_user(row.get("id"))
        return removed

    def _remove_dependents(self, table: Table, row: Row) -> None:
        """Remove the rows of tables outside the backup that a foreign key without ON DELETE ties to ``row``.

        Tomo does the same when it removes a repository: the ratings of its
        apps first (``app_ratings`` refers to ``marketplace_apps`` without ON
        DELETE), then the apps, then the repository.
        """
        names = {t.name for t in TABLES}
        others = [r[0] for r in self.conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        for other in others:
            if other in names:
                continue
            for fk in self.conn.execute(f"PRAGMA foreign_key_list({_q(other)})").fetchall():
                if fk[2] != table.name or str(fk[6]).upper() not in ("NO ACTION", "RESTRICT"):
                    continue
                value = row.get(fk[4] or "id")
                cur = self.conn.execute(f"DELETE FROM {_q(other)} WHERE {_q(fk[3])} = ?", (value,))
                if cur.rowcount > 0:
                    self.dependents[other] = self.dependents.get(other, 0) + cur.rowcount

    def _forget_user(self, user_id: Any) -> None:
        """A removed user is named nowhere outside foreign keys any more (those references become null)."""
        for name, refs in USER_REFS.items():
            if _table_exists(self.conn, name):
                for column, _ in refs:
                    self.conn.execute(f"UPDATE {_q(name)} SET {_q(column)} = NULL WHERE {_q(column)} = ?", (user_id,))

    def _run(self, sql: str, params: list[Any], what: str) -> None:
        try:
            self.conn.execute(sql, params)
        except sqlite3.IntegrityError as exc:
            hint = " (rows elsewhere still refer to it)" if "FOREIGN KEY" in str(exc) else ""
            raise TomoError(f"{what}: {exc}{hint}") from None


def _source_users(data: dict[str, Any]) -> dict[Any, str]:
    """The backed-up install's user ids → names, from the document's users when it has them."""
    users = data.get("users") or []
    return {
        u["id"]: u["username"] for u in users if isinstance(u.get("id"), str) and isinstance(u.get("username"), str)
    }


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
    importer = _Importer(conn, mode, _source_users(data))
    changes: dict[str, dict[str, TableChange]] = {}
    conn.execute("BEGIN IMMEDIATE")
    try:
        before = _counts(conn)
        audit_triggers = tomo_audit.set_aside(conn, mode)
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
            if not _table_exists(conn, table.name) or (table.link and not _table_exists(conn, table.link.parent)):
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
        if any(c.changed for tables in changes.values() for c in tables.values()) or importer.dependents:
            tomo_audit.put_back(conn, audit_triggers)
            conn.execute("COMMIT")
        else:  # nothing to change: not even Tomo's triggers are touched
            conn.execute("ROLLBACK")
            tomo_audit.drop_temporary(conn)
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        tomo_audit.drop_temporary(conn)
        raise
    cascaded = {}
    for name, n in before.items():
        change = next((c[name] for c in changes.values() if name in c), TableChange())
        gone = n + len(change.added) - len(change.removed) - after.get(name, 0)
        if gone:
            cascaded[name] = gone
    cascaded.update(importer.dependents)
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
    password: str | None = None,
) -> dict[str, Any]:
    """Import the document at ``path`` into the Tomo database ``database``.

    A path ending in ``.enc`` is Tomo's own encrypted backup, read with
    ``password`` and imported as the guide's document it amounts to
    (``tomo_enc``).

    ``check=True`` runs the very same import on a private copy of the
    database and throws the copy away: it reports what would change and
    changes nothing.

    The document is read and checked whole (``load``) before the database is
    opened: a malformed document fails without the database being touched.
    """
    doc = tomo_enc.load_enc(path, password) if tomo_enc.is_enc(path) else load(path)
    if not os.path.exists(database):
        raise TomoError(f"Tomo's database {database} does not exist")
    with consistent_copy(database, lock_timeout) if check else open_live(database, lock_timeout) as conn:
        try:
            target_version = application_version or installed_version()
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
            "source_format": doc.get("_source_format", "document"),
        }
    )
    if doc.get("_app_configs"):
        result["note"] = (
            f"the backup's {doc['_app_configs']} app_configs entries were not imported (no table holds them)"
        )
    return result


@contextlib.contextmanager
def open_live(database: str, lock_timeout: float) -> Iterator[sqlite3.Connection]:
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
            f"{path} comes from Tomo {backup}, and the version of this Tomo is unknown (no tomo package is "
            "installed here, and component_versions only holds placeholders): set application_version to the "
            "installed Tomo's version"
        )
    if parse_app_version(backup) > parse_app_version(target):
        raise NewerError(
            f"{path} comes from Tomo {backup}, newer than this Tomo ({target}): upgrade Tomo first, "
            "a backup is never imported into an older version"
        )
