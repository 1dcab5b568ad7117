# Copyright: selfhost.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Tomo's settings audit during an import: its own triggers set aside, the import's changes recorded as its own.

Tomo audits every INSERT, UPDATE and DELETE of ``system_settings`` and
``user_settings`` with triggers writing ``settings_audit``. Its DELETE triggers
insert NULL into the NOT NULL ``new_value``, so a plain DELETE of a settings
row fails; its INSERT and UPDATE triggers of ``system_settings`` record
``updated_by`` as the one who made the change, which for a restored row is
whoever last changed it on the backed-up install, not a person here.

So, inside the import's transaction, Tomo's audit triggers are dropped and
replaced by temporary ones that record each change with
``change_reason`` "Restored by selfhost.dr (MODE)", ``user_agent``
``selfhost.dr``, no ``client_ip``, ``user_id`` NULL for system settings (no
person made the change) and the owner for user settings (as Tomo records
them), and ``new_value`` ``null`` (JSON null) for a removal. Tomo's triggers
are created again, from their own SQL, before the transaction commits: a
failed import rolls all of it back with the rest.
"""

from __future__ import annotations

import sqlite3

from .tomo_schema import _columns, _q, _table_exists

AUDITED = {"system_settings": "NULL", "user_settings": "{row}.user_id"}

AUDIT_COLUMNS = (
    "table_name, record_id, user_id, setting_key, old_value, new_value, change_type, change_reason, "
    "client_ip, user_agent, created_at, checksum"
)

CHECKSUM = "substr(lower(hex(randomblob(32))), 1, 64)"  # as Tomo's own triggers make it

CHANGED = "WHEN OLD.setting_value != NEW.setting_value"

EVENTS = {
    "INSERT": ("NEW", "NULL", "NEW.setting_value", "CREATE", ""),
    "UPDATE": ("NEW", "OLD.setting_value", "NEW.setting_value", "UPDATE", CHANGED),
    "DELETE": ("OLD", "OLD.setting_value", "'null'", "DELETE", ""),
}


def set_aside(conn: sqlite3.Connection, mode: str) -> list[str]:
    """Drop Tomo's settings audit triggers and audit with temporary ones; return the SQL to create Tomo's again.

    Runs inside the import's transaction. Nothing is done when this Tomo has no settings tables.
    """
    saved: list[str] = []
    for table in AUDITED:
        if not _table_exists(conn, table):
            continue
        for name, sql in conn.execute(
            "SELECT name, sql FROM sqlite_master WHERE type = 'trigger' AND tbl_name = ? AND sql LIKE ?",
            (table, "%settings_audit%"),
        ).fetchall():
            conn.execute(f"DROP TRIGGER {_q(name)}")
            saved.append(str(sql))
    if not _table_exists(conn, "settings_audit") or not set(AUDIT_COLUMNS.split(", ")) <= set(
        _columns(conn, "settings_audit")
    ):
        return saved
    reason = f"'Restored by selfhost.dr ({mode.replace(chr(39), '')})'"
    for table, user in AUDITED.items():
        if not _table_exists(conn, table):
            continue
        for event, (row, old, new, change, when) in EVENTS.items():
            # Every part is a constant of this module, the table's name from AUDITED, or the checked mode.
            values = [f"'{table}'", f"{row}.id", user.format(row=row), f"{row}.setting_key", old, new, f"'{change}'"]
            values += [reason, "NULL", "'selfhost.dr'", "datetime('now', 'utc')", CHECKSUM]
            name = _q(f"selfhost_dr_audit_{table}_{event.lower()}")
            head = ["CREATE TEMP TRIGGER", name, "AFTER", event, "ON", f"main.{_q(table)}", "FOR EACH ROW", when]
            body = ["BEGIN INSERT INTO settings_audit", f"({AUDIT_COLUMNS})", "VALUES", "(" + ", ".join(values) + ");"]
            body.append("END")
            conn.execute(" ".join([*head, *body]))
    return saved


def put_back(conn: sqlite3.Connection, saved: list[str]) -> None:
    """Drop the temporary audit triggers and create Tomo's own again (inside the transaction)."""
    drop_temporary(conn)
    for sql in saved:
        conn.execute(sql)


def drop_temporary(conn: sqlite3.Connection) -> None:
    for table in AUDITED:
        for event in EVENTS:
            conn.execute(f"DROP TRIGGER IF EXISTS temp.{_q(f'selfhost_dr_audit_{table}_{event.lower()}')}")
