"""Snapshots of live SQLite databases: consistent under a writer, journal mode kept, clean failures."""

from __future__ import annotations

import contextlib
import hashlib
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ansible_collections.selfhost.dr.plugins.module_utils.sqlite_snapshot import (
    SnapshotError,
    hold,
    is_sqlite,
    journal_mode_of_file,
    row_counts_of_file,
    sha256_file,
    snapshot,
)
from ansible_collections.selfhost.dr.plugins.module_utils.sqlite_stream import snapshot_bytes

from .sqlite_helpers import consistent, make_db, writer_running


@pytest.mark.parametrize("method", ["backup", "vacuum"])
@pytest.mark.parametrize("mode", ["wal", "delete"])
def test_snapshot_under_a_continuous_writer_is_one_point_in_time(tmp_path: Path, method: str, mode: str) -> None:
    src = tmp_path / "live.db"
    make_db(src, mode=mode, rows=20000)
    with writer_running(src) as run:
        snap = snapshot(str(src), str(tmp_path / "copy.db"), method=method, lock_timeout=10)
    assert run.before <= consistent(tmp_path / "copy.db")[0] <= run.after
    assert snap.integrity == "ok"
    assert snap.sha256 == sha256_file(str(tmp_path / "copy.db"))
    assert snap.size == os.path.getsize(tmp_path / "copy.db") == snap.pages * snap.page_size
    assert snap.journal_mode == ("wal" if mode == "wal" else "rollback")
    assert not (tmp_path / "copy.db-wal").exists()
    assert not list(tmp_path.glob("*.tmp-snapshot*"))


def test_wal_database_stays_wal_when_opened(tmp_path: Path) -> None:
    src = tmp_path / "live.db"
    make_db(src, mode="wal", rows=10)
    snapshot(str(src), str(tmp_path / "copy.db"))
    assert journal_mode_of_file(str(tmp_path / "copy.db")) == "wal"
    conn = sqlite3.connect(tmp_path / "copy.db")
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()


def test_rows_only_in_the_wal_are_in_the_snapshot(tmp_path: Path) -> None:
    src = tmp_path / "live.db"
    make_db(src, mode="wal", rows=10)
    holder = sqlite3.connect(src, isolation_level=None)
    holder.execute("PRAGMA wal_autocheckpoint = 0")
    holder.execute("INSERT INTO ledger(amount) VALUES (1)")
    holder.execute("UPDATE totals SET n = n + 1, total = total + 1")
    assert (tmp_path / "live.db-wal").stat().st_size > 0
    snapshot(str(src), str(tmp_path / "copy.db"))
    holder.close()
    assert consistent(tmp_path / "copy.db")[0] == 11


def test_lock_held_longer_than_the_timeout_fails_cleanly(tmp_path: Path) -> None:
    src = tmp_path / "live.db"
    make_db(src, mode="delete", rows=10)
    locker = sqlite3.connect(src, isolation_level=None)
    locker.execute("BEGIN EXCLUSIVE")
    try:
        started = time.monotonic()
        with pytest.raises(SnapshotError, match=r"stayed locked by another process for longer than 0.5 s"):
            snapshot(str(src), str(tmp_path / "copy.db"), lock_timeout=0.5)
        assert time.monotonic() - started < 10
    finally:
        locker.execute("ROLLBACK")
        locker.close()
    assert not (tmp_path / "copy.db").exists()
    assert not list(tmp_path.glob("copy.db*"))


def test_not_a_database_and_missing_file(tmp_path: Path) -> None:
    text = tmp_path / "notes.db"
    text.write_text("hello")
    assert not is_sqlite(str(text))
    with pytest.raises(SnapshotError, match=r"is not a SQLite database"):
        snapshot(str(text), str(tmp_path / "copy.db"))
    with pytest.raises(SnapshotError, match=r"database .*/missing.db does not exist"):
        snapshot(str(tmp_path / "missing.db"), str(tmp_path / "copy.db"))
    assert not (tmp_path / "copy.db").exists()


def test_sqlite_detected_by_header_not_name(tmp_path: Path) -> None:
    odd = tmp_path / "state.bin"
    make_db(odd, rows=1)
    assert is_sqlite(str(odd))
    assert not is_sqlite(str(tmp_path))


def test_missing_destination_directory_fails_cleanly(tmp_path: Path) -> None:
    src = tmp_path / "live.db"
    make_db(src, rows=10)
    with pytest.raises(SnapshotError, match=r"could not"):
        snapshot(str(src), str(tmp_path / "no" / "such" / "dir" / "copy.db"))


