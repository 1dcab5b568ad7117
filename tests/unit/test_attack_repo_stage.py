"""Adversarial review of repository backups, what needs no restic: the stage never written through a link or inside
the paths it backs up, the exclude file never leaving out more than it names, the tries of a file that keeps
changing, and locations shown without their credentials."""

from __future__ import annotations

import contextlib
import os
import socket
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from ansible_collections.selfhost.dr.plugins.module_utils._common import BackupError
from ansible_collections.selfhost.dr.plugins.module_utils.engine import repo_backup
from ansible_collections.selfhost.dr.plugins.module_utils.repos import stage as stage_module
from ansible_collections.selfhost.dr.plugins.module_utils.repos.restic import Repository, Restic, Result, public


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    top = tmp_path / "srv" / "app"
    top.mkdir(parents=True)
    (top / "a.log").write_text("one\n")
    with contextlib.closing(sqlite3.connect(top / "app.db")) as db:
        db.execute("CREATE TABLE t (x)")
        db.execute("INSERT INTO t VALUES (1)")
        db.commit()
    return top


def _stage(tree: Path, backups: Path) -> stage_module.Staged:
    return stage_module.stage([str(tree)], str(backups), app="tenement", host="web1")


class Changing:
    """A stand-in for Restic whose every backup sees the log file written again (a busy log)."""

    def __init__(self, log: Path) -> None:
        self.repo = Repository("local", "/srv/restic", password="a long password")
        self.log = log
        self.made: list[str] = []
        self.forgotten: list[str] = []

    def backup(self, paths: Sequence[str], host: str, tags: Sequence[str], exclude_file: str = "") -> dict[str, Any]:
        self.made.append(f"{len(self.made) + 1:08x}")
        self.log.write_text("line\n" * (len(self.made) + 1))
        return {"snapshot_id": self.made[-1], "data_added": 10}

    def forget(self, snapshot_ids: Sequence[str], prune: bool = False) -> None:
        self.forgotten += snapshot_ids

    def snapshots(self, tags: Sequence[str] = (), host: str = "") -> list[dict[str, Any]]:
        return [{"id": s} for s in self.made if s not in self.forgotten]


def test_a_file_that_keeps_changing_leaves_the_last_snapshot_in_the_repository(tree: Path, tmp_path: Path) -> None:
    staged = _stage(tree, tmp_path / "backups")
    restic = Changing(tree / "a.log")
    outcome = repo_backup._into(restic, staged, "web1", ["selfhost-dr"], lambda _: None)  # type: ignore[arg-type]
    assert outcome.ok and outcome.tries == repo_backup.TRIES
    assert outcome.snapshot_id == restic.made[-1]
    assert restic.forgotten == restic.made[:-1], "the snapshot reported as made was forgotten"
    assert outcome.snapshots_added == 1  # net: the superseded ones were forgotten (state.json counts on by it)
    assert staged.manifest["changed_during_backup"] == [str(tree / "a.log").lstrip("/")]


