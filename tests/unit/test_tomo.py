"""Tomo's JSON backup document: export from a live database, import by category and mode.

The databases are built by tests/fixtures/tomo/tomo_fixture.py, a stand-in for
the database Tomo creates (Tomo itself is not installable here).
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import sqlite3
import stat
import sys
import uuid
from pathlib import Path

import pytest

from ansible_collections.selfhost.dr.plugins.module_utils.apps import (
    tomo_export,
    tomo_import,
    tomo_schema,
)
from ansible_collections.selfhost.dr.plugins.module_utils.apps.tomo_schema import TomoError

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "fixtures" / "tomo"))
import tomo_fixture

CATEGORIES = list(tomo_schema.CATEGORIES)
AGENT_WEB1 = tomo_fixture.SOURCE["agents"][0][0]
AGENT_NAS = tomo_fixture.TARGET["agents"][0][0]


def installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, version: str | None) -> None:
    """This host's Tomo package, as dpkg's status file names it (none when version is None)."""
    status = tmp_path / "dpkg-status"
    package = f"Package: tomo\nStatus: install ok installed\nVersion: {version}-1\n" if version else ""
    status.write_text(f"Package: sqlite3\nStatus: install ok installed\nVersion: 3.40.1-2\n\n{package}")
    monkeypatch.setattr(tomo_schema, "DPKG_STATUS", str(status))


@pytest.fixture(autouse=True)
def tomo_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The target's Tomo is the package 1.2.1 (component_versions holds Tomo's 1.0.0 placeholders)."""
    installed(tmp_path, monkeypatch, "1.2.1")


def db(tmp_path: Path, variant: str, name: str = "", **kwargs: object) -> str:
    path = str(tmp_path / (name or f"{variant}.db"))
    tomo_fixture.create(path, variant, **kwargs)  # type: ignore[arg-type]
    return path


