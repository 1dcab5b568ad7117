"""Keeping restic repositories sound with the host command: ``selfhost-dr check`` naming a damaged pack, stale locks
of killed runs removed (a live run's never), and escrow keys added from a private file. Real restic, a local
repository and a SeaweedFS S3 one."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from ansible_collections.selfhost.dr.plugins.module_utils import cli
from ansible_collections.selfhost.dr.plugins.module_utils.repos.restic import LockedError, Repository, Restic
from ansible_collections.selfhost.dr.plugins.module_utils.sets.names import default_host

from . import s3_store
from .test_repo_backup import _cli

pytestmark = pytest.mark.skipif(shutil.which("restic") is None, reason="restic is not installed (scripts/bootstrap)")
PASSWORD = "a long repository password"
# One bucket for these tests, a prefix each: every bucket takes volumes of the session's one SeaweedFS (conftest.py).
BUCKET = "dr-maintenance"


def _config(tmp_path: Path, store: s3_store.Store | None = None, s3_required: bool = False) -> Path:
    secrets = tmp_path / "secrets"
    secrets.mkdir(exist_ok=True)
    (secrets / "password").write_text(PASSWORD + "\n")
    text = (
        f'backup_dir = "{tmp_path}/backups"\n[metrics]\ntextfile_dir = ""\n[retention]\nkeep_last = 1\n'
        f'[repositories.local]\nlocation = "{tmp_path}/local"\npassword_file = "{secrets}/password"\ninit = true\n'
    )
    if store is not None:
        (secrets / "s3.env").write_text("".join(f"{k}={v}\n" for k, v in store.env.items()))
        bucket = f"{BUCKET}/check-{tmp_path.name}"
        text += (
            f'[repositories.s3]\nlocation = "{store.location(bucket)}"\npassword_file = "{secrets}/password"\n'
            f'env_file = "{secrets}/s3.env"\ninit = true\nrequired = {str(s3_required).lower()}\n'
        )
    for path in secrets.iterdir():
        path.chmod(0o600)
    config = tmp_path / "config.toml"
    config.write_text(text)
    config.chmod(0o600)
    return config


def _restic(tmp_path: Path, name: str = "local", store: s3_store.Store | None = None) -> Restic:
    password = str(tmp_path / "secrets" / "password")
    if store is None:
        repo = Repository(name, str(tmp_path / name), password_file=password, init=True)
    else:
        bucket = f"{BUCKET}/check-{tmp_path.name}"
        repo = Repository(name, store.location(bucket), password_file=password, env=store.env, init=True)
    restic = Restic(repo)
    restic.ensure()
    return restic


def _backed_up(restic: Restic, tmp_path: Path, size: int = 600_000) -> None:
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    (data / "blob.bin").write_bytes(os.urandom(size))  # the data pack is the largest file of the repository
    restic.backup([str(data)], default_host(), ["selfhost-dr", "app=tenement", "kind=hot"])


def _flip_a_byte_of_the_largest_pack(repository: Path) -> Path:
    packs = [p for p in (repository / "data").rglob("*") if p.is_file()]
    victim = max(packs, key=lambda p: p.stat().st_size)
    blob = bytearray(victim.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    victim.chmod(0o600)
    victim.write_bytes(bytes(blob))
    return victim


# -- selfhost-dr check ---------------------------------------------------------------------------------------------


def test_check_read_data_names_the_corrupted_pack_in_one_sentence(
    tmp_path: Path, store: s3_store.Store, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _config(tmp_path, store)
    local, s3 = _restic(tmp_path), _restic(tmp_path, "s3", store)
    for restic in (local, s3):
        _backed_up(restic, tmp_path)
    code, result = _cli(capsys, "check", "--all-repos", "--read-data", "--config", str(config))
    assert code == 0 and [o["ok"] for o in result["repositories"]] == [True, True], result  # type: ignore[union-attr]

    victim = _flip_a_byte_of_the_largest_pack(tmp_path / "local")
    code, result = _cli(capsys, "check", "--all-repos", "--config", str(config))
    assert code == 0, result  # the structure is sound: only reading the data finds it
    for argv in (["--read-data"], ["--read-data-subset", "100%"]):
        code, result = _cli(capsys, "check", "--all-repos", *argv, "--config", str(config))
        assert code == 1, result
        error = str(result["error"])
        assert error.startswith(
            f"restic check of repository local ({tmp_path}/local) found damage: pack {victim.name} is damaged ("
        ), error
        assert "\n" not in error and error.endswith("; sound: s3")  # the other repository was checked all the same
        assert [o["ok"] for o in result["repositories"]] == [False, True]  # type: ignore[union-attr]
    code, result = _cli(capsys, "check", "--repo", "local", "--read-data-subset", "half", "--config", str(config))
    assert (code, result["error"]) == (2, "--read-data-subset must be n% (5%), n/t (1/7) or a size (500M), not 'half'")


def test_a_damaged_optional_repository_is_a_warning(
    tmp_path: Path, store: s3_store.Store, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _config(tmp_path, store)
    config.write_text(
        config.read_text().replace("init = true\n[repositories.s3]", "init = true\nrequired = false\n[repositories.s3]")
    )
    local = _restic(tmp_path)
    _backed_up(local, tmp_path)
    victim = _flip_a_byte_of_the_largest_pack(tmp_path / "local")
    _backed_up(_restic(tmp_path, "s3", store), tmp_path)
    code, result = _cli(capsys, "check", "--all-repos", "--read-data-subset", "1/1", "--config", str(config))
    assert code == 0, result
    (warning,) = result["warnings"]  # type: ignore[misc]
    assert warning.startswith("local (optional): restic check of repository local") and victim.name in warning
    assert PASSWORD not in json.dumps(result)


def test_a_repository_that_cannot_be_read_is_not_called_damaged(
    tmp_path: Path, store: s3_store.Store, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _config(tmp_path, store, s3_required=True)
    _backed_up(_restic(tmp_path, "s3", store), tmp_path)
    (tmp_path / "secrets" / "s3.env").write_text(
        f"AWS_ACCESS_KEY_ID={s3_store.ACCESS_KEY}\nAWS_SECRET_ACCESS_KEY=not-the-key\n"
    )
    code, result = _cli(capsys, "check", "--all-repos", "--config", str(config))
    assert code == 1, result
    local, s3 = result["repositories"]  # type: ignore[misc]
    assert local["error"] == (
        f"repository local ({tmp_path}/local) does not exist: no restic repository is there (init: true creates one)"
    )
    assert "refuses the store's credentials" in s3["error"] and "found damage" not in s3["error"]
    assert "not-the-key" not in json.dumps(result)


# -- stale and live locks ------------------------------------------------------------------------------------------


def _locks(tmp_path: Path) -> set[str]:
    """The local repository's locks (not a lock still being written under a temporary name)."""
    return {p.name for p in (tmp_path / "local" / "locks").iterdir() if re.fullmatch(r"[0-9a-f]{64}", p.name)}


