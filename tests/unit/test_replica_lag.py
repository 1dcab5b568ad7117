"""How far each replica is behind (replicas/lag.py) and what the metrics say of it (engine/metrics.py): from
Litestream's local level-0 files, as it names them below ``meta_dir``, and the replica's files as a store lists them.
With the real Litestream and SeaweedFS: tests/integration/test_replica_restore.py."""

from __future__ import annotations

import os
import sqlite3
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ansible_collections.selfhost.dr.plugins.module_utils.engine import metrics
from ansible_collections.selfhost.dr.plugins.module_utils.replicas import lag, s3
from ansible_collections.selfhost.dr.plugins.module_utils.replicas.config import Destination
from ansible_collections.selfhost.dr.plugins.module_utils.replicas.litestream import Replication

NOW = 1_800_000_000.0


def _name(low: int, high: int) -> str:
    return f"{low:016x}-{high:016x}.ltx"


class Bucket:
    """A replica's objects as the store answers a listing and a ranged read (the two requests lag.measure makes)."""

    def __init__(self, objects: dict[str, float]) -> None:  # key -> the time in the file's header
        self.objects = objects

    def list(self, prefix: str) -> Iterator[s3.Object]:
        return iter([s3.Object(k, 4096, "") for k in sorted(self.objects) if k.startswith(prefix)])

    def read(self, key: str, length: int) -> bytes:
        if key not in self.objects:
            raise s3.S3Error("gone", 404)
        low, high = (int(x, 16) for x in key.rsplit("/", 1)[1].removesuffix(".ltx").split("-"))
        header = struct.pack(">4sIIIQQq", b"LTX1", 0, 4096, 2, low, high, int(self.objects[key] * 1000))
        return (header + bytes(100))[:length]


def _replication(tmp_path: Path, bucket: Bucket, monkeypatch: pytest.MonkeyPatch) -> Replication:
    found = Replication(Destination("dr", path="r"), "web1", {}, meta_dir=str(tmp_path / "meta"), stall_seconds=30)
    monkeypatch.setattr(Replication, "store", lambda self: bucket)
    return found


def _local(tmp_path: Path, database: str, files: dict[tuple[int, int], float]) -> None:
    level0 = tmp_path / "meta" / "tenement" / f"{database}-litestream" / "ltx" / "0"
    level0.mkdir(parents=True)
    for (low, high), written in files.items():
        (level0 / _name(low, high)).write_bytes(b"x")
        os.utime(level0 / _name(low, high), (written, written))


