"""The migration's steps (engine/migrate.py) and the delta set (sets/delta.py) on plain files and real SQLite.

The old and the new server are two places on this machine: the old one's tree is its paths, the new one restores
under its own ``dest_root``. The application is the recorder of test_engine.py (it notes stop and start): what a
migration does to the data is what is checked here; tenement itself is migrated in tests/integration and Molecule.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from ansible_collections.selfhost.dr.plugins.module_utils._common import Error
from ansible_collections.selfhost.dr.plugins.module_utils.engine import migrate, restore
from ansible_collections.selfhost.dr.plugins.module_utils.sets import delta as delta_mod
from ansible_collections.selfhost.dr.plugins.module_utils.sets.manifest import read_manifest
from ansible_collections.selfhost.dr.plugins.module_utils.sets.names import Sidecars

from .test_engine import Recorder

REAL_RACY_NS = delta_mod.RACY_NS


@pytest.fixture(autouse=True)
def quick_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """Files made by the test a moment before the index would all count as racy (changed within a minute of it):
    the window is 50 ms here, and the files are made before it (one test keeps the real window)."""
    monkeypatch.setattr(delta_mod, "RACY_NS", 50_000_000)


def _rows(path: Path) -> int:
    with sqlite3.connect(path) as db:
        return int(db.execute("SELECT count(*) FROM t").fetchone()[0])


def _database(path: Path, rows: int, wal: bool = True) -> None:
    db = sqlite3.connect(path)
    if wal:
        db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, v TEXT)")
    db.executemany("INSERT INTO t (v) VALUES (?)", [(f"row {n}",) for n in range(rows)])
    db.commit()
    db.close()


@pytest.fixture
def old(tmp_path: Path) -> Path:
    top = tmp_path / "old" / "srv" / "app"
    (top / "sub").mkdir(parents=True)
    (top / "notes.txt").write_text("first notes\n")
    (top / "big.bin").write_bytes(os.urandom(3 * 1024 * 1024))
    (top / "sub" / "gone.txt").write_text("deleted before the freeze\n")
    _database(top / "live.db", 100)
    _database(top / "idle.db", 50, wal=False)
    time.sleep(0.1)  # older than the racy window before the index
    return top


def _tree(top: Path) -> dict[str, str]:
    out = {}
    for path in sorted(top.rglob("*")):
        if path.is_file() and not path.name.endswith(("-wal", "-shm")):
            rel = str(path.relative_to(top))
            if path.suffix == ".db":
                out[rel] = f"rows={_rows(path)}"
            else:
                out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def _options(tmp_path: Path, side: str, **extra: object) -> migrate.Options:
    return migrate.Options(dest=str(tmp_path / side / "migrate"), health_timeout=5, **extra)  # type: ignore[arg-type]


def _change(top: Path) -> None:
    (top / "notes.txt").write_text("notes written after the seed\n")
    (top / "sub" / "gone.txt").unlink()
    (top / "new.txt").write_text("made after the seed\n")
    _database(top / "live.db", 25)


def _migrate_to_freeze(tmp_path: Path, old: Path) -> tuple[Recorder, dict[str, object], dict[str, object]]:
    app = Recorder("files", [str(old)])
    seeded = migrate.seed(app, _options(tmp_path, "a"))
    _change(old)
    migrate.freeze(app, _options(tmp_path, "a"))
    made = migrate.delta(app, str(seeded["path"]), _options(tmp_path, "a"))
    return app, seeded, made


def test_a_delta_carries_only_what_changed_and_lists_what_was_kept_and_deleted(tmp_path: Path, old: Path) -> None:
    app, seeded, made = _migrate_to_freeze(tmp_path, old)
    manifest = read_manifest(str(made["manifest_path"]), delta=True)
    prefix = str(old).lstrip("/")
    carried = {str(f["path"]).removeprefix(prefix + "/") for f in manifest["files"] if f["type"] == "file"}  # type: ignore[attr-defined]
    assert carried == {"notes.txt", "new.txt", "live.db"}
    assert [n.removeprefix(prefix + "/") for n in manifest["kept"]] == ["big.bin", "idle.db"]  # type: ignore[attr-defined]
    assert [n.removeprefix(prefix + "/") for n in manifest["deleted"]] == ["sub/gone.txt"]  # type: ignore[attr-defined]
    assert manifest["base"]["name"] == seeded["name"]  # type: ignore[index]
    assert int(made["size"]) < int(seeded["size"]) / 4, "the 3 MiB file that did not change was carried"
    assert app.calls == ["archive", "stop", "archive"]


def test_seed_then_delta_puts_the_frozen_server_on_the_new_one_and_starts_what_ran(tmp_path: Path, old: Path) -> None:
    _app, seeded, made = _migrate_to_freeze(tmp_path, old)
    new_root = tmp_path / "new"
    target = Recorder("files", [str(old)], running=False)
    migrate.receive(target, str(seeded["path"]), _options(tmp_path, "b", dest_root=str(new_root)))
    landed = new_root / str(old).lstrip("/")
    assert (landed / "sub" / "gone.txt").exists() and _rows(landed / "live.db") == 100, "the seed is in place"
    assert target.calls == ["stop", "fix_up"], "the seed started something (or was not made safe to start)"
    done = migrate.apply(target, str(made["path"]), _options(tmp_path, "b", dest_root=str(new_root)))
    assert _tree(landed) == _tree(old)
    assert target.calls == ["stop", "fix_up", "stop", "fix_up", "start svc:a"]  # receive, then apply
    assert done["checked"]["kept"] == 2  # type: ignore[index]
    assert done["checked"]["hashed"] == 0, "kept files untouched since the seed's restore were read again"  # type: ignore[index]
    again = migrate.apply(target, str(made["path"]), _options(tmp_path, "b", dest_root=str(new_root)))
    assert again["changed"] is False and _tree(landed) == _tree(old)
    assert not list(landed.parent.glob(".app.*")), "a staging or safety copy was left beside the tree"


def test_a_kept_file_changed_on_the_new_server_refuses_the_delta_and_leaves_the_seed(tmp_path: Path, old: Path) -> None:
    _app, seeded, made = _migrate_to_freeze(tmp_path, old)
    new_root = tmp_path / "new"
    target = Recorder("files", [str(old)], running=False)
    options = _options(tmp_path, "b", dest_root=str(new_root))
    migrate.receive(target, str(seeded["path"]), options)
    landed = new_root / str(old).lstrip("/")
    with open(landed / "big.bin", "r+b") as handle:
        handle.write(b"X")
    before = _tree(landed)
    with pytest.raises(migrate.MigrateError) as refused:
        migrate.apply(target, str(made["path"]), options)
    assert "the seeded /" in str(refused.value) and "big.bin does not hold what the seed holds" in str(refused.value)
    assert str(refused.value).endswith("the seeded data are as they were, files stopped")
    assert _tree(landed) == before
    assert target.calls == ["stop", "fix_up", "stop"], "the application was started for a refused delta"


def test_a_failed_start_puts_the_seeded_trees_back_and_leaves_the_application_stopped(
    tmp_path: Path, old: Path
) -> None:
    app, seeded, made = _migrate_to_freeze(tmp_path, old)
    new_root = tmp_path / "new"
    target = Recorder("files", [str(old)], running=False, fail="start svc:a")
    options = _options(tmp_path, "b", dest_root=str(new_root))
    migrate.receive(target, str(seeded["path"]), options)
    landed = new_root / str(old).lstrip("/")
    seeded_tree = _tree(landed)
    with pytest.raises(migrate.MigrateError) as failed:
        migrate.apply(target, str(made["path"]), options)
    assert "did not start on the migrated data (files failed to start svc:a)" in str(failed.value)
    assert "seed this server again before another delta" in str(failed.value)
    assert _tree(landed) == seeded_tree
    assert target.calls[-2:] == ["start svc:a", "stop"]
    with pytest.raises(migrate.MigrateError, match="holds no seed"):  # the start may have written to the kept files
        migrate.apply(target, str(made["path"]), options)
    # and the old server starts again with what ran
    migrate.thaw(app, _options(tmp_path, "a"))
    assert app.calls[-1] == "start svc:a"


def test_a_delta_is_never_restored_as_a_whole_set(tmp_path: Path, old: Path) -> None:
    _app, _seeded, made = _migrate_to_freeze(tmp_path, old)
    target = Recorder("files", [str(old)])
    options = restore.Options(dest_root=str(tmp_path / "new"))
    with pytest.raises(Error) as refused:
        restore.plan(target, str(made["path"]), options)
    assert "is of a delta set, which holds only what changed since" in str(refused.value)
    assert target.calls == []


def test_a_delta_for_another_seed_is_refused_before_anything_stops(tmp_path: Path, old: Path) -> None:
    app, seeded, made = _migrate_to_freeze(tmp_path, old)
    migrate.thaw(app, _options(tmp_path, "a"))
    other = migrate.seed(app, _options(tmp_path, "c"))
    target = Recorder("files", [str(old)], running=False)
    options = _options(tmp_path, "b", dest_root=str(tmp_path / "new"))
    migrate.receive(target, str(other["path"]), options)
    calls = list(target.calls)
    with pytest.raises(migrate.MigrateError) as refused:
        migrate.apply(target, str(made["path"]), options)
    assert f"it follows {seeded['name']}, not {other['name']}" in str(refused.value)
    assert target.calls == calls


def _to_craft(tmp_path: Path, old: Path) -> tuple[dict[str, object], dict[str, object], str]:
    """A migration to its delta: the seed's manifest, the delta's (to craft from) and the seed manifest's sha256."""
    _app, seeded, made = _migrate_to_freeze(tmp_path, old)
    base = read_manifest(Sidecars.of(str(seeded["path"])).manifest)
    manifest = read_manifest(str(made["manifest_path"]), delta=True)
    return base, manifest, hashlib.sha256(Path(Sidecars.of(str(seeded["path"])).manifest).read_bytes()).hexdigest()


