"""Attacks on the point-in-time restore from Litestream replicas (issue 17), with real parts only: tenement 0.2.2,
Litestream 0.5.17 replicating its data dir into SeaweedFS, SQLite, and the host command as installed (a zipapp).

The attacker holds the store's credentials (every key and byte of the replica is theirs), or is the application's
user (its data dir is theirs); bad luck kills the restore at chosen moments or deletes files under it. Faults are
injected through ``[replicate] binary``: a wrapper that runs the test's hook once (``Host.hook``, given the restoring
process's pid), then the real ``litestream restore``. So a hook acts at a known moment: while the restore fetches,
after Litestream was stopped and before the application is.

Each test shows what holds (the bugs an adversarial review found are fixed; each test failed before its fix)."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ansible_collections.selfhost.dr.plugins.module_utils.apps.tenement_client import TenementClient
from ansible_collections.selfhost.dr.plugins.module_utils.host_install import toml
from ansible_collections.selfhost.dr.plugins.module_utils.replicas import config, s3

from . import replica_host, s3_store
from .replica_host import LITESTREAM, STOP, wait
from .tenement_fixture import _instance_ports_free, write_config

COLLECTIONS = Path(__file__).resolve().parents[2] / ".cache" / "collections"
PREFIX = "dr/web1/tenement"
SQLITE_HEADER = b"SQLite format 3\x00"


@dataclass
class Host:
    command: Path
    config: Path
    data_dir: Path
    client: TenementClient
    bucket: s3.Store
    ten_pidfile: Path
    ls_pidfile: Path
    ls_start: list[str]
    tmp: Path

    @property
    def hook(self) -> Path:
        """A shell script the next ``litestream restore`` runs first (once), the restoring process's pid as $1."""
        return self.tmp / "hook.sh"

    @property
    def litestream_start_fails(self) -> Path:
        """While this file exists, ``[replicate] start_command`` fails (as ``systemctl start`` of a broken unit)."""
        return self.tmp / "litestream-start-fails"

    @property
    def alpha(self) -> Path:
        return self.data_dir / "demo" / "alpha" / "app.db"

    def argv(self, *args: str) -> list[str]:
        return [str(self.command), *args, "--json", "--config", str(self.config)]

    def run(self, *args: str, check: bool = True) -> tuple[int, dict[str, object]]:
        return replica_host.run(self.command, self.config, *args, check=check)

    def post(self, name: str, route: str) -> dict[str, object]:
        listen = self.client.instances()[name].listen
        request = urllib.request.Request(f"http://{listen}{route}", method="POST", data=b"")
        with urllib.request.urlopen(request, timeout=10) as resp:
            return json.load(resp)

    def litestream_runs(self) -> bool:
        return replica_host.runs(self.ls_pidfile)

    def tenement_runs(self) -> bool:
        return replica_host.runs(self.ten_pidfile)

    def start_litestream(self) -> None:
        if not self.litestream_runs():
            subprocess.run(self.ls_start, check=True)

    def restart_litestream(self) -> None:
        """Litestream stopped and started again: it makes a snapshot of every database at its start."""
        subprocess.run([*STOP, str(self.ls_pidfile)], check=False, capture_output=True)
        subprocess.run(self.ls_start, check=True)

    def instances(self) -> list[str]:
        return sorted(self.client.instances())

    def keys(self, path: str, level: str = "") -> list[s3.Object]:
        return list(self.bucket.list(f"{PREFIX}/{path}/{level}"))

    def get(self, key: str, size: int) -> bytes:
        status, _headers, body = self.bucket.request("GET", key, limit=max(size, 1))
        assert status == 200, (status, key)
        return body

    def delete(self, key: str) -> None:
        status, _headers, _body = self.bucket.request("DELETE", key, limit=65536)
        assert status in (200, 204), (status, key)

    def forget(self, path: str) -> None:
        """Every key of ``path``'s replica deleted."""
        for obj in self.keys(path):
            self.delete(obj.key)

    def copy_snapshot(self, source: str, dest: str) -> None:
        """The newest snapshot of ``source``'s replica written again as the replica of ``dest``: a replica of a
        database this host never had, as anyone with the store's credentials can write (name and header agree)."""
        snapshots = self.keys(source, "0009/")
        assert snapshots, f"no snapshot of {source}"
        newest = max(snapshots, key=lambda o: o.key)
        self.bucket.put(f"{PREFIX}/{dest}/0009/{newest.key.rsplit('/', 1)[1]}", self.get(newest.key, newest.size))

    def staged(self) -> list[Path]:
        """What a restore left in the data dir (staged copies, safety copies)."""
        return [p for p in self.data_dir.rglob("*") if ".selfhost-dr-" in p.name]

    def scratch(self) -> list[Path]:
        return list((self.tmp / "state" / "litestream-restore").glob("*"))


