"""The monthly drill's service runs what it says: its ``ExecStart=`` line, run as systemd runs it (its words, no
shell, in its working directory), is a real ``ansible-playbook`` of the collection's drill playbook that reads the
drill's variables from the file converge wrote, writes the report where they say, and exits non-zero when the drill
fails (here: the host has no set), which is what makes systemd start the failure hook."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from ansible_collections.selfhost.dr.plugins.module_utils.engine import timers
from ansible_collections.selfhost.dr.plugins.module_utils.engine.schedule import parse_drills

ROOT = Path(__file__).resolve().parents[2]


def test_the_drill_timers_service_runs_the_drill_and_fails_when_the_drill_fails(tmp_path: Path) -> None:
    ansible_playbook = Path(sys.executable).parent / "ansible-playbook"
    if not ansible_playbook.exists():
        pytest.skip("needs the test virtualenv's ansible-playbook (scripts/bootstrap)")
    empty = tmp_path / "backups"
    empty.mkdir()
    inventory = tmp_path / "inventory.yml"
    inventory.write_text(
        "all:\n  children:\n    tenement:\n      hosts:\n        web-1:\n"
        f"          ansible_connection: local\n          ansible_python_interpreter: {sys.executable}\n"
        f"          dr_backup_dir: {empty}\n"
    )
    reports = tmp_path / "reports"
    (drill,) = parse_drills(
        [
            {
                "name": "monthly",
                "inventory": str(inventory),
                "ansible_playbook": str(ansible_playbook),
                "report_dir": str(reports),
                "extra_vars": {"drill_rto_target": 900, "drill_work_dir": str(tmp_path / "work")},
            }
        ]
    )
    settings = timers.UnitSettings(
        config_path=str(tmp_path / "etc" / "config.toml"),
        backup_dir=str(tmp_path / "sets"),
        state_dir=str(tmp_path / "state"),
    )
    units = tmp_path / "units"
    units.mkdir()

    def systemctl(args: list[str]) -> subprocess.CompletedProcess[str]:  # (systemd is not PID 1 here)
        return subprocess.CompletedProcess(["systemctl", *args], 0, "", "")

    timers.converge([], settings, str(units), systemctl=systemctl, drills=[drill])
    service = (units / "selfhost-dr-drill-monthly.service").read_text()
    (exec_start,) = [line[len("ExecStart=") :] for line in service.splitlines() if line.startswith("ExecStart=")]
    (workdir,) = [line[len("WorkingDirectory=") :] for line in service.splitlines() if line.startswith("Working")]
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "ANSIBLE_COLLECTIONS_PATH": str(ROOT / ".cache" / "collections"),  # where the collection is installed
        "ANSIBLE_LOCAL_TEMP": str(tmp_path / "ansible-tmp"),
    }
    done = subprocess.run(
        shlex.split(exec_start), cwd=workdir, capture_output=True, text=True, check=False, env=env, timeout=600
    )
    assert done.returncode != 0, done.stdout[-3000:]  # the drill failed: so does the service
    report = json.loads((reports / "drill.json").read_text())
    assert report["title"] == "DR drill monthly" and report["status"] == "failed"
    (suite,) = report["suites"]
    failed = [c for c in suite["cases"] if c["status"] == "failed"]
    assert suite["name"] == "web-1" and failed[0]["name"] == "source"
    assert f"there is no tenement set of web-1 in {empty}" in failed[0]["message"]
    assert (reports / "drill.md").exists() and (reports / "drill.xml").exists()
