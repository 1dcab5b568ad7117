"""Backup sets: what goes in, what comes out by hand, what verify catches, how failures leave the directory."""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import socket
import sqlite3
import stat
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from ansible_collections.selfhost.dr.plugins.module_utils._common import BackupError
from ansible_collections.selfhost.dr.plugins.module_utils.sets.catalog import catalog
from ansible_collections.selfhost.dr.plugins.module_utils.sets.create import create
from ansible_collections.selfhost.dr.plugins.module_utils.sets.manifest import MANIFEST_MEMBER
from ansible_collections.selfhost.dr.plugins.module_utils.sets.names import Sidecars, parse_name, set_name
from ansible_collections.selfhost.dr.plugins.module_utils.sets.verify import verify

from .sqlite_helpers import consistent, make_db, writer_running

ROOT = Path(__file__).resolve().parents[2]
T0 = datetime(2026, 11, 22, 3, 51, 0, tzinfo=UTC)


def at(when: datetime) -> Callable[[], datetime]:
    return lambda: when


def listing(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


@pytest.fixture
def tree(tmp_path: Path) -> Iterator[Path]:
    """A small application tree: text, binary, nested and empty dirs, a symlink, two databases, a socket, logs."""
    app = tmp_path / "srv" / "app"
    (app / "data" / "uploads").mkdir(parents=True)
    (app / "empty").mkdir()
    (app / "logs").mkdir()
    (app / "config.toml").write_text('[settings]\nname = "demo"\n')
    (app / "data" / "uploads" / "blob.bin").write_bytes(os.urandom(300_000))
    (app / "data" / "notes.txt").write_text("hello\n" * 1000)
    os.chmod(app / "config.toml", 0o640)
    (app / "logs" / "app.log").write_text("noise\n")
    (app / "current").symlink_to("data/notes.txt")
    make_db(app / "data" / "app.db", mode="wal", rows=500)
    make_db(app / "data" / "state.sqlite3", mode="delete", rows=50)
    # Rows that live only in the -wal file: a plain copy of app.db would miss them.
    holder = sqlite3.connect(app / "data" / "app.db", isolation_level=None)
    holder.execute("PRAGMA wal_autocheckpoint = 0")
    holder.execute("INSERT INTO ledger(amount) VALUES (3)")
    holder.execute("UPDATE totals SET n = n + 1, total = total + 3")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(app / "control.sock"))
    yield app
    sock.close()
    holder.close()


def extract_by_hand(archive: Path, into: Path) -> None:
    into.mkdir()
    tool = "zstd" if archive.name.endswith(".zst") else "gzip"
    subprocess.run(f"{tool} -d -c '{archive}' | tar -x -C '{into}'", shell=True, check=True)  # noqa: S602


