"""Attacks on restoring from a restic repository (engine/repo_restore.py, repos/fetch.py) by someone who holds the
repository's password (and may write its storage): snapshots restic itself makes from a hostile tree, snapshots
crafted object by object (tests/integration/restic_craft.py), and kills at every step of a fetch. Whatever they
do, root writes nothing outside the fetch directory before every check passed, restores nothing the manifest does
not vouch for, and a failed or killed restore leaves the previous data as it was."""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from ansible_collections.selfhost.dr.plugins.module_utils.repos.restic import Restic

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
