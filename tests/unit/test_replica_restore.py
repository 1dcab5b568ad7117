"""The parts of a point-in-time restore (issue 17) that need no store: which databases a replica holds (its keys are
hostile input), what is swapped in where, the journal of a database finished before it is replaced, the host's
``[replicate]`` table and ``--at``. The whole restore, with the real Litestream, SeaweedFS and tenement:
tests/integration/test_replica_restore.py."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from ansible_collections.selfhost.dr.plugins.module_utils import cli
from ansible_collections.selfhost.dr.plugins.module_utils._common import RestoreError, UsageError
from ansible_collections.selfhost.dr.plugins.module_utils.engine import replica_restore
from ansible_collections.selfhost.dr.plugins.module_utils.replicas import litestream, replica, s3
from ansible_collections.selfhost.dr.plugins.module_utils.replicas.config import ReplicaConfigError
from ansible_collections.selfhost.dr.plugins.module_utils.replicas.ltx import LtxError

NAME = "0000000000000001-0000000000000004.ltx"


class Listed:
    """A bucket's listing as the store answers it (what replica.databases reads; nothing else is asked)."""

    def __init__(self, keys: list[str]) -> None:
        self.keys = keys

    def list(self, prefix: str) -> Iterator[s3.Object]:
        return iter([s3.Object(k, 200, "") for k in self.keys if k.startswith(prefix)])


def test_each_database_of_a_replica_is_found_by_its_path_below_the_prefix() -> None:
    store = Listed([
        f"dr/web1/tenement/tenement.db/0000/{NAME}",
        f"dr/web1/tenement/tenement.db/0009/{NAME}",
        f"dr/web1/tenement/demo/alpha/app.db/0001/{NAME}",
        f"dr/web1/tenement/demo/0001/x.db/0000/{NAME}",  # a directory named like a level: the key's end decides
        "dr/web1/tenement/README",  # not Litestream's: left alone
        f"dr/web1/tenement/odd/0010/{NAME}",  # level 16 does not exist
    ])  # fmt: skip
    found = replica.databases(store, "dr/web1/tenement")  # type: ignore[arg-type]
    assert sorted(found) == ["demo/0001/x.db", "demo/alpha/app.db", "tenement.db"]
    assert sorted(level for level, _obj in found["tenement.db"]) == [0, 9]


@pytest.mark.parametrize("path", ["../etc/passwd.db", "demo/../../x.db", "demo/./a.db", "demo//a.db", "a\x01b.db"])
def test_a_database_path_that_could_leave_the_data_dir_is_refused(path: str) -> None:
    store = Listed([f"dr/t/{path}/0000/{NAME}"])
    with pytest.raises(LtxError, match="is not the path of a database below a replica"):
        replica.databases(store, "dr/t")  # type: ignore[arg-type]