def test_a_set_holds_the_tree_and_restores_by_hand(tree: Path, tmp_path: Path) -> None:
    dest = tmp_path / "backups"
    dest.mkdir()
    made = create([str(tree)], str(dest), app="demo", host="web-1", label="hot", excludes=["*/logs"], now=at(T0))

    assert made.name == "demo-web-1-20261122T035100Z-hot.tar.zst"
    assert listing(dest) == [made.name, made.name + ".manifest.json", made.name + ".sha256"]
    for name in listing(dest):
        assert stat.S_IMODE((dest / name).stat().st_mode) == 0o600
    subprocess.run(["sha256sum", "-c", made.name + ".sha256"], cwd=dest, check=True, capture_output=True)

    out = tmp_path / "out"
    extract_by_hand(dest / made.name, out)
    copy = out / str(tree).lstrip("/")
    for rel in ("config.toml", "data/notes.txt", "data/uploads/blob.bin"):
        assert (copy / rel).read_bytes() == (tree / rel).read_bytes(), rel
    assert stat.S_IMODE((copy / "config.toml").stat().st_mode) == 0o640
    assert os.readlink(copy / "current") == "data/notes.txt"
    assert (copy / "empty").is_dir()
    assert not (copy / "logs").exists() and not (copy / "control.sock").exists()
    assert not (copy / "data" / "app.db-wal").exists() and not (copy / "data" / "app.db-shm").exists()
    # The snapshot holds the rows that were only in the -wal file, and stays a WAL database.
    assert consistent(copy / "data" / "app.db") == consistent(tree / "data" / "app.db")
    assert consistent(copy / "data" / "state.sqlite3") == consistent(tree / "data" / "state.sqlite3")
    with open(copy / "data" / "app.db", "rb") as handle:
        assert handle.read(20)[18:20] == b"\x02\x02"

    manifest = json.loads((out / MANIFEST_MEMBER).read_text())
    assert manifest == json.loads((dest / (made.name + ".manifest.json")).read_text())
    assert (manifest["format_version"], manifest["app"], manifest["host"]) == (1, "demo", "web-1")
    files = {f["path"]: f for f in manifest["files"]}
    notes = files[str(tree / "data" / "notes.txt").lstrip("/")]
    assert notes["sha256"] == hashlib.sha256((tree / "data" / "notes.txt").read_bytes()).hexdigest()
    assert {Path(s["path"]).name for s in manifest["snapshots"]} == {"app.db", "state.sqlite3"}
    reasons = {Path(s["path"]).name: s["reason"] for s in manifest["skipped"]}
    assert reasons["control.sock"] == "socket"
    assert reasons["logs"] == "excluded by */logs"
    assert reasons["app.db-wal"].startswith("SQLite -wal file")


def test_a_writer_committing_during_the_backup_gets_a_consistent_snapshot(tmp_path: Path) -> None:
    tree = tmp_path / "app"
    tree.mkdir()
    make_db(tree / "live.db", mode="wal", rows=20000)
    with writer_running(tree / "live.db") as run:
        made = create([str(tree)], str(tmp_path), lock_timeout=10)
    out = tmp_path / "out"
    extract_by_hand(Path(made.path), out)
    assert run.before <= consistent(out / str(tree).lstrip("/") / "live.db")[0] <= run.after
    assert verify(made.path).ok


def test_verify_reports_every_check_and_records_the_result(tree: Path, tmp_path: Path) -> None:
    made = create([str(tree)], str(tmp_path), now=at(T0))
    result = verify(made.path, now=at(T0 + timedelta(minutes=1)))
    assert result.ok, result.problems
    assert [c["check"] for c in result.checks] == ["checksum", "manifest", "members", "sqlite", "rows"]
    assert "2 databases pass integrity_check" in str(result.checks[-2]["detail"])
    assert "match the manifest" in str(result.checks[-1]["detail"]) and result.stats["tables_counted"] >= 2
    marker = json.loads(Path(Sidecars.of(made.path).verified).read_text())
    assert marker["ok"] is True and marker["sha256"] == made.sha256


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x40
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", [_truncate, _flip], ids=["truncated", "flipped-byte"])
def test_verify_detects_a_damaged_file(tree: Path, tmp_path: Path, damage: Callable[[Path], None]) -> None:
    made = create([str(tree)], str(tmp_path))
    damage(Path(made.path))
    result = verify(made.path)
    assert not result.ok
    failed = {c["check"] for c in result.checks if not c["ok"]}
    assert "checksum" in failed
    assert "archive" in failed or "members" in failed, result.checks
    assert "does not match its .sha256" in result.summary


