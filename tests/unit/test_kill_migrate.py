"""SIGKILL at every step of a migration (engine/migrate.py): the old server's data are never touched, the new
server holds exactly the seed or exactly the frozen server (never a mix) once the next run has recovered, and
running the step again, or seeding again where the step says so, completes the migration.

Each kill happens in a forked child at the Nth call of a function (test_attack_interrupts.py's machinery); the test
process then plays the next run on the host.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from ansible_collections.selfhost.dr.plugins.module_utils import safe_fs
from ansible_collections.selfhost.dr.plugins.module_utils.engine import migrate, swap
from ansible_collections.selfhost.dr.plugins.module_utils.sets import pages

from .test_attack_interrupts import in_child, kill_on_call
from .test_engine import Recorder
from .test_migrate import _change, _database, _migrate_to_freeze, _options, _tree


@pytest.fixture(autouse=True)
def quick_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    from ansible_collections.selfhost.dr.plugins.module_utils.sets import delta as delta_mod

    monkeypatch.setattr(delta_mod, "RACY_NS", 50_000_000)


@pytest.fixture
def old(tmp_path: Path) -> Path:
    import time

    top = tmp_path / "old" / "srv" / "app"
    (top / "sub").mkdir(parents=True)
    (top / "notes.txt").write_text("first notes\n")
    (top / "big.bin").write_bytes(os.urandom(256 * 1024))
    (top / "sub" / "gone.txt").write_text("deleted before the freeze\n")
    _database(top / "live.db", 3000)
    _database(top / "idle.db", 50, wal=False)
    time.sleep(0.1)
    return top


def _state(tmp_path: Path) -> dict[str, str]:
    """The old server's tree, byte for byte (a migration never changes it); not the -shm and -wal files that reading
    its databases here leaves (the tests read rows with connections closed only when collected)."""
    old = tmp_path / "old"
    return {
        str(p.relative_to(old)): p.read_bytes().hex()
        for p in sorted(old.rglob("*"))
        if p.is_file() and not p.name.endswith(("-shm", "-wal"))
    }


APPLY_POINTS = [  # (where, and whether the next run finishes the killed one's swap rather than applying again)
    (migrate, "_write_state", 1, False, False),  # about to apply, nothing swapped
    (os, "link", 1, False, False),  # the first kept file taken from the seeded tree
    (migrate, "rebuild", 1, False, False),  # a database rebuilt from its seeded copy and its patch
    (migrate, "rebuild", 1, True, False),
    (os, "rename", 1, False, False),  # the swap: the seeded tree set aside
    (os, "rename", 2, False, False),  # ... and the staged one put in its place
    (swap, "commit", 1, False, True),  # started on the migrated data, not yet committed
    (migrate, "_write_state", 2, False, True),  # committed, not yet written down as applied
    (safe_fs, "remove_path", 1, False, False),
]


@pytest.mark.parametrize(
    ("owner", "name", "n", "after", "resumes"), APPLY_POINTS, ids=lambda v: getattr(v, "__name__", str(v))
)
def test_a_delta_killed_while_it_is_applied_leaves_the_seed_or_the_frozen_server_and_the_next_run_finishes(
    tmp_path: Path, old: Path, owner: object, name: str, n: int, after: bool, resumes: bool
) -> None:
    _app, seeded, made = _migrate_to_freeze(tmp_path, old)
    frozen, old_bytes = _tree(old), _state(tmp_path)
    target = Recorder("files", [str(old)], running=False)
    options = _options(tmp_path, "b", dest_root=str(tmp_path / "new"), state_dir=str(tmp_path / "b-state"))
    migrate.receive(target, str(seeded["path"]), options)
    landed = tmp_path / "new" / str(old).lstrip("/")
    seed_tree = _tree(landed)
    assert seed_tree != frozen

    killed = in_child(
        lambda: migrate.apply(target, str(made["path"]), options), lambda: kill_on_call(owner, name, n, after)
    )
    assert killed, f"the apply finished before the {n}th call of {name}"
    swap.recover_interrupted(options.state_dir)  # what the next run does first
    assert _tree(landed) in (seed_tree, frozen), "the new server holds a mix of the seed and the frozen server"
    assert _state(tmp_path) == old_bytes, "the old server's data changed"
    again = migrate.apply(target, str(made["path"]), options)
    if resumes:  # swapped in, every file checked: finished, not made again
        assert again.get("resumed") is True, again
        assert target.calls[-3:] == ["stop", "fix_up", "start svc:a"], target.calls
    else:
        assert not again.get("resumed"), again
    assert _tree(landed) == frozen
    assert not [p for p in landed.parent.iterdir() if p.name.startswith(".app.")], "a staging tree was left"
    assert not (tmp_path / "b" / "migrate" / ".files-seed-bases").exists()


@pytest.mark.parametrize(
    ("step", "owner", "name", "n"),
    [
        ("seed", os, "replace", 1),  # the set written, its sidecars not yet renamed into place
        ("seed", migrate, "write_index", 1),  # the seed made, its index not yet written
        ("freeze", migrate, "_write_state", 1),
        ("delta", pages.PatchWriter, "result", 1),  # a database's patch half made
        ("delta", os, "replace", 1),
    ],
)
def test_a_step_on_the_old_server_killed_changes_nothing_there_and_runs_again(
    tmp_path: Path, old: Path, step: str, owner: object, name: str, n: int
) -> None:
    app = Recorder("files", [str(old)])
    options = _options(tmp_path, "a", state_dir=str(tmp_path / "a-state"))
    seeded: dict[str, object] = {}
    if step != "seed":
        seeded = migrate.seed(app, options)
        _change(old)
    if step == "delta":
        migrate.freeze(app, options)
    before = _state(tmp_path)
    work = {
        "seed": lambda: migrate.seed(app, options),
        "freeze": lambda: migrate.freeze(app, options),
        "delta": lambda: migrate.delta(app, str(seeded["path"]), options),
    }[step]
    assert in_child(work, lambda: kill_on_call(owner, name, n))
    assert _state(tmp_path) == before, "the old server's data changed"
    if step == "seed":
        seeded = migrate.seed(app, options)
        assert os.path.exists(str(seeded["path"]) + ".index.json")
        return
    if step == "freeze":
        migrate.freeze(app, options)  # again: frozen, the record written once
        migrate.thaw(app, options)
        assert app.calls[-1] == "start svc:a"
        return
    made = migrate.delta(app, str(seeded["path"]), options)
    target = Recorder("files", [str(old)], running=False)
    new = _options(tmp_path, "b", dest_root=str(tmp_path / "new"), state_dir=str(tmp_path / "b-state"))
    migrate.receive(target, str(seeded["path"]), new)
    migrate.apply(target, str(made["path"]), new)
    assert _tree(tmp_path / "new" / str(old).lstrip("/")) == _tree(old)


@pytest.mark.parametrize(("owner", "name", "n"), [(os, "rename", 1), (migrate, "_keep_bases", 1), (os, "fsync", 3)])
def test_a_seed_killed_while_the_new_server_restores_it_is_restored_again(
    tmp_path: Path, old: Path, owner: object, name: str, n: int
) -> None:
    app = Recorder("files", [str(old)])
    seeded = migrate.seed(app, _options(tmp_path, "a"))
    target = Recorder("files", [str(old)], running=False)
    options = _options(tmp_path, "b", dest_root=str(tmp_path / "new"), state_dir=str(tmp_path / "b-state"))
    assert in_child(lambda: migrate.receive(target, str(seeded["path"]), options), lambda: kill_on_call(owner, name, n))
    swap.recover_interrupted(options.state_dir)
    landed = tmp_path / "new" / str(old).lstrip("/")
    assert not landed.exists() or _tree(landed) == _tree(old), "a half-restored seed is in place"
    with pytest.raises(migrate.MigrateError, match="holds no seed"):
        migrate.apply(target, str(seeded["path"]).replace("seed", "delta"), options)
    migrate.receive(target, str(seeded["path"]), options, replace=True)
    assert _tree(landed) == _tree(old)
    shutil.rmtree(tmp_path / "new")


@pytest.mark.parametrize(("name", "n"), [("rebuild", 1), ("_write_state", 2)])
def test_a_kill_keeps_the_seeds_own_copy_of_a_fixed_up_database_until_the_delta_is_applied(
    tmp_path: Path, old: Path, name: str, n: int
) -> None:
    import sqlite3

    from .test_migrate import FixingUp

    _app, seeded, made = _migrate_to_freeze(tmp_path, old)
    target = FixingUp("files", [str(old)], str(old / "live.db"), running=False)
    options = _options(tmp_path, "b", dest_root=str(tmp_path / "new"), state_dir=str(tmp_path / "b-state"))
    migrate.receive(target, str(seeded["path"]), options)
    bases = tmp_path / "b" / "migrate" / ".files-seed-bases"
    assert len(list(bases.iterdir())) == 1
    assert in_child(lambda: migrate.apply(target, str(made["path"]), options), lambda: kill_on_call(migrate, name, n))
    assert len(list(bases.iterdir())) == 1, "the seed's copy went before the delta was written down as applied"
    migrate.apply(target, str(made["path"]), options)
    assert not bases.exists()
    landed = tmp_path / "new" / str(old).lstrip("/")
    query = "SELECT id, v FROM t WHERE id <= 10 ORDER BY id"
    with sqlite3.connect(old / "live.db") as want, sqlite3.connect(landed / "live.db") as got:
        assert got.execute(query).fetchall() == want.execute(query).fetchall()
