"""playbooks/drill.yml as a CI job sees it when hosts cannot be drilled: every host unreachable still gives a report
(each host failed at ``source`` with the sentence why) and a non-zero exit; no container is made."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_unreachable_hosts_each_fail_at_source_and_the_report_is_written(tmp_path: Path) -> None:
    inventory = tmp_path / "inventory.yml"
    hosts = "".join(
        f"        {name}:\n          ansible_host: 127.0.0.1\n          ansible_port: 1\n"
        for name in ("web-1", "web-2")
    )
    inventory.write_text(
        "all:\n  children:\n    tenement:\n      vars:\n        ansible_connection: ssh\n"
        f"        ansible_python_interpreter: {sys.executable}\n      hosts:\n{hosts}"
    )
    reports = tmp_path / "reports"
    env = {
        **os.environ,
        "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"),
        "ANSIBLE_COLLECTIONS_PATH": str(ROOT / ".cache" / "collections"),
        "ANSIBLE_HOST_KEY_CHECKING": "False",
    }
    done = subprocess.run(
        [
            str(Path(sys.executable).parent / "ansible-playbook"),
            "-i",
            str(inventory),
            str(ROOT / "playbooks" / "drill.yml"),
            "-e",
            json.dumps({"drill_report_dir": str(reports), "drill_work_dir": str(tmp_path / "work")}),
        ],
        capture_output=True,
        text=True,
        check=False,
        env=env,
        timeout=300,
    )
    assert done.returncode != 0, done.stdout[-3000:]
    report = json.loads((reports / "drill.json").read_text())
    assert report["status"] == "failed" and [s["name"] for s in report["suites"]] == ["web-1", "web-2"]
    for suite in report["suites"]:
        failed = [c for c in suite["cases"] if c["status"] == "failed"]
        assert failed[0]["name"] == "source" and "could not be reached" in failed[0]["message"], failed
        assert {c["name"] for c in suite["cases"] if c["status"] == "skipped"} >= {"target", "install", "restore"}
    assert "the drill failed on web-1, web-2" in done.stdout
