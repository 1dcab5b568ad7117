#!/usr/bin/env python3
# Copyright: selfhost.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Full restore against unpacking by hand, on the same 1 GiB set in the same run (issue 4).

  by hand:       zstd -d -c SET | tar -x -C DIR     (no verification at all)
  restore:       restore.restore(SET, dest_root=DIR) of a set the backup role verified after writing
                 it: the whole-file sha256 (against that verification) and the member list are
                 checked while it unpacks into staging, then the trees are swapped in
  restore, deep: the same for a set never verified: every member's sha256 and integrity_check of
                 every database as well

Target: restore within 1.25x of the manual unpack. The set is made by sets.create.create() from the
tree make_dataset.py makes (reused from backup_speed.py's working directory). Medians of --repeat
runs, interleaved; os.sync() before each, and the output removed between runs.

Usage: benchmarks/restore_speed.py [--work DIR] [--scale 1.0] [--repeat 3]
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

from ansible_collections.selfhost.dr.plugins.module_utils.engine.swap import restore
from ansible_collections.selfhost.dr.plugins.module_utils.sets.create import create
from ansible_collections.selfhost.dr.plugins.module_utils.sets.names import Sidecars
from ansible_collections.selfhost.dr.plugins.module_utils.sets.verify import verify


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="full restore against zstd -d | tar -x")
    parser.add_argument("--work", default="/var/tmp/selfhost-dr-bench")
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    work = Path(args.work)
    # The benchmark's restores are journaled in its own state directory, never in the host's.
    os.environ["SELFHOST_DR_STATE_DIR"] = str(work / "state")
    tree = Path(dataset(str(work), args.scale))
    sets = work / "restore-sets"
    shutil.rmtree(sets, ignore_errors=True)
    sets.mkdir(parents=True)
    made = create([str(tree)], str(sets), app="tenement", label="bench")
    print(f"set: {made.name}, {made.size / 2**20:.0f} MiB from {made.stats['bytes_in'] / 2**20:.0f} MiB", flush=True)
    out = work / "restore-out"
    times: dict[str, list[float]] = {"manual": [], "restore": [], "deep": []}
    marker = Path(Sidecars.of(made.path).verified)
    for _ in range(args.repeat):
        for kind in ("manual", "restore", "deep"):
            if kind == "restore" and not marker.exists():
                assert verify(made.path).ok  # what the backup role does after writing a set
            if kind == "deep":
                marker.unlink()
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir()
            os.sync()
            start = time.perf_counter()
            if kind == "manual":
                subprocess.run(f"zstd -q -d -c {made.path} | tar -x -C {out}", shell=True, check=True)  # noqa: S602
            else:
                done = restore(made.path, dest_root=str(out))
                assert done.files == made.manifest["totals"]["files"]  # type: ignore[index]
            times[kind].append(time.perf_counter() - start)
    shutil.rmtree(out, ignore_errors=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    labels = {
        "manual": "zstd -d | tar -x",
        "restore": "restore of a verified set",
        "deep": "restore, deep verification",
    }
    for kind, label in labels.items():
        runs = ", ".join(f"{v:.2f}" for v in times[kind])
        print(f"  {label:28s} {med[kind]:6.2f} s  ({runs})")
    ratio = med["restore"] / med["manual"]
    print(f"  restore / manual unpack      {ratio:6.2f}   target <= 1.25  {'met' if ratio <= 1.25 else 'MISSED'}")
    print(f"  deep restore / manual unpack {med['deep'] / med['manual']:6.2f}   (for reference)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
