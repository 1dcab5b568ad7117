"""playbooks/fleet_migrate.yml's cumulative failure budget, with the real playbook and role: five old servers whose
pairs all fail at preflight (their tenement has no configuration; nothing is changed anywhere), in batches of one.
The play starts no batch once more pairs failed than the budget allows, counted across batches: a budget of 2 (or 40%
of five) attempts exactly three pairs, and the report lists the other two as never started; a budget of 5 attempts
every pair. Each run exits non-zero and writes one report. (A fleet whose pairs migrate is measured by
benchmarks/; the Molecule scenario migrate runs the role on real servers.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _run(
    tmp_path: Path, budget: object, playbook: str = "fleet_migrate.yml", hosts: list[str] | None = None
) -> tuple[subprocess.CompletedProcess[str], dict[str, object]]:
    inventory = tmp_path / "inventory.ini"
    lines = ["[all:vars]", "ansible_connection=local", f"ansible_python_interpreter={sys.executable}", "[fleet]"]
    lines += hosts or [f"old{n} migrate_to=new{n}" for n in range(1, 6)] + [f"new{n}" for n in range(1, 6)]
    inventory.write_text("\n".join(lines) + "\n")
    reports = tmp_path / "reports"
    variables = {
        "migrate_batches": [1],
        "migrate_failure_budget": budget,
        "migrate_report_dir": str(reports),
        "migrate_work_dir": str(tmp_path / "work"),
        "migrate_dir": str(tmp_path / "migrate"),
        "dr_tenement_config_dir": str(tmp_path / "no-tenement-here"),
        "dr_tenement_data_dir": str(tmp_path / "no-data-here"),
        "dr_tenement_server": "http://127.0.0.1:9",
    }
    env = {
        **os.environ,
        "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"),
        "ANSIBLE_COLLECTIONS_PATH": str(ROOT / ".cache" / "collections"),
        "SELFHOST_DR_STATE_DIR": str(tmp_path / "state"),
    }
    done = subprocess.run(
        [
            str(Path(sys.executable).parent / "ansible-playbook"),
            "-i",
            str(inventory),
            str(ROOT / "playbooks" / playbook),
            "-e",
            json.dumps(variables),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=600,
        check=False,
    )
    report_file = reports / "migration.json"
    assert report_file.exists(), done.stdout[-3000:] + done.stderr[-2000:]
    return done, json.loads(report_file.read_text())


@pytest.mark.parametrize(("budget", "attempted"), [(2, 3), ("40%", 3), (5, 5), (0, 1)])
def test_no_batch_starts_once_more_pairs_failed_than_the_budget_allows(
    tmp_path: Path, budget: object, attempted: int
) -> None:
    done, report = _run(tmp_path, budget)
    assert done.returncode != 0, "a fleet with failed pairs exited 0"
    outcome = {s["name"]: s["properties"]["result"] for s in report["suites"]}  # type: ignore[index]
    assert len(outcome) == 5, outcome
    tried = [f"old{n} → new{n}" for n in range(1, attempted + 1)]
    assert all(outcome[name] == "not migrated" for name in tried), outcome
    assert all(outcome[name] == "not started" for name in set(outcome) - set(tried)), outcome
    first = next(s for s in report["suites"] if s["name"] == "old1 → new1")  # type: ignore[union-attr]
    preflight = next(c for c in first["cases"] if c["name"] == "preflight")
    assert preflight["status"] == "failed" and "tenement" in preflight["message"], preflight


def test_an_old_server_that_cannot_be_reached_is_a_failed_preflight_in_the_report(tmp_path: Path) -> None:
    """Left to Ansible, an unreachable host leaves the play and its pair the report; here it fails its phase."""
    away = "ansible_connection=ssh ansible_host=127.0.0.1 ansible_port=9 ansible_ssh_common_args='-o ConnectTimeout=3'"
    hosts = [f"old1 migrate_to=new1 {away}", "old2 migrate_to=new2", "new1", "new2"]
    done, report = _run(tmp_path, 0, "migrate.yml", hosts)
    assert done.returncode != 0
    suites = {s["name"]: s for s in report["suites"]}  # type: ignore[index]
    assert set(suites) == {"old1 → new1", "old2 → new2"}, suites
    away_pair = suites["old1 → new1"]
    assert away_pair["properties"]["result"] == "not migrated"
    preflight = next(c for c in away_pair["cases"] if c["name"] == "preflight")
    assert preflight["status"] == "failed" and "old1 could not be reached" in preflight["message"], preflight
    assert suites["old2 → new2"]["properties"]["result"] == "not migrated"  # (no tenement here: its own reason)
