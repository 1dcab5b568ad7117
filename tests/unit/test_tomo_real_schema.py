"""Tomo's real schema, both variants: each mode's exact rows, user references, identity, audit trail, version.

The databases are built by tests/fixtures/tomo/tomo_fixture.py from copies of
the dumps of databases Tomo's own code built (a stand-in for Tomo, which is
not installable here): ``full`` (26 tables, settings audit triggers) and
``startup`` (16 tables, no settings tables).
"""

from __future__ import annotations

import json
import sqlite3
import sys
from pathlib import Path

import pytest

from ansible_collections.selfhost.dr.plugins.module_utils.apps import tomo_export, tomo_import, tomo_schema
from ansible_collections.selfhost.dr.plugins.module_utils.apps.tomo_schema import TomoError

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "fixtures" / "tomo"))
import tomo_fixture

CATEGORIES = list(tomo_schema.CATEGORIES)
SOURCE_ID = tomo_fixture.SOURCE["installation_id"]
TARGET_ID = tomo_fixture.TARGET["installation_id"]
AUDIT_TRIGGERS = "SELECT name, sql FROM sqlite_master WHERE type = 'trigger' ORDER BY name"


def rows(path: str, sql: str) -> list[tuple[object, ...]]:
    with sqlite3.connect(path) as conn:
        return conn.execute(sql).fetchall()


@pytest.fixture(autouse=True)
def tomo_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    status = tmp_path / "dpkg-status"
    status.write_text("Package: tomo\nStatus: install ok installed\nVersion: 1.2.1-1\n")
    monkeypatch.setattr(tomo_schema, "DPKG_STATUS", str(status))


def pair(tmp_path: Path, schema: str) -> tuple[str, str]:
    """The source's document (Tomo 1.2.0) and the target's database, in the ``schema`` variant."""
    source, target = str(tmp_path / "source.db"), str(tmp_path / "target.db")
    tomo_fixture.create(source, "source", schema)
    tomo_fixture.create(target, "target", schema)
    return str(tomo_export.export(source, str(tmp_path), application_version="1.2.0")["path"]), target


SERVERS = (
    "SELECT s.name, c.encrypted_data FROM servers s LEFT JOIN server_credentials c ON c.server_id = s.id ORDER BY 1"
)
APPS = "SELECT s.name, a.app_id FROM installed_apps a JOIN servers s ON s.id = a.server_id ORDER BY 1, 2"
USERS = "SELECT username, email FROM users ORDER BY 1"
INFO = """SELECT u.username, i.installation_id FROM system_info i LEFT JOIN users u ON u.id = i.setup_by_user_id"""
RETENTION = """SELECT r.audit_log_retention, r.metrics_retention, u.username FROM retention_settings r
               LEFT JOIN users u ON u.id = r.updated_by_user_id"""
SETTINGS = """SELECT s.setting_key, s.setting_value, coalesce(u.username, s.updated_by) FROM system_settings s
              LEFT JOIN users u ON u.id = s.updated_by ORDER BY 1"""
REPOS = """SELECT r.id, r.branch, a.id FROM marketplace_repos r LEFT JOIN marketplace_apps a ON a.repo_id = r.id
           ORDER BY 1, 3"""

MEDIA, WEB1 = ("media", "gAAAAABsrc-media-key"), ("web1", "gAAAAABsrc-web1-key")
STARTUP = {
    "merge": {
        SERVERS: [("db1", "gAAAAABsrc-db1-password"), MEDIA, ("old-nas", "gAAAAABtgt-nas-password"), WEB1],
        APPS: [
            ("db1", "pgadmin"),
            ("db1", "postgres"),
            ("old-nas", "jellyfin"),
            ("web1", "nginx"),
            ("web1", "portainer"),
        ],
        USERS: [
            ("admin", "admin@example.org"),
            ("alice", "alice@example.org"),
            ("bob", "bob@example.net"),
            ("carol", "carol@example.org"),
        ],
        INFO: [("admin", TARGET_ID)],
        RETENTION: [(365, 30, "alice")],
    },
    "skip_duplicates": {
        SERVERS: [("database", "gAAAAABtgt-database-key"), MEDIA, ("old-nas", "gAAAAABtgt-nas-password"), WEB1],
        APPS: [
            ("database", "pgadmin"),
            ("database", "postgres"),
            ("old-nas", "jellyfin"),
            ("web1", "nginx"),
            ("web1", "portainer"),
        ],
        USERS: [
            ("admin", "root@example.net"),
            ("alice", "alice@old.example"),
            ("bob", "bob@example.net"),
            ("carol", "carol@example.org"),
        ],
        INFO: [("bob", TARGET_ID)],
        RETENTION: [(180, 90, "bob")],
    },
    "replace": {
        SERVERS: [("db1", "gAAAAABsrc-db1-password"), MEDIA, WEB1],
        APPS: [("db1", "postgres"), ("web1", "nginx"), ("web1", "portainer")],
        USERS: [("admin", "admin@example.org"), ("alice", "alice@example.org"), ("carol", "carol@example.org")],
        INFO: [("admin", TARGET_ID)],
        RETENTION: [(365, 30, "alice")],
    },
}


