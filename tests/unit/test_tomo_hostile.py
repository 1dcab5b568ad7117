"""Tomo backup documents as hostile input: every malformed one fails in one sentence, never a traceback.

Each document here is refused by the core with one TomoError sentence before
any database is opened, the modules turn it into one ``fail_json``, and the
listing reports the bad document and goes on with the others.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import sqlite3
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ansible_collections.selfhost.dr.plugins.module_utils.apps import (
    tomo_document,
    tomo_export,
    tomo_import,
    tomo_schema,
)
from ansible_collections.selfhost.dr.plugins.module_utils.apps.tomo_schema import TomoError
from ansible_collections.selfhost.dr.plugins.modules import tomo_backup, tomo_backup_info

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "fixtures" / "tomo"))
import tomo_fixture

CATEGORIES = list(tomo_schema.CATEGORIES)
NAME = "tomo-backup-2026-11-22T03-51-00.json"
DEEP = 100_000


def db(tmp_path: Path, variant: str = "target") -> str:
    path = str(tmp_path / f"{variant}.db")
    tomo_fixture.create(path, variant)
    return path


def sha(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def doc(data: str) -> bytes:
    return ('{"version": "1.0", "data": ' + data + "}").encode()


def users(row: str) -> bytes:
    return doc('{"users": [' + row + "]}")


SERVER_KEY = '{"host": "10.0.0.1", "port": 22, "username": "root"}'


def app(server: str, extra: str = "") -> bytes:
    return doc('{"applications": [{"server": ' + server + ', "app_id": "nginx"' + extra + "}]}")


def assert_one_sentence(message: str, path: str) -> None:
    assert message.startswith(path), message
    assert "\n" not in message and "Traceback" not in message, message
    assert len(message) < len(path) + 200, message


@pytest.fixture
def exported(tmp_path: Path) -> str:
    out = tmp_path / "backups"
    out.mkdir()
    return str(tomo_export.export(db(tmp_path, "source"), str(out))["path"])


@pytest.fixture
def no_database(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to open a SQLite database fails the test: a bad document must be refused before."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"the database was opened for a bad document: {args}")

    monkeypatch.setattr(sqlite3, "connect", refuse)


@pytest.fixture
def bytes_read(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """The sizes of the reads the core makes through os.read."""
    sizes: list[int] = []
    real = os.read

    def counting(fd: int, n: int) -> bytes:
        chunk = real(fd, n)
        sizes.append(len(chunk))
        return chunk

    monkeypatch.setattr(tomo_document.os, "read", counting)
    yield sizes


# --- malformed content: one sentence each, the database never opened ---------------------------

HOSTILE: list[tuple[str, bytes, str]] = [
    # The document is not an object.
    ("doc-is-a-list", b"[1, 2]", "is not a valid Tomo backup: it holds a JSON list, not an object"),
    ("doc-is-a-string", b'"tomo"', "is not a valid Tomo backup: it holds a JSON string, not an object"),
    ("doc-is-null", b"null", "is not a valid Tomo backup: it holds a JSON null, not an object"),
    ("doc-is-a-number", b"42", "is not a valid Tomo backup: it holds a JSON number, not an object"),
    # Wrong types where a structure is expected.
    ("data-is-a-string", doc('"servers"'), "is not a valid Tomo backup: data must be an object, not a string"),
    (
        "category-is-an-object",
        doc('{"servers": {"host": "10.0.0.1"}}'),
        "is not a valid Tomo backup: data.servers must be a list of rows, not an object",
    ),
    (
        "settings-is-a-list",
        doc('{"settings": []}'),
        "is not a valid Tomo backup: data.settings must be an object of tables, not a list",
    ),
    (
        "settings-table-is-an-object",
        doc('{"settings": {"system_settings": {"setting_key": "a"}}}'),
        "is not a valid Tomo backup: data.settings.system_settings must be a list of rows, not an object",
    ),
    (
        "row-is-a-string",
        doc('{"servers": ["web1"]}'),
        "is not a valid Tomo backup: data.servers[0] must be an object, not a string",
    ),
    ("row-is-a-list", users('["admin"]'), "is not a valid Tomo backup: data.users[0] must be an object, not a list"),
    (
        "row-is-null",
        doc('{"preferences": [null]}'),
        "is not a valid Tomo backup: data.preferences[0] must be an object, not null",
    ),
    # Objects and lists where a scalar is expected.
    (
        "value-is-an-object",
        users('{"username": "a", "email": {"x": 1}}'),
        "is not a valid Tomo backup: data.users[0].email must be text, a number or null, not an object",
    ),
    (
        "value-is-a-list",
        app(SERVER_KEY, ', "config": ["a"]'),
        "is not a valid Tomo backup: data.applications[0].config must be text, a number or null, not a list",
    ),
    (
        "key-is-an-object",
        doc('{"servers": [{"host": {}, "port": 22, "username": "root"}]}'),
        "is not a valid Tomo backup: data.servers[0].host must be text or a number: it is this row's key",
    ),
    (
        "key-is-a-boolean",
        users('{"username": true}'),
        "is not a valid Tomo backup: data.users[0].username must be text or a number: it is this row's key",
    ),
    (
        "reference-holds-an-object",  # was: TypeError unhashable type 'dict'
        app('{"host": {"a": 1}, "port": 22, "username": "root"}'),
        "is not a valid Tomo backup: data.applications[0].server.host must be text or a number: "
        "it is the key of the servers row",
    ),
    (
        "reference-holds-a-list",  # was: TypeError unhashable type 'list'
        app('{"host": "10.0.0.1", "port": [22], "username": "root"}'),
        "is not a valid Tomo backup: data.applications[0].server.port must be text or a number: "
        "it is the key of the servers row",
    ),
    (
        "reference-is-a-string",
        app('"10.0.0.1"'),
        "is not a valid Tomo backup: data.applications[0].server must be an object with host, port, username",
    ),
    (
        "user-reference-is-an-object",
        doc('{"preferences": [{"username": {"name": "a"}, "setting_key": "ui.theme"}]}'),
        "is not a valid Tomo backup: data.preferences[0].username must name the username it belongs to",
    ),
    (
        "nested-row-is-a-string",
        doc('{"servers": [{"host": "h", "port": 22, "username": "u", "credentials": "secret"}]}'),
        "is not a valid Tomo backup: data.servers[0].credentials must be an object or null, not a string",
    ),
    (
        "nested-value-is-an-object",
        doc('{"servers": [{"host": "h", "port": 22, "username": "u", "credentials": {"encrypted_data": {"a": 1}}}]}'),
        "is not a valid Tomo backup: data.servers[0].credentials.encrypted_data must be text, a number or null, "
        "not an object",
    ),
    (
        "bad-base64",
        users('{"username": "a", "avatar": {"base64": "not base64!"}}'),
        "is not a valid Tomo backup: data.users[0].avatar is not valid base64",
    ),
    (
        "created-at-is-a-list",
        b'{"version": "1.0", "created_at": [2026], "data": {}}',
        "is not a valid Tomo backup: created_at must be text, not a list",
    ),
    (
        "absent-tables-is-text",
        b'{"version": "1.0", "absent_tables": "agents", "data": {}}',
        "is not a valid Tomo backup: absent_tables must be a list of table names",
    ),
    (
        "old-format-with-a-string-category",
        b'{"version": "0.9", "app_configs": "nginx"}',
        "is not a valid Tomo backup: data.applications must be a list of rows, not a string",
    ),
    # Nesting deeper than the parser goes: json raises RecursionError.
    (
        "deep-open-lists",
        b"[" * DEEP,
        "is not a valid Tomo backup: its arrays and objects are nested too deeply to be read",
    ),
    (
        "deep-closed-lists",
        b"[" * DEEP + b"]" * DEEP,
        "is not a valid Tomo backup: its arrays and objects are nested too deeply to be read",
    ),
    (
        "deep-objects",
        b'{"a": ' * DEEP + b"1" + b"}" * DEEP,
        "is not a valid Tomo backup: its arrays and objects are nested too deeply to be read",
    ),
    (
        "deep-in-a-value",
        users('{"username": "a", "email": ' + "[" * DEEP + "]" * DEEP + "}"),
        "is not a valid Tomo backup: its arrays and objects are nested too deeply to be read",
    ),
    (
        "nested-below-the-parsers-limit",
        users('{"username": "a", "email": ' + "[" * 500 + "]" * 500 + "}"),
        "is not a valid Tomo backup: data.users[0].email must be text, a number or null, not a list",
    ),
    # Not UTF-8.
    (
        "invalid-utf8",
        b'{"version": "1.0", "data": {"users": [{"username": "\xff\xfe"}]}}',
        "is not a backup document: it is not UTF-8 text",
    ),
    (
        "utf8-encoded-surrogate",
        b'{"version": "1.0", "data": {"users": [{"username": "\xed\xb3\xbf"}]}}',
        "is not a backup document: it is not UTF-8 text",
    ),
    # Literals JSON does not have, numbers that cannot be stored.
    (
        "nan",
        users('{"username": "a", "id": NaN}'),
        "is not a valid Tomo backup: it holds NaN, which JSON does not allow",
    ),
    (
        "infinity",
        users('{"username": "a", "id": Infinity}'),
        "is not a valid Tomo backup: it holds Infinity, which JSON does not allow",
    ),
    (
        "minus-infinity",
        users('{"username": "a", "id": -Infinity}'),
        "is not a valid Tomo backup: it holds -Infinity, which JSON does not allow",
    ),
    (
        "float-overflow",
        users('{"username": "a", "id": 1e400}'),
        "is not a valid Tomo backup: it holds the number 1e400, too large to be stored",
    ),
    (
        "thirty-digits",
        users('{"username": "a", "id": ' + "9" * 30 + "}"),
        "is not a valid Tomo backup: it holds a number of 30 digits, more than any a document holds",
    ),
    (
        "twenty-digits",
        users('{"username": "a", "id": -' + str(10**19) + "}"),
        "is not a valid Tomo backup: it holds a number of 20 digits, more than any a document holds",
    ),
    (
        "more-digits-than-python-converts",
        users('{"username": "a", "id": ' + "9" * 5000 + "}"),
        "is not a valid Tomo backup: it holds a number of 5000 digits, more than any a document holds",
    ),
    (
        "above-64-bits",  # was: OverflowError from sqlite3
        users('{"username": "a", "id": ' + str(2**63) + "}"),
        "is not a valid Tomo backup: data.users[0].id is a number outside SQLite's 64-bit integers",
    ),
    (
        "below-64-bits",
        users('{"username": "a", "id": ' + str(-(2**63) - 1) + "}"),
        "is not a valid Tomo backup: data.users[0].id is a number outside SQLite's 64-bit integers",
    ),
    # The same key twice.
    (
        "duplicate-top-level-key",
        b'{"version": "1.0", "version": "0.9", "data": {}}',
        "is not a valid Tomo backup: it has the key 'version' twice in one object",
    ),
    (
        "duplicate-key-in-a-row",
        users('{"username": "admin", "role": "user", "role": "admin"}'),
        "is not a valid Tomo backup: it has the key 'role' twice in one object",
    ),
    (
        "duplicate-natural-key",
        doc('{"servers": [' + SERVER_KEY + ", " + SERVER_KEY + "]}"),
        "is not a valid Tomo backup: data.servers holds two rows for '10.0.0.1, 22, root'",
    ),
    # Lone surrogates (\\ud800 escapes): not text SQLite or Ansible can carry.
    (
        "surrogate-in-a-key",  # was: UnicodeEncodeError from sqlite3
        users('{"username": "\\ud800"}'),
        "is not a valid Tomo backup: data.users[0].username is not valid Unicode text: it holds a lone surrogate",
    ),
    (
        "surrogate-in-a-value",
        users('{"username": "a", "email": "x\\udfff"}'),
        "is not a valid Tomo backup: data.users[0].email is not valid Unicode text: it holds a lone surrogate",
    ),
    (
        "surrogate-in-a-column-name",
        users('{"username": "a", "\\udc80": 1}'),
        "is not a valid Tomo backup: a column name in data.users[0] is not valid Unicode text: "
        "it holds a lone surrogate",
    ),
    (
        "surrogate-in-absent-tables",
        b'{"version": "1.0", "absent_tables": ["\\ud800"], "data": {}}',
        "is not a valid Tomo backup: absent_tables[0] is not valid Unicode text: it holds a lone surrogate",
    ),
    # Huge values are cut in the sentence.
    (
        "huge-version",
        b'{"version": "' + b"x" * 1_000_000 + b'", "data": {}}',
        "is not a valid Tomo backup: the document's version must be text like \"1.0\", not '" + "x" * 40 + "'...",
    ),
    (
        "version-of-5000-digits",
        b'{"version": "' + b"1" * 5000 + b'.0", "data": {}}',
        "is not a valid Tomo backup: the document's version must be text like \"1.0\", not '" + "1" * 40 + "'...",
    ),
    (
        "application-version-of-5000-digits",
        b'{"version": "1.0", "application_version": "' + b"9" * 5000 + b'", "data": {}}',
        "is not a valid Tomo backup: application_version '" + "9" * 40 + "'... is not a version number",
    ),
    (
        "application-version-not-a-version",
        b'{"version": "1.0", "application_version": "dev\\nbuild", "data": {}}',
        "is not a valid Tomo backup: application_version 'dev\\nbuild' is not a version number",
    ),
    (
        "huge-unknown-category",
        doc('{"' + "g" * 1_000_000 + '": []}'),
        "is not a valid Tomo backup: data has an unknown category '" + "g" * 40 + "'...",
    ),
]


@pytest.mark.parametrize(("content", "message"), [c[1:] for c in HOSTILE], ids=[c[0] for c in HOSTILE])
@pytest.mark.usefixtures("no_database")
def test_a_hostile_document_fails_in_one_sentence_before_the_database_is_opened(
    tmp_path: Path, content: bytes, message: str
) -> None:
    target = str(tmp_path / "target.db")
    Path(target).write_bytes(b"not opened")  # sqlite3.connect fails the test if it is called
    path = tmp_path / NAME
    path.write_bytes(content)
    with pytest.raises(TomoError) as err:
        tomo_import.import_document(str(path), target, CATEGORIES, "replace")
    assert str(err.value) == f"{path} {message}"
    assert_one_sentence(str(err.value), str(path))
    assert err.value.__suppress_context__  # raised "from None": no chained traceback behind it
    listed = tomo_document.describe(str(path))
    assert listed["valid"] is False
    assert listed["error"] == str(err.value)  # the listing says the same sentence


def test_the_same_documents_leave_a_real_database_untouched(tmp_path: Path) -> None:
    target = db(tmp_path)
    before, mtime = sha(target), os.stat(target).st_mtime_ns
    for name, content, _ in HOSTILE:
        path = tmp_path / f"{name}.json"
        path.write_bytes(content)
        with pytest.raises(TomoError):
            tomo_import.import_document(str(path), target, CATEGORIES, "replace")
    assert sha(target) == before
    assert os.stat(target).st_mtime_ns == mtime
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("target")) == ["target.db"]  # no journal


def test_what_is_refused_is_only_what_is_wrong(tmp_path: Path, exported: str) -> None:
    """The checks let a real document through: surrogate pairs, 64-bit bounds, deep-but-valid JSON elsewhere."""
    document = json.loads(Path(exported).read_text())
    document["data"]["users"][0]["email"] = "\U0001f600@example.net"  # written as a \\ud83d\\ude00 pair below
    document["data"]["repositories"][0]["id"] = 2**63 - 1
    document["data"]["repositories"][1]["id"] = -(2**63)
    document["generator"] = [[[[[["ignored"]]]]]]
    path = tmp_path / NAME
    path.write_text(json.dumps(document, ensure_ascii=True))
    assert "\\ud83d\\ude00" in path.read_text()
    loaded = tomo_document.load(str(path))
    assert loaded["data"]["users"][0]["email"] == "\U0001f600@example.net"
    result = tomo_import.import_document(str(path), db(tmp_path), CATEGORIES, "replace", check=True)
    assert result["changes"]["repositories"]["marketplace_repos"]["added"] == 2


# --- every value of a real document replaced by a hostile one ------------------------------------

ODD_VALUES: list[Any] = [
    None,
    True,
    2**64,
    -(2**64),
    1.5,
    "x\ud800",
    "",
    [],
    {},
    [1],
    {"a": 1},
    {"base64": "!!"},
    {"base64": 1},
    [[[]]],
    {"host": {"a": 1}, "port": [1], "username": None},
]


def _paths(value: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield path
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _paths(item, (*path, key))
    elif isinstance(value, list):
        for i, item in enumerate(value[:1]):  # the first row stands for the others
            yield from _paths(item, (*path, i))


def test_any_value_of_a_real_document_replaced_by_a_hostile_one(tmp_path: Path, exported: str) -> None:
    """Whatever one value becomes, the import either works or fails in one sentence; never another exception."""
    original = json.loads(Path(exported).read_text())
    target = db(tmp_path)
    before = sha(target)
    path = tmp_path / NAME
    outcomes = {"imported": 0, "refused": 0, "rolled back": 0}
    for where in _paths(original):
        for value in ODD_VALUES:
            document: Any = copy.deepcopy(original)
            if where:
                parent = document
                for step in where[:-1]:
                    parent = parent[step]
                parent[where[-1]] = value
            else:
                document = value
            path.write_bytes(json.dumps(document).encode("utf-8", "surrogatepass"))
            try:
                result = tomo_import.import_document(str(path), target, CATEGORIES, "replace", check=True)
            except TomoError as exc:
                message = str(exc)
                if message.startswith(str(path)):  # refused by the checks, before the database
                    outcomes["refused"] += 1
                else:  # refused by Tomo's schema (an id that is text...): rolled back
                    assert message.endswith("; nothing was changed"), message
                    message = f"{path} {message}"
                    outcomes["rolled back"] += 1
                assert_one_sentence(message, str(path))
            else:
                json.dumps(result).encode("utf-8")  # what the module returns can be sent back
                outcomes["imported"] += 1
            listed = tomo_document.describe(str(path))
            json.dumps(listed).encode("utf-8")
    assert sha(target) == before
    assert outcomes["refused"] > 1000 and outcomes["imported"] > 100, outcomes


# --- what is read: a bound, no links, no FIFOs ----------------------------------------------------


def test_the_size_cap_is_a_documented_constant() -> None:
    assert tomo_schema.MAX_DOCUMENT_SIZE == 16 * 1024 * 1024
    assert "MAX_DOCUMENT_SIZE" in tomo_schema.__doc__
    assert "16 MiB" in (tomo_backup.DOCUMENTATION + tomo_backup_info.DOCUMENTATION)


@pytest.mark.usefixtures("no_database")
def test_a_2_gib_file_is_refused_without_being_read(tmp_path: Path, bytes_read: list[int]) -> None:
    path = tmp_path / NAME
    with path.open("wb") as handle:
        handle.truncate(2 * 1024**3)  # sparse: 2 GiB that take no room
    target = str(tmp_path / "target.db")
    with pytest.raises(TomoError) as err:
        tomo_import.import_document(str(path), target, CATEGORIES, "merge")
    assert (
        str(err.value)
        == f"{path} is not a backup document: it is 2147483648 bytes, more than the 16 MiB a document may be"
    )
    assert bytes_read == []  # refused on its size, not one byte read


def test_the_read_stops_at_the_cap_whatever_size_the_file_claims(bytes_read: list[int]) -> None:
    """/proc files say they are 0 bytes long and are not: the bound is on the bytes read, not on fstat."""
    claims = "/proc/self/status"
    if not os.path.exists(claims) or os.stat(claims).st_size != 0:
        pytest.skip("no /proc file that understates its size")
    with pytest.raises(TomoError) as err:
        tomo_document.load(claims, max_size=64)
    assert str(err.value) == f"{claims} is not a backup document: it is larger than the 64 bytes a document may be"
    assert sum(bytes_read) == 65


def test_a_document_one_byte_over_a_lowered_cap_is_refused_and_one_at_it_is_read(
    tmp_path: Path, exported: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    size = os.path.getsize(exported)
    monkeypatch.setattr(tomo_document, "MAX_DOCUMENT_SIZE", size)
    assert tomo_document.load(exported)["version"] == "1.0"
    monkeypatch.setattr(tomo_document, "MAX_DOCUMENT_SIZE", size - 1)
    target = db(tmp_path)
    before = sha(target)
    with pytest.raises(TomoError) as err:
        tomo_import.import_document(exported, target, CATEGORIES, "merge")
    assert str(err.value) == (
        f"{exported} is not a backup document: it is {size} bytes, more than the {size - 1} bytes a document may be"
    )
    assert sha(target) == before
    assert tomo_document.describe(exported)["error"] == str(err.value)


def test_an_export_the_cap_would_refuse_is_not_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = db(tmp_path, "source")
    out = tmp_path / "out"
    out.mkdir()
    monkeypatch.setattr(tomo_export, "MAX_DOCUMENT_SIZE", 1024)
    for write in (False, True):  # check mode says so too
        with pytest.raises(TomoError) as err:
            tomo_export.export(source, str(out), write=write)
        assert str(err.value).startswith("the document would be ")
        assert str(err.value).endswith(
            " bytes, more than the 1024 bytes a document may be to be read back, so it was not written"
        )
    assert os.listdir(out) == []  # no document, no temporary file


@pytest.mark.usefixtures("no_database")
def test_a_link_to_etc_shadow_is_never_read_through(tmp_path: Path, bytes_read: list[int]) -> None:
    path = tmp_path / NAME
    path.symlink_to("/etc/shadow")
    with pytest.raises(TomoError) as err:
        tomo_import.import_document(str(path), str(tmp_path / "target.db"), CATEGORIES, "merge")
    assert str(err.value) == (
        f"{path} is not a backup document: it is a symbolic link, and a document is never read through one"
    )
    assert bytes_read == []


def test_a_link_to_a_valid_document_is_refused_too(tmp_path: Path, exported: str) -> None:
    """It is the link that is refused, not what it points at."""
    path = tmp_path / NAME
    path.symlink_to(exported)
    with pytest.raises(TomoError, match=r"it is a symbolic link, and a document is never read through one$"):
        tomo_document.load(str(path))


def _finishes(seconds: float, fifo: Path, call: Callable[[], object]) -> object:
    """``call()``'s result or exception; fails the test when it blocks (and then unblocks it)."""
    outcome: dict[str, object] = {}

    def run() -> None:
        try:
            outcome["result"] = call()
        except Exception as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))  # a writer comes and goes: the reader sees EOF
        thread.join(seconds)
        pytest.fail("reading a FIFO named like a document blocked")
    return outcome.get("error", outcome.get("result"))


