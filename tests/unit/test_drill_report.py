"""A drill's report from what the role measured and drill_run returned: one suite per host, the steps never reached
as skipped, RTO and RPO against their targets, written as JSON, Markdown and JUnit (drill_report)."""

from __future__ import annotations

import json
import sqlite3
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ansible_collections.selfhost.dr.plugins.module_utils.apps import tomo_export, tomo_schema
from ansible_collections.selfhost.dr.plugins.module_utils.apps.tomo import Settings, Tomo
from ansible_collections.selfhost.dr.plugins.module_utils.engine import drill
from ansible_collections.selfhost.dr.plugins.modules import drill_report

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "fixtures" / "tomo"))
import tomo_fixture

T0 = 1_795_914_000.0  # the drill's start on the controller (2026-11-29T01:00:00Z)
SET_STARTED = "2026-11-29T00:00:00.000000Z"


def _passed(host: str, seconds: float = 120.0) -> dict[str, object]:
    steps = [{"name": n, "status": "passed", "seconds": 5.0} for n in drill.ROLE_STEPS]
    cases: list[dict[str, object]] = [
        {"name": n, "kind": "step", "status": "passed", "seconds": 3} for n in drill.STEPS
    ]
    cases.insert(1, {"name": "rows", "kind": "check", "status": "passed", "seconds": None, "message": ""})
    return {
        "host": host,
        "target": f"drill-{host}",
        "started": T0,
        "finished": T0 + seconds,
        "steps": steps,
        "cases": cases,
        "properties": {"set": f"tenement-{host}-x-hot.tar.zst", "set_started_at": SET_STARTED, "instances": 2},
    }


def _failed_at_install(host: str) -> dict[str, object]:
    return {
        "host": host,
        "target": f"drill-{host}",
        "started": T0,
        "finished": T0 + 30,
        "steps": [
            {"name": "source", "status": "passed", "seconds": 4},
            {"name": "target", "status": "passed", "seconds": 2},
            {"name": "install", "status": "failed", "seconds": 9, "message": "pip could not install tenement"},
        ],
        "cases": [],
        "properties": {},
    }


def test_a_passed_drill_reports_its_rto_and_rpo_against_their_targets() -> None:
    suite = drill.suite_of(_passed("web-1", 120.0), rto_target=900, rpo_target=86400)
    assert suite.status == "passed"
    assert suite.properties["rto_seconds"] == 120.0
    assert suite.properties["rpo_seconds"] == 3600.0  # drill start minus the set's start
    targets = {c.name: c for c in suite.cases if c.kind == "target"}
    assert targets["RTO ≤ 900 s"].status == targets["RPO ≤ 86400 s"].status == "passed"


def test_a_drill_from_the_replicas_has_their_steps_and_its_rpo_from_the_last_replicated_transaction() -> None:
    result = _passed("web-1", 60.0)
    result["cases"] = [{"name": n, "kind": "step", "status": "passed", "seconds": 2} for n in drill.REPLICA_STEPS]
    result["properties"] = {"set": "replicas of web-1 in dr", "source": "replica", "instances": 2,
                            "set_started_at": "2026-11-29T00:59:58.500000Z"}  # fmt: skip
    suite = drill.suite_of(result, rpo_target=60)
    assert [c.name for c in suite.cases if c.kind == "step"] == [*drill.ROLE_STEPS, *drill.REPLICA_STEPS]
    assert suite.status == "passed" and suite.properties["rpo_seconds"] == 1.5
    result["cases"] = result["cases"][:2]  # stopped after the fetch, saying nothing: restore failed, the rest skipped
    assert [c.status for c in drill.suite_of(result).cases if c.kind == "step"][-3:] == ["failed", "skipped", "skipped"]


def test_a_missed_target_fails_the_host_with_a_sentence() -> None:
    suite = drill.suite_of(_passed("web-1", 1000.0), rto_target=900)
    assert suite.status == "failed"
    assert suite.failed_case is not None and suite.failed_case.message == "RTO was 1000 s, over its target of 900 s"