def test_a_link_at_the_stage_is_never_written_through(tree: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    backups = tmp_path / "backups"
    backups.mkdir()
    (backups / stage_module.STAGE_DIR).symlink_to(elsewhere)
    with pytest.raises(BackupError, match="not a directory"):
        _stage(tree, backups)
    assert list(elsewhere.iterdir()) == []


def test_a_link_in_the_stage_s_database_copies_is_never_written_through(tree: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    backups = tmp_path / "backups"
    db_dir = Path(stage_module.stage_dir(str(backups), "tenement")) / "db"
    db_dir.mkdir(parents=True)
    (db_dir / str(tree).lstrip("/").split("/")[0]).symlink_to(elsewhere)
    with pytest.raises(BackupError, match="not a directory"):
        _stage(tree, backups)
    assert list(elsewhere.iterdir()) == []


def test_a_stage_inside_the_paths_backed_up_is_refused(tree: Path) -> None:
    # Else its database copies are copied again below it every run, and its manifest changes while restic reads.
    with pytest.raises(BackupError, match="inside"):
        _stage(tree, tree / "backups")
    with pytest.raises(BackupError, match="inside"):
        stage_module.stage([str(tree)], str(tree / "backups"), app="tenement", host="web1", excludes=["*/backups"])


def test_a_line_break_in_a_name_never_excludes_a_file_of_the_snapshot(tree: Path, tmp_path: Path) -> None:
    (tree / "xAkeep").write_text("a tenant's file\n")
    with contextlib.closing(socket.socket(socket.AF_UNIX)) as sock:
        sock.bind(str(tree / "x\nkeep"))
        with pytest.raises(BackupError, match="line break"):
            _stage(tree, tmp_path / "backups")


@pytest.mark.parametrize(
    "location",
    [
        "rclone::s3,provider=AWS,access_key_id=AKIAEXAMPLEKEY,secret_access_key=VerySecretValue:bucket/web1",
        "rclone:offsite,secret_access_key=VerySecretValue,access_key_id=AKIAEXAMPLEKEY:web1",
    ],
)
def test_an_rclone_connection_string_is_never_shown(location: str) -> None:
    shown = public(location)
    assert "VerySecretValue" not in shown and "AKIAEXAMPLEKEY" not in shown, shown
    restic = Restic(Repository("offsite", location, password="a long password"))
    for said in (f"Fatal: unable to open repository at {location}: boom", f"rclone: cannot open {location[7:]}"):
        failure = restic.failure("backup", Result(1, "", said + "\n"))
        assert "VerySecretValue" not in str(failure) and "AKIAEXAMPLEKEY" not in str(failure), failure


def test_a_plain_rclone_location_is_shown_as_it_is() -> None:
    assert public("rclone:offsite:backups/web1,old") == "rclone:offsite:backups/web1,old"


def test_a_path_through_a_linked_directory_is_refused_as_a_linked_path_is(tree: Path, tmp_path: Path) -> None:
    # restic is given the real path: the exclude file and the manifest would name paths the snapshot does not hold
    # (the live database in the snapshot, the manifest's paths not in it).
    (tmp_path / "via").symlink_to(tree.parent)
    with pytest.raises(BackupError, match="name the real path"):
        _stage(tmp_path / "via" / tree.name, tmp_path / "backups")


def test_a_password_in_a_configuration_others_can_read_is_refused(tmp_path: Path) -> None:
    import argparse

    from ansible_collections.selfhost.dr.plugins.module_utils import cli

    config = tmp_path / "config.toml"
    config.write_text('[repositories.local]\nlocation = "/srv/restic"\npassword = "a long repository password"\n')
    config.chmod(0o644)
    args = argparse.Namespace(config=str(config), repo=["local"], all_repos=False)
    with pytest.raises(cli.UsageError, match="chmod 600") as raised:
        cli._chosen_repos(args, cli.load_config(str(config)))
    assert "a long repository password" not in str(raised.value)
    config.chmod(0o600)
    assert [r.repo.name for r in cli._chosen_repos(args, cli.load_config(str(config)))] == ["local"]
    password = tmp_path / "password"
    password.write_text("a long repository password\n")
    password.chmod(0o600)
    config.write_text(
        f'[repositories.local]\nlocation = "rest:https://web1:VerySecretValue@backup.example.com/web1"\n'
        f'password_file = "{password}"\n'
    )
    config.chmod(0o644)
    with pytest.raises(cli.UsageError, match="chmod 600") as raised:
        cli._chosen_repos(args, cli.load_config(str(config)))
    assert "VerySecretValue" not in str(raised.value)


def test_a_directory_replaced_by_a_link_is_never_hashed_through(tree: Path, tmp_path: Path) -> None:
    (tree / "web").mkdir()
    (tree / "web" / "notes.txt").write_text("the tenant's notes\n")
    staged = _stage(tree, tmp_path / "backups")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "notes.txt").write_text("root's secret, not the application's\n")
    (tree / "web").rename(tmp_path / "old-web")
    (tree / "web").symlink_to(elsewhere)  # restic stores a link here: the manifest must not claim a file through it
    moved = stage_module.unstable(staged)
    assert str(tree / "web" / "notes.txt") in moved
    stage_module.rehash(staged, moved)
    paths = {str(r["path"]) for r in staged.manifest["files"]}  # type: ignore[attr-defined]
    assert str(tree / "web" / "notes.txt").lstrip("/") not in paths


def test_a_file_written_while_it_is_hashed_is_backed_up_not_left_out(
    tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A log appended to all day: left out, it would be in no snapshot at all (a set archives it and notes it).
    log = tree / "a.log"
    real = stage_module.hashlib.sha256

    class Appending:
        def __init__(self) -> None:
            self.digest = real()

        def update(self, chunk: bytes) -> None:
            if chunk == b"one\n":
                with log.open("a") as handle:
                    handle.write("two\n")
            self.digest.update(chunk)

        def hexdigest(self) -> str:
            return self.digest.hexdigest()

    monkeypatch.setattr(stage_module.hashlib, "sha256", Appending)
    staged = _stage(tree, tmp_path / "backups")
    monkeypatch.setattr(stage_module.hashlib, "sha256", real)
    member = str(log).lstrip("/")
    assert member in {str(r["path"]) for r in staged.manifest["files"]}  # type: ignore[attr-defined]
    assert str(log) not in Path(staged.exclude_file).read_text()
    assert str(log) in stage_module.unstable(staged)  # so it is hashed again after restic's read, and listed
    stage_module.rehash(staged, [str(log)])
    assert staged.manifest["changed_during_backup"] == [member]


def test_a_stage_inside_the_paths_is_refused_before_the_application_is_stopped(tree: Path) -> None:
    from ansible_collections.selfhost.dr.plugins.module_utils.apps.base import Application, Facts
    from ansible_collections.selfhost.dr.plugins.module_utils.engine import backup

    class Tree(Application):
        name = "tenement"

        def inspect(self) -> Facts:
            return Facts(self.name, "0.2.2", [str(tree)], [], {}, [], "")

    options = backup.Options(dest=str(tree / "backups"))
    with pytest.raises(BackupError, match="inside"):
        repo_backup.plan(Tree(), "cold", options)


def _database(path: Path) -> None:
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute("CREATE TABLE t (x)")
        db.execute("INSERT INTO t VALUES (1)")
        db.commit()


def test_a_database_that_became_a_directory_of_databases_is_staged(tree: Path, tmp_path: Path) -> None:
    _stage(tree, tmp_path / "backups")
    (tree / "app.db").unlink()
    (tree / "app.db").mkdir()
    _database(tree / "app.db" / "inner.db")
    staged = _stage(tree, tmp_path / "backups")  # the copy of the old database is in the way of the new directory
    assert (Path(staged.stage) / "db" / str(tree / "app.db" / "inner.db").lstrip("/")).is_file()


def test_a_directory_of_databases_that_became_a_database_is_staged(tree: Path, tmp_path: Path) -> None:
    (tree / "data").mkdir()
    _database(tree / "data" / "inner.db")
    _stage(tree, tmp_path / "backups")
    (tree / "data" / "inner.db").unlink()
    (tree / "data").rmdir()
    _database(tree / "data")
    staged = _stage(tree, tmp_path / "backups")  # the directory of the old copies is in the way of the new copy
    assert (Path(staged.stage) / "db" / str(tree / "data").lstrip("/")).is_file()


def test_a_name_that_is_not_utf_8_is_written_to_the_exclude_file_as_its_bytes(tree: Path, tmp_path: Path) -> None:
    name = os.fsdecode(b"tenant-\xff.sock")
    with contextlib.closing(socket.socket(socket.AF_UNIX)) as sock:
        sock.bind(os.fsencode(str(tree / name)))
        staged = _stage(tree, tmp_path / "backups")
    assert os.fsencode(str(tree)) + b"/tenant-\xff.sock\n" in Path(staged.exclude_file).read_bytes()


def test_the_totals_follow_the_files_hashed_again(tree: Path, tmp_path: Path) -> None:
    staged = _stage(tree, tmp_path / "backups")
    before = dict(staged.manifest["totals"])  # type: ignore[call-overload]
    (tree / "a.log").unlink()
    stage_module.rehash(staged, stage_module.unstable(staged))
    assert staged.manifest["totals"] == {**before, "files": before["files"] - 1, "bytes": before["bytes"] - 4}
