"""The sqlite_snapshot module as ansible runs it: check mode, the copy, clear failures."""

from __future__ import annotations

import sqlite3
import stat
from pathlib import Path

from .ansible_run import run_module as run_ansible_module


def run_module(args: dict[str, object], check: bool = False) -> dict[str, object]:
    return run_ansible_module("sqlite_snapshot", args, check=check)


def test_check_mode_then_real_copy(tmp_path: Path) -> None:
    src = tmp_path / "live.db"
    conn = sqlite3.connect(src)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("CREATE TABLE t (x)")
    conn.executemany("INSERT INTO t VALUES (?)", [(i,) for i in range(500)])
    conn.commit()
    dest = tmp_path / "copy.db"

    checked = run_module({"src": str(src), "dest": str(dest)}, check=True)
    assert checked["changed"] is True and not checked.get("failed")
    assert not dest.exists()

    done = run_module({"src": str(src), "dest": str(dest)})
    conn.close()
    assert done["changed"] is True, done
    snap = done["snapshot"]
    assert snap["integrity"] == "ok" and snap["journal_mode"] == "wal"
    assert stat.S_IMODE(dest.stat().st_mode) == 0o600
    with sqlite3.connect(dest) as copy:
        assert copy.execute("SELECT count(*) FROM t").fetchone()[0] == 500


def test_failures_are_one_sentence(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("not a database")
    res = run_module({"src": str(tmp_path / "notes.txt"), "dest": str(tmp_path / "copy.db")})
    assert res["failed"] is True
    assert res["msg"] == f"{tmp_path / 'notes.txt'} is not a SQLite database (its header is not 'SQLite format 3')"
    res = run_module({"src": str(tmp_path / "nope.db"), "dest": str(tmp_path / "copy.db")}, check=True)
    assert res["msg"] == f"database {tmp_path / 'nope.db'} does not exist"
    res = run_module({"src": str(tmp_path / "notes.txt"), "dest": str(tmp_path / "missing" / "copy.db")})
    assert res["msg"] == f"the directory of dest {tmp_path / 'missing' / 'copy.db'} does not exist"
    assert not (tmp_path / "copy.db").exists()