@pytest.mark.usefixtures("no_database")
def test_a_fifo_named_like_a_document_does_not_hang(tmp_path: Path) -> None:
    fifo = tmp_path / NAME
    os.mkfifo(fifo)
    error = _finishes(
        10, fifo, lambda: tomo_import.import_document(str(fifo), str(tmp_path / "t.db"), CATEGORIES, "merge")
    )
    assert isinstance(error, TomoError), error
    assert str(error) == f"{fifo} is not a backup document: it is a named pipe (FIFO), not a regular file"


def test_a_directory_named_like_a_document_is_not_one(tmp_path: Path) -> None:
    path = tmp_path / NAME
    path.mkdir()
    with pytest.raises(TomoError) as err:
        tomo_document.load(str(path))
    assert str(err.value) == f"{path} is not a backup document: it is a directory, not a regular file"


def test_a_missing_document_says_so(tmp_path: Path) -> None:
    with pytest.raises(TomoError) as err:
        tomo_document.load(str(tmp_path / NAME))
    assert str(err.value) == f"the backup document {tmp_path / NAME} does not exist"


# --- the listing goes on -----------------------------------------------------------------------------


def _hostile_directory(backups: Path) -> dict[str, str]:
    """Bad documents beside the good one, each under a document's name; name → the error expected."""
    expected: dict[str, str] = {}

    def bad(second: int, content: bytes | None, error: str) -> Path:
        path = backups / f"tomo-backup-2030-01-01T00-00-{second:02d}.json"
        if content is not None:
            path.write_bytes(content)
        expected[path.name] = f"{path} {error}"
        return path

    for second, (_, content, error) in enumerate(
        [h for h in HOSTILE if h[0] in {"doc-is-a-list", "data-is-a-string", "deep-open-lists", "nan", "invalid-utf8"}]
    ):
        bad(second, content, error)
    link = bad(10, None, "is not a backup document: it is a symbolic link, and a document is never read through one")
    link.symlink_to("/etc/shadow")
    fifo = bad(11, None, "is not a backup document: it is a named pipe (FIFO), not a regular file")
    os.mkfifo(fifo)
    huge = bad(12, None, "is not a backup document: it is 2147483648 bytes, more than the 16 MiB a document may be")
    with huge.open("wb") as handle:
        handle.truncate(2 * 1024**3)
    bad(
        13,
        doc('{"users": [{"username": "\\ud800"}]}'),
        "is not a valid Tomo backup: data.users[0].username is not valid Unicode text: it holds a lone surrogate",
    )
    bad(
        14,
        b'{"version": "1.0", "data": {}, "data": {}}',
        "is not a valid Tomo backup: it has the key 'data' twice in one object",
    )
    return expected


