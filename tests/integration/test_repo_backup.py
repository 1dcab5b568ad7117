"""Backing an application up into restic repositories (engine/repo_backup.py) with real restic: a local repository
and a SeaweedFS S3 one; what a second day costs; a required and an optional repository that fail; a restore of the
snapshot that matches its manifest file by file. The application is a directory tree with a live SQLite database
(the procedure is the application's: tests/integration/test_tenement_hazards.py and Molecule run tenement)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from ansible_collections.selfhost.dr.plugins.module_utils import cli
from ansible_collections.selfhost.dr.plugins.module_utils._common import BackupError, Log, no_log
from ansible_collections.selfhost.dr.plugins.module_utils.apps.base import Application, Facts
from ansible_collections.selfhost.dr.plugins.module_utils.engine import backup, repo_backup
from ansible_collections.selfhost.dr.plugins.module_utils.repos.restic import RepoError, Repository, Restic, Started
from ansible_collections.selfhost.dr.plugins.module_utils.sets.manifest import MANIFEST_MEMBER, parse_manifest

from . import s3_store

pytestmark = pytest.mark.skipif(shutil.which("restic") is None, reason="restic is not installed (scripts/bootstrap)")


class Tree(Application):
    """An application whose data is one directory; it records stops and starts."""

    modes = ("hot", "cold")

    def __init__(self, top: Path) -> None:
        self.name = "tenement"
        self.top = top
        self.calls: list[str] = []

    def inspect(self) -> Facts:
        return Facts(self.name, "0.2.2", [str(self.top)], ["*.sock"], {"running": ["web:1"]}, ["web:1"], "")

    def stop(self, log: Log = no_log) -> bool:
        self.calls.append("stop")
        return True

    def start(self, units: list[str], timeout: float, log: Log = no_log) -> None:
        self.calls.append("start " + ",".join(units))


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    top = tmp_path / "var" / "lib" / "tenement"
    (top / "web" / "1").mkdir(parents=True)
    for n in range(20):
        (top / "web" / "1" / f"upload-{n}.bin").write_bytes(os.urandom(100_000))
    with contextlib.closing(sqlite3.connect(top / "tenement.db")) as db:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("CREATE TABLE rows (id INTEGER PRIMARY KEY, body TEXT)")
        db.executemany("INSERT INTO rows (body) VALUES (?)", [(os.urandom(200).hex(),) for _ in range(3000)])
        db.commit()
    return top


def _repos(tmp_path: Path, store: s3_store.Store, **over: object) -> list[Restic]:
    password = tmp_path / "password"
    password.write_text("a long repository password\n")
    local = Repository("local", str(tmp_path / "restic"), password_file=str(password), init=True)
    s3 = Repository(
        "s3",
        store.location(f"dr-{tmp_path.name[-20:].lower().replace('_', '-')}"),
        password_file=str(password),
        env=store.env,
        init=True,
        required=False,
    )
    return [Restic(Repository(**{**r.__dict__, **over.get(r.name, {})})) for r in (local, s3)]  # type: ignore[arg-type]


def _run(app: Tree, repos: list[Restic], dest: Path, mode: str = "hot") -> repo_backup.Result:
    options = backup.Options(dest=str(dest))
    return repo_backup.run(app, repo_backup.plan(app, mode, options), repos, options)


def test_two_days_into_two_repositories_the_second_costs_only_what_changed(
    tmp_path: Path, tree: Path, store: s3_store.Store
) -> None:
    app = Tree(tree)
    repos = _repos(tmp_path, store)
    first = _run(app, repos, tmp_path / "backups")
    assert [(o.repository, o.ok, o.created) for o in first.outcomes] == [("local", True, True), ("s3", True, True)]
    assert all(o.files_new >= 21 and o.data_added > 2_000_000 for o in first.outcomes)
    # A day: one upload rewritten, a few rows updated.
    (tree / "web" / "1" / "upload-3.bin").write_bytes(os.urandom(100_000))
    with contextlib.closing(sqlite3.connect(tree / "tenement.db")) as db:
        db.execute("UPDATE rows SET body = 'changed' WHERE id % 300 = 0")
        db.commit()
    second = _run(app, repos, tmp_path / "backups")
    database = (tree / "tenement.db").stat().st_size
    for outcome in second.outcomes:
        assert outcome.ok and outcome.files_changed <= 3, outcome  # the upload, the database copy, the manifest
        # At most the changed upload and the database (restic's chunks are about a MiB: a small database is one),
        # never the 2 MB of unchanged uploads again.
        assert outcome.data_added < database + 100_000 + 100_000, (outcome, database)
    assert second.hashed_bytes == 100_000  # only the rewritten upload was read to be hashed
    snapshots = repos[0].snapshots(repo_backup.tags("tenement", "hot"))
    assert len(snapshots) == 2 and set(snapshots[-1]["tags"]) == {"selfhost-dr", "app=tenement", "kind=hot"}
    # Nothing recorded in state.json (only the host command records): the first run made the repositories, so
    # each holds its one snapshot; the second counts those there before it, and adds its own.
    assert [o.snapshots for o in first.outcomes] == [1, 1] and [o.snapshots for o in second.outcomes] == [2, 2]


def test_a_snapshot_restores_every_file_its_manifest_lists(tmp_path: Path, tree: Path, store: s3_store.Store) -> None:
    app = Tree(tree)
    repos = _repos(tmp_path, store)
    done = _run(app, repos, tmp_path / "backups", mode="cold")
    assert app.calls == ["stop", "start web:1"]
    target = tmp_path / "restored"
    repos[1].restore(done.outcomes[1].snapshot_id, str(target))
    stage = Path(str(done.manifest["metadata"]["stage"]))  # type: ignore[index]
    manifest = parse_manifest((target / stage.relative_to("/") / MANIFEST_MEMBER).read_bytes(), "the manifest")
    assert manifest["changed_during_backup"] == []
    for record in manifest["files"]:  # type: ignore[union-attr]
        if record["type"] != "file":
            continue
        copied = record.get("sqlite") and not record.get("in_place")
        where = target / (stage.relative_to("/") / "db" if copied else Path()) / record["path"]
        assert hashlib.sha256(where.read_bytes()).hexdigest() == record["sha256"], record["path"]
    # tenement.db (WAL, 1 MiB and more) was read where it is by the first repository's restic, then copied into the
    # stage for this, the second repository.
    assert [r for r in manifest["files"] if r.get("in_place")] == []  # type: ignore[union-attr]
    assert not (target / tree.relative_to("/") / "tenement.db").exists()  # the live file is not in this snapshot
    copy = target / stage.relative_to("/") / "db" / tree.relative_to("/") / "tenement.db"
    with contextlib.closing(sqlite3.connect(copy)) as db:
        assert db.execute("SELECT count(*) FROM rows").fetchone() == (3000,)


def test_a_failed_optional_repository_is_a_warning_and_a_failed_required_one_fails_the_run(
    tmp_path: Path, tree: Path, store: s3_store.Store
) -> None:
    app = Tree(tree)
    wrong = {"s3": {"env": {**store.env, "AWS_SECRET_ACCESS_KEY": "not-the-key"}}}
    done = _run(app, _repos(tmp_path, store, **wrong), tmp_path / "backups")
    assert [o.ok for o in done.outcomes] == [True, False]
    assert done.warnings and done.warnings[0].startswith("s3 (optional): repository s3 (s3:http://127.0.0.1:")
    assert "refuses the store's credentials" in done.warnings[0] and "not-the-key" not in json.dumps(
        [o.as_dict() for o in done.outcomes]
    )
    required = {"s3": {"env": {**store.env, "AWS_SECRET_ACCESS_KEY": "not-the-key"}, "required": True}}
    with pytest.raises(BackupError) as failed:
        _run(app, _repos(tmp_path, store, **required), tmp_path / "backups")
    assert "refuses the store's credentials" in str(failed.value) and str(failed.value).endswith(
        "; local got the snapshot"
    )


# -- selfhost-dr backup --repo ------------------------------------------------------------------------------------


def _config(tmp_path: Path, store: s3_store.Store, extra: str = "") -> Path:
    secrets = tmp_path / "secrets"
    secrets.mkdir(exist_ok=True)
    (secrets / "password").write_text("a long repository password\n")
    (secrets / "s3.env").write_text("".join(f"export {k}='{v}'\n" for k, v in store.env.items()))
    for path in secrets.iterdir():
        path.chmod(0o600)
    bucket = f"cli-{tmp_path.name[-20:].lower().replace('_', '-')}"
    config = tmp_path / "config.toml"
    config.write_text(
        f'backup_dir = "{tmp_path}/backups"\n[metrics]\ntextfile_dir = ""\n'
        f'[repositories.local]\nlocation = "{tmp_path}/restic"\npassword_file = "{secrets}/password"\ninit = true\n'
        f'[repositories.s3]\nlocation = "{store.location(bucket)}"\npassword_file = "{secrets}/password"\n'
        f'env_file = "{secrets}/s3.env"\ninit = true\nrequired = false\n{extra}'
    )
    return config


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict[str, object]]:
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGHUP)}  # main() sets its own
    try:
        code = cli.main([*argv, "--json"])
    finally:
        for signum, handler in saved.items():
            signal.signal(signum, handler)
    return code, json.loads(capsys.readouterr().out)


def test_the_host_command_backs_up_into_every_repository_and_says_what_each_got(
    tmp_path: Path,
    tree: Path,
    store: s3_store.Store,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(cli, "application", lambda _name, _options: Tree(tree))
    config = _config(tmp_path, store)
    code, result = _cli(capsys, "backup", "--all-repos", "--config", str(config))
    assert code == 0, result
    assert [(r["repository"], r["ok"]) for r in result["repositories"]] == [("local", True), ("s3", True)]  # type: ignore[union-attr]
    code, result = _cli(capsys, "list", "--repo", "local", "--config", str(config))
    assert code == 0 and result["repository"] == "local", result
    (snapshot,) = result["snapshots"]  # type: ignore[misc]
    assert set(snapshot["tags"]) == {"selfhost-dr", "app=tenement", "kind=hot"} and len(snapshot["id"]) == 64
    code, result = _cli(capsys, "backup", "--repo", "s3", "--check", "--config", str(config))
    assert code == 0 and result["repositories"] == ["s3"]
    code, result = _cli(capsys, "backup", "--repo", "offsite", "--config", str(config))
    assert (code, result["error"]) == (2, "there is no repository 'offsite' in the configuration (local, s3)")
    (tmp_path / "secrets" / "password").chmod(0o644)
    code, result = _cli(capsys, "backup", "--repo", "local", "--config", str(config))
    assert code == 2 and str(result["error"]).endswith("can be read by other users (mode 0644): chmod 600 it")
    assert "a long repository password" not in json.dumps(result)


def test_status_and_the_metrics_say_per_repository_when_it_last_got_a_snapshot_and_what_it_cost(
    tmp_path: Path,
    tree: Path,
    store: s3_store.Store,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(cli, "application", lambda _name, _options: Tree(tree))
    listed: list[str] = []
    real_snapshots = Restic.snapshots

    def snapshots(self: Restic, *args: object, **kwargs: object) -> list[dict[str, object]]:
        listed.append(self.repo.name)
        return real_snapshots(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Restic, "snapshots", snapshots)
    textfiles = tmp_path / "textfiles"
    textfiles.mkdir()
    config = _config(tmp_path, store)
    text = config.read_text().replace('textfile_dir = ""', f'textfile_dir = "{textfiles}"')
    config.write_text(f'state_dir = "{tmp_path}/state"\n' + text)
    assert _cli(capsys, "backup", "--all-repos", "--config", str(config))[0] == 0
    assert sorted(listed) == ["local", "s3"]  # counted once (a restic command each), beside the staging
    listed.clear()
    # The next day the S3 store refuses the credentials: the optional repository fails, the local one goes on.
    (tmp_path / "secrets" / "s3.env").write_text("AWS_ACCESS_KEY_ID=nobody\nAWS_SECRET_ACCESS_KEY=wrong-key\n")
    code, result = _cli(capsys, "backup", "--all-repos", "--config", str(config))
    assert code == 0, result
    code, status = _cli(capsys, "status", "--config", str(config))
    assert code == 0, status
    local, s3 = status["repositories"]["local"], status["repositories"]["s3"]  # type: ignore[index]
    assert local["snapshots"] == 2 and local["backup"]["last_attempt"]["ok"] is True
    assert listed == [], listed  # the second day goes on from state.json's count
    assert 0 < local["backup"]["last_success"]["data_added"] < 1_000_000  # the second day: only what changed
    assert s3["snapshots"] == 1 and s3["backup"]["last_attempt"]["ok"] is False
    assert "refuses the store's credentials" in s3["backup"]["last_failure"]["reason"]
    assert s3["location"].startswith("s3:http://127.0.0.1:") and s3["required"] is False
    metrics = (textfiles / "selfhost_dr.prom").read_text()
    assert 'selfhost_dr_repository_snapshots{repository="local"} 2' in metrics
    assert 'selfhost_dr_repository_last_attempt_success{repository="s3",operation="backup"} 0' in metrics
    assert 'selfhost_dr_repository_last_attempt_success{repository="local",operation="backup"} 1' in metrics
    added = local["backup"]["last_success"]["data_added"]
    assert f'selfhost_dr_repository_last_bytes_added{{repository="local"}} {added}' in metrics
    code = cli.main(["status", "--config", str(config)])
    lines = capsys.readouterr().out
    assert code == 0 and "repository local: last backup 0.0 h ago" in lines and "2 snapshot(s)" in lines
    assert "repository s3: last backup" in lines and "last attempt failed 0.0 h ago: repository s3" in lines


def test_the_first_repositorys_restic_opens_it_while_the_snapshot_is_staged(
    tmp_path: Path, tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """restic derives its key and loads the index beside the staging, then reads the stage once it is complete; where
    it cannot (no repository yet), the plain backup makes the repository and the snapshot."""
    password = tmp_path / "password"
    password.write_text("a long repository password\n")
    restic = Restic(Repository("local", str(tmp_path / "restic"), password_file=str(password), init=True))
    seen: list[str] = []
    real_start, real_finish, real_stage = Restic.start_backup, Started.finish, repo_backup.stage
    running: list[Started] = []

    def start(self: Restic, *args: Any) -> Started | None:
        started = real_start(self, *args)
        running.extend([started] if started else [])
        return started

    def staging(*args: Any, **kw: Any) -> Any:
        before = len(running)
        staged = real_stage(*args, **kw)
        assert len(running) == before + 1  # started during the staging, once the scan knew the paths
        seen.append("restic waiting" if running[-1].process.poll() is None else "restic ended")
        return staged

    def finish(self: Started, excludes: bytes) -> dict[str, Any]:
        try:
            summary = real_finish(self, excludes)
        except RepoError:
            seen.append("early failed")
            raise
        seen.append("early saved")
        return summary

    monkeypatch.setattr(Restic, "start_backup", start)
    monkeypatch.setattr(Started, "finish", finish)
    monkeypatch.setattr(repo_backup, "stage", staging)
    first = _run(Tree(tree), [restic], tmp_path / "backups")
    assert first.outcomes[0].ok and first.outcomes[0].created
    second = _run(Tree(tree), [restic], tmp_path / "backups")
    assert second.outcomes[0].ok and not second.outcomes[0].created
    # No repository at first: that restic fails (at once, or once the stage is done), and the plain backup makes it.
    assert seen[1:] == ["early failed", "restic waiting", "early saved"]
    assert len(restic.snapshots()) == 2
    paths = {str(n["path"]) for n in restic.ls(second.outcomes[0].snapshot_id, 10_000)}
    assert f"{tree}/tenement.db" in paths and f"{tree}/tenement.db-wal" not in paths  # the exclude file was read
    # Another backup directory (another application, or a new one): its stage is made before restic starts, which
    # would leave out a path that is not there yet.
    third = _run(Tree(tree), [restic], tmp_path / "elsewhere")
    assert third.outcomes[0].ok and seen[-1] == "early saved"
    paths = {str(n["path"]) for n in restic.ls(third.outcomes[0].snapshot_id, 10_000)}
    assert f"{tmp_path}/elsewhere/.selfhost-dr-repo/tenement/{MANIFEST_MEMBER}" in paths


def test_a_database_is_held_only_while_the_first_repository_reads_it_and_the_others_get_a_copy(
    tmp_path: Path, tree: Path, store: s3_store.Store
) -> None:
    repos = _repos(tmp_path, store)
    done = _run(Tree(tree), repos, tmp_path / "backups")
    assert [o.ok for o in done.outcomes] == [True, True]
    stage = tmp_path / "backups" / ".selfhost-dr-repo" / "tenement"
    copy = f"{stage}/db/{str(tree).lstrip('/')}/tenement.db"
    first = {str(n["path"]) for n in repos[0].ls(done.outcomes[0].snapshot_id, 10_000)}
    second = {str(n["path"]) for n in repos[1].ls(done.outcomes[1].snapshot_id, 10_000)}
    assert f"{tree}/tenement.db" in first and copy not in first  # read where it is, held
    assert copy in second and f"{tree}/tenement.db" not in second  # let go, then copied for the second
    with contextlib.closing(sqlite3.connect(tree / "tenement.db")) as db:  # and nothing holds it any more
        db.execute("INSERT INTO rows (body) VALUES ('after')")
        db.commit()
        assert db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone() == (0, 0, 0)
