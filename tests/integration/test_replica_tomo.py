"""Point-in-time restore of Tomo from Litestream replicas, by the host command as installed: the real Litestream 0.5.17
replicates ``tomo.db`` (Tomo's real schema, tests/fixtures/tomo) into a real S3 store (SeaweedFS) while the Tomo
STAND-IN (tests/fixtures/tomo/standin_tomo.py: Tomo itself cannot run here) keeps it open and writes its heartbeats,
and the test adds servers the way Tomo does (a server, its credentials and an installed application, one transaction
each), every commit timed.

``selfhost-dr restore --at T`` puts ``tomo.db`` back as it was at T (every server added well before T, none added
after), Tomo and Litestream run again and replication continues from the restored state: ``--at latest`` afterwards
brings back the servers added since, never those the first restore took away, and brings back a deleted ``tomo.db``.
The host command stops and starts the stand-in as a plain process (``[tomo] service_manager = "process"``, its
pidfile and start command), as it does Litestream."""

from __future__ import annotations

import secrets
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pytest

from ansible_collections.selfhost.dr.plugins.module_utils.host_install import toml
from ansible_collections.selfhost.dr.plugins.module_utils.replicas import replica, s3

from . import replica_host, s3_store
from .ansible_run import run_module
from .replica_host import CREDENTIALS, LITESTREAM, STOP, wait

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "tomo"
sys.path.insert(0, str(FIXTURES))
import tomo_fixture

PREFIX = "dr/web1/tomo/tomo.db"  # replicas/config.py: PATH/HOST/tomo/<the database's name>


@dataclass
class Commit:
    """One server added: when its transaction began and when its COMMIT returned (Unix time)."""

    name: str
    began: float
    committed: float


@dataclass
class Host:
    command: Path
    config: Path
    database: Path
    bucket: s3.Store
    tomo_pidfile: Path
    litestream_pidfile: Path
    meta: Path  # Litestream's state for tomo.db
    tmp: Path
    replicate_args: dict[str, object]
    commits: list[Commit] = field(default_factory=list)

    def run(self, *args: str, check: bool = True) -> tuple[int, dict[str, object]]:
        return replica_host.run(self.command, self.config, *args, check=check)

    def add_servers(self, label: str, count: int, every: float) -> list[Commit]:
        """Add ``count`` servers as Tomo does (server, credentials, an installed app: one transaction each), one
        every ``every`` seconds, while the stand-in writes its heartbeats and Litestream replicates."""
        made = []
        conn = sqlite3.connect(self.database, timeout=30, isolation_level=None)
        try:
            for n in range(count):
                number = len(self.commits)
                sid, name = f"server-{secrets.token_hex(4)}", f"{label}-{n:02d}"
                began = time.time()
                conn.execute("BEGIN IMMEDIATE")
                stamp = datetime.now(UTC).isoformat()
                conn.execute(
                    "INSERT INTO servers (id, name, host, port, username, auth_type, status, created_at)"
                    " VALUES (?, ?, ?, 22, 'root', 'key', 'connected', ?)",
                    (sid, name, f"10.20.{number // 200}.{number % 200 + 1}", stamp),
                )
                conn.execute(
                    "INSERT INTO server_credentials VALUES (?, ?, ?, ?)", (sid, f"gAAAAAB{name}", stamp, stamp)
                )
                conn.execute(
                    "INSERT INTO installed_apps (id, server_id, app_id, container_name, status, config, installed_at)"
                    " VALUES (?, ?, 'nginx', ?, 'running', '{}', ?)",
                    (f"inst-{secrets.token_hex(4)}", sid, f"nginx-{name}", stamp),
                )
                conn.execute("COMMIT")
                commit = Commit(name, began, time.time())
                self.commits.append(commit)
                made.append(commit)
                time.sleep(every)
        finally:
            conn.close()
        return made

    def replicated(self) -> None:
        """Wait until the replica holds every server added: Litestream has written a level-0 file after the last
        commit (it holds that commit), and the replica reaches that file's transaction."""
        last = self.commits[-1].committed
        wait("Litestream's level-0 file after the last commit", lambda: _local_txid(self.meta, last), 15)
        local = _local_txid(self.meta, last)
        wait("the replica caught up", lambda: replica.replica_txid(replica.files(self.bucket, PREFIX)) >= local, 30)


