#!/usr/bin/env python3
# Copyright: selfhost.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Continuous replication with the real Litestream 0.5.17 into a real S3 store (SeaweedFS), in one run (issue 17).

Three parts, each against its own anchor:

  lag     a writer commits 200 rows a second into one database, each row stamped with its commit time, while
          ``selfhost-dr replicas``' measure (replicas/lag.py) samples the lag every 0.25 s: p50 and p99 against the
          2 s target. Then Litestream and the writer are killed (SIGKILL) at once, the newest state is restored
          elsewhere (engine/replica_restore's plan: the replica's files, ``restore -txid``), and the commits lost are
          counted against the writer's log: in seconds of commits, against the 2 s target (--kills times).
  exact   ``--moments`` random moments across the run up to its newest replicated state (after level-1 and
          level-2 compaction and a snapshot taken mid-run): each restored by the collection's plan and checked row
          by row against the writer's log.
          No restored row may have been committed after its moment; the rows committed at or before it and not
          restored are the shortfall, in rows and seconds (Litestream's files hold syncs, not transactions: a moment
          is reached exactly only at a file's boundary, docs/litestream.md).
  scale   ``--databases`` databases (tenement-like: one per instance) replicated by one Litestream: its resident
          memory and CPU while idle and while a tenth of them write, against the same figures for one database.

Litestream's monitor interval (``--monitor-interval``, config.Settings.monitor_interval) sets how often it turns the
WAL into an LTX file, so it bounds the exact part's shortfall (what a kill loses is bounded by the 1 s sync interval,
the uploads); the lag part also prints Litestream's CPU, so that a shorter interval's cost can be weighed against
what it buys (and each LTX file is one PUT to the store while a database is written).

Usage: benchmarks/replicate.py [--work DIR] [--seconds 90] [--moments 20] [--kills 3] [--databases 200]
                               [--monitor-interval 1s] [--l0-retention 1h] [--skip-scale]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / ".cache" / "collections"))
sys.path.insert(0, str(ROOT / "tests" / "integration"))

import s3_store

from ansible_collections.selfhost.dr.plugins.module_utils.replicas import config, lag, ltx, replica, s3
from ansible_collections.selfhost.dr.plugins.module_utils.replicas.litestream import Replication

LITESTREAM = Path(sys.executable).parent / "litestream"
LEVELS = ["10s", "30s"]  # the compaction levels of the lag, kill and exact parts
HOST = "bench"