def test_the_listing_reports_each_hostile_document_and_lists_the_rest(tmp_path: Path, exported: str) -> None:
    backups = Path(exported).parent
    expected = _hostile_directory(backups)
    listed = _finishes(
        30, backups / "tomo-backup-2030-01-01T00-00-11.json", lambda: tomo_document.catalog(str(backups))
    )
    assert isinstance(listed, list), listed
    assert [d["name"] for d in listed] == [*sorted(expected, reverse=True), Path(exported).name]
    good = listed[-1]
    assert good["valid"] is True and good["counts"]["servers"] == 3
    for entry in listed[:-1]:
        assert entry["valid"] is False, entry
        assert entry["error"] == expected[entry["name"]]
        assert_one_sentence(entry["error"], entry["path"])
        assert set(entry) == {"path", "name", "size", "valid", "error"}
    by_name = {d["name"]: d for d in listed}
    assert by_name["tomo-backup-2030-01-01T00-00-10.json"]["size"] is None  # not /etc/shadow's size
    assert by_name["tomo-backup-2030-01-01T00-00-11.json"]["size"] is None  # a FIFO has none
    assert by_name["tomo-backup-2030-01-01T00-00-12.json"]["size"] == 2 * 1024**3


# --- the modules: one fail_json, or a listing that goes on ----------------------------------------


