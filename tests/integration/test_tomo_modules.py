"""tomo_backup and tomo_backup_info as ansible runs them, against the stand-in Tomo database."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import sys
from pathlib import Path

from .ansible_run import run_module

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "fixtures" / "tomo"))
import tomo_enc_file
import tomo_fixture


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_export_list_check_diff_import(tmp_path: Path) -> None:
    source, target, backups = tmp_path / "source.db", tmp_path / "target.db", tmp_path / "backups"
    tomo_fixture.create(str(source), "source")
    tomo_fixture.create(str(target), "target")
    backups.mkdir()

    export = {"state": "exported", "database": str(source), "dest": str(backups), "application_version": "1.2.0"}
    planned = run_module("tomo_backup", export, check=True)
    assert planned["changed"] is True and not planned.get("failed"), planned
    assert planned["counts"]["servers"] == 3
    assert list(backups.iterdir()) == []

    made = run_module("tomo_backup", export)
    assert made["changed"] is True and not made.get("failed"), made
    doc = Path(made["path"])
    assert json.loads(doc.read_text())["data"]["users"][0]["username"] == "admin"
    assert "$2b$12$" not in json.dumps(made)  # the result never carries the data

    listed = run_module("tomo_backup_info", {"path": str(backups)})
    assert listed["count"] == 1
    assert listed["latest"]["counts"] == made["counts"]
    assert listed["latest"]["application_version"] == "1.2.0"

    args = {"state": "imported", "database": str(target), "src": str(doc), "categories": ["servers"], "mode": "replace"}
    args["application_version"] = "1.2.1"  # no tomo package on this host to read it from
    before = sha(target)
    checked = run_module("tomo_backup", args, check=True, diff=True)
    assert checked["changed"] is True and not checked.get("failed"), checked
    assert sha(target) == before
    assert checked["diff"]["prepared"].splitlines() == [
        "+ servers/servers: 10.0.0.11, 22, root",
        "+ servers/servers: 10.0.0.40, 2222, media",
        "~ servers/servers: 10.0.0.12, 22, admin",
        "- servers/servers: 10.0.0.30, 22, root",
        "+ servers/server_credentials: 10.0.0.11, 22, root",
        "+ servers/server_credentials: 10.0.0.40, 2222, media",
        "~ servers/server_credentials: 10.0.0.12, 22, admin",
        "- servers/server_credentials: 10.0.0.30, 22, root",
        "+ servers/agents: 10.0.0.11, 22, root",
        "- servers/agents: 10.0.0.30, 22, root",
    ]

    done = run_module("tomo_backup", args)
    assert done["changed"] is True and done["changes"] == checked["changes"], done
    assert (done["mode"], done["src"], done["categories"]) == ("replace", str(doc), ["servers"])
    with sqlite3.connect(target) as conn:
        assert [r[0] for r in conn.execute("SELECT name FROM servers ORDER BY host")] == ["web1", "db1", "media"]
    again = run_module("tomo_backup", args)
    assert again["changed"] is False, again


def test_failures_are_one_sentence(tmp_path: Path) -> None:
    target = tmp_path / "target.db"
    tomo_fixture.create(str(target), "target")
    truncated = tmp_path / "tomo-backup-2026-11-22T03-51-00.json"
    truncated.write_text('{"version": "1.0", "data": {"users": [{"username": "a"')
    result = run_module("tomo_backup", {"state": "imported", "database": str(target), "src": str(truncated)})
    assert result["failed"] is True
    assert (
        result["msg"] == f"{truncated} is not a complete JSON document: it is truncated or corrupt at line 1 column 55"
    )

    missing = run_module(
        "tomo_backup", {"state": "exported", "database": str(tmp_path / "no.db"), "dest": str(tmp_path)}
    )
    assert missing["msg"] == f"Tomo's database {tmp_path / 'no.db'} does not exist"


def test_import_of_tomos_encrypted_backup_keeps_the_password_out_of_the_result(tmp_path: Path) -> None:
    source, target = tmp_path / "source.db", tmp_path / "target.db"
    tomo_fixture.create(str(source), "source")
    tomo_fixture.create(str(target), "target", schema="startup")
    password = "Tomo-backup-passphrase-5c1e"
    enc = tomo_enc_file.write(str(tmp_path / "tomo-backup.enc"), str(source), password)
    args = {"state": "imported", "database": str(target), "src": enc, "password": password}
    args["application_version"] = "1.2.1"
    done = run_module("tomo_backup", args, diff=True)
    assert done["changed"] is True and done["source_format"] == "tomo-enc", done
    assert password not in json.dumps(done)
    assert "= users/users: carol (new here, and the backup lacks a column it needs)" in done["diff"]["prepared"]
    wrong = run_module("tomo_backup", {**args, "password": "not-it"})
    assert wrong["msg"] == f"{enc} cannot be decrypted: the password is wrong, or the file was changed"
    assert "not-it" not in json.dumps(wrong)
