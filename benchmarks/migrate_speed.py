#!/usr/bin/env python3
# Copyright: selfhost.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A migration's downtime with a seed and a delta against a cold full migration, same tree, same run (issue 16).

On a private copy of make_dataset.py's tree (about 1 GiB, tenement-like), the old server is the tree and each new
server a directory of its own (``dest_root``); the sets go from one to the other by a local copy (what a network
would carry is their size, printed). The application is the tree itself: its stop and start take no time, in both
ways alike, so what is measured is what the migration does to the data.

  seed + delta   engine/migrate.py: the seed made and restored on the new server beforehand (not downtime); then
                 2% of the files and a few databases change (14 notes appended, 2 blobs rewritten, 4 instance
                 databases and 500 rows of tenement.db updated, a file deleted, one added); downtime = freeze, the
                 delta set, its copy, its apply (verified, every kept file checked, swapped in), start
  cold full      what a migration without a seed does: stop, a full set, its copy, its restore (verified, swapped
                 in), start

Targets: the delta set ≤ 10% of the full set's bytes; downtime with seed + delta ≤ 0.3x the cold full migration's.
Median of --repeat runs of each downtime (each run changes the tree again and makes a new seed first).

Usage: benchmarks/migrate_speed.py [--work DIR] [--scale 1.0] [--repeat 3]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import shutil
import sqlite3
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / ".cache" / "collections"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from make_dataset import dataset
from repo_speed import Tree as RepoTree

from ansible_collections.selfhost.dr.plugins.module_utils._common import Log, no_log
from ansible_collections.selfhost.dr.plugins.module_utils.apps.base import Facts
from ansible_collections.selfhost.dr.plugins.module_utils.engine import backup, migrate, restore
from ansible_collections.selfhost.dr.plugins.module_utils.sets.manifest import read_manifest
from ansible_collections.selfhost.dr.plugins.module_utils.sets.names import Sidecars

MIB = 1024 * 1024


class Tree(RepoTree):
    """The benchmark tree as an application (repo_speed.py's): here it stops and starts, taking no time, and a
    restore may put it back where it is."""

    def stop(self, log: Log = no_log) -> bool:
        return True

    def restore_roots(self, before: Facts | None) -> list[str]:
        return [self.top]


def change(tree: str, rng: random.Random) -> None:
    """2% of the files and a few databases: 14 notes appended, 2 blobs rewritten, 4 instance databases and 500 rows
    of tenement.db updated, one file deleted and one added."""
    data = Path(tree, "data")
    with contextlib.closing(sqlite3.connect(data / "tenement.db")) as db:
        count = db.execute("SELECT max(rowid) FROM logs").fetchone()[0]
        for _ in range(500):
            db.execute("UPDATE logs SET body = ? WHERE rowid = ?", (f"changed {rng.random()}", rng.randint(1, count)))
        db.commit()
    for path in rng.sample(sorted(data.glob("*/*/app.db")), 4):
        with contextlib.closing(sqlite3.connect(path)) as db:
            db.execute("UPDATE items SET body = body || ' changed' WHERE rowid IN (SELECT rowid FROM items LIMIT 50)")
            db.commit()
    notes = sorted(data.glob("*/*/notes-*.txt"))
    for path in rng.sample(notes, 14):
        with open(path, "ab") as handle:
            handle.write(b"a line written between the seed and the freeze\n" * 100)
    for path in rng.sample(sorted(data.glob("*/*/uploads/blob.bin")), 2):
        path.write_bytes(rng.randbytes(path.stat().st_size))
    doomed = rng.choice([p for p in notes if p.exists()])
    doomed.unlink()
    (doomed.parent / f"new-{rng.randrange(10**9)}.txt").write_bytes(b"made after the seed\n" * 1000)


def carry(made: str, dest: str) -> str:
    """The set and its sidecars to the new server's directory (the network's part: a local copy here)."""
    os.makedirs(dest, exist_ok=True)
    sidecars = Sidecars.of(made)
    for path in (made, sidecars.checksum, sidecars.manifest):
        shutil.copyfile(path, os.path.join(dest, os.path.basename(path)))
    return os.path.join(dest, os.path.basename(made))


def seed_and_delta(run: Path, tree: str, rng: random.Random, n: int) -> dict[str, float]:
    app = Tree(tree)
    side = run / f"delta-{n}"
    old = migrate.Options(dest=str(side / "old"), state_dir=str(side / "old-state"))
    new = migrate.Options(dest=str(side / "new"), state_dir=str(side / "new-state"), dest_root=str(side / "root"))
    seeded = migrate.seed(app, old)
    migrate.receive(app, carry(str(seeded["path"]), new.dest), new)
    change(tree, rng)
    t0 = time.monotonic()
    migrate.freeze(app, old)
    made = migrate.delta(app, str(seeded["path"]), old)
    t1 = time.monotonic()
    here = carry(str(made["path"]), new.dest)
    t2 = time.monotonic()
    applied = migrate.apply(app, here, new)
    t3 = time.monotonic()
    migrate.thaw(app, old)
    carried = read_manifest(str(made["manifest_path"]), delta=True)["files"]
    largest = max((f for f in carried if f["type"] == "file"), key=lambda f: int(f["size"]))  # type: ignore[attr-defined]
    print(f"  the delta's largest member: {largest['path']}, {int(largest['size']) / MIB:.0f} MiB", flush=True)
    shutil.rmtree(side)
    return {
        "downtime": t3 - t0,
        "delta_set": t1 - t0,
        "copy": t2 - t1,
        "apply": t3 - t2,
        "delta_bytes": float(made["size"]),
        "seed_bytes": float(seeded["size"]),
        "kept": float(made["kept"]),
        "checked_bytes": float(applied["checked"]["bytes"]),  # type: ignore[index]
        "hashed": float(applied["checked"]["hashed"]),  # type: ignore[index]
    }


