#!/usr/bin/env python3
# Copyright: selfhost.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Full restore against unpacking by hand, on the same 1 GiB set in the same run (issue 4).

  by hand:  zstd -d -c SET | tar -x -C DIR     (no verification at all)
  restore:  restore.restore(SET, dest_root=DIR) (verifies checksum, members and every database
            while it unpacks into staging, then swaps the trees in)

Target: restore within 1.25x of the manual unpack. The set is made by backup_set.create() from the
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

from make_dataset import make

from ansible_collections.selfhost.dr.plugins.module_utils.backup_set import create
from ansible_collections.selfhost.dr.plugins.module_utils.restore import restore


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="full restore against zstd -d | tar -x")
    parser.add_argument("--work", default="/var/tmp/selfhost-dr-bench")
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    work = Path(args.work)
    tree = work / f"tree-{args.scale:g}"
    if not tree.exists():
        print(f"making the dataset in {tree} ...", flush=True)
        make(str(tree), scale=args.scale)
    sets = work / "restore-sets"
    shutil.rmtree(sets, ignore_errors=True)
    sets.mkdir(parents=True)
    made = create([str(tree)], str(sets), app="tenement", label="bench")
    print(f"set: {made.name}, {made.size / 2**20:.0f} MiB from {made.stats['bytes_in'] / 2**20:.0f} MiB", flush=True)
    out = work / "restore-out"
    times: dict[str, list[float]] = {"manual": [], "restore": []}
    for _ in range(args.repeat):
        for kind in ("manual", "restore"):
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
    for kind in ("manual", "restore"):
        runs = ", ".join(f"{v:.2f}" for v in times[kind])
        label = "zstd -d | tar -x" if kind == "manual" else "restore (verify + unpack)"
        print(f"  {label:28s} {med[kind]:6.2f} s  ({runs})")
    ratio = med["restore"] / med["manual"]
    print(f"  restore / manual unpack      {ratio:6.2f}   target <= 1.25  {'met' if ratio <= 1.25 else 'MISSED'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
