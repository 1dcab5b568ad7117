"""Tomo's own encrypted backup (.enc) imported as the guide's document: a migration path, read as hostile input.

The .enc files are made by tests/fixtures/tomo/tomo_enc_file.py the way Tomo's
BackupService makes them (cryptography's Fernet, PBKDF2-SHA256, 480000 rounds).
"""

from __future__ import annotations

import hashlib
import io
import json
import sqlite3
import sys
from pathlib import Path

import pytest

from ansible_collections.selfhost.dr.plugins.module_utils import cli
from ansible_collections.selfhost.dr.plugins.module_utils.apps import tomo_enc, tomo_import, tomo_schema
from ansible_collections.selfhost.dr.plugins.module_utils.apps.tomo_schema import TomoError

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "fixtures" / "tomo"))
import tomo_enc_file
import tomo_fixture

PASSWORD = "correct horse battery staple"


def rows(path: str, sql: str) -> list[tuple[object, ...]]:
    with sqlite3.connect(path) as conn:
        return conn.execute(sql).fetchall()


def sha(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture
def target(tmp_path: Path) -> str:
    path = str(tmp_path / "target.db")
    tomo_fixture.create(path, "target")
    return path


@pytest.fixture(scope="module")
def enc(tmp_path_factory: pytest.TempPathFactory) -> str:
    tmp = tmp_path_factory.mktemp("enc")
    source = str(tmp / "source.db")
    tomo_fixture.create(source, "source")
    return tomo_enc_file.write(str(tmp / "tomo-backup.enc"), source, PASSWORD, {"ui.theme": '"dark"', "x.y": 3})


def test_tomos_encrypted_backup_is_merged_user_by_name_server_by_key(target: str, enc: str) -> None:
    result = tomo_import.import_document(enc, target, mode="merge", application_version="1.2.1", password=PASSWORD)
    assert result["source_format"] == "tomo-enc"
    assert result["created_at"] == "2026-11-01T02:00:00+00:00"
    # Users: matched ones updated (their password hashes stay: the .enc has none); carol cannot be added without one.
    assert rows(target, "SELECT username, email, substr(password_hash, 1, 15) FROM users ORDER BY 1") == [
        ("admin", "admin@example.org", "$2b$12$tgtAdmin"),
        ("alice", "alice@example.org", "$2b$12$tgtAlice"),
        ("bob", "bob@example.net", "$2b$12$tgtBobHa"),
    ]
    users = result["changes"]["users"]["users"]
    assert users["keys"]["incomplete"] == ["carol"]
    assert users["note"] == "row(s) new here that the backup gives no password_hash were not added"
    # Servers: rows merged by host, port and user; their credentials are not in the .enc and stay as they are.
    servers = "SELECT s.name, c.encrypted_data FROM servers s LEFT JOIN server_credentials c ON c.server_id = s.id"
    assert rows(target, servers + " ORDER BY 1") == [
        ("db1", "gAAAAABtgt-database-key"),
        ("media", None),
        ("old-nas", "gAAAAABtgt-nas-password"),
        ("web1", None),
    ]
    assert result["changes"]["servers"]["server_credentials"]["note"] == "not in the backup: left as it is"
    # Settings: the matching system setting is updated; one Tomo does not know cannot be made from a bare value.
    assert rows(target, "SELECT setting_value FROM system_settings WHERE setting_key = 'ui.theme'") == [('"dark"',)]
    assert result["changes"]["settings"]["system_settings"]["keys"]["incomplete"] == ["x.y"]
    assert result["changes"]["settings"]["system_info"]["note"] == "not in the backup: left as it is"
    assert result["changes"]["preferences"]["user_settings"]["note"] == (
        "the backup has no such category: left as it is"
    )
    assert rows(target, "PRAGMA foreign_key_check") == []


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, r"cannot be decrypted: the password is wrong, or the file was changed$"),
        (b"x" * 15, r"is not one of Tomo's encrypted backups: it is too short$"),
        (b"s" * 16 + b"not a token at all", r"is not one of Tomo's encrypted backups: its token is malformed$"),
        (b"s" * 16 + b"gAAAAA" + b"A" * 100, r"is not one of Tomo's encrypted backups: its token is malformed$"),
    ],
    ids=["wrong-password", "short", "garbage", "bad-token"],
)
def test_an_unreadable_enc_gets_one_sentence_and_changes_nothing(
    tmp_path: Path, target: str, enc: str, content: bytes | None, message: str
) -> None:
    path = tmp_path / "bad.enc"
    path.write_bytes(Path(enc).read_bytes() if content is None else content)
    password = "wrong" if content is None else PASSWORD
    before = sha(target)
    with pytest.raises(TomoError, match=message) as err:
        tomo_import.import_document(str(path), target, application_version="1.2.1", password=password)
    assert PASSWORD not in str(err.value) and "wrong" not in str(err.value).split(":")[0]
    assert sha(target) == before


