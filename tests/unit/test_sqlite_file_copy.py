"""snapshot_file: a live database read straight from its file while a read transaction is held, under writers
that never stop and checkpoints from another process; and a control that shows the same stress catches a copy
read without holding the transaction."""

from __future__ import annotations

import multiprocessing
import os
import random
import sqlite3
import time
from pathlib import Path

import pytest

from ansible_collections.selfhost.dr.plugins.module_utils.sqlite_stream import FileCopy, snapshot_file

ACCOUNTS = 40
TOTAL = ACCOUNTS * 1000


def make(path: Path, mode: str) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute(f"PRAGMA journal_mode = {mode}")
    conn.execute("CREATE TABLE acct (id INTEGER PRIMARY KEY, bal INTEGER NOT NULL)")
    conn.execute("CREATE TABLE log (id INTEGER PRIMARY KEY, blob BLOB NOT NULL)")
    conn.execute("CREATE TABLE meta (id INTEGER PRIMARY KEY CHECK (id = 1), rows INTEGER NOT NULL)")
    conn.execute("BEGIN")
    conn.executemany("INSERT INTO acct VALUES (?, 1000)", [(i,) for i in range(ACCOUNTS)])
    conn.executemany("INSERT INTO log(blob) VALUES (randomblob(?))", [(800 + i % 700,) for i in range(2000)])
    conn.execute("INSERT INTO meta VALUES (1, 2000)")
    conn.execute("COMMIT")
    conn.close()


def writer(path: str, mode: str, seed: int, stop: multiprocessing.synchronize.Event) -> None:  # type: ignore[name-defined]
    """Transactions that keep sum(acct.bal) == TOTAL and meta.rows == count(log), the log growing and shrinking."""
    rnd = random.Random(seed)
    conn = sqlite3.connect(path, isolation_level=None, timeout=30)
    if mode == "wal":
        conn.execute("PRAGMA wal_autocheckpoint = 10")
    while not stop.is_set():
        conn.execute("BEGIN IMMEDIATE")
        a, b, amount = rnd.randrange(ACCOUNTS), rnd.randrange(ACCOUNTS), rnd.randrange(1, 100)
        conn.execute("UPDATE acct SET bal = bal - ? WHERE id = ?", (amount, a))
        conn.execute("UPDATE acct SET bal = bal + ? WHERE id = ?", (amount, b))
        added = rnd.randrange(1, 4)
        conn.executemany("INSERT INTO log(blob) VALUES (randomblob(?))", [(rnd.randrange(100, 3000),)] * added)
        removed = 0
        if rnd.random() < 0.2:  # free pages, pages reused: a torn copy shows
            removed = conn.execute(
                "DELETE FROM log WHERE id IN (SELECT id FROM log ORDER BY random() LIMIT 5)"
            ).rowcount
        conn.execute("UPDATE meta SET rows = rows + ?", (added - removed,))
        conn.execute("COMMIT")
        # Pauses, a few longer: a -wal truncated by a checkpoint stays empty a moment, and a copy is read from the file.
        time.sleep(rnd.random() * (0.03 if rnd.random() < 0.1 else 0.004))
    conn.close()


def checkpointer(path: str, seed: int, stop: multiprocessing.synchronize.Event) -> None:  # type: ignore[name-defined]
    rnd = random.Random(seed)
    conn = sqlite3.connect(path, isolation_level=None, timeout=30)
    while not stop.is_set():
        conn.execute(f"PRAGMA wal_checkpoint({rnd.choice(['PASSIVE', 'TRUNCATE', 'RESTART', 'FULL'])})").fetchall()
        time.sleep(rnd.random() * 0.01)
    conn.close()


def problem(path: Path, seen: tuple[int, int] | None = None) -> str:
    """What is wrong with the copy at ``path`` ("" when it is one consistent point in time, and with ``seen`` the
    point in time that the read transaction saw: meta.rows and the last log id)."""
    try:
        conn = sqlite3.connect(path, isolation_level=None)
        try:
            rows = [r[0] for r in conn.execute("PRAGMA integrity_check").fetchall()]
            if rows != ["ok"]:
                return f"integrity_check: {rows[:3]}"
            total = conn.execute("SELECT sum(bal) FROM acct").fetchone()[0]
            count, recorded = conn.execute("SELECT (SELECT count(*) FROM log), rows FROM meta").fetchone()
            last = conn.execute("SELECT max(id) FROM log").fetchone()[0]
        finally:
            conn.close()
    except sqlite3.DatabaseError as exc:
        return f"unreadable: {exc}"
    if total != TOTAL or count != recorded:
        return f"not one point in time: sum {total} != {TOTAL} or rows {count} != {recorded}"
    if seen is not None and (recorded, last) != seen:
        return f"another point in time than the transaction's: (rows, last id) {(recorded, last)} != {seen}"
    return ""