def _rows(path: Path) -> list[tuple[int, float]]:
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return list(db.execute("SELECT id, created_at FROM items ORDER BY id"))
    finally:
        db.close()


def _port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _ports_free() -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", 30000)) != 0


@contextlib.contextmanager
def _host(tmp_path: Path, ten_bin: str, store: s3_store.Store) -> Iterator[Host]:
    """The host of tests/integration/test_replica_restore.py: tenement with demo:alpha and demo:beta, Litestream
    replicating its data dir as the replicate role configures it, the host command's ``[replicate] binary`` the
    hook wrapper and its ``start_command`` one that fails while ``Host.litestream_start_fails`` exists."""
    # tenement hands out instance ports from 30000 unchecked: wait for another run's instances to be gone.
    wait("port 30000 is free (another tenement's instances hold it)", _ports_free, 300)
    _instance_ports_free()
    port = _port()
    bucket = replica_host.bucket(store, "atk")
    workdir = tmp_path / "etc"
    workdir.mkdir()
    data_dir = tmp_path / "data"
    write_config(workdir, data_dir, sys.executable)
    subprocess.run([ten_bin, "token-gen", "--data-dir", str(data_dir)], cwd=workdir, check=True, capture_output=True)
    pidfile = tmp_path / "ten.pid"
    start = [
        "start-stop-daemon", "--start", "--background", "--make-pidfile", "--pidfile", str(pidfile),
        "--chdir", str(workdir), "--output", str(tmp_path / "serve.log"), "--exec", ten_bin,
        "--", "serve", "--port", str(port), "--data-dir", str(data_dir),
    ]  # fmt: skip
    settings = config.Settings(levels=["3s", "9s"], l0_retention="30s", snapshot_interval="1h",
                               meta_dir=str(tmp_path / "meta"), addr="127.0.0.1:0")  # fmt: skip
    dest = config.Destination(bucket.bucket, path="dr", endpoint=store.endpoint)
    conf = tmp_path / "litestream.yml"
    conf.write_text(config.render(config.tenement(str(data_dir), dest, settings, "web1")))
    env_file = tmp_path / "litestream.env"
    env_file.write_text(f"AWS_ACCESS_KEY_ID={s3_store.ACCESS_KEY}\nAWS_SECRET_ACCESS_KEY={s3_store.SECRET_KEY}\n")
    env_file.chmod(0o600)
    ls_start, ls_pidfile = replica_host.litestream(tmp_path, conf, env_file)
    flag = tmp_path / "litestream-start-fails"
    ls_start_guarded = ["sh", "-c", 'if [ -e "$0" ]; then echo "the unit failed to start" >&2; exit 1; fi; exec "$@"',
                        str(flag), *ls_start]  # fmt: skip
    hook = tmp_path / "hook.sh"
    wrapper = tmp_path / "litestream-restore"
    wrapper.write_text(f'#!/bin/sh\nif [ -f {hook} ]; then mv {hook} {hook}.ran; sh {hook}.ran "$PPID"; fi\n'
                       f'exec {LITESTREAM} "$@"\n')  # fmt: skip
    wrapper.chmod(0o755)
    command = replica_host.host_command(tmp_path)
    cfg = tmp_path / "config.toml"
    server = f"http://127.0.0.1:{port}"
    cfg.write_text(toml({
        "app": "tenement",
        "backup_dir": str(tmp_path / "backups"),
        "state_dir": str(tmp_path / "state"),
        "tenement": {"config_dir": str(workdir), "server": server, "ten_bin": ten_bin, "service_manager": "process",
                     "pidfile": str(pidfile), "start_command": start},
        "replicate": {"bucket": bucket.bucket, "path": "dr", "endpoint": store.endpoint, "env_file": str(env_file),
                      "host": "web1", "binary": str(wrapper), "service": "litestream", "service_manager": "process",
                      "pidfile": str(ls_pidfile), "start_command": ls_start_guarded,
                      "meta_dir": str(tmp_path / "meta")},
    }))  # fmt: skip
    cfg.chmod(0o600)
    subprocess.run(start, check=True)
    try:
        token = (data_dir / "api_token").read_text().strip()
        client = TenementClient(ten_bin, server=server, token=token, data_dir=str(data_dir))
        wait("ten serve answers", client.reachable, 15)
        for name in ("demo:alpha", "demo:beta"):
            client.spawn(name)
            client.wait_healthy(name, timeout=20)
        subprocess.run(ls_start, check=True)
        host = Host(command, cfg, data_dir, client, bucket, pidfile, ls_pidfile, ls_start, tmp_path)
        for name in ("tenement.db", "demo/alpha/app.db", "demo/beta/app.db"):
            wait(f"the replica of {name}", lambda n=name: host.keys(n, "0009/"))
        yield host
    finally:
        replica_host.stop(ls_pidfile, pidfile)
        wait("the instances' ports are free", _ports_free, 30)


