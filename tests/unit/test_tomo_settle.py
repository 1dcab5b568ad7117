"""A stopped Tomo's database is settled before a restore replaces it: the swap moves only tomo.db, and a hot journal
left beside it would be played into the restored file when Tomo opens it."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

from ansible_collections.selfhost.dr.plugins.module_utils.apps.tomo import settle


def _crashed_mid_transaction(tmp_path: Path) -> Path:
    """A tomo.db with a hot -journal: the files as a crash in the middle of a transaction leaves them."""
    live = tmp_path / "live" / "tomo.db"
    live.parent.mkdir()
    conn = sqlite3.connect(live, isolation_level=None)
    conn.execute("PRAGMA cache_size = 1")  # pages reach the file before the commit
    conn.execute("CREATE TABLE users (id TEXT PRIMARY KEY, username TEXT)")
    conn.execute("INSERT INTO users VALUES ('u1', 'alice')")
    conn.execute("BEGIN")
    conn.executemany("INSERT INTO users VALUES (?, ?)", [(f"x{n}", "x" * 500) for n in range(2000)])
    crashed = tmp_path / "crashed" / "tomo.db"
    crashed.parent.mkdir()
    shutil.copy(live, crashed)
    shutil.copy(str(live) + "-journal", str(crashed) + "-journal")
    conn.execute("ROLLBACK")
    conn.close()
    return crashed


def test_a_hot_journal_is_rolled_back_and_gone_before_anything_replaces_the_database(tmp_path: Path) -> None:
    db = _crashed_mid_transaction(tmp_path)
    assert Path(str(db) + "-journal").stat().st_size > 0
    said: list[str] = []
    settle(str(db), said.append)
    assert not Path(str(db) + "-journal").exists() and said
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        assert conn.execute("SELECT username FROM users").fetchall() == [("alice",)]
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    conn.close()


def test_a_database_with_nothing_beside_it_is_not_touched(tmp_path: Path) -> None:
    db = tmp_path / "tomo.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE t (x)")
    conn.close()
    before = db.stat().st_mtime_ns
    settle(str(db))
    settle(str(tmp_path / "missing.db"))
    assert db.stat().st_mtime_ns == before
