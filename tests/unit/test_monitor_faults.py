"""Faults around a run that must never change its outcome or leave it unrecorded: a heartbeat endpoint that answers
garbage, a hand-edited state.json, a bug in a procedure (found by a review of the monitoring code)."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from ansible_collections.selfhost.dr.plugins.module_utils import cli
from ansible_collections.selfhost.dr.plugins.module_utils.engine import heartbeat, metrics

from .test_engine import Recorder
from .test_heartbeat import TOKEN, app, config_of, data, run_json

_ = (app, data)


@pytest.fixture
def garbage() -> Iterator[str]:
    """An endpoint that answers every request with bytes that are not HTTP (a captive portal, a broken proxy)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    stop = threading.Event()

    def serve() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _addr = listener.accept()
            except OSError:
                continue
            with conn:
                conn.recv(65536)
                conn.sendall(b"garbage\r\n\r\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(2)
        listener.close()


def test_a_ping_answered_with_garbage_is_a_warning_not_a_crash(garbage: str) -> None:
    sent = heartbeat.send(f"{garbage}/ping/{TOKEN}", "start", b"", timeout=2, tries=1)
    assert sent.error and TOKEN not in sent.error


def test_a_run_whose_heartbeat_answers_garbage_still_runs_and_succeeds(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], app: Recorder, garbage: str
) -> None:
    config = config_of(tmp_path, f'\n[heartbeat]\nbackup = "{garbage}/ping/{TOKEN}"\ntimeout = 2\n')
    code, result = run_json(capsys, config, "backup")
    assert code == 0 and result["sets"], result
    assert any("heartbeat" in w for w in result["warnings"])  # type: ignore[union-attr]
    assert TOKEN not in json.dumps(result)


def test_a_hand_edited_state_file_breaks_neither_metrics_nor_status(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], app: Recorder, state_dir: Path
) -> None:
    (state_dir / "state.json").write_text(
        json.dumps(
            {
                "format": 1,
                "operations": {
                    "verify": {
                        "last_attempt": {
                            "run_id": "r1",
                            "operation": "verify",
                            "started_at": "2026-11-20T03:00:00.000000Z",
                            "finished_at": "2026-11-20T03:00:02.000000Z",
                            "ok": False,
                            "duration_seconds": "1.5s",
                        },
                        "last_success": {"run_id": "r0", "ok": True, "started_at": "2026-11-19T03:00:00.000000Z"},
                    }
                },
            }
        )
    )
    text = metrics.render(json.loads((state_dir / "state.json").read_text()), None)
    assert 'last_duration_seconds{operation="verify"}' not in text
    code, result = run_json(capsys, config_of(tmp_path), "backup")
    assert code == 0, result
    assert cli.main(["status", "--config", str(config_of(tmp_path))]) == 0
    assert "verify:" in capsys.readouterr().out


def test_a_bug_in_a_procedure_is_one_recorded_failure(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], app: Recorder, state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*_args: object) -> dict[str, object]:
        raise TypeError("unsupported operand")

    monkeypatch.setitem(cli.COMMANDS, "prune", broken)
    code, result = run_json(capsys, config_of(tmp_path, "\n[retention]\nkeep_last = 1\n"), "prune")
    assert code == 1 and "TypeError: unsupported operand" in str(result["error"])
    about = json.loads((state_dir / "state.json").read_text())["operations"]["prune"]
    assert about["last_failure"]["finished_at"] and "TypeError" in about["last_failure"]["reason"]