@pytest.mark.parametrize("mode", tomo_schema.MODES)
def test_startup_schema_every_category_in_each_mode(tmp_path: Path, mode: str) -> None:
    """A Tomo with only its start-up tables (no settings tables, no marketplace) is a Tomo too."""
    document, target = pair(tmp_path, "startup")
    assert json.loads(Path(document).read_text())["absent_tables"] == [
        "marketplace_apps",
        "marketplace_repos",
        "system_settings",
        "user_settings",
    ]
    result = tomo_import.import_document(document, target, CATEGORIES, mode)
    for sql, expected in STARTUP[mode].items():
        assert rows(target, sql) == expected, sql
    assert rows(target, "PRAGMA foreign_key_check") == []
    assert result["changes"]["preferences"]["user_settings"]["note"] == "not in the backup: left as it is"


FULL = {
    "merge": {
        SETTINGS: [
            ("security.session_timeout", "3600", "system"),
            ("system.timezone", '"Europe/Berlin"', "alice"),
            ("ui.language", '"en"', "admin"),
            ("ui.theme", '"dark"', "admin"),
        ],
        INFO: [("admin", TARGET_ID)],
        RETENTION: [(365, 30, "alice")],
        REPOS: [
            ("c4924a76", "stable", "c4924a76-gitea"),
            ("c4924a76", "stable", "c4924a76-wikijs"),
            ("dd1121cc", "main", "dd1121cc-oldapp"),
            ("official", "main", "nginx"),
        ],
    },
    "skip_duplicates": {
        SETTINGS: [
            ("security.session_timeout", "3600", "system"),
            ("system.timezone", '"UTC"', None),
            ("ui.language", '"en"', "admin"),
            ("ui.theme", '"light"', "bob"),
        ],
        INFO: [("bob", TARGET_ID)],
        RETENTION: [(180, 90, "bob")],
        REPOS: [
            ("c4924a76", "stable", "c4924a76-gitea"),
            ("c4924a76", "stable", "c4924a76-wikijs"),
            ("dd1121cc", "main", "dd1121cc-oldapp"),
            ("official", "develop", "nginx"),
        ],
    },
    "replace": {
        SETTINGS: [
            ("security.session_timeout", "3600", "system"),
            ("system.timezone", '"Europe/Berlin"', "alice"),
            ("ui.theme", '"dark"', "admin"),
        ],
        INFO: [("admin", TARGET_ID)],
        RETENTION: [(365, 30, "alice")],
        REPOS: [
            ("c4924a76", "stable", "c4924a76-gitea"),
            ("c4924a76", "stable", "c4924a76-wikijs"),
            ("official", "main", "nginx"),
        ],
    },
}


@pytest.mark.parametrize("mode", tomo_schema.MODES)
def test_full_schema_settings_and_repositories_in_each_mode(tmp_path: Path, mode: str) -> None:
    """Users named outside foreign keys follow their names; the install's identity stays; repositories go whole."""
    document, target = pair(tmp_path, "full")
    triggers = rows(target, AUDIT_TRIGGERS)
    result = tomo_import.import_document(document, target, ["settings", "repositories"], mode)
    for sql, expected in FULL[mode].items():
        assert rows(target, sql) == expected, sql
    assert rows(target, "PRAGMA foreign_key_check") == []
    assert rows(target, AUDIT_TRIGGERS) == triggers  # Tomo's own triggers, as they were
    # Removing a repository takes its apps and their ratings, as Tomo's own remove_repo does.
    assert result["cascaded"] == ({"app_ratings": 1} if mode == "replace" else {})
    assert rows(target, "SELECT count(*) FROM app_ratings") == [(0 if mode == "replace" else 1,)]


def test_replacing_preferences_is_audited_as_a_restore(tmp_path: Path) -> None:
    """Tomo's DELETE audit triggers fail on a NOT NULL column: the import audits its changes itself."""
    document, target = pair(tmp_path, "full")
    seen = int(rows(target, "SELECT max(id) FROM settings_audit")[0][0])
    result = tomo_import.import_document(document, target, ["users", "settings", "preferences"], "replace")
    assert result["changes"]["preferences"]["user_settings"]["removed"] == 1  # bob's, with bob
    audit = rows(
        target,
        f"""SELECT a.table_name, a.change_type, a.setting_key, coalesce(u.username, a.user_id), a.new_value,
                   a.change_reason, a.client_ip, a.user_agent, length(a.checksum)
            FROM settings_audit a LEFT JOIN users u ON u.id = a.user_id WHERE a.id > {seen} ORDER BY a.id""",  # noqa: S608
    )
    restored = ("Restored by selfhost.dr (replace)", None, "selfhost.dr", 64)
    assert [r[:5] for r in audit] == [
        ("system_settings", "CREATE", "security.session_timeout", None, "3600"),
        ("system_settings", "UPDATE", "system.timezone", None, '"Europe/Berlin"'),
        ("system_settings", "UPDATE", "ui.theme", None, '"dark"'),
        ("user_settings", "UPDATE", "ui.theme", "admin", '"dark"'),
        ("user_settings", "CREATE", "ui.language", "alice", '"fr"'),
        ("user_settings", "UPDATE", "ui.theme", "alice", '"light"'),
        ("user_settings", "CREATE", "ui.theme", "carol", '"dark"'),
        ("user_settings", "DELETE", "ui.theme", "ca708a28-97e7-4223-99d9-325e5c50830e", "null"),  # bob, gone
        ("system_settings", "DELETE", "ui.language", None, "null"),
    ]
    assert {r[5:] for r in audit} == {restored}
    # Tomo's own triggers are back and audit what Tomo does next.
    with sqlite3.connect(target) as conn:
        conn.execute("UPDATE system_settings SET setting_value = '\"UTC\"' WHERE setting_key = 'system.timezone'")
    assert rows(target, "SELECT user_agent FROM settings_audit ORDER BY id DESC LIMIT 1") == [("database_trigger",)]


