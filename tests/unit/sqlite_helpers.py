"""Databases for the tests: two tables that every transaction moves together, and a writer that never stops."""

from __future__ import annotations

import contextlib
import multiprocessing
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path


def make_db(path: Path, mode: str = "wal", rows: int = 2000) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute(f"PRAGMA journal_mode = {mode}")
    # Two tables moved together in every transaction: a torn copy breaks the invariant.
    conn.execute("CREATE TABLE ledger (id INTEGER PRIMARY KEY, amount INTEGER NOT NULL, blob BLOB)")
    conn.execute("CREATE TABLE totals (id INTEGER PRIMARY KEY CHECK (id = 1), n INTEGER, total INTEGER)")
    conn.execute("INSERT INTO totals VALUES (1, 0, 0)")
    conn.execute("BEGIN")
    for i in range(rows):
        conn.execute("INSERT INTO ledger(amount, blob) VALUES (?, randomblob(200))", (i % 7,))
    conn.execute("UPDATE totals SET n = (SELECT count(*) FROM ledger), total = (SELECT sum(amount) FROM ledger)")
    conn.execute("COMMIT")
    conn.close()


def writer(path: str, stop: multiprocessing.synchronize.Event, ready: multiprocessing.synchronize.Event) -> None:  # type: ignore[name-defined]
    conn = sqlite3.connect(path, isolation_level=None, timeout=30)
    ready.set()
    i = 0
    while not stop.is_set():
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO ledger(amount, blob) VALUES (?, randomblob(200))", (i % 5,))
        conn.execute("UPDATE totals SET n = n + 1, total = total + ?", (i % 5,))
        conn.execute("COMMIT")
        i += 1
        # A writer that never lets go between commits can keep a rollback-journal reader from its SHARED lock for
        # seconds on a loaded machine (SQLite's busy handler sleeps, the writer takes the lock again first): with
        # this pause it still commits some thousand times a second, as no real application does.
        time.sleep(0.0002)
    conn.close()


def consistent(path: Path) -> tuple[int, int]:
    conn = sqlite3.connect(path, isolation_level=None, timeout=30)
    conn.execute("BEGIN")  # both reads in one read transaction
    n, total = conn.execute("SELECT n, total FROM totals").fetchone()
    count, summed = conn.execute("SELECT count(*), sum(amount) FROM ledger").fetchone()
    conn.execute("COMMIT")
    conn.close()
    assert (n, total) == (count, summed), "the snapshot is not one point in time"
    return count, summed


@dataclass
class WriterRun:
    before: int = 0
    after: int = 0


@contextlib.contextmanager
def writer_running(path: Path) -> Iterator[WriterRun]:
    """A separate process commits to ``path`` continuously for the whole ``with`` block (and a little either side).

    ``before`` and ``after`` are the row counts just before and after the block: a snapshot made inside it
    must hold a count between them. Fails if the writer did not commit meanwhile.
    """
    ready, stop = multiprocessing.Event(), multiprocessing.Event()
    proc = multiprocessing.Process(target=writer, args=(str(path), stop, ready))
    proc.start()
    run = WriterRun()
    try:
        assert ready.wait(10), "the writer did not start"
        time.sleep(0.3)  # the writer is committing now
        run.before = consistent(path)[0]
        yield run
        time.sleep(0.3)  # and goes on after the block
    finally:
        stop.set()
        proc.join(20)
    run.after = consistent(path)[0]
    assert run.after > run.before, "the writer did not commit during the test"
