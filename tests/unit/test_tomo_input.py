"""Tomo's JSON document as input: all or nothing, bad documents, versions, tables one side lacks, locks, listing.

The databases are built by tests/fixtures/tomo/tomo_fixture.py on Tomo's real
schema (a stand-in: Tomo itself is not installable here).
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from ansible_collections.selfhost.dr.plugins.module_utils.apps import (
    tomo_document,
    tomo_export,
    tomo_import,
    tomo_schema,
)
from ansible_collections.selfhost.dr.plugins.module_utils.apps.tomo_schema import TomoError

from .test_tomo import CATEGORIES, db, export_source, installed, rows, sha, tomo_fixture


@pytest.fixture(autouse=True)
def tomo_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The target's Tomo is the package 1.2.1 (component_versions holds Tomo's 1.0.0 placeholders)."""
    installed(tmp_path, monkeypatch, "1.2.1")


@pytest.fixture
def exported(tmp_path: Path) -> str:
    return export_source(tmp_path)


# --- all or nothing, and bad input ---------------------------------------------------------------


def _write(tmp_path: Path, doc: object, name: str = "tomo-backup-2026-11-22T03-51-00.json") -> str:
    path = tmp_path / name
    path.write_text(json.dumps(doc) if not isinstance(doc, str) else doc)
    return str(path)


def test_a_failing_row_rolls_back_everything(tmp_path: Path, exported: str) -> None:
    target = db(tmp_path, "target")
    doc = json.loads(Path(exported).read_text())
    doc["data"]["users"][-1]["role"] = "superuser"  # Tomo's CHECK constraint refuses it
    bad = _write(tmp_path, doc)
    before = sha(target)
    with pytest.raises(TomoError) as err:
        tomo_import.import_document(bad, target, CATEGORIES, "replace")
    assert str(err.value) == (
        "could not add users row carol: CHECK constraint failed: role IN ('admin', 'user', 'readonly'); "
        "nothing was changed"
    )
    assert sha(target) == before


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", r"is not a complete JSON document: it is empty$"),
        (
            '{"version": "1.0", "data": {"servers": [{"host": ',
            r"is not a complete JSON document: it is truncated or corrupt at line 1 column \d+$",
        ),
        (b"\x89PNG\r\n\x1a\n\xff\xfe", r"is not a backup document: it is not UTF-8 text$"),
        ("[1, 2]", r"is not a valid Tomo backup: it holds a JSON list, not an object$"),
        ('{"version": "1.0"}', r"is not a valid Tomo backup: it has no data$"),
        ('{"data": {}}', r"is not a valid Tomo backup: it has no version$"),
        (
            '{"version": 1, "data": {}}',
            r"is not a valid Tomo backup: the document's version must be text like \"1.0\", not 1$",
        ),
        ('{"version": "1.0", "data": []}', r"is not a valid Tomo backup: data must be an object, not a list$"),
        ('{"version": "1.0", "data": {"servers": {}}}', r"data.servers must be a list of rows, not an object$"),
        ('{"version": "1.0", "data": {"gadgets": []}}', r"data has an unknown category 'gadgets'$"),
        (
            '{"version": "1.0", "data": {"servers": [{"host": "a", "port": [22], "username": "u"}]}}',
            r"data.servers\[0\].port must be text or a number: it is this row's key$",
        ),
        (
            '{"version": "1.0", "data": {"users": [{"username": "a", "email": {"x": 1}}]}}',
            r"data.users\[0\].email must be text, a number or null, not an object$",
        ),
        (
            '{"version": "1.0", "data": {"preferences": [{"setting_key": "ui.theme", "setting_value": "1"}]}}',
            r"data.preferences\[0\].username must name the username it belongs to$",
        ),
    ],
)
def test_bad_documents_get_one_sentence_and_change_nothing(tmp_path: Path, content: str | bytes, message: str) -> None:
    target = db(tmp_path, "target")
    path = tmp_path / "tomo-backup-2026-11-22T03-51-00.json"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    before = sha(target)
    with pytest.raises(TomoError, match=message) as err:
        tomo_import.import_document(str(path), target, CATEGORIES, "merge")
    assert str(err.value).startswith(str(path))
    assert "\n" not in str(err.value)
    assert sha(target) == before


