"""Point-in-time restore from Litestream replicas (issue 17), by the host command as installed, on a real tenement
0.2.2 whose databases the real Litestream 0.5.17 replicates into a real S3 store (SeaweedFS).

Two demo instances; alpha's writer commits rows (each stamped with its time) while Litestream runs. ``selfhost-dr
restore --at T`` puts every database back as it was at T: alpha holds no row made after T and a prefix of the rows,
both instances run again, the previous databases were kept aside until the restore stood, and Litestream runs again
and continues the replica from the restored state (a later restore to the newest state holds the restored rows and
what came after, nothing of what the restore took away)."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest

from ansible_collections.selfhost.dr.plugins.module_utils.apps.tenement_client import TenementClient
from ansible_collections.selfhost.dr.plugins.module_utils.host_install import toml
from ansible_collections.selfhost.dr.plugins.module_utils.replicas import replica, s3

from . import replica_host, s3_store
from .ansible_run import run_module
from .replica_host import CREDENTIALS, LITESTREAM, wait
from .tenement_fixture import _instance_ports_free, write_config


@dataclass
class Host:
    command: Path
    config: Path
    data_dir: Path
    client: TenementClient
    bucket: s3.Store
    litestream_pidfile: Path
    tmp: Path
    tenement_options: dict[str, object]

    def run(self, *args: str, check: bool = True) -> tuple[int, dict[str, object]]:
        return replica_host.run(self.command, self.config, *args, check=check)

    def post(self, name: str, route: str) -> dict[str, object]:
        listen = self.client.instances()[name].listen
        request = urllib.request.Request(f"http://{listen}{route}", method="POST", data=b"")
        with urllib.request.urlopen(request, timeout=10) as resp:
            return json.load(resp)

    def litestream_runs(self) -> bool:
        return replica_host.runs(self.litestream_pidfile)


def _rows(path: Path) -> list[tuple[int, float]]:
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return list(db.execute("SELECT id, created_at FROM items ORDER BY id"))
    finally:
        db.close()  # (one left open would keep the restore from replacing the database: it waits, then says so)


@pytest.fixture
def host(tmp_path: Path, free_port: int, ten_bin: str, store: s3_store.Store) -> Iterator[Host]:
    if not LITESTREAM.exists():
        pytest.fail("litestream is not installed in the test virtualenv: run scripts/test")
    _instance_ports_free()
    bucket = replica_host.bucket(store, "pitr")
    workdir = tmp_path / "etc"
    workdir.mkdir()
    data_dir = tmp_path / "data"
    write_config(workdir, data_dir, sys.executable)
    subprocess.run([ten_bin, "token-gen", "--data-dir", str(data_dir)], cwd=workdir, check=True, capture_output=True)
    pidfile = tmp_path / "ten.pid"
    start = [
        "start-stop-daemon", "--start", "--background", "--make-pidfile", "--pidfile", str(pidfile),
        "--chdir", str(workdir), "--output", str(tmp_path / "serve.log"), "--exec", ten_bin,
        "--", "serve", "--port", str(free_port), "--data-dir", str(data_dir),
    ]  # fmt: skip
    # Litestream configured by the replicate role's module (levels quick, so that files are compacted in the test).
    conf, env_file = tmp_path / "litestream.yml", tmp_path / "litestream.env"
    module_args = {
        "app": "tenement", "data_dir": str(data_dir), "host": "web1", "metrics_addr": "127.0.0.1:0",
        "destination": {"bucket": bucket.bucket, "path": "dr", "endpoint": store.endpoint},
        "settings": {"levels": ["3s", "9s"], "l0_retention": "30s", "snapshot_interval": "1h"},
        "meta_dir": str(tmp_path / "meta"), "config_path": str(conf), "env_file": str(env_file),
        "credentials": CREDENTIALS,
    }  # fmt: skip
    written = run_module("replicate_config", module_args)
    assert written.get("changed") is True and not written.get("failed"), written
    assert run_module("replicate_config", module_args).get("changed") is False, "a second run changed something"
    assert s3_store.SECRET_KEY not in json.dumps(written) and s3_store.SECRET_KEY not in conf.read_text()
    assert {oct(p.stat().st_mode & 0o777) for p in (conf, env_file, tmp_path / "meta")} == {"0o600", "0o700"}
    ls_start, ls_pidfile = replica_host.litestream(tmp_path, conf, env_file)
    command = replica_host.host_command(tmp_path)
    cfg = tmp_path / "config.toml"
    server = f"http://127.0.0.1:{free_port}"
    cfg.write_text(toml({
        "app": "tenement",
        "backup_dir": str(tmp_path / "backups"),
        "state_dir": str(tmp_path / "state"),
        "metrics": {"textfile_dir": str(tmp_path / "metrics")},
        "tenement": {"config_dir": str(workdir), "server": server, "ten_bin": ten_bin, "service_manager": "process",
                     "pidfile": str(pidfile), "start_command": start},
        "replicate": {"bucket": bucket.bucket, "path": "dr", "endpoint": store.endpoint, "env_file": str(env_file),
                      "host": "web1", "binary": str(LITESTREAM), "service": "litestream", "service_manager": "process",
                      "pidfile": str(ls_pidfile), "start_command": ls_start, "meta_dir": str(tmp_path / "meta")},
    }))  # fmt: skip
    cfg.chmod(0o600)
    (tmp_path / "metrics").mkdir()
    subprocess.run(start, check=True)
    token = (data_dir / "api_token").read_text().strip()
    client = TenementClient(ten_bin, server=server, token=token, data_dir=str(data_dir))
    wait("ten serve answers", client.reachable, 15)
    for name in ("demo:alpha", "demo:beta"):
        client.spawn(name)
        client.wait_healthy(name, timeout=20)
    subprocess.run(ls_start, check=True)
    try:
        tenement_options = {"tenement_config_dir": str(workdir), "tenement_server": server, "tenement_ten_bin": ten_bin,
                            "tenement_service_manager": "process", "tenement_pidfile": str(pidfile),
                            "tenement_start_command": start}  # fmt: skip
        yield Host(command, cfg, data_dir, client, bucket, ls_pidfile, tmp_path, tenement_options)
    finally:
        replica_host.stop(ls_pidfile, pidfile)


def test_every_database_goes_back_to_one_moment_and_replication_continues_from_there(host: Host) -> None:
    alpha = host.data_dir / "demo" / "alpha" / "app.db"
    prefix = "dr/web1/tenement"
    for name in ("tenement.db", "demo/alpha/app.db", "demo/beta/app.db"):
        wait(f"the replica of {name}", lambda n=name: any(host.bucket.list(f"{prefix}/{n}/0009/")))
    host.post("demo:alpha", "/writer/start?rate=10")
    time.sleep(8)
    moment = datetime.now(UTC)
    time.sleep(2)
    late = host.data_dir / "demo" / "late" / "app.db"  # a database made after the moment (an instance spawned later)
    late.parent.mkdir()
    made = sqlite3.connect(late)
    made.execute("CREATE TABLE t (a)")
    made.commit()
    made.close()
    time.sleep(6)
    host.post("demo:alpha", "/writer/stop")
    wait("the later database's replica", lambda: any(host.bucket.list(f"{prefix}/demo/late/app.db/")))
    after = _rows(alpha)
    assert any(at > moment.timestamp() for _id, at in after) and any(at <= moment.timestamp() for _id, at in after)
    meta = host.tmp / "meta" / "tenement" / "demo" / "alpha" / "app.db-litestream"
    listing = lambda: replica.files(host.bucket, f"{prefix}/demo/alpha/app.db")  # noqa: E731
    wait("the replica caught up", lambda: replica.replica_txid(listing()) >= _local_txid(meta) > 0)

    # Caught up: no database behind, none stalled.
    _code, lagged = host.run("replicas")
    measured = {d["database"]: (d["behind"], d["stalled"]) for d in lagged["databases"]}  # type: ignore[union-attr]
    assert sorted(measured) == ["demo/alpha/app.db", "demo/beta/app.db", "demo/late/app.db", "tenement.db"]
    assert measured["demo/alpha/app.db"] == measured["tenement.db"] == (0, False), measured

    # Check mode plans every database at the moment and changes nothing.
    _code, planned = host.run("restore", "--at", moment.isoformat(), "--check")
    assert {d["path"] for d in planned["databases"]} == {"tenement.db", "demo/alpha/app.db", "demo/beta/app.db"}
    assert host.litestream_runs() and _rows(alpha) == after
    assert sorted(host.client.instances()) == ["demo:alpha", "demo:beta"]

    _code, done = host.run("restore", "--at", moment.isoformat())
    restored = _rows(alpha)
    assert restored, "alpha's rows are gone"
    assert all(at <= moment.timestamp() for _id, at in restored), "a row made after the moment came back"
    assert [i for i, _at in restored] == [i for i, _at in after][: len(restored)], "not a prefix of the rows"
    made_before = [i for i, at in after if at <= moment.timestamp() - 4]  # (Litestream's files: a sync or two)
    assert len(restored) >= len(made_before), f"{len(made_before) - len(restored)} rows made well before are missing"
    assert done["warnings"] == ["demo/late/app.db did not exist by the moment: left as it is"], done
    assert late.exists(), "a database made after the moment was removed"
    by_path = {d["path"]: d for d in done["databases"]}  # type: ignore[union-attr]
    assert all(d["reached"] <= moment.isoformat() for d in by_path.values()), by_path
    assert sorted(host.client.instances()) == ["demo:alpha", "demo:beta"], "the instances were not respawned"
    assert host.litestream_runs(), "Litestream was not started again"
    leftovers = [p for p in host.data_dir.rglob("*") if ".selfhost-dr-" in p.name]
    assert leftovers == [], leftovers
    assert not (host.data_dir / "demo" / "alpha" / "app.db-wal").exists() or _rows(alpha) == restored

    # Replication continues from the restored state: new rows arrive, the rows the restore took away do not.
    host.post("demo:alpha", "/rows?n=3")
    newest = _rows(alpha)
    assert len(newest) == len(restored) + 3
    wait("the new rows replicated", lambda: _latest_rows(host, "demo/alpha/app.db") == newest, 60)

    # A restore from a set stops Litestream for its duration as well, and starts it again.
    stops = (host.tmp / "litestream.log").read_text().count("litestream shutting down")
    host.run("backup", "--mode", "hot")
    host.run("restore")
    assert host.litestream_runs() and (host.tmp / "litestream.log").read_text().count("shutting down") == stops + 1
    assert not (host.tmp / "state" / "litestream-paused-by-restore").exists()

    # So does the module given the host command's configuration. The safety copy it keeps here is an instance's
    # directory, which Litestream replicates (its pattern sees file names only): never restored, never measured.
    done = run_module("app_restore", {"app": "tenement", "dir": str(host.tmp / "backups"), "instances": ["demo:alpha"],
                                      "keep_safety": True, "config_path": str(host.config),
                                      "state_dir": str(host.tmp / "state"), **host.tenement_options})  # fmt: skip
    assert not done.get("failed"), done
    assert host.litestream_runs() and (host.tmp / "litestream.log").read_text().count("shutting down") == stops + 2
    kept = [p.relative_to(host.data_dir) for p in host.data_dir.rglob("app.db") if ".selfhost-dr-safety-" in str(p)]
    assert len(kept) == 1 and kept[0].parts[1].startswith("."), kept
    wait("the safety copy's replica", lambda: any(host.bucket.list(f"{prefix}/{kept[0]}/")))
    _code, lagged = host.run("replicas")
    assert sorted(d["database"] for d in lagged["databases"]) == [  # type: ignore[union-attr]
        "demo/alpha/app.db", "demo/beta/app.db", "demo/late/app.db", "tenement.db"]  # fmt: skip
    _code, planned = host.run("restore", "--at", "latest", "--check")
    assert len(planned["databases"]) == 4, planned  # type: ignore[arg-type]


def _latest_rows(host: Host, database: str) -> list[tuple[int, float]]:
    out = host.tmp / f"latest-{time.monotonic_ns()}.db"
    env = {"PATH": os.environ["PATH"], "LITESTREAM_ACCESS_KEY_ID": s3_store.ACCESS_KEY,
           "LITESTREAM_SECRET_ACCESS_KEY": s3_store.SECRET_KEY}  # fmt: skip
    url = f"s3://{host.bucket.bucket}/dr/web1/tenement/{database}?endpoint={host.bucket.endpoint}&forcePathStyle=true"
    done = subprocess.run([str(LITESTREAM), "restore", "-o", str(out), url], env=env, capture_output=True, text=True,
                          timeout=60, check=False)  # fmt: skip
    return _rows(out) if done.returncode == 0 else []


def test_what_a_point_in_time_restore_refuses_changes_nothing(host: Host) -> None:
    for name in ("tenement.db", "demo/alpha/app.db"):
        wait(f"the replica of {name}", lambda n=name: any(host.bucket.list(f"dr/web1/tenement/{n}/0009/")))
    before = _rows(host.data_dir / "demo" / "alpha" / "app.db")
    cases = {
        ("--at", "2020-01-01T00:00:00Z"): "nothing of tenement was replicated by 2020-01-01",
        ("--at", "latest", "--database", "demo/gamma/app.db"): "there is no replica of demo/gamma/app.db",
        ("--at", "yesterday"): "the moment to restore to is latest or a time",
        ("--at", "2026-01-01T00:00:00"): "needs its time zone",
        ("--database", "tenement.db"): "give --at TIME or --at latest",
    }
    for args, said in cases.items():
        code, result = host.run("restore", *args, check=False)
        assert code != 0 and said in str(result.get("error")), (args, result)
    # The module refuses as the command does (check mode and the run alike), and so does the role's module.
    options = {"app": "tenement", "config_path": str(host.config), "at": "2020-01-01T00:00:00Z",
               "state_dir": str(host.tmp / "state"), **host.tenement_options}  # fmt: skip
    for check in (True, False):
        refused = run_module("replica_restore", options, check=check)
        said = str(refused.get("msg"))
        assert refused.get("failed") and "nothing of tenement was replicated by 2020-01-01" in said, refused
    # A host with no replication state of its own may not continue another's replicas (a rebuilt host would
    # overwrite "latest" with its empty databases), unless it adopts them.
    fresh = {"host": "web1", "data_dir": str(host.data_dir), "meta_dir": str(host.tmp / "new-meta"),
             "destination": {"bucket": host.bucket.bucket, "path": "dr", "endpoint": host.bucket.endpoint},
             "config_path": str(host.tmp / "never.yml"), "env_file": str(host.tmp / "never.env"),
             "credentials": CREDENTIALS}  # fmt: skip
    refused = run_module("replicate_config", fresh, check=True)
    assert refused.get("failed") and "already holds replicas, and this host has no replication state" in str(
        refused.get("msg")), refused  # fmt: skip
    assert not run_module("replicate_config", {**fresh, "adopt": True}, check=True).get("failed")
    plaintext = run_module("replicate_config", {"host": "web1", "destination": {"bucket": "dr-x"}, "encrypt": True,
                                                "config_path": str(host.tmp / "never.yml")}, check=True)  # fmt: skip
    assert plaintext.get("failed") and "Litestream 0.5 cannot encrypt what it uploads" in str(plaintext.get("msg"))
    assert not (host.tmp / "never.yml").exists()
    assert host.litestream_runs()
    assert _rows(host.data_dir / "demo" / "alpha" / "app.db") == before
    assert sorted(host.client.instances()) == ["demo:alpha", "demo:beta"]

    # Litestream stopped: every replica has stalled, which fails, is recorded and exported.
    subprocess.run(["start-stop-daemon", "--stop", "--retry", "TERM/10/KILL/5", "--pidfile",
                    str(host.litestream_pidfile)], check=True)  # fmt: skip
    code, result = host.run("replicas", "--export", check=False)
    assert code == 1 and "stalled: litestream does not run" in str(result["error"]), result
    prom = (host.tmp / "metrics" / "selfhost_dr.prom").read_text()
    assert 'selfhost_dr_replica_stalled{app="tenement",database="demo/alpha/app.db"} 1' in prom
    _code, status = host.run("status")
    assert "does not run" in status["replicas"]["tenement"]["reason"]  # type: ignore[index]

    # A restore killed while Litestream was stopped leaves its mark: the next measure starts Litestream again.
    (host.tmp / "state" / "litestream-paused-by-restore").write_text("litestream\n")
    _code, resumed = host.run("replicas")
    assert "started litestream again" in str(resumed["actions"]) and host.litestream_runs(), resumed
    assert not (host.tmp / "state" / "litestream-paused-by-restore").exists()


def _local_txid(meta: Path) -> int:
    """Litestream's local position: the newest level-0 file in the database's state directory."""
    level0 = meta / "ltx" / "0"
    return max((int(p.name.split("-")[1][:16], 16) for p in level0.glob("*.ltx")), default=0) if level0.is_dir() else 0
