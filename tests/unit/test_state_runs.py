"""Runs of selfhost-dr as state.json, status, the textfile and the heartbeats see them: a backup that fills the disk
(recorded, exported, pinged; the earlier set intact), a run stopped by SIGTERM, a run that finds the host lock
held, and what ``status`` says."""

from __future__ import annotations

import json
import os
import resource
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from ansible_collections.selfhost.dr.plugins.module_utils import cli
from ansible_collections.selfhost.dr.plugins.module_utils.engine import state
from ansible_collections.selfhost.dr.plugins.module_utils.engine.lock import HostLock
from ansible_collections.selfhost.dr.plugins.module_utils.sets.verify import verify

from . import test_heartbeat as hb
from .test_engine import Recorder
from .test_heartbeat import TOKEN, Hits, _beats, config_of, run_json
from .test_metrics import parse

# The fixtures of test_heartbeat: the loopback server, tenement as a Recorder, its data, the signal handlers kept.
server, app, data, _keep_signal_handlers = hb.server, hb.app, hb.data, hb._keep_signal_handlers


@contextmanager
def file_size_limit(limit: int) -> Iterator[None]:
    """Writes past ``limit`` bytes fail with EFBIG in this process and its children, as on a full disk."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)


def _state(state_dir: Path) -> dict[str, object]:
    return json.loads((state_dir / "state.json").read_text())  # type: ignore[no-any-return]


def test_a_backup_that_fills_the_disk_is_recorded_exported_and_pinged_and_the_earlier_set_stays(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    app: Recorder,
    data: Path,
    state_dir: Path,
    server: tuple[str, Hits],
) -> None:
    url, hits = server
    config = config_of(tmp_path, _beats(url))
    code, first = run_json(capsys, config, "backup", "--label", "first")
    assert code == 0
    (earlier,) = first["sets"]  # type: ignore[misc]
    (data / "big.bin").write_bytes(os.urandom(2 * 1024 * 1024))  # incompressible: the archive outgrows the limit
    hits.requests.clear()
    with file_size_limit(512 * 1024):
        code, result = run_json(capsys, config, "backup", "--label", "second", "--schedule", "nightly")
    assert code == 1, result
    reason = str(result["error"])
    assert reason and "\n" not in reason  # the compressor is killed by SIGXFSZ, or a write fails with EFBIG
    failure = _state(state_dir)["operations"]["backup"]["last_failure"]  # type: ignore[index]
    assert (failure["ok"], failure["reason"], failure["schedule"], failure["exit_code"]) == (
        False,
        reason,
        "nightly",
        1,
    )
    success = _state(state_dir)["operations"]["backup"]["last_success"]  # type: ignore[index]
    assert success["set_path"] == earlier["path"]
    got = parse((tmp_path / "prom" / "selfhost_dr.prom").read_text())
    assert got[("selfhost_dr_last_attempt_success", "backup")] == 0.0
    assert got[("selfhost_dr_last_set_bytes", "backup")] == os.stat(earlier["path"]).st_size
    assert got[("selfhost_dr_sets", "verified")] == 1.0  # the earlier one, and nothing half-written listed
    rid = result["run"]["run_id"]  # type: ignore[index]
    assert [(h[0], h[1], h[2]) for h in hits.requests[:2]] == [
        ("POST", f"/ping/{TOKEN}/start", {"rid": [rid]}),
        ("POST", f"/ping/{TOKEN}/1", {"rid": [rid]}),
    ]
    assert reason.encode() in hits.requests[1][3]
    assert verify(earlier["path"], record=False).ok
    assert sorted(p.name for p in (tmp_path / "sets").iterdir() if "second" in p.name) == []


def test_a_run_stopped_by_sigterm_is_recorded_as_interrupted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], app: Recorder, state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def stopped(facts, dest, check, log=print):  # type: ignore[no-untyped-def]
        if not check:
            os.kill(os.getpid(), signal.SIGTERM)  # the timer is stopped mid-backup
        return facts

    monkeypatch.setattr(app, "before_archive", stopped)
    code, result = run_json(capsys, config_of(tmp_path), "backup")
    assert code == 130 and result["error"] == "interrupted by SIGTERM"
    attempt = _state(state_dir)["operations"]["backup"]["last_attempt"]  # type: ignore[index]
    assert attempt["exit_code"] == 130 and attempt["reason"] == "interrupted by SIGTERM" and attempt["finished_at"]
    assert HostLock(None, "backup", 0).__enter__() is not None  # released


def test_a_run_that_finds_the_lock_held_says_by_whom_and_records_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], app: Recorder, state_dir: Path, server: tuple[str, Hits]
) -> None:
    url, hits = server
    config = config_of(tmp_path, _beats(url))
    with HostLock(None, "restore", 0, schedule="drill"):
        code, result = run_json(capsys, config, "backup", "--wait", "0.3")
    assert code == 1
    assert str(result["error"]) == (
        f"selfhost-dr restore of schedule drill (pid {os.getpid()}, since "
        f"{str(result['error']).split('since ')[1].split(')')[0]}) held the host lock {state_dir}/lock for the 0.3 s "
        "this backup waited, so it did not run"
    )
    assert not (state_dir / "state.json").exists() and hits.requests == [] and app.calls == []


def test_check_runs_take_no_lock_and_are_not_recorded(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], app: Recorder, state_dir: Path
) -> None:
    with HostLock(None, "backup", 0):
        code, _result = run_json(capsys, config_of(tmp_path), "backup", "--check")
    assert code == 0 and not (state_dir / "state.json").exists()


def test_a_schedule_name_is_checked(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, result = run_json(capsys, config_of(tmp_path), "prune", "--schedule", "a b")
    assert code == 2 and "--schedule must be a name" in str(result["error"])


def test_status_tells_the_last_success_attempt_and_failure_and_what_is_due(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], app: Recorder, data: Path, state_dir: Path
) -> None:
    config = config_of(tmp_path, "\n[schedule]\nbackup_every = 24\nverify_every = 168\n")
    assert run_json(capsys, config, "backup")[0] == 0
    app.paths = [str(data / "gone")]
    code, failed = run_json(capsys, config, "backup")
    assert code == 1
    code, status = run_json(capsys, config, "status")
    assert code == 0 and status["apps"]["tenement"]["sets"] == 1  # type: ignore[index]
    backup = status["operations"]["backup"]  # type: ignore[index]
    assert backup["last_failure"]["reason"] == failed["error"] and backup["last_attempt"]["ok"] is False
    assert backup["last_success"]["ok"] is True and backup["last_success"]["age_hours"] == 0.0
    assert backup["due"] is False and backup["overdue"] is False  # from the success, not the failed attempt
    assert status["operations"]["verify"] == {"every_hours": 168, "due": True, "overdue": True}  # type: ignore[index]
    assert status["running"] is None and status["state_problem"] == ""
    cli.main(["status", "--config", str(config)])
    text = capsys.readouterr().out
    assert f"backup: last success {backup['last_success']['finished_at']} (0.0 h ago, " in text
    assert f"last attempt {backup['last_attempt']['finished_at']} failed: {failed['error']}" in text
    assert "verify: never succeeded; OVERDUE (every 168 h)" in text


def test_status_reports_a_damaged_state_file_and_a_run_that_never_finished(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], state_dir: Path
) -> None:
    (state_dir / "state.json").write_text("{")
    code, status = run_json(capsys, config_of(tmp_path), "status")
    assert code == 0 and "is damaged" in str(status["state_problem"])
    assert (state_dir / "state.json").read_text() == "{"  # status changes nothing
    (state_dir / "state.json").unlink()
    state.Store().record(state.Run.start("prune"))  # then SIGKILLed
    cli.main(["status", "--config", str(config_of(tmp_path))])
    assert "prune: never succeeded; a run started " in capsys.readouterr().out


def test_a_state_file_that_cannot_be_written_is_a_warning_and_the_run_is_still_exported_and_pinged(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], app: Recorder, state_dir: Path, server: tuple[str, Hits]
) -> None:
    url, hits = server
    (state_dir / "state.json").mkdir()  # every write of state.json fails, as on a full disk
    code, result = run_json(capsys, config_of(tmp_path, _beats(url)), "backup")
    assert code == 0 and len(result["sets"]) == 1  # type: ignore[arg-type]
    assert any(w.startswith(f"cannot write {state_dir}/state.json") for w in result["warnings"])  # type: ignore[union-attr]
    assert [h[1] for h in hits.requests] == [f"/ping/{TOKEN}/start", f"/ping/{TOKEN}", "/api/push/PushTok3n"]
    got = parse((tmp_path / "prom" / "selfhost_dr.prom").read_text())
    assert got[("selfhost_dr_last_attempt_success", "backup")] == 1.0  # exported from what could not be saved


def test_a_wait_that_is_not_a_number_of_seconds_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for wait in ("nan", "-1"):
        code, result = run_json(capsys, config_of(tmp_path), "prune", f"--wait={wait}")
        assert code == 2 and str(result["error"]).startswith("--wait must be 0 or more seconds (inf: for ever)")


def test_status_tells_a_run_under_way_from_one_that_was_killed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], state_dir: Path
) -> None:
    run = state.Run.start("backup")
    state.Store().record(run)
    with HostLock(None, "backup", 0, schedule="nightly"):
        code, status = run_json(capsys, config_of(tmp_path), "status")
        assert code == 0 and status["running"]["operation"] == "backup"  # type: ignore[index]
        cli.main(["status", "--config", str(config_of(tmp_path))])
        assert f"backup: never succeeded; running since {run.started_at}" in capsys.readouterr().out
    cli.main(["status", "--config", str(config_of(tmp_path))])
    assert f"backup: never succeeded; a run started {run.started_at} never finished" in capsys.readouterr().out


def test_a_check_run_refuses_a_wrong_monitoring_setting_like_the_real_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = config_of(tmp_path, '\n[heartbeat]\nbackup = "ftp://example.org/x"\n')
    for args in (["backup", "--check"], ["prune", "--dry-run"], ["backup"]):
        code, result = run_json(capsys, config, *args)
        assert code == 2 and result["error"] == "[heartbeat] backup must be an http or https URL with a host"
