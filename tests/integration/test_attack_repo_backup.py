"""Adversarial review of repository backups with real restic: names that restic's exclude file reads otherwise than
they are written, and a tree that restic walks otherwise than the scan. The promise checked each time: the snapshot
holds every file of the manifest (with its sha256), and never a live database."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import socket
import sqlite3
import subprocess
from pathlib import Path

import pytest

from ansible_collections.selfhost.dr.plugins.module_utils.repos.restic import Repository, Restic
from ansible_collections.selfhost.dr.plugins.module_utils.repos.stage import stage

pytestmark = pytest.mark.skipif(shutil.which("restic") is None, reason="restic is not installed (scripts/bootstrap)")


def _database(path: Path) -> None:
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute("CREATE TABLE t (x)")
        db.execute("INSERT INTO t VALUES (1)")
        db.commit()


def _snapshot(tmp_path: Path, top: Path) -> tuple[dict[str, str], dict[str, object]]:
    """Stage ``top``, back it up into a new local repository, restore it: the restored files (path -> sha256) of
    ``top`` and the manifest."""
    password = tmp_path / "password"
    password.write_text("a long repository password\n")
    password.chmod(0o600)
    staged = stage([str(top)], str(tmp_path / "backups"), app="tenement", host="web1")
    restic = Restic(Repository("local", str(tmp_path / "restic"), password_file=str(password)))
    restic.init()
    summary = restic.backup(staged.paths, "web1", ["selfhost-dr"], staged.exclude_file)
    target = tmp_path / "restored"
    restic.restore(summary["snapshot_id"], str(target))
    restored = {}
    for path in (target / top.relative_to("/")).rglob("*"):
        if path.is_file() and not path.is_symlink():
            restored["/" + str(path.relative_to(target))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return restored, staged.manifest


def _manifest_files(manifest: dict[str, object]) -> dict[str, tuple[str, bool]]:
    return {
        "/" + str(r["path"]): (str(r["sha256"]), bool(r.get("sqlite")))
        for r in manifest["files"]  # type: ignore[attr-defined]
        if r["type"] == "file"
    }


def test_names_that_restic_reads_otherwise_exclude_exactly_the_live_databases(tmp_path: Path) -> None:
    top = tmp_path / "srv" / "app"
    (top / "keep").mkdir(parents=True)
    (top / "keep" / "important.txt").write_text("a tenant's data\n")
    (top / "b.db").write_text("a regular file beside a database whose name ends with a space\n")
    _database(top / "a$HOME.db")  # restic expands $VAR in an exclude file
    _database(top / "b.db ")  # restic trims each line of an exclude file
    _database(top / "c.db\u00a0")  # a Unicode space, trimmed too
    with contextlib.closing(socket.socket(socket.AF_UNIX)) as sock:  # a socket a tenant named with a line break
        sock.bind(str(top / "x\nkeep"))
        restored, manifest = _snapshot(tmp_path, top)
    listed = _manifest_files(manifest)
    live = {path for path, (_, sqlite) in listed.items() if sqlite}
    assert live == {str(top / "a$HOME.db"), str(top / "b.db "), str(top / "c.db\u00a0")}
    assert not live & set(restored), "a live database is in the snapshot"
    for path, (digest, sqlite) in listed.items():
        if not sqlite:
            assert restored.get(path) == digest, f"{path!r} is not in the snapshot as the manifest says"


@pytest.fixture
def mounted(tmp_path: Path) -> Path:
    top = tmp_path / "srv" / "app"
    (top / "volume").mkdir(parents=True)
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(top / "volume")]).returncode:
        pytest.skip("a tmpfs cannot be mounted here")
    try:
        yield top
    finally:
        subprocess.run(["umount", "-l", str(top / "volume")], check=False)


def test_a_file_system_mounted_below_a_path_is_in_the_snapshot_as_in_the_manifest(
    tmp_path: Path, mounted: Path
) -> None:
    (mounted / "volume" / "uploads.bin").write_bytes(os.urandom(10_000))
    (mounted / "top.txt").write_text("top\n")
    restored, manifest = _snapshot(tmp_path, mounted)
    for path, (digest, _) in _manifest_files(manifest).items():
        assert restored.get(path) == digest, f"{path} is in the manifest, not in the snapshot"
