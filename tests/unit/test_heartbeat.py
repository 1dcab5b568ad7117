"""Heartbeats against a real HTTP server on loopback: start, success and fail pings of one run carry the same rid,
the body is the capped tail of the log, a push URL gets up or down, and an unreachable or failing URL is a warning
that never changes the exit status nor shows the URL's token."""

from __future__ import annotations

import json
import signal
import socket
import threading
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from ansible_collections.selfhost.dr.plugins.module_utils import cli
from ansible_collections.selfhost.dr.plugins.module_utils.engine import heartbeat

from .test_engine import Recorder

TOKEN = "5f1c9e2a-token-0f0f-4b4b-secretsecret"
PUSH_TOKEN = "PushTok3n"


class Hits:
    def __init__(self) -> None:
        self.requests: list[tuple[str, str, dict[str, list[str]], bytes]] = []
        self.status = 200


@pytest.fixture
def server() -> Iterator[tuple[str, Hits]]:
    hits = Hits()

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            url = urllib.parse.urlsplit(self.path)
            hits.requests.append((self.command, url.path, urllib.parse.parse_qs(url.query), body))
            self.send_response(hits.status)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"OK")

        do_GET = do_POST = _answer  # noqa: N815

        def log_message(self, *_args: object) -> None:
            return None

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", hits
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture(autouse=True)
def _keep_signal_handlers() -> Iterator[None]:
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGHUP)}
    yield
    for signum, handler in saved.items():
        signal.signal(signum, handler)


@pytest.fixture
def data(tmp_path: Path) -> Path:
    where = tmp_path / "data"
    where.mkdir()
    (where / "notes.txt").write_text("hello\n")
    return where


@pytest.fixture
def app(monkeypatch: pytest.MonkeyPatch, data: Path) -> Recorder:
    """tenement as a Recorder over ``data``: the real backup procedure and set format, no tenement."""
    recorder = Recorder("tenement", [str(data)])
    monkeypatch.setattr(cli, "application", lambda _name, _options: recorder)
    return recorder


def config_of(tmp_path: Path, extra: str = "") -> Path:
    (tmp_path / "prom").mkdir(exist_ok=True)
    path = tmp_path / "config.toml"
    path.write_text(f'backup_dir = "{tmp_path}/sets"\n\n[metrics]\ntextfile_dir = "{tmp_path}/prom"\n{extra}')
    return path


def run_json(capsys: pytest.CaptureFixture[str], config: Path, *args: str) -> tuple[int, dict[str, object]]:
    code = cli.main([*args, "--config", str(config), "--json"])
    captured = capsys.readouterr()
    assert captured.out.count("\n") == 1, captured.out
    return code, json.loads(captured.out)


def _beats(url: str, timeout: float = 5) -> str:
    return (
        f'\n[heartbeat]\nbackup = "{url}/ping/{TOKEN}"\npush = "{url}/api/push/{PUSH_TOKEN}?k=1"\ntimeout = {timeout}\n'
    )


def test_a_successful_run_pings_start_and_success_with_one_rid_and_pushes_up(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], app: Recorder, server: tuple[str, Hits]
) -> None:
    url, hits = server
    code, result = run_json(capsys, config_of(tmp_path, _beats(url)), "backup", "--schedule", "nightly")
    assert code == 0, result
    rid = result["run"]["run_id"]  # type: ignore[index]
    (start, success, push) = hits.requests
    assert start[:3] == ("POST", f"/ping/{TOKEN}/start", {"rid": [rid]})
    assert success[:3] == ("POST", f"/ping/{TOKEN}", {"rid": [rid]})
    assert success[3].endswith(b"selfhost-dr backup: ok (exit 0)\n")
    assert push[0] == "GET" and push[1] == f"/api/push/{PUSH_TOKEN}"
    assert push[2]["k"] == ["1"] and push[2]["status"] == ["up"] and push[2]["msg"] == ["ok"]
    assert int(push[2]["ping"][0]) >= 0
    assert result["heartbeats"] == [
        {"kind": kind, "to": url, "ok": True, "error": ""} for kind in ("start", "success", "push")
    ]
    assert "warnings" not in result


def test_a_failed_run_pings_its_exit_status_with_the_reason_and_pushes_down(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], app: Recorder, data: Path, server: tuple[str, Hits]
) -> None:
    url, hits = server
    app.paths = [str(data / "gone")]
    code, result = run_json(capsys, config_of(tmp_path, _beats(url)), "backup")
    assert code == 1
    rid = result["run"]["run_id"]  # type: ignore[index]
    (start, fail, push) = hits.requests
    assert start[1:3] == (f"/ping/{TOKEN}/start", {"rid": [rid]})
    assert fail[:3] == ("POST", f"/ping/{TOKEN}/1", {"rid": [rid]})
    assert fail[3].decode().endswith(f"selfhost-dr backup: {result['error']} (exit 1)\n")
    assert push[2]["status"] == ["down"] and push[2]["msg"] == [str(result["error"])[:200]]