def test_duplicate_natural_keys_are_refused_before_the_database_is_opened(tmp_path: Path, exported: str) -> None:
    target = db(tmp_path, "target")
    doc = json.loads(Path(exported).read_text())
    doc["data"]["users"].append(dict(doc["data"]["users"][0], id=99))
    path = _write(tmp_path, doc)
    before = sha(target)
    with pytest.raises(TomoError) as err:
        tomo_import.import_document(path, target, ["users"], "merge")
    assert str(err.value) == f"{path} is not a valid Tomo backup: data.users holds two rows for 'admin'"
    assert sha(target) == before
    assert tomo_document.describe(path)["error"] == str(err.value)  # the listing says the same


def test_a_newer_document_format_is_refused(tmp_path: Path, exported: str) -> None:
    target = db(tmp_path, "target")
    doc = json.loads(Path(exported).read_text())
    doc["version"] = "1.1"
    path = _write(tmp_path, doc)
    with pytest.raises(tomo_schema.NewerError) as err:
        tomo_import.import_document(path, target, CATEGORIES, "merge")
    assert str(err.value) == (
        f"{path}: the document's format 1.1 is newer than this selfhost.dr understands (1.0): upgrade selfhost.dr"
    )


def test_a_backup_from_a_newer_tomo_is_refused(tmp_path: Path) -> None:
    source = db(tmp_path, "source")
    path = tomo_export.export(source, str(tmp_path), application_version="1.3.0")["path"]
    target = db(tmp_path, "target")  # Tomo 1.2.1
    before = sha(target)
    with pytest.raises(tomo_schema.NewerError) as err:
        tomo_import.import_document(path, target, CATEGORIES, "merge")
    assert str(err.value) == (
        f"{path} comes from Tomo 1.3.0, newer than this Tomo (1.2.1): upgrade Tomo first, "
        "a backup is never imported into an older version"
    )
    assert sha(target) == before


def test_an_older_tomos_backup_is_migrated_forward(tmp_path: Path, exported: str) -> None:
    """A 1.1 Tomo had no email column and a column 1.2 dropped; the target's defaults fill in."""
    doc = json.loads(Path(exported).read_text())
    doc["application_version"] = "1.1.4"
    for user in doc["data"]["users"]:
        del user["email"]
        user["legacy_flag"] = 1
    target = db(tmp_path, "target")
    result = tomo_import.import_document(_write(tmp_path, doc), target, ["users"], "replace")
    assert rows(target, "SELECT username, email FROM users ORDER BY 1") == [
        ("admin", "root@example.net"),  # matched: the column the backup lacks is left as it was
        ("alice", "alice@old.example"),
        ("carol", ""),  # added: Tomo's default
    ]
    assert result["changes"]["users"]["users"]["note"] == "column(s) this Tomo does not have were left out: legacy_flag"


def test_a_pre_1_0_document_is_migrated(tmp_path: Path, exported: str) -> None:
    """Tomo's first exports kept the categories at the top level and said timestamp."""
    doc = json.loads(Path(exported).read_text())
    old = {"version": "0.9", "timestamp": "2025-01-02T03:04:05Z", **doc["data"]}
    target = db(tmp_path, "target")
    result = tomo_import.import_document(_write(tmp_path, old), target, ["users"], "merge")
    assert result["migrated_from"] == "0.9"
    assert result["created_at"] == "2025-01-02T03:04:05Z"
    assert rows(target, "SELECT username FROM users ORDER BY 1") == [("admin",), ("alice",), ("bob",), ("carol",)]


def test_tables_this_tomo_lacks_are_reported_not_fatal(tmp_path: Path, exported: str) -> None:
    target = db(tmp_path, "target")
    with sqlite3.connect(target) as conn:
        conn.execute("DROP TABLE marketplace_repos")
    result = tomo_import.import_document(exported, target, ["repositories", "users"], "merge")
    repos = result["changes"]["repositories"]["marketplace_repos"]
    assert repos["note"] == "this Tomo has no table marketplace_repos: its 2 row(s) were not imported"
    assert repos["skipped"] == 2
    assert result["changes"]["users"]["users"]["added"] == 1


