"""A restic repository as selfhost.dr reaches it: real restic (Debian) against a local path and a real S3 store
(SeaweedFS), with the failures an operator meets said in one sentence, and no secret on a command line."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from ansible_collections.selfhost.dr.plugins.module_utils.repos import restic as restic_module
from ansible_collections.selfhost.dr.plugins.module_utils.repos.restic import (
    NoRepositoryError,
    RepoError,
    Repository,
    Restic,
    WrongPasswordError,
    public,
)

from . import s3_store

pytestmark = pytest.mark.skipif(shutil.which("restic") is None, reason="restic is not installed (scripts/bootstrap)")
PASSWORD = "correct horse battery staple"


@pytest.fixture
def password_file(tmp_path: Path) -> Path:
    path = tmp_path / "password"
    path.write_text(PASSWORD + "\n")
    path.chmod(0o600)
    return path


class Spy:
    """A runner that records each restic command line and environment, then runs it."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[str], dict[str, str]]] = []

    def __call__(self, argv: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
        self.calls.append((list(argv), dict(kw["env"])))
        assert kw["stdin"] == subprocess.DEVNULL  # restic never waits for a password on a terminal
        return subprocess.run(argv, **kw)


def test_a_local_repository_is_created_once_and_its_format_is_2(tmp_path: Path, password_file: Path) -> None:
    repo = Repository("local", str(tmp_path / "repo"), password_file=str(password_file), init=True)
    restic = Restic(repo)
    assert restic.version() >= (0, 14, 0)
    assert restic.ensure() is True
    config = restic.config()
    assert restic.ensure() is False  # never initialised again
    assert restic.config()["id"] == config["id"] and config["version"] == 2
    assert restic.snapshots() == []


def test_a_missing_repository_without_init_and_a_wrong_password_are_one_sentence_each(
    tmp_path: Path, password_file: Path
) -> None:
    missing = Restic(Repository("offsite", str(tmp_path / "nothing"), password_file=str(password_file)))
    with pytest.raises(NoRepositoryError) as no:
        missing.ensure()
    assert str(no.value) == (
        f"repository offsite ({tmp_path}/nothing) does not exist: no restic repository is there "
        "(init: true creates one)"
    )
    Restic(Repository("local", str(tmp_path / "repo"), password_file=str(password_file), init=True)).ensure()
    wrong = Restic(Repository("local", str(tmp_path / "repo"), password="not the password"))
    with pytest.raises(WrongPasswordError) as bad:
        wrong.snapshots()
    assert str(bad.value) == (
        f"the password of repository local ({tmp_path}/repo) is wrong: no key of the repository opens with it"
    )


def test_secrets_reach_restic_only_through_its_environment(tmp_path: Path, store: s3_store.Store) -> None:
    spy = Spy()
    repo = Repository("s3", store.location("secrets-test"), password=PASSWORD, env=store.env, init=True)
    restic = Restic(repo, run=spy)
    restic.ensure()
    restic.snapshots()
    assert spy.calls
    for argv, env in spy.calls:
        line = " ".join(argv)
        for secret in (PASSWORD, s3_store.SECRET_KEY):
            assert secret not in line
        assert env["RESTIC_PASSWORD"] == PASSWORD and env["AWS_SECRET_ACCESS_KEY"] == s3_store.SECRET_KEY
        assert "RESTIC_PASSWORD_FILE" not in env


def test_an_s3_store_creates_its_bucket_once_and_refuses_wrong_credentials(
    store: s3_store.Store, password_file: Path
) -> None:
    repo = Repository("s3", store.location("dr-bucket"), password_file=str(password_file), env=store.env)
    with pytest.raises(NoRepositoryError, match="does not exist"):
        Restic(repo).ensure()  # a missing bucket, and no init
    assert Restic(Repository(**{**repo.__dict__, "init": True})).ensure() is True
    assert Restic(repo).ensure() is False
    stolen = Repository(**{**repo.__dict__, "env": {**store.env, "AWS_SECRET_ACCESS_KEY": "guessed"}})
    with pytest.raises(RepoError) as refused:
        Restic(stolen).snapshots()
    assert str(refused.value).startswith(
        f"repository s3 (s3:{store.endpoint}/dr-bucket) refuses the store's credentials"
    )
    assert "guessed" not in str(refused.value)


@pytest.mark.parametrize("userinfo", ["user:s3cr3t-token", f"user:{PASSWORD}"])  # the second, no valid URL
def test_an_unreachable_store_is_not_mistaken_for_a_missing_repository(
    password_file: Path, free_port: int, userinfo: str
) -> None:
    location = f"rest:http://{userinfo}@127.0.0.1:{free_port}/repo"
    repo = Repository("rest", location, password_file=str(password_file), init=True)
    with pytest.raises(RepoError) as unreachable:
        Restic(repo, timeout=120).ensure()  # init: true must not try to create it
    message = str(unreachable.value)
    assert f"repository rest (rest:http://127.0.0.1:{free_port}/repo) " in message
    assert userinfo.split(":")[1] not in message and "user:" not in message
    if "s3cr3t" in userinfo:
        assert "cannot be reached: " in message


@pytest.mark.parametrize(
    ("location", "shown"),
    [
        ("/srv/restic", "/srv/restic"),
        ("sftp:backup@vault:/srv/restic", "sftp:vault:/srv/restic"),
        ("rest:https://u:p4ss@rest.example:8000/host1/", "rest:https://rest.example:8000/host1/"),
        ("s3:https://s3.example.com/bucket/path", "s3:https://s3.example.com/bucket/path"),
        ("rclone:remote:bucket", "rclone:remote:bucket"),
    ],
)
def test_a_location_is_shown_without_its_credentials(location: str, shown: str) -> None:
    assert public(location) == shown


def test_store_variables_are_checked_and_a_password_is_required(tmp_path: Path) -> None:
    with pytest.raises(RepoError, match="has no password"):
        Restic(Repository("x", str(tmp_path)))
    with pytest.raises(RepoError, match="LD_PRELOAD is not a variable"):
        Restic(Repository("x", str(tmp_path), password="pw", env={"LD_PRELOAD": "/tmp/evil.so"}))
    assert restic_module.MIN_VERSION == (0, 14, 0)


def _local(tmp_path: Path, password_file: Path) -> Restic:
    restic = Restic(Repository("local", str(tmp_path / "repo"), password_file=str(password_file), init=True))
    restic.ensure()
    return restic


def test_a_backup_reads_again_only_what_changed_since_its_parent(tmp_path: Path, password_file: Path) -> None:
    restic = _local(tmp_path, password_file)
    data = tmp_path / "data"
    (data / "logs").mkdir(parents=True)
    (data / "big.bin").write_bytes(bytes(range(256)) * 40000)  # 10 MB that never changes
    (data / "logs" / "app.log").write_text("one\n")
    (data / "live.db").write_text("the live database: never stored, its snapshot is")
    excludes = tmp_path / "excludes"
    excludes.write_text(f"{data}/live.db\n")
    tags = ["selfhost-dr", "app=tenement", "kind=hot"]
    first = restic.backup([str(data)], "web1", tags, str(excludes))
    assert first["files_new"] == 2 and first["data_added"] > 1_000_000
    (data / "logs" / "app.log").write_text("one\ntwo\n")
    parent = restic.latest(tags, "web1")
    assert parent is not None and parent["id"].startswith(first["snapshot_id"])
    second = restic.backup([str(data)], "web1", tags, str(excludes), parent=parent["id"])
    assert (second["files_new"], second["files_changed"], second["files_unmodified"]) == (0, 1, 1)
    assert second["data_added"] < 10_000  # the 10 MB file was not stored again
    restored = tmp_path / "restored"
    restic.restore(second["snapshot_id"], str(restored))
    again = restored / data.relative_to("/")  # absolute paths are restored below the target whole
    assert (again / "logs" / "app.log").read_text() == "one\ntwo\n"
    assert not (again / "live.db").exists()
    restic.check()
    restic.forget([first["snapshot_id"]], prune=True)
    assert [s["id"][:8] for s in restic.snapshots(tags)] == [second["snapshot_id"][:8]]


def test_check_names_a_damaged_pack_and_a_second_key_opens_the_repository(tmp_path: Path, password_file: Path) -> None:
    restic = _local(tmp_path, password_file)
    data = tmp_path / "data"
    data.mkdir()
    (data / "f").write_bytes(os.urandom(400_000))  # the data pack is the largest file of the repository
    restic.backup([str(data)], "web1", ["selfhost-dr"])
    escrow = tmp_path / "escrow"
    escrow.write_text("an offline key kept in a safe\n")
    with pytest.raises(RepoError, match=r"can be read by other users \(mode 0644\): chmod 600 it$"):
        restic.add_key(str(escrow))
    escrow.chmod(0o600)
    key = restic.add_key(str(escrow))
    assert key and len(restic.keys()) == 2
    assert Restic(Repository("local", str(tmp_path / "repo"), password_file=str(escrow))).snapshots()
    packs = sorted(p for p in (tmp_path / "repo" / "data").rglob("*") if p.is_file())
    victim = max(packs, key=lambda p: p.stat().st_size)
    blob = bytearray(victim.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    victim.chmod(0o600)
    victim.write_bytes(bytes(blob))
    restic.check()  # the structure is sound: only reading the data finds it
    with pytest.raises(RepoError) as damaged:
        restic.check(read_data_subset="100%")
    assert str(damaged.value).startswith(f"restic check of repository local ({tmp_path}/repo) found damage: ")
    assert victim.name[:8] in str(damaged.value)


def test_a_stale_lock_of_a_killed_run_is_removed_by_unlock(tmp_path: Path, password_file: Path) -> None:
    restic = _local(tmp_path, password_file)
    locks = tmp_path / "repo" / "locks"
    # A backup that waits for ever on its input, killed with SIGKILL while it holds its lock.
    killed = subprocess.Popen(
        ["restic", "backup", "--stdin", "--stdin-filename", "endless"],
        env=restic.environment(),
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while not any("-tmp-" not in p.name for p in locks.iterdir()):  # (restic writes a lock under a temporary name)
        assert killed.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    killed.kill()
    killed.wait()
    assert killed.stdin is not None
    killed.stdin.close()
    (stale,) = [p for p in locks.iterdir() if "-tmp-" not in p.name]
    restic.unlock()
    assert not stale.exists()


def _paths_in(restic: Restic, snapshot: str) -> set[str]:
    return {str(n["path"]) for n in restic.ls(snapshot, 1000)}


def test_a_backup_started_early_waits_for_its_exclude_file_and_an_abandoned_one_saves_nothing(
    tmp_path: Path, password_file: Path
) -> None:
    """``start_backup`` lets restic open the repository while the snapshot is staged: it reads nothing before its
    exclude file is handed over, and killed (abandoned) first it saves no snapshot."""
    restic = Restic(Repository("local", str(tmp_path / "repo"), password_file=str(password_file), init=True))
    restic.ensure()
    tree = tmp_path / "tree"
    tree.mkdir()
    started = restic.start_backup([str(tree)], "web1", ["selfhost-dr"])
    assert started is not None
    time.sleep(2)  # the repository opened and its index loaded meanwhile: restic now waits for the exclude file
    assert started.process.poll() is None
    (tree / "kept").write_text("made while restic waited\n")  # staged after restic started, and read all the same
    (tree / "left-out").write_text("never in the snapshot\n")
    summary = started.finish(f"{tree}/left-out\n".encode())
    paths = _paths_in(restic, str(summary["snapshot_id"]))
    assert f"{tree}/kept" in paths and f"{tree}/left-out" not in paths
    abandoned = restic.start_backup([str(tree)], "web1", ["selfhost-dr"])
    assert abandoned is not None
    for _ in range(200):  # (its key derived, the repository locked: then it waits for its exclude file)
        if restic.call(["list", "locks", "--no-lock"]).out.split():
            break
        time.sleep(0.1)
    else:
        pytest.fail("restic never locked the repository")
    abandoned.abandon()
    assert abandoned.process.returncode is not None
    assert restic.call(["list", "locks", "--no-lock"]).out.split() == []  # stopped, its lock removed
    assert [str(s["id"])[:8] for s in restic.snapshots()] == [str(summary["snapshot_id"])[:8]]
    with pytest.raises(RepoError, match="abandoned"):
        abandoned.finish(b"")


def test_a_backup_started_early_dies_with_the_process_that_started_it(tmp_path: Path, password_file: Path) -> None:
    """A run killed while it stages (SIGKILL: no handler runs) leaves no restic behind, waiting or reading an empty
    exclude file, and no snapshot."""
    repo = Repository("local", str(tmp_path / "repo"), password_file=str(password_file), init=True)
    Restic(repo).ensure()
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "left-out").write_text("never in a snapshot\n")
    code = (
        "import os, sys, time\n"
        "from ansible_collections.selfhost.dr.plugins.module_utils.repos.restic import Repository, Restic\n"
        "repo = Repository('local', sys.argv[1], password_file=sys.argv[2])\n"
        "started = Restic(repo).start_backup([sys.argv[3]], 'web1', ['selfhost-dr'])\n"
        "print(started.process.pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    run = subprocess.Popen(
        [sys.executable, "-c", code, repo.location, str(password_file), str(tree)],
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)},
    )
    assert run.stdout is not None
    child = int(run.stdout.readline())
    time.sleep(1)
    run.kill()
    run.wait()
    for _ in range(100):
        try:
            with open(f"/proc/{child}/stat") as status:
                if status.read().split(") ")[-1].startswith("Z"):
                    break  # (a zombie of the killed run, reaped by init)
        except FileNotFoundError:
            break
        time.sleep(0.05)
    else:
        pytest.fail(f"restic {child} outlived the run that started it")
    assert Restic(repo).snapshots() == []


def test_a_backup_started_early_and_interrupted_while_restic_reads_never_goes_on_alone(
    tmp_path: Path, password_file: Path
) -> None:
    """A SIGTERM turned into an exception while restic reads: restic is stopped (and removes its lock) before the
    run lets go of what it held still for it."""
    restic = Restic(Repository("local", str(tmp_path / "repo"), password_file=str(password_file), init=True))
    restic.ensure()
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "a").write_text("a\n")
    started = restic.start_backup([str(tree)], "web1", ["selfhost-dr"])
    assert started is not None
    real = started.process.communicate
    interrupted: list[bool] = []

    def communicate(*args: Any, **kw: Any) -> Any:
        if not interrupted:
            interrupted.append(True)
            raise KeyboardInterrupt
        return real(*args, **kw)

    started.process.communicate = communicate  # type: ignore[method-assign]
    with pytest.raises(KeyboardInterrupt):
        started.finish(b"")
    assert started.process.returncode is not None
    assert restic.call(["list", "locks", "--no-lock"]).out.split() == []
