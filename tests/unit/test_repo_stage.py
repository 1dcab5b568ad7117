"""The stage of a repository backup: every database copied consistently at a path that never changes, every file
hashed once (then only when it changed), and a manifest in a set's format; the exclude file leaves the live
databases out. No restic here: what restic does with the stage is tests/integration/test_repo_backup.py."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sqlite3
import subprocess
import sys
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


def _large_wal_database(path: Path, rows: int = 1500) -> None:
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("CREATE TABLE t (n INTEGER PRIMARY KEY, x BLOB)")
        db.executemany("INSERT INTO t (x) VALUES (randomblob(1000))", [()] * rows)
        db.commit()


def _writer(path: Path, per_second: int) -> subprocess.Popen[bytes]:
    """Another process committing a row at a time (a lock of this process's own would not show in the kernel's
    table as another's); it prints a line once it committed its first row."""
    code = (
        "import sqlite3, sys, time\n"
        "db = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=10)\n"
        "first = True\n"
        "while True:\n"
        "    db.execute('INSERT INTO t (x) VALUES (randomblob(1000))')\n"
        "    if first:\n"
        "        print('writing', flush=True); first = False\n"
        "    time.sleep(1 / int(sys.argv[2]))\n"
    )
    writer = subprocess.Popen([sys.executable, "-c", code, str(path), str(per_second)], stdout=subprocess.PIPE)
    assert writer.stdout is not None and writer.stdout.readline() == b"writing\n"
    return writer


def _checkpoint_elsewhere(path: Path) -> tuple[int, int, int]:
    """``PRAGMA wal_checkpoint(PASSIVE)`` run by another process (one of this process's would share its locks)."""
    code = (
        "import sqlite3, sys; print(*sqlite3.connect(sys.argv[1]).execute('PRAGMA wal_checkpoint(PASSIVE)').fetchone())"
    )
    out = subprocess.run([sys.executable, "-c", code, str(path)], check=True, capture_output=True, text=True).stdout
    busy, frames, copied = (int(n) for n in out.split())
    return busy, frames, copied


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_large_wal_database_is_read_where_it_is_its_file_held_still_while_its_writer_goes_on(
    tree: Path, tmp_path: Path
) -> None:
    """No copy of a large database: a read transaction that sees its file alone keeps the file still (no checkpoint
    can write it) while restic reads it, and the application's writer goes on committing to the WAL meanwhile."""
    big = tree / "big.db"
    _large_wal_database(big)
    writer = _writer(big, 200)
    try:
        staged = _stage(tree, tmp_path)
        member = f"{tree.relative_to('/')}/big.db"
        manifest = json.loads((Path(staged.stage) / MANIFEST_MEMBER).read_text())
        (record,) = [r for r in manifest["files"] if r["path"] == member]
        assert record["sqlite"] is True and record["in_place"] is True
        assert not (Path(staged.stage) / "db" / member).exists()  # not copied
        excluded = Path(staged.exclude_file).read_text().splitlines()
        assert f"{big}-wal" in excluded and f"{big}-shm" in excluded and str(big) not in excluded
        assert f"{tree}/app.db" in excluded  # (a small one is copied as before)
        wal = os.path.getsize(f"{big}-wal")
        time.sleep(0.5)  # a hundred commits
        busy, frames, copied = _checkpoint_elsewhere(big)
        assert busy == 0 and frames > copied  # another process cannot copy the WAL back into the file...
        assert _sha256(big) == record["sha256"] and big.stat().st_size == record["size"]  # ...which stays still
        assert stage_module.unstable(staged) == []
        assert os.path.getsize(f"{big}-wal") > wal  # the writer went on
        copy = tmp_path / "as-restic-read-it.db"
        copy.write_bytes(big.read_bytes())  # the file alone, as restic stores it
        with contextlib.closing(sqlite3.connect(f"file:{copy}?immutable=1", uri=True)) as db:
            assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
            held_rows = db.execute("SELECT count(*) FROM t").fetchone()[0]
        assert held_rows >= 1501
        staged.release()
        with contextlib.closing(sqlite3.connect(big, timeout=10)) as db:  # the WAL can be copied back again
            busy, frames, copied = db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            assert busy == 0 and frames == copied and frames > 0
            assert db.execute("SELECT count(*) FROM t").fetchone()[0] > held_rows
        assert _sha256(big) != record["sha256"]
    finally:
        writer.kill()
        writer.wait()


def test_a_large_database_that_cannot_be_held_still_is_copied(tree: Path, tmp_path: Path) -> None:
    """A rollback-journal database (a reader there would block its writers) and a WAL database whose WAL a reader of
    an older moment keeps from being copied back into the file are both copied, as before."""
    rollback = tree / "rollback.db"
    with contextlib.closing(sqlite3.connect(rollback)) as db:
        db.execute("CREATE TABLE t (x BLOB)")
        db.executemany("INSERT INTO t VALUES (randomblob(1000))", [()] * 1500)
        db.commit()
    behind = tree / "behind.db"
    _large_wal_database(behind)
    code = (
        "import sqlite3, sys\n"
        "db = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
        "db.execute('INSERT INTO t (x) VALUES (randomblob(1000))')\n"
        "db.execute('BEGIN'); db.execute('SELECT count(*) FROM t').fetchone()\n"  # reads at that commit...
        "print('reading', flush=True); sys.stdin.readline()\n"
    )
    reader = subprocess.Popen([sys.executable, "-c", code, str(behind)], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert reader.stdout is not None and reader.stdout.readline() == b"reading\n"
        with contextlib.closing(sqlite3.connect(behind)) as db:  # ...and a later commit it does not see
            db.execute("INSERT INTO t (x) VALUES (randomblob(1000))")
            db.commit()
        staged = _stage(tree, tmp_path)
    finally:
        reader.kill()
        reader.wait()
    manifest = json.loads((Path(staged.stage) / MANIFEST_MEMBER).read_text())
    for db_path, rows in ((rollback, 1500), (behind, 1502)):
        member = f"{tree.relative_to('/')}/{db_path.name}"
        (record,) = [r for r in manifest["files"] if r["path"] == member]
        assert "in_place" not in record
        with contextlib.closing(sqlite3.connect(Path(staged.stage) / "db" / member)) as db:
            assert db.execute("SELECT count(*) FROM t").fetchone() == (rows,)
    assert staged.held == {}


def test_a_failed_stage_lets_go_of_the_databases_it_held(
    tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _large_wal_database(tree / "aa-big.db")
    monkeypatch.setattr(stage_module, "write_manifest", lambda staged: (_ for _ in ()).throw(OSError("disk full")))
    before = sorted(os.listdir("/proc/self/fd"))
    with pytest.raises(OSError, match="disk full"):
        _stage(tree, tmp_path)
    assert sorted(os.listdir("/proc/self/fd")) == before  # SQLite's descriptors closed: the transaction is over
    with contextlib.closing(sqlite3.connect(tree / "aa-big.db")) as db:
        db.execute("INSERT INTO t (x) VALUES (1)")
        db.commit()
        assert db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone() == (0, 0, 0)


def test_a_database_with_a_second_name_is_copied_never_held(tree: Path, tmp_path: Path) -> None:
    """A hard link: SQLite would hold the file under one name while the application writes it under the other."""
    _large_wal_database(tree / "big.db")
    os.link(tree / "big.db", tree / "logs" / "alias.db")
    staged = _stage(tree, tmp_path)
    assert staged.held == {}
    manifest = json.loads((Path(staged.stage) / MANIFEST_MEMBER).read_text())
    assert [r for r in manifest["files"] if r.get("in_place")] == []
    assert (Path(staged.stage) / "db" / f"{tree.relative_to('/')}/big.db").exists()


def test_a_held_database_replaced_at_its_path_is_copied_as_it_is_now_and_a_chmod_changes_nothing(
    tree: Path, tmp_path: Path
) -> None:
    big = tree / "big.db"
    _large_wal_database(big)
    staged = _stage(tree, tmp_path)
    try:
        assert list(staged.held) == [str(big)]
        os.chmod(big, 0o640)  # its ctime only: the held bytes are the same
        assert stage_module.unstable(staged) == []
        with contextlib.closing(sqlite3.connect(big)) as db:  # the application replaces its database (VACUUM INTO)
            db.execute("DELETE FROM t WHERE n > 1000")
            db.commit()
            db.execute("VACUUM INTO ?", (str(tree / "big.db.new"),))
        os.replace(tree / "big.db.new", big)
        moved = stage_module.unstable(staged)
        assert moved == [str(big)]
        stage_module.rehash(staged, moved)
        assert staged.held == {} and stage_module.unstable(staged) == []
        manifest = json.loads((Path(staged.stage) / MANIFEST_MEMBER).read_text())
        member = f"{tree.relative_to('/')}/big.db"
        (record,) = [r for r in manifest["files"] if r["path"] == member]
        (snap,) = [s for s in manifest["snapshots"] if s["path"] == member]
        copy = Path(staged.stage) / "db" / member
        assert "in_place" not in record and record["sha256"] == _sha256(copy) == snap["sha256"]
        assert snap["rows"] == {"t": 1000} and member not in manifest["changed_during_backup"]
        assert str(big) in Path(staged.exclude_file).read_text().splitlines()  # the live file left out now
    finally:
        staged.release()


def test_a_database_above_row_counts_max_size_is_staged_without_counts(tree: Path, tmp_path: Path) -> None:
    said: list[str] = []
    staged = stage_module.stage(
        [str(tree)],
        str(tmp_path / "backups"),
        app="tenement",
        label="hot",
        host="web1",
        row_counts_max_size=1024,
        log=said.append,
    )
    (snap,) = staged.manifest["snapshots"]  # type: ignore[misc]
    assert "rows" not in snap and [line for line in said if "app.db" in line and "not counted" in line]
    again = stage_module.stage([str(tree)], str(tmp_path / "backups"), app="tenement", label="hot", host="web1")
    (snap,) = again.manifest["snapshots"]  # type: ignore[misc]
    assert snap["rows"] == {"t": 500}  # without the limit, counted (the copy's cache held no count to reuse)
    limited = stage_module.stage(
        [str(tree)], str(tmp_path / "backups"), app="tenement", label="hot", host="web1", row_counts_max_size=1024
    )
    (snap,) = limited.manifest["snapshots"]  # type: ignore[misc]
    assert "rows" not in snap  # the limit again: the counts the cache now holds are not used either
