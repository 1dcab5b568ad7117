"""state.json and the host lock: a round trip, a damaged file kept aside, 'due' from the last success only, and one
lock per host that a second run waits for, names the holder of, and gets back when the holder is SIGKILLed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from datetime import timedelta
from pathlib import Path

import pytest

from ansible_collections.selfhost.dr.plugins.module_utils._common import iso, parse_iso
from ansible_collections.selfhost.dr.plugins.module_utils.engine import state
from ansible_collections.selfhost.dr.plugins.module_utils.engine.lock import HostLock, LockError, held

ROOT = Path(__file__).resolve().parents[2]


def _finished(operation: str, code: int, reason: str = "", **facts: object) -> state.Run:
    run = state.Run.start(operation, schedule="nightly", app="tenement")
    for key, value in facts.items():
        setattr(run, key, value)
    run.finish(code, reason)
    return run


def test_a_run_is_recorded_as_attempt_then_success_or_failure_and_read_back(state_dir: Path) -> None:
    store = state.Store()
    ok = _finished("backup", 0, set_path="/b/x.tar.zst", set_bytes=1234, sets=1)
    store.record(ok)
    bad = _finished("backup", 1, "the disk is full")
    store.record(bad)
    data = state.Store().read()
    assert state.last(data, "backup", "last_success") == {**ok.__dict__}
    assert state.last(data, "backup", "last_attempt") == state.last(data, "backup", "last_failure")
    failure = state.last(data, "backup", "last_failure")
    assert failure is not None
    assert (failure["ok"], failure["reason"], failure["exit_code"], failure["schedule"]) == (
        False,
        "the disk is full",
        1,
        "nightly",
    )
    assert state.last(data, "verify", "last_attempt") is None
    assert (state_dir / "state.json").stat().st_mode & 0o777 == 0o644


def test_an_attempt_is_recorded_when_it_starts_and_one_killed_stays_unfinished(state_dir: Path) -> None:
    store = state.Store()
    store.record(_finished("prune", 0))
    killed = state.Run.start("prune")
    store.record(killed)  # the run is SIGKILLed here: nothing else is written
    data = store.read()
    attempt = state.last(data, "prune", "last_attempt")
    assert attempt is not None and attempt["finished_at"] == "" and attempt["run_id"] == killed.run_id
    success = state.last(data, "prune", "last_success")
    assert success is not None and success["run_id"] != killed.run_id


@pytest.mark.parametrize(
    "blob",
    [b"{not json", b"[]", b'{"format": 1, "operations": {"backup": {"last_success": {"ok": 1}}}}', b"\xff\xfe"],
)
def test_a_damaged_state_file_is_kept_aside_and_reported_never_deleted(state_dir: Path, blob: bytes) -> None:
    path = state_dir / "state.json"
    path.write_bytes(blob)
    store = state.Store()
    assert store.read()["operations"] == {}
    assert "is damaged" in store.problem and path.read_bytes() == blob  # a reader changes nothing
    store.record(_finished("verify", 0))
    assert "kept as" in store.problem
    (aside,) = state_dir.glob("state.json.damaged-*")
    assert aside.read_bytes() == blob
    assert state.last(state.Store().read(), "verify", "last_success") is not None


def test_a_state_too_large_to_read_back_is_not_written_and_the_previous_one_stays(state_dir: Path) -> None:
    store = state.Store()
    store.record(_finished("backup", 0))
    before = (state_dir / "state.json").read_bytes()
    lags = [{"database": f"/srv/db{i:06d}.db", "lag_seconds": i, "reason": "x" * 40} for i in range(60_000)]
    with pytest.raises(state.StateError, match=r"it would be [0-9.]+ MiB, more than the 4 MiB it is read back with"):
        store.record_replicas("tenement", {"at": "2026-11-30T00:00:00Z", "ok": True, "lags": lags})
    assert (state_dir / "state.json").read_bytes() == before
    reader = state.Store()
    assert state.last(reader.read(), "backup", "last_success") is not None and reader.problem == ""
    store.record(_finished("verify", 0))  # the next run records as before
    assert state.last(state.Store().read(), "verify", "last_success") is not None


def test_due_counts_from_the_last_success_never_from_the_last_attempt(state_dir: Path) -> None:
    store = state.Store()
    assert state.due(store.read(), "backup", 3600) is True  # never succeeded
    success = _finished("backup", 0)
    store.record(success)
    started = parse_iso(success.started_at)
    assert state.due(store.read(), "backup", 3600, started + timedelta(minutes=59)) is False
    assert state.due(store.read(), "backup", 3600, started + timedelta(minutes=61)) is True
    later = iso(started + timedelta(minutes=30))
    failed = state.Run(run_id="f", operation="backup", started_at=later)
    failed.finish(1, "it failed", when=started + timedelta(minutes=31))
    store.record(failed)  # a failed attempt 30 minutes later does not postpone it ...
    assert state.due(store.read(), "backup", 3600, started + timedelta(minutes=61)) is True
    store.record(state.Run(run_id="k", operation="backup", started_at=later))  # ... nor does one that never finished
    assert state.due(store.read(), "backup", 3600, started + timedelta(minutes=61)) is True
    assert store.due("backup", 3600, started + timedelta(minutes=59)) is False


def _holder(state_dir: Path, operation: str = "backup", hold: float = 60) -> subprocess.Popen[str]:
    code = textwrap.dedent(
        f"""
        import sys, time
        from ansible_collections.selfhost.dr.plugins.module_utils.engine.lock import HostLock
        with HostLock(None, {operation!r}, 0, schedule="nightly"):
            print("held", flush=True)
            time.sleep({hold})
        """
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT / ".cache" / "collections"), SELFHOST_DR_STATE_DIR=str(state_dir))
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_run_that_cannot_wait_says_who_holds_the_lock(state_dir: Path) -> None:
    proc = _holder(state_dir)
    try:
        assert held() is not None and held()["pid"] == proc.pid  # type: ignore[index]
        started = time.monotonic()
        with pytest.raises(LockError) as caught, HostLock(None, "prune", 0.6):
            pytest.fail("took a lock another process holds")
        assert time.monotonic() - started >= 0.6
        sentence = str(caught.value)
        assert f"pid {proc.pid}" in sentence and "selfhost-dr backup of schedule nightly" in sentence
        assert "this prune waited, so it did not run" in sentence and "\n" not in sentence
        with pytest.raises(LockError, match="so this verify did not run"), HostLock(None, "verify", 0):
            pass
    finally:
        proc.kill()
        proc.wait()


def test_a_second_run_waits_for_the_first_to_finish(state_dir: Path) -> None:
    proc = _holder(state_dir, hold=1.0)
    try:
        lines: list[str] = []
        started = time.monotonic()
        with HostLock(None, "prune", 30, log=lines.append):
            waited = time.monotonic() - started
            assert json.loads((state_dir / "lock").read_text())["pid"] == os.getpid()
        assert 0.3 < waited < 20
        assert lines and f"pid {proc.pid}" in lines[0] and lines[0].startswith("waiting for up to 30 s")
        assert (state_dir / "lock").read_text() == ""  # released: the holder's facts are gone with it
    finally:
        proc.wait()


def test_the_kernel_releases_the_lock_of_a_killed_holder(state_dir: Path) -> None:
    proc = _holder(state_dir)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert held() is None
    with HostLock(None, "backup", 0):  # no stale lock to clean up, no waiting
        assert held() is not None


def test_the_dr_status_module_returns_state_and_sets_and_changes_nothing(state_dir: Path, tmp_path: Path) -> None:
    store = state.Store()
    store.record(_finished("backup", 1, "the disk is full"))
    args = tmp_path / "args.json"
    args.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": {"path": str(tmp_path / "none"), "_ansible_check_mode": True}}))
    env = dict(os.environ, PYTHONPATH=str(ROOT / ".cache" / "collections"), SELFHOST_DR_STATE_DIR=str(state_dir))
    before = (state_dir / "state.json").read_bytes()
    done = subprocess.run(
        [sys.executable, "-m", "ansible_collections.selfhost.dr.plugins.modules.dr_status", str(args)],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    result = json.loads(done.stdout)
    assert result["changed"] is False and result["running"] is None and result["state_problem"] == ""
    assert result["operations"]["backup"]["last_failure"]["reason"] == "the disk is full"
    assert result["sets"] == {
        "count": 0,
        "states": {"verified": 0, "unverified": 0, "failed": 0, "changed": 0},
        "latest": {},
    }
    assert (state_dir / "state.json").read_bytes() == before
