"""A Tomo migration by the guide's JSON document (migrate_tomo_document, issue 16): the new server keeps its own
tomo.db (its install's identity, its version's schema) and receives the frozen old server's categories by an import
in mode replace; the environment and known_hosts travel as files. Real SQLite databases of Tomo's real schema
(tests/fixtures/tomo); tomo.service is a recorder (Tomo cannot run here)."""

from __future__ import annotations

import sqlite3
import sys
from pathlib import Path

import pytest

from ansible_collections.selfhost.dr.plugins.module_utils._common import Error
from ansible_collections.selfhost.dr.plugins.module_utils.apps.base import Facts
from ansible_collections.selfhost.dr.plugins.module_utils.apps.tomo import Settings, Tomo
from ansible_collections.selfhost.dr.plugins.module_utils.engine import migrate

from .test_tomo_import_stop import Recorder

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "fixtures" / "tomo"))
import tomo_fixture


def _rows(path: Path, sql: str) -> list[tuple[object, ...]]:
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        return db.execute(sql).fetchall()


class NewTomo(Tomo):
    """The new server's Tomo seen through its ``dest_root``: its paths as the set names them (what a restore
    compares), its own database under the root (what the import writes)."""

    def __init__(self, settings: Settings, paths: list[str]) -> None:
        super().__init__(settings)
        self.paths = paths

    def inspect(self) -> Facts:
        return Facts("tomo", "1.2.1", list(self.paths), metadata={"database": self.paths[0]})


@pytest.fixture
def servers(tmp_path: Path) -> tuple[Tomo, NewTomo, Path, Path]:
    old_dir = tmp_path / "old" / "var" / "lib" / "tomo"
    old_dir.mkdir(parents=True)
    (old_dir / "environment").write_text("TOMO_MASTER_PASSWORD=old-secret\n")
    (old_dir / "known_hosts").write_text("10.0.0.11 ssh-ed25519 AAAAold\n")
    tomo_fixture.create(str(old_dir / "tomo.db"), "source")
    old = Tomo(Settings(database=str(old_dir / "tomo.db"), environment=str(old_dir / "environment"),
                        known_hosts=str(old_dir / "known_hosts"), version="1.2.0", settle=0.0))  # fmt: skip
    old.service = Recorder(running=True)  # type: ignore[assignment]
    new_root = tmp_path / "new"
    mine = new_root / str(old_dir).lstrip("/")
    mine.mkdir(parents=True)
    tomo_fixture.create(str(mine / "tomo.db"), "target")
    (mine / "environment").write_text("TOMO_MASTER_PASSWORD=new-install\n")
    paths = [str(old_dir / "tomo.db"), str(old_dir / "environment"), str(old_dir / "known_hosts")]
    new = NewTomo(Settings(database=str(mine / "tomo.db"), version="1.2.1", settle=0.0), paths)
    new.service = Recorder(running=False)  # type: ignore[assignment]
    return old, new, old_dir, mine


def _sides(tmp_path: Path) -> tuple[migrate.Options, migrate.Options]:
    a = migrate.Options(dest=str(tmp_path / "a" / "migrate"), health_timeout=5, state_dir=str(tmp_path / "old-state"))
    b = migrate.Options(dest=str(tmp_path / "b" / "migrate"), health_timeout=5, state_dir=str(tmp_path / "state"),
                        dest_root=str(tmp_path / "new"))  # fmt: skip
    return a, b


def _to_delta(tmp_path: Path, old: Tomo, new: NewTomo, old_dir: Path) -> str:
    a, b = _sides(tmp_path)
    seeded = migrate.seed(old, a)
    migrate.receive(new, str(seeded["path"]), b, document=True)
    with sqlite3.connect(old_dir / "tomo.db") as db:  # written on the old server after the seed
        db.execute("UPDATE users SET email = 'carol@after-the-seed.example' WHERE username = 'carol'")
    migrate.freeze(old, a)
    return str(migrate.delta(old, str(seeded["path"]), a)["path"])


def _everything(top: Path) -> dict[str, bytes]:
    return {str(p.relative_to(top)): p.read_bytes() for p in sorted(top.rglob("*")) if p.is_file()}


