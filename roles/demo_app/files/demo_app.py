#!/usr/bin/env python3
# Copyright: selfhost.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A small tenement instance that keeps its data in SQLite (WAL mode).

Run by tenement with these environment variables (tenement.toml ``[service.X.env]``):
  PORT          port to listen on (tenement sets it)
  DEMO_DB       path of the SQLite database, e.g. "{data_dir}/{name}/{id}/app.db"
  DEMO_INSTANCE the instance's name, e.g. "{name}:{id}" (shown in answers)
  DEMO_SEED_ROWS rows written on first start when the table is empty (default 100)
  DEMO_WRITE_RATE commits per second started at boot (default 0: no writer)

HTTP:
  GET  /health               200 {"status": "ok", ...} when the database answers
  GET  /stats                rows, last id, checksum of all rows, writer state, uptime
  POST /rows?n=K             insert K rows in one transaction
  POST /writer/start?rate=R  commit one row R times a second until stopped
  POST /writer/stop          stop the writer
Standard library only, so it runs with any python3.
"""

from __future__ import annotations

import hashlib
import json
import os
import socketserver
import sqlite3
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

STARTED = time.time()
SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    created_at REAL NOT NULL,
    payload TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


def connect(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA busy_timeout = 30000")
    return conn


class Store:
    def __init__(self, path: str, instance: str) -> None:
        self.path = path
        self.instance = instance
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        self.lock = threading.Lock()
        self.conn = connect(path)
        self.conn.execute("PRAGMA journal_mode = WAL")
        self.conn.executescript(SCHEMA)
        self.conn.execute(
            "INSERT OR IGNORE INTO meta(key, value) VALUES ('instance', ?), ('created_at', ?)",
            (instance, str(time.time())),
        )

    def insert(self, count: int) -> int:
        with self.lock:
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                now = time.time()
                self.conn.executemany(
                    "INSERT INTO items(created_at, payload) VALUES (?, ?)",
                    [(now, f"{self.instance} row {os.urandom(8).hex()}") for _ in range(count)],
                )
                self.conn.execute("COMMIT")
            except BaseException:
                self.conn.execute("ROLLBACK")
                raise
            return self.count()

    def count(self) -> int:
        return int(self.conn.execute("SELECT count(*) FROM items").fetchone()[0])

    def stats(self) -> dict[str, object]:
        with self.lock:
            rows = self.conn.execute("SELECT id, payload FROM items ORDER BY id").fetchall()
            mode = self.conn.execute("PRAGMA journal_mode").fetchone()[0]
        digest = hashlib.sha256()
        for ident, payload in rows:
            digest.update(f"{ident}\t{payload}\n".encode())
        return {
            "instance": self.instance,
            "rows": len(rows),
            "last_id": rows[-1][0] if rows else 0,
            "rows_sha256": digest.hexdigest(),
            "journal_mode": mode,
        }


class Writer:
    """Commits one row ``rate`` times a second in a background thread."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.stop_event = threading.Event()
        self.thread: threading.Thread | None = None
        self.rate = 0.0
        self.commits = 0

    def start(self, rate: float) -> None:
        self.stop()
        self.rate = rate
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        interval = 1.0 / self.rate
        next_at = time.monotonic()
        while not self.stop_event.is_set():
            self.store.insert(1)
            self.commits += 1
            next_at += interval
            delay = next_at - time.monotonic()
            if delay > 0:
                self.stop_event.wait(delay)
            else:
                next_at = time.monotonic()

    def stop(self) -> None:
        if self.thread is not None:
            self.stop_event.set()
            self.thread.join(timeout=5)
            self.thread = None
        self.rate = 0.0

    def state(self) -> dict[str, object]:
        return {"running": self.thread is not None, "rate": self.rate, "commits": self.commits}


def make_handler(store: Store, writer: Writer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "selfhost-dr-demo/1"

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib signature
            return

        def _send(self, code: int, body: dict[str, object]) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _param(self, name: str, default: str) -> str:
            return parse_qs(urlparse(self.path).query).get(name, [default])[0]

        def do_GET(self) -> None:
            route = urlparse(self.path).path
            try:
                if route == "/health":
                    self._send(200, {"status": "ok", "instance": store.instance, "rows": store.count()})
                elif route == "/stats":
                    body = store.stats()
                    body.update(writer=writer.state(), uptime_secs=round(time.time() - STARTED, 3), pid=os.getpid())
                    self._send(200, body)
                else:
                    self._send(404, {"error": f"no route {route}"})
            except sqlite3.Error as exc:
                self._send(503, {"status": "error", "error": str(exc)})

        def do_POST(self) -> None:
            route = urlparse(self.path).path
            try:
                if route == "/rows":
                    count = int(self._param("n", "1"))
                    if not 1 <= count <= 1_000_000:
                        self._send(400, {"error": "n must be between 1 and 1000000"})
                        return
                    self._send(200, {"rows": store.insert(count)})
                elif route == "/writer/start":
                    rate = float(self._param("rate", "50"))
                    if not 0 < rate <= 5000:
                        self._send(400, {"error": "rate must be between 0 and 5000"})
                        return
                    writer.start(rate)
                    self._send(200, writer.state())
                elif route == "/writer/stop":
                    writer.stop()
                    self._send(200, writer.state())
                else:
                    self._send(404, {"error": f"no route {route}"})
            except ValueError as exc:
                self._send(400, {"error": str(exc)})
            except sqlite3.Error as exc:
                self._send(503, {"status": "error", "error": str(exc)})

    return Handler


class UnixHTTPServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

    def get_request(self):  # type: ignore[no-untyped-def]
        request, _ = super().get_request()
        return request, ("unix", 0)


def main() -> int:
    instance = os.environ.get("DEMO_INSTANCE", "demo")
    db_path = os.environ.get("DEMO_DB")
    if not db_path:
        print("demo_app: DEMO_DB is not set", file=sys.stderr)
        return 2
    store = Store(db_path, instance)
    seed = int(os.environ.get("DEMO_SEED_ROWS", "100"))
    if seed > 0 and store.count() == 0:
        store.insert(seed)
    writer = Writer(store)
    rate = float(os.environ.get("DEMO_WRITE_RATE", "0") or 0)
    if rate > 0:
        writer.start(rate)
    handler = make_handler(store, writer)
    port = os.environ.get("PORT")
    server: socketserver.BaseServer
    if port:
        server = ThreadingHTTPServer((os.environ.get("DEMO_BIND", "127.0.0.1"), int(port)), handler)
    else:
        sock = os.environ.get("SOCKET_PATH")
        if not sock:
            print("demo_app: neither PORT nor SOCKET_PATH is set", file=sys.stderr)
            return 2
        if os.path.exists(sock):
            os.unlink(sock)
        server = UnixHTTPServer(sock, handler)
    print(f"demo_app: {instance} serving, database {db_path}", file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    finally:
        writer.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
