"""backup_create, backup_verify, backup_info and backup_prune as ansible runs them."""

from __future__ import annotations

import json
import os
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from ansible_collections.selfhost.dr.plugins.module_utils.sets.create import create
from ansible_collections.selfhost.dr.plugins.module_utils.sets.verify import verify

from .ansible_run import run_module

T0 = datetime(2026, 11, 1, 2, 0, tzinfo=UTC)


@pytest.fixture
def app(tmp_path: Path) -> Path:
    root = tmp_path / "app"
    (root / "data").mkdir(parents=True)
    (root / "data" / "notes.txt").write_text("notes\n" * 100)
    conn = sqlite3.connect(root / "data" / "app.db")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("CREATE TABLE t (x)")
    conn.executemany("INSERT INTO t VALUES (?)", [(i,) for i in range(1000)])
    conn.commit()
    conn.close()
    return root


def test_create_check_mode_then_create_then_verify_and_list(app: Path, tmp_path: Path) -> None:
    dest = tmp_path / "backups"
    args = {"paths": [str(app)], "dest": str(dest), "app": "demo", "label": "hot", "metadata": {"running": ["a:b"]}}

    planned = run_module("backup_create", args, check=True)
    assert planned["changed"] is True and not planned.get("failed"), planned
    assert planned["files"] == 2 and planned["databases"] == 1
    assert not dest.exists(), "check mode created the backup directory"

    made = run_module("backup_create", args)
    assert made["changed"] is True and not made.get("failed"), made
    assert Path(str(made["path"])).is_file() and (dest.stat().st_mode & 0o777) == 0o700
    assert made["files"] == 2 and made["databases"] == 1 and made["stats"]["bytes_out"] == made["size"]  # type: ignore[index]

    listed = run_module("backup_info", {"path": str(dest)})
    assert listed["count"] == 1 and listed["latest"]["name"] == made["name"]  # type: ignore[index]
    assert listed["latest"]["verification"] == {"state": "unverified"}  # type: ignore[index]
    assert listed["latest"]["metadata"] == {"running": ["a:b"]}  # type: ignore[index]

    checked = run_module("backup_verify", {"path": made["path"]}, check=True)
    assert checked["ok"] is True and checked["changed"] is False, checked
    assert not Path(str(made["path"]) + ".verified.json").exists(), "check mode recorded a result"

    verified = run_module("backup_verify", {"path": made["path"]})
    assert verified["ok"] is True and verified["changed"] is False
    assert [c["check"] for c in verified["checks"]] == ["checksum", "manifest", "members", "sqlite", "rows"]  # type: ignore[union-attr]
    listed = run_module("backup_info", {"path": str(dest), "app": "demo"})
    assert listed["latest"]["verification"]["state"] == "verified"  # type: ignore[index]
    assert run_module("backup_info", {"path": str(dest), "app": "other"})["count"] == 0


def test_failures_say_what_went_wrong(app: Path, tmp_path: Path) -> None:
    missing = run_module("backup_create", {"paths": [str(app / "nope")], "dest": str(tmp_path / "b")})
    assert missing["failed"] is True and missing["msg"] == f"path {app / 'nope'} does not exist"
    assert not (tmp_path / "b").exists() or not list((tmp_path / "b").iterdir())

    made = create([str(app)], str(tmp_path))
    with open(made.path, "r+b") as handle:
        handle.seek(os.path.getsize(made.path) // 2)
        handle.write(b"\xff\xff\xff\xff")
    broken = run_module("backup_verify", {"path": made.path})
    assert broken["failed"] is True and broken["ok"] is False
    assert str(broken["msg"]).startswith(f"backup set {made.name} failed verification: the sha256 of the file")
    assert run_module("backup_info", {"path": str(tmp_path)})["latest"]["verification"]["state"] == "failed"  # type: ignore[index]

    nothing = run_module("backup_prune", {"path": str(tmp_path)})
    assert nothing["failed"] is True and "no retention rule is set" in str(nothing["msg"])


def test_prune_check_mode_lists_then_deletes_and_keeps_the_newest_verified(app: Path, tmp_path: Path) -> None:
    dest = tmp_path / "backups"
    dest.mkdir()
    sets = [
        create([str(app)], str(dest), app="demo", label="daily", now=lambda n=n: T0 + timedelta(days=n))
        for n in range(4)
    ]
    verify(sets[0].path)  # the only verified set is the oldest
    before = sorted(os.listdir(dest))

    planned = run_module("backup_prune", {"path": str(dest), "keep_last": 1}, check=True, diff=True)
    assert planned["changed"] is True and sorted(planned["deleted"]) == [sets[1].name, sets[2].name]  # type: ignore[arg-type]
    assert sorted(os.listdir(dest)) == before, "check mode deleted something"
    reasons = {k["name"]: k["reasons"] for k in planned["kept"]}  # type: ignore[union-attr]
    assert reasons == {sets[3].name: ["last 1"], sets[0].name: ["newest verified set"]}
    assert sets[1].name not in planned["diff"]["after"]  # type: ignore[index]

    done = run_module("backup_prune", {"path": str(dest), "keep_last": 1})
    assert done["changed"] is True and done["freed_bytes"] > 0
    assert sorted(n for n in os.listdir(dest) if n.endswith(".zst")) == [sets[0].name, sets[3].name]
    assert not [n for n in os.listdir(dest) if sets[1].name in n or sets[2].name in n], "sidecars left behind"
    again = run_module("backup_prune", {"path": str(dest), "keep_last": 1})
    assert again["changed"] is False and again["deleted"] == []
    assert json.loads(Path(sets[0].manifest_path).read_text())["app"] == "demo"
