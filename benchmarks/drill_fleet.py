#!/usr/bin/env python3
# Copyright: selfhost.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Drilling a fleet: what the controller adds per host as the fleet grows from 5 to 10 to 20 hosts (issue 15).

One tenement server with the demo instances runs in a container (as in the Molecule scenarios); its hot set is
fetched to the controller once. Then ``playbooks/drill.yml`` drills N inventory hosts that all name that set
(``drill_source=controller``), each into its own throwaway container made by the role, ``drill_parallel`` (5, the
role's default) in any one task at a time, each at its own pace, on this machine, and writes one report. For each N:

  wall            the whole ansible-playbook run
  span            from the first host's drill start to the last host's last check (the report's own times): the
                  hosts' work, sharing this machine's 2 cores
  overhead/host   (wall - span) / N: what the controller does before and after the hosts' drills (starting, the
                  report, removing the containers), per host (target: <= 1 s per host)
  work/host       the median host's own seconds from the report: its steps from making its container to its last
                  check (target, install, verify, compatibility, restore, spawn, checks)
  controller CPU  CPU seconds of ansible-playbook and its children (the podman CLI of every task, not the
                  containers' own processes), per host

Usage: benchmarks/drill_fleet.py [--work DIR] [--sizes 5,10,20] [--parallel 5]
(after scripts/bootstrap: it needs the virtualenv, the tenement wheel and podman)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VENV = ROOT / ".venv" / "bin"
SOURCE = "selfhost-dr-fleet-source"
WORK_STEPS = ("target", "install", "verify", "compatibility", "restore", "spawn", "checks")


def _env() -> dict[str, str]:
    cache = ROOT / ".cache"
    env = dict(os.environ)
    env.update(
        PATH=f"{VENV}:{env.get('PATH', '')}",
        ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"),
        ANSIBLE_COLLECTIONS_PATH=str(cache / "collections"),
        ANSIBLE_HOME=str(cache / "ansible-home"),
        ANSIBLE_LOCAL_TEMP=str(cache / "ansible-tmp"),
        CONTAINERS_CONF=str(ROOT / "tests" / "containers" / "containers.conf"),
        ANSIBLE_FORCE_COLOR="0",
    )
    return env


def _wheel() -> str:
    wheels = sorted((ROOT / ".cache" / "wheels").glob("tenement-*.whl"))
    if not wheels:
        raise SystemExit("no tenement wheel in .cache/wheels: run scripts/bootstrap first")
    return str(wheels[-1])


def _podman(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["podman", *args], env=_env(), capture_output=True, text=True, check=check)


def _playbook(work: Path, inventory: Path, playbook: Path, extra: dict[str, object], log: Path) -> tuple[int, float]:
    """Run ansible-playbook; its exit status and the CPU seconds it and its children used."""
    (work / "vars.json").write_text(json.dumps(extra))
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with log.open("w") as out:
        done = subprocess.run(
            [str(VENV / "ansible-playbook"), "-i", str(inventory), str(playbook), "-e", f"@{work / 'vars.json'}"],
            env=_env(),
            stdout=out,
            stderr=subprocess.STDOUT,
            check=False,
        )
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return done.returncode, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def _source(work: Path, image: str) -> Path:
    """The drilled server in a container, backed up hot; its set fetched to ``work/sets``."""
    _podman("rm", "--force", SOURCE, check=False)
    _podman("run", "--detach", "--name", SOURCE, "--hostname", SOURCE, "--systemd", "always", image, "/sbin/init")
    _podman("exec", SOURCE, "timeout", "60", "systemctl", "is-system-running", "--wait", check=False)
    inventory = work / "source.yml"
    inventory.write_text(
        f"all:\n  hosts:\n    {SOURCE}:\n      ansible_connection: containers.podman.podman\n"
        "      ansible_python_interpreter: /usr/bin/python3\n"
    )
    playbook = work / "source-playbook.yml"
    playbook.write_text(
        f"""---
- name: A tenement server with the demo instances, backed up hot, its set fetched to the controller
  hosts: all
  gather_facts: true
  vars_files: [{ROOT / "playbooks" / "vars" / "demo.yml"}]
  roles:
    - role: selfhost.dr.demo_app
    - role: selfhost.dr.tenement_server
    - role: selfhost.dr.backup
"""
    )
    sets = work / "sets"
    extra = {"tenement_server_wheel": _wheel(), "backup_fetch": True, "backup_fetch_dir": str(sets)}
    rc, _cpu = _playbook(work, inventory, playbook, extra, work / "source.log")
    if rc != 0:
        raise SystemExit(f"making the drilled server failed: see {work / 'source.log'}")
    return sets


def _fleet(work: Path, n: int, sets: Path, image: str, parallel: int) -> dict[str, float]:
    inventory = work / f"fleet-{n}.yml"
    hosts = "".join(f"        web-{i:02d}: {{}}\n" for i in range(1, n + 1))
    inventory.write_text(
        "all:\n  children:\n    tenement:\n      vars:\n        ansible_connection: local\n"
        f"        ansible_python_interpreter: {sys.executable}\n      hosts:\n{hosts}"
    )
    report_dir = work / f"report-{n}"
    extra = {
        "drill_source": "controller",
        "drill_source_dir": str(sets),
        "drill_set_host": SOURCE,
        "drill_image": image,
        "drill_tenement_wheel": _wheel(),
        "drill_prepare_tasks": str(ROOT / "molecule" / "drill" / "tasks" / "prepare.yml"),
        "drill_report_dir": str(report_dir),
        "drill_parallel": parallel,
    }
    started = time.monotonic()
    rc, cpu = _playbook(work, inventory, ROOT / "playbooks" / "drill.yml", extra, work / f"fleet-{n}.log")
    wall = time.monotonic() - started
    report = json.loads((report_dir / "drill.json").read_text())
    if rc != 0 or report["status"] != "passed":
        raise SystemExit(f"the drill of {n} hosts failed: see {work / f'fleet-{n}.log'} and {report_dir}/drill.md")
    work_s = [
        sum(c["seconds"] or 0 for c in s["cases"] if c["kind"] == "step" and c["name"] in WORK_STEPS)
        for s in report["suites"]
    ]
    first = min(datetime.fromisoformat(s["started"].replace("Z", "+00:00")) for s in report["suites"])
    last = max(datetime.fromisoformat(s["finished"].replace("Z", "+00:00")) for s in report["suites"])
    span = (last - first).total_seconds()
    return {
        "n": n,
        "wall": wall,
        "span": span,
        "overhead": (wall - span) / n,
        "work": statistics.median(work_s),
        "cpu": cpu / n,
        "rto": max(s["properties"]["rto_seconds"] for s in report["suites"]),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="controller overhead of a fleet drill, 5 to 20 hosts")
    parser.add_argument("--work", default="/var/tmp/selfhost-dr-bench/drill-fleet")
    parser.add_argument("--sizes", default="5,10,20")
    parser.add_argument("--parallel", type=int, default=5)
    args = parser.parse_args(argv)
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    built = subprocess.run(
        [str(ROOT / "roles" / "drill" / "files" / "build-image")], env=_env(), capture_output=True, text=True
    )
    if built.returncode != 0:
        raise SystemExit(f"building the image failed: {built.stderr[-2000:]}")
    image = built.stdout.split()[-1]
    try:
        sets = _source(work, image)
        rows = [_fleet(work, int(n), sets, image, args.parallel) for n in args.sizes.split(",")]
    finally:
        _podman("rm", "--force", "--time", "5", SOURCE, check=False)
    print(
        f"{'hosts':>5} {'wall s':>8} {'span s':>8} {'overhead/host s':>16} {'work/host s':>12} "
        f"{'controller CPU/host s':>22} {'RTO max s':>10}"
    )
    for r in rows:
        print(
            f"{r['n']:>5} {r['wall']:>8.1f} {r['span']:>8.1f} {r['overhead']:>16.2f} {r['work']:>12.1f} "
            f"{r['cpu']:>22.2f} {r['rto']:>10.1f}"
        )
    worst = max(r["overhead"] for r in rows)
    print(f"controller overhead per host: at most {worst:.2f} s (target <= 1 s) {'met' if worst <= 1 else 'MISSED'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
