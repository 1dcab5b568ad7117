"""The drill's own checks against hostile input: SQL checks that only read (no ATTACH, no VACUUM INTO, no PRAGMA,
never through a link), probes that never follow a redirect, and a report that survives odd values from hosts."""

from __future__ import annotations

import contextlib
import http.server
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ansible_collections.selfhost.dr.plugins.module_utils._common import Log, no_log
from ansible_collections.selfhost.dr.plugins.module_utils.apps.base import Application, Facts
from ansible_collections.selfhost.dr.plugins.module_utils.engine import drill, restore
from ansible_collections.selfhost.dr.plugins.module_utils.sets.create import create


@pytest.fixture
def database(tmp_path: Path) -> Path:
    path = tmp_path / "data" / "app.db"
    path.parent.mkdir()
    with contextlib.closing(sqlite3.connect(path)) as conn, conn:  # closed: a connection left open in this process
        conn.execute("PRAGMA journal_mode = WAL")  # would hand the check's its descriptor (see sqlite_snapshot)
        conn.execute("CREATE TABLE items (n INTEGER)")
        conn.executemany("INSERT INTO items VALUES (?)", [(i,) for i in range(5)])
    return path


def _sql(path: Path | str, query: str, expect: object = None) -> drill.Case:
    (check,) = drill.sql_from([{"name": "q", "database": str(path), "query": query, "expect": expect}])
    return drill._sql(check, time.monotonic)


def test_a_sql_check_reads_and_compares(database: Path) -> None:
    assert _sql(database, "SELECT count(*) FROM items", 5).status == "passed"
    assert _sql(database, "SELECT n FROM items ORDER BY n LIMIT 2", [[0], [1]]).status == "passed"
    wrong = _sql(database, "SELECT count(*) FROM items", 6)
    assert wrong.status == "failed" and wrong.message == "the query answered 5, not 6"


@pytest.mark.parametrize(
    "query",
    [
        "DELETE FROM items",
        "ATTACH '{made}' AS other",
        "VACUUM INTO '{made}'",
        "PRAGMA journal_mode = DELETE",
        "CREATE TABLE other (x)",
    ],
)
def test_a_sql_check_never_writes_nor_makes_a_file(database: Path, tmp_path: Path, query: str) -> None:
    made = tmp_path / "made-by-the-check.db"
    done = _sql(database, query.format(made=made))
    assert done.status == "failed" and done.message.startswith("the query failed: ")
    assert not made.exists()
    with contextlib.closing(sqlite3.connect(database)) as conn:
        assert conn.execute("SELECT count(*) FROM items").fetchone()[0] == 5
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_a_sql_check_never_goes_through_a_link(database: Path, tmp_path: Path) -> None:
    (tmp_path / "linked").symlink_to(database.parent)
    (tmp_path / "file-link.db").symlink_to(database)
    for path in (tmp_path / "linked" / "app.db", tmp_path / "file-link.db"):
        done = _sql(path, "SELECT count(*) FROM items", 5)
        assert done.status == "failed" and "goes through a link" in done.message


@pytest.fixture
def redirecting() -> Iterator[str]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(302)
            self.send_header("Location", "ftp://127.0.0.1/etc/passwd")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the stdlib's signature
            return None

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/health"
    finally:
        server.shutdown()


def test_a_probe_takes_a_redirect_as_its_answer_and_never_follows_it(redirecting: str) -> None:
    (probe,) = drill.probes_from([{"name": "health", "url": redirecting, "timeout": 0.5}])
    done = drill._probe(None, probe, time.monotonic)  # type: ignore[arg-type]
    assert done.status == "failed" and done.message.endswith("answered HTTP 302, not 200")
    (expecting,) = drill.probes_from([{"name": "moved", "url": redirecting, "status": 302}])
    assert drill._probe(None, expecting, time.monotonic).status == "passed"  # type: ignore[arg-type]


