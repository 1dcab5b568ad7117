#!/usr/bin/python3
"""A heartbeat receiver for the schedule scenario: every request as one JSON line in /var/log/hb.jsonl."""

import json
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LOG = "/var/log/hb.jsonl"


class Handler(BaseHTTPRequestHandler):
    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        url = urllib.parse.urlsplit(self.path)
        line = {
            "method": self.command,
            "path": url.path,
            "query": urllib.parse.parse_qs(url.query),
            "body": body.decode("utf-8", "replace"),
        }
        with open(LOG, "a", encoding="utf-8") as log:
            log.write(json.dumps(line) + "\n")
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"OK")

    do_GET = do_POST = _answer  # noqa: N815

    def log_message(self, *_args: object) -> None:
        return None


ThreadingHTTPServer(("127.0.0.1", 8099), Handler).serve_forever()
