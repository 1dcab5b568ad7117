"""The demo application: SQLite in WAL mode, health, rows on demand, a continuous writer."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

DEMO_APP = Path(__file__).resolve().parents[2] / "roles" / "demo_app" / "files" / "demo_app.py"


def call(port: int, method: str, path: str) -> dict[str, object]:
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", method=method, data=b"" if method == "POST" else None
    )
    with urllib.request.urlopen(req, timeout=5) as resp:
        return json.load(resp)


@pytest.fixture
def app(tmp_path: Path, free_port: int) -> Iterator[tuple[int, Path]]:
    db = tmp_path / "inst" / "app.db"
    env = {"PORT": str(free_port), "DEMO_DB": str(db), "DEMO_INSTANCE": "demo:test", "DEMO_SEED_ROWS": "25"}
    proc = subprocess.Popen([sys.executable, str(DEMO_APP)], env=env, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 10
    while True:
        try:
            call(free_port, "GET", "/health")
            break
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                pytest.fail(f"demo_app did not start: {proc.stderr.read().decode() if proc.stderr else ''}")
            time.sleep(0.05)
    try:
        yield free_port, db
    finally:
        proc.terminate()
        proc.wait(timeout=5)


def test_health_and_seeded_rows_in_wal_mode(app: tuple[int, Path]) -> None:
    port, db = app
    health = call(port, "GET", "/health")
    assert health == {"status": "ok", "instance": "demo:test", "rows": 25}
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("SELECT count(*) FROM items").fetchone()[0] == 25


def test_rows_on_demand_change_the_checksum(app: tuple[int, Path]) -> None:
    port, _ = app
    before = call(port, "GET", "/stats")
    assert call(port, "POST", "/rows?n=40") == {"rows": 65}
    after = call(port, "GET", "/stats")
    assert after["rows"] == 65 and after["last_id"] == 65
    assert after["rows_sha256"] != before["rows_sha256"]


def test_writer_commits_continuously_until_stopped(app: tuple[int, Path]) -> None:
    port, db = app
    call(port, "POST", "/writer/start?rate=200")
    time.sleep(0.5)
    # Another process reads committed rows while the writer goes on.
    with sqlite3.connect(db) as conn:
        seen = conn.execute("SELECT count(*) FROM items").fetchone()[0]
    assert seen > 25 + 20
    stopped = call(port, "POST", "/writer/stop")
    assert stopped["running"] is False and stopped["commits"] > 20
    rows = call(port, "GET", "/stats")["rows"]
    time.sleep(0.2)
    assert call(port, "GET", "/stats")["rows"] == rows


def test_bad_requests_are_refused(app: tuple[int, Path]) -> None:
    port, _ = app
    for path in ("/rows?n=0", "/writer/start?rate=-1", "/rows?n=abc"):
        with pytest.raises(urllib.error.HTTPError) as err:
            call(port, "POST", path)
        assert err.value.code == 400