@pytest.mark.parametrize("mode", ["wal", "delete"])
def test_snapshot_in_memory_under_a_continuous_writer(tmp_path: Path, mode: str) -> None:
    src = tmp_path / "live.db"
    make_db(src, mode=mode, rows=20000)
    with writer_running(src) as run:
        data, snap = snapshot_bytes(str(src), lock_timeout=10)
    copy = tmp_path / "copy.db"
    copy.write_bytes(data)
    assert run.before <= consistent(copy)[0] <= run.after
    assert snap.integrity == "ok" and snap.size == len(data) == snap.pages * snap.page_size
    assert journal_mode_of_file(str(copy)) == snap.journal_mode == ("wal" if mode == "wal" else "rollback")
    assert snap.sha256 == sha256_file(str(copy))


def test_snapshot_in_memory_gives_up_on_a_long_lock(tmp_path: Path) -> None:
    src = tmp_path / "live.db"
    make_db(src, mode="delete", rows=10)
    locker = sqlite3.connect(src, isolation_level=None)
    locker.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(SnapshotError, match=r"stayed locked by another process for longer than 0.5 s"):
            snapshot_bytes(str(src), lock_timeout=0.5)
    finally:
        locker.execute("ROLLBACK")
        locker.close()


def _reader_of_the_file_alone(db: Path) -> subprocess.Popen[bytes]:
    """Another process in a read transaction that began with the WAL all copied back: it, too, reads the file alone."""
    code = (
        "import sqlite3, sys\n"
        "db = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
        "db.execute('PRAGMA wal_checkpoint(TRUNCATE)')\n"
        "db.execute('BEGIN'); db.execute('SELECT count(*) FROM sqlite_master').fetchone()\n"
        "print('reading', flush=True); sys.stdin.readline()\n"
    )
    reader = subprocess.Popen([sys.executable, "-c", code, str(db)], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert reader.stdout is not None and reader.stdout.readline() == b"reading\n"
    return reader


@pytest.mark.parametrize("beside", ["alone", "another reader of the file alone"])
def test_a_held_wal_database_keeps_its_file_still_and_a_rollback_one_is_never_held(tmp_path: Path, beside: str) -> None:
    db = tmp_path / "app.db"
    with contextlib.closing(sqlite3.connect(db, isolation_level=None)) as conn:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("CREATE TABLE t (x)")
        conn.execute("INSERT INTO t VALUES (1)")
    reader = _reader_of_the_file_alone(db) if beside != "alone" else None
    try:
        st = db.stat()
        held = hold(str(db), 5.0, (st.st_dev, st.st_ino))
        assert held is not None
        before = held.sha256()
        code = (  # another process (one of this process's connections would share its locks)
            "import sqlite3, sys\n"
            "db = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
            "db.executemany('INSERT INTO t VALUES (?)', [(n,) for n in range(2000)])\n"
            "print(*db.execute('PRAGMA wal_checkpoint(PASSIVE)').fetchone())\n"
        )
        out = subprocess.run([sys.executable, "-c", code, str(db)], check=True, capture_output=True, text=True)
        busy, frames, copied = (int(n) for n in out.stdout.split())
        assert busy == 0 and frames > 0 and copied == 0  # nothing copied back into the file while it is held
        assert held.sha256() == before == (hashlib.sha256(db.read_bytes()).hexdigest(), st.st_size)
        held.close()
        with contextlib.closing(sqlite3.connect(db, isolation_level=None)) as conn:
            if reader is None:
                conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
                assert hashlib.sha256(db.read_bytes()).hexdigest() != before[0]  # let go: copied back now
    finally:
        if reader is not None:
            reader.kill()
            reader.wait()
    rollback = tmp_path / "rollback.db"
    with contextlib.closing(sqlite3.connect(rollback)) as conn:
        conn.execute("CREATE TABLE t (x)")
    st = rollback.stat()
    assert hold(str(rollback), 5.0, (st.st_dev, st.st_ino)) is None
    assert hold(str(db), 5.0, (st.st_dev, st.st_ino)) is None  # not the file checked


def test_row_counts_name_every_table_whatever_its_name_and_leave_virtual_ones_out(tmp_path: Path) -> None:
    db = tmp_path / "app.db"
    hostile = 'a"b; DROP TABLE t; --'
    with contextlib.closing(sqlite3.connect(db)) as conn:
        conn.execute("CREATE TABLE t (x)")
        conn.execute('CREATE TABLE "a""b; DROP TABLE t; --" (x)')
        conn.execute("CREATE VIRTUAL TABLE docs USING fts5(body)")
        conn.executemany("INSERT INTO t VALUES (?)", [(n,) for n in range(7)])
        conn.execute('INSERT INTO "a""b; DROP TABLE t; --" VALUES (1)')
        conn.executemany("INSERT INTO docs VALUES (?)", [("one",), ("two",)])
        conn.commit()
    counts = row_counts_of_file(str(db))
    assert counts is not None and counts["t"] == 7 and counts[hostile] == 1
    assert "docs" not in counts and counts["docs_content"] == 2  # (its shadow table holds the rows)
    (tmp_path / "damaged.db").write_bytes(db.read_bytes()[:4096] + b"\xff" * 8192)
    assert row_counts_of_file(str(tmp_path / "damaged.db")) is None