def _runs(pidfile: Path) -> int:
    """The pid start-stop-daemon's pidfile names when that process runs, else 0."""
    alive = subprocess.run(["start-stop-daemon", "--status", "--pidfile", str(pidfile)], check=False).returncode == 0
    return int(pidfile.read_text().strip()) if alive else 0


def _local_txid(meta: Path, after: float) -> int:
    """Litestream's local position: the newest of the level-0 files in the database's state directory written after
    ``after`` (Unix time), 0 when there is none yet."""
    found = []
    for path in (meta / "ltx" / "0").glob("*.ltx"):
        try:
            if path.stat().st_mtime > after:
                found.append(int(path.name.split("-")[1][:16], 16))
        except FileNotFoundError:
            continue  # (removed by Litestream's retention meanwhile)
    return max(found, default=0)


def _read(path: Path, sql: str) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    try:
        return list(conn.execute(sql))
    finally:
        conn.close()  # (one left open would keep a restore from replacing the database: it waits, then says so)


def _servers(path: Path) -> list[str]:
    """The servers the test added (by name, in the order added), each whole: with its credentials and its app."""
    rows = _read(path, """SELECT s.name, c.encrypted_data, a.container_name FROM servers s
                          LEFT JOIN server_credentials c ON c.server_id = s.id
                          LEFT JOIN installed_apps a ON a.server_id = s.id
                          WHERE s.host LIKE '10.20.%' ORDER BY s.created_at""")  # fmt: skip
    assert all(cred == f"gAAAAAB{n}" and app == f"nginx-{n}" for n, cred, app in rows), rows
    return [str(n) for n, _c, _a in rows]


def _heartbeats(path: Path) -> list[str]:
    return [str(t) for (t,) in _read(path, "SELECT timestamp FROM activity_logs WHERE activity_type = 'heartbeat'")]


def _identity(path: Path) -> list[tuple[object, ...]]:
    """What the fixture's install holds besides: its users and its identity, never touched by the test."""
    return _read(path, "SELECT username, email, password_hash FROM users ORDER BY username") + _read(
        path, "SELECT installation_id, license_type, setup_by_user_id FROM system_info"
    )