def test_a_replica_caught_up_is_not_behind_and_an_idle_one_is_no_fault(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bucket = Bucket({f"r/web1/tenement/tenement.db/0000/{_name(1, 7)}": NOW - 3600,
                     f"r/web1/tenement/tenement.db/0009/{_name(1, 1)}": NOW - 7200})  # fmt: skip
    _local(tmp_path, "tenement.db", {(1, 7): NOW - 3600})
    (found,) = lag.measure(_replication(tmp_path, bucket, monkeypatch), "tenement", NOW)
    assert (found.local_txid, found.replica_txid, found.behind, found.lag_seconds) == (7, 7, 0, 0.0)
    assert found.since_sync_seconds == 3600 and not found.stalled


def test_changes_waiting_longer_than_the_stall_time_are_a_stalled_replica(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bucket = Bucket({f"r/web1/tenement/demo/a/app.db/0000/{_name(1, 4)}": NOW - 100})
    _local(tmp_path, "demo/a/app.db", {(1, 4): NOW - 100, (5, 5): NOW - 45, (6, 9): NOW - 2})
    _local(tmp_path, "demo/b/app.db", {(1, 2): NOW - 5})  # made lately, nothing on the replica yet
    found = {f.database: f for f in lag.measure(_replication(tmp_path, bucket, monkeypatch), "tenement", NOW)}
    a, b = found["demo/a/app.db"], found["demo/b/app.db"]
    assert (a.behind, a.lag_seconds, a.stalled) == (5, 45.0, True)
    assert "have waited 45 s for the replica (more than 30 s)" in a.why
    assert (b.behind, b.lag_seconds, b.stalled, b.last_sync) == (2, 5.0, False, 0.0)
    text = metrics.render({"replicas": {"tenement": {"at": "2027-01-15T08:00:00.000000Z", "databases": [a.to_dict(),
                                                                                                  b.to_dict()]}}},
                          None)  # fmt: skip
    assert 'selfhost_dr_replica_stalled{app="tenement",database="demo/a/app.db"} 1' in text
    assert 'selfhost_dr_replica_lag_seconds{app="tenement",database="demo/a/app.db"} 45' in text
    assert 'selfhost_dr_replica_behind_txids{app="tenement",database="demo/b/app.db"} 2' in text
    assert 'replica_last_sync_timestamp_seconds{app="tenement",database="demo/b/app.db"}' not in text


def test_a_link_in_litestreams_state_is_not_followed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "0").mkdir(parents=True)
    (elsewhere / "0" / _name(1, 99)).write_bytes(b"x")
    state = tmp_path / "meta" / "tenement" / "tenement.db-litestream"
    state.mkdir(parents=True)
    (state / "ltx").symlink_to(elsewhere)
    bucket = Bucket({f"r/web1/tenement/tenement.db/0000/{_name(1, 3)}": NOW})
    (found,) = lag.measure(_replication(tmp_path, bucket, monkeypatch), "tenement", NOW)
    assert found.local_txid == 0 and found.behind == 0


def _sqlite(path: Path, changed: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE t (a)")
    db.commit()
    db.close()
    os.utime(path, (changed, changed))


def test_a_database_litestream_never_picked_up_is_reported_and_stalls_once_it_waited_too_long(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = time.time() + 10_000  # (each file's time set below is newer than its real ctime)
    data = tmp_path / "data"
    bucket = Bucket({f"r/web1/tenement/tenement.db/0000/{_name(1, 3)}": now - 10})
    _local(tmp_path, "tenement.db", {(1, 3): now - 10})
    _sqlite(data / "tenement.db", now - 10)
    _sqlite(data / "demo" / "new" / "app.db", now - 1)  # just made: Litestream picks it up within a second or two
    _sqlite(data / "demo" / "old" / "app.db", now - 1)  # seen with no replica by the last measure, 90 s ago
    _sqlite(data / "demo" / "x-litestream" / "app.db", now - 1)  # (named like Litestream's state directories)
    for left_alone in ("demo/.app.db.selfhost-dr-safety-1", "demo/.alpha.selfhost-dr-safety-1/app.db",
                       "demo/a/app.db-wal"):  # fmt: skip
        _sqlite(data / left_alone, now - 500)
    (data / "demo" / "a" / "notes.db").write_bytes(b"not a database" * 512)  # (whole pages, no SQLite header)
    (data / "demo" / "a" / "0.db").write_bytes(lag.SQLITE_HEADER + bytes(4080))  # Litestream fails to open it too
    (data / "demo" / "linked.db").symlink_to(data / "tenement.db")
    os.mkfifo(data / "demo" / "a" / "fifo.db")
    (data / "demo" / "linked-dir").symlink_to(data / "demo" / "new")
    replication = _replication(tmp_path, bucket, monkeypatch)
    found = {f.database: f for f in lag.measure(replication, "tenement", now, data_dir=str(data),
                                                earlier={"demo/old/app.db": now - 90})}  # fmt: skip
    assert sorted(found) == ["demo/new/app.db", "demo/old/app.db", "demo/x-litestream/app.db", "tenement.db"]
    new, old = found["demo/new/app.db"], found["demo/old/app.db"]
    assert new.unreplicated_since == now - 1 and not new.stalled
    assert old.unreplicated_since == now - 90 and old.stalled
    assert old.why == "demo/old/app.db has no replica and no Litestream state (there for 90 s)"
    assert found["tenement.db"].unreplicated_since == 0 and not found["tenement.db"].stalled
    # A database once made and copied in with its old mtime is new all the same (its ctime says so).
    copied = data / "demo" / "copied" / "app.db"
    _sqlite(copied, time.time() - 10_000)
    assert lag.on_disk(str(data))["demo/copied/app.db"] >= time.time() - 60


def test_a_data_dir_that_cannot_be_scanned_whole_is_said_and_a_name_cannot_forge_a_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tmp_path / "data"
    (data / "demo").mkdir(parents=True)
    _sqlite(data / "demo" / "a\nselfhost-dr: every replica is current\x1b[2K\udcff.db", time.time())
    assert list(lag.on_disk(str(data))) == ["demo/a\\nselfhost-dr: every replica is current\\x1b[2K\\xff.db"]
    (tmp_path / "linked").symlink_to(data)
    with pytest.raises(lag.ScanError, match=r"cannot be read as a directory .* Litestream replicates nothing below it"):
        lag.on_disk(str(tmp_path / "linked"))
    with pytest.raises(lag.ScanError, match="cannot be read as a directory"):
        lag.on_disk(str(tmp_path / "missing"))
    deep = data
    for _n in range(lag.SCAN_DEPTH + 1):
        deep = deep / "d"
    deep.mkdir(parents=True)
    with pytest.raises(lag.ScanError, match=f"is more than {lag.SCAN_DEPTH} directories deep"):
        lag.on_disk(str(data))
    monkeypatch.setattr(lag, "SCAN_DEPTH", 1000)
    monkeypatch.setattr(lag, "SCAN_LIMIT", 50)
    with pytest.raises(lag.ScanError, match="holds more than 50 entries"):
        lag.on_disk(str(data))


def test_a_data_dir_full_of_databases_with_no_replica_is_reported_in_a_hundred_entries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tmp_path / "data"
    _sqlite(data / "demo" / "a" / "app.db", time.time())
    for n in range(150):
        (data / "demo" / "a" / f"copy{n:03d}.db").write_bytes((data / "demo" / "a" / "app.db").read_bytes())
    replication = _replication(tmp_path, Bucket({}), monkeypatch)
    found = lag.measure(replication, "tenement", time.time() + 100, data_dir=str(data))
    assert len(found) == lag.SHOWN and all(f.stalled for f in found)
    (summary,) = [f for f in found if f.database.startswith("(")]
    assert summary.database == "(52 more databases with no replica)" and "52 more databases" in summary.why


def test_a_safety_copy_litestream_replicated_is_left_out_of_the_lag(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    kept = "demo/.alpha.selfhost-dr-safety-1/app.db"  # Litestream replicates a database in a hidden directory
    bucket = Bucket({f"r/web1/tenement/tenement.db/0000/{_name(1, 3)}": NOW - 10,
                     f"r/web1/tenement/{kept}/0000/{_name(1, 2)}": NOW - 10})  # fmt: skip
    _local(tmp_path, "tenement.db", {(1, 3): NOW - 10})
    _local(tmp_path, kept, {(1, 9): NOW - 500})
    found = lag.measure(_replication(tmp_path, bucket, monkeypatch), "tenement", NOW)
    assert [f.database for f in found] == ["tenement.db"]


def test_a_wide_data_dir_is_scanned_whole_with_few_descriptors(tmp_path: Path) -> None:
    data = tmp_path / "data"
    for n in range(300):
        (data / f"d{n:03d}").mkdir(parents=True)
    _sqlite(data / "d299" / "app.db", time.time())
    script = ("import resource, sys\nresource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))\n"
              "from ansible_collections.selfhost.dr.plugins.module_utils.replicas import lag\n"
              "print(sorted(lag.on_disk(sys.argv[1])))\n")  # fmt: skip
    done = subprocess.run([sys.executable, "-c", script, str(data)], capture_output=True, text=True, check=False,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})  # fmt: skip
    assert done.returncode == 0 and done.stdout.strip() == "['d299/app.db']", done.stderr[-2000:]
