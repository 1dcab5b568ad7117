"""Restoring an application from a restic repository (engine/repo_restore.py, repos/fetch.py) with real restic: the
data comes back as the snapshot holds it (files, modes, owners, links, databases with their rows), the previous data
kept as a safety copy, the application stopped only once everything was fetched and checked; a new server restores
another host's snapshot; a snapshot that is not what its manifest says, an unreachable store and a full disk change
nothing and leave the application running."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from ansible_collections.selfhost.dr.plugins.module_utils import cli
from ansible_collections.selfhost.dr.plugins.module_utils._common import RestoreError, VerificationError, no_log
from ansible_collections.selfhost.dr.plugins.module_utils.apps.base import Facts
from ansible_collections.selfhost.dr.plugins.module_utils.engine import (
    backup,
    repo_backup,
    repo_import,
    repo_restore,
    restore,
)
from ansible_collections.selfhost.dr.plugins.module_utils.repos.restic import Repository, Restic
from ansible_collections.selfhost.dr.plugins.module_utils.sets.manifest import MANIFEST_MEMBER

from . import s3_store
from .test_repo_backup import Tree, _cli

pytestmark = pytest.mark.skipif(shutil.which("restic") is None, reason="restic is not installed (scripts/bootstrap)")


def _rows(db: Path) -> list[tuple[int, str]]:
    with contextlib.closing(sqlite3.connect(db)) as conn:
        return list(conn.execute("SELECT id, body FROM rows ORDER BY id"))


def _state(top: Path) -> dict[str, tuple[object, ...]]:
    """What a user compares: every entry's type, mode, owner, content (a database by its rows) or link target."""
    seen: dict[str, tuple[object, ...]] = {}
    for path in sorted(top.rglob("*")):
        st = path.lstat()
        rel = str(path.relative_to(top))
        if path.is_symlink():
            seen[rel] = ("link", os.readlink(path), st.st_uid)
        elif path.is_dir():
            seen[rel] = ("dir", oct(st.st_mode & 0o7777), st.st_uid, st.st_gid)
        elif path.name.endswith(".db"):
            seen[rel] = ("db", oct(st.st_mode & 0o7777), st.st_uid, tuple(_rows(path)))
        else:
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            seen[rel] = ("file", oct(st.st_mode & 0o7777), st.st_uid, st.st_gid, digest)
    return seen


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    top = tmp_path / "var" / "lib" / "tenement"
    (top / "web" / "1").mkdir(parents=True)
    (top / "private").mkdir(mode=0o750)
    os.chmod(top / "private", 0o750)
    for n in range(5):
        (top / "web" / "1" / f"upload-{n}.bin").write_bytes(os.urandom(50_000))
    (top / "private" / "token").write_text("secret token\n")
    os.chmod(top / "private" / "token", 0o600)
    (top / "web" / "1" / "run.sh").write_text("#!/bin/sh\n")
    os.chmod(top / "web" / "1" / "run.sh", 0o4755)
    if os.geteuid() == 0:
        os.chown(top / "web" / "1" / "upload-0.bin", 1234, 5678)
    os.symlink("upload-1.bin", top / "web" / "1" / "current")
    with contextlib.closing(sqlite3.connect(top / "tenement.db")) as db:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("CREATE TABLE rows (id INTEGER PRIMARY KEY, body TEXT)")
        db.executemany("INSERT INTO rows (body) VALUES (?)", [(f"row {n}",) for n in range(2000)])
        db.commit()
    with contextlib.closing(sqlite3.connect(top / "web" / "1" / "app.db")) as db:
        db.execute("CREATE TABLE rows (id INTEGER PRIMARY KEY, body TEXT)")
        db.executemany("INSERT INTO rows (body) VALUES (?)", [(f"app {n}",) for n in range(100)])
        db.commit()
    return top


@pytest.fixture
def local(tmp_path: Path) -> Restic:
    password = tmp_path / "password"
    password.write_text("a long repository password\n")
    password.chmod(0o600)
    return Restic(Repository("local", str(tmp_path / "restic"), password_file=str(password), init=True))