def test_tables_the_backup_lacks_are_left_alone_even_by_replace(tmp_path: Path) -> None:
    source = db(tmp_path, "source")
    with sqlite3.connect(source) as conn:
        conn.execute("DROP TABLE agent_registration_codes")
        conn.execute("DROP TABLE agents")
    path = tomo_export.export(source, str(tmp_path))["path"]
    target = db(tmp_path, "target")
    result = tomo_import.import_document(path, target, ["servers"], "replace")
    assert result["changes"]["servers"]["agents"]["note"] == "not in the backup: left as it is"
    # old-nas (and with it its agent) went because the servers were replaced; db1 kept no agent before either.
    assert rows(target, "SELECT count(*) FROM agents") == [(0,)]


def test_a_locked_database_times_out_with_a_sentence(tmp_path: Path, exported: str) -> None:
    target = db(tmp_path, "target")
    holder = sqlite3.connect(target, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(TomoError) as err:
            tomo_import.import_document(exported, target, ["users"], "merge", lock_timeout=0.3)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert str(err.value) == (
        f"Tomo's database {target} stayed locked by another process for longer than 0.3 s; nothing was changed"
    )


def test_unknown_version_of_the_target_is_refused_unless_given(
    tmp_path: Path, exported: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = db(tmp_path, "target")  # component_versions says 1.0.0, a placeholder: never read
    installed(tmp_path, monkeypatch, None)
    with pytest.raises(TomoError, match=r"set application_version to the installed Tomo's version"):
        tomo_import.import_document(exported, target, ["users"], "merge")
    result = tomo_import.import_document(exported, target, ["users"], "merge", application_version="1.2.0")
    assert result["target_application_version"] == "1.2.0"


def test_version_numbers_compare_as_numbers() -> None:
    assert tomo_schema.parse_app_version("1.10.0") > tomo_schema.parse_app_version("1.9.9")
    assert tomo_schema.parse_app_version("v1.2") == tomo_schema.parse_app_version("1.2.0")
    assert tomo_schema.parse_app_version("1.2.3-beta1") == (1, 2, 3)
    with pytest.raises(TomoError, match="is not a version number"):
        tomo_schema.parse_app_version("latest")


# --- listing -------------------------------------------------------------------------------------


def test_catalog_lists_documents_newest_first_and_explains_bad_ones(tmp_path: Path, exported: str) -> None:
    backups = Path(exported).parent
    (backups / "tomo-backup-2030-01-01T00-00-00.json").write_text('{"version": "1.0", "data": ')
    (backups / "notes.json").write_text("{}")
    listed = tomo_document.catalog(str(backups))
    assert [d["name"] for d in listed] == ["tomo-backup-2030-01-01T00-00-00.json", Path(exported).name]
    assert listed[0]["valid"] is False
    assert "truncated or corrupt" in listed[0]["error"]
    assert listed[1]["valid"] is True
    assert listed[1]["application_version"] == "1.2.0"
    assert listed[1]["counts"]["servers"] == 3


def test_the_database_is_found_where_tomo_keeps_it(tmp_path: Path) -> None:
    packaged, older = tmp_path / "var-lib-tomo" / "tomo.db", tmp_path / "home" / ".tomo" / "tomo.db"
    older.parent.mkdir(parents=True)
    tomo_fixture.create(str(older))
    assert tomo_schema.locate_database(None, [str(packaged), str(older)]) == str(older)
    packaged.parent.mkdir()
    tomo_fixture.create(str(packaged))
    assert tomo_schema.locate_database(None, [str(packaged), str(older)]) == str(packaged)
    with pytest.raises(TomoError, match=r"^no Tomo database was found at /a/tomo.db or /b/tomo.db: set database"):
        tomo_schema.locate_database(None, ["/a/tomo.db", "/b/tomo.db"])
    with pytest.raises(TomoError, match=r"^Tomo's database /a/tomo.db does not exist$"):
        tomo_schema.locate_database("/a/tomo.db")
