"""repo_backup and repo_snapshots as ansible runs them, with real restic, against a local repository and the session's
SeaweedFS S3 store, the repositories written by host_command from dr_repositories-style entries. The application is
the stand-in Tomo database (hot: nothing stops), which is enough to drive the modules; the procedure itself is tested
on real tenement in test_repo_backup.py and by the role test."""

from __future__ import annotations

import json
import shutil
import sqlite3
import sys
from pathlib import Path

import pytest

from . import s3_store
from .ansible_run import run_module

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "fixtures" / "tomo"))
import tomo_fixture

pytestmark = pytest.mark.skipif(shutil.which("restic") is None, reason="restic is not installed (scripts/bootstrap)")

PASSWORD = "the-repository-password-4f9c"


def _bucket(tmp_path: Path) -> str:
    return "dr-mod-" + tmp_path.name[-16:].lower().replace("_", "-")


def _install(tmp_path: Path, store: s3_store.Store, **s3: object) -> dict[str, object]:
    entries = [
        {"name": "local", "location": str(tmp_path / "restic"), "password": PASSWORD, "init": True},
        {
            "name": "s3",
            "location": store.location(_bucket(tmp_path)),
            "password": PASSWORD,
            "credentials": store.env,
            "init": True,
            "required": False,
            **s3,
        },
    ]
    args = {
        "path": str(tmp_path / "bin" / "selfhost-dr"),
        "config_path": str(tmp_path / "etc" / "config.toml"),
        "config": {"app": "tomo", "backup_dir": str(tmp_path / "backups")},
        "repositories": entries,
    }
    result = run_module("host_command", args)
    assert not result.get("failed"), result
    return result


def _backup_args(tmp_path: Path, **over: object) -> dict[str, object]:
    return {
        "app": "tomo",
        "config_path": str(tmp_path / "etc" / "config.toml"),
        "dest": str(tmp_path / "backups"),
        "tomo_database": str(tmp_path / "tomo.db"),
        "tomo_environment": str(tmp_path / "environment"),
        "tomo_known_hosts": str(tmp_path / "known_hosts"),
        "tomo_version": "1.0.0",
        **over,
    }


def test_check_mode_then_a_snapshot_per_repository_then_the_catalog(
    tmp_path: Path, store: s3_store.Store, state_dir: Path
) -> None:
    tomo_fixture.create(str(tmp_path / "tomo.db"), "source")
    _install(tmp_path, store)
    args = _backup_args(tmp_path)

    checked = run_module("repo_backup", args, check=True)
    assert checked["changed"] is True and not checked.get("failed"), checked
    assert [(o["repository"], o["ok"], o["created"]) for o in checked["repositories"]] == [
        ("local", True, True),
        ("s3", True, True),
    ]
    assert not (tmp_path / "restic").exists() and not (tmp_path / "backups").exists(), "check mode wrote something"

    first = run_module("repo_backup", args)
    assert first["changed"] is True and not first.get("failed"), first
    outcomes = first["repositories"]
    assert all(o["ok"] and o["created"] and len(o["snapshot_id"]) >= 8 for o in outcomes), outcomes
    assert first["files"] >= 2  # the database and Tomo's document

    again = run_module("repo_backup", args, check=True)
    assert [o["created"] for o in again["repositories"]] == [False, False], "an existing repository is not created"
    with sqlite3.connect(tmp_path / "tomo.db") as db:
        db.execute('UPDATE users SET preferences_json = \'{"theme": "dark"}\'')
    second = run_module("repo_backup", {**args, "schedule": "nightly"})
    assert [o["created"] for o in second["repositories"]] == [False, False]
    assert all(o["ok"] for o in second["repositories"]), second["repositories"]

    recorded = json.loads((state_dir / "state.json").read_text())["repositories"]
    assert [recorded[n]["backup"]["last_success"]["snapshot_id"] for n in ("local", "s3")] == [
        o["snapshot_id"] for o in second["repositories"]
    ]
    listed = run_module("repo_snapshots", {"config_path": args["config_path"], "app": "tomo"}, check=True)
    assert listed["changed"] is False and listed["count"] == 4, listed
    for name, outcome in zip(("local", "s3"), second["repositories"], strict=True):
        about = listed["repositories"][name]
        assert about["count"] == 2 and about["error"] == ""
        assert about["latest"]["id"].startswith(outcome["snapshot_id"]) and about["latest"]["schedule"] == "nightly"
        assert about["latest"]["app"] == "tomo" and about["latest"]["kind"] == "hot"
    assert run_module("repo_snapshots", {"config_path": args["config_path"], "app": "tenement"})["count"] == 0
    assert PASSWORD not in json.dumps([checked, first, second, listed])
    assert s3_store.SECRET_KEY not in json.dumps([checked, first, second, listed])