def test_the_body_is_the_tail_of_the_log_capped_at_a_character_boundary() -> None:
    text = "".join(f"line {i} é\n" for i in range(5000))
    body = heartbeat.tail(text)
    assert len(body) <= heartbeat.BODY_CAP and len(body) > heartbeat.BODY_CAP - 4
    assert text.endswith(body.decode("utf-8"))  # whole characters, the end kept
    assert heartbeat.tail("short") == b"short"


def test_a_long_log_reaches_the_check_capped(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    app: Recorder,
    server: tuple[str, Hits],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url, hits = server
    chatty = app.before_archive

    def before_archive(facts, dest, check, log=print):  # type: ignore[no-untyped-def]
        for i in range(3000 if not check else 0):
            log(f"step {i} of a long log")
        return chatty(facts, dest, check, log)

    monkeypatch.setattr(app, "before_archive", before_archive)
    code, _result = run_json(capsys, config_of(tmp_path, _beats(url)), "backup")
    assert code == 0
    body = hits.requests[1][3]
    assert 9000 < len(body) <= heartbeat.BODY_CAP and b"step 0 of" not in body and b"step 2999 of" in body


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.parametrize("as_json", [True, False])
def test_an_unreachable_heartbeat_is_a_warning_never_a_failure_and_never_shows_the_token(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], app: Recorder, state_dir: Path, as_json: bool
) -> None:
    url = f"http://127.0.0.1:{_closed_port()}"
    config = config_of(tmp_path, _beats(url, timeout=2))
    code = cli.main(["backup", "--config", str(config), *(["--json"] if as_json else [])])
    captured = capsys.readouterr()
    assert code == 0
    shown = captured.out + captured.err
    assert TOKEN not in shown and PUSH_TOKEN not in shown and "/ping" not in shown
    assert f"start ping to {url} failed: Connection refused" in shown
    saved = (state_dir / "state.json").read_text()
    assert TOKEN not in saved and PUSH_TOKEN not in saved
    beats = json.loads(saved)["operations"]["backup"]["heartbeats"]
    assert [(b["kind"], b["ok"]) for b in beats] == [("start", False), ("success", False), ("push", False)]
    assert json.loads(saved)["operations"]["backup"]["last_success"]["ok"] is True


def test_a_check_that_answers_500_is_tried_twice_then_a_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], app: Recorder, server: tuple[str, Hits]
) -> None:
    url, hits = server
    hits.status = 500
    code, result = run_json(capsys, config_of(tmp_path, _beats(url)), "backup")
    assert code == 0
    assert [h[1] for h in hits.requests].count(f"/ping/{TOKEN}/start") == 2
    assert len(hits.requests) == 6
    assert f"heartbeat: start ping to {url} was answered with HTTP 500" in result["warnings"]  # type: ignore[operator]
    assert TOKEN not in json.dumps(result)


@pytest.mark.parametrize(
    ("table", "sentence"),
    [
        (f'backup = "ftp://hc.example/{TOKEN}"', "[heartbeat] backup must be an http or https URL with a host"),
        (f'push = "https:///{TOKEN}"', "[heartbeat] push must be an http or https URL with a host"),
        ("verify = 3", "[heartbeat] verify must be an http or https URL, not a int"),
        (f'backups = "https://hc.example/{TOKEN}"', "[heartbeat] backups is not a setting selfhost-dr knows"),
        ("timeout = 0", "[heartbeat] timeout must be more than 0 and at most 600 seconds, not 0"),
        ("timeout = nan", "[heartbeat] timeout must be more than 0 and at most 600 seconds, not nan"),
        ('timeout = "10"', "[heartbeat] timeout must be a number, not '10'"),
    ],
)
def test_a_wrong_heartbeat_setting_is_one_sentence_without_the_url(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], table: str, sentence: str
) -> None:
    code, result = run_json(capsys, config_of(tmp_path, f"\n[heartbeat]\n{table}\n"), "prune")
    assert code == 2 and str(result["error"]) == sentence
    assert TOKEN not in json.dumps(result)


def test_public_names_only_scheme_host_and_port() -> None:
    assert heartbeat.public(f"https://user:pw@hc-ping.com:8443/{TOKEN}?x=1") == "https://hc-ping.com:8443"
    assert heartbeat.public("http://[::1]/a") == "http://[::1]"


def test_each_operation_pings_its_own_check_and_every_one_the_push_url(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], server: tuple[str, Hits]
) -> None:
    url, hits = server
    extra = f'\n[retention]\nkeep_last = 3\n[heartbeat]\nbackup = "{url}/b"\nprune = "{url}/p"\npush = "{url}/push"\n'
    (tmp_path / "sets").mkdir()
    code, result = run_json(capsys, config_of(tmp_path, extra), "prune")
    assert code == 0
    rid = result["run"]["run_id"]  # type: ignore[index]
    assert [(h[1], h[2].get("rid")) for h in hits.requests] == [("/p/start", [rid]), ("/p", [rid]), ("/push", None)]