def sha(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def rows(path: str, sql: str) -> list[tuple[object, ...]]:
    with sqlite3.connect(path) as conn:
        return conn.execute(sql).fetchall()


SERVERS = """SELECT s.name, s.host, s.port, s.username, s.auth_type, c.encrypted_data, a.id
             FROM servers s LEFT JOIN server_credentials c ON c.server_id = s.id
             LEFT JOIN agents a ON a.server_id = s.id ORDER BY s.host, s.port"""
PREFS = """SELECT u.username, us.setting_key, us.setting_value FROM user_settings us
           JOIN users u ON u.id = us.user_id ORDER BY 1, 2"""
APPS = """SELECT s.name, a.app_id, a.config FROM installed_apps a JOIN servers s ON s.id = a.server_id ORDER BY 1, 2"""
USERS = "SELECT id, username, email, password_hash FROM users ORDER BY username"


def export_source(tmp_path: Path) -> str:
    """The source's document (Tomo 1.2.0) in tmp_path/backups."""
    out = tmp_path / "backups"
    out.mkdir()
    return str(tomo_export.export(db(tmp_path, "source"), str(out), application_version="1.2.0")["path"])


@pytest.fixture
def exported(tmp_path: Path) -> str:
    return export_source(tmp_path)


# --- export ------------------------------------------------------------------------------------


def test_export_writes_the_guides_document(tmp_path: Path) -> None:
    source = db(tmp_path, "source")
    (tmp_path / "out").mkdir()
    result = tomo_export.export(source, str(tmp_path / "out"), application_version="1.2.0")

    path = Path(result["path"])
    assert tomo_schema.NAME_PATTERN.match(path.name)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert os.listdir(tmp_path / "out") == [path.name]  # no temporary file left
    doc = json.loads(path.read_text())
    assert doc["version"] == "1.0"
    assert doc["application_version"] == "1.2.0"
    assert doc["created_at"] == result["created_at"]
    assert set(doc["data"]) == set(CATEGORIES)
    assert result["counts"] == {
        "servers": 3,
        "applications": 3,
        "settings": 5,
        "users": 3,
        "preferences": 4,
        "repositories": 2,
    }
    web1 = next(s for s in doc["data"]["servers"] if s["name"] == "web1")
    assert web1["credentials"]["encrypted_data"] == "gAAAAABsrc-web1-key"  # still encrypted, as stored
    assert web1["id"].startswith("server-") and web1["agent"]["id"] == AGENT_WEB1
    assert {u["username"]: u["password_hash"] for u in doc["data"]["users"]}["alice"].startswith("$2b$12$srcAlice")
    # References are natural keys, not ids.
    nginx = next(a for a in doc["data"]["applications"] if a["app_id"] == "nginx")
    assert nginx["server"] == {"host": "10.0.0.11", "port": 22, "username": "root"}
    assert "server_id" not in nginx
    assert {(p["username"], p["setting_key"]) for p in doc["data"]["preferences"]} == {
        ("admin", "ui.theme"),
        ("alice", "ui.language"),
        ("alice", "ui.theme"),
        ("carol", "ui.theme"),
    }
    text = path.read_text()
    # Users named outside foreign keys are named by name too.
    (info,) = doc["data"]["settings"]["system_info"]
    assert (info["setup_by_username"], info["installation_id"]) == ("admin", tomo_fixture.SOURCE["installation_id"])
    for secret in ("secret-token", "sess-source", f"C-{AGENT_WEB1}"):  # sessions, csrf tokens, registration codes
        assert secret not in text
    for table in tomo_schema.EXCLUDED_TABLES:
        assert f'"{table}"' not in text


def test_export_records_absent_tables_instead_of_failing(tmp_path: Path) -> None:
    source = db(tmp_path, "source")
    with sqlite3.connect(source) as conn:
        conn.execute("DROP TABLE agent_registration_codes")
        conn.execute("DROP TABLE agents")
        conn.execute("DROP TABLE marketplace_repos")
    result = tomo_export.export(source, str(tmp_path))
    doc = json.loads(Path(result["path"]).read_text())
    assert doc["absent_tables"] == ["agents", "marketplace_repos"]
    assert doc["data"]["repositories"] == []
    assert all("agent" not in s for s in doc["data"]["servers"])
    assert result["counts"]["servers"] == 3


def test_export_check_mode_writes_nothing(tmp_path: Path) -> None:
    source = db(tmp_path, "source")
    (tmp_path / "out").mkdir()
    result = tomo_export.export(source, str(tmp_path / "out"), write=False)
    assert result["counts"]["users"] == 3
    assert os.listdir(tmp_path / "out") == []


def test_two_exports_in_one_second_never_replace_each_other(tmp_path: Path) -> None:
    import datetime

    source = db(tmp_path, "source")
    now = datetime.datetime(2026, 11, 22, 3, 51, 0, tzinfo=datetime.UTC)
    first = tomo_export.export(source, str(tmp_path), now=now)
    second = tomo_export.export(source, str(tmp_path), now=now)
    assert Path(first["path"]).name == "tomo-backup-2026-11-22T03-51-00.json"
    assert Path(second["path"]).name == "tomo-backup-2026-11-22T03-51-01.json"
    assert json.loads(Path(second["path"]).read_text())["created_at"] == "2026-11-22T03:51:01Z"


def _busy_admin(path: str, stop: multiprocessing.synchronize.Event, ready: multiprocessing.synchronize.Event) -> None:  # type: ignore[name-defined]
    """Adds users, each with exactly one preference, in one transaction each."""
    conn = sqlite3.connect(path, isolation_level=None, timeout=30)
    i = 0
    while not stop.is_set():
        conn.execute("BEGIN IMMEDIATE")
        uid = str(uuid.uuid4())
        conn.execute("INSERT INTO users (id, username, password_hash) VALUES (?, ?, 'x')", (uid, f"user{i}"))
        conn.execute(
            "INSERT INTO user_settings (user_id, setting_key, setting_value, category)"
            " VALUES (?, 'ui.theme', '1', 'ui')",
            (uid,),
        )
        conn.execute("COMMIT")
        i += 1
        ready.set()  # after the first user: on a loaded machine the exports could otherwise all come before it
    conn.close()


@pytest.mark.parametrize("wal", [False, True], ids=["rollback", "wal"])
def test_export_of_a_busy_database_is_one_point_in_time(tmp_path: Path, wal: bool) -> None:
    source = db(tmp_path, "source", wal=wal)
    ctx = multiprocessing.get_context("fork")
    stop, ready = ctx.Event(), ctx.Event()
    proc = ctx.Process(target=_busy_admin, args=(source, stop, ready))
    proc.start()
    try:
        ready.wait(10)
        results = [tomo_export.export(source, str(tmp_path), now=None) for _ in range(3)]
    finally:
        stop.set()
        proc.join(10)
    for result in results:
        doc = json.loads(Path(result["path"]).read_text())
        users = {u["username"] for u in doc["data"]["users"] if u["username"].startswith("user")}
        prefs = {p["username"] for p in doc["data"]["preferences"] if p["username"].startswith("user")}
        assert users == prefs, "a user without its preference, or the reverse: the export saw two points in time"
    assert len(users) > 0


def test_export_of_a_missing_database_says_so(tmp_path: Path) -> None:
    with pytest.raises(TomoError, match=r"^Tomo's database .*/nope.db cannot be read: No such file or directory$"):
        tomo_export.export(str(tmp_path / "nope.db"), str(tmp_path))


# --- import: the three modes ---------------------------------------------------------------------


def test_merge_adds_and_updates_and_keeps_the_rest(tmp_path: Path, exported: str) -> None:
    target = db(tmp_path, "target")
    result = tomo_import.import_document(exported, target, ["servers", "preferences"], "merge")

    assert rows(target, SERVERS) == [
        ("web1", "10.0.0.11", 22, "root", "key", "gAAAAABsrc-web1-key", AGENT_WEB1),
        ("db1", "10.0.0.12", 22, "admin", "password", "gAAAAABsrc-db1-password", None),  # updated from the backup
        ("old-nas", "10.0.0.30", 22, "root", "password", "gAAAAABtgt-nas-password", AGENT_NAS),  # kept
        ("media", "10.0.0.40", 2222, "media", "key", "gAAAAABsrc-media-key", None),
    ]
    # alice is user 2 in the source and user 3 here: her preferences follow her name.
    assert rows(target, PREFS) == [
        ("admin", "ui.theme", '"dark"'),
        ("alice", "ui.language", '"fr"'),
        ("alice", "ui.theme", '"light"'),
        ("bob", "ui.theme", '"dark"'),
    ]
    prefs = result["changes"]["preferences"]["user_settings"]
    assert prefs["keys"]["orphaned"] == ["carol, ui.theme"]  # carol is not a user here
    assert result["changes"]["servers"]["servers"]["keys"] == {
        "added": ["10.0.0.11, 22, root", "10.0.0.40, 2222, media"],
        "updated": ["10.0.0.12, 22, admin"],
    }
    # The categories not chosen are untouched; the matched server kept its id, so its apps stay.
    assert rows(target, APPS) == [
        ("db1", "pgadmin", "{}"),
        ("db1", "postgres", '{"env": {"POSTGRES_DB": "old"}}'),
        ("old-nas", "jellyfin", "{}"),
    ]
    assert result["changed"] is True


def test_skip_duplicates_adds_only_what_has_no_match(tmp_path: Path, exported: str) -> None:
    target = db(tmp_path, "target")
    result = tomo_import.import_document(exported, target, ["servers", "preferences"], "skip_duplicates")

    assert rows(target, SERVERS) == [
        ("web1", "10.0.0.11", 22, "root", "key", "gAAAAABsrc-web1-key", AGENT_WEB1),
        ("database", "10.0.0.12", 22, "admin", "key", "gAAAAABtgt-database-key", None),  # as it was
        ("old-nas", "10.0.0.30", 22, "root", "password", "gAAAAABtgt-nas-password", AGENT_NAS),
        ("media", "10.0.0.40", 2222, "media", "key", "gAAAAABsrc-media-key", None),
    ]
    assert rows(target, PREFS) == [
        ("admin", "ui.theme", '"system"'),
        ("alice", "ui.language", '"fr"'),
        ("alice", "ui.theme", '"dark"'),
        ("bob", "ui.theme", '"dark"'),
    ]
    assert result["changes"]["servers"]["servers"]["keys"]["skipped"] == ["10.0.0.12, 22, admin"]


def test_replace_makes_the_category_the_backups(tmp_path: Path, exported: str) -> None:
    target = db(tmp_path, "target")
    (db1_id,) = rows(target, "SELECT id FROM servers WHERE name = 'database'")[0]
    result = tomo_import.import_document(exported, target, ["servers", "preferences"], "replace")

    assert rows(target, SERVERS) == [
        ("web1", "10.0.0.11", 22, "root", "key", "gAAAAABsrc-web1-key", AGENT_WEB1),
        ("db1", "10.0.0.12", 22, "admin", "password", "gAAAAABsrc-db1-password", None),
        ("media", "10.0.0.40", 2222, "media", "key", "gAAAAABsrc-media-key", None),
    ]
    assert rows(target, PREFS) == [
        ("admin", "ui.theme", '"dark"'),
        ("alice", "ui.language", '"fr"'),
        ("alice", "ui.theme", '"light"'),
    ]
    # The matched server was updated in place: its id, and what refers to it, stay.
    assert rows(target, "SELECT id FROM servers WHERE name = 'db1'") == [(db1_id,)]
    assert rows(target, APPS) == [("db1", "pgadmin", "{}"), ("db1", "postgres", '{"env": {"POSTGRES_DB": "old"}}')]
    # old-nas went, and Tomo's own foreign keys took its app with it: reported, not hidden.
    assert result["cascaded"] == {"installed_apps": 1}
    assert result["changes"]["servers"]["servers"]["keys"]["removed"] == ["10.0.0.30, 22, root"]
    assert rows(target, "SELECT count(*) FROM users") == [(3,)]  # users not chosen: untouched


@pytest.mark.parametrize("schema", tomo_fixture.SCHEMAS)
def test_full_restore_into_an_empty_tomo_reproduces_every_row(tmp_path: Path, schema: str) -> None:
    source = db(tmp_path, "source", schema=schema)
    exported = tomo_export.export(source, str(tmp_path), application_version="1.2.0")["path"]
    empty = str(tmp_path / "empty.db")
    with sqlite3.connect(empty) as conn:
        conn.executescript(tomo_fixture.schema_sql(schema))
    tomo_import.import_document(exported, empty, CATEGORIES, "replace")
    with sqlite3.connect(source) as conn:
        present = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    for table in tomo_schema.TABLES:
        if table.name in present:
            sql = f"SELECT * FROM {table.name} ORDER BY 1, 2"  # noqa: S608 - names from tomo_schema.TABLES
            assert rows(empty, sql) == rows(source, sql), table.name
            assert rows(empty, sql), table.name


# Ids of the install, and the columns that name its users by id or hold its identity: never the backup's.
LOCAL = {"id", "setup_by_user_id", "updated_by_user_id", "updated_by", "installation_id"}


def _local_aside(value: object) -> object:
    if isinstance(value, dict):
        return {k: _local_aside(v) for k, v in value.items() if k not in LOCAL}
    if isinstance(value, list):
        return [_local_aside(v) for v in value]
    return value


@pytest.mark.parametrize("schema", tomo_fixture.SCHEMAS)
def test_full_restore_over_another_install_matches_the_source_by_natural_keys(tmp_path: Path, schema: str) -> None:
    source, target = db(tmp_path, "source", schema=schema), db(tmp_path, "target", schema=schema)
    exported = tomo_export.export(source, str(tmp_path), application_version="1.2.0")["path"]
    result = tomo_import.import_document(exported, target, CATEGORIES, "replace")
    (tmp_path / "backups").mkdir()
    again = tomo_export.export(target, str(tmp_path / "backups"))
    a = json.loads(Path(exported).read_text())["data"]
    b = json.loads(Path(again["path"]).read_text())["data"]
    for doc in (a, b):  # Tomo's own trigger sets it to the time of the import
        del doc["settings"]["system_info"][0]["updated_at"]

    # Ids differ between installs (matched rows keep theirs); everything else is the source's, users named
    # outside foreign keys included (by this install's ids).
    for category in ("servers", "applications", "settings", "users", "preferences"):
        assert _local_aside(b[category]) == _local_aside(a[category]), category
    assert b["repositories"] == a["repositories"]  # keyed by their id: the very same rows
    (info,) = b["settings"]["system_info"]
    admin = rows(target, "SELECT id FROM users WHERE username = 'admin'")[0][0]
    assert (info["setup_by_user_id"], info["setup_by_username"]) == (admin, "admin")
    assert info["installation_id"] == tomo_fixture.TARGET["installation_id"]  # the install's identity stays
    assert result["changed"] is True
    assert rows(target, "PRAGMA foreign_key_check") == []


def test_importing_twice_changes_nothing_the_second_time(tmp_path: Path, exported: str) -> None:
    target = db(tmp_path, "target")
    tomo_import.import_document(exported, target, CATEGORIES, "merge")
    before = sha(target)
    result = tomo_import.import_document(exported, target, CATEGORIES, "merge")
    assert result["changed"] is False
    assert sha(target) == before


def test_check_mode_reports_the_same_and_changes_nothing(tmp_path: Path, exported: str) -> None:
    target = db(tmp_path, "target")
    before = sha(target)
    checked = tomo_import.import_document(exported, target, ["servers", "preferences"], "replace", check=True)
    assert sha(target) == before
    assert not Path(target + "-journal").exists()
    real = tomo_import.import_document(exported, target, ["servers", "preferences"], "replace")
    assert checked["changes"] == real["changes"]
    assert checked["cascaded"] == real["cascaded"]