def _backup(app: Tree, restic: Restic, dest: Path, host: str = "") -> str:
    options = backup.Options(dest=str(dest), host=host or None)
    done = repo_backup.run(app, repo_backup.plan(app, "hot", options), [restic], options)
    assert done.outcomes[0].ok, done.outcomes[0].error
    return done.outcomes[0].snapshot_id


def _options(tmp_path: Path) -> restore.Options:
    return restore.Options(state_dir=str(tmp_path / "state"))


def _restore(app: Tree, restic: Restic, tmp_path: Path, **kw: str) -> restore.Result:
    options = _options(tmp_path)
    planned = repo_restore.plan(app, restic, options, **kw)
    return restore.run(app, planned, options)


def _backup_by_hand(restic: Restic, stage: Path, tree: Path) -> None:
    """``restic backup`` of the stage as it is now (a manifest edited by hand: a crafted snapshot) and the tree."""
    subprocess.run(
        ["restic", "backup", "--host", os.uname().nodename, "--tag", "selfhost-dr", "--tag", "app=tenement",
         "--exclude-file", str(stage / "excludes.txt"), str(stage), str(tree)],
        env=restic.environment(), check=True, capture_output=True,
    )  # fmt: skip


@contextlib.contextmanager
def small_filesystem(tmp_path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` (``1m``) at ``tmp_path/small``, unmounted after (skips where it cannot be mounted)."""
    small = tmp_path / "small"
    small.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(small)], check=False).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        yield small
    finally:
        subprocess.run(["umount", str(small)], check=False)


def _journal_leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if "selfhost-dr" in p.name)


def test_restore_brings_back_what_the_snapshot_holds_and_keeps_the_previous_data(
    tmp_path: Path, tree: Path, local: Restic
) -> None:
    app = Tree(tree)
    _backup(app, local, tmp_path / "backups")
    expected = _state(tree)
    # The day goes on: rows change, a file is deleted, another appears, a mode changes.
    with contextlib.closing(sqlite3.connect(tree / "tenement.db")) as db:
        db.execute("DELETE FROM rows WHERE id > 1000")
        db.commit()
    (tree / "web" / "1" / "upload-2.bin").unlink()
    (tree / "web" / "1" / "new.bin").write_bytes(b"new")
    os.chmod(tree / "private" / "token", 0o644)
    app.calls.clear()
    options = _options(tmp_path)
    # (backup_dir: the manifest is read from where this host's backups put it while the listing is; the other
    # tests leave the default, a wrong guess here, and the manifest is read where the listing says)
    planned = repo_restore.plan(app, local, options, backup_dir=str(tmp_path / "backups"))
    assert planned.paths == [str(tree)] and planned.start == ["web:1"]
    lines: list[str] = []
    done = restore.run(app, planned, options, lines.append)
    assert done.committed and not done.warning
    assert app.calls == ["stop", "start web:1"]
    assert _state(tree) == expected
    assert len(_rows(tree / "tenement.db")) == 2000
    assert not (tree / "tenement.db-wal").exists() or (tree / "tenement.db-wal").stat().st_size == 0
    assert _journal_leftovers(tree.parent) == []  # staging, fetch directory and safety copy all gone
    assert done.files == sum(1 for v in expected.values() if v[0] in ("file", "db"))


def test_a_snapshot_saved_between_reading_the_manifest_and_the_listing_is_refused_before_anything_stops(
    tmp_path: Path, tree: Path, local: Restic
) -> None:
    """The newest snapshot's manifest is read (``restic dump latest``) while it is listed (``restic ls latest``): a
    snapshot saved between the two would give one snapshot's manifest and another's files. Here the two snapshots
    hold the same files and differ only in what the manifest alone says: the instances to start."""
    app = Tree(tree)
    older = _backup(app, local, tmp_path / "backups")
    later = Tree(tree)
    later.inspect = lambda: Facts(  # type: ignore[method-assign]
        "tenement", "0.2.2", [str(tree)], ["*.sock"], {"running": ["web:2"]}, ["web:2"], ""
    )
    _backup(later, local, tmp_path / "backups")

    class Raced(Restic):
        """restic ls found "latest" before the newer snapshot was saved; restic dump, after."""

        def ls(self, snapshot_id: str, limit: int, host: str = "", tags: Sequence[str] = (), header: Any = None) -> Any:
            return super().ls(older if snapshot_id == "latest" else snapshot_id, limit, host, tags, header)

    options = _options(tmp_path)
    # Check mode cannot compare the manifest with what restic restores: it reads it by the listed snapshot's id.
    checked = repo_restore.plan(app, Raced(local.repo), options, check=True, backup_dir=str(tmp_path / "backups"))
    assert checked.snapshot["id"].startswith(older) and checked.start == ["web:1"]
    planned = repo_restore.plan(app, Raced(local.repo), options, backup_dir=str(tmp_path / "backups"))
    assert planned.snapshot["id"].startswith(older) and planned.start == ["web:2"]  # the race: one's manifest
    before = _state(tree)
    app.calls.clear()
    with pytest.raises(VerificationError, match=r"its manifest is not the one this restore was planned from"):
        restore.run(app, planned, options)
    assert app.calls == [] and _state(tree) == before and _journal_leftovers(tree.parent) == []
    # Run again (no race): the newest snapshot, its own instances.
    done = _restore(app, local, tmp_path, backup_dir=str(tmp_path / "backups"))
    assert done.committed and app.calls == ["stop", "start web:2"]


def test_an_imported_set_is_restored_from_the_repository(tmp_path: Path, tree: Path, local: Restic) -> None:
    """``selfhost-dr backup --import``: a set put into a repository, its stage read from a directory of its own and
    held in the snapshot's tree where the backups put theirs. Restored as the newest snapshot (with this host's
    backup dir as the manifest's guess, and without) and by its id."""
    app = Tree(tree)
    options = backup.Options(dest=str(tmp_path / "sets"))
    made = backup.run(app, backup.plan(app, "hot", options), options)
    expected = _state(tree)
    imported = repo_import.run(str(made.sets[0]["path"]), [local], str(tmp_path / "backups"), str(tmp_path / "state"))
    assert imported.outcomes[0].ok, imported.outcomes[0].error
    snapshot = imported.outcomes[0].snapshot_id
    for how in ({"backup_dir": str(tmp_path / "backups")}, {}, {"snapshot": snapshot}):
        (tree / "web" / "1" / "upload-4.bin").unlink()
        with contextlib.closing(sqlite3.connect(tree / "tenement.db")) as db:
            db.execute("DELETE FROM rows WHERE id > 10")
            db.commit()
        assert repo_restore.plan(app, local, _options(tmp_path), check=True, **how).snapshot["id"].startswith(snapshot)
        done = _restore(app, local, tmp_path, **how)
        assert done.committed, how
        assert _state(tree) == expected, how


def test_restore_is_checked_before_the_application_stops_and_marks_the_snapshot(
    tmp_path: Path, tree: Path, local: Restic
) -> None:
    app = Tree(tree)
    snapshot = _backup(app, local, tmp_path / "backups")
    log: list[str] = []
    options = _options(tmp_path)
    planned = repo_restore.plan(app, local, options, log=log.append)
    app.calls.clear()
    order: list[str] = []
    app.stop = lambda log=no_log: order.append("stop") or True  # type: ignore[method-assign]
    restore.run(app, planned, options, lambda line: order.append(line))
    fetched = next(n for n, line in enumerate(order) if line.startswith("restore: checking every file"))
    assert order.index("stop") > fetched  # stopped only after everything was fetched and checked
    tagged = repo_restore.mark_verified(local, planned.snapshot["id"])
    assert tagged and not tagged.startswith(snapshot)
    marked = [s for s in local.snapshots([repo_restore.VERIFIED_TAG])]
    assert [s["id"] for s in marked] == [tagged]


def test_check_mode_plans_without_fetching_or_stopping(tmp_path: Path, tree: Path, local: Restic) -> None:
    app = Tree(tree)
    _backup(app, local, tmp_path / "backups")
    before = _state(tree)
    planned = repo_restore.plan(app, local, _options(tmp_path), check=True)
    assert planned.targets == [str(tree)] and app.calls == []
    assert _state(tree) == before and _journal_leftovers(tree.parent) == []


def test_a_new_server_restores_another_hosts_snapshot_with_from_host(tmp_path: Path, tree: Path, local: Restic) -> None:
    app = Tree(tree)
    _backup(app, local, tmp_path / "backups", host="old-server")
    expected = _state(tree)
    shutil.rmtree(tree)  # the new server has nothing
    with pytest.raises(RestoreError, match=r"only of other hosts; restore one of them with --from-host \(old-server\)"):
        repo_restore.plan(app, local, _options(tmp_path))
    _restore(app, local, tmp_path, host="old-server")
    assert _state(tree) == expected


def test_a_snapshot_whose_files_differ_from_its_manifest_is_refused_and_nothing_stops(
    tmp_path: Path, tree: Path, local: Restic
) -> None:
    """A crafted snapshot: the stage's manifest says one thing, the files another (same sizes, other bytes)."""
    app = Tree(tree)
    _backup(app, local, tmp_path / "backups")
    upload = tree / "web" / "1" / "upload-3.bin"
    upload.write_bytes(os.urandom(50_000))  # same size, other bytes: the listing agrees, the content does not
    stage = tmp_path / "backups" / ".selfhost-dr-repo" / "tenement"
    _backup_by_hand(local, stage, tree)
    upload.write_bytes(b"the live data")
    before = _state(tree)
    app.calls.clear()
    with pytest.raises(VerificationError, match=r"upload-3.bin in snapshot \w+ does not match its sha256"):
        _restore(app, local, tmp_path)
    assert app.calls == []  # never stopped
    assert _state(tree) == before and _journal_leftovers(tree.parent) == []


def test_a_snapshot_holding_a_fifo_or_an_unlisted_file_is_refused_before_restic_writes(
    tmp_path: Path, tree: Path, local: Restic
) -> None:
    app = Tree(tree)
    _backup(app, local, tmp_path / "backups")
    stage = tmp_path / "backups" / ".selfhost-dr-repo" / "tenement"
    os.mkfifo(tree / "web" / "1" / "pipe")
    _backup_by_hand(local, stage, tree)
    with pytest.raises(VerificationError, match=r"pipe is a fifo, which a backup never holds"):
        repo_restore.plan(app, local, _options(tmp_path), check=True)
    os.unlink(tree / "web" / "1" / "pipe")
    (tree / "web" / "1" / "planted").write_text("x")
    _backup_by_hand(local, stage, tree)
    with pytest.raises(VerificationError, match=r"planted, which its manifest does not list"):
        repo_restore.plan(app, local, _options(tmp_path), check=True)


def test_a_store_failing_during_the_fetch_changes_nothing_and_the_application_keeps_running(
    tmp_path: Path, tree: Path, local: Restic
) -> None:
    app = Tree(tree)
    _backup(app, local, tmp_path / "backups")
    options = _options(tmp_path)
    planned = repo_restore.plan(app, local, options)
    # Between the plan and the fetch the repository stops opening (its key changed, say).
    Path(local.repo.password_file).write_text("another password\n")
    before = _state(tree)
    app.calls.clear()
    with pytest.raises(RestoreError, match=r"password .* is wrong.*nothing was changed; tenement kept running"):
        restore.run(app, planned, options)
    assert app.calls == [] and _state(tree) == before
    assert _journal_leftovers(tree.parent) == []


@pytest.mark.skipif(os.geteuid() != 0, reason="mounts a small tmpfs")
def test_a_full_disk_during_the_fetch_changes_nothing(tmp_path: Path, local: Restic) -> None:
    with small_filesystem(tmp_path, "1m") as small:
        top = small / "tenement"
        top.mkdir()
        (top / "data.bin").write_bytes(os.urandom(600_000))  # fits once, not twice
        app = Tree(top)
        _backup(app, local, tmp_path / "backups")
        (top / "data.bin").write_bytes(os.urandom(600_000))
        before = _state(top)
        app.calls.clear()
        with pytest.raises(RestoreError, match=r"nothing was changed; tenement kept running"):
            _restore(app, local, tmp_path)
        assert app.calls == [] and _state(top) == before
        assert _journal_leftovers(small) == []


@pytest.mark.skipif(os.geteuid() != 0, reason="mounts a small tmpfs")
def test_the_manifest_restic_writes_beside_the_data_is_counted_before_it_is_fetched(
    tmp_path: Path, local: Restic
) -> None:
    """The manifest is restored beside the data (to be compared with the one planned from): a large one (here 6 MiB
    of a valid manifest's white space) on a 4 MiB filesystem is refused before restic writes, not by a full disk."""
    with small_filesystem(tmp_path, "4m") as small:
        top = small / "tenement"
        top.mkdir()
        (top / "data.bin").write_bytes(os.urandom(200_000))
        app = Tree(top)
        _backup(app, local, tmp_path / "backups")
        stage = tmp_path / "backups" / ".selfhost-dr-repo" / "tenement"
        with open(stage / MANIFEST_MEMBER, "a") as manifest:
            manifest.write(" " * (6 << 20))
        _backup_by_hand(local, stage, top)
        before = _state(top)
        app.calls.clear()
        with pytest.raises(RestoreError, match=r"needs [\d.]+ MiB beside .*, which has [\d.]+ MiB free"):
            _restore(app, local, tmp_path)
        assert app.calls == [] and _state(top) == before and _journal_leftovers(small) == []


def test_the_manifest_inside_the_snapshot_is_the_one_checked(tmp_path: Path, tree: Path, local: Restic) -> None:
    app = Tree(tree)
    snapshot = _backup(app, local, tmp_path / "backups")
    planned = repo_restore.plan(app, local, _options(tmp_path), check=True)
    stage = tmp_path / "backups" / ".selfhost-dr-repo" / "tenement"
    assert planned.manifest == json.loads((stage / MANIFEST_MEMBER).read_text())
    assert planned.snapshot["id"].startswith(snapshot)


def test_the_host_command_restores_from_s3_with_only_location_credentials_and_password(
    tmp_path: Path,
    tree: Path,
    store: s3_store.Store,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(cli, "application", lambda _name, _options: Tree(tree))
    secrets = tmp_path / "secrets"
    secrets.mkdir(mode=0o700)
    (secrets / "password").write_text("a long repository password\n")
    (secrets / "s3.env").write_text("".join(f"{k}={v}\n" for k, v in store.env.items()))
    for path in secrets.iterdir():
        path.chmod(0o600)
    bucket = f"rst-{tmp_path.name[-20:].lower().replace('_', '-')}"
    config = tmp_path / "config.toml"
    config.write_text(
        f'backup_dir = "{tmp_path}/backups"\nstate_dir = "{tmp_path}/state"\n[metrics]\ntextfile_dir = ""\n'
        f'[repositories.s3]\nlocation = "{store.location(bucket)}"\npassword_file = "{secrets}/password"\n'
        f'env_file = "{secrets}/s3.env"\ninit = true\n'
    )
    code, result = _cli(capsys, "backup", "--repo", "s3", "--config", str(config))
    assert code == 0, result
    expected = _state(tree)
    shutil.rmtree(tree)  # the server lost its data
    shutil.rmtree(tmp_path / "backups")  # and its backup directory
    code, result = _cli(capsys, "restore", "--repo", "s3", "--check", "--config", str(config))
    assert code == 0 and result["targets"] == [str(tree)] and not tree.exists(), result
    code, result = _cli(capsys, "restore", "--repo", "s3", "--config", str(config))
    assert code == 0, result
    assert _state(tree) == expected
    assert result["snapshot_tagged"] and result["started"] == ["web:1"]  # type: ignore[index]
    code, listed = _cli(capsys, "list", "--repo", "s3", "--config", str(config))
    assert [s["id"] for s in listed["snapshots"] if repo_restore.VERIFIED_TAG in s["tags"]] == [  # type: ignore[union-attr]
        result["snapshot_tagged"]
    ]
    code, result = _cli(capsys, "restore", "--repo", "s3", "--snapshot", "zz", "--config", str(config))
    assert (code, result["error"]) == (1, "'zz' is not a snapshot id (8 to 64 hex digits, or latest)")
    code, result = _cli(capsys, "restore", "--snapshot", "1a2b3c4d", "--config", str(config))
    assert code == 2 and "give --repo NAME" in str(result["error"])
    assert "a long repository password" not in json.dumps(result)


def test_a_large_database_read_where_it_is_comes_back_as_one_moment_while_its_writer_went_on(
    tmp_path: Path, tree: Path, local: Restic
) -> None:
    """A database of a megabyte or more is not copied: restic reads its file, held still by a read transaction, while
    the application commits to its WAL. Restored, it holds every row up to one commit and none after."""
    big = tree / "web" / "1" / "big.db"
    with contextlib.closing(sqlite3.connect(big)) as db:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("CREATE TABLE rows (id INTEGER PRIMARY KEY, body BLOB)")
        db.executemany("INSERT INTO rows (body) VALUES (randomblob(1000))", [()] * 1500)
        db.commit()
    code = (
        "import sqlite3, sys, time\n"
        "db = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=10)\n"
        "print('writing', flush=True)\n"
        "while True:\n"
        "    db.execute('INSERT INTO rows (body) VALUES (randomblob(1000))'); time.sleep(0.005)\n"
    )
    writer = subprocess.Popen([sys.executable, "-c", code, str(big)], stdout=subprocess.PIPE)
    try:
        assert writer.stdout is not None and writer.stdout.readline() == b"writing\n"
        _backup(Tree(tree), local, tmp_path / "backups")
    finally:
        writer.kill()
        writer.wait()
    with contextlib.closing(sqlite3.connect(big)) as db:
        written = db.execute("SELECT max(id) FROM rows").fetchone()[0]
    manifest = json.loads(next((tmp_path / "backups").rglob(MANIFEST_MEMBER)).read_text())
    (record,) = [f for f in manifest["files"] if f["path"].endswith("/web/1/big.db")]
    assert record["in_place"] is True
    assert not list((tmp_path / "backups").rglob("big.db"))  # never copied
    done = _restore(Tree(tree), local, tmp_path)
    assert done.committed
    assert hashlib.sha256(big.read_bytes()).hexdigest() == record["sha256"]
    with contextlib.closing(sqlite3.connect(big)) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        count, top = db.execute("SELECT count(*), max(id) FROM rows").fetchone()
    assert count == top and 1500 < top < written  # every row up to one commit, none of the later ones


def test_every_tables_rows_are_recorded_and_a_manifest_whose_counts_lie_is_refused_and_nothing_stops(
    tmp_path: Path, tree: Path, local: Restic
) -> None:
    """The manifest holds each database's row counts, table by table; a restore counts them again. A crafted
    snapshot (its files matching their sha256) whose manifest says other counts is refused before anything stops."""
    app = Tree(tree)
    _backup(app, local, tmp_path / "backups")
    stage = tmp_path / "backups" / ".selfhost-dr-repo" / "tenement"
    manifest = json.loads((stage / MANIFEST_MEMBER).read_text())
    rows = {s["path"].rsplit("/", 1)[-1]: s["rows"] for s in manifest["snapshots"]}
    assert rows == {"tenement.db": {"rows": 2000}, "app.db": {"rows": 100}}
    (record,) = [s for s in manifest["snapshots"] if s["path"].endswith("/app.db")]
    record["rows"] = {"rows": 99}
    (stage / MANIFEST_MEMBER).write_text(json.dumps(manifest))
    _backup_by_hand(local, stage, tree)
    before = _state(tree)
    app.calls.clear()
    with pytest.raises(VerificationError, match=r"app.db in snapshot \w+ holds 100 rows in table 'rows', its manifest"):
        _restore(app, local, tmp_path)
    assert app.calls == []  # never stopped
    assert _state(tree) == before and _journal_leftovers(tree.parent) == []