@pytest.mark.parametrize(
    ("plain", "message"),
    [
        (b'{"version": "1.0", "users": [', r"is not a complete JSON document: it is truncated or corrupt at line 1"),
        (b"[1, 2]", r"is not a valid Tomo backup: it holds a JSON list, not an object$"),
        (b'{"version": "1.0", "timestamp": "t", "users": [], "servers": []}', r"it has no settings$"),
        (
            b'{"version": "1.0", "timestamp": "t", "users": [{"username": "a", "role": [1]}], "servers": [],'
            b' "settings": {}}',
            r"data.users\[0\].role must be text, a number or null, not a list$",
        ),
        (b'{"version": "1.0", "timestamp": "t", "users": [], "servers": [], "settings": []}', r"settings must be an"),
        (b'{"version": "1.0", "version": "1.0"}', r"it has the key 'version' twice in one object$"),
    ],
    ids=["truncated", "list", "no-settings", "bad-row", "bad-settings", "twice"],
)
def test_malformed_content_gets_one_sentence(tmp_path: Path, target: str, plain: bytes, message: str) -> None:
    path = tmp_path / "odd.enc"
    path.write_bytes(tomo_enc_file.encrypt(plain, PASSWORD))
    before = sha(target)
    with pytest.raises(TomoError, match=message):
        tomo_import.import_document(str(path), target, application_version="1.2.1", password=PASSWORD)
    assert sha(target) == before


def test_a_newer_enc_format_is_refused(tmp_path: Path, target: str) -> None:
    path = tmp_path / "new.enc"
    plain = b'{"version": "2.0", "timestamp": "t", "users": [], "servers": [], "settings": {}}'
    path.write_bytes(tomo_enc_file.encrypt(plain, PASSWORD))
    with pytest.raises(tomo_schema.NewerError, match=r"its format 2.0 is newer than the 1.0 this selfhost.dr reads"):
        tomo_import.import_document(str(path), target, application_version="1.2.1", password=PASSWORD)


def test_no_password_and_too_large_are_refused_before_any_decryption(
    tmp_path: Path, target: str, enc: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(TomoError, match=r"is one of Tomo's encrypted backups: its password is needed to read it$"):
        tomo_import.import_document(enc, target, application_version="1.2.1")
    monkeypatch.setattr(tomo_enc, "MAX_ENC_SIZE", 1000)
    with pytest.raises(
        TomoError, match=r"is not a backup document: it is \d+ bytes, more than the 1000 bytes a document may be$"
    ):
        tomo_import.import_document(enc, target, application_version="1.2.1", password=PASSWORD)


def test_without_cryptography_the_error_says_what_to_install(
    target: str, enc: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "cryptography.fernet", None)  # import fails as if it were not installed
    with pytest.raises(TomoError) as err:
        tomo_import.import_document(enc, target, application_version="1.2.1", password=PASSWORD)
    assert str(err.value) == (
        f"reading {enc}, one of Tomo's encrypted backups, needs the Python package cryptography on this host "
        "(Debian: apt install python3-cryptography)"
    )


def test_the_host_command_reads_the_password_from_a_file_stdin_or_the_environment(
    tmp_path: Path, target: str, enc: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "config.toml"
    config.write_text(f'app = "tomo"\n[tomo]\ndatabase = "{target}"\nversion = "1.2.1"\n')
    secret = tmp_path / "password"
    secret.write_text(PASSWORD + "\n")
    base = ["tomo", "restore", "--input", enc, "--config", str(config), "--json", "--check"]
    assert cli.main([*base, "--password-file", str(secret)]) == 0
    assert json.loads(capsys.readouterr().out)["source_format"] == "tomo-enc"
    monkeypatch.setattr(sys, "stdin", io.StringIO(PASSWORD + "\n"))
    assert cli.main([*base, "--password-file", "-"]) == 0
    capsys.readouterr()
    monkeypatch.setenv(cli.TOMO_PASSWORD_ENV, PASSWORD)
    assert cli.main(base) == 0
    capsys.readouterr()
    monkeypatch.delenv(cli.TOMO_PASSWORD_ENV)
    assert cli.main(base) == 1
    assert "its password is needed" in json.loads(capsys.readouterr().out)["error"]