@pytest.fixture
def host(tmp_path: Path, store: s3_store.Store) -> Iterator[Host]:
    if not LITESTREAM.exists():
        pytest.fail("litestream is not installed in the test virtualenv: run scripts/test")
    bucket = replica_host.bucket(store, "tomo")
    data = tmp_path / "var-lib-tomo"
    data.mkdir(mode=0o700)
    database = data / "tomo.db"
    tomo_fixture.create(str(database), "source")  # Tomo's real schema, its rollback journal
    # The stand-in as tomo.service runs it: its environment file (TOMO_MASTER_PASSWORD), a plain process here.
    environment = tmp_path / "environment"
    environment.write_text("TOMO_MASTER_PASSWORD='stand-in master password'\n")
    environment.chmod(0o600)
    tomo_start, tomo_pidfile = replica_host.service(
        tmp_path, "tomo", environment,
        f"export DATA_DIRECTORY={data}\nexec {sys.executable} {FIXTURES / 'standin_tomo.py'}",
    )  # fmt: skip
    # Litestream configured by the replicate role's module, with the operator's consent to WAL mode.
    conf, env_file = tmp_path / "litestream.yml", tmp_path / "litestream.env"
    replicate_args: dict[str, object] = {
        "app": "tomo", "database": str(database), "host": "web1", "metrics_addr": "127.0.0.1:0",
        "destination": {"bucket": bucket.bucket, "path": "dr", "endpoint": store.endpoint},
        "settings": {"levels": ["3s", "9s"], "l0_retention": "30s", "snapshot_interval": "1h"},
        "meta_dir": str(tmp_path / "meta"), "config_path": str(conf), "env_file": str(env_file),
        "credentials": CREDENTIALS,
        "accept_wal": True,
    }  # fmt: skip
    written = run_module("replicate_config", replicate_args)
    assert written.get("changed") is True and not written.get("failed"), written
    assert written["prefix"] == "dr/web1/tomo" and [d["path"] for d in written["config"]["dbs"]] == [str(database)]  # type: ignore[index]
    ls_start, ls_pidfile = replica_host.litestream(tmp_path, conf, env_file)
    command = replica_host.host_command(tmp_path)
    cfg = tmp_path / "config.toml"
    cfg.write_text(toml({
        "app": "tomo",
        "backup_dir": str(tmp_path / "backups"),
        "state_dir": str(tmp_path / "state"),
        "tomo": {"database": str(database), "service": "tomo", "service_manager": "process",
                 "pidfile": str(tomo_pidfile), "start_command": tomo_start, "environment": str(environment),
                 "known_hosts": str(tmp_path / "known_hosts"), "version": "1.2.0", "settle": 1.0},
        "replicate": {"bucket": bucket.bucket, "path": "dr", "endpoint": store.endpoint, "env_file": str(env_file),
                      "host": "web1", "binary": str(LITESTREAM), "service": "litestream", "service_manager": "process",
                      "pidfile": str(ls_pidfile), "start_command": ls_start, "meta_dir": str(tmp_path / "meta")},
    }))  # fmt: skip
    cfg.chmod(0o600)
    subprocess.run(tomo_start, check=True)
    wait("the stand-in Tomo writes", lambda: _heartbeats(database), 15)
    subprocess.run(ls_start, check=True)
    try:
        yield Host(command, cfg, database, bucket, tomo_pidfile, ls_pidfile, tmp_path / "meta" / "tomo" / "tomo.db",
                   tmp_path, replicate_args)  # fmt: skip
    finally:
        replica_host.stop(ls_pidfile, tomo_pidfile)


