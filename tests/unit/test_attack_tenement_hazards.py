"""Adversarial review of 83932bb (tenement hazards): each test is a problem found by an attack review, fixed since.

Pure filesystem and sqlite: tenement itself is simulated by fakes that do what hypervisor.rs v0.2.2 does
(``if !instance.storage_persist && instance.data_dir.exists() { remove_dir_all }`` on every stop, with the
``storage_persist`` the instance was spawned with, not what tenement.toml says now).
"""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest

from ansible_collections.selfhost.dr.plugins.module_utils._common import AppError
from ansible_collections.selfhost.dr.plugins.module_utils.apps import tenement_hazards as hazards
from ansible_collections.selfhost.dr.plugins.module_utils.apps.base import Facts
from ansible_collections.selfhost.dr.plugins.module_utils.apps.tenement import Settings, Tenement
from ansible_collections.selfhost.dr.plugins.module_utils.apps.tenement_client import Instance, TenementError


class _Tenement:
    """ten serve as it runs: instances spawned with the storage_persist of the config it read at spawn time."""

    def __init__(self, data_dir: Path, spawned_with: dict[str, bool]) -> None:
        self.data_dir = data_dir
        self.persist = dict(spawned_with)  # unit -> storage_persist at spawn

    # client side
    def instances(self) -> dict[str, Instance]:
        return {u: Instance(u, "127.0.0.1:1", 1, "healthy", 0) for u in self.persist}

    def stop(self, unit: str) -> str:  # ten stop
        persist = self.persist.pop(unit)
        path = self.data_dir / unit.replace(":", "/")
        if not persist and path.exists():
            shutil.rmtree(path)
        return ""

    # service side (SIGTERM of ten serve: stop_all)
    def stop_all(self) -> bool:
        for unit in list(self.persist):
            self.stop(unit)
        return True


class _Service:
    def __init__(self, ten: _Tenement) -> None:
        self.ten = ten

    def stop(self) -> bool:
        return self.ten.stop_all()


def _app(tmp_path: Path, ten: _Tenement, services_now: dict[str, dict[str, object]]) -> Tenement:
    app = Tenement(Settings(config_dir=str(tmp_path / "etc"), data_dir=str(ten.data_dir)))
    app._client = ten  # type: ignore[assignment]
    app._service = _Service(ten)  # type: ignore[assignment]
    app._facts = Facts("tenement", details={"services": services_now, "on_disk": sorted(ten.persist)})
    return app


def _instance(data: Path, unit: str) -> Path:
    path = data / unit.replace(":", "/")
    path.mkdir(parents=True)
    (path / "app.db").write_bytes(b"the tenant's rows")
    return path


# --- FINDING 1 (high): what is kept aside is decided from tenement.toml as it is NOW, not as the running
# instances were spawned. The role writes the new tenement.toml first and then notifies "restart tenement"
# (tenement_service state=restarted). An operator who notices that tenement deletes data and sets
# storage_persist = true (or removes the service from tenement.toml) triggers exactly the restart in which the
# running ten serve (spawned with storage_persist = false) deletes every instance dir of that service: the new
# config says "persists", so nothing is kept aside. Same for stop_unit (per-instance restore, tenement_instance
# stopped/restarted, per-instance backup's stop).


@pytest.mark.parametrize(
    "services_now",
    [
        {"scratch": {"storage_persist": True}},  # the operator's fix, written just before the handler restart
        {},  # the service removed from tenement.toml: read as storage_persist = true
    ],
    ids=["storage_persist-turned-true", "service-removed"],
)
def test_attack_restart_after_config_change_keeps_data_tenement_will_still_delete(
    tmp_path: Path, services_now: dict[str, dict[str, object]]
) -> None:
    data = tmp_path / "data"
    path = _instance(data, "scratch:x")
    ten = _Tenement(data, {"scratch:x": False})  # spawned when tenement.toml said storage_persist = false
    app = _app(tmp_path, ten, services_now)
    app.stop()
    assert (path / "app.db").exists(), "ten serve deleted the data: it was spawned with storage_persist = false"


