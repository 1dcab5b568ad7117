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

and prints the ratios with the issues' targets: create at least 8x faster than (a), create within 1.25x
of (b), verify within 1.25x of sha256sum; and create against (b) in wall time, CPU seconds and peak memory,
each run as its own process tree: CPU is user+sys of it and all its children (zstd included), memory the
peak of the RSS of the whole tree (python and zstd, or tar and zstd) sampled every 10 ms; targets 1.15x
wall, 1.15x CPU, under 128 MiB. Every timing but (a) is repeated (--repeat, interleaved) and the median is
used; (a) takes most of a minute and runs once. The page cache is warmed first, so every command reads from
memory, as they would on a server backing up a data dir it serves.

Usage: benchmarks/backup_speed.py [--work DIR] [--scale 1.0] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
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


def _tree_rss(root: int) -> int:
    """Bytes resident in the process ``root`` and all its descendants (from /proc)."""
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as handle:
                    text = handle.read()
            except OSError:
                continue
            children.setdefault(int(text[text.rindex(")") + 2 :].split()[1]), []).append(int(name))
    total, stack = 0, [root]
    while stack:
        pid = stack.pop()
        try:
            with open(f"/proc/{pid}/statm") as handle:
                total += int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except OSError:
            pass
        stack.extend(children.get(pid, []))
    return total


def measured(argv: list[str]) -> dict[str, float]:
    """Wall seconds, CPU seconds (user+sys of the process and its children) and peak MiB of its process tree."""
    os.sync()
    start = time.perf_counter()
    proc = subprocess.Popen(argv)
    peak = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, _tree_rss(proc.pid))
            time.sleep(0.01)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _pid, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    done.set()
    sampler.join()
    if status != 0:
        raise RuntimeError(f"{argv} failed ({status})")
    return {"wall": wall, "cpu": usage.ru_utime + usage.ru_stime, "mib": peak / 2**20}


def _create_once(tree: str, dest: str, stats: str) -> int:
    """One create() of the tree, alone in this process (for measured())."""
    made = create([tree], dest, app="tenement", label="bench")
    Path(stats).write_text(json.dumps({**made.stats, "size": made.size, "path": made.path}))
    return 0


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
    parser.add_argument("--create-once", nargs=3, metavar=("TREE", "DEST", "STATS"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.create_once:
        return _create_once(*args.create_once)

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
    usage: dict[str, list[dict[str, float]]] = {"zstd": [], "create": []}
    made: dict[str, object] = {}
    for _ in range(args.repeat):
        base = measured(["sh", "-c", f"tar -cf - -C {tree} . | zstd -q -T0 -3 > {out}/plain.tar.zst"])
        usage["zstd"].append(base)
        times["zstd"].append(base["wall"])
        sets = out / "sets"
        shutil.rmtree(sets, ignore_errors=True)
        sets.mkdir()
        stats = out / "create-stats.json"
        run = measured([sys.executable, __file__, "--create-once", str(tree), str(sets), str(stats)])
        usage["create"].append(run)
        times["create"].append(run["wall"])
        made = json.loads(stats.read_text())
        path = str(made["path"])
        times["sha256sum"].append(timed(lambda p=path: sh(f"sha256sum {p} > /dev/null")))
        times["hashlib"].append(timed(lambda p=path: sha256_file(p)))
        os.sync()
        start = time.perf_counter()
        result = verify(path, record=False)
        times["verify"].append(time.perf_counter() - start)
        assert result.ok, result.problems
    med = {k: statistics.median(v) for k, v in times.items()}
    use = {k: {m: statistics.median(r[m] for r in runs) for m in ("wall", "cpu", "mib")} for k, runs in usage.items()}
    print(f"  (b) tar | zstd -T0 -3:    {med['zstd']:.2f} s   {_runs(times['zstd'])}")
    print(f"  create:                   {med['create']:.2f} s   {_runs(times['create'])}")
    print(
        f"      {made['databases']} databases, {made['files']} files, "
        f"{int(made['bytes_in']) / 2**20:.0f} MiB -> {int(made['size']) / 2**20:.0f} MiB"  # type: ignore[call-overload]
    )
    for key, label in (("zstd", "(b) tar | zstd"), ("create", "create")):
        runs = usage[key]
        print(
            f"  {label:15s} CPU {use[key]['cpu']:.2f} s {_runs([r['cpu'] for r in runs])}, "
            f"peak {use[key]['mib']:.0f} MiB {_runs([r['mib'] for r in runs], 0)}"
        )
    print(f"  sha256sum of the set:     {med['sha256sum']:.2f} s   {_runs(times['sha256sum'])}")
    print(f"  hashlib sha256 of the set:{med['hashlib']:.2f} s   {_runs(times['hashlib'])}")
    print(f"  verify:                   {med['verify']:.2f} s   {_runs(times['verify'])}")
    print()
    wall = med["create"] / med["zstd"]
    cpu = use["create"]["cpu"] / use["zstd"]["cpu"]
    mib = use["create"]["mib"]
    rows = [
        ("create vs (a) manual, speed-up", manual / med["create"], ">= 8x", manual / med["create"] >= 8),
        ("create / (b) tar|zstd", wall, "<= 1.25", wall <= 1.25),
        ("create / (b) tar|zstd, wall", wall, "<= 1.15", wall <= 1.15),
        ("create / (b) tar|zstd, CPU seconds", cpu, "<= 1.15", cpu <= 1.15),
        ("create / (b) tar|zstd, peak memory", mib / use["zstd"]["mib"], "-", True),
        ("create peak memory, MiB (python + zstd)", mib, "< 128", mib < 128),
        ("verify / sha256sum", med["verify"] / med["sha256sum"], "<= 1.25", med["verify"] / med["sha256sum"] <= 1.25),
        ("verify / hashlib sha256 (for reference)", med["verify"] / med["hashlib"], "-", True),
    ]
    for label, value, target, met in rows:
        print(f"  {label:42s} {value:6.2f}   target {target:8s} {'met' if met else 'MISSED'}")
    return 0


def _runs(values: list[float], digits: int = 2) -> str:
    return "(" + ", ".join(f"{v:.{digits}f}" for v in values) + ")"


if __name__ == "__main__":
    sys.exit(main())