def test_a_database_in_an_existing_directory_is_swapped_alone_one_in_a_missing_one_with_its_directory(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    (data / "demo" / "alpha").mkdir(parents=True)
    (data / "tenement.db").write_bytes(b"SQLite format 3\x00" + bytes(84))
    (data / "tenement.db").chmod(0o640)
    targets = [str(data / "tenement.db"), str(data / "demo/alpha/app.db"), str(data / "demo/gamma/app.db"),
               str(data / "demo/gamma/cache.db"), str(data / "other/x/y.db")]  # fmt: skip
    manifest, paths = replica_restore._manifest("tenement", str(data), targets)
    assert paths == [str(data / "tenement.db"), str(data / "demo/alpha/app.db"), str(data / "demo/gamma"),
                     str(data / "other")]  # fmt: skip
    entries = {"/" + str(e["path"]): e for e in manifest["files"]}  # type: ignore[attr-defined]
    assert entries[str(data / "tenement.db")]["mode"] == "0640", "the database's own mode is kept"
    assert entries[str(data / "demo/gamma")]["type"] == "dir" and entries[str(data / "other/x")]["type"] == "dir"
    assert manifest["paths"] == [str(data)]


def test_a_link_or_a_directory_where_a_database_goes_is_refused(tmp_path: Path) -> None:
    data = tmp_path / "data"
    (data / "demo").mkdir(parents=True)
    (data / "demo" / "alpha").symlink_to(tmp_path)
    with pytest.raises(RestoreError, match="is a symbolic link; refusing to restore"):
        replica_restore._manifest("tenement", str(data), [str(data / "demo/alpha/app.db")])
    (data / "demo" / "beta" / "app.db").mkdir(parents=True)
    with pytest.raises(RestoreError, match="is not a regular file; refusing to restore a database over it"):
        replica_restore._manifest("tenement", str(data), [str(data / "demo/beta/app.db")])


def test_a_file_that_is_no_database_is_never_replaced_by_a_replica(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "notes.txt").write_text("a person's notes\n")
    with pytest.raises(RestoreError, match="is not an SQLite database, so no replica of it can be Litestream's"):
        replica_restore._manifest("tenement", str(data), [str(data / "notes.txt")])
    for journal in ("demo/app.db-wal", "app.db-journal"):
        with pytest.raises(LtxError, match="names a file this collection never replicates"):
            replica.databases(Listed([f"dr/t/{journal}/0000/{NAME}"]), "dr/t")  # type: ignore[arg-type]
    # A hidden one (a kept safety copy, which Litestream replicates) is left out, never restored, and said.
    ignored: list[str] = []
    hidden = ["demo/.app.db.selfhost-dr-safety-x", "demo/.alpha.selfhost-dr-safety-x/app.db"]
    listed = Listed([f"dr/t/{h}/0000/{NAME}" for h in hidden] + [f"dr/t/demo/alpha/app.db/0000/{NAME}"])
    assert list(replica.databases(listed, "dr/t", ignored)) == ["demo/alpha/app.db"]  # type: ignore[arg-type]
    assert ignored == hidden
    with pytest.raises(LtxError, match="is not the path of a database"):
        replica.databases(Listed([f"dr/t/{'x' * 256}.db/0000/{NAME}"]), "dr/t")  # type: ignore[arg-type]


def _wal_database(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=wal")
    db.execute("PRAGMA wal_autocheckpoint=0")
    db.execute("CREATE TABLE t (a)")
    db.execute("INSERT INTO t VALUES (1)")
    return db


def test_a_databases_wal_is_finished_into_it_before_it_is_replaced(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    writer = _wal_database(path)
    writer.execute("INSERT INTO t VALUES (2)")
    os.link(path.with_name("app.db-wal"), tmp_path / "wal-kept")  # (the -wal as the crashed writer left it)
    writer.close()
    os.link(tmp_path / "wal-kept", path.with_name("app.db-wal"))
    assert (path.with_name("app.db-wal")).stat().st_size > 0
    replica_restore.settle(str(path))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["app.db", "wal-kept"]
    db = sqlite3.connect(f"file:{path}?mode=ro&immutable=1", uri=True)
    assert [r[0] for r in db.execute("SELECT a FROM t")] == [1, 2], "the -wal's commits were lost"
    db.close()


def test_a_process_that_keeps_the_database_open_is_named_and_nothing_is_replaced(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    _wal_database(path).close()
    hold = "import sqlite3, sys, time; c = sqlite3.connect(sys.argv[1]); c.execute('SELECT * FROM t').fetchall(); " \
        "print('open', flush=True); time.sleep(60)"  # fmt: skip
    holder = subprocess.Popen([sys.executable, "-c", hold, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "open\n"
        with pytest.raises(RestoreError, match=rf"process {holder.pid} \(python.*\) still has .*app.db open 0.5 s"):
            replica_restore.settle(str(path), timeout=0.5)
        assert path.with_name("app.db-shm").exists(), "the database was left as it was"
    finally:
        holder.kill()
        holder.wait()


def _table(tmp_path: Path, **more: object) -> dict[str, object]:
    env = tmp_path / "litestream.env"
    env.write_text("AWS_ACCESS_KEY_ID=id\nAWS_SECRET_ACCESS_KEY=the-secret\n")
    env.chmod(0o600)
    return {"bucket": "dr-replicas", "path": "r", "endpoint": "http://127.0.0.1:8333", "env_file": str(env),
            "host": "web1", "service_manager": "systemd", **more}  # fmt: skip


def test_the_hosts_replicate_table_gives_where_each_apps_replicas_are(tmp_path: Path) -> None:
    found = litestream.from_config(_table(tmp_path))
    assert found.prefix("tenement", "demo/alpha/app.db") == "r/web1/tenement/demo/alpha/app.db"
    assert found.shown == "s3://dr-replicas/r/web1 at http://127.0.0.1:8333"
    env = found.environment()
    assert env["LITESTREAM_SECRET_ACCESS_KEY"] == "the-secret" and "AWS_CA_BUNDLE" not in env
    assert "the-secret" not in repr(found)


@pytest.mark.parametrize(
    ("change", "said"),
    [
        ({"bucket": "UPPER"}, "is not an S3 bucket name"),
        ({"colour": "red"}, "has no setting 'colour'"),
        ({"host": "../x"}, "may not hold the segment"),
        ({"stall_seconds": 0}, "stall_seconds must be a number of seconds above 0"),
        ({"binary": "litestream"}, "must be an absolute, normal path"),
    ],
)
def test_a_replicate_table_that_cannot_work_is_refused_in_one_sentence(
    tmp_path: Path, change: dict[str, object], said: str
) -> None:
    with pytest.raises(ReplicaConfigError, match=said):
        litestream.from_config(_table(tmp_path, **change))


def test_credentials_others_can_read_are_refused(tmp_path: Path) -> None:
    table = _table(tmp_path)
    os.chmod(str(table["env_file"]), 0o644)
    with pytest.raises(ReplicaConfigError, match="can be read by other users"):
        litestream.from_config(table)
    with pytest.raises(ReplicaConfigError, match="no \\[replicate\\] table"):
        litestream.from_config(None)


def test_at_takes_latest_or_a_moment_with_its_time_zone() -> None:
    assert cli.moment("latest") is None
    when = cli.moment("2026-11-29T18:00:00Z")
    assert when is not None and when.utcoffset() is not None and when.hour == 18
    with pytest.raises(UsageError, match="needs its time zone"):
        cli.moment("2026-11-29T18:00:00")
    with pytest.raises(UsageError, match="the moment to restore to is latest or a time"):
        cli.moment("an hour ago")


def _tenement_db(path: Path, token_hash: str, running: list[tuple[str, str]]) -> None:
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE config (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    db.execute("INSERT INTO config VALUES ('api_token_hash', ?)", (token_hash,))
    db.execute("CREATE TABLE instance_state (instance_id TEXT PRIMARY KEY, process_name TEXT NOT NULL, "
               "id TEXT NOT NULL, pid INTEGER NOT NULL, port INTEGER, started_at TEXT NOT NULL)")  # fmt: skip
    for service, ident in running:
        db.execute(
            "INSERT INTO instance_state VALUES (?, ?, ?, 1, 30000, 'now')", (f"{service}:{ident}", service, ident)
        )
    db.commit()
    db.close()


def test_the_instances_that_ran_at_the_moment_are_read_from_the_restored_tenement_db(tmp_path: Path) -> None:
    path = tmp_path / "tenement.db"
    _tenement_db(path, "h", [("demo", "alpha"), ("demo", "beta"), ("../x", "y"), ("demo", "a b;rm -rf /")])
    assert replica_restore.ran_at(str(path)) == ["demo:alpha", "demo:beta"], "a name tenement never makes was kept"
    (tmp_path / "not-a-db").write_bytes(b"x" * 4096)
    assert replica_restore.ran_at(str(tmp_path / "not-a-db")) == []


def test_this_hosts_api_token_stays_the_one_ten_serve_accepts(tmp_path: Path) -> None:
    live, restored = tmp_path / "live.db", tmp_path / "restored.db"
    _tenement_db(live, "hash-of-this-hosts-token", [])
    _tenement_db(restored, "hash-of-the-token-at-the-moment", [("demo", "alpha")])
    assert replica_restore.keep_token(str(live), str(restored)) is True
    db = sqlite3.connect(restored)
    assert db.execute("SELECT value FROM config WHERE key = 'api_token_hash'").fetchone() == (
        "hash-of-this-hosts-token",
    )
    db.close()
    assert replica_restore.keep_token(str(tmp_path / "none.db"), str(restored)) is False


def test_a_trigger_in_the_restored_tenement_db_cannot_swap_the_token_back(tmp_path: Path) -> None:
    live, restored = tmp_path / "live.db", tmp_path / "restored.db"
    _tenement_db(live, "hash-of-this-hosts-token", [])
    _tenement_db(restored, "attackers-hash", [])
    db = sqlite3.connect(restored)
    db.execute("CREATE TRIGGER back AFTER INSERT ON config BEGIN "
               "UPDATE config SET value = 'attackers-hash' WHERE key = 'api_token_hash'; END")  # fmt: skip
    db.commit()
    db.close()
    with pytest.raises(RestoreError, match="has a trigger 'back' on its config table, which tenement never makes"):
        replica_restore.keep_token(str(live), str(restored))


def test_a_restore_module_stops_litestream_on_a_host_that_replicates_and_only_there(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ansible_collections.selfhost.dr.plugins.module_utils.repos import config as repo_config

    monkeypatch.setattr(repo_config, "DEFAULT_CONFIG", str(tmp_path / "absent.toml"))
    assert replica_restore.host_replication(None) is None, "a host without the host command's configuration"
    with pytest.raises(repo_config.RepoConfigError, match=r"named\.toml does not exist"):
        replica_restore.host_replication(str(tmp_path / "named.toml"))
    conf = tmp_path / "config.toml"
    conf.write_text('backup_dir = "/var/backups/selfhost-dr"\n')
    assert replica_restore.host_replication(str(conf)) is None, "a host that does not replicate"
    conf.write_text(
        '[replicate]\nbucket = "dr-web"\nservice = "litestream"\nservice_manager = "systemd"\n'
        f'env_file = "{tmp_path / "not-written-yet.env"}"\n'
    )  # (a new server's, before replicate ran)
    found = replica_restore.host_replication(str(conf))
    assert found is not None and found.service is not None and found.service.unit == "litestream"
    monkeypatch.setattr(repo_config, "DEFAULT_CONFIG", str(conf))
    assert replica_restore.host_replication(None) is not None, "the default configuration, when it exists"
