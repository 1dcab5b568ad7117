"""Attacks on undo and interruption: commit and roll back in the wrong order, on what no restore recorded, and
SIGKILL at every step of a restore, a commit, a roll back and a backup.

Every kill happens in a forked child that installs one kill point (the Nth call of a function, before or after
it runs) and SIGKILLs itself there; the test process then plays "the next run on the host" and checks the tree is
exactly what it was before the restore, or exactly what the set holds, never a mix, and that nothing the runs
made is left behind except what a pending restore owns.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import stat
import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from ansible_collections.selfhost.dr.plugins.module_utils import safe_fs
from ansible_collections.selfhost.dr.plugins.module_utils._common import BackupError, JournalError, RestoreError
from ansible_collections.selfhost.dr.plugins.module_utils.apps import tenement_instance as instance_backup
from ansible_collections.selfhost.dr.plugins.module_utils.engine import journal
from ansible_collections.selfhost.dr.plugins.module_utils.engine import swap as restore
from ansible_collections.selfhost.dr.plugins.module_utils.engine.journal import Journal
from ansible_collections.selfhost.dr.plugins.module_utils.engine.swap import commit, pending, rollback
from ansible_collections.selfhost.dr.plugins.module_utils.sets import codec, members
from ansible_collections.selfhost.dr.plugins.module_utils.sets import create as create_module
from ansible_collections.selfhost.dr.plugins.module_utils.sets.catalog import catalog, leftovers, sweep
from ansible_collections.selfhost.dr.plugins.module_utils.sets.create import Created, create
from ansible_collections.selfhost.dr.plugins.module_utils.sets.verify import verify
from ansible_collections.selfhost.dr.plugins.modules import backup_restore

from .sqlite_helpers import make_db

State = dict[str, tuple[object, ...]]


# -- kill machinery -----------------------------------------------------------------------------------------------


def kill_on_call(owner: object, name: str, n: int, after: bool = False) -> None:
    """Make the Nth call of ``owner.name`` SIGKILL this process, before it runs (or right after, ``after``)."""
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


def in_child(work: Callable[[], object], setup: Callable[[], None] = lambda: None) -> bool:
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
        assert os.WTERMSIG(status) == signal.SIGKILL
        return True
    assert os.WEXITSTATUS(status) == 0, "the child failed before reaching its kill point (see captured stderr)"
    return False


def tree_state(*roots: Path) -> State:
    """Every path under ``roots`` (links not followed) with its type, mode and content or target."""
    seen: State = {}
    for root in roots:
        if not os.path.lexists(root):
            seen[str(root)] = ("missing",)
            continue
        for top, dirs, files in os.walk(root):
            seen[top] = ("dir", stat.S_IMODE(os.lstat(top).st_mode))
            for name in dirs + files:
                path = os.path.join(top, name)
                st = os.lstat(path)
                if stat.S_ISLNK(st.st_mode):
                    seen[path] = ("link", os.readlink(path))
                elif stat.S_ISREG(st.st_mode):
                    seen[path] = ("file", stat.S_IMODE(st.st_mode), Path(path).read_bytes())
    return seen


def ours(*parents: Path) -> list[str]:
    """What restores leave beside their targets: staging trees, safety copies, undone trees."""
    return sorted(str(p / n) for p in parents for n in os.listdir(p) if ".selfhost-dr-" in n)


def recover_as_next_run() -> list[dict[str, object]]:
    with Journal() as j:
        return restore.recover(j)


# -- fixtures -----------------------------------------------------------------------------------------------------


class Host:
    """Two restored trees (two swaps per restore), the set of them, and what they hold before and after."""

    def __init__(self, tmp_path: Path) -> None:
        self.srv = tmp_path / "srv" / "app"
        self.etc = tmp_path / "etc" / "app"
        (self.srv / "data" / "uploads").mkdir(parents=True)
        self.etc.mkdir(parents=True)
        (self.srv / "data" / "notes.txt").write_text("notes as backed up\n")
        (self.srv / "data" / "uploads" / "a.bin").write_bytes(os.urandom(3000))
        (self.srv / "data" / "uploads" / "b.bin").write_bytes(os.urandom(3000))
        (self.srv / "current").symlink_to("data/notes.txt")
        make_db(self.srv / "data" / "app.db", mode="delete", rows=30)
        (self.etc / "app.conf").write_text("conf as backed up\n")
        os.chmod(self.etc / "app.conf", 0o640)
        self.backups = tmp_path / "backups"
        self.backups.mkdir()
        self.made = create([str(self.srv), str(self.etc)], str(self.backups))
        # A database is stored as a snapshot (other bytes than the live file): what the set holds, byte for byte,
        # is what a restore puts in place.
        assert commit(restore.restore(self.made.path, stamp="INIT").restore_id) is True
        self.restored = tree_state(self.srv, self.etc)
        # What is there when the restore runs: changed since the backup.
        (self.srv / "data" / "notes.txt").write_text("notes changed since\n")
        (self.srv / "data" / "uploads" / "a.bin").unlink()
        (self.srv / "data" / "new.txt").write_text("written after the backup\n")
        (self.etc / "app.conf").write_text("conf changed since\n")
        self.before = tree_state(self.srv, self.etc)
        assert self.before != self.restored

    @property
    def parents(self) -> tuple[Path, Path]:
        return self.srv.parent, self.etc.parent

    def now(self) -> State:
        return tree_state(self.srv, self.etc)


@pytest.fixture
def host(tmp_path: Path) -> Host:
    return Host(tmp_path)


def swapped_restore(host: Host) -> str:
    done = restore.restore(host.made.path)
    assert host.now() == host.restored
    return done.restore_id


def check_next_run(host: Host) -> None:
    """After a kill: the next run leaves the tree whole (before, or restored with a pending record that owns its
    safety copies), and a roll back then gives exactly what was there before, with nothing left behind."""
    recover_as_next_run()
    waiting = pending()
    if waiting:
        assert [w["state"] for w in waiting] == ["swapped"]
        assert host.now() == host.restored, "a pending restore, but the tree is not what the set holds"
        owned = sorted(str(s["safety"]) for s in waiting[0]["swaps"] if s["safety"])  # type: ignore[union-attr]
        assert ours(*host.parents) == owned
        assert rollback(str(waiting[0]["restore_id"])) is True
    assert host.now() == host.before, "neither the state before the restore nor the restored state"
    assert ours(*host.parents) == []
    assert pending() == []


# -- 7. commit and roll back: order, repetition, and what the journal never recorded ----------------------------


def test_commit_and_rollback_repeat_as_no_ops_and_refuse_the_wrong_order(host: Host) -> None:
    first = swapped_restore(host)
    assert commit(first) is True
    assert commit(first) is False
    assert host.now() == host.restored and ours(*host.parents) == []
    with pytest.raises(JournalError) as caught:
        rollback(first)
    assert (
        str(caught.value) == f"restore {first} was committed; its safety copies are gone and it cannot be rolled back"
    )

    second = swapped_restore(host)
    assert rollback(second) is True
    assert rollback(second) is False
    assert ours(*host.parents) == []
    with pytest.raises(JournalError) as caught:
        commit(second)
    assert str(caught.value) == f"restore {second} was rolled back; there is nothing to commit"
    assert rollback(second, check=True) is False and commit(first, check=True) is False


@pytest.mark.parametrize(
    ("restore_id", "words"),
    [
        ("../../../etc/passwd", "is not a restore id"),
        ("20261122T040000Z-1a2b3c4d/../../x", "is not a restore id"),
        ("20261122T040000Z-1a2b3c4d", "no restore 20261122T040000Z-1a2b3c4d is recorded on this host"),
    ],
)
def test_ids_the_journal_never_recorded_are_refused(host: Host, restore_id: str, words: str) -> None:
    for act in (commit, rollback):
        with pytest.raises(JournalError, match=words):
            act(restore_id)
    assert host.now() == host.before


@pytest.mark.parametrize("state", ["committed", "rolled_back"])
def test_the_module_deletes_nothing_for_swaps_the_journal_never_recorded(
    host: Host, tmp_path: Path, state: str, run_module: Callable[..., dict[str, Any]]
) -> None:
    rid = swapped_restore(host)
    recorded = restore.Journal().load(rid).swaps[0]
    precious = tmp_path / "precious"
    (precious / "inner").mkdir(parents=True)
    (precious / "inner" / "keep.txt").write_text("keep\n")
    keep = tree_state(precious)
    attempts = [
        {"target": str(precious), "safety": str(precious / "inner")},  # nothing recorded at all
        {"target": recorded.target, "safety": str(precious)},  # a real target, an arbitrary "safety copy"
        {"target": str(precious), "safety": recorded.safety_path},  # a real safety copy, another target
        {"target": recorded.target, "safety": ""},  # a real target, its safety copy left unnamed
    ]
    for swap in attempts:
        result = run_module(backup_restore, {"state": state, "swaps": [swap]})
        assert result.get("failed") is True, (swap, result)
        assert "is not a safety copy recorded by a restore on this host; nothing was changed" in str(result["msg"])
        assert "\n" not in str(result["msg"])
        assert tree_state(precious) == keep
        assert host.now() == host.restored
        assert pending()[0]["state"] == "swapped"
    result = run_module(backup_restore, {"state": state, "restore_id": "../precious"})
    assert result.get("failed") is True and "is not a restore id" in str(result["msg"])
    assert tree_state(precious) == keep
    # The swaps it did return still work, once; repeating changes nothing.
    swaps = [{"target": s.target, "safety": s.safety_path} for s in restore.Journal().load(rid).swaps]
    assert run_module(backup_restore, {"state": state, "swaps": swaps})["changed"] is True
    assert run_module(backup_restore, {"state": state, "swaps": swaps})["changed"] is False
    assert host.now() == (host.restored if state == "committed" else host.before)
    assert ours(*host.parents) == []


def replace_safety_copy(host: Host, tmp_path: Path, replacement: str, which: int) -> tuple[str, Path, Path]:
    """A swapped restore whose safety copy number ``which`` was moved away and replaced by a directory or by a
    link to a victim directory."""
    rid = swapped_restore(host)
    safety = Path(restore.Journal().load(rid).swaps[which].safety_path)
    safety.rename(tmp_path / "moved-away")
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "precious.txt").write_text("precious\n")
    if replacement == "directory":
        safety.mkdir()
        (safety / "precious.txt").write_text("precious\n")
    else:
        safety.symlink_to(victim)
    return rid, safety, victim


REPLACEMENTS = [("directory", 0), ("link", 0), ("directory", 1), ("link", 1)]
REPLACEMENT_IDS = [f"{kind}-swap{which}" for kind, which in REPLACEMENTS]


@pytest.mark.parametrize(("replacement", "which"), REPLACEMENTS, ids=REPLACEMENT_IDS)
def test_a_safety_copy_replaced_by_something_else_is_never_deleted(
    host: Host, tmp_path: Path, replacement: str, which: int
) -> None:
    rid, safety, victim = replace_safety_copy(host, tmp_path, replacement, which)
    for act in (commit, rollback, commit):
        refused = r"is not the safety copy restore .* made; nothing was (deleted|put back)$"
        with pytest.raises(JournalError, match=refused):
            act(rid)
        assert (victim / "precious.txt").read_text() == "precious\n"
        if replacement == "directory":
            assert (safety / "precious.txt").read_text() == "precious\n"
        else:
            assert os.readlink(safety) == str(victim)
        assert pending()[0]["state"] == "swapped"


@pytest.mark.parametrize(("replacement", "which"), REPLACEMENTS, ids=REPLACEMENT_IDS)
def test_a_refused_rollback_leaves_every_target_whole(host: Host, tmp_path: Path, replacement: str, which: int) -> None:
    rid, _safety, _victim = replace_safety_copy(host, tmp_path, replacement, which)
    with pytest.raises(JournalError):
        rollback(rid)
    assert host.now() == host.restored


def test_a_refused_commit_deletes_no_safety_copy(host: Host, tmp_path: Path) -> None:
    rid, _safety, _victim = replace_safety_copy(host, tmp_path, "directory", 1)
    first = restore.Journal().load(rid).swaps[0].safety_path
    with pytest.raises(JournalError):
        commit(rid)
    assert os.path.isdir(first), "the other safety copy was deleted by a commit that was refused"


def test_rollback_by_swaps_acts_on_the_restore_that_returned_them(
    host: Host, monkeypatch: pytest.MonkeyPatch, run_module: Callable[..., dict[str, Any]]
) -> None:
    suffixes = iter(["00000001", "00000002"])  # the ids' random part, in the order the restores run
    monkeypatch.setattr(journal.secrets, "token_hex", lambda _n: next(suffixes))
    first = restore.restore(host.made.path, stamp="20261122T040000Z")
    assert rollback(first.restore_id) is True
    second = restore.restore(host.made.path, stamp="20261122T040000Z")
    swaps = [s.to_dict() for s in second.swaps]
    result = run_module(backup_restore, {"state": "rolled_back", "swaps": swaps})
    assert result.get("changed") is True, result
    assert host.now() == host.before


# -- 8. kills at every step of a restore --------------------------------------------------------------------------

KILL_POINTS = [
    (journal.Journal, "save", False),
    (journal.Journal, "save", True),
    (os, "rename", False),
    (os, "rename", True),
    (restore.StagingUnpacker, "end", False),
    (os, "sync", True),
]


@pytest.mark.parametrize(
    ("owner", "name", "after"), KILL_POINTS, ids=[f"{n}-{'after' if a else 'before'}" for _o, n, a in KILL_POINTS]
)
def test_a_restore_killed_at_any_step_is_undone_or_kept_whole_by_the_next_run(
    host: Host, owner: object, name: str, after: bool
) -> None:
    kills = 0
    for n in range(1, 40):
        killed = in_child(lambda: restore.restore(host.made.path), lambda n=n: kill_on_call(owner, name, n, after))
        if not killed:
            assert host.now() == host.restored
            assert rollback(str(pending()[0]["restore_id"])) is True
            break
        kills += 1
        check_next_run(host)
    else:
        pytest.fail("the restore never got past its kill points")
    assert kills >= 1
    # and the next restore works as if nothing had happened
    done = restore.restore(host.made.path)
    assert host.now() == host.restored and commit(done.restore_id) is True
    assert ours(*host.parents) == []


@pytest.mark.parametrize(("name", "after"), [("rename", False), ("rename", True), ("unlink", True), ("rmdir", True)])
def test_a_rollback_killed_at_any_step_is_finished_by_the_next_rollback(host: Host, name: str, after: bool) -> None:
    for n in range(1, 60):
        rid = swapped_restore(host)
        killed = in_child(lambda rid=rid: rollback(rid), lambda n=n: kill_on_call(os, name, n, after))
        assert rollback(rid) is killed
        assert host.now() == host.before
        assert pending() == []
        assert ours(*host.parents) == []  # nothing aside, no staging, no safety copy
        if not killed:
            break
    else:
        pytest.fail("the roll back never got past its kill points")


def test_a_rollback_killed_while_removing_the_restored_tree_leaves_nothing_behind(host: Host) -> None:
    rid = swapped_restore(host)
    assert in_child(lambda: rollback(rid), lambda: kill_on_call(os, "rename", 1, after=True))
    assert rollback(rid) is True
    assert host.now() == host.before
    assert ours(*host.parents) == []


@pytest.mark.parametrize(("name", "after"), [("unlink", False), ("unlink", True), ("rmdir", True)])
def test_a_commit_killed_at_any_step_is_finished_by_the_next_commit(host: Host, name: str, after: bool) -> None:
    for n in range(1, 60):
        rid = swapped_restore(host)
        killed = in_child(lambda rid=rid: commit(rid), lambda n=n: kill_on_call(os, name, n, after))
        assert commit(rid) is killed
        assert host.now() == host.restored
        assert ours(*host.parents) == [] and pending() == []
        if not killed:
            break
    else:
        pytest.fail("the commit never got past its kill points")


def test_a_rollback_after_a_killed_commit_never_produces_a_mix(host: Host) -> None:
    rid = swapped_restore(host)
    assert in_child(lambda: commit(rid), lambda: kill_on_call(os, "unlink", 2, after=True))
    try:
        rollback(rid)
    except JournalError:
        assert host.now() == host.restored  # refused: the restored tree stays, the commit can be finished
        return
    assert host.now() == host.before


def test_a_single_file_restore_killed_before_its_staging_is_recorded_leaves_nothing(host: Host) -> None:
    target = host.srv / "data" / "notes.txt"
    assert in_child(
        lambda: restore.restore(host.made.path, only=[str(target)]),
        lambda: kill_on_call(journal.Journal, "save", 2),
    )
    recover_as_next_run()
    assert pending() == []
    assert target.read_text() == "notes changed since\n"
    assert ours(target.parent) == []


def test_a_restored_link_can_be_rolled_back(host: Host) -> None:
    link = host.srv / "current"
    link.unlink()
    link.symlink_to("data/new.txt")
    done = restore.restore(host.made.path, only=[str(link)])
    assert os.readlink(link) == "data/notes.txt"
    assert rollback(done.restore_id) is True
    assert os.readlink(link) == "data/new.txt"
    assert ours(link.parent) == []


def test_a_killed_link_restore_does_not_block_every_later_restore(host: Host) -> None:
    link = host.srv / "current"
    link.unlink()
    link.symlink_to("data/new.txt")
    assert in_child(
        lambda: restore.restore(host.made.path, only=[str(link)]), lambda: kill_on_call(os, "rename", 2, after=True)
    )
    done = restore.restore(host.made.path, only=[str(host.etc)])  # another place entirely
    assert commit(done.restore_id) is True
    assert os.readlink(link) == "data/new.txt"


def test_a_refused_restore_of_a_part_whose_parents_are_missing_changes_nothing(host: Host) -> None:
    safe_fs.remove_path(str(host.srv / "data"))
    before = host.now()
    data = bytearray(Path(host.made.path).read_bytes())
    data[len(data) // 2] ^= 1
    Path(host.made.path).write_bytes(bytes(data))
    with pytest.raises(RestoreError, match=r"^refusing to restore: .* failed verification"):
        restore.restore(host.made.path, only=[str(host.srv / "data" / "uploads")])
    assert host.now() == before


# -- 8. kills while making a set ----------------------------------------------------------------------------------


def live_threads(pid: int) -> list[str]:
    """The threads of ``pid`` that have not exited (a zombie leader's other threads may still be running)."""
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []
    return [t for t in tids if process_state_of(f"/proc/{pid}/task/{t}/stat") not in ("", "Z", "X")]


def process_state_of(stat_path: str) -> str:
    try:
        text = Path(stat_path).read_text()
    except OSError:
        return ""
    return text.rsplit(")", 1)[1].split()[0]


def wait_gone(pid: int, seconds: float = 5.0) -> bool:
    """Wait until every thread of ``pid`` exited (zstd -T0 runs several); True when they did."""
    deadline = time.monotonic() + seconds
    while live_threads(pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    return not live_threads(pid)


@pytest.fixture
def big_tree(tmp_path: Path) -> Path:
    root = tmp_path / "big"
    root.mkdir()
    (root / "random.bin").write_bytes(os.urandom(6 * 1024 * 1024))
    (root / "small.txt").write_text("small\n")
    make_db(root / "app.db", rows=200)
    return root


CREATE_KILLS = [
    ("Pump.write", 8, False),  # mid-stream
    ("snapshot_file", 1, True),  # a database read from its file, its read transaction held (memory_limit 0)
    ("snapshot_to_scratch", 1, True),  # a database staged on disk (memory_limit 0, reading the file refused)
    ("atomic_write", 1, True),  # the manifest sidecar written, the archive not renamed
    ("os.replace", 3, False),  # everything written, the final rename not done
]


def install_create_kill(where: str, n: int, after: bool, pidfile: Path) -> None:
    real_init = codec.Pump.__init__

    def init(self: codec.Pump, *args: object, **kwargs: object) -> None:
        real_init(self, *args, **kwargs)  # type: ignore[arg-type]
        pidfile.write_text(str(self.proc.pid))

    codec.Pump.__init__ = init  # type: ignore[method-assign]
    owners: dict[str, tuple[object, str]] = {
        "Pump.write": (codec.Pump, "write"),
        "snapshot_file": (members, "snapshot_file"),
        "snapshot_to_scratch": (members, "snapshot_to_scratch"),
        "atomic_write": (create_module, "atomic_write"),
        "os.replace": (os, "replace"),
    }
    if where == "snapshot_to_scratch":
        members.snapshot_file = lambda *_args, **_kwargs: None  # type: ignore[assignment]
    owner, name = owners[where]
    kill_on_call(owner, name, n, after)


@pytest.mark.parametrize(("where", "n", "after"), CREATE_KILLS, ids=[k[0] for k in CREATE_KILLS])
def test_a_backup_killed_midway_leaves_no_set_no_compressor_and_is_swept_by_the_next(
    big_tree: Path, tmp_path: Path, where: str, n: int, after: bool
) -> None:
    dest = tmp_path / "backups"
    dest.mkdir()
    pidfile = tmp_path / "zstd.pid"
    assert in_child(
        lambda: create([str(big_tree)], str(dest), memory_limit=0),
        lambda: install_create_kill(where, n, after, pidfile),
    )
    zstd = int(pidfile.read_text())
    assert wait_gone(zstd), "the compressor of the killed backup is still running"
    assert catalog(str(dest)) == []
    kinds = {str(item["kind"]) for item in leftovers(str(dest))}
    assert "partial archive" in kinds
    assert not any(item["in_use"] for item in leftovers(str(dest)))

    made = create([str(big_tree)], str(dest))
    assert [s["name"] for s in catalog(str(dest))] == [made.name]
    assert leftovers(str(dest)) == []
    assert verify(made.path).ok


def test_a_compressor_that_would_outlive_a_killed_backup_dies_with_it(big_tree: Path, tmp_path: Path) -> None:
    """A real zstd exits by itself on the end of its input once the backup dies; one stuck (a slow disk, here a
    stand-in that never reads) must be killed with the backup, not left running."""
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "zstd").write_text("#!/bin/sh\nexec sleep 30\n")
    os.chmod(fake / "zstd", 0o755)
    dest = tmp_path / "backups"
    dest.mkdir()
    pidfile = tmp_path / "zstd.pid"

    def setup() -> None:
        os.environ["PATH"] = f"{fake}:{os.environ['PATH']}"
        install_create_kill("Pump.write", 2, False, pidfile)

    assert in_child(lambda: create([str(big_tree)], str(dest), compression="zstd"), setup)
    stuck = int(pidfile.read_text())
    try:
        assert wait_gone(stuck), "the compressor of the killed backup is still running"
    finally:
        if live_threads(stuck):
            os.kill(stuck, signal.SIGKILL)
    assert catalog(str(dest)) == []
    assert [i["kind"] for i in leftovers(str(dest)) if not i["in_use"]] == [
        "partial archive",
        "snapshot staging directory",
    ]


def test_sidecars_of_a_backup_killed_before_its_final_rename_are_swept_by_the_next(
    big_tree: Path, tmp_path: Path
) -> None:
    dest = tmp_path / "backups"
    dest.mkdir()
    t0 = datetime(2026, 11, 22, 3, 51, tzinfo=UTC)
    killed = lambda: create([str(big_tree)], str(dest), now=lambda: t0)  # noqa: E731
    assert in_child(killed, lambda: kill_on_call(os, "replace", 3))
    orphans = sorted(n for n in os.listdir(dest) if n.endswith((".sha256", ".manifest.json")))
    assert len(orphans) == 2 and catalog(str(dest)) == []  # the killed run's sidecars, and no set
    create([str(big_tree)], str(dest), now=lambda: t0 + timedelta(hours=1))  # another name than the killed run's
    assert leftovers(str(dest)) == []


# -- 9. per-instance copies and staging dirs: swept once dead, never while held -----------------------------------


class FakeTenement:
    """Just enough of TenementClient for backup_instance: one running instance that stops and starts."""

    def __init__(self) -> None:
        self.running = {"demo:alpha"}

    def instances(self) -> set[str]:
        return set(self.running)

    def stop(self, name: str) -> str:
        self.running.discard(name)
        return ""

    def spawn(self, name: str) -> str:
        self.running.add(name)
        return ""

    def wait_healthy(self, name: str, timeout: float = 0, interval: float = 0) -> None:
        assert name in self.running


@pytest.fixture
def tenement_data(tmp_path: Path) -> Path:
    data = tmp_path / "tenement"
    (data / "demo" / "alpha").mkdir(parents=True)
    (data / "demo" / "alpha" / "state.txt").write_text("instance data\n")
    make_db(data / "demo" / "alpha" / "app.db", rows=20)
    return data


def copies(dest: Path) -> list[dict[str, object]]:
    return [i for i in leftovers(str(dest)) if i["kind"] == "per-instance copy"]


def test_a_per_instance_copy_of_a_killed_run_is_swept_by_the_next_backup(tenement_data: Path, tmp_path: Path) -> None:
    dest = tmp_path / "backups"
    dest.mkdir()
    work = lambda: instance_backup.backup_instance(  # noqa: E731
        FakeTenement(),  # type: ignore[arg-type]
        "demo:alpha",
        str(tenement_data),
        str(dest),
        storage_persist=True,
    )
    assert in_child(work, lambda: kill_on_call(instance_backup, "create", 1))
    [left] = copies(dest)
    assert Path(str(left["path"])).name.startswith(".demo-alpha.copy-") and left["in_use"] is False
    assert (Path(str(left["path"])) / "data" / "state.txt").read_text() == "instance data\n"
    made = create([str(tenement_data)], str(dest))
    assert copies(dest) == [] and leftovers(str(dest)) == []
    assert [s["name"] for s in catalog(str(dest))] == [made.name]


def test_a_copy_held_by_a_live_backup_is_never_swept(tenement_data: Path, tmp_path: Path) -> None:
    dest = tmp_path / "backups"
    dest.mkdir()
    go_on_r, go_on_w = os.pipe()
    ready_r, ready_w = os.pipe()

    def hold_then_fail(*_args: object, **_kwargs: object) -> Created:
        os.write(ready_w, b"x")  # the copy is made and held: let the test look
        os.read(go_on_r, 1)
        raise BackupError("stopped by the test")

    def work() -> None:
        with contextlib.suppress(BackupError):
            instance_backup.backup_instance(
                FakeTenement(),  # type: ignore[arg-type]
                "demo:alpha",
                str(tenement_data),
                str(dest),
                storage_persist=True,
            )

    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            instance_backup.create = hold_then_fail  # type: ignore[assignment]
            work()
            code = 0
        finally:
            os._exit(code)
    try:
        assert os.read(ready_r, 1) == b"x"
        [held] = copies(dest)
        assert held["in_use"] is True
        assert sweep(str(dest)) == []
        made = create([str(tenement_data / "demo")], str(dest))  # another backup runs meanwhile
        assert [str(i["path"]) for i in copies(dest)] == [str(held["path"])]
        assert (Path(str(held["path"])) / "data" / "state.txt").exists()
        assert verify(made.path).ok
    finally:
        os.write(go_on_w, b"x")
        _, status = os.waitpid(pid, 0)
        for fd in (go_on_r, go_on_w, ready_r, ready_w):
            os.close(fd)
    assert os.waitstatus_to_exitcode(status) == 0
    assert copies(dest) == []  # the live run removed its own copy


@pytest.mark.parametrize("name", [".demo-alpha.copy-4242", ".files-vm-20261122T035100Z-hot.tar.zst.staging-4242"])
def test_a_leftover_locked_by_this_process_is_left_and_swept_once_released(tmp_path: Path, name: str) -> None:
    dest = tmp_path / "backups"
    (dest / name / "data").mkdir(parents=True)
    (dest / name / "data" / "f.txt").write_text("held\n")
    fd = os.open(dest / name, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        [item] = leftovers(str(dest))
        assert item["in_use"] is True
        assert sweep(str(dest)) == []
        assert (dest / name / "data" / "f.txt").exists()
    finally:
        os.close(fd)
    [item] = sweep(str(dest))
    assert item["path"] == str(dest / name)
    assert os.listdir(dest) == []


def test_sweep_never_follows_a_leftover_name_that_is_a_link(tmp_path: Path) -> None:
    dest = tmp_path / "backups"
    dest.mkdir()
    victim = tmp_path / "victim"
    (victim / "sub").mkdir(parents=True)
    (victim / "sub" / "keep.txt").write_text("keep\n")
    for name in (".demo-alpha.copy-1", ".x.tar.zst.partial-1", ".x.tar.zst.staging-1", ".selfhost-dr-verify-1"):
        (dest / name).symlink_to(victim)
    removed = sweep(str(dest))
    assert len(removed) == 4 and os.listdir(dest) == []
    assert (victim / "sub" / "keep.txt").read_text() == "keep\n"