def copies(tmp_path: Path, mode: str, hold: bool, seconds: float) -> tuple[int, list[str]]:
    """Copies taken with snapshot_file for ``seconds`` under writers and checkpoints: how many were read from the
    file, and the problems found in them. ``hold=False`` ends the read transaction before the bytes are read (what
    the control does, to show the stress catches it)."""
    src = tmp_path / "live.db"
    make(src, mode)
    stop = multiprocessing.Event()
    procs = [multiprocessing.Process(target=writer, args=(str(src), mode, seed, stop)) for seed in (1, 2)]
    if mode == "wal":
        procs.append(multiprocessing.Process(target=checkpointer, args=(str(src), 3, stop)))
    for proc in procs:
        proc.start()
    from_file, problems = 0, []
    try:
        time.sleep(0.2)
        st = os.stat(src)
        end = time.monotonic() + seconds
        # At least 5 copies read from the file when they come within 5 s more (a loaded machine).
        while (time.monotonic() < end or (from_file < 5 and time.monotonic() < end + 5)) and not (
            problems and not hold
        ):
            staged, out = tmp_path / "staged.db", tmp_path / f"copy-{from_file}.db"
            made = snapshot_file(
                str(src), str(staged), lock_timeout=20, check_integrity=False, expect=(st.st_dev, st.st_ino)
            )
            if not isinstance(made, FileCopy):  # not safe now: the backup API's copy, staged
                os.unlink(staged)
                continue
            from_file += 1
            # What the read transaction sees: the copy must be that point in time, not an older one.
            conn = made._conn  # type: ignore[union-attr]
            seen = conn.execute("SELECT rows, (SELECT max(id) FROM log) FROM meta").fetchone()  # type: ignore[union-attr]
            if not hold:
                conn.execute("COMMIT")  # type: ignore[union-attr]  # the bug the control makes on purpose
            with open(out, "wb") as handle:
                for chunk in made.chunks(bytearray(32 * 1024)):
                    handle.write(chunk)
                    time.sleep(0.0005)  # a slow reader: writers and checkpoints go on meanwhile
            assert made.snapshot.size == out.stat().st_size == made.snapshot.pages * made.snapshot.page_size
            if found := problem(out, seen):
                problems.append(found)
            for name in (out, Path(f"{out}-wal"), Path(f"{out}-shm")):
                name.unlink(missing_ok=True)
    finally:
        stop.set()
        for proc in procs:
            proc.join(30)
    assert all(proc.exitcode == 0 for proc in procs), "a writer failed"
    assert problem(src) == ""
    return from_file, problems


@pytest.mark.parametrize("mode", ["wal"])
def test_copies_read_from_the_file_are_one_point_in_time(tmp_path: Path, mode: str) -> None:
    from_file, problems = copies(tmp_path, mode, hold=True, seconds=2.5)
    assert problems == []
    assert from_file >= 3, "the copy was hardly ever read from the file: the test proves little"


@pytest.mark.parametrize("mode", ["wal"])
def test_the_stress_catches_a_copy_read_without_the_transaction(tmp_path: Path, mode: str) -> None:
    from_file, problems = copies(tmp_path, mode, hold=False, seconds=3.0)
    assert problems, f"{from_file} copies read without the read transaction held, none caught: the stress is too weak"


def test_a_wal_database_with_frames_is_staged_not_read_from_the_file(tmp_path: Path) -> None:
    src = tmp_path / "live.db"
    make(src, "wal")
    holder = sqlite3.connect(src, isolation_level=None)
    holder.execute("PRAGMA wal_autocheckpoint = 0")
    holder.execute("UPDATE acct SET bal = bal + 1 WHERE id = 0")
    holder.execute("UPDATE acct SET bal = bal - 1 WHERE id = 1")
    st = os.stat(src)
    made = snapshot_file(
        str(src), str(tmp_path / "staged.db"), lock_timeout=5, check_integrity=True, expect=(st.st_dev, st.st_ino)
    )
    holder.close()
    assert not isinstance(made, FileCopy)
    snap, version = made
    assert snap.method == "backup" and snap.integrity == "ok" and version == b"\x02\x02"
    assert problem(tmp_path / "staged.db") == ""


def test_a_rollback_journal_database_keeps_the_backup_apis_copy(tmp_path: Path) -> None:
    # Its writers would wait for the whole stream (the SHARED lock) instead of for the backup API's copy.
    src = tmp_path / "live.db"
    make(src, "delete")
    st = os.stat(src)
    made = snapshot_file(
        str(src), str(tmp_path / "staged.db"), lock_timeout=5, check_integrity=True, expect=(st.st_dev, st.st_ino)
    )
    assert not isinstance(made, FileCopy) and made[0].method == "backup" and made[1] == b"\x01\x01"


@pytest.mark.parametrize("mode", ["wal"])
def test_an_idle_database_is_read_from_the_file_with_the_backup_apis_content(tmp_path: Path, mode: str) -> None:
    src = tmp_path / "live.db"
    make(src, mode)
    st = os.stat(src)
    made = snapshot_file(
        str(src), str(tmp_path / "staged.db"), lock_timeout=5, check_integrity=True, expect=(st.st_dev, st.st_ino)
    )
    assert isinstance(made, FileCopy)
    data = b"".join(bytes(c) for c in made.chunks())
    assert made.snapshot.integrity == "ok" and made.snapshot.method == "file"
    assert made.snapshot.journal_mode == ("wal" if mode == "wal" else "rollback")
    conn = sqlite3.connect(src, isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")  # the read transaction was ended: a writer gets its lock
    conn.execute("ROLLBACK")
    dst = sqlite3.connect(":memory:")
    conn.backup(dst)
    conn.close()
    other = dst.serialize()
    dst.close()
    assert len(data) == len(other) == made.snapshot.pages * made.snapshot.page_size
    assert data[18:20] == (b"\x02\x02" if mode == "wal" else b"\x01\x01")
    # The same pages; the header differs only in the change counter, the schema cookie, version-valid-for and the
    # SQLite version, which the backup API sets as a new database's.
    differ = {i for i in range(100) if data[i] != other[i]}
    assert differ <= {18, 19, *range(24, 28), *range(40, 44), *range(92, 100)}
    assert data[100:] == other[100:]
