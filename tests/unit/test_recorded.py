"""The modules' runs (app_backup, app_restore) hold the same host lock as selfhost-dr and are recorded in the same
state.json: a playbook and a timer never run at once, and status tells the truth about both."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

import pytest

from ansible_collections.selfhost.dr.plugins.module_utils.engine import state
from ansible_collections.selfhost.dr.plugins.module_utils.engine.lock import HostLock, LockError
from ansible_collections.selfhost.dr.plugins.module_utils.engine.recorded import recorded


def _operations(directory: Path) -> dict[str, dict[str, dict[str, object]]]:
    return dict(json.loads((directory / "state.json").read_text())["operations"])


def test_a_run_is_recorded_as_attempt_and_success(tmp_path: Path) -> None:
    with recorded(str(tmp_path), "backup", "tenement") as run:
        assert _operations(tmp_path)["backup"]["last_attempt"]["finished_at"] == "", "the attempt is written first"
        run.set_path, run.set_bytes = "/b/set.tar.zst", 123
    about = _operations(tmp_path)["backup"]
    assert about["last_success"]["ok"] is True and about["last_success"]["set_bytes"] == 123
    assert about["last_attempt"] == about["last_success"] and "last_failure" not in about


def test_a_failure_is_recorded_with_its_sentence_and_raised(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), recorded(str(tmp_path), "restore", "tomo"):
        raise RuntimeError("the set does not verify")
    about = _operations(tmp_path)["restore"]
    assert about["last_failure"]["reason"] == "the set does not verify" and about["last_failure"]["exit_code"] == 1
    assert state.Store(str(tmp_path)).read()["operations"]["restore"]["last_attempt"]["ok"] is False  # type: ignore[index]


def _hold(directory: str, taken: multiprocessing.synchronize.Event, release: multiprocessing.synchronize.Event) -> None:  # type: ignore[name-defined]
    with HostLock(directory, "backup", schedule="nightly"):
        taken.set()
        release.wait(30)


def test_a_module_run_waits_for_a_timer_run_and_says_who_held_the_lock(tmp_path: Path) -> None:
    taken, release = multiprocessing.Event(), multiprocessing.Event()
    holder = multiprocessing.Process(target=_hold, args=(str(tmp_path), taken, release))
    holder.start()
    try:
        assert taken.wait(10)
        with (
            pytest.raises(LockError, match=r"backup of schedule nightly \(pid \d+.*did not run"),
            recorded(str(tmp_path), "restore", "tenement", wait=0.3),
        ):
            pytest.fail("ran while another run held the lock")
    finally:
        release.set()
        holder.join(10)
    if (tmp_path / "state.json").exists():
        assert "restore" not in _operations(tmp_path), "a run that did not run was recorded"
    with recorded(str(tmp_path), "restore", "tenement", wait=5):
        pass
    assert _operations(tmp_path)["restore"]["last_success"]["ok"] is True
