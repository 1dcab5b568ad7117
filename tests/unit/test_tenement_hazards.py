"""tenement's config read as tenement 0.2.2 reads it, and the file-level half of keeping what tenement destroys:
data dirs renamed aside and back, and instance_state emptied in a restored database (the real ten serve is in
tests/integration/test_tenement_hazards.py)."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

from ansible_collections.selfhost.dr.plugins.module_utils._common import AppError
from ansible_collections.selfhost.dr.plugins.module_utils.apps import tenement_hazards as hazards
from ansible_collections.selfhost.dr.plugins.module_utils.apps.registry import instance_data
from ansible_collections.selfhost.dr.plugins.module_utils.apps.tenement import (
    EXCLUDES,
    data_templates,
    expand,
    services_of,
    tls_cache_dir,
)
from ansible_collections.selfhost.dr.plugins.module_utils.apps.tenement_client import TenementError


def test_unset_storage_persist_and_isolation_read_as_tenement_reads_them() -> None:
    services = services_of(
        {"service": {"a": {"command": "x"}, "b": {"command": "y", "storage_persist": False, "isolation": "process"}}}
    )
    assert services["a"]["storage_persist"] is True and services["a"]["isolation"] == "namespace"
    assert services["a"]["storage_persist_set"] is False
    assert services["b"]["storage_persist"] is False and services["b"]["isolation"] == "process"


def test_only_sockets_are_left_out_by_default() -> None:
    assert EXCLUDES == ("*.sock",)


@pytest.mark.parametrize(
    ("env", "want"),
    [
        ({}, ["{data_dir}/{name}/{id}"]),
        ({"DATA_DIR": "{data_dir}/{id}"}, ["{data_dir}/{name}/{id}", "{data_dir}/{id}"]),
        ({"DB": "sqlite://{data_dir}/{id}/db.sqlite"}, ["{data_dir}/{name}/{id}", "{data_dir}/{id}"]),
        ({"DB": "{data_dir}/{name}/{id}/app.db"}, ["{data_dir}/{name}/{id}"]),
        ({"HOME": "/srv/tenants/{id}/home"}, ["{data_dir}/{name}/{id}", "/srv/tenants/{id}"]),
        ({"NAME": "{name}:{id}", "PORT": "{port}", "DIR": "{data_dir}/shared"}, ["{data_dir}/{name}/{id}"]),
    ],
)
def test_where_an_instance_keeps_data_is_read_from_its_env(env: dict[str, str], want: list[str]) -> None:
    assert data_templates({"env": env}) == want


def test_paths_expand_with_tenement_placeholders_and_must_end_absolute() -> None:
    assert expand("{data_dir}/{id}", "/var/lib/tenement", "api:prod") == "/var/lib/tenement/prod"
    assert expand("/srv/{name}/{id}/", "/d", "api:prod") == "/srv/api/prod"
    for bad in ("relative/{id}", "{data_dir}/{port}"):
        with pytest.raises(TenementError, match="must be absolute and use only"):
            expand(bad, "/d", "api:prod")


def test_instance_data_is_checked() -> None:
    assert instance_data({"api": "{data_dir}/{id}"}) == {"api": ["{data_dir}/{id}"]}
    for bad in ({"API": ["x"]}, {"api": []}, {"api": [1]}, ["api"]):
        with pytest.raises(AppError):
            instance_data(bad)


def test_the_tls_cache_is_the_configured_one_else_acme(tmp_path: Path) -> None:
    config = str(tmp_path / "tenement.toml")
    assert tls_cache_dir({}, config, "/d") == "/d/acme"
    assert tls_cache_dir({"settings": {"tls": {"cache_dir": "certs"}}}, config, "/d") == str(tmp_path / "certs")
    assert tls_cache_dir({"settings": {"tls": {"cache_dir": "/etc/certs"}}}, config, "/d") == "/etc/certs"


def _instance(data: Path, unit: str = "scratch:x") -> Path:
    path = data / unit.replace(":", "/")
    path.mkdir(parents=True)
    (path / "app.db").write_bytes(b"rows")
    return path


def test_a_data_dir_kept_aside_comes_back_with_what_was_written_meanwhile(tmp_path: Path) -> None:
    path = _instance(tmp_path)
    kept = hazards.keep_aside(str(tmp_path), ["scratch:x"])
    assert not path.exists(), "tenement would find it and delete it"
    (tmp_path / "scratch" / ".selfhost-dr-kept-x" / "late").write_text("written before the stop")
    path.mkdir()  # what a respawn by tenement's health monitor would make meanwhile
    assert hazards.put_back(kept) == []
    assert (path / "app.db").read_bytes() == b"rows" and (path / "late").exists()


def test_a_run_killed_while_a_dir_was_aside_is_put_back_by_the_next(tmp_path: Path) -> None:
    path = _instance(tmp_path)
    hazards.keep_aside(str(tmp_path), ["scratch:x"])  # and then the process died
    assert hazards.put_back_all(str(tmp_path)) == []
    assert (path / "app.db").read_bytes() == b"rows"


def test_nothing_is_deleted_when_both_hold_data(tmp_path: Path) -> None:
    path = _instance(tmp_path)
    hazards.keep_aside(str(tmp_path), ["scratch:x"])
    path.mkdir()
    (path / "new").write_text("new data")
    (problem,) = hazards.put_back_all(str(tmp_path))
    assert "holds other data now" in problem
    assert (path / "new").exists() and (tmp_path / "scratch" / ".selfhost-dr-kept-x" / "app.db").exists()
    assert "in the way" in hazards.why_not_keepable(str(tmp_path), "scratch:x")


def test_a_link_in_place_of_a_data_dir_is_refused_and_nothing_moves(tmp_path: Path) -> None:
    first = _instance(tmp_path, "scratch:a")
    (tmp_path / "scratch" / "b").symlink_to("/etc")
    with pytest.raises(AppError, match=r"scratch:b.*symbolic link"):
        hazards.keep_aside(str(tmp_path), ["scratch:a", "scratch:b"], must=["scratch:a", "scratch:b"])
    assert (first / "app.db").exists(), "the first was not put back"
    # Not known to be deleted by tenement: a link is left alone, and the others are kept aside all the same.
    kept = hazards.keep_aside(str(tmp_path), ["scratch:a", "scratch:b"])
    assert [k.unit for k in kept] == ["scratch:a"] and (tmp_path / "scratch" / "b").is_symlink()
    hazards.put_back(kept)
    with pytest.raises(AppError, match=r"storage_persist = false.*symbolic link"):
        hazards.refuse_unkeepable(str(tmp_path), ["scratch:b"], "stopping tenement")


def _state_db(path: Path, pids: list[int]) -> None:
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute(
            "CREATE TABLE instance_state (instance_id TEXT PRIMARY KEY, process_name TEXT, id TEXT, pid INTEGER, "
            "port INTEGER, started_at INTEGER)"
        )
        conn.executemany("INSERT INTO instance_state VALUES (?, 'a', 'b', ?, 1, 0)", [(f"a:{p}", p) for p in pids])
    conn.close()


def test_instance_state_is_emptied_and_the_rest_kept(tmp_path: Path) -> None:
    db = tmp_path / "tenement.db"
    _state_db(db, [101, 102])
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE logs (line TEXT)")
        conn.execute("INSERT INTO logs VALUES ('kept')")
    conn.close()
    assert hazards.clear_instance_state(str(db)) == 2
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM instance_state").fetchone()[0] == 0
        assert conn.execute("SELECT line FROM logs").fetchall() == [("kept",)]
    conn.close()
    assert hazards.clear_instance_state(str(db)) == 0
    assert hazards.clear_instance_state(str(tmp_path / "missing.db")) == 0


def test_instance_state_is_never_written_through_a_link_or_into_something_else(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere.db"
    _state_db(elsewhere, [7])
    link = tmp_path / "tenement.db"
    link.symlink_to(elsewhere)
    with pytest.raises(AppError, match=r"cannot clear the instance state.*not a regular file"):
        hazards.clear_instance_state(str(link))
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o777)
    os.chmod(shared, 0o777)  # a directory others can write: a link in it is not followed
    (shared / "data").symlink_to(tmp_path)
    with pytest.raises(AppError, match=r"cannot clear the instance state.*others could have changed"):
        hazards.clear_instance_state(str(shared / "data" / "elsewhere.db"))
    fifo = tmp_path / "fifo.db"
    os.mkfifo(fifo)
    with pytest.raises(AppError, match="not a regular file"):
        hazards.clear_instance_state(str(fifo))
    with sqlite3.connect(elsewhere) as conn:
        assert conn.execute("SELECT count(*) FROM instance_state").fetchone()[0] == 1
    conn.close()