def _holding(restic: Restic, tmp_path: Path, argv: list[str]) -> subprocess.Popen[bytes]:
    """A restic process started with ``argv``, returned once its lock is in the repository."""
    before = _locks(tmp_path)
    process = subprocess.Popen(
        ["restic", *argv],
        env=restic.environment(),
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while _locks(tmp_path) == before:
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.001)
    return process


def _killed(process: subprocess.Popen[bytes]) -> None:
    process.kill()  # SIGKILL: no chance to remove its lock
    process.wait()
    assert process.stdin is not None
    process.stdin.close()


def test_a_killed_backups_stale_lock_is_removed_by_the_next_check_and_prune(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _config(tmp_path)
    restic = _restic(tmp_path)
    _backed_up(restic, tmp_path)
    _backed_up(restic, tmp_path)  # keep_last 1: the prune has a snapshot to forget, so it meets the lock
    for command in (["check"], ["prune"]):
        _killed(_holding(restic, tmp_path, ["backup", "--stdin", "--stdin-filename", "tenement.db"]))
        stale = _locks(tmp_path)
        assert len(stale) == 1
        code, result = _cli(capsys, *command, "--repo", "local", "--config", str(config))
        assert code == 0, result
        assert _locks(tmp_path) == set()  # removed (restic unlock: its process is gone), and the command ran
    assert len(restic.snapshots()) == 1 and [o["forgotten"] for o in result["repositories"]] != [[]]  # type: ignore[union-attr]


def test_a_killed_exclusive_runs_stale_lock_is_removed_by_the_next_backup(tmp_path: Path) -> None:
    _config(tmp_path)
    restic = _restic(tmp_path)
    _backed_up(restic, tmp_path, 20_000_000)
    holder = _holding(restic, tmp_path, ["check", "--read-data"])  # an exclusive lock
    holder.send_signal(signal.SIGSTOP)
    _killed(holder)
    assert len(_locks(tmp_path)) == 1
    summary = restic.backup([str(tmp_path / "data")], "web1", ["selfhost-dr", "app=tenement", "kind=hot"])
    assert summary["snapshot_id"] and _locks(tmp_path) == set()


def test_a_live_runs_lock_is_reported_with_its_holder_and_never_removed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _config(tmp_path)
    restic = _restic(tmp_path)
    _backed_up(restic, tmp_path, 20_000_000)
    _backed_up(restic, tmp_path)  # keep_last 1: the prune has a snapshot to forget
    # A backup still reading its input (a shared lock) keeps check and prune (exclusive) out.
    live = _holding(restic, tmp_path, ["backup", "--stdin", "--stdin-filename", "tenement.db"])
    held = _locks(tmp_path)
    try:
        for command in (["check"], ["prune"], ["prune", "--check"]):
            code, result = _cli(capsys, *command, "--repo", "local", "--config", str(config))
            assert code == 1, result  # check mode refuses what the run refuses
            error = str(result["error"])
            assert re.fullmatch(
                rf"repository local \({tmp_path}/local\) is locked by PID {live.pid} on {socket.gethostname()} "
                r"\(\S+\) since \d{4}-\d\d-\d\d \d\d:\d\d:\d\d, a run restic does not consider stale \(its process "
                r"still runs, and the lock is younger than 30 minutes\), so it was left in place",
                error,
            ), error
            assert _locks(tmp_path) == held and live.poll() is None  # the live run and its lock untouched
        restic.refuse_live_lock(exclusive_only=True)  # a backup's check mode: a shared lock keeps no backup out
    finally:
        assert live.stdin is not None
        live.stdin.write(b"the end of the input")
        live.stdin.close()
        assert live.wait(60) == 0  # the live run finished its snapshot
    assert _locks(tmp_path) == set()
    code, result = _cli(capsys, "check", "--repo", "local", "--config", str(config))
    assert code == 0, result

    # An exclusive lock held by a live restic check (stopped in its tracks) keeps a backup out, and stays.
    holder = _holding(restic, tmp_path, ["check", "--read-data"])
    holder.send_signal(signal.SIGSTOP)
    try:
        held = _locks(tmp_path)
        with pytest.raises(LockedError) as locked:
            restic.backup([str(tmp_path / "data")], "web1", ["selfhost-dr", "app=tenement", "kind=hot"])
        assert str(locked.value).startswith(
            f"repository local ({tmp_path}/local) is locked exclusively by PID {holder.pid} on "
        )
        with pytest.raises(LockedError) as planned:  # backup --check refuses it with the same sentence
            restic.refuse_live_lock(exclusive_only=True)
        assert str(planned.value) == str(locked.value)
        assert _locks(tmp_path) == held
    finally:
        holder.send_signal(signal.SIGCONT)
        holder.wait(120)


# -- keys ----------------------------------------------------------------------------------------------------------

ESCROW = "an escrow password kept in a safe"


class Spy:
    """A runner that records each restic command line and environment, then runs it."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[str], dict[str, str]]] = []

    def __call__(self, argv: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
        self.calls.append((list(argv), dict(kw["env"])))
        return subprocess.run(argv, **kw)


def test_an_escrow_key_is_added_from_a_private_file_never_on_a_command_line_and_opens_the_repository(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    config = _config(tmp_path)
    _backed_up(_restic(tmp_path), tmp_path)
    spy = Spy()
    monkeypatch.setattr(cli, "Restic", lambda repo, **kw: Restic(repo, run=spy, **kw))
    escrow = tmp_path / "offline" / "escrow.password"
    escrow.parent.mkdir()
    escrow.write_text(ESCROW + "\n")
    escrow.chmod(0o644)
    code, result = _cli(
        capsys, "key", "add", "--repo", "local", "--password-file", str(escrow), "--config", str(config)
    )
    assert (code, result["error"]) == (
        2,
        f"the new key's password file {escrow} can be read by other users (mode 0644): chmod 600 it",
    )
    escrow.chmod(0o600)
    code, result = _cli(
        capsys, "key", "add", "--repo", "local", "--password-file", str(escrow), "--config", str(config)
    )
    assert code == 0, result
    keys = result["keys"]
    assert len(keys) == 2 and result["added"] in {k["id"] for k in keys}  # type: ignore[union-attr]
    assert [k["current"] for k in keys] == [True, False] or [k["current"] for k in keys] == [False, True]  # type: ignore[union-attr]
    assert spy.calls
    for argv, env in spy.calls:  # neither password on a command line or in the environment of restic
        assert ESCROW not in " ".join(argv) and str(escrow) not in " ".join(argv)
        assert ESCROW not in json.dumps(env) and PASSWORD not in " ".join(argv)
    assert ESCROW not in json.dumps(result) and ESCROW not in capsys.readouterr().err
    opened = Restic(Repository("local", str(tmp_path / "local"), password_file=str(escrow)))
    assert len(opened.snapshots()) == 1  # the escrow key opens the repository on its own
    code, listed = _cli(capsys, "key", "list", "--repo", "local", "--config", str(config))
    assert code == 0 and {k["id"] for k in listed["keys"]} == {k["id"] for k in keys}  # type: ignore[union-attr]
    code, result = _cli(capsys, "key", "list", "--repo", "local", "--repo", "other", "--config", str(config))
    assert (code, result["error"]) == (2, "key list takes one repository: --repo NAME")