def test_the_new_server_keeps_its_database_and_imports_the_frozen_servers_categories(
    tmp_path: Path, servers: tuple[Tomo, NewTomo, Path, Path]
) -> None:
    old, new, old_dir, mine = servers
    a, b = _sides(tmp_path)
    seeded = migrate.seed(old, a)
    migrate.receive(new, str(seeded["path"]), b, document=True)
    assert (mine / "known_hosts").read_text() == "10.0.0.11 ssh-ed25519 AAAAold\n", "the seed's files are in place"
    assert _rows(mine / "tomo.db", "SELECT username FROM users ORDER BY username") == [("admin",), ("alice",), ("bob",)]
    with sqlite3.connect(old_dir / "tomo.db") as db:  # written on the old server after the seed
        db.execute("UPDATE users SET email = 'carol@after-the-seed.example' WHERE username = 'carol'")
    migrate.freeze(old, a)
    made = migrate.delta(old, str(seeded["path"]), a)
    done = migrate.apply(new, str(made["path"]), b)
    assert done["imported"]["changed"] is True  # type: ignore[index]
    users = _rows(mine / "tomo.db", "SELECT username, email FROM users ORDER BY username")
    assert users == [("admin", "admin@example.org"), ("alice", "alice@example.org"),
                     ("carol", "carol@after-the-seed.example")]  # fmt: skip
    identity = _rows(mine / "tomo.db", "SELECT installation_id FROM system_info")
    assert identity == [(tomo_fixture.TARGET["installation_id"],)], "the new install's identity was replaced"
    assert (mine / "environment").read_text() == "TOMO_MASTER_PASSWORD=old-secret\n"
    assert new.service.calls[-1] == "start" and new.service.running  # type: ignore[attr-defined]
    state = tmp_path / "state" / "migrate"
    assert not (state / "tomo-migrated-document.json").exists(), "the imported document was left behind"
    kept = state / "tomo-own-before-import.db"
    assert _rows(kept, "SELECT username FROM users ORDER BY username") == [("admin",), ("alice",), ("bob",)]
    again = migrate.apply(new, str(made["path"]), b)
    assert again["changed"] is False


def test_a_migration_by_document_is_tomos_only(tmp_path: Path) -> None:
    from .test_engine import Recorder as Files

    with pytest.raises(Error, match="only Tomo has"):
        Files("files", [str(tmp_path)]).migrate_by_document()


class FailingStart(Recorder):
    def start(self) -> None:
        self.calls.append("start")  # and it does not run


def test_a_start_that_fails_after_the_import_puts_the_new_servers_own_database_back(
    tmp_path: Path, servers: tuple[Tomo, NewTomo, Path, Path]
) -> None:
    old, new, old_dir, mine = servers
    delta = _to_delta(tmp_path, old, new, old_dir)
    own = _rows(mine / "tomo.db", "SELECT username, email FROM users ORDER BY username")
    new.service = FailingStart(running=False)  # type: ignore[assignment]
    with pytest.raises(Error) as failed:
        migrate.apply(new, delta, _sides(tmp_path)[1])
    assert "did not start on the migrated data" in str(failed.value)
    assert "its own database put back as it was before the import" in str(failed.value)
    assert _rows(mine / "tomo.db", "SELECT username, email FROM users ORDER BY username") == own


def test_a_document_this_tomo_refuses_is_refused_by_check_mode_and_the_run_alike_before_anything_stops(
    tmp_path: Path, servers: tuple[Tomo, NewTomo, Path, Path]
) -> None:
    old, new, old_dir, _mine = servers
    delta = _to_delta(tmp_path, old, new, old_dir)
    new.settings.version = "1.1.0"  # older than the old server's 1.2.0
    before = _everything(tmp_path / "new")
    calls = list(new.service.calls)  # type: ignore[attr-defined]
    said = []
    for check in (True, False):
        with pytest.raises(Error) as refused:
            migrate.apply(new, delta, _sides(tmp_path)[1], check=check)
        said.append(str(refused.value))
    assert said[0] == said[1] and said[0].startswith("the old server's document cannot be imported into this tomo")
    assert "newer" in said[0]
    assert new.service.calls == calls, "Tomo was stopped or started for a refused import"  # type: ignore[attr-defined]
    assert _everything(tmp_path / "new") == before


def test_the_seed_keeps_the_new_servers_own_environment_as_a_safety_copy(
    tmp_path: Path, servers: tuple[Tomo, NewTomo, Path, Path]
) -> None:
    old, new, _old_dir, mine = servers
    a, b = _sides(tmp_path)
    migrate.receive(new, str(migrate.seed(old, a)["path"]), b, document=True)
    assert (mine / "environment").read_text() == "TOMO_MASTER_PASSWORD=old-secret\n"
    kept = [p for p in (tmp_path / "new").rglob("*") if p.is_file() and b"new-install" in p.read_bytes()]
    assert kept, "the new server's own master password was thrown away"


def test_a_run_killed_between_the_import_and_the_swap_keeps_the_copy_from_before_the_first_import(
    tmp_path: Path, servers: tuple[Tomo, NewTomo, Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    old, new, old_dir, mine = servers
    delta = _to_delta(tmp_path, old, new, old_dir)
    own = _rows(mine / "tomo.db", "SELECT username, email FROM users ORDER BY username")
    real = migrate.swap.restore_from

    def killed(*args: object, **kwargs: object) -> object:
        raise KeyboardInterrupt  # (as a SIGINT would, after the import and before anything is swapped)

    monkeypatch.setattr(migrate.swap, "restore_from", killed)
    with pytest.raises(KeyboardInterrupt):
        migrate.apply(new, delta, _sides(tmp_path)[1])
    imported = _rows(mine / "tomo.db", "SELECT username, email FROM users ORDER BY username")
    assert imported != own, "the import did not happen before the swap"
    monkeypatch.setattr(migrate.swap, "restore_from", real)
    done = migrate.apply(new, delta, _sides(tmp_path)[1])
    assert done["changed"] is True
    kept = tmp_path / "state" / "migrate" / "tomo-own-before-import.db"
    assert _rows(kept, "SELECT username, email FROM users ORDER BY username") == own, "the copy was taken again"
