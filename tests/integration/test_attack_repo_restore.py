"""Attacks on restoring from a restic repository (engine/repo_restore.py, repos/fetch.py) by someone who holds the
repository's password (and may write its storage): snapshots restic itself makes from a hostile tree, snapshots
crafted object by object (tests/integration/restic_craft.py), and kills at every step of a fetch. Whatever they
do, root writes nothing outside the fetch directory before every check passed, restores nothing the manifest does
not vouch for, and a failed or killed restore leaves the previous data as it was."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import sqlite3
import struct
import subprocess
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import pytest

from ansible_collections.selfhost.dr.plugins.module_utils._common import (
    AppError,
    Error,
    RestoreError,
    RollbackError,
    VerificationError,
)
from ansible_collections.selfhost.dr.plugins.module_utils.apps.base import Facts
from ansible_collections.selfhost.dr.plugins.module_utils.engine import repo_restore, restore, swap
from ansible_collections.selfhost.dr.plugins.module_utils.repos import fetch
from ansible_collections.selfhost.dr.plugins.module_utils.repos.restic import Restic
from ansible_collections.selfhost.dr.plugins.module_utils.sets.manifest import MANIFEST_MEMBER, MAX_MANIFEST

from . import restic_craft
from . import test_repo_restore as base
from .test_repo_restore import Tree, _backup, _journal_leftovers, _restore

tree, local = base.tree, base.local  # the same fixtures

pytestmark = pytest.mark.skipif(shutil.which("restic") is None, reason="restic is not installed (scripts/bootstrap)")

_ACL_USER_OBJ, _ACL_USER, _ACL_GROUP_OBJ, _ACL_MASK, _ACL_OTHER = 0x01, 0x02, 0x04, 0x10, 0x20
_NOBODY = 0xFFFFFFFF


def _acl(*entries: tuple[int, int, int]) -> bytes:
    """A POSIX ACL as the kernel stores it in ``system.posix_acl_*`` (version 2, then tag, perm, id)."""
    return struct.pack("<I", 2) + b"".join(struct.pack("<HHI", *e) for e in entries)


def _grant(uid: int) -> bytes:
    return _acl(
        (_ACL_USER_OBJ, 7, _NOBODY), (_ACL_USER, 7, uid), (_ACL_GROUP_OBJ, 0, _NOBODY), (_ACL_MASK, 7, _NOBODY),
        (_ACL_OTHER, 0, _NOBODY),
    )  # fmt: skip


@pytest.mark.skipif(os.geteuid() != 0, reason="sets trusted and ACL attributes")
def test_a_snapshot_cannot_restore_acls_or_attributes_on_directories_the_manifest_does_not_list(
    tmp_path: Path, tree: Path, local: Restic
) -> None:
    """A directory's default ACL is inherited by every file the application creates in it later: a snapshot that
    carries one (restic keeps extended attributes) would hand uid 4242 the application's future secrets, though
    the manifest lists the directory as 0700 and a set never restores an attribute."""
    app = Tree(tree)
    private = tree / "private"
    os.chmod(private, 0o700)
    _backup(app, local, tmp_path / "backups")  # the manifest: private is 0700, root's
    os.setxattr(private, "system.posix_acl_default", _grant(4242))
    os.setxattr(private, "trusted.planted", b"1")
    os.setxattr(tree / "web", "user.planted", b"1")
    # The attacker's snapshot: the same tree and manifest, the attributes added (restic backs them up).
    stage = tmp_path / "backups" / ".selfhost-dr-repo" / "tenement"
    subprocess.run(
        ["restic", "backup", "--host", os.uname().nodename, "--tag", "selfhost-dr", "--tag", "app=tenement",
         "--exclude-file", str(stage / "excludes.txt"), str(stage), str(tree)],
        env=local.environment(), check=True, capture_output=True,
    )  # fmt: skip
    shutil.rmtree(tree)  # the server lost its data; the restore brings back the snapshot
    _restore(Tree(tree), local, tmp_path)
    assert os.listxattr(tree / "private") == []
    assert os.listxattr(tree / "web") == []
    (tree / "private" / "new-secret").write_text("made by the application after the restore")
    assert os.listxattr(tree / "private" / "new-secret") == []
    assert _journal_leftovers(tree.parent) == []


# -- crafted snapshots --------------------------------------------------------------------------------------------


def _crafted(restic: Restic, snapshot: str, edit: Callable[[str, restic_craft.Tree], bool], towards: str) -> str:
    return restic_craft.Crafter(restic).rewrite(snapshot, edit, towards)


def _node(name: str, kind: str, **fields: object) -> dict[str, object]:
    mode = {"dir": 0o755 | 1 << 31, "symlink": 0o777 | 1 << 27, "file": 0o644, "chardev": 0o600 | 1 << 26 | 1 << 21}[
        kind
    ]
    node: dict[str, object] = {"name": name, "type": kind, "mode": mode, "mtime": "2026-01-01T00:00:00Z"}
    node.update({"atime": node["mtime"], "ctime": node["mtime"], "uid": 0, "gid": 0, "user": "root", "group": "root"})
    node.update(fields)
    return node


def test_a_name_twice_a_link_then_a_directory_is_refused_before_restic_writes(
    tmp_path: Path, tree: Path, local: Restic
) -> None:
    """restic restores a tree's nodes in order: a link ``1`` to /somewhere, then a directory ``1`` whose files it
    would write through the link. The listing is checked before restic runs."""
    app = Tree(tree)
    snapshot = _backup(app, local, tmp_path / "backups")
    outside = tmp_path / "outside"
    outside.mkdir()
    web = f"{tree}/web"

    def edit(path: str, found: restic_craft.Tree) -> bool:
        if path != web:
            return False
        found["nodes"].insert(0, _node("1", "symlink", linktarget=str(outside)))
        return True

    _crafted(local, snapshot, edit, web)
    before = base._state(tree)
    app.calls.clear()
    with pytest.raises(VerificationError, match=rf"it holds {web}/1 twice \(restic would write through the first\)"):
        _restore(app, local, tmp_path)
    assert list(outside.iterdir()) == [] and app.calls == []
    assert base._state(tree) == before and _journal_leftovers(tree.parent) == []


def test_a_snapshot_path_that_reads_as_an_option_is_never_handed_to_restic(tmp_path: Path, tree: Path) -> None:
    """Whoever holds the password can write a snapshot whose paths say where the stage is; the manifest is read
    early from there. A path that restic would read as an option (``--password-command=...``) runs a command as
    root if it reaches restic's command line."""
    given = "a long repository password"  # in restic's environment, where --password-command would run
    restic = Restic(base.Repository("local", str(tmp_path / "restic"), password=given, init=True))
    app = Tree(tree)
    snapshot = _backup(app, restic, tmp_path / "backups")
    marker = tmp_path / "ran"
    evil = f"--password-command=sh -c 'touch {marker}; echo a long repository password' x/.selfhost-dr-repo/tenement"
    restic_craft.Crafter(restic).rewrite(snapshot, lambda _path, _tree: False, str(tree), paths=[evil, str(tree)])
    with pytest.raises(Error):
        _restore(app, restic, tmp_path)
    assert not marker.exists(), "a snapshot's path ran a command"