@pytest.fixture
def host(tmp_path: Path, ten_bin: str, store: s3_store.Store) -> Iterator[Host]:
    """A host of its own, for an attack that leaves it broken."""
    with _host(tmp_path, ten_bin, store) as made:
        yield made


HOLD = """
import sqlite3, sys, time
db = sqlite3.connect(sys.argv[1], isolation_level=None)
if len(sys.argv) > 2:  # a WAL database whose commits wait in its -wal
    db.execute("PRAGMA journal_mode=wal")
    db.execute("PRAGMA wal_autocheckpoint=0")
    db.execute("CREATE TABLE IF NOT EXISTS secret (a)")
    db.execute("INSERT INTO secret VALUES ('root only')")
db.execute("SELECT count(*) FROM sqlite_master").fetchall()
print("open", flush=True)
time.sleep(120)
"""


@contextlib.contextmanager
def _holding(path: Path, make: bool = False) -> Iterator[subprocess.Popen[str]]:
    """A process that keeps ``path`` open (its -wal and -shm stay), as a straggler of the application would;
    ``make``: it first makes it a WAL database with a commit in its -wal. Killed (SIGKILL) at the end."""
    argv = [sys.executable, "-c", HOLD, str(path), *(["make"] if make else [])]
    holder = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "open\n"
        yield holder
    finally:
        holder.kill()
        holder.wait()


def _deleting_newest_hook(host: Host, prefix: str) -> None:
    """The next ``litestream restore`` first deletes, from the store, every file of the replica at ``prefix`` (but its
    snapshots) that ends at its newest txid, as Litestream's retention could: listed at that very moment, so a file
    compacted since the test looked is among them."""
    script = host.tmp / "delete-newest.py"
    script.write_text(
        "import sys\n"
        f"sys.path.insert(0, {str(COLLECTIONS)!r})\n"
        "from ansible_collections.selfhost.dr.plugins.module_utils.replicas import s3\n"
        f"store = s3.Store({host.bucket.endpoint!r}, {host.bucket.bucket!r}, {s3_store.ACCESS_KEY!r}, "
        f"{s3_store.SECRET_KEY!r})\n"
        f"keys = [o.key for o in store.list({prefix!r} + '/') if '/0009/' not in o.key]\n"
        "top = max(int(k.rsplit('-', 1)[1][:16], 16) for k in keys)\n"
        "for key in keys:\n"
        "    if int(key.rsplit('-', 1)[1][:16], 16) == top:\n"
        "        status, _h, _b = store.request('DELETE', key, limit=65536)\n"
        "        assert status in (200, 204), status\n"
        "print(top, file=open(" + repr(str(host.tmp / "deleted-top")) + ", 'w'))\n"
    )
    host.hook.write_text(f"{sys.executable} {script}\n")