def test_a_failing_optional_repository_warns_and_a_failing_required_one_fails_also_in_check_mode(
    tmp_path: Path, store: s3_store.Store, state_dir: Path
) -> None:
    tomo_fixture.create(str(tmp_path / "tomo.db"), "source")
    wrong = {**store.env, "AWS_SECRET_ACCESS_KEY": "not-the-key-at-all"}
    _install(tmp_path, store, credentials=wrong)
    args = _backup_args(tmp_path)
    for check in (True, False):
        done = run_module("repo_backup", args, check=check)
        assert not done.get("failed") and done["changed"] is True, done
        assert [o["ok"] for o in done["repositories"]] == [True, False]
        assert "refuses the store's credentials" in done["repositories"][1]["error"]
        assert any("s3 (optional): repository s3" in w for w in done.get("warnings", [])), done
        assert "not-the-key-at-all" not in json.dumps(done)

    _install(tmp_path, store, credentials=wrong, required=True)
    for check in (True, False):
        failed = run_module("repo_backup", args, check=check)
        assert failed.get("failed") and "refuses the store's credentials" in failed["msg"], failed
        suffix = "local would get the snapshot" if check else "local got the snapshot"
        assert failed["msg"].endswith(suffix), failed["msg"]
        assert [o["ok"] for o in failed["repositories"]] == [True, False]
    recorded = json.loads((state_dir / "state.json").read_text())["repositories"]
    assert recorded["s3"]["backup"]["last_attempt"]["ok"] is False
    assert recorded["local"]["backup"]["last_attempt"]["ok"] is True
    assert "refuses the store's credentials" in recorded["s3"]["backup"]["last_failure"]["reason"]
    listed = run_module("repo_snapshots", {"config_path": args["config_path"], "repositories": ["s3"]})
    assert listed.get("failed") and "refuses the store's credentials" in listed["msg"], listed

    unknown = run_module("repo_snapshots", {"config_path": args["config_path"], "repositories": ["nas"]})
    assert unknown["msg"] == f"there is no repository 'nas' in {args['config_path']} (local, s3)"


def test_repo_restore_in_check_mode_chooses_the_snapshot_and_plans_without_touching_anything(
    tmp_path: Path, store: s3_store.Store, state_dir: Path
) -> None:
    tomo_fixture.create(str(tmp_path / "tomo.db"), "source")
    _install(tmp_path, store)
    pushed = run_module("repo_backup", _backup_args(tmp_path, repositories=["s3"], host="old-tomo"))
    assert not pushed.get("failed"), pushed
    before = (tmp_path / "tomo.db").read_bytes()
    args = {k: v for k, v in _backup_args(tmp_path).items() if k not in ("dest", "tomo_categories")}
    planned = run_module("repo_restore", {**args, "repository": "s3", "from_host": "old-tomo"}, check=True)
    assert not planned.get("failed"), planned
    assert planned["snapshot"]["id"].startswith(pushed["repositories"][0]["snapshot_id"])
    assert planned["snapshot"]["host"] == "old-tomo" and str(tmp_path / "tomo.db") in planned["targets"]
    assert (tmp_path / "tomo.db").read_bytes() == before
    refused = run_module("repo_restore", {**args, "repository": "s3"}, check=True)
    assert (
        refused.get("failed")
        and "only of other hosts; restore one of them with --from-host (old-tomo)" in refused["msg"]
    )
    unknown = run_module("repo_restore", {**args, "repository": "offsite"}, check=True)
    assert unknown.get("failed") and "there is no repository 'offsite'" in unknown["msg"]
    assert PASSWORD not in json.dumps([planned, refused, unknown])
