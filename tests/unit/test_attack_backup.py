"""Attacks on making backup sets as root over trees other users write.

An unprivileged user (uid 65534, in a forked child that drops root) swaps paths between the scan and the read;
the victims are root-only files (mode 0600, under the test's private tmp_path, outside the backed-up tree)
holding MARKER. A set must never hold a victim's bytes, must say which paths it left out, and a set that
verifies must restore.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import sqlite3
import stat
import subprocess
import sys
import tarfile
import tempfile
import textwrap
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ansible_collections.selfhost.dr.plugins.module_utils import safe_fs
from ansible_collections.selfhost.dr.plugins.module_utils._common import BackupError, RestoreError
from ansible_collections.selfhost.dr.plugins.module_utils.engine import swap as restore_module
from ansible_collections.selfhost.dr.plugins.module_utils.engine.swap import commit, restore
from ansible_collections.selfhost.dr.plugins.module_utils.sets import create as create_module
from ansible_collections.selfhost.dr.plugins.module_utils.sets import members as members_module
from ansible_collections.selfhost.dr.plugins.module_utils.sets.catalog import catalog, leftovers
from ansible_collections.selfhost.dr.plugins.module_utils.sets.create import Created, create
from ansible_collections.selfhost.dr.plugins.module_utils.sets.verify import verify
from ansible_collections.selfhost.dr.plugins.modules import backup_create

from .sqlite_helpers import make_db

ROOT = Path(__file__).resolve().parents[2]
NOBODY = 65534
MARKER = b"ROOT-ONLY-VICTIM-7f3a91"


# -- helpers ------------------------------------------------------------------------------------------------------


def as_attacker(action: Callable[[], None]) -> None:
    """Run ``action`` as uid/gid 65534 in a forked child; fail the test when it fails."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            action()
            code = 0
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "the attacker's action failed (see captured stderr)"


def chown_tree(path: Path, uid: int = NOBODY) -> None:
    os.chown(path, uid, uid, follow_symlinks=False)
    for sub in path.rglob("*"):
        os.chown(sub, uid, uid, follow_symlinks=False)


def archive_bytes(archive: str) -> bytes:
    """The whole decompressed tar stream of a set."""
    return subprocess.run(["zstd", "-d", "-q", "-c", archive], capture_output=True, check=True).stdout


def members_of(archive: str) -> dict[str, bytes | str | None]:
    """Member name -> bytes (files), link target (links) or None (dirs), from the archive by plain tar."""
    out: dict[str, bytes | str | None] = {}
    with tarfile.open(fileobj=io.BytesIO(archive_bytes(archive))) as tar:
        for info in tar.getmembers():
            if info.isfile():
                out[info.name] = tar.extractfile(info).read()  # type: ignore[union-attr]
            elif info.issym():
                out[info.name] = info.linkname
            else:
                out[info.name] = None
    return out


def left_out(made: Created) -> dict[str, str]:
    return {str(s["path"]): str(s["reason"]) for s in made.manifest["skipped"]}  # type: ignore[union-attr]


def after_scan(monkeypatch: pytest.MonkeyPatch, action: Callable[[], None]) -> None:
    """Run ``action`` after create()'s scan and before it reads anything."""
    real = create_module.scan

    def scan(*args: object, **kwargs: object) -> create_module.Scan:
        found = real(*args, **kwargs)  # type: ignore[arg-type]
        action()
        return found

    monkeypatch.setattr(create_module, "scan", scan)


def before_sqlite_opens(monkeypatch: pytest.MonkeyPatch, name: str, action: Callable[[], None]) -> None:
    """Run ``action`` once inside sets/members.py's ``name`` (snapshot_in_memory or snapshot_to_scratch): after
    _snapshot_member checked the file and its side files, right before SQLite opens it by name."""
    real = getattr(members_module, name)
    done: list[bool] = []

    def wrapped(*args: object, **kwargs: object) -> object:
        if not done:
            done.append(True)
            action()
        return real(*args, **kwargs)

    monkeypatch.setattr(members_module, name, wrapped)


@contextlib.contextmanager
def deadline(seconds: int) -> Iterator[None]:
    """Fail instead of hanging (a FIFO opened for reading blocks until a writer comes)."""

    def expired(_signum: int, _frame: object) -> None:
        raise TimeoutError(f"still running after {seconds} s: it hangs")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def fingerprint(path: Path) -> tuple[bytes, int, int, list[str]]:
    """A victim as it must stay: bytes, mode, mtime, and what lies beside it (no -wal/-shm made there)."""
    st = path.stat()
    return path.read_bytes(), stat.S_IMODE(st.st_mode), st.st_mtime_ns, sorted(os.listdir(path.parent))


def fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def deep_tree(top: Path, depth: int) -> None:
    """``top/d/d/.../d/leaf.txt``, ``depth`` levels, made relative to each level (no path is ever that long)."""
    top.mkdir(parents=True)
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(depth):
            os.mkdir("d", dir_fd=fd)
            child = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = child
        leaf = os.open("leaf.txt", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
        os.write(leaf, b"the bottom\n")
        os.close(leaf)
    finally:
        os.close(fd)


# -- fixtures -----------------------------------------------------------------------------------------------------


@pytest.fixture
def base() -> Iterator[Path]:
    """A directory uid 65534 can reach (tmp_path's parents are 0700); removed without recursion afterwards."""
    path = Path(tempfile.mkdtemp(prefix="selfhost-dr-attack-"))
    os.chmod(path, 0o755)
    yield path
    safe_fs.remove_path(str(path))


@pytest.fixture
def app(base: Path) -> Path:
    """An application tree owned by the unprivileged user: files, a nested dir, a WAL database."""
    root = base / "app"
    (root / "data" / "sub").mkdir(parents=True)
    (root / "db").mkdir()
    (root / "data" / "notes.txt").write_text("notes\n")
    (root / "data" / "sub" / "deep.txt").write_text("deep\n")
    (root / "data" / "other.txt").write_text("other\n")
    make_db(root / "db" / "app.db", mode="wal", rows=50)
    chown_tree(root)
    return root


@pytest.fixture
def dest(tmp_path: Path) -> Path:
    path = tmp_path / "backups"
    path.mkdir(mode=0o700)
    return path


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    """A root-only file holding MARKER."""
    path = tmp_path / "victim" / "shadow"
    path.parent.mkdir(mode=0o700)
    path.write_bytes(b"root:" + MARKER + b":19000:0:99999:7:::\n" * 50)
    os.chmod(path, 0o600)
    return path


@pytest.fixture
def victim_dir(tmp_path: Path) -> Path:
    """A root-only directory laid out like the tree's data dir, every file holding MARKER."""
    path = tmp_path / "secret"
    (path / "sub").mkdir(parents=True)
    for rel in ("notes.txt", "other.txt", "sub/deep.txt"):
        (path / rel).write_bytes(MARKER * 20)
        os.chmod(path / rel, 0o600)
    os.chmod(path, 0o700)
    return path


@pytest.fixture
def victim_db(tmp_path: Path) -> Path:
    """A root-only WAL database with MARKER in a row, in a directory laid out like the tree's db dir."""
    path = tmp_path / "secretdb" / "app.db"
    path.parent.mkdir(mode=0o700)
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = wal")
    conn.execute("CREATE TABLE secrets (v BLOB)")
    conn.execute("INSERT INTO secrets VALUES (?)", (MARKER * 10,))
    conn.close()
    os.chmod(path, 0o600)
    return path


# -- 1. swaps between the scan and the read -----------------------------------------------------------------------


def test_a_file_swapped_for_a_link_to_a_root_only_file_is_left_out_and_reported(
    app: Path, dest: Path, victim: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = app / "data" / "notes.txt"

    def swap() -> None:
        target.unlink()
        target.symlink_to(victim)

    after_scan(monkeypatch, lambda: as_attacker(swap))
    before = fingerprint(victim)
    made = create([str(app)], str(dest))
    assert MARKER not in archive_bytes(made.path)
    assert str(target) in made.manifest["changed_during_backup"]  # type: ignore[operator]
    assert "symbolic link" in left_out(made)[str(target)]
    assert str(target).lstrip("/") not in members_of(made.path)
    assert fingerprint(victim) == before
    assert verify(made.path).ok


def test_a_directory_swapped_for_a_link_to_a_root_only_directory_is_not_followed(
    app: Path, dest: Path, victim_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = app / "data"

    def swap() -> None:
        data.rename(app / "data.old")
        data.symlink_to(victim_dir)

    after_scan(monkeypatch, lambda: as_attacker(swap))
    made = create([str(app)], str(dest))
    assert MARKER not in archive_bytes(made.path)
    changed = set(made.manifest["changed_during_backup"])  # type: ignore[arg-type]
    assert {str(data / "notes.txt"), str(data / "other.txt"), str(data / "sub" / "deep.txt")} <= changed
    assert all("replaced" in left_out(made)[p] for p in changed)
    assert verify(made.path).ok


def test_a_directory_swapped_for_another_directory_is_not_read(
    app: Path, dest: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = app / "data"

    def swap() -> None:
        data.rename(app / "data.old")
        (data / "sub").mkdir(parents=True)
        for rel in ("notes.txt", "other.txt", "sub/deep.txt"):
            (data / rel).write_text("IMPOSTOR\n")

    after_scan(monkeypatch, lambda: as_attacker(swap))
    made = create([str(app)], str(dest))
    assert b"IMPOSTOR" not in archive_bytes(made.path)
    changed = set(made.manifest["changed_during_backup"])  # type: ignore[arg-type]
    assert {str(data / "notes.txt"), str(data / "sub" / "deep.txt")} <= changed
    assert "a directory above it was replaced" in left_out(made)[str(data / "notes.txt")]


def test_a_file_swapped_for_a_fifo_does_not_hang_the_backup(
    app: Path, dest: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = app / "data" / "notes.txt"

    def swap() -> None:
        target.unlink()
        os.mkfifo(target)

    after_scan(monkeypatch, lambda: as_attacker(swap))
    with deadline(20):
        made = create([str(app)], str(dest))
    assert str(target) in made.manifest["changed_during_backup"]  # type: ignore[operator]
    assert "fifo" in left_out(made)[str(target)]
    assert verify(made.path).ok


def test_a_database_swapped_for_a_fifo_after_the_scan_does_not_hang(
    app: Path, dest: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = app / "db" / "app.db"

    def swap() -> None:
        db.unlink()
        os.mkfifo(db)

    after_scan(monkeypatch, lambda: as_attacker(swap))
    with deadline(20):
        made = create([str(app)], str(dest))
    assert str(db) in made.manifest["changed_during_backup"]  # type: ignore[operator]
    assert made.manifest["snapshots"] == []


def test_a_database_swapped_for_a_link_to_a_root_only_database_after_the_scan(
    app: Path, dest: Path, victim_db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = app / "db" / "app.db"

    def swap() -> None:
        db.unlink()
        db.symlink_to(victim_db)

    after_scan(monkeypatch, lambda: as_attacker(swap))
    before = fingerprint(victim_db)
    made = create([str(app)], str(dest))
    assert MARKER not in archive_bytes(made.path)
    assert str(db) in made.manifest["changed_during_backup"]  # type: ignore[operator]
    assert "not a regular file" in left_out(made)[str(db)]
    assert fingerprint(victim_db) == before


@pytest.mark.parametrize(
    ("memory_limit", "where"),
    [(64 << 20, "snapshot_in_memory"), (0, "snapshot_file"), (0, "snapshot_to_scratch")],
)
def test_a_database_swapped_for_a_link_right_before_sqlite_opens_it(
    app: Path, dest: Path, victim_db: Path, monkeypatch: pytest.MonkeyPatch, memory_limit: int, where: str
) -> None:
    """SQLite opens by name and follows links: the file it holds must be the one that was checked."""
    db = app / "db" / "app.db"

    def swap() -> None:
        db.unlink()
        db.symlink_to(victim_db)

    if where == "snapshot_to_scratch":  # the copy through a staging file, when reading the file is not safe
        monkeypatch.setattr(members_module, "snapshot_file", lambda *_args, **_kwargs: None)
    before_sqlite_opens(monkeypatch, where, lambda: as_attacker(swap))
    before = fingerprint(victim_db)
    made = create([str(app)], str(dest), memory_limit=memory_limit)
    assert MARKER not in archive_bytes(made.path)
    assert str(db) in made.manifest["changed_during_backup"]  # type: ignore[operator]
    assert "replaced" in left_out(made)[str(db)]
    assert made.manifest["snapshots"] == []
    assert fingerprint(victim_db) == before
    assert not [n for n in os.listdir(dest) if n.startswith(".")]


def test_a_databases_directory_swapped_for_a_link_right_before_sqlite_opens_it(
    app: Path, dest: Path, victim_db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLite resolves every directory of the name: a link put in place of one must not lead it to a victim."""
    folder = app / "db"

    def swap() -> None:
        folder.rename(app / "db.old")
        folder.symlink_to(victim_db.parent)

    before_sqlite_opens(monkeypatch, "snapshot_in_memory", lambda: as_attacker(swap))
    made = create([str(app)], str(dest))
    assert MARKER not in archive_bytes(made.path)
    assert str(folder / "app.db") in made.manifest["changed_during_backup"]  # type: ignore[operator]
    assert made.manifest["snapshots"] == []


@pytest.mark.parametrize("side", ["-wal", "-shm"])
def test_a_wal_or_shm_swapped_for_a_link_after_the_scan_leaves_the_database_out(
    app: Path, dest: Path, victim: Path, monkeypatch: pytest.MonkeyPatch, side: str
) -> None:
    db = app / "db" / "app.db"
    extra = Path(str(db) + side)

    def swap() -> None:
        with contextlib.suppress(FileNotFoundError):
            extra.unlink()
        extra.symlink_to(victim)

    after_scan(monkeypatch, lambda: as_attacker(swap))
    before = fingerprint(victim)
    made = create([str(app)], str(dest))
    assert MARKER not in archive_bytes(made.path)
    assert fingerprint(victim) == before  # SQLite as root never opened (nor truncated) it
    assert str(db) in made.manifest["changed_during_backup"]  # type: ignore[operator]
    assert f"its {side} file is not a regular file" in left_out(made)[str(db)]


@pytest.mark.parametrize("side", ["-wal", "-shm"])
def test_a_wal_or_shm_swapped_for_a_link_right_before_sqlite_opens_never_touches_the_victim(
    app: Path, dest: Path, victim: Path, monkeypatch: pytest.MonkeyPatch, side: str
) -> None:
    """The window after _snapshot_member looked at the side files: the victim is neither read nor changed, and
    no set holding anything of it is written (whether the backup then goes on is the next test)."""
    db = app / "db" / "app.db"
    extra = Path(str(db) + side)

    def swap() -> None:
        with contextlib.suppress(FileNotFoundError):
            extra.unlink()
        extra.symlink_to(victim)

    before_sqlite_opens(monkeypatch, "snapshot_in_memory", lambda: as_attacker(swap))
    before = fingerprint(victim)
    with contextlib.suppress(BackupError):
        made = create([str(app)], str(dest))
        assert MARKER not in archive_bytes(made.path)
    assert fingerprint(victim) == before


@pytest.mark.parametrize("swap_kind", ["wal-link", "shm-link", "db-fifo"])
def test_a_swap_in_the_window_before_sqlite_opens_leaves_only_that_database_out(
    app: Path, dest: Path, victim: Path, monkeypatch: pytest.MonkeyPatch, swap_kind: str
) -> None:
    db = app / "db" / "app.db"

    def swap() -> None:
        if swap_kind == "db-fifo":
            db.unlink()
            os.mkfifo(db)
            return
        extra = Path(str(db) + ("-wal" if swap_kind == "wal-link" else "-shm"))
        with contextlib.suppress(FileNotFoundError):
            extra.unlink()
        extra.symlink_to(victim)

    before_sqlite_opens(monkeypatch, "snapshot_in_memory", lambda: as_attacker(swap))
    with deadline(30):
        made = create([str(app)], str(dest))
    assert str(db) in made.manifest["changed_during_backup"]  # type: ignore[operator]
    assert str(app / "data" / "notes.txt").lstrip("/") in members_of(made.path)


def test_a_database_swapped_for_a_link_to_a_missing_file_makes_root_create_nothing(
    app: Path, dest: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLite opens by name: with the usual read-write-create mode, root would create the link's target (an empty
    /etc/nologin locks every user out)."""
    db = app / "db" / "app.db"
    nologin = tmp_path / "etc" / "nologin"
    nologin.parent.mkdir()

    def swap() -> None:
        db.unlink()
        db.symlink_to(nologin)

    before_sqlite_opens(monkeypatch, "snapshot_in_memory", lambda: as_attacker(swap))
    made = create([str(app)], str(dest))
    assert not os.path.lexists(nologin)
    assert str(db) in made.manifest["changed_during_backup"]  # type: ignore[operator]


# -- 2. a path given that is itself a link ------------------------------------------------------------------------


@pytest.mark.parametrize("who", ["the link belongs to a user", "its directory is writable by everyone"])
def test_a_path_that_is_a_link_others_could_change_is_not_followed(
    base: Path, dest: Path, tmp_path: Path, who: str
) -> None:
    """A user who could put or change the link would choose what root archives (their link to /root, say)."""
    secret = tmp_path / "root-only"
    secret.mkdir()
    (secret / "key").write_bytes(MARKER)
    shared = base / "shared"
    shared.mkdir()
    link = shared / "data"
    link.symlink_to(secret)
    if who.startswith("the link"):
        os.lchown(link, NOBODY, NOBODY)
    else:
        os.chmod(shared, 0o777)
    refused = (
        r"^path (.*)/shared/data goes through the symbolic link \1/shared/data, which others could have changed \("
    )
    with pytest.raises(BackupError, match=refused):
        create([str(link)], str(dest))
    assert catalog(str(dest)) == []


def test_a_path_that_is_a_link_to_a_directory_is_archived_recorded_and_restored(
    base: Path, dest: Path, tmp_path: Path
) -> None:
    real = base / "releases" / "7"
    (real / "sub").mkdir(parents=True)
    (real / "config.toml").write_text("version = 7\n")
    (real / "sub" / "data.bin").write_bytes(os.urandom(5000))
    link = base / "current"
    link.symlink_to("releases/7")

    made = create([str(link)], str(dest))
    assert made.manifest["links"] == [{"path": str(link), "target": str(real)}]
    assert made.manifest["paths"] == [str(link)]
    members = members_of(made.path)
    assert members[str(link / "config.toml").lstrip("/")] == b"version = 7\n"
    assert str(real).lstrip("/") + "/config.toml" not in members
    assert verify(made.path).ok

    drill = tmp_path / "drill"
    done = restore(made.path, dest_root=str(drill))
    restored = drill / str(link).lstrip("/")
    assert done.files == 2
    assert (restored / "config.toml").read_text() == "version = 7\n"
    assert (restored / "sub" / "data.bin").read_bytes() == (real / "sub" / "data.bin").read_bytes()

    # In place: the content goes back into what the link leads to; the link stays a link.
    (real / "config.toml").write_text("damaged\n")
    (real / "sub" / "data.bin").unlink()
    done = restore(made.path)
    assert [s.target for s in done.swaps] == [str(real)]
    assert os.readlink(link) == "releases/7"
    assert (link / "config.toml").read_text() == "version = 7\n"
    assert (link / "sub" / "data.bin").exists()
    assert commit(done.restore_id) is True


def test_a_dangling_link_given_as_a_path_fails_in_one_sentence(base: Path, dest: Path) -> None:
    link = base / "current"
    link.symlink_to(base / "releases" / "gone")
    with pytest.raises(BackupError) as caught:
        create([str(link)], str(dest))
    assert str(caught.value) == f"path {link} is a symbolic link to {base}/releases/gone, which does not exist"
    assert os.listdir(dest) == []


# -- 3. a verified set restores -------------------------------------------------------------------------------------


def test_links_leading_out_of_the_tree_are_restored_in_place_as_links(app: Path, dest: Path) -> None:
    (app / "localtime").symlink_to("/usr/share/zoneinfo/UTC")
    (app / "data" / "current").symlink_to("../../releases/42")
    made = create([str(app)], str(dest))
    assert verify(made.path).ok
    (app / "localtime").unlink()
    (app / "localtime").symlink_to("/etc/hostname")
    (app / "data" / "current").unlink()
    done = restore(made.path)
    assert os.readlink(app / "localtime") == "/usr/share/zoneinfo/UTC"
    assert os.readlink(app / "data" / "current") == "../../releases/42"
    assert commit(done.restore_id) is True
    assert sorted(os.listdir(app.parent)) == ["app"]


def test_a_set_of_a_tree_and_a_link_into_it_restores_in_place(base: Path, dest: Path) -> None:
    tree = base / "app"
    (tree / "current").mkdir(parents=True)
    (tree / "current" / "f.txt").write_text("f\n")
    (tree / "top.txt").write_text("top\n")
    link = base / "app-current"
    link.symlink_to(tree / "current")
    made = create([str(tree), str(link)], str(dest))
    assert verify(made.path).ok
    (tree / "top.txt").write_text("damaged\n")
    done = restore(made.path)
    assert (tree / "top.txt").read_text() == "top\n"
    commit(done.restore_id)


def test_a_partial_restore_never_writes_through_a_directory_swapped_for_a_link_after_planning(
    base: Path, dest: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = base / "app"
    (app / "uploads" / "user1").mkdir(parents=True)
    (app / "uploads" / "user1" / "hook.sh").write_text("echo run as root\n")
    chown_tree(app / "uploads")
    made = create([str(app)], str(dest))
    system = tmp_path / "etc" / "profile.d"  # root-only
    system.mkdir(parents=True)
    before = sorted(os.listdir(system))
    user_dir = app / "uploads" / "user1"

    def swap() -> None:
        user_dir.rename(app / "uploads" / "user1.old")
        user_dir.symlink_to(system)

    real_plan = restore_module.plan

    def plan(*args: object, **kwargs: object) -> list[restore_module.Unit]:
        units = real_plan(*args, **kwargs)  # type: ignore[arg-type]
        as_attacker(swap)
        return units

    monkeypatch.setattr(restore_module, "plan", plan)
    with contextlib.suppress(RestoreError):
        restore(made.path, only=[str(user_dir / "hook.sh")])
    assert sorted(os.listdir(system)) == before


# -- 4. files that only look like databases -----------------------------------------------------------------------


def _fake_db(path: Path) -> bytes:
    data = b"SQLite format 3\x00" + b"not a database at all, just a header\n" * 200
    path.write_bytes(data)
    return data


def _truncated_db(path: Path, scratch: Path) -> bytes:
    make_db(scratch, mode="delete", rows=500)
    data = scratch.read_bytes()[: 3 * 4096]
    path.write_bytes(data)
    return data


def _corrupt_db(path: Path, scratch: Path) -> bytes:
    make_db(scratch, mode="delete", rows=500)
    data = bytearray(scratch.read_bytes())
    data[2 * 4096 : 2 * 4096 + 64] = b"\xff" * 64  # a b-tree page header: page 1 reads fine
    path.write_bytes(bytes(data))
    return bytes(data)


@pytest.mark.parametrize("kind", ["header-only", "truncated"])
def test_a_file_that_only_starts_like_a_database_is_archived_as_a_plain_file_with_a_note(
    app: Path, dest: Path, tmp_path: Path, kind: str
) -> None:
    path = app / "data" / "cache.db"
    data = _fake_db(path) if kind == "header-only" else _truncated_db(path, tmp_path / "scratch.db")
    made = create([str(app)], str(dest))
    notes = {str(n["path"]): str(n["reason"]) for n in made.manifest["notes"]}  # type: ignore[union-attr]
    assert "starts like a SQLite database but is not one" in notes[str(path)]
    assert members_of(made.path)[str(path).lstrip("/")] == data
    assert [Path(str(s["path"])).name for s in made.manifest["snapshots"]] == ["app.db"]  # type: ignore[union-attr]
    record = next(f for f in made.manifest["files"] if f["path"] == str(path).lstrip("/"))  # type: ignore[union-attr]
    assert "sqlite" not in record and record["size"] == len(data)


@pytest.mark.parametrize("kind", ["header-only", "truncated"])
def test_a_set_holding_a_noted_plain_file_verifies_and_restores(
    app: Path, dest: Path, tmp_path: Path, kind: str
) -> None:
    path = app / "data" / "cache.db"
    data = _fake_db(path) if kind == "header-only" else _truncated_db(path, tmp_path / "scratch.db")
    made = create([str(app)], str(dest))
    checked = verify(made.path)
    assert checked.ok, checked.problems
    restore(made.path, dest_root=str(tmp_path / "drill"))
    assert (tmp_path / "drill" / str(path).lstrip("/")).read_bytes() == data


def test_a_database_damaged_when_backed_up_is_held_faithfully_and_the_set_still_restores(
    app: Path, dest: Path, tmp_path: Path
) -> None:
    path = app / "data" / "broken.db"
    _corrupt_db(path, tmp_path / "scratch.db")
    made = create([str(app)], str(dest))
    checked = verify(made.path)
    assert checked.ok, checked.problems
    member = str(path).lstrip("/")
    assert len(checked.warnings) == 1, checked.warnings
    assert checked.warnings[0].startswith(f"database {member} was already damaged when it was backed up: ")
    drill = tmp_path / "drill"
    restore(made.path, dest_root=str(drill))
    restored = drill / member
    assert restored.read_bytes() == members_of(made.path)[member]


# -- 5. new backup directories are private ------------------------------------------------------------------------


@contextlib.contextmanager
def umask(value: int) -> Iterator[None]:
    old = os.umask(value)
    try:
        yield
    finally:
        os.umask(old)


def test_makedirs_private_makes_every_missing_level_0700_whatever_the_umask(tmp_path: Path) -> None:
    os.chmod(tmp_path, 0o755)
    target = tmp_path / "a" / "b" / "c"
    with umask(0):
        made = safe_fs.makedirs_private(str(target))
    assert made == [str(tmp_path / "a"), str(tmp_path / "a" / "b"), str(target)]
    for path in made:
        assert stat.S_IMODE(os.lstat(path).st_mode) == 0o700, path
    assert stat.S_IMODE(tmp_path.stat().st_mode) == 0o755  # what existed is left as it is
    with umask(0o777):
        assert safe_fs.makedirs_private(str(target / "d")) == [str(target / "d")]
    assert stat.S_IMODE((target / "d").stat().st_mode) == 0o700


def test_makedirs_private_refuses_a_link_planted_where_a_level_is_missing(base: Path) -> None:
    (base / "elsewhere").mkdir(mode=0o755)
    os.chmod(base, 0o777)
    real_mkdir = os.mkdir

    def racing_mkdir(name: str, mode: int = 0o777, *, dir_fd: int | None = None) -> None:
        if name == "backups":  # the attacker wins the race for this level
            as_attacker(lambda: os.symlink(base / "elsewhere", base / "backups"))
        real_mkdir(name, mode, dir_fd=dir_fd)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(os, "mkdir", racing_mkdir)
        with pytest.raises(OSError):
            safe_fs.makedirs_private(str(base / "backups" / "daily"))
    assert os.listdir(base / "elsewhere") == []
    assert stat.S_IMODE((base / "elsewhere").stat().st_mode) == 0o755


def test_backup_create_module_makes_a_missing_dest_and_its_parents_0700_under_umask_0(
    app: Path, tmp_path: Path, run_module: Callable[..., dict[str, Any]]
) -> None:
    os.chmod(tmp_path, 0o755)
    dest = tmp_path / "var" / "backups" / "daily"
    with umask(0):
        result = run_module(backup_create, {"paths": [str(app)], "dest": str(dest)})
    assert not result.get("failed"), result
    for path in (tmp_path / "var", tmp_path / "var" / "backups", dest):
        assert stat.S_IMODE(path.stat().st_mode) == 0o700, path
    for name in os.listdir(dest):
        assert stat.S_IMODE((dest / name).stat().st_mode) == 0o600, name
    assert Path(result["path"]).parent == dest


# -- 6. deep and wide trees ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def deep_set(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Created, int, int]]:
    """A set of a tree 3000 directories deep, made once; with this process's open descriptors before and after."""
    base = Path(tempfile.mkdtemp(prefix="selfhost-dr-deep-"))
    dest = tmp_path_factory.mktemp("deep-backups")
    try:
        deep_tree(base / "app", 3000)
        fds = fd_count()
        made = create([str(base / "app")], str(dest))
        yield made, fds, fd_count()
    finally:
        safe_fs.remove_path(str(base))  # shutil.rmtree (and so pytest) recurses once per level


def test_a_tree_3000_levels_deep_is_archived_without_a_crash_or_leaked_descriptors(
    deep_set: tuple[Created, int, int],
) -> None:
    made, fds_before, fds_after = deep_set
    assert fds_after == fds_before
    files = made.manifest["files"]
    assert made.manifest["totals"]["dirs"] == 3001  # type: ignore[index]
    leaf = next(f for f in files if str(f["path"]).endswith("/leaf.txt"))  # type: ignore[union-attr]
    assert str(leaf["path"]).count("/d") == 3000
    assert leaf["size"] == len(b"the bottom\n")


def test_a_set_of_a_tree_3000_levels_deep_verifies_in_reasonable_time(deep_set: tuple[Created, int, int]) -> None:
    made = deep_set[0]
    code = textwrap.dedent(
        """
        import sys
        from ansible_collections.selfhost.dr.plugins.module_utils.sets.verify import verify
        result = verify(sys.argv[1], record=False)
        print("ok" if result.ok else result.problems)
        """
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT / ".cache" / "collections"))
    try:
        done = subprocess.run(
            [sys.executable, "-c", code, made.path], capture_output=True, text=True, env=env, timeout=10
        )
    except subprocess.TimeoutExpired:
        pytest.fail("verify of a 3000-level tree did not finish in 10 s (a linear walk takes about 1 s)")
    assert done.stdout.strip() == "ok", done.stderr


def test_a_database_deep_in_a_tree_does_not_fail_the_backup(app: Path, dest: Path, tmp_path: Path) -> None:
    deep = app / "uploads" / "/".join(["n" * 60] * 9)
    deep.mkdir(parents=True)
    make_db(tmp_path / "short.db", mode="wal", rows=20)
    os.rename(tmp_path / "short.db", deep / "deep.db")
    assert len(str(deep / "deep.db")) > 512
    made = create([str(app)], str(dest))
    assert str(deep / "deep.db").lstrip("/") in members_of(made.path)


def test_a_tree_deeper_than_the_descriptor_limit_is_archived_or_refused_in_one_sentence(base: Path, dest: Path) -> None:
    deep_tree(base / "app", 1500)
    report = base / "report.json"

    def work() -> None:
        import resource

        resource.setrlimit(resource.RLIMIT_NOFILE, (1024, 1024))
        try:
            made = create([str(base / "app")], str(dest))
            outcome = {"ok": True, "dirs": made.manifest["totals"]["dirs"]}  # type: ignore[index]
        except BackupError as exc:
            outcome = {"ok": False, "error": str(exc), "kind": "BackupError"}
        except Exception as exc:  # the point of the test: anything but a BackupError
            outcome = {"ok": False, "error": str(exc), "kind": type(exc).__name__}
        report.write_text(json.dumps(outcome))

    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            work()
            code = 0
        finally:
            os._exit(code)
    os.waitpid(pid, 0)
    outcome = json.loads(report.read_text())
    assert outcome == {"ok": True, "dirs": 1501} or outcome["kind"] == "BackupError", outcome


def test_a_directory_of_10000_files_is_archived_and_verified(base: Path, dest: Path) -> None:
    wide = base / "app"
    wide.mkdir()
    for n in range(10000):
        fd = os.open(wide / f"f{n:05d}", os.O_WRONLY | os.O_CREAT, 0o644)
        os.write(fd, b"%d\n" % n)
        os.close(fd)
    fds = fd_count()
    made = create([str(wide)], str(dest))
    assert fd_count() == fds
    assert made.manifest["totals"]["files"] == 10000  # type: ignore[index]
    assert verify(made.path, record=False).ok


# -- the catalog stays clean ---------------------------------------------------------------------------------------


def test_swaps_leave_nothing_behind_in_the_backup_directory(
    app: Path, dest: Path, victim: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def swap() -> None:
        (app / "data" / "notes.txt").unlink()
        (app / "data" / "notes.txt").symlink_to(victim)
        (app / "db" / "app.db").unlink()
        os.mkfifo(app / "db" / "app.db")

    after_scan(monkeypatch, lambda: as_attacker(swap))
    made = create([str(app)], str(dest), memory_limit=0)
    assert [s["name"] for s in catalog(str(dest))] == [made.name]
    assert leftovers(str(dest)) == []
    assert sorted(os.listdir(dest)) == sorted([made.name, made.name + ".sha256", made.name + ".manifest.json"])


def test_a_user_owned_link_behind_a_root_link_is_never_followed(base: Path, dest: Path, tmp_path: Path) -> None:
    """current -> releases/42 is root's; releases/ is a user's, who makes 42 a link to a root-only directory: the
    backup must not archive it, the restore must not swap the set into it."""
    secret = tmp_path / "cron.d"
    secret.mkdir()
    (secret / "job").write_bytes(MARKER)
    releases = base / "releases"
    (releases / "42").mkdir(parents=True)
    (releases / "42" / "app.txt").write_text("release 42\n")
    current = base / "current"
    current.symlink_to(releases / "42")
    made = create([str(current)], str(dest))  # followed while releases/ is root's
    os.chown(releases, NOBODY, NOBODY)

    def swap() -> None:
        (releases / "42").rename(releases / "42.old")
        (releases / "42").symlink_to(secret)

    as_attacker(swap)
    with pytest.raises(BackupError, match=r"goes through the symbolic link .*/releases/42, which others could have"):
        create([str(current)], str(dest))
    with pytest.raises(RestoreError, match=r"goes through the symbolic link .*/releases/42, which others could have"):
        restore(made.path)
    assert sorted(os.listdir(secret)) == ["job"] and (secret / "job").read_bytes() == MARKER