def test_a_drill_that_failed_at_install_skips_every_later_step_and_has_no_rto() -> None:
    suite = drill.suite_of(_failed_at_install("web-2"), rto_target=900)
    steps = [(c.name, c.status) for c in suite.cases if c.kind == "step"]
    assert steps == [("source", "passed"), ("target", "passed"), ("install", "failed")] + [
        (s, "skipped") for s in drill.STEPS
    ]
    assert suite.properties["rto_seconds"] is None
    (rto,) = [c for c in suite.cases if c.kind == "target"]
    assert rto.status == "skipped" and rto.message == "no RTO: the drill failed at install"


def test_a_drill_that_stopped_saying_nothing_is_a_failed_drill() -> None:
    result = _passed("web-3")
    result["cases"] = result["cases"][:2]  # type: ignore[index]  (verify and rows, then nothing)
    suite = drill.suite_of(result)
    assert suite.status == "failed"
    assert suite.failed_case is not None and suite.failed_case.name == "compatibility"


def test_hostile_results_are_made_into_cases_or_left_out_never_a_crash() -> None:
    result = _passed("web-4")
    result["cases"] = [*result["cases"], "junk", {"name": 3, "status": "exploded"}, {"status": "failed"}]  # type: ignore[list-item]
    result["properties"] = {"set": ["not", "text"], "ok": True}
    suite = drill.suite_of(result)
    assert suite.status == "failed" and suite.failed_case is not None
    assert suite.failed_case.message == "failed, saying nothing" and "set" not in suite.properties


@pytest.fixture
def run(run_module: Callable[..., dict[str, Any]]) -> Callable[..., dict[str, Any]]:
    return lambda args, check=False: run_module(drill_report, args, check)


def test_the_module_writes_one_report_for_a_fleet_and_names_the_failed_hosts(
    tmp_path: Path, run: Callable[..., dict[str, Any]]
) -> None:
    results = [_passed("web-1"), _failed_at_install("web-2"), _passed("web-0", 30.0)]
    out = run({"results": results, "dir": str(tmp_path / "report"), "rto_target": 900})
    assert out["status"] == "failed"
    assert out["failures"] == [{"host": "web-2", "case": "install", "message": "pip could not install tenement"}]
    assert [h["host"] for h in out["hosts"]] == ["web-0", "web-1", "web-2"]
    document = json.loads(Path(out["paths"]["json"]).read_text())
    assert [s["status"] for s in document["suites"]] == ["passed", "passed", "failed"]
    junit = ET.parse(out["paths"]["junit"]).getroot()  # noqa: S314 - our own output
    suites = {s.get("name"): s for s in junit.iter("testsuite")}
    assert suites["web-2"].get("failures") == "1" and suites["web-1"].get("failures") == "0"
    props = {p.get("name"): p.get("value") for p in suites["web-1"].iter("property")}
    assert props["rto_seconds"] == "120.0" and props["set"] == "tenement-web-1-x-hot.tar.zst"
    markdown = Path(out["paths"]["markdown"]).read_text()
    row = next(line for line in markdown.splitlines() if line.startswith("| web-2 "))
    assert "pip could not install tenement" in row


def test_check_mode_writes_nothing(tmp_path: Path, run: Callable[..., dict[str, Any]]) -> None:
    out = run({"results": [_passed("web-1")], "dir": str(tmp_path / "report")}, check=True)
    assert out["status"] == "passed" and not (tmp_path / "report").exists()


# -- Tomo: a fresh export of the restored database against the backup's per-category counts ----------------------


def test_the_tomo_check_compares_a_fresh_export_with_the_backups_counts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tomo_schema, "DPKG_STATUS", str(tmp_path / "no-dpkg-status"))
    database = str(tmp_path / "tomo.db")
    tomo_fixture.create(database, "source")
    counts = tomo_export.export(database, str(tmp_path), write=False)["counts"]
    app = Tomo(Settings(database=database))
    manifest: dict[str, object] = {"metadata": {"counts": counts}}
    same = drill._tomo_counts(app, manifest, time.monotonic)
    assert same.status == "passed", same.message
    with sqlite3.connect(database) as conn:
        conn.execute("DELETE FROM users WHERE id = (SELECT max(id) FROM users)")
    fewer = drill._tomo_counts(app, manifest, time.monotonic)
    assert fewer.status == "failed"
    assert (
        fewer.message
        == f"the restored database exports {counts['users'] - 1} users, the backup's export held {counts['users']}"
    )
    assert drill._tomo_counts(app, {"metadata": {}}, time.monotonic).status == "skipped"