def test_a_user_named_nowhere_here_is_not_pointed_at(tmp_path: Path) -> None:
    document, target = pair(tmp_path, "full")
    doc = json.loads(Path(document).read_text())
    doc["data"]["settings"]["system_info"][0]["setup_by_username"] = "carol"  # not a user of the target
    doc["data"]["settings"]["system_info"][0]["installation_id"] = "someone-else"
    path = tmp_path / "tomo-backup-2026-11-22T03-51-00.json"
    path.write_text(json.dumps(doc))
    result = tomo_import.import_document(str(path), target, ["settings"], "merge")
    assert rows(target, INFO) == [("bob", TARGET_ID)]  # the target's own, not a dangling id
    assert "user(s) not in this Tomo" in result["changes"]["settings"]["system_info"]["note"]


def test_users_removed_by_replace_are_named_nowhere_any_more(tmp_path: Path) -> None:
    document, target = pair(tmp_path, "startup")
    tomo_import.import_document(document, target, ["users"], "replace")  # bob goes; he set this Tomo up
    assert rows(target, INFO) == [(None, TARGET_ID)]
    assert rows(target, "SELECT updated_by_user_id FROM retention_settings") == [(None,)]


def test_a_failed_import_leaves_tomos_triggers_as_they_were(tmp_path: Path) -> None:
    document, target = pair(tmp_path, "full")
    doc = json.loads(Path(document).read_text())
    doc["data"]["settings"]["system_settings"][0]["category"] = "gadgets"  # Tomo's CHECK refuses it
    path = tmp_path / "tomo-backup-2026-11-22T03-51-00.json"
    path.write_text(json.dumps(doc))
    before = rows(target, AUDIT_TRIGGERS), rows(target, "SELECT count(*) FROM settings_audit")
    with pytest.raises(TomoError, match=r"CHECK constraint failed: .*nothing was changed$"):
        tomo_import.import_document(str(path), target, CATEGORIES, "replace")
    assert (rows(target, AUDIT_TRIGGERS), rows(target, "SELECT count(*) FROM settings_audit")) == before


def test_the_version_is_the_callers_or_the_packages_never_component_versions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = str(tmp_path / "source.db")
    tomo_fixture.create(source, "source")
    assert rows(source, "SELECT DISTINCT version FROM component_versions") == [("1.0.0",)]  # Tomo's placeholders
    assert tomo_export.export(source, str(tmp_path))["application_version"] == "1.2.1"  # the package's
    assert tomo_export.export(source, str(tmp_path), application_version="1.2.0")["application_version"] == "1.2.0"
    monkeypatch.setattr(tomo_schema, "DPKG_STATUS", str(tmp_path / "none"))
    assert tomo_export.export(source, str(tmp_path))["application_version"] is None
    status = tmp_path / "status"
    status.write_text(
        "Package: tomo-cli\nStatus: install ok installed\nVersion: 9.9\n\n"
        "Package: tomo\nStatus: deinstall ok config-files\nVersion: 1.1.0-1\n"
    )
    assert tomo_schema.installed_version(str(status)) is None  # removed: not installed
    status.write_text("Package: tomo\nStatus: install ok installed\nArchitecture: amd64\nVersion: 1:1.3.0-2\n")
    assert tomo_schema.installed_version(str(status)) == "1.3.0"


def test_what_tomos_triggers_maintain_never_makes_a_second_import_change_anything(tmp_path: Path) -> None:
    """system_info.updated_at is set by Tomo's trigger on every update: it is never compared, or it always differs."""
    document, target = pair(tmp_path, "full")
    doc = json.loads(Path(document).read_text())
    doc["data"]["settings"]["system_info"][0]["updated_at"] = "2001-01-01 00:00:00"
    path = tmp_path / "tomo-backup-2026-11-22T03-51-00.json"
    path.write_text(json.dumps(doc))
    assert tomo_import.import_document(str(path), target, CATEGORIES, "merge")["changed"] is True
    before = Path(target).read_bytes()
    assert tomo_import.import_document(str(path), target, CATEGORIES, "merge")["changed"] is False
    assert Path(target).read_bytes() == before