def _main_file_tables(path: Path, scratch: Path) -> list[str]:
    """The tables in ``path``'s main file alone (a copy of it, without its -wal): what was checkpointed into it."""
    scratch.write_bytes(path.read_bytes())
    db = sqlite3.connect(f"file:{scratch}?mode=ro&immutable=1", uri=True)
    try:
        return [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
    finally:
        db.close()


# One host for the attacks that leave it usable (each cleans up after itself); torn down at the class's end, before
# the tests that need a host of their own start one (tenement's instance ports are fixed: one tenement at a time).
@pytest.fixture(scope="class")
def shared(tmp_path_factory: pytest.TempPathFactory, ten_bin: str, store: s3_store.Store) -> Iterator[Host]:
    with _host(tmp_path_factory.mktemp("shared"), ten_bin, store) as made:
        yield made


@pytest.fixture(scope="class")
def corrupt(shared: Host) -> str:
    """demo/alpha/bad.db: an SQLite database whose index disagrees with its table (``PRAGMA integrity_check`` fails,
    every page is sound), replicated by Litestream with a snapshot. Its replica's path."""
    bad = shared.data_dir / "demo" / "alpha" / "bad.db"
    db = sqlite3.connect(bad, isolation_level=None)
    db.execute("PRAGMA journal_mode=wal")
    db.execute("CREATE TABLE t (a, b)")
    db.execute("CREATE INDEX i ON t (a)")
    db.executemany("INSERT INTO t VALUES (?, ?)", [(n, -n) for n in range(50)])
    db.execute("PRAGMA writable_schema=ON")
    db.execute("UPDATE sqlite_master SET sql = 'CREATE INDEX i ON t (b)' WHERE name = 'i'")
    db.close()
    shared.restart_litestream()  # (a database found later gets its first snapshot only at the next interval)
    wait("the snapshot of bad.db", lambda: shared.keys("demo/alpha/bad.db", "0009/"))
    return "demo/alpha/bad.db"


class TestOnOneHost:
    def test_a_replica_naming_a_file_that_is_no_database_leaves_that_file_alone(self, shared: Host) -> None:
        notes = shared.data_dir / "demo" / "alpha" / "notes.txt"
        notes.write_text("the application's own notes, not a database\n")
        shared.copy_snapshot("demo/beta/app.db", "demo/alpha/notes.txt")
        try:
            code, result = shared.run("restore", "--at", "latest", "--check", check=False)
            planned = [d["path"] for d in result.get("databases", [])]  # type: ignore[union-attr]
            code, result = shared.run("restore", "--at", "latest", check=False)
            assert notes.read_bytes() == b"the application's own notes, not a database\n", (
                f"notes.txt was replaced by {notes.read_bytes()[:16]!r} (restore exit {code}, "
                f"planned as a database by --check: {'demo/alpha/notes.txt' in planned}, staged {shared.staged()})"
            )
        finally:
            notes.unlink()
            time.sleep(1.5)  # (Litestream, started again, may replicate it as a new database meanwhile)
            shared.forget("demo/alpha/notes.txt")
            shared.start_litestream()

    def test_a_database_that_fails_its_integrity_check_is_refused_before_anything_stops(
        self, shared: Host, corrupt: str
    ) -> None:
        bad = shared.data_dir / corrupt
        before, rows = bad.stat().st_ino, _rows(shared.alpha)
        code, result = shared.run("restore", "--at", "latest", "--database", corrupt, check=False)
        error = str(result.get("error"))
        assert code == 1 and f"what Litestream restored of {corrupt} fails SQLite's integrity check" in error, result
        assert "nothing was changed" in error and "tenement kept running" in error, error
        assert bad.stat().st_ino == before and _rows(shared.alpha) == rows
        assert shared.instances() == ["demo:alpha", "demo:beta"] and shared.litestream_runs()
        assert shared.staged() == [] and shared.scratch() == []

    def test_a_planned_file_deleted_by_retention_during_the_fetch_is_planned_again(self, shared: Host) -> None:
        beta = shared.data_dir / "demo" / "beta" / "app.db"
        for _ in range(3):  # three syncs of their own after the snapshot
            shared.post("demo:beta", "/rows?n=2")
            time.sleep(1.3)
        newest = len(_rows(beta))
        objects = shared.keys("demo/beta/app.db")
        for _ in range(20):  # until Litestream uploaded the last sync (the plan must end with a doomed file)
            time.sleep(1.5)
            again = shared.keys("demo/beta/app.db")
            if [o.key for o in again] == [o.key for o in objects]:
                break
            objects = again

        _deleting_newest_hook(shared, f"{PREFIX}/demo/beta/app.db")
        _code, result = shared.run("restore", "--at", "latest", "--database", "demo/beta/app.db")
        (database,) = result["databases"]  # type: ignore[misc]
        top = int((shared.tmp / "deleted-top").read_text())
        assert database["attempts"] == 2 and int(database["txid"], 16) < top, database
        assert 0 < len(_rows(beta)) < newest, "the restore did not go back to the last file still there"
        assert shared.instances() == ["demo:alpha", "demo:beta"] and shared.litestream_runs()

    def test_a_corrupt_database_named_with_a_question_mark_is_refused_too(self, shared: Host, corrupt: str) -> None:
        odd = "demo/alpha/bad?.db"
        shared.copy_snapshot(corrupt, odd)
        try:
            code, result = shared.run("restore", "--at", "latest", "--database", odd, check=False)
            assert code == 1 and "fails SQLite's integrity check" in str(result.get("error")), (
                f"exit {code}, {result.get('error')}; swapped in: {(shared.data_dir / odd).exists()}"
            )
        finally:
            with contextlib.suppress(FileNotFoundError):
                (shared.data_dir / odd).unlink()
            time.sleep(1.5)  # (Litestream, started again, may replicate it as a new database meanwhile)
            shared.forget(odd)

    def test_a_database_named_with_a_percent_sign_is_restored(self, shared: Host) -> None:
        odd = "demo/alpha/x%41.db"
        shared.copy_snapshot("demo/beta/app.db", odd)
        try:
            code, result = shared.run("restore", "--at", "latest", "--database", odd, check=False)
            assert code == 0, result.get("error")
            assert (shared.data_dir / odd).read_bytes().startswith(SQLITE_HEADER)
        finally:
            with contextlib.suppress(FileNotFoundError):
                (shared.data_dir / odd).unlink()
            time.sleep(1.5)
            shared.forget(odd)

    def test_keys_with_spaces_plus_signs_quotes_and_unicode_are_read_and_restored(self, shared: Host) -> None:
        odd = "demo/odd name+ \u00fc~'(x)/x y.db"
        shared.copy_snapshot("demo/beta/app.db", odd)
        try:
            shared.run("restore", "--at", "latest", "--database", odd)
            assert (shared.data_dir / odd).read_bytes().startswith(SQLITE_HEADER)
            assert shared.instances() == ["demo:alpha", "demo:beta"] and shared.litestream_runs()
        finally:
            with contextlib.suppress(FileNotFoundError):
                (shared.data_dir / odd).unlink()
                (shared.data_dir / odd).parent.rmdir()
            time.sleep(1.5)
            shared.forget(odd)

    def test_a_key_with_a_name_too_long_for_the_file_system_is_refused_in_a_sentence(self, shared: Host) -> None:
        long = "demo/" + "a" * 300 + ".db"
        shared.copy_snapshot("demo/beta/app.db", long)
        try:
            code, result = shared.run("restore", "--at", "latest", "--check", check=False)
            error = str(result.get("error"))
            assert code != 0 and shared.instances() == ["demo:alpha", "demo:beta"]
            assert "replica" in error and "nothing was changed" in error, error
        finally:
            shared.forget(long)

    def test_a_failed_start_of_litestream_after_the_restore_does_not_hide_that_it_stood(self, shared: Host) -> None:
        shared.hook.write_text(f"touch {shared.litestream_start_fails}\n")
        try:
            code, result = shared.run("restore", "--at", "latest", "--database", "demo/beta/app.db", check=False)
            pending = shared.run("status")[1]["pending_restores"]
            assert not shared.litestream_runs()
            assert code == 0 and result.get("restore_id"), (code, result, pending)
        finally:
            shared.litestream_start_fails.unlink(missing_ok=True)
            shared.start_litestream()

    def test_a_restore_killed_while_fetching_leaves_litestream_running_after_the_next_run(self, shared: Host) -> None:
        beta = shared.data_dir / "demo" / "beta" / "app.db"
        rows = _rows(beta)
        shared.hook.write_text('kill -9 "$1"\n')
        try:
            code, _result = shared.run("restore", "--at", "latest", "--database", "demo/beta/app.db", check=False)
            assert code == -9
            # What holds: nothing of the application was stopped or changed; the next run cleans up.
            assert shared.instances() == ["demo:alpha", "demo:beta"] and _rows(beta) == rows
            assert not shared.litestream_runs(), "the killed restore had stopped Litestream"
            assert shared.staged() and shared.scratch()
            shared.run("restore", "--at", "latest", "--database", "demo/beta/app.db")
            assert shared.staged() == [] and shared.scratch() == []
            assert shared.instances() == ["demo:alpha", "demo:beta"]
            assert shared.litestream_runs(), "Litestream is still stopped after the next restore"
        finally:
            shared.start_litestream()

    def test_a_database_of_an_instance_spawned_after_litestream_started_can_be_restored(self, shared: Host) -> None:
        shared.start_litestream()
        time.sleep(3)  # (Litestream's scan at its start is over: gamma's database is found by its watcher)
        shared.client.spawn("demo:gamma")
        try:
            shared.client.wait_healthy("demo:gamma", timeout=20)
            wait("gamma's first files", lambda: shared.keys("demo/gamma/app.db", "0001/"), 30)
            assert not shared.keys("demo/gamma/app.db", "0009/")
            top = max(o.key.rsplit("-", 1)[1][:16] for o in shared.keys("demo/gamma/app.db"))
            out = shared.tmp / "gamma-by-litestream.db"
            env = {"PATH": os.environ["PATH"], "LITESTREAM_ACCESS_KEY_ID": s3_store.ACCESS_KEY,
                   "LITESTREAM_SECRET_ACCESS_KEY": s3_store.SECRET_KEY}  # fmt: skip
            url = f"s3://{shared.bucket.bucket}/{PREFIX}/demo/gamma/app.db?endpoint={shared.bucket.endpoint}"
            done = subprocess.run([str(LITESTREAM), "restore", "-o", str(out), "-txid", top, url], env=env,
                                  capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
            assert done.returncode == 0 and len(_rows(out)) == 10, done.stderr  # Litestream itself restores it
            code, result = shared.run("restore", "--at", "latest", "--database", "demo/gamma/app.db", "--check",
                                      check=False)  # fmt: skip
            assert code == 0, result.get("error")
        finally:
            shared.client.stop("demo:gamma")


def test_a_replica_of_the_api_token_file_is_refused_or_undone(host: Host) -> None:
    token = (host.data_dir / "api_token").read_bytes()
    host.copy_snapshot("tenement.db", "api_token")
    _code, result = host.run("restore", "--at", "latest", "--database", "api_token", check=False)
    error = str(result.get("error"))
    state = [r["state"] for r in host.run("status")[1]["pending_restores"]]  # type: ignore[union-attr]
    running = (host.tenement_runs(), host.instances() if host.tenement_runs() else [])
    assert (host.data_dir / "api_token").read_bytes() == token, (error, state, running)
    assert host.instances() == ["demo:alpha", "demo:beta"], (error, state)
    assert "UnicodeDecodeError" not in error, error


def test_a_restore_killed_after_the_stop_is_finished_by_the_next_run_with_everything_running(host: Host) -> None:
    host.post("demo:alpha", "/rows?n=5")
    rows = _rows(host.alpha)
    with _holding(host.alpha):  # the settle after the stop waits for it: the restore is killed meanwhile
        proc = subprocess.Popen(host.argv("restore", "--at", "latest"), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)  # fmt: skip
        try:
            wait("tenement stopped by the restore", lambda: not host.tenement_runs(), 60)
            time.sleep(1)
        finally:
            proc.kill()
            proc.wait()
    # What holds: the previous data as they were; nothing swapped; the next run cleans up and restores.
    assert _rows(host.alpha) == rows and host.staged()
    assert not host.tenement_runs() and not host.litestream_runs()
    _code, result = host.run("restore", "--at", "latest")
    assert host.staged() == [] and _rows(host.alpha) == rows
    assert host.instances() == ["demo:alpha", "demo:beta"], f"started {result.get('started')}"
    assert host.litestream_runs()


def test_a_directory_replaced_by_a_link_during_the_fetch_is_not_written_through(host: Host, tmp_path: Path) -> None:
    victim = tmp_path / "victim"  # a root-owned WAL database elsewhere, its last commit still in its -wal
    victim.mkdir()
    with _holding(victim / "app.db", make=True):
        pass  # (killed: its -wal and -shm stay, as a crashed writer leaves them)
    assert (victim / "app.db-wal").stat().st_size > 0
    assert _main_file_tables(victim / "app.db", tmp_path / "copy.db") == []
    alpha_dir = host.alpha.parent
    host.hook.write_text(f"mv {alpha_dir} {alpha_dir}.moved && ln -s {victim} {alpha_dir}\n")
    argv = [a for a in host.argv("restore", "--at", "latest", "--database", "demo/alpha/app.db") if a != "--json"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False)
    said = [line for line in done.stderr.splitlines() if "journal finished into it" in line]
    assert _main_file_tables(victim / "app.db", tmp_path / "copy.db") == [], (
        f"the restore (exit {done.returncode}) checkpointed {victim}/app.db through the link {alpha_dir} ({said})"
    )
