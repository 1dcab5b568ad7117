"""A drill recorded where the set lives (drill_record): the set shows as drilled while it is the file drilled, the
host's state.json keeps the last drill per application, and the textfile exports it."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ansible_collections.selfhost.dr.plugins.module_utils.engine import metrics, state
from ansible_collections.selfhost.dr.plugins.module_utils.sets.catalog import catalog, remove_set
from ansible_collections.selfhost.dr.plugins.module_utils.sets.create import create
from ansible_collections.selfhost.dr.plugins.modules import drill_record

from .test_metrics import parse


@pytest.fixture
def made(tmp_path: Path) -> str:
    tree = tmp_path / "app"
    tree.mkdir()
    (tree / "a.txt").write_text("a\n")
    backups = tmp_path / "backups"
    backups.mkdir()
    return create([str(tree)], str(backups), app="tenement").path


@pytest.fixture
def run(run_module: Callable[..., dict[str, Any]], tmp_path: Path) -> Callable[..., dict[str, Any]]:
    def record(args: dict[str, object], check: bool = False) -> dict[str, Any]:
        return run_module(drill_record, {"app": "tenement", "state_dir": str(tmp_path / "state"), **args}, check)

    return record


def test_a_passed_drill_marks_the_set_and_is_exported(
    made: str, run: Callable[..., dict[str, Any]], tmp_path: Path
) -> None:
    out = run({"path": made, "ok": True, "rto_seconds": 48.2, "rpo_seconds": 3605})
    assert out["marked"] is True and out["drilled"]["ok"] is True
    (entry,) = catalog(str(Path(made).parent))
    drilled = entry["verification"]["drilled"]  # type: ignore[index]
    assert drilled["ok"] is True and drilled["rto_seconds"] == 48.2 and drilled["rpo_seconds"] == 3605
    recorded = json.loads((tmp_path / "state" / "state.json").read_text())
    assert recorded["drills"]["tenement"]["last_success"]["set"] == made
    samples = parse(metrics.render(state.Store(str(tmp_path / "state")).read(), [entry]))
    assert samples[("selfhost_dr_drill_last_attempt_success", "tenement")] == 1.0
    assert samples[("selfhost_dr_drill_rto_seconds", "tenement")] == 48.2
    assert samples[("selfhost_dr_drill_rpo_seconds", "tenement")] == 3605.0


def test_a_failed_drill_after_a_passed_one_keeps_the_last_figures_and_says_it_failed(
    made: str, run: Callable[..., dict[str, Any]], tmp_path: Path
) -> None:
    run({"path": made, "ok": True, "rto_seconds": 40, "rpo_seconds": 100})
    run({"path": made, "ok": False, "reason": "instance demo:alpha is not healthy after 60 s"})
    (entry,) = catalog(str(Path(made).parent))
    drilled = entry["verification"]["drilled"]  # type: ignore[index]
    assert drilled["ok"] is False and drilled["reason"] == "instance demo:alpha is not healthy after 60 s"
    samples = parse(metrics.render(state.Store(str(tmp_path / "state")).read(), [entry]))
    assert samples[("selfhost_dr_drill_last_attempt_success", "tenement")] == 0.0
    assert samples[("selfhost_dr_drill_rto_seconds", "tenement")] == 40.0


def test_a_set_changed_since_its_drill_is_not_shown_as_drilled(made: str, run: Callable[..., dict[str, Any]]) -> None:
    run({"path": made, "ok": True, "rto_seconds": 40})
    with open(made, "ab") as handle:
        handle.write(b"\0")
    (entry,) = catalog(str(Path(made).parent))
    assert "drilled" not in entry["verification"]  # type: ignore[operator]


def test_a_set_pruned_before_the_record_is_not_marked_and_the_drill_still_recorded(
    made: str, run: Callable[..., dict[str, Any]], tmp_path: Path
) -> None:
    remove_set(made)
    out = run({"path": made, "ok": True, "rto_seconds": 40})
    assert out["marked"] is False and "not marked" in out["reason"]
    assert not os.path.exists(made + ".drilled.json")
    recorded = json.loads((tmp_path / "state" / "state.json").read_text())
    assert recorded["drills"]["tenement"]["last_attempt"]["ok"] is True


def test_the_marker_goes_with_its_set_when_the_set_is_removed(made: str, run: Callable[..., dict[str, Any]]) -> None:
    run({"path": made, "ok": True, "state": False})
    assert os.path.exists(made + ".drilled.json")
    remove_set(made)
    assert not os.path.exists(made + ".drilled.json")


def test_a_state_json_with_drills_that_are_not_an_object_is_damaged(tmp_path: Path) -> None:
    (tmp_path / "state.json").write_text(json.dumps({"format": state.FORMAT, "operations": {}, "drills": [1]}))
    store = state.Store(str(tmp_path))
    store.read()
    assert "drills" in store.problem


def test_a_set_whose_checksum_changed_since_the_drill_is_not_marked(
    made: str, run: Callable[..., dict[str, Any]]
) -> None:
    out = run({"path": made, "ok": True, "sha256": "0" * 64})
    assert out["marked"] is False and "not the file that was drilled" in out["reason"]
    assert not os.path.exists(made + ".drilled.json")


def test_a_failed_drill_of_a_damaged_copy_is_recorded_as_failed(made: str, run: Callable[..., dict[str, Any]]) -> None:
    out = run({"path": made, "ok": False, "reason": "sha256 differs", "sha256": "0" * 64, "state": False})
    assert out["marked"] is True
    (entry,) = catalog(str(Path(made).parent))
    assert entry["verification"]["drilled"]["ok"] is False  # type: ignore[index]