def test_a_set_from_the_future_fails_its_rpo_whatever_the_target() -> None:
    from .test_drill_report import _passed

    result = _passed("web-1")
    result["properties"] = {"set_started_at": "2099-01-01T00:00:00.000000Z"}
    suite = drill.suite_of(result, rpo_target=3600)
    assert suite.status == "failed"
    assert suite.failed_case is not None and suite.failed_case.message.startswith("the set says it started ")


@pytest.mark.parametrize(
    "odd",
    [
        {"steps": 5, "cases": True},
        {"started": float("nan"), "finished": float("inf")},
        {"started": 1e300, "finished": -1e12},
        {"properties": ["a"], "steps": [None, 3, {"status": "passed"}]},
    ],
)
def test_odd_results_from_a_host_make_a_failed_suite_not_a_crash(odd: dict[str, object]) -> None:
    suite = drill.suite_of({"host": "web-1", **odd})
    assert suite.status == "failed"


class _Files(Application):
    """A tree as an application at some version, always running (what the drill's restore needs of one)."""

    def __init__(self, top: str, version: str) -> None:
        self.name, self.top, self.version = "files", top, version

    def inspect(self) -> Facts:
        return Facts(self.name, self.version, [self.top])

    def stop(self, log: Log = no_log) -> bool:
        return False

    def start(self, units: list[str], timeout: float, log: Log = no_log) -> None:
        return None


def test_a_set_made_by_a_newer_version_than_the_target_runs_stops_at_compatibility(tmp_path: Path) -> None:
    tree = tmp_path / "app"
    tree.mkdir()
    (tree / "data.txt").write_text("the data\n")
    made = create([str(tree)], str(tmp_path), app="files", app_version="0.10.1")
    (tree / "data.txt").write_text("changed after the backup\n")
    options = drill.Options(restore.Options(state_dir=str(tmp_path / "state")))
    older = drill.run(_Files(str(tree), "0.9.3"), made.path, options)
    steps = [(c.name, c.status) for c in older.cases if c.kind == "step"]
    assert steps == [("verify", "passed"), ("compatibility", "failed")] + [
        (s, "skipped") for s in ("restore", "spawn", "checks")
    ]
    (failed,) = [c for c in older.cases if c.status == "failed"]
    assert failed.message == "the set was made by files 0.10.1, newer than the 0.9.3 on the target"
    assert (tree / "data.txt").read_text() == "changed after the backup\n"  # nothing was restored
    newer = drill.run(_Files(str(tree), "0.10.2"), made.path, options)
    assert newer.ok, [c for c in newer.cases if c.status == "failed"]
    assert (tree / "data.txt").read_text() == "the data\n"


@pytest.mark.parametrize(
    ("fail", "told"),
    [
        ("stop", [("restore", "failed"), ("spawn", "skipped")]),  # before anything was swapped
        ("fix_up", [("restore", "failed"), ("spawn", "skipped")]),  # swapped, put back, started again: a restore
        ("start ", [("restore", "passed"), ("spawn", "failed")]),  # the restored data would not start
    ],
)
def test_a_failure_is_told_at_the_step_it_happened_in_never_at_the_rollbacks(
    tmp_path: Path, fail: str, told: list[tuple[str, str]]
) -> None:
    from .test_engine import Recorder

    tree = tmp_path / "app"
    tree.mkdir()
    (tree / "data.txt").write_text("the data\n")
    made = create([str(tree)], str(tmp_path), app="rec", app_version="1.0")
    app = Recorder("rec", [str(tree)], fail=fail)
    done = drill.run(app, made.path, drill.Options(restore.Options(state_dir=str(tmp_path / "state"))))
    steps = [(c.name, c.status) for c in done.cases if c.kind == "step"]
    assert steps == [("verify", "passed"), ("compatibility", "passed"), *told, ("checks", "skipped")], app.calls
    assert f"failed to {fail.strip()}" in next(c.message for c in done.cases if c.status == "failed")
