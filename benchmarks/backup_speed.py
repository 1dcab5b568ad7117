#!/usr/bin/env python3
# Copyright: selfhost.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Backup and verify speed against the manual procedures, on the same data in the same run (issue 3).

Times, on the tree that make_dataset.py makes (about 1 GiB, tenement-like):

  (a) manual:   sqlite3 tenement.db ".backup SNAP" + tar -czf      (the seed's procedure)
  (b) tar|zstd: tar -cf - TREE | zstd -T0 -3
  create:       sets.create.create() with backup_create's defaults (snapshots, per-file sha256, manifest)
  sha256sum:    sha256sum of the set's archive (reading the file once with sha256)
  verify:       sets.verify.verify() (whole-file sha256, every member, integrity_check of every database)

and prints the ratios with the issue's targets: create at least 8x faster than (a), create within 1.25x
of (b), verify within 1.25x of sha256sum. Every timing but (a) is repeated (--repeat, interleaved) and
the median is used; (a) takes most of a minute and runs once. The page cache is warmed first, so every
command reads from memory, as they would on a server backing up a data dir it serves.

Usage: benchmarks/backup_speed.py [--work DIR] [--scale 1.0] [--repeat 3]
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

from ansible_collections.selfhost.dr.plugins.module_utils.sets.create import create
from ansible_collections.selfhost.dr.plugins.module_utils.sets.verify import verify
from ansible_collections.selfhost.dr.plugins.module_utils.sqlite_snapshot import sha256_file


def timed(fn) -> float:  # type: ignore[no-untyped-def]
    os.sync()  # what the previous step wrote is not flushed on this step's time
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def sh(command: str) -> None:
    subprocess.run(command, shell=True, check=True)  # noqa: S602 - fixed benchmark commands


def warm(tree: Path) -> None:
    for dirpath, _dirs, files in os.walk(tree):
        for name in files:
            with open(os.path.join(dirpath, name), "rb") as handle:
                while handle.read(1 << 20):
                    pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="backup_create and backup_verify against manual procedures")
    parser.add_argument("--work", default="/var/tmp/selfhost-dr-bench", help="working directory (kept for reuse)")
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)

    work = Path(args.work)
    tree = Path(dataset(str(work), args.scale))
    out = work / "out"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    size = sum(f.stat().st_size for f in tree.rglob("*") if f.is_file())
    warm(tree)
    print(f"tree: {tree} ({size / 2**20:.0f} MiB); {os.cpu_count()} cores; median of {args.repeat}", flush=True)

    manual = timed(
        lambda: sh(
            f"sqlite3 {tree}/data/tenement.db '.backup {out}/tenement-snapshot.db' && "
            f"tar -czf {out}/manual.tar.gz -C {tree} . -C {out} tenement-snapshot.db"
        )
    )
    print(f"  (a) manual sqlite3 .backup + tar -czf: {manual:.2f} s", flush=True)
    times: dict[str, list[float]] = {"zstd": [], "create": [], "sha256sum": [], "verify": [], "hashlib": []}
    made = None
    for _ in range(args.repeat):
        times["zstd"].append(timed(lambda: sh(f"tar -cf - -C {tree} . | zstd -q -T0 -3 > {out}/plain.tar.zst")))
        sets = out / "sets"
        shutil.rmtree(sets, ignore_errors=True)
        sets.mkdir()
        os.sync()
        start = time.perf_counter()
        made = create([str(tree)], str(sets), app="tenement", label="bench")
        times["create"].append(time.perf_counter() - start)
        path = made.path
        times["sha256sum"].append(timed(lambda p=path: sh(f"sha256sum {p} > /dev/null")))
        times["hashlib"].append(timed(lambda p=path: sha256_file(p)))
        os.sync()
        start = time.perf_counter()
        result = verify(path, record=False)
        times["verify"].append(time.perf_counter() - start)
        assert result.ok, result.problems
    med = {k: statistics.median(v) for k, v in times.items()}
    assert made is not None
    print(f"  (b) tar | zstd -T0 -3:    {med['zstd']:.2f} s   {_runs(times['zstd'])}")
    print(f"  create:                   {med['create']:.2f} s   {_runs(times['create'])}")
    print(
        f"      {made.stats['databases']} databases, {made.stats['files']} files, "
        f"{made.stats['bytes_in'] / 2**20:.0f} MiB -> {made.size / 2**20:.0f} MiB"
    )
    print(f"  sha256sum of the set:     {med['sha256sum']:.2f} s   {_runs(times['sha256sum'])}")
    print(f"  hashlib sha256 of the set:{med['hashlib']:.2f} s   {_runs(times['hashlib'])}")
    print(f"  verify:                   {med['verify']:.2f} s   {_runs(times['verify'])}")
    print()
    rows = [
        ("create vs (a) manual, speed-up", manual / med["create"], ">= 8x", manual / med["create"] >= 8),
        ("create / (b) tar|zstd", med["create"] / med["zstd"], "<= 1.25", med["create"] / med["zstd"] <= 1.25),
        ("verify / sha256sum", med["verify"] / med["sha256sum"], "<= 1.25", med["verify"] / med["sha256sum"] <= 1.25),
        ("verify / hashlib sha256 (for reference)", med["verify"] / med["hashlib"], "-", True),
    ]
    for label, value, target, met in rows:
        print(f"  {label:42s} {value:6.2f}   target {target:8s} {'met' if met else 'MISSED'}")
    return 0


def _runs(values: list[float]) -> str:
    return "(" + ", ".join(f"{v:.2f}" for v in values) + ")"


if __name__ == "__main__":
    sys.exit(main())