def test_a_crafted_delta_with_valid_checksums_that_keeps_what_its_base_lacks_is_refused(
    tmp_path: Path, old: Path
) -> None:
    base, manifest, sha = _to_craft(tmp_path, old)
    assert delta_mod.delta_problem(manifest, base, sha) == ""
    for kept, deleted, problem in (
        (["etc/passwd"], None, "which its base holds no file of"),
        (["../x"], None, "not a member name"),
        (None, [], "list of deleted names"),
        ([*manifest["kept"], str(manifest["files"][-1]["path"])], None, "both keeps and carries"),  # type: ignore[index]
    ):
        crafted = json.loads(json.dumps(manifest))
        if kept is not None:
            crafted["kept"] = kept
        if deleted is not None:
            crafted["deleted"] = deleted
        assert problem in delta_mod.delta_problem(crafted, base, sha)


def test_a_file_written_in_the_same_moment_as_the_index_is_carried(
    tmp_path: Path, old: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(delta_mod, "RACY_NS", REAL_RACY_NS)
    app = Recorder("files", [str(old)])
    (old / "big.bin").write_bytes(os.urandom(1024))  # changed a moment before the seed's index, and not again
    seeded = migrate.seed(app, _options(tmp_path, "a"))
    migrate.freeze(app, _options(tmp_path, "a"))
    made = migrate.delta(app, str(seeded["path"]), _options(tmp_path, "a"))
    manifest = read_manifest(str(made["manifest_path"]), delta=True)
    carried = [str(f["path"]) for f in manifest["files"]]  # type: ignore[attr-defined]
    assert any(n.endswith("big.bin") for n in carried), "a file its stat cannot vouch for was kept"
    assert manifest["kept"] == [], "the files made 0.1 s before the index are within the one-minute window"


def _pair(phases: list[tuple[str, str]], **extra: object) -> dict[str, object]:
    return {
        "old": "old1",
        "new": "new1",
        "started": 1_800_000_000.0,
        "finished": 1_800_000_100.0,
        "phases": [
            {"name": n, "status": s, "seconds": 1.0, "message": "boom" if s == "failed" else ""} for n, s in phases
        ],
        **extra,
    }


ALL = [(p, "passed") for p in migrate.PHASES]


@pytest.mark.parametrize(
    ("phases", "planned", "result", "failed_phase"),
    [
        (ALL, None, "migrated", None),
        ([("preflight", "passed"), ("seed", "failed")], None, "not migrated", "seed"),
        ([*ALL[:3], ("sync", "failed"), ("rollback", "passed")], None, "rolled back", "sync"),
        ([*ALL[:3], ("sync", "failed"), ("rollback", "failed")], None, "rollback failed", "sync"),
        ([*ALL[:3], ("sync", "failed")], None, "rollback failed", "sync"),  # no rollback ran after the freeze
        (ALL[:3], None, "rollback failed", "sync"),  # ended after the freeze, saying nothing
        (ALL[:1], ["preflight"], "checked", None),
    ],
)
def test_the_report_says_what_became_of_each_pair(
    phases: list[tuple[str, str]], planned: list[str] | None, result: str, failed_phase: str | None
) -> None:
    suite = migrate.suite_of(_pair(phases, planned=planned or list(migrate.PHASES), downtime_seconds=12.5))
    assert suite.name == "old1 → new1"
    assert suite.properties["result"] == result
    assert suite.properties["failed_phase"] == failed_phase
    names = [c.name for c in suite.cases]
    assert names[: len(migrate.PHASES)] == list(migrate.PHASES), "every phase is in the report, in order"
    if failed_phase:
        after = names.index(failed_phase) + 1
        assert all(c.status == "skipped" for c in suite.cases[after:] if c.name != "rollback")
    assert suite.status == ("failed" if failed_phase else "passed")


def test_a_report_of_pairs_is_written_in_three_formats(tmp_path: Path) -> None:
    from ansible_collections.selfhost.dr.plugins.module_utils import reports

    report = migrate.report_of(
        [
            _pair(ALL, downtime_seconds=3.2, seed_bytes=1000, delta_bytes=50, transfer="direct"),
            {**_pair([*ALL[:3], ("sync", "failed"), ("rollback", "passed")]), "old": "old2", "new": "new2"},
        ]
    )
    paths = reports.write(report, str(tmp_path), "migration")
    markdown = Path(paths["markdown"]).read_text()
    assert "old1 → new1" in markdown and "rolled back" in markdown and "| 5 | direct |" in markdown
    assert Path(paths["junit"]).read_text().count("<failure") == 1
    assert reports.from_json(Path(paths["json"]).read_text()).status == "failed"


def test_a_frozen_server_is_not_seeded_and_a_migrated_one_not_replaced_by_a_seed(tmp_path: Path, old: Path) -> None:
    app, seeded, made = _migrate_to_freeze(tmp_path, old)
    with pytest.raises(migrate.MigrateError, match=r"froze it at .*; nothing was changed"):
        migrate.seed(app, _options(tmp_path, "a"))
    new_root = tmp_path / "new"
    target = Recorder("files", [str(old)], running=False)
    options = _options(tmp_path, "b", dest_root=str(new_root))
    migrate.receive(target, str(seeded["path"]), options)
    migrate.apply(target, str(made["path"]), options)
    landed = new_root / str(old).lstrip("/")
    (landed / "written-on-the-new-server.txt").write_text("after the cutover\n")
    with pytest.raises(migrate.MigrateError, match="holds files's data migrated with"):
        migrate.receive(target, str(seeded["path"]), options)
    assert (landed / "written-on-the-new-server.txt").exists()
    done = migrate.receive(target, str(seeded["path"]), options, replace=True)
    assert not (landed / "written-on-the-new-server.txt").exists()
    kept = [p for p in landed.parent.iterdir() if p.name.startswith(".app.selfhost-dr-safety-")]
    assert kept and (kept[0] / "written-on-the-new-server.txt").exists(), "what a replacing seed replaced was not kept"
    assert done["restore_id"]


def test_a_delta_that_leaves_out_a_file_the_seed_holds_is_refused(tmp_path: Path, old: Path) -> None:
    app = Recorder("files", [str(old)])
    seeded = migrate.seed(app, _options(tmp_path, "a"))
    for side in ("-wal", "-shm"):
        Path(str(old / "live.db") + side).unlink(missing_ok=True)
    os.symlink("/nonexistent", str(old / "live.db") + "-wal")  # the database cannot be snapshotted now
    migrate.freeze(app, _options(tmp_path, "a"))
    with pytest.raises(
        migrate.MigrateError, match=r"the delta was refused: it left out .*live\.db .*which the seed holds"
    ):
        migrate.delta(app, str(seeded["path"]), _options(tmp_path, "a"))
    assert not list((tmp_path / "a" / "migrate").glob("*-delta*")), "the refused delta was left for someone to apply"


def test_a_crafted_delta_that_keeps_a_file_below_a_directory_it_does_not_carry_is_refused(
    tmp_path: Path, old: Path
) -> None:
    _app, seeded, made = _migrate_to_freeze(tmp_path, old)
    base = read_manifest(Sidecars.of(str(seeded["path"])).manifest)
    sha = hashlib.sha256(Path(Sidecars.of(str(seeded["path"])).manifest).read_bytes()).hexdigest()
    crafted = json.loads(Path(str(made["manifest_path"])).read_text())
    crafted["kept"] = [*crafted["kept"], crafted["kept"][0]]
    assert delta_mod.delta_problem(crafted, base, sha) == "it keeps a name twice"
    crafted = json.loads(Path(str(made["manifest_path"])).read_text())
    (top,) = crafted["paths"]
    crafted["files"] = [f for f in crafted["files"] if f["path"] != top.lstrip("/")]  # the root directory's record
    assert "does not carry its directory" in delta_mod.delta_problem(crafted, base, sha)


def test_a_kept_file_touched_on_the_new_server_is_read_again_and_one_changed_behind_its_mtime_is_refused(
    tmp_path: Path, old: Path
) -> None:
    _app, seeded, made = _migrate_to_freeze(tmp_path, old)
    target = Recorder("files", [str(old)], running=False)
    options = _options(tmp_path, "b", dest_root=str(tmp_path / "new"))
    migrate.receive(target, str(seeded["path"]), options)
    landed = tmp_path / "new" / str(old).lstrip("/")
    idle = landed / "idle.db"
    idle.write_bytes(idle.read_bytes())  # the same bytes written again: its stat changed, its content did not
    big = landed / "big.bin"
    before = big.stat()
    with open(big, "r+b") as handle:  # other bytes, same size, and the mtime put back: only ctime says so
        handle.write(b"Y" * 16)
    os.utime(big, ns=(before.st_atime_ns, before.st_mtime_ns))
    with pytest.raises(migrate.MigrateError, match=r"big\.bin does not hold what the seed holds"):
        migrate.apply(target, str(made["path"]), options)
    with open(big, "r+b") as handle:
        handle.write(Path(old / "big.bin").read_bytes()[:16])  # the seed's bytes back: read again, it passes
    done = migrate.apply(target, str(made["path"]), options)
    assert done["checked"] == {**done["checked"], "kept": 2, "hashed": 2}  # type: ignore[dict-item]
    assert _tree(landed) == _tree(old)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _frozen_db(old: Path, name: str, rows: int) -> None:
    """A database of ``rows`` rows, of which a few are updated after the seed (see :func:`_update`)."""
    _database(old / name, rows, wal=False)
    time.sleep(0.1)


def _update(path: Path, ids: list[int]) -> None:
    db = sqlite3.connect(path)
    with db:
        db.executemany("UPDATE t SET v = 'changed after the seed' WHERE id = ?", [(i,) for i in ids])
    db.close()  # (the last connection of a WAL database writes its WAL into it)


class FixingUp(Recorder):
    """An application whose restore fix-up changes a database (as tenement's empties instance_state)."""

    def __init__(self, name: str, paths: list[str], fixed: str, **extra: object) -> None:
        super().__init__(name, paths, **extra)  # type: ignore[arg-type]
        self.fixed = fixed

    def fixed_up_paths(self, facts: object) -> list[str]:
        return [self.fixed]

    def fix_up(self, manifest: dict[str, object], targets: list[str], log: object = print) -> None:
        super().fix_up(manifest, targets)
        for target in targets:
            found = Path(target) / os.path.relpath(self.fixed, self.paths[0])
            if found.exists():
                with sqlite3.connect(found) as db:
                    db.execute("DELETE FROM t WHERE id > 10")


def test_a_changed_database_is_carried_as_its_changed_pages_and_rebuilt_exactly(tmp_path: Path, old: Path) -> None:
    _frozen_db(old, "big.db", 60000)
    app = Recorder("files", [str(old)])
    seeded = migrate.seed(app, _options(tmp_path, "a"))
    _update(old / "big.db", [5, 30000, 59990])
    migrate.freeze(app, _options(tmp_path, "a"))
    made = migrate.delta(app, str(seeded["path"]), _options(tmp_path, "a"))
    manifest = read_manifest(str(made["manifest_path"]), delta=True)
    record = next(f for f in manifest["files"] if str(f["path"]).endswith("big.db"))  # type: ignore[attr-defined]
    size = (old / "big.db").stat().st_size
    # three leaves (split, as the rows grew), the pages above them, the header: not the database's 300 pages
    assert record["patch"]["pages"] <= 16 and record["size"] < size / 10, "the unchanged pages were carried"  # type: ignore[index]
    target = Recorder("files", [str(old)], running=False)
    options = _options(tmp_path, "b", dest_root=str(tmp_path / "new"))
    migrate.receive(target, str(seeded["path"]), options)
    done = migrate.apply(target, str(made["path"]), options)
    landed = tmp_path / "new" / str(old).lstrip("/")
    assert _sha256(landed / "big.db") == record["patch"]["sha256"]  # type: ignore[index]
    assert _tree(landed) == _tree(old) and done["checked"]["rebuilt"] == 1  # type: ignore[index]


def test_a_database_the_fix_up_changed_is_rebuilt_from_the_seeds_own_copy(tmp_path: Path, old: Path) -> None:
    _app, seeded, made = _migrate_to_freeze(tmp_path, old)
    target = FixingUp("files", [str(old)], str(old / "live.db"), running=False)
    options = _options(tmp_path, "b", dest_root=str(tmp_path / "new"))
    migrate.receive(target, str(seeded["path"]), options)
    landed = tmp_path / "new" / str(old).lstrip("/")
    assert _rows(landed / "live.db") == 10, "the fix-up did not change the seeded database"
    bases = tmp_path / "b" / "migrate" / ".files-seed-bases"
    assert len(list(bases.iterdir())) == 1
    migrate.apply(target, str(made["path"]), options)
    assert _rows(landed / "live.db") == 10, "the fix-up runs after the apply too"
    with sqlite3.connect(old / "live.db") as db:
        want = db.execute("SELECT v FROM t WHERE id <= 10 ORDER BY id").fetchall()
    with sqlite3.connect(landed / "live.db") as db:
        assert db.execute("SELECT v FROM t WHERE id <= 10 ORDER BY id").fetchall() == want
    assert not bases.exists(), "the seed's copy was kept after the delta was applied"


def test_a_seeded_database_changed_on_the_new_server_refuses_the_delta(tmp_path: Path, old: Path) -> None:
    _app, seeded, made = _migrate_to_freeze(tmp_path, old)
    target = Recorder("files", [str(old)], running=False)
    options = _options(tmp_path, "b", dest_root=str(tmp_path / "new"))
    migrate.receive(target, str(seeded["path"]), options)
    landed = tmp_path / "new" / str(old).lstrip("/")
    _update(landed / "live.db", [1])
    before = _tree(landed)
    with pytest.raises(migrate.MigrateError) as refused:
        migrate.apply(target, str(made["path"]), options)
    assert "live.db applies to the seeded one, which changed here" in str(refused.value)
    assert _tree(landed) == before and "start svc:a" not in target.calls


def test_pages_a_digest_missed_rebuild_a_database_that_is_refused_not_installed(
    tmp_path: Path, old: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = Recorder("files", [str(old)])
    seeded = migrate.seed(app, _options(tmp_path, "a"))
    _change(old)
    migrate.freeze(app, _options(tmp_path, "a"))
    from ansible_collections.selfhost.dr.plugins.module_utils.sets import pages

    monkeypatch.setattr(pages, "_digest", lambda page: bytes(pages.DIGEST))  # every page "unchanged" to the delta
    monkeypatch.setattr(delta_mod.PageMap, "from_json", classmethod(lambda cls, doc: cls(
        int(doc["page_size"]), int(doc["size"]), bytes(len(pages.base64.b64decode(doc["digests"])))
    )))  # fmt: skip
    made = migrate.delta(app, str(seeded["path"]), _options(tmp_path, "a"))
    target = Recorder("files", [str(old)], running=False)
    options = _options(tmp_path, "b", dest_root=str(tmp_path / "new"))
    migrate.receive(target, str(seeded["path"]), options)
    landed = tmp_path / "new" / str(old).lstrip("/")
    before = _tree(landed)
    with pytest.raises(migrate.MigrateError) as refused:
        migrate.apply(target, str(made["path"]), options)
    assert "live.db rebuilt from the seeded copy and the delta's pages is not the old server's" in str(refused.value)
    assert _tree(landed) == before


def test_a_crafted_patch_of_a_database_the_seed_does_not_hold_is_refused_before_anything_stops(
    tmp_path: Path, old: Path
) -> None:
    base, manifest, sha = _to_craft(tmp_path, old)
    n = next(i for i, f in enumerate(manifest["files"]) if f.get("patch"))  # type: ignore[arg-type]
    for change, problem in (
        ({"base_sha256": "0" * 64}, "as a patch of a database its base does not hold"),
        ({"page_size": 1000}, "page size is not one SQLite has"),
        ({"size": -1}, "size is not a number"),
    ):
        crafted = json.loads(json.dumps(manifest))
        crafted["files"][n]["patch"].update(change)
        assert problem in delta_mod.delta_problem(crafted, base, sha)
    crafted = json.loads(json.dumps(manifest))
    crafted["files"][n]["sqlite"] = False
    assert "which is not a database" in delta_mod.delta_problem(crafted, base, sha)


def test_the_hand_procedure_in_the_docs_puts_the_frozen_tree_back_patches_and_all(tmp_path: Path, old: Path) -> None:
    """docs/migrate.md's "By hand" block, run as written (its set names and directory replaced): seed, patched
    databases kept aside, delta, rebuild and deletions give the frozen server's tree."""
    _frozen_db(old, "big.db", 30000)
    _app, seeded, made = _migrate_to_freeze(tmp_path, old)
    want = _tree(old)
    old.rename(tmp_path / "frozen")
    text = (Path(__file__).resolve().parents[2] / "docs" / "migrate.md").read_text()
    block = text.split("**By hand**", 1)[1].split("```sh\n", 1)[1].split("\n```", 1)[0]
    script = block.replace("M=/var/backups/selfhost-dr/migrate", f"M={tmp_path / 'a' / 'migrate'}")
    script = script.replace("APP-HOST-...-seed.tar.zst", str(seeded["name"]))
    script = script.replace("APP-HOST-...-delta.tar.zst", str(made["name"]))
    assert "..." not in script.replace("'...'", "")
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", script], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert _tree(old) == want
    assert not list(old.rglob("*.seed")) and not list(old.rglob("*.new"))


def test_a_fleet_report_spans_the_pairs_that_ran_not_those_never_started() -> None:
    report = migrate.report_of([_pair(ALL)], never=[{"old": "old2", "new": "new2"}])
    assert [s.properties["result"] for s in report.suites] == ["migrated", "not started"]
    assert (report.started, report.finished) == (migrate.iso_of(1_800_000_000.0), migrate.iso_of(1_800_000_100.0))


def test_a_delta_applied_before_a_new_seed_is_applied_again_not_taken_for_a_killed_run(
    tmp_path: Path, old: Path
) -> None:
    """The journal holds the first apply's restore of the delta; a seed since makes it no run to finish."""
    _app, seeded, made = _migrate_to_freeze(tmp_path, old)
    target = Recorder("files", [str(old)], running=False)
    options = _options(tmp_path, "b", dest_root=str(tmp_path / "new"), state_dir=str(tmp_path / "b-state"))
    migrate.receive(target, str(seeded["path"]), options)
    migrate.apply(target, str(made["path"]), options)
    migrate.receive(target, str(seeded["path"]), options, replace=True)
    landed = tmp_path / "new" / str(old).lstrip("/")
    assert _tree(landed) != _tree(old), "the seed did not replace the applied delta"
    again = migrate.apply(target, str(made["path"]), options)
    assert not again.get("resumed") and _tree(landed) == _tree(old)