def cold_full(run: Path, tree: str, n: int) -> dict[str, float]:
    app = Tree(tree)
    side = run / f"cold-{n}"
    options = backup.Options(dest=str(side / "old"), label="cold", verify=False, state_dir=str(side / "old-state"))
    r_options = restore.Options(state_dir=str(side / "new-state"), dest_root=str(side / "root"))
    t0 = time.monotonic()
    (made,) = backup.run(app, backup.plan(app, "cold", options), options).sets
    t1 = time.monotonic()
    here = carry(str(made["path"]), str(side / "new"))
    t2 = time.monotonic()
    restore.run(app, restore.plan(app, here, r_options), r_options)
    t3 = time.monotonic()
    shutil.rmtree(side)
    return {
        "downtime": t3 - t0,
        "full_set": t1 - t0,
        "copy": t2 - t1,
        "restore": t3 - t2,
        "full_bytes": float(made["size"]),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default="/var/tmp/selfhost-dr-bench", help="working directory (kept for reuse)")
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    if not shutil.which("zstd"):
        print("zstd is not installed", file=sys.stderr)
        return 2
    source = dataset(args.work, args.scale)
    run = Path(args.work) / "migrate-speed"
    shutil.rmtree(run, ignore_errors=True)
    run.mkdir(parents=True)
    tree = str(run / "tree")
    subprocess.run(["cp", "-a", source, tree], check=True)
    time.sleep(migrate_racy_seconds())  # the copy's files are older than the index's racy window
    rng = random.Random(16)
    deltas, colds = [], []
    for n in range(args.repeat):  # alternating, so neither way has the warmer cache throughout
        deltas.append(seed_and_delta(run, tree, rng, n))
        colds.append(cold_full(run, tree, n))
        print(
            f"run {n + 1}: seed+delta downtime {deltas[-1]['downtime']:.2f} s "
            f"(delta set {deltas[-1]['delta_set']:.2f}, "
            f"copy {deltas[-1]['copy']:.2f}, apply {deltas[-1]['apply']:.2f}); cold full {colds[-1]['downtime']:.2f} s "
            f"(set {colds[-1]['full_set']:.2f}, copy {colds[-1]['copy']:.2f}, restore {colds[-1]['restore']:.2f})",
            flush=True,
        )
    shutil.rmtree(run, ignore_errors=True)

    def median(rows: list[dict[str, float]], key: str) -> float:
        return statistics.median(r[key] for r in rows)

    delta_bytes, full_bytes = median(deltas, "delta_bytes"), median(colds, "full_bytes")
    byte_ratio = delta_bytes / full_bytes
    time_ratio = median(deltas, "downtime") / median(colds, "downtime")
    print()
    print(f"tree: {sum(f.stat().st_size for f in Path(source).rglob('*') if f.is_file()) / MIB:.0f} MiB; "
          f"files kept from the seed: {median(deltas, 'kept'):.0f} ({median(deltas, 'checked_bytes') / MIB:.0f} MiB), "
          f"of them read again on the new server: {median(deltas, 'hashed'):.0f}")  # fmt: skip
    print(f"{'':44}{'seed+delta':>12}{'cold full':>12}{'ratio':>8}")
    print(
        f"{'bytes moved during the downtime, MiB':44}{delta_bytes / MIB:12.1f}{full_bytes / MIB:12.1f}{byte_ratio:8.3f}"
    )
    print(
        f"{'downtime (freeze to serving), s':44}{median(deltas, 'downtime'):12.2f}{median(colds, 'downtime'):12.2f}"
        f"{time_ratio:8.3f}"
    )
    print(
        f"delta set / full set bytes   {byte_ratio:.3f}   target <= 0.10  {'met' if byte_ratio <= 0.10 else 'MISSED'}"
    )
    print(
        f"downtime seed+delta / cold   {time_ratio:.3f}   target <= 0.30  {'met' if time_ratio <= 0.30 else 'MISSED'}"
    )
    return 0


def migrate_racy_seconds() -> float:
    from ansible_collections.selfhost.dr.plugins.module_utils.sets import delta

    return delta.RACY_NS / 1e9 + 0.5


if __name__ == "__main__":
    sys.exit(main())
