#!/usr/bin/env python3
# Copyright: selfhost.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Make a tenement-like data tree for the benchmarks (about 1 GiB by default).

The tree, as issue 3 describes it:
- ``tenement.toml`` and ``data/api_token``;
- ``data/tenement.db``: 200 MiB of log rows, WAL mode;
- 200 instance dirs ``data/{service}/{id}/``, each with a SQLite ``app.db`` of
  0.1 to 8 MiB (log-uniform), some text files and an incompressible blob, so that
  about 30% of all bytes are random;
- ``data/logs/`` and a socket-like leftover that backups leave out.

Deterministic for a given ``--seed``. ``--scale`` shrinks or grows every size
(0.05 makes a ~50 MiB tree for quick runs).
"""

from __future__ import annotations

import argparse
import math
import os
import random
import sqlite3
import sys

MIB = 1024 * 1024
WORDS = [
    "request",
    "served",
    "instance",
    "spawn",
    "health",
    "check",
    "ok",
    "route",
    "proxy",
    "upstream",
    "latency",
    "bytes",
    "user",
    "session",
    "token",
    "refresh",
    "cache",
    "miss",
    "hit",
    "write",
    "commit",
    "checkpoint",
    "wal",
    "page",
    "vacuum",
    "backup",
    "restore",
    "tenant",
    "service",
    "deploy",
    "config",
    "reload",
    "signal",
    "exit",
    "status",
    "error",
    "warning",
    "info",
    "debug",
    "trace",
]


def _text(rng: random.Random, size: int) -> bytes:
    lines = []
    total = 0
    while total < size:
        line = f"{rng.randint(1_600_000_000, 1_800_000_000)} {' '.join(rng.choices(WORDS, k=rng.randint(6, 14)))}\n"
        lines.append(line)
        total += len(line)
    return "".join(lines).encode()[:size]


def _fill_db(path: str, rng: random.Random, size: int, wal: bool, table: str) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute(f"PRAGMA journal_mode = {'WAL' if wal else 'DELETE'}")
        conn.execute("PRAGMA synchronous = OFF")
        conn.execute(f"CREATE TABLE {table} (id INTEGER PRIMARY KEY, ts INTEGER, level TEXT, body TEXT)")
        # Rows of ~300 bytes; a third of each body is random hex, the rest words.
        block = [(rng.randint(0, 2**31), rng.choice(("info", "warn", "debug")), "") for _ in range(512)]
        written = 0
        conn.execute("BEGIN")
        while written < size:
            rows = []
            for ts, level, _ in block:
                body = " ".join(rng.choices(WORDS, k=24)) + " " + rng.randbytes(48).hex()
                rows.append((ts, level, body))
                written += len(body) + 24
            conn.executemany(f"INSERT INTO {table} (ts, level, body) VALUES (?, ?, ?)", rows)  # noqa: S608
        conn.execute("COMMIT")
        if wal:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()


def make(root: str, scale: float = 1.0, instances: int = 200, seed: int = 1) -> dict[str, int]:
    rng = random.Random(seed)
    data = os.path.join(root, "data")
    os.makedirs(os.path.join(data, "logs"), exist_ok=True)
    with open(os.path.join(root, "tenement.toml"), "w") as handle:
        handle.write('[settings]\ndata_dir = "data"\n\n[service.app]\ncommand = "app"\nstorage_persist = true\n')
    with open(os.path.join(data, "api_token"), "w") as handle:
        handle.write(rng.randbytes(16).hex() + "\n")
    os.chmod(os.path.join(data, "api_token"), 0o600)
    _fill_db(os.path.join(data, "tenement.db"), rng, int(200 * MIB * scale), wal=True, table="logs")
    with open(os.path.join(data, "logs", "tenement.log"), "wb") as handle:
        handle.write(_text(rng, int(4 * MIB * scale)))
    totals = {"instances": instances, "random_bytes": 0}
    for n in range(instances):
        inst = os.path.join(data, "app" if n % 4 else "api", f"i{n:03d}")
        os.makedirs(os.path.join(inst, "uploads"), exist_ok=True)
        db_size = int(math.exp(rng.uniform(math.log(0.1 * MIB), math.log(8 * MIB))) * scale)
        _fill_db(os.path.join(inst, "app.db"), rng, db_size, wal=n % 3 != 0, table="items")
        for k in range(3):
            with open(os.path.join(inst, f"notes-{k}.txt"), "wb") as handle:
                handle.write(_text(rng, int(rng.uniform(0.05, 0.25) * MIB * scale)))
        blob = int(rng.uniform(1.1, 2.1) * MIB * scale)
        with open(os.path.join(inst, "uploads", "blob.bin"), "wb") as handle:
            handle.write(rng.randbytes(blob))
        totals["random_bytes"] += blob
    total = 0
    for dirpath, _dirs, files in os.walk(root):
        total += sum(os.path.getsize(os.path.join(dirpath, f)) for f in files)
    totals["bytes"] = total
    return totals


def dataset(work: str, scale: float = 1.0) -> str:
    """The benchmarks' tree ``{work}/tree-{scale}``, made on first use and reused after."""
    root = os.path.join(work, f"tree-{scale:g}")
    if not os.path.exists(root):
        print(f"making the dataset in {root} ...", flush=True)
        totals = make(root, scale=scale)
        share = totals["random_bytes"] / max(totals["bytes"], 1)
        print(f"  {totals['bytes'] / MIB:.0f} MiB, {share:.0%} random bytes", flush=True)
    return root


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", help="directory to create (must not exist)")
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--instances", type=int, default=200)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    if os.path.exists(args.root):
        print(f"{args.root} already exists; give a new directory", file=sys.stderr)
        return 2
    totals = make(args.root, args.scale, args.instances, args.seed)
    share = totals["random_bytes"] / max(totals["bytes"], 1)
    print(f"{args.root}: {totals['bytes'] / MIB:.0f} MiB, {totals['instances']} instances, {share:.0%} random bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
