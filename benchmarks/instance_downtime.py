#!/usr/bin/env python3
# Copyright: selfhost.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Per-instance downtime of the instances backup mode, on a real tenement 0.2.2 (issue 4).

Two instances of the demo application, one with about 1 MiB of data and one with about 100 MiB
(its SQLite database plus an upload of random bytes). For each, backup_instance() is timed:

  downtime   from the stop request until the instance answers its health check again
  copy       the part of it spent copying the data dir (the part that grows with size)

and, in the same run, a plain `cp -a` of the same data dir (nothing stopped). Targets: downtime
under 2 s, and copy no more than 2x `cp -a`. Medians of --repeat runs.

Usage: benchmarks/instance_downtime.py [--work DIR] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / ".cache" / "collections"))
sys.path.insert(0, str(ROOT / "tests" / "integration"))

from tenement_fixture import start, stop

from ansible_collections.selfhost.dr.plugins.module_utils.apps.tenement_client import TenementClient
from ansible_collections.selfhost.dr.plugins.module_utils.apps.tenement_instance import backup_instance

MIB = 1024 * 1024


def fill(tree: Path, mib: int) -> None:
    """Make the instance's data about ``mib`` MiB: a third in its database, the rest an upload."""
    conn = sqlite3.connect(tree / "app.db")
    conn.execute("CREATE TABLE IF NOT EXISTS filler (b BLOB)")
    conn.executemany("INSERT INTO filler VALUES (randomblob(3000))", [()] * (mib * 1024 // 12))
    conn.commit()
    conn.close()
    (tree / "upload.bin").write_bytes(os.urandom(mib * MIB * 2 // 3))


def du(tree: Path) -> int:
    return sum(p.stat().st_size for p in tree.rglob("*") if p.is_file())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="per-instance downtime against cp -a")
    parser.add_argument("--work", default="/var/tmp/selfhost-dr-bench/downtime")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    ten = str(Path(sys.executable).parent / "ten")
    live = start(ten, work, port, sys.executable)
    try:
        client = TenementClient(ten, server=live.server, token=live.token, data_dir=str(live.data_dir))
        sizes = {"demo:small": 1, "demo:large": 100}
        for name, mib in sizes.items():
            client.spawn(name)
            client.wait_healthy(name, timeout=20)
            fill(live.data_dir / "demo" / name.split(":")[1], mib)
        dest = work / "sets"
        dest.mkdir()
        print(f"tenement {client.version()} on port {port}; median of {args.repeat}")
        for name in sizes:
            tree = live.data_dir / "demo" / name.split(":")[1]
            downtime, copy, plain = [], [], []
            for _ in range(args.repeat):
                target = work / "plain-copy"
                shutil.rmtree(target, ignore_errors=True)
                os.sync()
                t0 = time.perf_counter()
                subprocess.run(["cp", "-a", "--", str(tree), str(target)], check=True)
                plain.append(time.perf_counter() - t0)
                shutil.rmtree(target)
                os.sync()
                done = backup_instance(client, name, str(live.data_dir), str(dest), storage_persist=True)
                downtime.append(done.downtime)
                copy.append(done.copy_seconds)
                os.unlink(done.created.path)
            d, c, p = statistics.median(downtime), statistics.median(copy), statistics.median(plain)
            print(
                f"  {name:11s} {du(tree) / MIB:6.1f} MiB: downtime {d:5.2f} s (copy {c:5.3f} s, "
                f"stop+spawn+health {d - c:4.2f} s); cp -a {p:5.3f} s; copy / cp -a {c / p:4.2f}"
            )
            print(
                f"  {'':11s} targets: downtime < 2 s {'met' if d < 2 else 'MISSED'}, "
                f"copy <= 2x cp -a {'met' if c <= 2 * p else 'MISSED'}"
            )
    finally:
        stop(live)
    return 0


if __name__ == "__main__":
    sys.exit(main())
