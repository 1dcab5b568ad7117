"""The stage of a repository backup: every database copied consistently at a path that never changes, every file
hashed once (then only when it changed), and a manifest in a set's format; the exclude file leaves the live
databases out. No restic here: what restic does with the stage is tests/integration/test_repo_backup.py."""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import time
from pathlib import Path

import pytest

from ansible_collections.selfhost.dr.plugins.module_utils._common import BackupError
from ansible_collections.selfhost.dr.plugins.module_utils.repos import stage as stage_module
from ansible_collections.selfhost.dr.plugins.module_utils.sets.manifest import MANIFEST_MEMBER, parse_manifest


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    top = tmp_path / "srv" / "app"
    (top / "logs").mkdir(parents=True)
    (top / "logs" / "a.log").write_text("one\n")
    (top / "blob.bin").write_bytes(os.urandom(300_000))
    (top / "link").symlink_to("blob.bin")
    with contextlib.closing(sqlite3.connect(top / "app.db")) as db:  # (closed: this process holds no descriptor)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("CREATE TABLE t (x)")
        db.executemany("INSERT INTO t VALUES (?)", [(n,) for n in range(500)])
        db.commit()
    return top


def _stage(tree: Path, tmp_path: Path) -> stage_module.Staged:
    return stage_module.stage([str(tree)], str(tmp_path / "backups"), app="tenement", label="hot", host="web1")


def test_the_stage_holds_a_consistent_copy_of_each_database_and_a_manifest_of_every_file(
    tree: Path, tmp_path: Path
) -> None:
    staged = _stage(tree, tmp_path)
    assert staged.stage == str(tmp_path / "backups" / ".selfhost-dr-repo" / "tenement")
    assert staged.paths == [staged.stage, str(tree)]
    blob = (Path(staged.stage) / MANIFEST_MEMBER).read_bytes()
    manifest = parse_manifest(blob, "the staged manifest")  # a set's format, checked as a set's is
    by_path = {r["path"]: r for r in manifest["files"]}  # type: ignore[union-attr]
    member = str(tree.relative_to("/"))
    assert by_path[f"{member}/app.db"]["sqlite"] is True
    assert by_path[f"{member}/link"] == {**by_path[f"{member}/link"], "type": "symlink", "target": "blob.bin"}
    copy = Path(staged.stage) / "db" / member / "app.db"
    with contextlib.closing(sqlite3.connect(copy)) as db:
        assert db.execute("SELECT count(*) FROM t").fetchone() == (500,)
    excluded = Path(staged.exclude_file).read_text().splitlines()
    assert f"{tree}/app.db" in excluded and f"{tree}/app.db-wal" in excluded
    assert f"{staged.stage}/hashes.json" in excluded
    assert staged.hashed_bytes >= 300_000 and staged.databases_replaced == 1


def test_a_second_stage_reads_and_copies_only_what_changed(tree: Path, tmp_path: Path) -> None:
    first = _stage(tree, tmp_path)
    copy = Path(first.stage) / "db" / str(tree.relative_to("/")) / "app.db"
    inode = copy.stat().st_ino
    again = _stage(tree, tmp_path)
    assert again.hashed_bytes == 0 and again.databases_replaced == 0
    assert copy.stat().st_ino == inode  # restic sees the same file: not read again
    (tree / "logs" / "a.log").write_text("one\ntwo\n")
    with contextlib.closing(sqlite3.connect(tree / "app.db")) as db:
        db.execute("INSERT INTO t VALUES (500)")
        db.commit()
    third = _stage(tree, tmp_path)
    assert third.hashed_bytes == len("one\ntwo\n") and third.databases_replaced == 1
    assert copy.stat().st_ino != inode
    # The previous copy was moved out of the stage (restic never reads it) and is deleted beside restic's read.
    assert third.emptying is not None
    third.emptying.join()
    trash = tmp_path / "backups" / ".selfhost-dr-repo" / stage_module.TRASH
    assert trash.is_dir() and list(trash.iterdir()) == []
    copies = [p for p in Path(third.stage).rglob("*") if p.is_file() and p.name.startswith("app.db")]
    assert copies == [copy]


def test_a_database_that_cannot_be_copied_fails_the_stage_with_no_descriptor_left_open(
    tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Files are opened ahead of the workers that hash them: a failure while some wait must close every one."""
    real = stage_module._hash_open

    def slow(fd: int, st: os.stat_result) -> tuple[str, int, tuple[int, ...]]:
        time.sleep(0.05)  # workers busier than the failure is quick
        return real(fd, st)

    monkeypatch.setattr(stage_module, "_hash_open", slow)
    for n in range(40):
        (tree / "logs" / f"{n}.log").write_bytes(os.urandom(50_000))
    with contextlib.closing(sqlite3.connect(tree / "aa-locked.db")) as db:  # a rollback-journal database...
        db.execute("CREATE TABLE t (x)")
        db.commit()
    before = sorted(os.listdir("/proc/self/fd"))
    with contextlib.closing(sqlite3.connect(tree / "aa-locked.db", isolation_level=None)) as writer:
        writer.execute("BEGIN EXCLUSIVE")  # ...that a writer keeps locked for longer than the lock timeout
        with pytest.raises(BackupError, match=r"aa-locked.db stayed locked by another process for longer than 0.2 s"):
            stage_module.stage([str(tree)], str(tmp_path / "backups"), app="tenement", lock_timeout=0.2)
        writer.execute("ROLLBACK")
    assert sorted(os.listdir("/proc/self/fd")) == before


def test_a_file_changed_after_its_hash_is_found_and_rehashed_into_changed_during_backup(
    tree: Path, tmp_path: Path
) -> None:
    staged = _stage(tree, tmp_path)
    assert stage_module.unstable(staged) == []
    (tree / "logs" / "a.log").write_text("rewritten during the backup\n")
    moved = stage_module.unstable(staged)
    assert moved == [str(tree / "logs" / "a.log")]
    stage_module.rehash(staged, moved)
    manifest = json.loads((Path(staged.stage) / MANIFEST_MEMBER).read_text())
    member = f"{tree.relative_to('/')}/logs/a.log"
    assert manifest["changed_during_backup"] == [member]
    (record,) = [r for r in manifest["files"] if r["path"] == member]
    assert record["size"] == len("rewritten during the backup\n")
    assert stage_module.unstable(staged) == []


def test_a_database_removed_since_leaves_no_copy_and_a_link_root_is_refused(tree: Path, tmp_path: Path) -> None:
    staged = _stage(tree, tmp_path)
    (tree / "app.db").unlink()
    _stage(tree, tmp_path)
    assert not list((Path(staged.stage) / "db").rglob("app.db"))
    (tmp_path / "via").symlink_to(tree)
    with pytest.raises(BackupError, match=r"is a symbolic link to .*: name the real path"):
        stage_module.stage([str(tmp_path / "via")], str(tmp_path / "backups"), app="tenement")


def test_a_hash_cache_that_lies_about_a_file_is_only_believed_for_the_exact_stat(tree: Path, tmp_path: Path) -> None:
    staged = _stage(tree, tmp_path)
    cache = Path(staged.stage) / "hashes.json"
    data = json.loads(cache.read_text())
    data[str(tree / "blob.bin")]["key"][2] += 1  # another size: not this file
    data[str(tree / "blob.bin")]["sha256"] = "0" * 64
    cache.write_text(json.dumps(data))
    again = _stage(tree, tmp_path)
    record = next(r for r in again.manifest["files"] if str(r["path"]).endswith("blob.bin"))  # type: ignore[union-attr]
    assert record["sha256"] != "0" * 64
