#!/usr/bin/env python3
# Copyright: selfhost.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Migrating a fleet: 10 pairs of servers in batches, within a failure budget, on this 2-core machine (issue 16).

Each pair is two systemd containers of the image every Molecule scenario runs (tests/containers/build-image), made
as molecule/migrate makes its platforms (``podman run --systemd always IMAGE /sbin/init``, named ``mfleet-*``) and
prepared with the collection's own roles as molecule/migrate/converge.yml does: the old server runs tenement with
the demo instances (roles demo_app and tenement_server, playbooks/vars/demo.yml; small data: 100 seed rows each, a
writer committing --rate rows a second in each instance), the new server has tenement and no instance. A new server
made to fail has a broken release of the demo application (role demo_app's ``demo_app_broken``: its program is
there, so the preflight passes, but it exits at once), so no instance can start there and its pair rolls back at
sync, after its freeze (the scenario's third pair). Then ``playbooks/fleet_migrate.yml`` migrates them in batches
[1, 3, "100%"] with a failure budget of 1, twice, on fresh pairs each time:

  run 1  one pair of the second batch fails: 1 failure is within the budget, so every batch starts; the report must
         say 9 ``migrated`` and 1 ``rolled back``, and the playbook must exit non-zero
  run 2  two pairs of the second batch fail: 2 failures exceed the budget, so the third batch never starts; the
         report must say ``migrated`` for the first batch and the second batch's third pair, ``rolled back`` for
         the two failed ones and ``not started`` for every pair of the third batch, no more and no fewer

After each run the servers themselves are read (selfhost.dr.tenement_info, as molecule/migrate/verify.yml does) to
check the report: a migrated pair's new server runs the three instances healthy and its old one is stopped, a
rolled back pair's old server serves them again and its new one is stopped, a pair never started still serves from
its old server with nothing running on its new one. The cutover hook must have run for the migrated pairs only.

Printed for each run:

  setup           making the 2N containers (podman run, systemd up) and preparing them (the roles' playbook),
                  separately: what fresh pairs cost before each run
  wall            the whole ansible-playbook run of playbooks/fleet_migrate.yml
  span            from the first pair's start to the last started pair's finish (the report's own times; a pair
                  never started has no times of its own): the pairs' work, batches one after another
  overhead/pair   (wall - span) / pairs started: what the controller adds before the first pair and after the last
                  (starting ansible, finding the old servers, the report)
  CPU/pair        CPU seconds of ansible-playbook and its children (the podman CLI of every task, not the
                  containers' own processes) / pairs started
  downtime        the median migrated pair's downtime_seconds from the report (freeze to the new server serving),
                  and the largest of every pair that has one (a rolled back pair's: freeze to the old one serving)
  teardown        removing the 2N containers

Exit status 0 only when every check passed.

Usage: benchmarks/migrate_fleet.py [--work DIR] [--pairs 10] [--rate 5] [--keep]
(after scripts/bootstrap: it needs the virtualenv, the tenement wheel, podman and the base image)
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
PREFIX = "mfleet-"
BATCHES: list[object] = [1, 3, "100%"]
BUDGET = 1
INSTANCES = ["demo:alpha", "demo:beta", "demo:gamma"]


def _env(collections: Path) -> dict[str, str]:
    cache = ROOT / ".cache"
    env = dict(os.environ)
    env.update(
        PATH=f"{VENV}:{env.get('PATH', '')}",
        ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"),
        ANSIBLE_COLLECTIONS_PATH=str(collections),
        ANSIBLE_HOME=str(cache / "ansible-home"),
        ANSIBLE_LOCAL_TEMP=str(cache / "ansible-tmp"),
        CONTAINERS_CONF=str(ROOT / "tests" / "containers" / "containers.conf"),
        ANSIBLE_FORCE_COLOR="0",
    )
    return env


def _snapshot(work: Path) -> tuple[Path, Path]:
    """A copy of the checkout as it is now (uncommitted changes included) as the collection selfhost.dr: the
    checkout is being edited while this runs, and every pair of both runs must run the same code. Returns the
    collections path and the copy's root."""
    collections = work / "collections"
    copy = collections / "ansible_collections" / "selfhost" / "dr"
    ignore = shutil.ignore_patterns(".venv", ".cache", ".git", ".ruff_cache", "__pycache__", ".pytest_cache")
    shutil.copytree(ROOT, copy, ignore=ignore, symlinks=True)
    return collections, copy


def _checkout_state() -> str:
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    status = subprocess.run(
        ["git", "-C", str(ROOT), "--no-optional-locks", "status", "--porcelain", "--untracked-files=no"],
        capture_output=True,
        text=True,
    )
    changed = [line[3:] for line in status.stdout.splitlines()]
    return head.stdout.strip() + (f" with uncommitted changes to {', '.join(changed)}" if changed else "")


def _wheel() -> str:
    wheels = sorted((ROOT / ".cache" / "wheels").glob("tenement-*.whl"))
    if not wheels:
        raise SystemExit("no tenement wheel in .cache/wheels: run scripts/bootstrap first")
    return str(wheels[-1])


class Bench:
    def __init__(self, work: Path, pairs: int, rate: float) -> None:
        self.work = work
        self.n = pairs
        self.rate = rate
        self.collections, self.copy = _snapshot(work)
        self.env = _env(self.collections)
        self.old = [f"{PREFIX}old{i:02d}" for i in range(1, pairs + 1)]
        self.new = [f"{PREFIX}new{i:02d}" for i in range(1, pairs + 1)]
        self.failures: list[str] = []

    # -- podman and ansible --------------------------------------------------------------------------------------
    def podman(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["podman", *args], env=self.env, capture_output=True, text=True, check=check)

    def playbook(self, inventory: Path, playbook: Path, extra: dict[str, object], name: str) -> tuple[int, float]:
        """Run ansible-playbook; its exit status and the CPU seconds it and its children used."""
        extra_file = self.work / f"{name}-vars.json"
        extra_file.write_text(json.dumps(extra))
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        with (self.work / f"{name}.log").open("w") as out:
            done = subprocess.run(
                [str(VENV / "ansible-playbook"), "-i", str(inventory), str(playbook), "-e", f"@{extra_file}"],
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                check=False,
            )
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        return done.returncode, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)

    def check(self, ok: bool, what: str) -> bool:
        print(f"  [{'ok' if ok else 'FAILED'}] {what}", flush=True)
        if not ok:
            self.failures.append(what)
        return ok

    # -- the pairs -----------------------------------------------------------------------------------------------
    def inventory(self, run: str, broken: list[int]) -> Path:
        """Old servers first, in order (fleet_migrate.yml's batches follow the inventory's order)."""
        lines = [
            "all:",
            "  vars:",
            "    ansible_connection: containers.podman.podman",
            "    ansible_python_interpreter: /usr/bin/python3",
            "  children:",
            "    old:",
            "      hosts:",
        ]
        lines += [f"        {o}: {{migrate_to: {n}}}" for o, n in zip(self.old, self.new, strict=True)]
        lines += ["    new:", "      hosts:"]
        lines += [f"        {n}: {{}}" for n in self.new]
        lines += ["    broken:", "      hosts:" + ("" if broken else " {}")]
        lines += [f"        {self.new[i]}: {{}}" for i in broken]
        path = self.work / f"{run}-inventory.yml"
        path.write_text("\n".join(lines) + "\n")
        return path

    def remove(self) -> float:
        """Remove this benchmark's containers (only those, by name), in one podman command."""
        started = time.monotonic()
        self.podman("rm", "--force", "--ignore", "--time", "5", *self.old, *self.new, check=False)
        return time.monotonic() - started

    def create(self, image: str) -> float:
        started = time.monotonic()
        self.remove()
        for name in [*self.old, *self.new]:
            self.podman(
                "run", "--detach", "--name", name, "--hostname", name, "--systemd", "always", image, "/sbin/init"
            )
        for name in [*self.old, *self.new]:
            self.podman("exec", name, "timeout", "90", "systemctl", "is-system-running", "--wait", check=False)
        return time.monotonic() - started

    def prepare(self, run: str, inventory: Path) -> tuple[float, float]:
        """molecule/migrate/converge.yml's preparation: the old servers with tenement and the demo instances, each
        instance's writer started; the new ones with tenement and no instance, the demo code (a broken release on the
        broken ones)."""
        playbook = self.work / "prepare.yml"
        demo = self.copy / "playbooks" / "vars" / "demo.yml"
        playbook.write_text(
            f"""---
- name: Tenement on every server, the demo instances on the old ones, the demo code broken on the broken new ones
  hosts: old:new
  gather_facts: true
  strategy: free
  vars_files: [{demo}]
  tasks:
    - name: The demo application's code (a broken release on a new server that must fail to start it)
      ansible.builtin.include_role:
        name: selfhost.dr.demo_app
      vars:
        demo_app_broken: "{{{{ 'broken' in group_names }}}}"

    - name: Tenement (a new server starts with no instances; the migration brings the old one's)
      ansible.builtin.include_role:
        name: selfhost.dr.tenement_server
      vars:
        tenement_server_instances: "{{{{ demo_instances if 'old' in group_names else [] }}}}"

- name: Every instance of the old servers writes
  hosts: old
  gather_facts: false
  tasks:
    - name: Look at the old server
      selfhost.dr.tenement_info:
        config: /etc/tenement/tenement.toml
        tenement_data_dir: /var/lib/tenement
        tenement_server: http://127.0.0.1:8080
      register: before

    - name: Start each instance's writer
      ansible.builtin.uri:
        url: http://{{{{ before.instances[item].listen }}}}/writer/start?rate={{{{ writer_rate }}}}
        method: POST
      loop: "{{{{ before.running }}}}"
      when: writer_rate | float > 0
      changed_when: true
"""
        )
        started = time.monotonic()
        extra = {"tenement_server_wheel": _wheel(), "demo_instances": INSTANCES, "writer_rate": self.rate}
        rc, cpu = self.playbook(inventory, playbook, extra, f"{run}-prepare")
        if rc != 0:
            raise SystemExit(f"preparing the pairs failed: see {self.work / f'{run}-prepare.log'}")
        return time.monotonic() - started, cpu

    def servers_as_reported(self, run: str, inventory: Path, expect: dict[str, str]) -> int:
        """Read both servers of every pair and check them against the report's outcome (verify.yml's checks)."""
        playbook = self.work / "servers.yml"
        playbook.write_text(
            f"""---
- name: Each pair's servers are as the report says
  hosts: old
  gather_facts: false
  vars:
    expect: "{{{{ mfleet_expect[inventory_hostname] }}}}"
    serving: "{{{{ new_info if expect == 'migrated' else old_info }}}}"
  tasks:
    - name: Look at the old server
      selfhost.dr.tenement_info: &info
        config: /etc/tenement/tenement.toml
        tenement_data_dir: /var/lib/tenement
        tenement_server: http://127.0.0.1:8080
      register: old_info

    - name: Look at the new server
      selfhost.dr.tenement_info: *info
      delegate_to: "{{{{ migrate_to }}}}"
      register: new_info

    - name: The server that should serve runs every instance healthy; the other one as the outcome leaves it
      ansible.builtin.assert:
        that:
          - serving.reachable
          - serving.running | sort == {INSTANCES}
          - serving.instances.values() | map(attribute='health') | unique == ['healthy']
          - (not old_info.reachable) if expect == 'migrated' else true
          - (not new_info.reachable) if expect == 'rolled back' else true
          - (new_info.running | default([]) | length == 0) if expect == 'not started' else true
        fail_msg: "{{{{ inventory_hostname }}}} ({{{{ expect }}}}): old {{{{ old_info }}}}, new {{{{ new_info }}}}"
        quiet: true
"""
        )
        rc, _cpu = self.playbook(inventory, playbook, {"mfleet_expect": expect}, f"{run}-servers")
        return rc

    # -- one run -------------------------------------------------------------------------------------------------
    def batches(self) -> list[list[int]]:
        """The pairs' indexes in each batch of BATCHES ([1, 3, "100%"]: the rest)."""
        return [[0], list(range(1, 4)), list(range(4, self.n))]

    def run(self, label: str, image: str, broken: list[int], expect: dict[str, str]) -> dict[str, float]:
        print(f"{label}: pairs {', '.join(self.old[i][len(PREFIX) :] for i in broken)} made to fail", flush=True)
        inventory = self.inventory(label, broken)
        create_s = self.create(image)
        prepare_s, prepare_cpu = self.prepare(label, inventory)
        print(f"  setup: containers {create_s:.1f} s, prepare {prepare_s:.1f} s (CPU {prepare_cpu:.1f} s)", flush=True)
        report_dir = self.work / f"{label}-report"
        cutover = self.work / f"{label}-cutover"
        cutover.mkdir()
        extra = {
            "migrate_batches": BATCHES,
            "migrate_failure_budget": BUDGET,
            "migrate_report_dir": str(report_dir),
            "migrate_work_dir": str(self.work / f"{label}-migrate-work"),
            "migrate_cutover_command": ["touch", f"{cutover}/{{{{ inventory_hostname }}}}"],
            "migrate_post_verify_urls": [{"url": "http://127.0.0.1:8080/health", "timeout": 20}],
        }
        started = time.monotonic()
        rc, cpu = self.playbook(inventory, self.copy / "playbooks" / "fleet_migrate.yml", extra, f"{label}-fleet")
        wall = time.monotonic() - started
        log = self.work / f"{label}-fleet.log"
        report_path = report_dir / "migration.json"
        if not self.check(report_path.is_file(), f"the report was written ({report_path})"):
            raise SystemExit(f"no report: see {log}")
        report = json.loads(report_path.read_text())
        by_old = {s["properties"]["old"]: s for s in report["suites"]}
        got = {o: by_old[o]["properties"]["result"] if o in by_old else "missing" for o in self.old}
        counts = {r: sum(1 for v in got.values() if v == r) for r in sorted(set(got.values()))}
        print(f"  report: {', '.join(f'{c} {r}' for r, c in counts.items())}", flush=True)
        self.check(rc != 0, f"the playbook exited non-zero ({rc}) as a pair did not migrate")
        self.check(len(report["suites"]) == self.n, f"the report has one row per pair ({len(report['suites'])})")
        wrong = [f"{o}: {got[o]}, not {expect[o]}" for o in self.old if got[o] != expect[o]]
        self.check(not wrong, "each pair's outcome as expected" + (f" ({'; '.join(wrong)})" if wrong else ""))
        failed_phases = {by_old[self.old[i]]["properties"].get("failed_phase") for i in broken}
        self.check(
            failed_phases == {"sync"},
            f"the failed pairs failed after their freeze, at {', '.join(map(str, failed_phases))}",
        )
        hooks = sorted(p.name for p in cutover.iterdir())
        self.check(
            hooks == sorted(o for o in self.old if expect[o] == "migrated"),
            f"the cutover hook ran for the migrated pairs only ({len(hooks)})",
        )
        servers = self.servers_as_reported(label, inventory, expect)
        self.check(
            servers == 0,
            "every pair's servers are as reported (migrated: new serves, old stopped; rolled back: old serves again,"
            " new stopped; not started: old serves, nothing on new)"
            + ("" if servers == 0 else f": see {self.work / f'{label}-servers.log'}"),
        )
        ran = [s for s in report["suites"] if s["properties"]["result"] != "not started"]
        first = min(_when(s["started"]) for s in ran)
        last = max(_when(s["finished"]) for s in ran)
        span = (last - first).total_seconds()
        migrated = [s["properties"]["downtime_seconds"] for s in ran if s["properties"]["result"] == "migrated"]
        downtimes = [s["properties"]["downtime_seconds"] for s in ran if s["properties"]["downtime_seconds"]]
        teardown = self.remove()
        return {
            "label": label,
            "create": create_s,
            "prepare": prepare_s,
            "wall": wall,
            "span": span,
            "started": len(ran),
            "overhead": (wall - span) / len(ran),
            "cpu": cpu / len(ran),
            "downtime": statistics.median(migrated) if migrated else float("nan"),
            "downtime_max": max(downtimes) if downtimes else float("nan"),
            "teardown": teardown,
        }


def _when(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="a fleet migration of 10 pairs, within its failure budget")
    parser.add_argument("--work", default="/var/tmp/selfhost-dr-bench/migrate-fleet")
    parser.add_argument("--pairs", type=int, default=10)
    parser.add_argument("--rate", type=float, default=5, help="rows each demo instance commits a second (0: none)")
    parser.add_argument("--keep", action="store_true", help="leave the last run's containers (named mfleet-*)")
    args = parser.parse_args(argv)
    if args.pairs < 5:
        raise SystemExit("--pairs must be at least 5: the batches are 1, 3 and the rest")
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    total = time.monotonic()
    bench = Bench(work, args.pairs, args.rate)
    print(f"collection: a copy of {ROOT} at {_checkout_state()}", flush=True)
    built = subprocess.run(
        [str(ROOT / "tests" / "containers" / "build-image")], env=bench.env, capture_output=True, text=True
    )
    if built.returncode != 0:
        raise SystemExit(f"building the image failed: {built.stderr[-2000:]}")
    image = built.stdout.split()[-1]
    print(
        f"{args.pairs} pairs ({2 * args.pairs} containers of {image}), batches {json.dumps(BATCHES)}, "
        f"failure budget {BUDGET}, writers at {args.rate:g} rows/s per instance",
        flush=True,
    )
    batches = bench.batches()
    rows = []
    try:
        # Run 1: one pair of the second batch fails; within the budget, every batch starts.
        broken = [batches[1][1]]
        expect = {o: "rolled back" if i in broken else "migrated" for i, o in enumerate(bench.old)}
        rows.append(bench.run("run1", image, broken, expect))
        # Run 2: two pairs of the second batch fail; over the budget, the third batch never starts.
        broken = batches[1][:2]
        later = set(batches[2])
        expect = {
            o: "rolled back" if i in broken else "not started" if i in later else "migrated"
            for i, o in enumerate(bench.old)
        }
        rows.append(bench.run("run2", image, broken, expect))
    finally:
        if not args.keep:
            bench.remove()
    print()
    print(
        f"{'run':<5} {'containers s':>12} {'prepare s':>10} {'wall s':>8} {'span s':>8} {'started':>8} "
        f"{'overhead/pair s':>16} {'CPU/pair s':>11} {'downtime median s':>18} {'downtime max s':>15} "
        f"{'teardown s':>11}"
    )
    for r in rows:
        print(
            f"{r['label']:<5} {r['create']:>12.1f} {r['prepare']:>10.1f} {r['wall']:>8.1f} {r['span']:>8.1f} "
            f"{r['started']:>8d} {r['overhead']:>16.2f} {r['cpu']:>11.2f} {r['downtime']:>18.2f} "
            f"{r['downtime_max']:>15.2f} {r['teardown']:>11.1f}"
        )
    print(f"total {time.monotonic() - total:.0f} s; work directory (logs, reports): {work}")
    if bench.failures:
        print(f"{len(bench.failures)} check(s) FAILED: " + "; ".join(bench.failures))
        return 1
    print("every check passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