def test_attack_stop_unit_after_config_change_keeps_data_tenement_will_still_delete(tmp_path: Path) -> None:
    data = tmp_path / "data"
    path = _instance(data, "scratch:x")
    ten = _Tenement(data, {"scratch:x": False})
    app = _app(tmp_path, ten, {"scratch": {"storage_persist": True}})
    app.stop_unit("scratch:x")
    assert (path / "app.db").exists(), "ten stop deleted the data: it was spawned with storage_persist = false"


# --- FINDING 2 (medium): fix_up clears instance_state only when a restored target ends with the data dir. With
# the data dir inside the config dir (tenement's own default, ./tenement-data next to tenement.toml, which is how
# resolve_data_dir resolves it when [settings] data_dir is unset), the set holds only the config dir (scan drops
# nested roots), so the only target is the config dir and the restored tenement.db keeps its pids: ten serve
# SIGKILLs whatever holds them now.


def _state_db(path: Path, pids: list[int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path)
    conn.execute(
        "CREATE TABLE instance_state (instance_id TEXT PRIMARY KEY, process_name TEXT NOT NULL, id TEXT NOT NULL, "
        "pid INTEGER NOT NULL, port INTEGER, started_at TEXT NOT NULL)"
    )
    conn.executemany("INSERT INTO instance_state VALUES (?, 'a', 'b', ?, 1, 'x')", [(f"a:{p}", p) for p in pids])
    conn.commit()
    conn.close()


def _rows_tenement_sees(path: Path) -> int:
    """What ten serve's orphan recovery reads (after its own CREATE TABLE IF NOT EXISTS)."""
    conn = sqlite3.connect(path)
    try:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS instance_state (instance_id TEXT PRIMARY KEY, process_name TEXT NOT NULL, "
            "id TEXT NOT NULL, pid INTEGER NOT NULL, port INTEGER, started_at TEXT NOT NULL)"
        )
        return int(conn.execute("SELECT count(*) FROM instance_state").fetchone()[0])
    finally:
        conn.close()


def test_attack_fix_up_clears_instance_state_when_the_data_dir_is_inside_the_config_dir(tmp_path: Path) -> None:
    config_dir = tmp_path / "etc" / "tenement"
    data_dir = config_dir / "tenement-data"  # tenement's default data dir, next to tenement.toml
    db = data_dir / "tenement.db"
    _state_db(db, [1, 4242])
    app = Tenement(Settings(config_dir=str(config_dir)))
    # The set's paths were [config_dir, data_dir]; scan keeps only config_dir, so that is the one target.
    app.fix_up({"metadata": {"data_dir": str(data_dir)}}, [str(config_dir)])
    assert _rows_tenement_sees(db) == 0, "ten serve will SIGKILL pids 1 and 4242 of another moment"


# --- FINDING 3 (medium): unit_paths can name far more than one instance's data. expand() normalises '..' away
# and nothing checks the result: tenement_instance_data templates are not even required to hold {id}, and the
# upstream example env DATA_DIR = "{data_dir}/{id}" makes instance web:api's data "{data_dir}/api", the whole
# dir of service api (all its tenants), or web:acme's "{data_dir}/acme", the TLS keys. A per-instance restore
# swaps that path while everything else runs; a per-instance backup archives it into one tenant's set.


@pytest.mark.parametrize(
    ("unit", "services", "instance_data"),
    [
        ("api:one", {"api": {}}, {"api": ["{data_dir}/{id}/.."]}),
        ("api:one", {"api": {}}, {"api": ["{data_dir}/{name}"]}),
        ("api:one", {"api": {}}, {"api": ["{data_dir}/{name}/{id}/../../.."]}),
        ("web:api", {"web": {"env": {"DATA_DIR": "{data_dir}/{id}"}}, "api": {}}, {}),
        ("web:acme", {"web": {"env": {"DATA_DIR": "{data_dir}/{id}"}}}, {}),
    ],
    ids=["id-dotdot", "no-id", "dotdot-after-id", "id-is-another-service", "id-is-acme"],
)
def test_attack_unit_paths_never_name_the_data_dir_or_what_other_instances_share(
    tmp_path: Path, unit: str, services: dict[str, dict[str, object]], instance_data: dict[str, list[str]]
) -> None:
    data_dir = str(tmp_path / "data")
    app = Tenement(Settings(config_dir=str(tmp_path / "etc"), data_dir=data_dir, instance_data=instance_data))
    try:
        paths = app.unit_paths(unit, Facts("tenement", details={"services": services}))
    except (AppError, TenementError):
        return  # refused: fine
    own_service = unit.split(":")[0]
    shared = {data_dir, f"{data_dir}/acme", *(f"{data_dir}/{s}" for s in services if s != own_service)}
    shared.add(f"{data_dir}/{own_service}")
    for path in paths:
        for other in shared:
            assert not (other == path or other.startswith(path.rstrip("/") + "/")), (
                f"{unit}'s data path {path} holds {other}, which is not this instance's"
            )


# --- FINDING 4 (low; needs a crafted set): clear_instance_state trusts one DELETE. A restored tenement.db can
# keep its rows for ten serve: a trigger that ignores or re-inserts deletions, a VIEW named instance_state (ten
# serve's CREATE TABLE IF NOT EXISTS accepts it and its SELECT reads it), or the table spelled Instance_State
# (SQLite names are case-insensitive, the sqlite_master lookup is not). The count afterwards is never checked.

_TABLE = (
    "CREATE TABLE instance_state (instance_id TEXT PRIMARY KEY, process_name TEXT NOT NULL, id TEXT NOT NULL, "
    "pid INTEGER NOT NULL, port INTEGER, started_at TEXT NOT NULL)"
)
_ROW = "INSERT INTO instance_state VALUES ('a:b', 'a', 'b', 4242, 1, 'x')"


@pytest.mark.parametrize(
    "statements",
    [
        (_TABLE, _ROW, "CREATE TRIGGER keep BEFORE DELETE ON instance_state BEGIN SELECT RAISE(IGNORE); END"),
        (
            _TABLE,
            _ROW,
            "CREATE TRIGGER again AFTER DELETE ON instance_state BEGIN "
            "INSERT INTO instance_state VALUES (old.instance_id || '-', 'a', 'b', old.pid, 1, 'x'); END",
        ),
        (
            _TABLE,
            _ROW,
            "ALTER TABLE instance_state RENAME TO hidden",
            "CREATE VIEW instance_state AS SELECT * FROM hidden",
        ),
        (
            "CREATE TABLE Instance_State (instance_id TEXT PRIMARY KEY, process_name TEXT NOT NULL, id TEXT NOT NULL, "
            "pid INTEGER NOT NULL, port INTEGER, started_at TEXT NOT NULL)",
            "INSERT INTO Instance_State VALUES ('a:b', 'a', 'b', 4242, 1, 'x')",
        ),
    ],
    ids=["trigger-ignore", "trigger-reinsert", "view", "mixed-case"],
)
def test_attack_instance_state_really_is_empty_afterwards_or_refused(
    tmp_path: Path, statements: tuple[str, ...]
) -> None:
    db = tmp_path / "tenement.db"
    conn = sqlite3.connect(db)
    for statement in statements:
        conn.execute(statement)
    conn.commit()
    conn.close()
    try:
        hazards.clear_instance_state(str(db))
    except AppError:
        return  # refused: the restore rolls back, ten serve never starts on it
    assert _rows_tenement_sees(db) == 0, "ten serve's orphan recovery would still SIGKILL pid 4242"