def rebuild(archive: Path, edit: Callable[[list[tuple[tarfile.TarInfo, bytes | None]]], None]) -> None:
    """Rewrite a set's archive through ``edit`` and give it a matching .sha256: only the content checks can tell."""
    raw = subprocess.run(["zstd", "-d", "-c", str(archive)], capture_output=True, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        items = [(m, tar.extractfile(m).read() if m.isfile() else None) for m in tar.getmembers()]  # type: ignore[union-attr]
    edit(items)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as out:
        for info, data in items:
            if data is not None:
                info.size = len(data)
            out.addfile(info, io.BytesIO(data) if data is not None else None)
    archive.write_bytes(subprocess.run(["zstd", "-q", "-c"], input=buf.getvalue(), capture_output=True).stdout)
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    Path(Sidecars.of(str(archive)).checksum).write_text(f"{digest}  {archive.name}\n")


def _drop_notes(items: list[tuple[tarfile.TarInfo, bytes | None]]) -> None:
    items[:] = [(i, d) for i, d in items if not i.name.endswith("notes.txt")]


def _add_extra(items: list[tuple[tarfile.TarInfo, bytes | None]]) -> None:
    items.insert(1, (tarfile.TarInfo("srv/intruder.sh"), b"#!/bin/sh\n"))


def _change_notes(items: list[tuple[tarfile.TarInfo, bytes | None]]) -> None:
    items[:] = [(i, b"changed\n" if i.name.endswith("notes.txt") else d) for i, d in items]


def _corrupt_db(items: list[tuple[tarfile.TarInfo, bytes | None]]) -> None:
    for n, (info, data) in enumerate(items):
        if info.name.endswith("app.db") and data:
            broken = bytearray(data)
            broken[4096 : 4096 + 12] = b"\xff" * 12  # the second page's b-tree header
            items[n] = (info, bytes(broken))


@pytest.mark.parametrize(
    ("edit", "check", "words"),
    [
        (_drop_notes, "members", "listed in the manifest are missing"),
        (_add_extra, "members", "are not in the manifest, first srv/intruder.sh"),
        (_change_notes, "members", "differ from the manifest"),
        (_corrupt_db, "sqlite", "fails integrity_check"),
    ],
)
def test_verify_checks_every_member_against_the_manifest(
    tmp_path: Path, tree: Path, edit: Callable[..., None], check: str, words: str
) -> None:
    made = create([str(tree)], str(tmp_path))
    rebuild(Path(made.path), edit)
    result = verify(made.path)
    failed = [c for c in result.checks if not c["ok"]]
    assert not result.ok
    assert {c["check"] for c in failed} >= {check}, result.checks
    assert "checksum" not in {c["check"] for c in failed}
    assert any(words in str(c["detail"]) for c in failed), failed
    if edit is _corrupt_db:  # the member check also sees the change
        assert any(c["check"] == "members" for c in failed)


def test_verify_flags_hostile_members(tmp_path: Path, tree: Path) -> None:
    made = create([str(tree)], str(tmp_path))

    def hostile(items: list[tuple[tarfile.TarInfo, bytes | None]]) -> None:
        evil = tarfile.TarInfo("../../etc/cron.d/evil")
        link = tarfile.TarInfo("srv/hard")
        link.type, link.linkname = tarfile.LNKTYPE, "/etc/shadow"
        items[0:0] = [(evil, b"* * * * * root sh\n"), (link, None)]

    rebuild(Path(made.path), hostile)
    result = verify(made.path)
    details = " ".join(str(c["detail"]) for c in result.checks if not c["ok"])
    assert "'../../etc/cron.d/evil' is unsafe: it has a '..' component" in details
    assert "'srv/hard' is unsafe: it has a hard link" in details


def test_a_set_from_a_newer_format_is_refused(tmp_path: Path, tree: Path) -> None:
    made = create([str(tree)], str(tmp_path))
    sidecar = Path(made.manifest_path)
    manifest = json.loads(sidecar.read_text())
    manifest["format_version"] = 99
    sidecar.write_text(json.dumps(manifest))
    with pytest.raises(BackupError, match=r"format version 99, newer than the 1 this collection reads"):
        verify(made.path)
    sidecar.unlink()  # the copy inside the archive says the same

    def newer(items: list[tuple[tarfile.TarInfo, bytes | None]]) -> None:
        items[-1] = (items[-1][0], json.dumps(manifest).encode())

    rebuild(Path(made.path), newer)
    with pytest.raises(BackupError, match=r"newer than the 1 this collection reads; upgrade selfhost.dr"):
        verify(made.path)


def test_a_missing_path_fails_before_anything_is_written(tmp_path: Path, tree: Path) -> None:
    dest = tmp_path / "backups"
    dest.mkdir()
    earlier = create([str(tree)], str(dest), now=at(T0))
    before = {n: (dest / n).read_bytes() for n in listing(dest)}
    with pytest.raises(BackupError, match=r"^path /nonexistent/app does not exist$"):
        create([str(tree), "/nonexistent/app"], str(dest))
    with pytest.raises(BackupError, match=r"paths to back up must be absolute"):
        create(["relative/dir"], str(dest))
    with pytest.raises(BackupError, match=r"backup directory .*/nowhere does not exist"):
        create([str(tree)], str(tmp_path / "nowhere"))
    assert {n: (dest / n).read_bytes() for n in listing(dest)} == before
    assert verify(earlier.path).ok


def test_a_database_locked_too_long_fails_and_leaves_nothing(tmp_path: Path) -> None:
    tree = tmp_path / "app"
    tree.mkdir()
    make_db(tree / "busy.db", mode="delete", rows=10)
    (tree / "big.bin").write_bytes(os.urandom(2_000_000))  # archived before the database
    dest = tmp_path / "backups"
    dest.mkdir()
    locker = sqlite3.connect(tree / "busy.db", isolation_level=None)
    locker.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(BackupError, match=r"busy.db stayed locked by another process for longer than 0.5 s"):
            create([str(tree)], str(dest), lock_timeout=0.5)
    finally:
        locker.execute("ROLLBACK")
        locker.close()
    assert listing(dest) == []


def test_gzip_and_databases_larger_than_the_memory_limit(tmp_path: Path, tree: Path) -> None:
    made = create([str(tree)], str(tmp_path), compression="gzip", memory_limit=0, now=at(T0))
    assert made.name.endswith(".tar.gz")
    assert not [n for n in listing(tmp_path) if n.startswith(".")]
    result = verify(made.path, memory_limit=0)
    assert result.ok, result.problems
    out = tmp_path / "out"
    extract_by_hand(Path(made.path), out)
    assert consistent(out / str(tree).lstrip("/") / "data" / "app.db") == consistent(tree / "data" / "app.db")


def _mount_tmpfs(where: Path, size: str) -> bool:
    where.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True)
    return done.returncode == 0