def test_a_manifest_whose_listing_lies_about_its_size_is_not_read_whole(
    tmp_path: Path, tree: Path, local: Restic
) -> None:
    """The manifest's node says a few KiB; its content is the same MiB 300 times over (a few KiB in the repository).
    ``restic dump`` would hand all of it to a process running as root."""
    app = Tree(tree)
    snapshot = _backup(app, local, tmp_path / "backups")
    crafter = restic_craft.Crafter(local)
    (big,) = crafter.save_blobs([("data", os.urandom(1 << 20))])
    stage = f"{tmp_path}/backups/.selfhost-dr-repo/tenement"

    def edit(path: str, found: restic_craft.Tree) -> bool:
        if path != stage:
            return False
        node = next(n for n in found["nodes"] if n["name"] == MANIFEST_MEMBER)
        node["content"] = [big] * (MAX_MANIFEST // (1 << 20) + 44)
        return True

    crafter.rewrite(snapshot, edit, stage)
    app.calls.clear()
    with pytest.raises(VerificationError, match=r"its manifest is larger than a manifest can be"):
        repo_restore.plan(app, local, base._options(tmp_path), check=True)


# -- kills at every step of a fetch -------------------------------------------------------------------------------


def kill_on_call(owner: object, name: str, n: int, after: bool = False) -> None:
    """Make the Nth call of ``owner.name`` SIGKILL this process, before it runs (or right after, ``after``); as in
    tests/unit/test_attack_interrupts.py."""
    real = getattr(owner, name)
    calls = [0]

    def wrapper(*args: object, **kwargs: object) -> object:
        calls[0] += 1
        if calls[0] == n and not after:
            os.kill(os.getpid(), signal.SIGKILL)
        result = real(*args, **kwargs)
        if calls[0] == n and after:
            os.kill(os.getpid(), signal.SIGKILL)
        return result

    setattr(owner, name, wrapper)


def in_child(work: Callable[[], object], setup: Callable[[], None]) -> bool:
    """Run ``setup`` then ``work`` in a forked child; True when it was SIGKILLed, False when it finished."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 0
        try:
            setup()
            work()
        except BaseException:
            traceback.print_exc()
            code = 1
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        return os.WTERMSIG(status) == signal.SIGKILL
    assert os.WEXITSTATUS(status) == 0, "the child failed before reaching its kill point (see captured stderr)"
    return False


class _Own:
    """A module's own ``os`` (so a kill point on ``os.rename`` of one module leaves every other one alone)."""

    def __init__(self, real: object) -> None:
        self._real = real

    def __getattr__(self, name: str) -> object:
        return getattr(self._real, name)


def _own_os(module: object) -> _Own:
    own = _Own(os)
    module.os = own  # type: ignore[attr-defined]
    return own


def _kill_while_restic_restores(restic: Restic) -> None:
    """SIGKILL this process once ``restic restore`` wrote its first files (restic itself keeps running)."""
    real = restic.restore_into

    def midway(snapshot_id: str, dir_fd: int, includes: list[str]) -> None:
        runner = threading.Thread(target=real, args=(snapshot_id, dir_fd, includes), daemon=True)
        runner.start()
        while runner.is_alive():
            if sum(len(files) for _top, _dirs, files in os.walk(f"/proc/self/fd/{dir_fd}")) >= 3:
                os.kill(os.getpid(), signal.SIGKILL)
            time.sleep(0.005)
        os.kill(os.getpid(), signal.SIGKILL)

    restic.restore_into = midway  # type: ignore[method-assign]


KILLS: dict[str, Callable[[Restic], None]] = {
    "right after the fetch directory is made": lambda r: kill_on_call(_own_os(repo_restore), "mkdir", 1, after=True),
    "while restic restores": _kill_while_restic_restores,
    "while the files restic wrote are checked": lambda r: kill_on_call(fetch, "_hash", 3),
    "moving the checked tree into staging": lambda r: kill_on_call(_own_os(repo_restore), "rename", 2, after=True),
    "moving a database copy into staging": lambda r: kill_on_call(_own_os(repo_restore), "rename", 4, after=True),
    "right after the fetch directory is removed": lambda r: kill_on_call(swap, "remove_scratch", 1, after=True),
    "swapping, the previous data moved aside": lambda r: kill_on_call(_own_os(swap), "rename", 1, after=True),
    "swapping, the snapshot in place": lambda r: kill_on_call(_own_os(swap), "rename", 2, after=True),
}


@pytest.mark.parametrize("when", list(KILLS))
def test_a_restore_killed_at_any_step_leaves_the_previous_data_or_the_snapshot_and_nothing_else(
    tmp_path: Path, tree: Path, local: Restic, when: str
) -> None:
    app = Tree(tree)
    many = tree / "web" / "1" / "many"  # enough for restic to be caught writing
    many.mkdir()
    for n in range(3000):
        (many / f"{n}.bin").write_bytes(os.urandom(2000))
    _backup(app, local, tmp_path / "backups")
    expected = base._state(tree)
    with contextlib.closing(sqlite3.connect(tree / "tenement.db")) as db:
        db.execute("DELETE FROM rows WHERE id > 10")
        db.commit()
    (tree / "web" / "1" / "upload-2.bin").write_bytes(b"changed since")
    (tree / "web" / "1" / "new.bin").write_bytes(b"new")
    before = base._state(tree)
    options = base._options(tmp_path)
    planned = repo_restore.plan(app, local, options)
    assert in_child(lambda: restore.run(app, planned, options), lambda: KILLS[when](local)) is True
    # The next run on the host (a backup, say) finishes or undoes what the kill left.
    swap.recover_interrupted(options.state_dir)
    waiting = swap.pending(options.state_dir)
    if waiting:
        assert [w["state"] for w in waiting] == ["swapped"], waiting
        assert base._state(tree) == expected
        assert swap.rollback(str(waiting[0]["restore_id"]), options.state_dir) is True
    assert base._state(tree) == before, "neither the data before the restore nor the snapshot's"
    assert _journal_leftovers(tree.parent) == []
    assert swap.pending(options.state_dir) == []
    _restore(app, local, tmp_path)  # and the next restore works
    assert base._state(tree) == expected and _journal_leftovers(tree.parent) == []


class _DatabaseFile(Tree):
    """An application whose paths are a database file and a file beside it (as Tomo's: its database, its
    environment file), not a directory."""

    def inspect(self) -> Facts:
        facts = super().inspect()
        facts.paths = [str(self.top / "app.db"), str(self.top / "environment")]
        return facts


def test_an_application_whose_path_is_a_database_file_restores_from_a_repository(tmp_path: Path) -> None:
    """The snapshot holds the database's consistent copy in the stage, never the live file: there is nothing at the
    path itself to walk."""
    top = tmp_path / "var" / "lib" / "tomo"
    top.mkdir(parents=True)
    with contextlib.closing(sqlite3.connect(top / "app.db")) as db:
        db.execute("CREATE TABLE rows (id INTEGER PRIMARY KEY, body TEXT)")
        db.executemany("INSERT INTO rows (body) VALUES (?)", [(f"row {n}",) for n in range(50)])
        db.commit()
    (top / "environment").write_text("SECRET=1\n")
    os.chmod(top / "environment", 0o600)
    restic = _local(tmp_path)
    app = _DatabaseFile(top)
    _backup(app, restic, tmp_path / "backups")
    expected = base._state(top)
    with contextlib.closing(sqlite3.connect(top / "app.db")) as db:
        db.execute("DELETE FROM rows")
        db.commit()
    (top / "environment").write_text("SECRET=2\n")
    _restore(app, restic, tmp_path)
    assert base._state(top) == expected and _journal_leftovers(top) == []


def test_a_snapshot_naming_a_path_this_host_does_not_keep_is_refused_before_anything_is_fetched(
    tmp_path: Path,
) -> None:
    """Whatever the snapshot's manifest names, only where the application keeps its data on this host is restored:
    here the snapshot holds an environment file this host's application does not have; check mode and the run
    refuse it alike, nothing fetched, nothing stopped."""
    top = tmp_path / "var" / "lib" / "tomo"
    top.mkdir(parents=True)
    with contextlib.closing(sqlite3.connect(top / "app.db")) as db:
        db.execute("CREATE TABLE rows (id INTEGER PRIMARY KEY)")
        db.commit()
    (top / "environment").write_text("SECRET=1\n")
    restic = _local(tmp_path)
    _backup(_DatabaseFile(top), restic, tmp_path / "backups")
    app = _DatabaseFile(top)
    app.inspect = lambda: Facts("tenement", "0.2.2", [str(top / "app.db")], [], {}, [], "")  # type: ignore[method-assign]
    (top / "environment").write_text("SECRET=2\n")
    options = base._options(tmp_path)
    with pytest.raises(RestoreError) as in_check:
        repo_restore.plan(app, restic, options, check=True)
    with pytest.raises(RestoreError) as in_run:
        _restore(app, restic, tmp_path)
    assert str(in_run.value) == str(in_check.value)
    assert str(in_run.value).endswith(
        f"would restore {top}/environment, which is not where tenement keeps its data on this host "
        f"({top}/app.db); nothing was changed"
    )
    assert "stop" not in app.calls and (top / "environment").read_text() == "SECRET=2\n"


def _local(tmp_path: Path) -> Restic:
    password = tmp_path / "password"
    password.write_text("a long repository password\n")
    password.chmod(0o600)
    return Restic(base.Repository("local", str(tmp_path / "restic"), password_file=str(password), init=True))


def _backup_as_is(restic: Restic, backups: Path, tree: Path) -> None:
    """A snapshot of the stage and the tree as they are now (the stage's manifest possibly edited by hand)."""
    stage = backups / ".selfhost-dr-repo" / "tenement"
    subprocess.run(
        ["restic", "backup", "--host", os.uname().nodename, "--tag", "selfhost-dr", "--tag", "app=tenement",
         "--exclude-file", str(stage / "excludes.txt"), str(stage), str(tree)],
        env=restic.environment(), check=True, capture_output=True,
    )  # fmt: skip


def test_a_file_that_changed_during_the_backup_does_not_hide_the_rest_of_the_listing(
    tmp_path: Path, tree: Path, local: Restic
) -> None:
    """A size that differs is forgiven for a file the manifest says changed while it was backed up; the files listed
    after it are still checked, in check mode too (which stops at the listing)."""
    app = Tree(tree)
    _backup(app, local, tmp_path / "backups")
    manifest_file = tmp_path / "backups" / ".selfhost-dr-repo" / "tenement" / MANIFEST_MEMBER
    manifest = json.loads(manifest_file.read_text())
    manifest["changed_during_backup"] = [str(tree / "web" / "1" / "upload-0.bin").lstrip("/")]
    manifest_file.write_text(json.dumps(manifest))
    (tree / "web" / "1" / "upload-0.bin").write_bytes(b"other bytes, another size")
    (tree / "web" / "1" / "zz-planted").write_text("not in the manifest")  # listed after upload-0.bin
    _backup_as_is(local, tmp_path / "backups", tree)
    with pytest.raises(VerificationError, match=r"zz-planted, which its manifest does not list"):
        repo_restore.plan(app, local, base._options(tmp_path), check=True)


Edit = tuple[Callable[[str, restic_craft.Tree], bool], str]


def _add(where: str, node: dict[str, object], replace: bool = False) -> Edit:
    def edit(path: str, found: restic_craft.Tree) -> bool:
        if path != where:
            return False
        if replace:
            found["nodes"] = [n for n in found["nodes"] if n["name"] != node["name"]]
        found["nodes"].append(node)
        found["nodes"].sort(key=lambda n: n["name"])
        return True

    return edit, where


CRAFTED = {
    "a node named ..": (
        lambda tree, stage, outside: _add(f"{tree}/web/1", _node("..", "file", content=[], size=0)),
        r"it holds \"\.\.\", which is not a file name",
    ),
    "a node named with a slash": (
        lambda tree, stage, outside: _add(f"{tree}/web", _node("1/evil", "file", content=[], size=0)),
        r"which is not a file name \(a slash in it\)",
    ),
    "a character device": (
        lambda tree, stage, outside: _add(f"{tree}/web/1", _node("tty", "chardev", device=0x0500)),
        r"tty is a chardev, which a backup never holds",
    ),
    "a database copy that is a link out": (
        lambda tree, stage, outside: _add(
            f"{stage}/db{tree}", _node("tenement.db", "symlink", linktarget=str(outside)), replace=True
        ),
        r"the database copy of \S+/tenement.db is not the \d+ bytes the manifest says",
    ),
}


@pytest.mark.parametrize("what", list(CRAFTED))
def test_a_crafted_node_restic_must_not_write_is_refused_before_it_writes(
    tmp_path: Path, tree: Path, local: Restic, what: str
) -> None:
    app = Tree(tree)
    snapshot = _backup(app, local, tmp_path / "backups")
    outside = tmp_path / "outside"
    outside.write_text("root's secret\n")
    stage = f"{tmp_path}/backups/.selfhost-dr-repo/tenement"
    make, refusal = CRAFTED[what]
    _crafted(local, snapshot, *make(str(tree), stage, outside))
    before = base._state(tree)
    app.calls.clear()
    with pytest.raises(VerificationError, match=refusal):
        _restore(app, local, tmp_path)
    assert app.calls == [] and base._state(tree) == before and _journal_leftovers(tree.parent) == []
    assert outside.read_text() == "root's secret\n"


@pytest.mark.skipif(os.geteuid() != 0, reason="plays the application's user")
def test_the_application_cannot_swap_its_own_file_in_for_the_checked_one_while_it_is_stopped(tmp_path: Path) -> None:
    """Tomo's database lies in Tomo's home, which Tomo's user may write: while the application still runs (it runs
    while the snapshot is fetched, and while it is being stopped), it can put a file of its own, or a link, where
    the checked copy waits to be swapped in. The restore must check what it swaps in once the application is
    stopped, not before."""
    top = tmp_path / "home" / "tomo"
    top.mkdir(parents=True)
    with contextlib.closing(sqlite3.connect(top / "app.db")) as db:
        db.execute("CREATE TABLE rows (id INTEGER PRIMARY KEY, body TEXT)")
        db.executemany("INSERT INTO rows (body) VALUES (?)", [(f"row {n}",) for n in range(50)])
        db.commit()
    (top / "environment").write_text("SECRET=1\n")
    restic = _local(tmp_path)
    app = _DatabaseFile(top)
    _backup(app, restic, tmp_path / "backups")
    os.chown(top, 4242, 4242)  # the application's home, its own
    (top / "environment").write_text("SECRET=2\n")
    before = base._state(top)
    outside = tmp_path / "outside"
    outside.write_text("root's\n")

    def stop(log: object = None) -> bool:  # the application's process, as it is being stopped
        app.calls.append("stop")
        home = os.open(top, os.O_RDONLY | os.O_DIRECTORY)  # (the test's own directories are root's alone)
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            try:
                os.setgid(4242)
                os.setuid(4242)
                for name in os.listdir(home):
                    if name.startswith(".app.db.selfhost-dr-restore-"):
                        os.rename(name, "kept-aside", src_dir_fd=home, dst_dir_fd=home)
                        os.symlink(outside, name, dir_fd=home)
            finally:
                os._exit(0)
        os.waitpid(pid, 0)
        os.close(home)
        assert (top / "kept-aside").exists()
        return True

    app.stop = stop  # type: ignore[method-assign]
    with pytest.raises(RestoreError, match=r"was replaced while restoring"):
        _restore(app, restic, tmp_path)
    assert not (top / "app.db").is_symlink()
    assert {k: v for k, v in base._state(top).items() if k in before} == before
    assert outside.read_text() == "root's\n"


def test_a_snapshot_chosen_by_id_must_be_a_selfhost_dr_snapshot_of_this_application(
    tmp_path: Path, tree: Path, local: Restic
) -> None:
    app = Tree(tree)
    _backup(app, local, tmp_path / "backups")
    env = local.environment()

    def snapshot(*argv: str) -> str:
        made = subprocess.run(["restic", "backup", "--json", *argv], env=env, check=True, capture_output=True)
        return next(json.loads(line) for line in made.stdout.splitlines() if b'"summary"' in line)["snapshot_id"]

    plain = snapshot(str(tree))
    other = snapshot("--tag", "selfhost-dr", "--tag", "app=tomo", str(tree))
    stageless = snapshot("--tag", "selfhost-dr", "--tag", "app=tenement", str(tree))
    options = base._options(tmp_path)
    refusals = {
        plain: r"was not made by selfhost-dr \(it has no manifest\)",
        other: r"is a backup of tomo, not of tenement",
        stageless: r"holds no selfhost-dr stage of tenement; it has no manifest",
        "DEADBEEF": r"is not a snapshot id",  # upper case (not plain.upper(): a short id may hold no letter)
        "0" * 65: r"is not a snapshot id",
        "0" * 8: r"has no snapshot 00000000",
    }
    for chosen, refusal in refusals.items():
        with pytest.raises((RestoreError, VerificationError), match=refusal):
            repo_restore.plan(app, local, options, snapshot=chosen, check=True)
    with pytest.raises(RestoreError, match=r"holds no tenement snapshot of ../etc, only of other hosts$"):
        repo_restore.plan(app, local, options, host="../etc", check=True)
    assert app.calls == []


@pytest.mark.skipif(os.geteuid() != 0, reason="mounts a small tmpfs")
def test_a_snapshot_that_cannot_fit_beside_the_live_data_is_refused_before_restic_fills_the_disk(
    tmp_path: Path,
) -> None:
    """The application keeps running while its snapshot is fetched beside its data: a fetch that cannot fit would
    first fill the filesystem the application writes to, then fail."""
    with base.small_filesystem(tmp_path, "1m") as small:
        top = small / "tenement"
        top.mkdir()
        (top / "data.bin").write_bytes(os.urandom(600_000))
        app = Tree(top)
        restic = _local(tmp_path)
        _backup(app, restic, tmp_path / "backups")
        (top / "data.bin").write_bytes(os.urandom(600_000))
        before = base._state(top)
        fetched: list[str] = []
        real = restic.restore_into
        restic.restore_into = lambda *a: fetched.append("restic restore") or real(*a)  # type: ignore[method-assign]
        app.calls.clear()
        with pytest.raises(RestoreError, match=r"needs 0\.\d MiB beside \S+, which has 0\.\d MiB free\); nothing was"):
            _restore(app, restic, tmp_path)
        assert fetched == [] and app.calls == [] and base._state(top) == before
        assert _journal_leftovers(small) == []


def _as_user(directory: Path, act: Callable[[int], None]) -> None:
    """Run ``act(fd of directory)`` as uid 4242 (the application's user), in a child."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)  # (the test's own directories are root's alone)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.setgid(4242)
            os.setuid(4242)
            act(fd)
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    os.close(fd)


def _fd_is(fd: int, st: os.stat_result) -> bool:
    try:
        mine = os.fstat(fd)
    except OSError:
        return False
    return (mine.st_dev, mine.st_ino) == (st.st_dev, st.st_ino)


@pytest.mark.skipif(os.geteuid() != 0, reason="plays the application's user")
def test_a_restored_link_is_made_where_the_running_application_cannot_swap_it(tmp_path: Path) -> None:
    """A path of the snapshot that is a link is made beside its target while the application runs. Made there by
    name, the application's user could replace it with a file of its own before the restore noted what it made,
    and that file would be swapped in as the link."""
    top = tmp_path / "home" / "tomo"
    top.mkdir(parents=True)
    (top / "environment").write_text("SECRET=1\n")
    restic = _local(tmp_path)
    app = _DatabaseFile(top)
    app.inspect = lambda: Facts("tenement", "0.2.2", [str(top / "environment")], [], {}, [], "")  # type: ignore[method-assign]
    _backup(app, restic, tmp_path / "backups")
    app.inspect = lambda: Facts("tenement", "0.2.2", [str(top / "current")], [], {}, [], "")  # type: ignore[method-assign]
    # The snapshot's one path is the link current -> data-v1 (its manifest edited by hand to say so).
    manifest_file = tmp_path / "backups" / ".selfhost-dr-repo" / "tenement" / MANIFEST_MEMBER
    manifest = json.loads(manifest_file.read_text())
    link = str(top / "current")
    manifest["paths"] = [link]
    manifest["files"] = [{"path": link.lstrip("/"), "type": "symlink", "target": "data-v1", "mode": "0777",
                          "uid": 0, "gid": 0, "mtime": 0}]  # fmt: skip
    manifest_file.write_text(json.dumps(manifest))
    os.symlink("data-v1", link)
    stage = manifest_file.parent
    subprocess.run(
        ["restic", "backup", "--host", os.uname().nodename, "--tag", "selfhost-dr", "--tag", "app=tenement",
         "--exclude-file", str(stage / "excludes.txt"), str(stage), link],
        env=restic.environment(), check=True, capture_output=True,
    )  # fmt: skip
    os.unlink(link)
    os.symlink("data-v0", link)
    os.chown(top, 4242, 4242)  # the application's home, its own

    def planted(home: int) -> None:
        for name in os.listdir(home):
            if name.startswith(".current.selfhost-dr-restore-"):
                # the link's inode number is tried for a file of the user's own (ext4 hands freed ones out again)
                old = os.stat(name, dir_fd=home, follow_symlinks=False).st_ino
                os.unlink(name, dir_fd=home)
                for attempt in range(64):
                    spare = f".spare-{attempt}"
                    os.close(os.open(spare, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644, dir_fd=home))
                    if os.stat(spare, dir_fd=home).st_ino == old:
                        break
                os.rename(spare, name, src_dir_fd=home, dst_dir_fd=home)

    held: list[bool] = []

    def attack() -> None:
        staged = next(n for n in os.listdir(top) if n.startswith(".current.selfhost-dr-restore-"))
        st = os.lstat(top / staged)
        held.append(any(_fd_is(int(n), st) for n in os.listdir("/proc/self/fd")))
        _as_user(top, planted)

    real_sync = os.sync
    own = _own_os(swap)
    own.sync = lambda: (attack(), real_sync())  # type: ignore[attr-defined]
    try:
        with pytest.raises(RestoreError, match=r"was replaced while restoring"):
            _restore(app, restic, tmp_path)
    finally:
        swap.os = os  # type: ignore[attr-defined]
    assert held == [True], "the staged link's inode number could be handed to the user's file"
    assert os.readlink(link) == "data-v0"
    _restore(app, restic, tmp_path)  # with nobody in the way, the link is restored
    assert os.readlink(link) == "data-v1" and os.lstat(link).st_uid == 0


def test_a_stop_that_fails_right_before_the_swap_says_the_previous_data_were_not_changed(
    tmp_path: Path, tree: Path, local: Restic
) -> None:
    """The application is stopped only once the snapshot is fetched and checked: when that stop fails (and fails
    again), nothing was swapped, and the sentence must not say that putting the previous data back failed."""
    app = Tree(tree)
    _backup(app, local, tmp_path / "backups")
    (tree / "web" / "1" / "new.bin").write_bytes(b"new")
    before = base._state(tree)

    def stop(log: object = None) -> bool:
        app.calls.append("stop")
        raise AppError("systemctl stop tenement failed: Unit tenement.service is masked")

    app.stop = stop  # type: ignore[method-assign]
    app.calls.clear()
    with pytest.raises(RestoreError) as caught:
        _restore(app, local, tmp_path)
    assert not isinstance(caught.value, RollbackError), caught.value
    assert str(caught.value).endswith(
        "its previous data were not changed, but stopping and starting it again failed too (systemctl stop tenement "
        "failed: Unit tenement.service is masked)"
    )
    assert base._state(tree) == before and _journal_leftovers(tree.parent) == []
