"""Keeping restic repositories sound with the host command: ``selfhost-dr check`` naming a damaged pack, stale locks
of killed runs removed (a live run's never), and escrow keys added from a private file. Real restic, a local
repository and a SeaweedFS S3 one."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from ansible_collections.selfhost.dr.plugins.module_utils.repos.restic import Repository, Restic

from . import s3_store
from .test_repo_backup import _cli

pytestmark = pytest.mark.skipif(shutil.which("restic") is None, reason="restic is not installed (scripts/bootstrap)")
PASSWORD = "a long repository password"


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
        bucket = f"check-{tmp_path.name[-20:].lower().replace('_', '-')}"
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
        bucket = f"check-{tmp_path.name[-20:].lower().replace('_', '-')}"
        repo = Repository(name, store.location(bucket), password_file=password, env=store.env, init=True)
    restic = Restic(repo)
    restic.ensure()
    return restic


def _backed_up(restic: Restic, tmp_path: Path, size: int = 600_000) -> None:
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    (data / "blob.bin").write_bytes(os.urandom(size))  # the data pack is the largest file of the repository
    restic.backup([str(data)], "web1", ["selfhost-dr", "app=tenement", "kind=hot"])


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