def test_a_full_disk_leaves_no_partial_set_and_earlier_sets_intact(tmp_path: Path) -> None:
    small = tmp_path / "small"
    small.mkdir()
    (small / "a.txt").write_text("a" * 1000)
    big = tmp_path / "big"
    big.mkdir()
    (big / "random.bin").write_bytes(os.urandom(4 * 1024 * 1024))
    make_db(big / "app.db", rows=100)
    dest = tmp_path / "disk"
    if not _mount_tmpfs(dest, "2m"):
        pytest.skip("mounting a tmpfs needs root (CI runs as root)")
    try:
        earlier = create([str(small)], str(dest), now=at(T0))
        before = {n: (dest / n).read_bytes() for n in listing(dest)}
        with pytest.raises(BackupError, match=r"^the backup directory ran out of space after [0-9.]+ MiB of archive$"):
            create([str(big)], str(dest))
        assert {n: (dest / n).read_bytes() for n in listing(dest)} == before
        assert verify(earlier.path, record=False).ok
    finally:
        subprocess.run(["umount", str(dest)], check=False)


def test_an_unreadable_directory_fails_in_one_sentence(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to run the backup as another user")
    base = Path(tempfile.mkdtemp(prefix="selfhost-dr-perm-"))
    try:
        os.chmod(base, 0o755)  # the unprivileged user must reach the tree
        (base / "app" / "secret").mkdir(parents=True)
        (base / "app" / "ok.txt").write_text("ok")
        os.chmod(base / "app", 0o755)
        os.chmod(base / "app" / "secret", 0o700)
        dest = base / "backups"
        dest.mkdir()
        os.chown(dest, 65534, 65534)
        code = (
            "import sys\n"
            "from ansible_collections.selfhost.dr.plugins.module_utils.sets.create import create\n"
            "from ansible_collections.selfhost.dr.plugins.module_utils._common import BackupError\n"
            "try:\n    create([sys.argv[1]], sys.argv[2])\nexcept BackupError as e:\n    print(e); sys.exit(3)\n"
        )
        env = dict(os.environ, PYTHONPATH=str(ROOT / ".cache" / "collections"))
        done = subprocess.run(
            [sys.executable, "-c", code, str(base / "app"), str(dest)],
            capture_output=True,
            text=True,
            user=65534,
            group=65534,
            env=env,
            cwd="/",
        )
        assert done.returncode == 3, done.stderr
        assert done.stdout.strip() == f"directory {base}/app/secret cannot be read: permission denied"
        assert listing(dest) == []
    finally:
        subprocess.run(["rm", "-rf", str(base)], check=True)


def test_catalog_lists_newest_first_with_verification_state(tmp_path: Path, tree: Path) -> None:
    dest = tmp_path / "backups"
    dest.mkdir()
    first = create([str(tree)], str(dest), app="demo", host="h1", label="hot", now=at(T0))
    second = create([str(tree)], str(dest), app="demo", host="h1", label="hot", now=at(T0 + timedelta(days=1)))
    third = create([str(tree)], str(dest), app="demo", host="h1", label="cold", now=at(T0 + timedelta(days=2)))
    verify(first.path)
    verify(second.path)
    with open(second.path, "ab") as handle:
        handle.write(b"\0")  # changed after it was verified
    os.unlink(third.manifest_path)
    (dest / ".demo-h1-20261125T000000Z-hot.tar.zst.partial-1").write_bytes(b"half")

    sets = catalog(str(dest))
    assert [s["name"] for s in sets] == [third.name, second.name, first.name]
    assert [s["verification"]["state"] for s in sets] == ["unverified", "changed", "verified"]  # type: ignore[index]
    assert sets[0]["manifest"] == f"manifest {third.manifest_path} does not exist"
    assert sets[0]["time"] == "2026-11-24T03:51:00.000000Z" and sets[0]["label"] == "cold"
    assert sets[2]["files"] == 6 and sets[2]["databases"] == 2 and sets[2]["app"] == "demo"
    assert [s["name"] for s in catalog(str(dest), label="hot")] == [second.name, first.name]


def test_names_sort_by_time_and_parse_back() -> None:
    name = set_name("tenement", "web-01.example", T0, "instance demo:alpha", "zstd")
    assert name == "tenement-web-01.example-20261122T035100Z-instance_demo_alpha.tar.zst"
    assert parse_name(name) == {"app": "tenement", "host": "web-01.example", "time": T0, "label": "instance_demo_alpha"}
    later = set_name("tenement", "web-01.example", T0 + timedelta(seconds=1), "hot", "zstd")
    assert sorted([later, name]) == [name, later]
    assert parse_name("notes.txt") is None
    assert re.fullmatch(r"files-x-\d{8}T\d{6}Z-manual\.tar\.gz", set_name("files", "", T0, "manual", "gzip"))


def test_two_sets_in_the_same_second_get_distinct_names(tmp_path: Path, tree: Path) -> None:
    one = create([str(tree)], str(tmp_path), label="hot", now=at(T0))
    two = create([str(tree)], str(tmp_path), label="hot", now=at(T0))
    assert one.name != two.name and two.name.endswith("-hot-2.tar.zst")
    assert verify(one.path).ok and verify(two.path).ok
