#!/usr/bin/env python3
# Copyright: selfhost.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A drill's own cost on the 1 GiB benchmark set, against a plain restore of the same set, in the same run (issue 15).

  restore:  restore.plan + restore.run of a set never verified (the restore verifies every member and database
            while it unpacks), on a host that has the application: what a real recovery on an existing host does
  drill:    drill.run of the same set: a deep verify first (recorded), the row counts of every table compared,
            the version checked, then the same restore (which now checks only the whole-file sha256 and the
            member list), the start, and the checks

Target: drill <= 1.5x restore (the drill's own overhead is small). What a drill adds per host beyond this (making
a container, installing tenement) does not grow with the data: the Molecule scenario `drill` reports it per step.
Medians of --repeat runs, interleaved; os.sync() before each.

Usage: benchmarks/drill_speed.py [--work DIR] [--scale 1.0] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / ".cache" / "collections"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from make_dataset import dataset
from repo_speed import Tree

from ansible_collections.selfhost.dr.plugins.module_utils.engine import drill, restore
from ansible_collections.selfhost.dr.plugins.module_utils.sets.create import create
from ansible_collections.selfhost.dr.plugins.module_utils.sets.names import Sidecars


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="a drill against a plain restore of the same set")
    parser.add_argument("--work", default="/var/tmp/selfhost-dr-bench")
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    work = Path(args.work)
    os.environ["SELFHOST_DR_STATE_DIR"] = str(work / "drill-state")  # never the host's own journal
    source = Path(dataset(str(work), args.scale))
    run = work / "drill-speed"
    shutil.rmtree(run, ignore_errors=True)
    run.mkdir(parents=True)
    tree = run / "tree"
    subprocess.run(["cp", "-a", str(source), str(tree)], check=True)
    made = create([str(tree)], str(run), app="tenement", label="bench")
    print(f"set: {made.name}, {made.size / 2**20:.0f} MiB from {made.stats['bytes_in'] / 2**20:.0f} MiB", flush=True)
    times: dict[str, list[float]] = {"restore": [], "drill": []}
    steps: dict[str, list[float]] = {}
    for attempt in range(args.repeat):
        for who in ("restore", "drill") if attempt % 2 == 0 else ("drill", "restore"):
            Path(Sidecars.of(made.path).verified).unlink(missing_ok=True)  # never verified: both verify deeply
            os.sync()
            app = Tree(str(tree))
            started = time.monotonic()
            if who == "restore":
                options = restore.Options()
                restore.run(app, restore.plan(app, made.path, options), options)
            else:
                done = drill.run(app, made.path, drill.Options(restore.Options()))
                if not done.ok:
                    print(f"the drill failed: {[c for c in done.cases if c.status == 'failed']}", file=sys.stderr)
                    return 1
                for case in done.cases:
                    if case.kind == "step" and case.seconds is not None:
                        steps.setdefault(case.name, []).append(case.seconds)
            times[who].append(time.monotonic() - started)
    restore_s, drill_s = statistics.median(times["restore"]), statistics.median(times["drill"])
    print(f"restore: {restore_s:.2f} s {[round(t, 2) for t in times['restore']]}")
    print(f"drill:   {drill_s:.2f} s {[round(t, 2) for t in times['drill']]}")
    print("  drill steps (median s): " + ", ".join(f"{k} {statistics.median(v):.2f}" for k, v in steps.items()))
    ratio = drill_s / restore_s
    print(f"drill / restore, wall: {ratio:.2f}x  (target <= 1.5x, median of {args.repeat})")
    shutil.rmtree(run, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