class Writer(threading.Thread):
    """Commits one row ``rate`` times a second into ``path``; ``log`` is (id, commit time) of each commit."""

    def __init__(self, path: Path, rate: float) -> None:
        super().__init__(daemon=True)
        self.path, self.rate = path, rate
        self.log: list[tuple[int, float]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        db = sqlite3.connect(self.path, isolation_level=None, timeout=30)
        db.execute("PRAGMA busy_timeout = 5000")
        next_at = time.monotonic()
        while not self.stop.is_set():
            cur = db.execute("INSERT INTO items (created_at) VALUES (?)", (time.time(),))
            self.log.append((int(cur.lastrowid or 0), time.time()))
            next_at += 1 / self.rate
            delay = next_at - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        db.close()


def _database(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path)
    db.execute("PRAGMA journal_mode = wal")
    db.execute("CREATE TABLE IF NOT EXISTS items (id INTEGER PRIMARY KEY, created_at REAL NOT NULL)")
    db.commit()
    db.close()


class Litestream:
    """``litestream replicate`` with this collection's configuration (replicas/config.py)."""

    def __init__(self, work: Path, data: Path, store: s3_store.Store, bucket: str, settings: config.Settings) -> None:
        self.work, self.data = work, data
        dest = config.Destination(bucket, path="bench", endpoint=store.endpoint)
        (work / "litestream.yml").write_text(config.render(config.tenement(str(data), dest, settings, HOST)))
        self.env = {"PATH": os.environ["PATH"], "LITESTREAM_ACCESS_KEY_ID": s3_store.ACCESS_KEY,
                    "LITESTREAM_SECRET_ACCESS_KEY": s3_store.SECRET_KEY}  # fmt: skip
        self.log = open(work / "litestream.log", "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [str(LITESTREAM), "replicate", "-config", str(work / "litestream.yml"), "-no-expand-env"],
            env=self.env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip

    def usage(self) -> tuple[float, float]:
        """Resident memory (MiB) and CPU seconds used so far."""
        with open(f"/proc/{self.proc.pid}/status") as status:
            rss = next(int(line.split()[1]) for line in status if line.startswith("VmRSS:")) / 1024
        with open(f"/proc/{self.proc.pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        return rss, (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self, kill: bool = False) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL if kill else signal.SIGTERM)
        self.proc.wait(timeout=60)
        self.log.close()


def _replication(work: Path, store: s3_store.Store, bucket: str) -> Replication:
    return Replication(config.Destination(bucket, path="bench", endpoint=store.endpoint), HOST,
                       {"AWS_ACCESS_KEY_ID": s3_store.ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": s3_store.SECRET_KEY},
                       binary=str(LITESTREAM), meta_dir=str(work / "meta"))  # fmt: skip


def _restore(replication: Replication, bucket: s3.Store, database: str, moment: datetime | None, out: Path) -> ltx.Plan:
    """The collection's plan for ``moment`` (None: the newest state), restored by txid into ``out``."""
    listing = replica.files(bucket, replication.prefix("tenement", database))
    plan = ltx.plan_at(listing.files, moment) if moment is not None else ltx.latest(listing.files)
    if plan is None:
        raise RuntimeError(f"no plan for {moment}")
    fd = os.open(out.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        replication.restore("tenement", database, plan.txid, fd, out.name, str(out))
    finally:
        os.close(fd)
    return plan


def _rows(path: Path) -> list[tuple[int, float]]:
    db = sqlite3.connect(f"file:{path}?mode=ro&immutable=1", uri=True)
    try:
        return list(db.execute("SELECT id, created_at FROM items ORDER BY id"))
    finally:
        db.close()


def _wait(what: str, test, timeout: float = 120.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not test():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not happen within {timeout:g} s")
        time.sleep(0.25)


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))] if ordered else float("nan")


def lag_and_kills(work: Path, store: s3_store.Store, args: argparse.Namespace) -> dict[str, object]:
    results: dict[str, object] = {"lag": [], "lost_seconds": [], "exact": []}
    settings = config.Settings(levels=LEVELS, l0_retention=args.l0_retention, snapshot_interval="1h",
                               meta_dir=str(work / "meta"), addr="127.0.0.1:0",
                               monitor_interval=args.monitor_interval)  # fmt: skip
    for run in range(args.kills):
        bucket_name = f"bench{os.getpid()}r{run}"
        bucket = s3.Store(store.endpoint, bucket_name, s3_store.ACCESS_KEY, s3_store.SECRET_KEY)
        bucket.create_bucket()
        here = work / f"run{run}"
        data = here / "data"
        target = data / "demo" / "alpha" / "app.db"
        _database(target)
        _database(data / "tenement.db")
        (here / "meta").mkdir(parents=True)
        settings.meta_dir = str(here / "meta")
        replication = _replication(here, store, bucket_name)
        litestream = Litestream(here, data, store, bucket_name, settings)
        prefix = replication.prefix("tenement", "demo/alpha/app.db")
        _wait("the first snapshot", lambda p=prefix, b=bucket: any(b.list(f"{p}/0009/")))
        writer = Writer(target, args.rate)
        writer.start()
        started = time.monotonic()
        cpu_from, cpu = litestream.usage()[1], 0.0  # Litestream's CPU seconds while the writer writes
        seconds = args.seconds if run == 0 else max(15.0, args.seconds / 4)
        samples: list[float] = []
        snapshot_at = started + seconds / 2
        took_snapshot = False
        while time.monotonic() - started < seconds:
            if run == 0 and not took_snapshot and time.monotonic() > snapshot_at:
                # A snapshot mid-run (Litestream takes one at start and every snapshot interval): restart it.
                cpu += litestream.usage()[1] - cpu_from
                cpu_from = 0.0  # the new process's own start (its snapshot) counts too
                litestream.stop()
                litestream = Litestream(here, data, store, bucket_name, settings)
                took_snapshot = True
            if run == 0:
                measured = lag.measure(replication, "tenement")
                samples += [m.lag_seconds for m in measured if m.database == "demo/alpha/app.db"]
            time.sleep(0.25)
        cpu += litestream.usage()[1] - cpu_from
        wall = time.monotonic() - started
        # The server dies: Litestream and the writer at once.
        litestream.stop(kill=True)
        writer.stop.set()
        killed_at = time.time()
        writer.join()
        out = here / "latest.db"
        _restore(replication, bucket, "demo/alpha/app.db", None, out)
        got = _rows(out)
        kept = {i for i, _t in got}
        lost = [t for i, t in writer.log if i not in kept]
        assert all(i in dict(writer.log) for i, _t in got), "a restored row was never committed"
        lost_seconds = (killed_at - min(lost)) if lost else 0.0
        results["lost_seconds"].append(lost_seconds)  # type: ignore[attr-defined]
        print(f"kill {run + 1}: {len(writer.log)} commits, {len(lost)} lost ({lost_seconds:.2f} s of commits); "
              f"Litestream used {cpu:.1f} CPU s in {wall:.1f} s of writing ({cpu / wall * 100:.1f}% of a core)",
              flush=True)  # fmt: skip
        if run == 0:
            results["cpu"] = (cpu, wall)
            results["lag"] = samples
            results["exact"] = _moments(here, replication, bucket, writer.log, args)
            levels = {f.level for f in replica.files(bucket, prefix).files}
            results["levels"] = sorted(levels)
    return results


def _moments(here: Path, replication: Replication, bucket: s3.Store, log: list[tuple[int, float]],
             args: argparse.Namespace) -> list[dict[str, float]]:  # fmt: skip
    """``--moments`` random moments across the run up to the newest state replicated before the kill (what came
    later is what the kill lost: the kill part's figure), each restored and checked against the writer's log.

    A row's commit happened between its ``created_at`` (taken before the INSERT) and the time the writer logged
    after it returned: a restored row whose ``created_at`` is after the moment was committed after it (must be none);
    a row logged at or before the moment was committed by it (owed: the ones not restored are the shortfall); a row
    whose commit straddles the moment (a few ms on a loaded machine) may rightly be either."""
    first = log[0][1]
    newest = ltx.latest(replica.files(bucket, replication.prefix("tenement", "demo/alpha/app.db")).files)
    last = min(log[-1][1], newest.reached.timestamp()) if newest is not None else log[-1][1]
    rng = random.Random(17)
    found = []
    for n in range(args.moments):
        moment = first + rng.random() * (last - first)
        out = here / f"moment-{n}.db"
        plan = _restore(replication, bucket, "demo/alpha/app.db", datetime.fromtimestamp(moment, UTC), out)
        restored = _rows(out)
        got = {i for i, _began in restored}
        times = dict(log)
        after = [i for i, began in restored if began > moment]
        owed = [i for i, t in log if t <= moment]
        short = [times[i] for i in owed if i not in got]
        found.append({"moment": moment - first, "age": time.time() - moment, "after": len(after), "owed": len(owed),
                      "short_rows": len(short),
                      "short_seconds": (moment - min(short)) if short else 0.0, "files": len(plan.files)})  # fmt: skip
        out.unlink()
    return found


def scale(work: Path, store: s3_store.Store, args: argparse.Namespace) -> dict[str, tuple[float, float]]:
    """Litestream's memory and CPU with one database and with ``--databases``, idle and with a tenth writing."""
    figures: dict[str, tuple[float, float]] = {}
    for count in (1, args.databases):
        bucket_name = f"bench{os.getpid()}s{count}"
        bucket = s3.Store(store.endpoint, bucket_name, s3_store.ACCESS_KEY, s3_store.SECRET_KEY)
        bucket.create_bucket()
        here = work / f"scale{count}"
        data = here / "data"
        paths = [data / "svc" / f"i{n:03d}" / "app.db" for n in range(count)]
        for path in paths:
            _database(path)
        (here / "meta").mkdir(parents=True)
        settings = config.Settings(meta_dir=str(here / "meta"), addr="127.0.0.1:0")
        replication = _replication(here, store, bucket_name)
        started = time.monotonic()
        litestream = Litestream(here, data, store, bucket_name, settings)
        _wait(f"{count} databases replicated", lambda r=replication, b=bucket, c=count: len(
            [d for d, files in replica.databases(b, r.prefix("tenement")).items() if any(lv == 9 for lv, _o in files)]
        ) >= c, timeout=600)  # fmt: skip
        ready = time.monotonic() - started
        time.sleep(5)
        _, cpu0 = litestream.usage()
        time.sleep(args.window)
        rss_idle, cpu1 = litestream.usage()
        writers = [Writer(p, 10) for p in paths[: max(1, count // 10)]]
        for w in writers:
            w.start()
        time.sleep(args.window)
        rss_busy, cpu2 = litestream.usage()
        for w in writers:
            w.stop.set()
        for w in writers:
            w.join()
        measured = lag.measure(replication, "tenement")
        behind = max((m.lag_seconds for m in measured), default=0.0)
        litestream.stop()
        figures[str(count)] = (rss_idle, (cpu1 - cpu0) / args.window)
        figures[f"{count} busy"] = (rss_busy, (cpu2 - cpu1) / args.window)
        print(f"{count} database(s): all replicated {ready:.1f} s after the start; idle {rss_idle:.0f} MiB, "
              f"{(cpu1 - cpu0) / args.window * 100:.1f}% of a core; {len(writers)} writing 10 commits/s each: "
              f"{rss_busy:.0f} MiB, {(cpu2 - cpu1) / args.window * 100:.1f}% of a core; the worst lag then "
              f"{behind:.2f} s", flush=True)  # fmt: skip
    return figures


def _interval(value: str) -> str:
    """A Litestream duration (1s, 100ms), as config.Settings takes it."""
    try:
        config._duration("an interval", value)
    except config.ReplicaConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc
    if config._seconds(value) <= 0:
        raise argparse.ArgumentTypeError(f"an interval must be above zero, not {value!r}")
    return value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--seconds", type=float, default=90.0, help="how long the first run writes")
    parser.add_argument("--rate", type=float, default=200.0, help="commits a second")
    parser.add_argument("--moments", type=int, default=20)
    parser.add_argument("--kills", type=int, default=3)
    parser.add_argument("--databases", type=int, default=200)
    parser.add_argument("--window", type=float, default=30.0, help="seconds each usage figure is measured over")
    parser.add_argument(
        "--monitor-interval",
        type=_interval,
        default="1s",
        help="Litestream's monitor-interval in the lag, kill and exact parts (an LTX file each)",
    )
    parser.add_argument(
        "--l0-retention",
        type=_interval,
        default="1h",
        help="how long Litestream keeps level-0 files once compacted: moments older than that are restored from "
        f"level-1 files ({LEVELS[0]} each)",
    )
    parser.add_argument("--skip-scale", action="store_true")
    args = parser.parse_args()
    if not LITESTREAM.exists():
        sys.exit("litestream is not installed in this virtualenv (tests/requirements.txt)")
    monitor = config._seconds(args.monitor_interval)
    sync = config.Settings().sync_interval
    version = subprocess.run([str(LITESTREAM), "version"], capture_output=True, text=True).stdout.strip()
    print(f"Litestream {version}: monitor-interval {args.monitor_interval}, "
          f"sync-interval {sync}, levels {LEVELS}, l0-retention {args.l0_retention}; {args.rate:g} commits/s "
          f"for {args.seconds:g} s, {args.moments} moments, "
          f"{args.kills} kills", flush=True)  # fmt: skip
    work = args.work or Path(tempfile.mkdtemp(prefix="selfhost-dr-replicate-bench-"))
    try:
        with s3_store.running(work / "store") as store:
            found = lag_and_kills(work, store, args)
            figures = {} if args.skip_scale else scale(work, store, args)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    samples = list(found["lag"])  # type: ignore[call-overload]
    lost = list(found["lost_seconds"])  # type: ignore[call-overload]
    exact = list(found["exact"])  # type: ignore[call-overload]
    cpu, wall = found["cpu"]  # type: ignore[misc]
    print()
    print(f"monitor-interval {args.monitor_interval}, sync-interval {sync}:")
    print(f"lag while writing {args.rate:g} commits/s ({len(samples)} samples as selfhost-dr replicas measures it): "
          f"p50 {_pct(samples, 50):.2f} s, p99 {_pct(samples, 99):.2f} s, max {max(samples):.2f} s; "
          f"p99 / 2 s target = {_pct(samples, 99) / 2:.2f}x")  # fmt: skip
    print(f"Litestream's CPU while writing (lag part): {cpu:.1f} s in {wall:.1f} s = {cpu / wall * 100:.1f}% of a core")
    print(f"commits lost when the server is killed (SIGKILL) and restored elsewhere, {len(lost)} kills: worst "
          f"{max(lost):.2f} s of commits; worst / 2 s target = {max(lost) / 2:.2f}x")  # fmt: skip
    print(f"restores to {len(exact)} random moments (replica levels {found.get('levels')}, a snapshot mid-run):")
    print(f"  rows committed after the moment restored: {sum(e['after'] for e in exact)} (must be 0)")
    l0 = config._seconds(args.l0_retention)
    groups = (
        (f"within l0-retention {args.l0_retention}", [e for e in exact if e["age"] <= l0], args.monitor_interval,
         monitor, "monitor interval", "one LTX file a monitor cycle"),
        (f"older than l0-retention {args.l0_retention}", [e for e in exact if e["age"] > l0], LEVELS[0],
         config._seconds(LEVELS[0]), "level-1 interval", "one level-1 file an interval"),
    )  # fmt: skip
    for label, group, bound, bound_s, unit, what in groups:
        if not group:
            continue
        exact_count = sum(1 for e in group if e["short_rows"] == 0)
        shorts = [e["short_seconds"] for e in group]
        print(
            f"  {label}: exactly the rows committed by the moment: {exact_count} of {len(group)}; short of it by a "
            f"median {statistics.median(shorts):.2f} s, worst {max(shorts):.2f} s of commits "
            f"({max(e['short_rows'] for e in group)} rows): worst / {bound} {unit} "
            f"= {max(shorts) / bound_s:.2f}x ({what}: 1.0x is one's worth)"
        )
    for e in exact:
        print(
            f"    t+{e['moment']:6.1f} s (restored {e['age']:5.1f} s later): {e['owed']:6d} owed, "
            f"{e['short_rows']:4d} short ({e['short_seconds']:.2f} s), {e['after']} after, {e['files']} file(s)"
        )
    if figures:
        one, many = figures["1"], figures[str(args.databases)]
        print(f"scale: {args.databases} databases idle {many[0]:.0f} MiB and {many[1] * 100:.1f}% of a core, against "
              f"one database's {one[0]:.0f} MiB and {one[1] * 100:.1f}%: memory {many[0] / one[0]:.1f}x")  # fmt: skip


if __name__ == "__main__":
    main()