def test_tomo_goes_back_to_a_moment_and_then_to_its_newest_state(host: Host) -> None:
    # Without the operator's consent to WAL mode the module refuses, in check mode (asked meanwhile: ansible is slow).
    never = {**host.replicate_args, "accept_wal": False, "config_path": str(host.tmp / "never.yml")}
    with ThreadPoolExecutor(1) as pool:
        refusal = pool.submit(run_module, "replicate_config", never, check=True)
        wait("the replica of tomo.db", lambda: any(host.bucket.list(f"{PREFIX}/0009/")), 20)
        assert _read(host.database, "PRAGMA journal_mode") == [("wal",)], "Litestream did not switch tomo.db to WAL"
        identity = _identity(host.database)
        before = host.add_servers("before", 20, 0.25)
        moment = datetime.now(UTC)
        time.sleep(0.3)
        after = host.add_servers("after", 8, 0.25)
        assert before[-1].committed < moment.timestamp() < after[0].began
        host.replicated()
        refused = refusal.result()
    assert refused.get("failed") and "replicate_tomo_accept_wal" in str(refused.get("msg")), refused
    assert not (host.tmp / "never.yml").exists()

    # 1. Every change reached the replica: the database is replicated, nothing behind, nothing stalled.
    def current() -> bool:
        _code, measured = host.run("replicas")
        (only,) = measured["databases"]  # type: ignore[misc]
        assert only["database"] == "tomo.db" and only["stalled"] is False, only
        return only["behind"] == 0

    wait("selfhost-dr replicas showing tomo.db with nothing behind", current, 20)  # (the stand-in writes on)

    # 2. Check mode plans tomo.db at the moment and changes nothing.
    servers, tomo_pid, litestream_pid = (
        _servers(host.database),
        _runs(host.tomo_pidfile),
        _runs(host.litestream_pidfile),
    )
    assert servers == [c.name for c in host.commits] and tomo_pid and litestream_pid
    _code, planned = host.run("restore", "--at", moment.isoformat(), "--check")
    (plan,) = planned["databases"]  # type: ignore[misc]
    assert (plan["path"], plan["target"]) == ("tomo.db", str(host.database)), planned
    assert datetime.fromisoformat(plan["reached"]) <= moment and planned["warnings"] == [], planned
    assert _servers(host.database) == servers, "check mode changed tomo.db"
    assert (_runs(host.tomo_pidfile), _runs(host.litestream_pidfile)) == (tomo_pid, litestream_pid), "a restart"
    assert [p.name for p in host.database.parent.iterdir() if ".selfhost-dr-" in p.name] == []

    # 3. The restore: tomo.db as it was at the moment, Tomo and Litestream running again.
    second = lambda t: datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%S")  # noqa: E731 (Tomo's format)
    started, mode = time.time(), host.database.stat()
    assert [t for t in _heartbeats(host.database) if second(moment.timestamp()) < t < second(started)]
    _code, done = host.run("restore", "--at", moment.isoformat())
    (reached,) = done["databases"]  # type: ignore[misc]
    assert reached["path"] == "tomo.db" and datetime.fromisoformat(reached["reached"]) <= moment, done
    restored = _servers(host.database)
    assert restored == [c.name for c in host.commits][: len(restored)], "not the servers added first"
    assert not {c.name for c in after} & set(restored), "a server added after the moment came back"
    missing = [c.name for c in before if c.committed <= moment.timestamp() - 3 and c.name not in restored]
    assert missing == [], f"servers added well before the moment are missing: {missing}"
    later = [t for t in _heartbeats(host.database) if second(moment.timestamp()) < t < second(started)]
    assert later == [], f"heartbeats the stand-in wrote after the moment came back: {later[:5]}"
    assert _identity(host.database) == identity, "the install's users or identity changed"
    assert _read(host.database, "PRAGMA integrity_check") == [("ok",)]
    now = host.database.stat()
    assert (now.st_mode, now.st_uid, now.st_gid) == (mode.st_mode, mode.st_uid, mode.st_gid), "tomo.db's mode changed"
    new_tomo = _runs(host.tomo_pidfile)
    assert new_tomo and new_tomo != tomo_pid, "the stand-in Tomo was not started again"
    beats = len(_heartbeats(host.database))
    wait("the restarted Tomo writing to the restored database", lambda: len(_heartbeats(host.database)) > beats, 10)
    assert _runs(host.litestream_pidfile), "Litestream was not started again"
    leftovers = [p.name for p in host.database.parent.iterdir() if ".selfhost-dr-" in p.name]
    assert leftovers == [], leftovers
    assert not (host.tmp / "state" / "litestream-paused-by-restore").exists()

    # 4. Replication continues from the restored state: the newest state holds what was added since, and nothing
    # the restore took away.
    since = host.add_servers("since", 4, 0.1)
    host.replicated()
    _code, latest = host.run("restore", "--at", "latest")
    assert [d["path"] for d in latest["databases"]] == ["tomo.db"], latest  # type: ignore[union-attr]
    assert _servers(host.database) == restored + [c.name for c in since], "the newest state is not back"
    assert _read(host.database, "PRAGMA integrity_check") == [("ok",)]
    assert _identity(host.database) == identity
    assert _runs(host.tomo_pidfile) not in (0, new_tomo), "the stand-in Tomo was not started again"
    assert _runs(host.litestream_pidfile), "Litestream was not started again"
    assert [p.name for p in host.database.parent.iterdir() if ".selfhost-dr-" in p.name] == []

    # 5. tomo.db deleted (Tomo stopped, or dead with it): its replica brings it back, readable by its owner alone.
    newest = _servers(host.database)
    subprocess.run([*STOP, str(host.tomo_pidfile)], check=True)
    for suffix in ("", "-wal", "-shm"):
        Path(f"{host.database}{suffix}").unlink(missing_ok=True)
    _code, back = host.run("restore", "--at", "latest")
    assert [d["target"] for d in back["databases"]] == [str(host.database)], back  # type: ignore[union-attr]
    assert _servers(host.database) == newest and _identity(host.database) == identity
    assert _read(host.database, "PRAGMA integrity_check") == [("ok",)]
    assert host.database.stat().st_mode & 0o777 == 0o600
    assert _runs(host.tomo_pidfile) and _runs(host.litestream_pidfile), "Tomo or Litestream does not run"