@pytest.fixture
def run(run_module: Callable[..., dict[str, Any]]) -> Callable[..., dict[str, Any]]:
    return run_module


MODULE_CASES = [
    h
    for h in HOSTILE
    if h[0]
    in {
        "doc-is-a-list",
        "reference-holds-an-object",
        "deep-open-lists",
        "nan",
        "above-64-bits",
        "surrogate-in-a-key",
        "invalid-utf8",
    }
]


@pytest.mark.parametrize(("content", "message"), [c[1:] for c in MODULE_CASES], ids=[c[0] for c in MODULE_CASES])
def test_tomo_backup_fails_once_with_the_sentence(
    tmp_path: Path, run: Callable[..., dict[str, Any]], content: bytes, message: str
) -> None:
    target = db(tmp_path)
    before = sha(target)
    path = tmp_path / NAME
    path.write_bytes(content)
    result = run(tomo_backup, {"state": "imported", "database": target, "src": str(path), "mode": "replace"})
    assert result["failed"] is True
    assert result["msg"] == f"{path} {message}"
    assert "exception" not in result
    assert sha(target) == before


def test_tomo_backup_fails_once_on_a_fifo_and_a_link(tmp_path: Path, run: Callable[..., dict[str, Any]]) -> None:
    target = db(tmp_path)
    fifo, link = tmp_path / NAME, tmp_path / "tomo-backup-2026-11-22T03-51-01.json"
    os.mkfifo(fifo)
    link.symlink_to("/etc/shadow")
    for path, why in (
        (fifo, "it is a named pipe (FIFO), not a regular file"),
        (link, "it is a symbolic link, and a document is never read through one"),
    ):
        result = _finishes(
            10,
            fifo,
            lambda p=path: run(tomo_backup, {"state": "imported", "database": target, "src": str(p)}, check=True),
        )
        assert isinstance(result, dict), result
        assert result["failed"] is True and result["msg"] == f"{path} is not a backup document: {why}"


def test_tomo_backup_info_lists_the_rest_of_a_hostile_directory(
    tmp_path: Path, exported: str, run: Callable[..., dict[str, Any]]
) -> None:
    backups = Path(exported).parent
    expected = _hostile_directory(backups)
    result = _finishes(
        30, backups / "tomo-backup-2030-01-01T00-00-11.json", lambda: run(tomo_backup_info, {"path": str(backups)})
    )
    assert isinstance(result, dict), result
    assert not result.get("failed"), result
    assert result["count"] == len(expected) + 1
    assert result["latest"]["name"] == Path(exported).name  # the newest valid one, past the bad newer ones
    assert {d["name"]: d["error"] for d in result["documents"] if not d["valid"]} == expected
