"""Hostile and damaged backup sets against verify and restore (run as root: owners and special bits are real).

Every set here is made by hand (tests/unit/crafted_sets.py) with valid checksums and a manifest that agrees with
the archive except in the one place a test attacks. Restores always go under ``tmp_path``; an ``outside`` tree
beside the destination is what nothing may ever reach, and is compared byte, mode and owner after each attack.

Guarantees, and where they are proved:

1. nothing is created, written, chmodded or chowned through a link        -> test_link_*, test_hostile_structure
2. every member appears once                                               -> test_hostile_structure (duplicates)
3. what is restored is what the manifest declares                          -> test_declared_*, test_member_differs
4. verify, restore and check mode refuse the same sets in the same words   -> every refusal goes through `refused`
5. malformed manifests get one sentence and bounded memory                 -> test_malformed_*, test_huge_*
6. member names and types                                                  -> test_unsafe_member, test_*_name*
7. verify's temporary files                                                -> test_spill_*
8. a failed restore leaves everything as it was                            -> test_failed_*
"""

from __future__ import annotations

import errno
import json
import os
import resource
import stat
import subprocess
import sys
import tarfile
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ansible_collections.selfhost.dr.plugins.module_utils import safe_fs
from ansible_collections.selfhost.dr.plugins.module_utils._common import BackupError, RestoreError
from ansible_collections.selfhost.dr.plugins.module_utils.engine import swap as restore_mod
from ansible_collections.selfhost.dr.plugins.module_utils.engine.journal import Journal
from ansible_collections.selfhost.dr.plugins.module_utils.engine.swap import (
    commit,
    pending,
    recover_interrupted,
    restore,
    rollback,
)
from ansible_collections.selfhost.dr.plugins.module_utils.sets import databases
from ansible_collections.selfhost.dr.plugins.module_utils.sets import verify as backup_set
from ansible_collections.selfhost.dr.plugins.module_utils.sets.create import create
from ansible_collections.selfhost.dr.plugins.module_utils.sets.manifest import MANIFEST_MEMBER
from ansible_collections.selfhost.dr.plugins.module_utils.sets.restore import plan
from ansible_collections.selfhost.dr.plugins.module_utils.sets.verify import verify

from .crafted_sets import NAME, Crafted, M, manifest_blob, manifest_for, tree, write_set
from .sqlite_helpers import make_db

VICTIM_UID = 1234
PATHS = ["/srv/app"]


# -- helpers ---------------------------------------------------------------------------------------------------------


def state(top: Path) -> dict[str, tuple[object, ...]]:
    """Everything below ``top`` (itself included), never following a link: type, mode, owner, content or target."""
    seen: dict[str, tuple[object, ...]] = {}
    if not os.path.lexists(top):
        return seen
    stack = [top]
    while stack:
        path = stack.pop()
        st = os.lstat(path)
        rel = str(path.relative_to(top))
        if stat.S_ISLNK(st.st_mode):
            extra: object = os.readlink(path)
        elif stat.S_ISREG(st.st_mode):
            extra = path.read_bytes()
        else:
            extra = None
        seen[rel] = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, extra)
        if stat.S_ISDIR(st.st_mode):
            stack.extend(path / name for name in os.listdir(path))
    return seen


def staging_leftovers(top: Path) -> list[str]:
    """Staging, safety or undone trees this collection names ``.NAME.selfhost-dr-...`` anywhere below ``top``."""
    found, stack = [], [top] if top.is_dir() else []
    while stack:
        here = stack.pop()
        for entry in os.scandir(here):
            if "selfhost-dr-" in entry.name:
                found.append(entry.path)
            elif entry.is_dir(follow_symlinks=False):
                stack.append(Path(entry.path))
    return found


def check_mode(archive: str, dest: Path, only: list[str] | None = None) -> str:
    """What backup_restore says in check mode: verify, then plan with the verified manifest."""
    try:
        checked = verify(archive, record=False)
        if not checked.ok or checked.manifest is None:
            return f"refusing to restore: {checked.summary}"
        plan(checked.manifest, str(dest), only)
    except (BackupError, RestoreError) as exc:
        return str(exc)
    return "ok"


def restored(archive: str, dest: Path, only: list[str] | None = None) -> str:
    try:
        restore(archive, dest_root=str(dest), only=only)
    except RestoreError as exc:
        return str(exc)
    return "ok"


def refused(crafted: Crafted | str, dest: Path, only: list[str] | None = None, words: str = "") -> str:
    """The set is refused by verify, check mode and restore, in the same sentence, and nothing at ``dest`` changed.

    Returns the sentence. ``words`` must be in verify's first problem.
    """
    archive = crafted if isinstance(crafted, str) else crafted.path
    before = state(dest)
    result = verify(archive, record=False)
    assert not result.ok, result.checks
    assert words in result.problems[0], result.problems
    sentence = f"refusing to restore: {result.summary}"
    assert check_mode(archive, dest, only) == sentence
    assert restored(archive, dest, only) == sentence
    assert state(dest) == before
    assert staging_leftovers(dest) == []
    return sentence


@pytest.fixture
def outside(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Path]:
    """A tree nothing may touch: a file owned by someone else, a private directory, a link.

    Compared when the test ends (a test kept for a known bug asserts it in its body instead)."""
    top = tmp_path / "outside"
    (top / "sub").mkdir(parents=True)
    (top / "secret.txt").write_text("secret\n")
    (top / "sub" / "keep").write_text("keep\n")
    (top / "ln").symlink_to("secret.txt")
    os.chown(top / "secret.txt", VICTIM_UID, VICTIM_UID)
    os.chmod(top / "secret.txt", 0o640)
    os.chown(top / "sub", VICTIM_UID, VICTIM_UID)
    os.chmod(top / "sub", 0o711)
    os.chmod(top, 0o750)
    before = state(top)
    yield top
    assert state(top) == before, "something outside the destination changed"


@pytest.fixture
def dest(tmp_path: Path) -> Path:
    """A destination that already holds the application: its current data, owned and moded as it is."""
    app = tmp_path / "dest" / "srv" / "app"
    (app / "one").mkdir(parents=True)
    (app / "one" / "notes.txt").write_text("current notes\n")
    (app / "mine.txt").write_text("mine\n")
    os.chown(app / "mine.txt", VICTIM_UID, 99)
    os.chmod(app / "mine.txt", 0o600)
    os.chmod(app / "one", 0o701)
    (app / "latest").symlink_to("one/notes.txt")
    return tmp_path / "dest"


MakeDir = Callable[[], Path]


@pytest.fixture
def sets(tmp_path: Path) -> MakeDir:
    """A fresh backup directory per set (crafted sets share one file name)."""
    counter = iter(range(1000))

    def make() -> Path:
        path = tmp_path / f"backups{next(counter)}"
        path.mkdir()
        return path

    return make


# -- 1 and 2: links and duplicates inside the archive ----------------------------------------------------------------

OUT = "@OUTSIDE@"  # replaced by the outside tree's absolute path

STRUCTURE = {
    # a link, then members below it
    "abs-link-then-file": ([M("srv/app/l", "symlink", target=OUT), M("srv/app/l/evil", data=b"pwn\n")], "lies below"),
    "dot-link-then-dir": (
        [M("srv/app/l", "symlink", target="."), M("srv/app/l/d", "dir"), M("srv/app/l/d/f", data=b"x")],
        "lies below 'srv/app/l', which is a symbolic link",
    ),
    "dotdot-link-then-file": (
        [M("srv/app/l", "symlink", target=".."), M("srv/app/l/escape", data=b"x")],
        "lies below 'srv/app/l'",
    ),
    "relative-chain-looking-inside": (
        [
            M("srv/app/two/l1", "symlink", target="../l2/x/.."),
            M("srv/app/l2", "symlink", target="../../../../outside"),
            M("srv/app/two/l1/sub", "dir", mode=0o777),
            M("srv/app/two/l1/sub/f", data=b"x"),
        ],
        "lies below 'srv/app/two/l1'",
    ),
    "members-first-then-link-over-them": (
        [M("srv/app/q/f", data=b"x"), M("srv/app/q", "symlink", target=OUT)],
        "lies below 'srv/app/q', which is a symbolic link",
    ),
    "file-below-a-file": ([M("srv/app/two/x.txt/evil", data=b"x")], "which is a file"),
    # the same name twice, in either order and of any type
    "link-then-dir": (
        [M("srv/app/l", "symlink", target=OUT), M("srv/app/l", "dir", mode=0o4777, uid=4321, listed=False)],
        "appears twice",
    ),
    "dir-then-link": ([M("srv/app/one", "symlink", target=OUT, listed=False)], "appears twice"),
    "link-then-file": (
        [M("srv/app/l", "symlink", target=OUT + "/secret.txt"), M("srv/app/l", data=b"over", listed=False)],
        "appears twice",
    ),
    "file-twice": ([M("srv/app/two/x.txt", data=b"second\n", mode=0o4755, listed=False)], "appears twice"),
    "dir-twice": ([M("srv/app/two", "dir", mode=0o777, uid=4321, listed=False)], "appears twice"),
    "link-twice": (
        [M("srv/app/l", "symlink", target="one"), M("srv/app/l", "symlink", target=OUT, listed=False)],
        "appears twice",
    ),
}


def _resolve(members: list[M], outside: Path) -> list[M]:
    for m in members:
        m.target = m.target.replace(OUT, str(outside))
    return members


@pytest.mark.parametrize("only", [None, ["/srv/app/two"]], ids=["full", "only"])
@pytest.mark.parametrize("case", sorted(STRUCTURE))
def test_hostile_structure(case: str, only: list[str] | None, sets: MakeDir, dest: Path, outside: Path) -> None:
    extra, words = STRUCTURE[case]
    crafted = write_set(sets(), tree("srv/app", *_resolve(list(extra), outside)), PATHS)
    refused(crafted, dest, only, words)


def test_the_manifest_member_twice(sets: MakeDir, dest: Path, outside: Path) -> None:
    members = tree("srv/app")
    evil = manifest_for([*members, M("srv/app/evil", data=b"x")], PATHS)
    crafted = write_set(sets(), members, PATHS, extra_members=[(M(MANIFEST_MEMBER, mode=0o600), manifest_blob(evil))])
    refused(crafted, dest, None, "the archive holds more than one manifest")


def test_a_hostile_set_is_never_written_through_even_after_a_good_one(sets: MakeDir, dest: Path, outside: Path) -> None:
    """The refusal is not luck of an empty destination: the same attack after a successful restore of the place."""
    good = write_set(sets(), tree("srv/app"), PATHS)
    done = restore(good.path, dest_root=str(dest))
    commit(done.restore_id)
    bad = write_set(sets(), tree("srv/app", *_resolve(list(STRUCTURE["abs-link-then-file"][0]), outside)), PATHS)
    refused(bad, dest, None, "lies below")


def test_the_link_checks_do_not_depend_on_a_deep_verification(sets: MakeDir, dest: Path, outside: Path) -> None:
    """A restore of content recorded as verified before checks only the whole-file sha256 and the member list:
    a forged .verified.json must not let a member below a link through."""
    bad = write_set(sets(), tree("srv/app", *_resolve(list(STRUCTURE["abs-link-then-file"][0]), outside)), PATHS)
    st = os.stat(bad.path)
    digest = Path(bad.sidecars.checksum).read_text().split()[0]
    marker = {"ok": True, "databases_checked": True, "verified_at": "2026-11-22T03:52:00.000000Z", "sha256": digest}
    Path(bad.sidecars.verified).write_text(json.dumps({**marker, "size": st.st_size, "mtime_ns": st.st_mtime_ns}))
    assert backup_set.verified_earlier(bad.path)
    lines: list[str] = []
    with pytest.raises(RestoreError, match=r"^refusing to restore: .*lies below 'srv/app/l', which is a symbolic link"):
        restore(bad.path, dest_root=str(dest), log=lines.append)
    assert any("passed verification before" in line for line in lines)
    assert staging_leftovers(dest) == []


# -- 1: links already in the destination -----------------------------------------------------------------------------


def _link_set(sets: MakeDir, outside: Path) -> Crafted:
    """An honest set whose /srv/app/one is a link to the outside tree (a host can have such a link)."""
    return write_set(sets(), [M("srv/app", "dir"), M("srv/app/one", "symlink", target=str(outside))], PATHS)


def test_link_left_by_an_earlier_restore_is_never_followed(sets: MakeDir, dest: Path, outside: Path) -> None:
    first = restore(_link_set(sets, outside).path, dest_root=str(dest))
    commit(first.restore_id)
    app = dest / "srv" / "app"
    assert os.readlink(app / "one") == str(outside)
    ordinary = write_set(sets(), tree("srv/app"), PATHS)

    for only in (["/srv/app/one/notes.txt"], ["/srv/app/one/sub/deeper"]):
        sentence = f"{app}/one is a symbolic link; refusing to restore {only[0]} through it"
        if only[0].endswith("deeper"):
            ordinary = write_set(
                sets(), tree("srv/app", M("srv/app/one/sub", "dir"), M("srv/app/one/sub/deeper", data=b"d")), PATHS
            )
        before = state(dest)
        assert check_mode(ordinary.path, dest, only) == sentence
        assert restored(ordinary.path, dest, only) == sentence
        assert state(dest) == before

    # The link itself, or the whole tree, is replaced: moved aside, never followed.
    done = restore(ordinary.path, dest_root=str(dest), only=["/srv/app/one"])
    assert (app / "one").is_dir() and not (app / "one").is_symlink()
    assert os.readlink(Path(done.swaps[0].safety)) == str(outside)
    rollback(done.restore_id)
    done = restore(ordinary.path, dest_root=str(dest))
    assert not (app / "one").is_symlink()
    commit(done.restore_id)


@pytest.mark.parametrize("target", ["@", ".", "..", "../app/one/..", "../../../outside/sub"])
def test_link_below_the_sets_path_in_the_destination_is_refused(
    target: str, sets: MakeDir, dest: Path, outside: Path
) -> None:
    """A component between the set's path and the target that is a link (made by hand, any target) is refused."""
    app = dest / "srv" / "app"
    real = target.replace("@", str(outside / "sub"))
    (app / "two").symlink_to(real)
    crafted = write_set(
        sets(), tree("srv/app", M("srv/app/two/deep", "dir"), M("srv/app/two/deep/f", data=b"f")), PATHS
    )
    for only in ("/srv/app/two/x.txt", "/srv/app/two/deep/f", "/srv/app/two/deep"):
        sentence = f"{app}/two is a symbolic link; refusing to restore {only} through it"
        before = state(dest)
        assert check_mode(crafted.path, dest, [only]) == sentence
        assert restored(crafted.path, dest, [only]) == sentence
        assert state(dest) == before


def test_a_link_at_the_sets_path_is_replaced_not_followed(sets: MakeDir, dest: Path, outside: Path) -> None:
    """/srv/app itself a link the set did not record: the restored tree takes its place; its target is untouched
    (no mode or owner of the set's top directory is applied to it)."""
    app = dest / "srv" / "app"
    app.rename(dest / "srv" / "previous")
    app.symlink_to(outside)
    crafted = write_set(sets(), tree("srv/app", mode=0o4777), PATHS, edit=None)
    done = restore(crafted.path, dest_root=str(dest))
    assert app.is_dir() and not app.is_symlink()
    assert stat.S_IMODE(app.lstat().st_mode) == 0o4777
    assert os.readlink(Path(done.swaps[0].safety)) == str(outside)


def test_a_recorded_link_is_followed_only_where_the_set_says(sets: MakeDir, dest: Path, outside: Path) -> None:
    links = [{"path": "/srv/app", "target": "/data/app"}]
    crafted = write_set(sets(), tree("srv/app"), PATHS, links=links)
    app = dest / "srv" / "app"
    app.rename(dest / "srv" / "previous")
    app.symlink_to(outside)  # leads elsewhere than the set recorded
    real = os.path.realpath
    sentence = (
        f"{real(app.parent)}/app is a symbolic link to {real(outside)}, but the set was taken through it from "
        f"{real(dest)}/data/app; point it back or restore with another dest_root"
    )
    before = state(dest)
    assert check_mode(crafted.path, dest) == sentence
    assert restored(crafted.path, dest) == sentence
    assert state(dest) == before

    (dest / "data" / "app").mkdir(parents=True)
    app.unlink()
    app.symlink_to("../data/app")
    done = restore(crafted.path, dest_root=str(dest))
    assert done.swaps[0].target == str(dest / "data" / "app")
    assert app.is_symlink() and (dest / "data" / "app" / "one" / "notes.txt").read_bytes() == b"notes\n"


def test_a_path_recorded_as_a_link_into_another_is_restored_once(sets: MakeDir, dest: Path, outside: Path) -> None:
    """/srv/b was backed up through a link to /srv/a (the set holds both): the /srv/a tree is restored once and
    the host's link /srv/b is left as it is, never written through nor replaced."""
    members = [M("srv/a", "dir"), M("srv/a/f", data=b"same"), M("srv/b", "dir"), M("srv/b/f", data=b"same")]
    crafted = write_set(sets(), members, ["/srv/a", "/srv/b"], links=[{"path": "/srv/b", "target": "/srv/a"}])
    (dest / "srv" / "a").mkdir()
    (dest / "srv" / "b").symlink_to("a")  # as recorded: b leads to a
    assert verify(crafted.path, record=False).ok
    assert check_mode(crafted.path, dest) == "ok"
    done = restore(crafted.path, dest_root=str(dest))
    assert [s.target for s in done.swaps] == [os.path.realpath(dest / "srv" / "a")]
    assert os.readlink(dest / "srv" / "b") == "a" and (dest / "srv" / "a" / "f").read_bytes() == b"same"


def test_a_tree_dropped_as_held_by_another_holds_what_the_set_declares(sets: MakeDir, dest: Path) -> None:
    members = [M("srv/a", "dir"), M("srv/a/f", data=b"a"), M("srv/b", "dir"), M("srv/b/f", data=b"b")]
    crafted = write_set(sets(), members, ["/srv/a", "/srv/b"], links=[{"path": "/srv/b", "target": "/srv/a"}])
    (dest / "srv" / "a").mkdir()
    (dest / "srv" / "b").symlink_to("a")
    if restored(crafted.path, dest) == "ok":
        assert (dest / "srv" / "b" / "f").read_bytes() == b"b", "the set declares b/f = 'b'"


@pytest.mark.parametrize(
    ("only", "words"),
    [
        ("/srv/app/../../etc", "/etc is not in this backup set"),
        ("//srv/app", "is not in this backup set"),
        ("srv/app", "paths to restore must be absolute paths below /"),
        ("/", "paths to restore must be absolute paths below /"),
        ("/srv/application", "/srv/application is not in this backup set"),
        ("/srv/app/nothing-here", "nothing in this backup set lies under /srv/app/nothing-here"),
        ("/srv/app/latest2/x", "nothing in this backup set lies under /srv/app/latest2/x"),
    ],
)
def test_chosen_paths_stay_inside_the_set(only: str, words: str, sets: MakeDir, dest: Path, outside: Path) -> None:
    crafted = write_set(sets(), tree("srv/app", M("srv/app/latest2", "symlink", target=str(outside))), PATHS)
    before = state(dest)
    said = restored(crafted.path, dest, [only])
    assert words in said
    assert check_mode(crafted.path, dest, [only]) == said
    assert state(dest) == before


def test_a_superseded_restore_never_puts_a_link_back_on_the_way(sets: MakeDir, dest: Path, outside: Path) -> None:
    """An uncommitted restore replaced a tree holding a link; a later restore of a path below it never sees the
    link again (rolling the first back first, as an earlier design did, put the link back under the plan)."""
    first = restore(_link_set(sets, outside).path, dest_root=str(dest))
    commit(first.restore_id)  # /srv/app/one -> outside, as the host had it
    ordinary = write_set(sets(), tree("srv/app"), PATHS)
    second = restore(ordinary.path, dest_root=str(dest))  # not committed: /srv/app/one is a directory now
    assert not (dest / "srv" / "app" / "one").is_symlink()
    assert restored(ordinary.path, dest, ["/srv/app/one/notes.txt"]) == "ok"
    assert not (outside / "notes.txt").exists()
    assert (dest / "srv" / "app" / "one" / "notes.txt").read_bytes() == b"notes\n"
    # The link is kept in the second restore's safety copy, with everything else that was there.
    assert os.readlink(Path(second.swaps[0].safety) / "one") == str(outside)
    assert [p["state"] for p in pending() if p["restore_id"] == second.restore_id] == ["kept"]


def test_hard_links_and_fifos_in_the_destination_are_never_written_through(
    sets: MakeDir, dest: Path, outside: Path
) -> None:
    """The current tree holds a hard link to a file outside and a FIFO: restoring over them (the whole tree, or
    the very file that is the hard link) replaces names; the outside inode is never opened for writing."""
    app = dest / "srv" / "app"
    (app / "one" / "notes.txt").unlink()
    os.link(outside / "secret.txt", app / "one" / "notes.txt")
    os.mkfifo(app / "pipe")
    crafted = write_set(sets(), tree("srv/app", M("srv/app/pipe", data=b"now a file")), PATHS)
    done = restore(crafted.path, dest_root=str(dest), only=["/srv/app/one/notes.txt"])
    assert (app / "one" / "notes.txt").read_bytes() == b"notes\n"
    commit(done.restore_id)
    done = restore(crafted.path, dest_root=str(dest))
    assert (app / "pipe").read_bytes() == b"now a file"
    commit(done.restore_id)

    os.unlink(app / "two" / "x.txt")
    os.rmdir(app / "two")
    os.mkfifo(app / "two")
    sentence = f"{os.path.realpath(app)}/two is not a directory; cannot restore /srv/app/two/x.txt below it"
    assert (
        restored(crafted.path, dest, ["/srv/app/two/x.txt"])
        == sentence
        == check_mode(crafted.path, dest, ["/srv/app/two/x.txt"])
    )


# -- 3: what is restored is what the manifest declares --------------------------------------------------------------

DIFFERS = {
    "setuid-root-declared-0644": (
        M("srv/app/two/tool", data=b"#!/bin/sh\n", mode=0o4755, record={"mode": "0644"}),
        "mode",
    ),
    "setgid-dir-declared-0755": (M("srv/app/sg", "dir", mode=0o2775, record={"mode": "0755"}), "mode"),
    "sticky-dir-declared-0777": (M("srv/app/tmp", "dir", mode=0o1777, record={"mode": "0777"}), "mode"),
    "file-type-bits-in-mode": (M("srv/app/two/y", data=b"y", raw_mode=0o100644), "mode"),
    "file-type-bits-on-setuid": (M("srv/app/two/y", data=b"y", mode=0o4755, raw_mode=0o104755), "mode"),
    "dir-type-bits-in-mode": (M("srv/app/d", "dir", raw_mode=0o40755), "mode"),
    "uid-root-declared-1000": (M("srv/app/two/y", data=b"y", mode=0o4755, record={"uid": 1000}), "uid"),
    "gid": (M("srv/app/two/y", data=b"y", gid=0, record={"gid": 50}), "gid"),
    "size": (M("srv/app/two/y", data=b"y", record={"size": 2}), "size"),
    "sha256": (M("srv/app/two/y", data=b"evil", record={"sha256": "0" * 64}), "sha256"),
    "link-target": (M("srv/app/l", "symlink", target="/etc/shadow", record={"target": "two/x.txt"}), "target"),
    "file-declared-dir": (M("srv/app/y", data=b"y", record={"type": "dir"}), "type"),
    "link-declared-file": (
        M("srv/app/y", "symlink", target="/etc", record={"type": "file", "size": 0, "sha256": "e3" + "0" * 62}),
        "type",
    ),
}


@pytest.mark.parametrize("case", sorted(DIFFERS))
def test_member_differs_from_the_manifest(case: str, sets: MakeDir, dest: Path, outside: Path) -> None:
    member, key = DIFFERS[case]
    crafted = write_set(sets(), tree("srv/app", member), PATHS)
    refused(crafted, dest, None, f"differ from the manifest, first {member.name} ({key})")
    refused(crafted, dest, ["/srv/app/two"] if "/two/" in member.name else ["/srv/app/one"], f"({key})")


def test_declared_special_bits_and_owners_are_restored_exactly(sets: MakeDir, dest: Path) -> None:
    declared = [
        M("srv/app/tool", data=b"#!/bin/sh\n", mode=0o4755),
        M("srv/app/sg", "dir", mode=0o2775, gid=1234),
        M("srv/app/tmp", "dir", mode=0o1777),
        M("srv/app/private", data=b"p", mode=0o600, uid=1234, gid=4321),
        M("srv/app/ln", "symlink", target="tool", uid=1234, gid=1234),
        M("srv/app/sgid", data=b"g", mode=0o2711, uid=1234, gid=4321),
    ]
    crafted = write_set(sets(), tree("srv/app", *declared), PATHS)
    assert verify(crafted.path, record=False).ok
    restore(crafted.path, dest_root=str(dest))
    for m in declared:
        st = os.lstat(dest / m.name)
        want_mode = 0o777 if m.kind == "symlink" else m.effective_mode()
        assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (want_mode, m.uid, m.gid), m.name


def test_owner_4294967295_is_not_restored_as_root(sets: MakeDir, dest: Path) -> None:
    member = M("srv/app/tool", data=b"#!/bin/sh\nid\n", mode=0o4755, uid=2**32 - 1, gid=2**32 - 1)
    crafted = write_set(sets(), tree("srv/app", member), PATHS)
    outcome = restored(crafted.path, dest)
    if outcome == "ok":
        st = os.lstat(dest / member.name)
        assert st.st_uid == 2**32 - 1 and st.st_gid == 2**32 - 1, "restored owned by root, with its setuid bit"
    else:
        assert outcome == check_mode(crafted.path, dest)


def test_no_unverified_setuid_file_is_reachable_while_unpacking(
    sets: MakeDir, dest: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    os.chmod(dest / "srv" / "app" / "one", 0o755)
    member = M("srv/app/one/tool", data=b"#!/bin/sh\nid\n", mode=0o4755, record={"mode": "0644"})
    crafted = write_set(sets(), tree("srv/app", member, mode=0o755), PATHS, edit=None)
    exposed: list[str] = []
    original = restore_mod.StagingUnpacker.end

    def end(self: restore_mod.StagingUnpacker, m: object) -> None:
        path = self.current_path
        original(self, m)  # type: ignore[arg-type]
        if not path or not os.path.lexists(path):
            return
        # Reachable by anyone: no directory on the way (below dest) is private.
        reachable = all(
            stat.S_IMODE(os.lstat(p).st_mode) & 0o001
            for p in [Path(path).parent, *Path(path).parent.parents]
            if str(p).startswith(str(dest))
        )
        if reachable and os.lstat(path).st_mode & (stat.S_ISUID | stat.S_ISGID):
            exposed.append(path)

    monkeypatch.setattr(restore_mod.StagingUnpacker, "end", end)
    assert restored(crafted.path, dest, ["/srv/app/one/tool"]).startswith("refusing to restore:")
    assert exposed == []


# -- 4: verify, restore and check mode say the same -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sidecar", "words"),
    [
        (b"not json {", "cannot be read as JSON"),
        (b"\xff\xfe\x00garbage", "cannot be read as JSON"),
        (b"", "cannot be read as JSON"),
        (b"[]", "is not a selfhost.dr backup manifest"),
    ],
    ids=["text", "binary", "empty", "a-list"],
)
def test_garbage_sidecar_manifest(sidecar: bytes, words: str, sets: MakeDir, dest: Path) -> None:
    crafted = write_set(sets(), tree("srv/app"), PATHS, sidecar=sidecar)
    refused(crafted, dest, None, words)
    refused(crafted, dest, ["/srv/app/one"], words)


def test_sidecar_differing_from_the_embedded_manifest(sets: MakeDir, dest: Path, outside: Path) -> None:
    members = tree("srv/app")
    other = manifest_for(members, PATHS)
    other["metadata"] = {"tampered": True}
    crafted = write_set(sets(), members, PATHS, sidecar=manifest_blob(other))
    refused(crafted, dest, None, f"{NAME}.manifest.json differs from the manifest inside the archive")


def test_no_manifest_inside_the_archive(sets: MakeDir, dest: Path) -> None:
    refused(write_set(sets(), tree("srv/app"), PATHS, no_embedded=True), dest, None, "the archive holds no manifest")


def test_data_after_the_end_of_the_archive(sets: MakeDir, dest: Path) -> None:
    crafted = write_set(sets(), tree("srv/app"), PATHS, trailer=b"hidden payload")
    refused(crafted, dest, None, "there is data after the end of the tar archive")


def test_a_sound_set_restores_and_check_mode_agrees(sets: MakeDir, dest: Path) -> None:
    """The counterpart of every refusal: the same crafting, unattacked, verifies and restores."""
    crafted = write_set(sets(), tree("srv/app", M("srv/app/l", "symlink", target="/nowhere")), PATHS)
    assert verify(crafted.path, record=False).ok
    assert check_mode(crafted.path, dest) == "ok"
    assert restored(crafted.path, dest) == "ok"
    assert (dest / "srv/app/one/notes.txt").read_bytes() == b"notes\n"


def test_wrong_type_at_the_trees_path_is_refused_in_verifys_words(sets: MakeDir, dest: Path) -> None:
    """The unpacker used to raise its own sentence mid-stream ('member ... is a file, but the set lists it as a
    dir'); the refusal must be verify's."""
    crafted = write_set(sets(), [M("srv/app", data=b"not a dir", record={"type": "dir"})], PATHS)
    refused(crafted, dest, None, "(type)")


def test_a_set_verify_accepts_is_a_set_restore_accepts_long_component(sets: MakeDir, dest: Path) -> None:
    crafted = write_set(sets(), tree("srv/app", M("srv/app/" + "n" * 300, data=b"x")), PATHS)
    ok = verify(crafted.path, record=False).ok
    assert ok == (check_mode(crafted.path, dest) == "ok")
    assert ok == (restored(crafted.path, dest) == "ok"), "verify and restore disagree"


def test_a_set_create_writes_verifies(tmp_path: Path) -> None:
    """A file that merely starts with the SQLite header is archived as a plain file (with a note) and must not
    fail the set's integrity check."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "looks-like.db").write_bytes(b"SQLite format 3\x00" + b"\x07" * 300)
    out = tmp_path / "out"
    out.mkdir()
    made = create([str(src)], str(out))
    assert made.manifest["notes"], "create() noted it archived a plain file"
    result = verify(made.path, record=False)
    assert result.ok, result.problems


# -- 5: malformed manifests --------------------------------------------------------------------------------------------


def _files(m: dict[str, object]) -> list[dict[str, object]]:
    return m["files"]  # type: ignore[return-value]


def _edit_entry(which: str, /, **fields: object) -> Callable[[dict[str, object]], None]:
    def edit(m: dict[str, object]) -> None:
        for f in _files(m):
            if f["path"] == which:
                f.update(fields)

    return edit


MALFORMED = {
    "files-entry-a-string": (lambda m: _files(m).append("srv/app/x"), "files[5] is not an object"),
    "files-not-a-list": (lambda m: m.update(files={"srv/app": {}}), "'files' is missing or not a list"),
    "paths-not-a-list": (lambda m: m.update(paths="/srv/app"), "'paths' is missing or not a list"),
    "paths-with-dotdot": (lambda m: m.update(paths=["/srv/app/../app"]), "paths[0] is not a normalised path"),
    "paths-relative": (lambda m: m.update(paths=["srv/app"]), "paths[0] is not an absolute path below /"),
    "paths-root": (lambda m: m.update(paths=["/"]), "paths[0] is not an absolute path below /"),
    "paths-overlap": (lambda m: m.update(paths=["/srv/app", "/srv/app/one"]), "overlap"),
    "mode-not-octal": (_edit_entry("srv/app/one", mode="0798"), "srv/app/one has no valid mode"),
    "mode-short": (_edit_entry("srv/app/one", mode="755"), "has no valid mode"),
    "mode-an-int": (_edit_entry("srv/app/one", mode=493), "has no valid mode"),
    "mode-with-type-bits": (_edit_entry("srv/app/one", mode="100644"), "has no valid mode"),
    "uid-a-bool": (_edit_entry("srv/app/one", uid=True), "srv/app/one has no valid owner"),
    "uid-negative": (_edit_entry("srv/app/one", uid=-1), "has no valid owner"),
    "gid-a-string": (_edit_entry("srv/app/one", gid="0"), "has no valid owner"),
    "uid-a-float": (_edit_entry("srv/app/one", uid=1.0), "has no valid owner"),
    "uid-infinite": (_edit_entry("srv/app/one", uid=1e400), "cannot be read as JSON"),
    "size-negative": (_edit_entry("srv/app/one/notes.txt", size=-1), "has no valid size"),
    "size-a-float": (_edit_entry("srv/app/one/notes.txt", size=6.0), "has no valid size"),
    "sha256-upper": (_edit_entry("srv/app/one/notes.txt", sha256="A" * 64), "has no valid sha256"),
    "type-fifo": (_edit_entry("srv/app/one", type="fifo"), "has an unknown type"),
    "path-absolute": (_edit_entry("srv/app/one", path="/srv/app/one"), "files[1] has no valid path"),
    "path-dotdot": (_edit_entry("srv/app/one", path="srv/app/../app/one"), "files[1] has no valid path"),
    "path-outside-the-paths": (_edit_entry("srv/app/one", path="etc/cron.d"), "etc/cron.d is outside the paths"),
    "path-twice": (lambda m: _files(m).append(dict(_files(m)[1])), "files lists srv/app/one twice"),
    "link-target-empty": (
        lambda m: _files(m).append({**_files(m)[0], "path": "srv/app/l", "type": "symlink", "target": ""}),
        "no valid link target",
    ),
    "links-elsewhere": (lambda m: m.update(links=[{"path": "/etc", "target": "/x"}]), "links[0] is not a path of"),
    "links-a-string": (lambda m: m.update(links="/srv/app"), "'links' is not a list"),
    "snapshots-entry": (lambda m: m.update(snapshots=[1]), "snapshots[0] is not an object"),
    "format-version-a-bool": (lambda m: m.update(format_version=True), "has no format version"),
    "format-version-a-string": (lambda m: m.update(format_version="1"), "has no format version"),
    "not-our-format": (lambda m: m.update(format="tar"), "is not a selfhost.dr backup manifest"),
    "metadata-a-list": (lambda m: m.update(metadata=[]), "'metadata' is not a dict"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_sidecar_manifest(case: str, sets: MakeDir, dest: Path) -> None:
    edit, words = MALFORMED[case]
    members = tree("srv/app")
    bad = manifest_for(members, PATHS)
    edit(bad)
    crafted = write_set(sets(), members, PATHS, sidecar=manifest_blob(bad))
    sentence = refused(crafted, dest, None, words)
    assert sentence.count("\n") == 0 and "Traceback" not in sentence


@pytest.mark.parametrize("case", ["files-entry-a-string", "paths-overlap", "uid-a-bool", "path-dotdot"])
def test_malformed_embedded_manifest(case: str, sets: MakeDir, dest: Path) -> None:
    """The sidecar is sound, the copy inside the archive is not (and so differs)."""
    edit, words = MALFORMED[case]
    members = tree("srv/app")
    bad = manifest_for(members, PATHS)
    edit(bad)
    crafted = write_set(sets(), members, PATHS, embedded=manifest_blob(bad))
    refused(crafted, dest, None, words)


@pytest.mark.parametrize(
    "blob",
    [
        b'{"format": "selfhost.dr/backup-set", "format_version": 1, "x": NaN}',
        b'{"format": "selfhost.dr/backup-set", "format_version": 1, "x": ' + b"9" * 5000 + b"}",
        b"[" * 100_000 + b"]" * 100_000,
        b'{"a": ' * 100_000 + b"1" + b"}" * 100_000,
    ],
    ids=["nan", "5000-digit-number", "100000-nested-lists", "100000-nested-objects"],
)
def test_hostile_json_in_the_sidecar(blob: bytes, sets: MakeDir, dest: Path) -> None:
    crafted = write_set(sets(), tree("srv/app"), PATHS, sidecar=blob)
    refused(crafted, dest, None, "manifest ")


def test_deeply_nested_embedded_manifest(sets: MakeDir, dest: Path) -> None:
    crafted = write_set(sets(), tree("srv/app"), PATHS, embedded=b"[" * 100_000 + b"]" * 100_000)
    refused(crafted, dest, None, "the manifest inside the archive")


def test_huge_manifests_are_refused_without_reading_them(sets: MakeDir, dest: Path) -> None:
    """A 300 MiB manifest member (zeros, streamed: the archive is a few KiB) and a sparse 300 MiB sidecar."""
    crafted = write_set(
        sets(), tree("srv/app"), PATHS, no_embedded=True, extra_members=[(M(MANIFEST_MEMBER, mode=0o600), 300 << 20)]
    )
    assert os.path.getsize(crafted.path) < 1 << 20
    tracemalloc.start()
    try:
        refused(crafted, dest, None, "")
        result = verify(crafted.path, record=False)
        assert "the manifest inside the archive is larger than 256 MiB" in result.problems
        with open(crafted.sidecars.manifest, "r+b") as handle:
            handle.truncate(300 << 20)
        refused(crafted, dest, None, "is larger than 256 MiB")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 << 20, f"{peak >> 20} MiB held"


def test_the_manifest_size_limit_applies_to_both_copies(
    sets: MakeDir, dest: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    crafted = write_set(sets(), tree("srv/app"), PATHS)
    size = os.path.getsize(crafted.sidecars.manifest)
    monkeypatch.setattr(backup_set, "MAX_MANIFEST", size - 1)
    sentence = refused(crafted, dest, None, "is larger than")
    assert "the manifest inside the archive is larger than" in " ".join(verify(crafted.path, record=False).problems)
    assert sentence.startswith("refusing to restore: ")


def test_huge_uid_in_the_manifest_gets_verifys_sentence(sets: MakeDir, dest: Path) -> None:
    """A uid of 10**30 is no owner: the manifest is refused as such, before anything uses it (fchown raised
    OverflowError before the reviewed fix)."""
    crafted = write_set(sets(), tree("srv/app"), PATHS, edit=_edit_entry("srv/app/two", uid=10**30))
    refused(crafted, dest, ["/srv/app/two/x.txt"], "srv/app/two has no valid owner")


# -- 6: member names and types ----------------------------------------------------------------------------------------

UNSAFE = {
    "absolute": (M("/srv/app/evil", data=b"x"), "an absolute path"),
    "dotdot": (M("srv/app/../../../outside/evil", data=b"x"), "a '..' component"),
    "dotdot-dir": (M("srv/app/..", "dir"), "a '..' component"),
    "dot": (M("srv/app/./evil", data=b"x"), "a name that is not normalised"),
    "leading-dot": (M("./srv/app/evil", data=b"x"), "a name that is not normalised"),
    "empty-component": (M("srv/app//evil", data=b"x"), "a name that is not normalised"),
    "trailing-slash-on-a-file": (M("srv/app/evil/", data=b"x"), "a name that is not normalised"),
    "nul-in-pax-path": (M("srv/app/x", data=b"x", pax={"path": "srv/app/ev\0il"}), "a name that is not normalised"),
    "gnu-long-name-dotdot": (
        M("srv/app/" + "d/" * 60 + "../" * 70 + "evil", data=b"x", fmt=tarfile.GNU_FORMAT),
        "'..'",
    ),
    "hard-link": (M("srv/app/hard", "hardlink", target="srv/app/two/x.txt"), "a hard link"),
    "hard-link-outside": (M("srv/app/hard", "hardlink", target="/etc/shadow"), "a hard link"),
    "fifo": (M("srv/app/fifo", "fifo"), "a device, fifo or other special type"),
    "char-device": (M("srv/app/null", "chr", mode=0o666), "a device, fifo"),
    "block-device": (M("srv/app/blk", "blk", mode=0o666), "a device, fifo"),
    "empty-link-target": (M("srv/app/l", "symlink", target=""), "an empty link target"),
    "nul-in-link-target": (M("srv/app/l", "symlink", pax={"linkpath": "a\0b"}), "an empty link target"),
}


@pytest.mark.parametrize("case", sorted(UNSAFE))
def test_unsafe_member(case: str, sets: MakeDir, dest: Path, outside: Path) -> None:
    member, words = UNSAFE[case]
    member.listed = False  # a manifest naming it would be refused first, for its own reasons
    crafted = write_set(sets(), tree("srv/app", member), PATHS)
    refused(crafted, dest, None, f"is unsafe: it has {words}" if not words.startswith("'") else words)
    refused(crafted, dest, ["/srv/app/two"], "is unsafe")


def test_an_oversized_extended_header_is_refused_without_reading_it(sets: MakeDir, dest: Path) -> None:
    crafted = write_set(sets(), tree("srv/app", M("srv/app/x", data=b"x", pax={"comment": "c" * (4 << 20)})), PATHS)
    tracemalloc.start()
    try:
        refused(crafted, dest, None, "larger than 1 MiB")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20, f"{peak >> 20} MiB held"


def test_a_many_component_name_costs_bounded_memory(sets: MakeDir) -> None:
    name = "srv/app/" + "/".join(["a"] * 8000)
    crafted = write_set(sets(), tree("srv/app", M(name, data=b"x")), PATHS)
    tracemalloc.start()
    try:
        verify(crafted.path, record=False)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 32 << 20, f"{peak >> 20} MiB held for one 16 KB name"


def test_a_deep_tree_restores_with_the_default_descriptor_limit(sets: MakeDir, dest: Path) -> None:
    depth = 1200
    members = [M("srv/app", "dir")] + [M("srv/app/" + "/".join(["d"] * n), "dir") for n in range(1, depth + 1)]
    members.append(M(members[-1].name + "/f", data=b"deep"))
    crafted = write_set(sets(), members, PATHS)
    assert verify(crafted.path, record=False).ok
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(1024, hard), hard))
    try:
        outcome = restored(crafted.path, dest)
        for waiting in pending():
            commit(str(waiting["restore_id"]))  # removing the 1200-level safety copy holds a descriptor per level too
        leftovers = staging_leftovers(dest / "srv")
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        safe_fs.remove_path(str(dest))  # deeper than shutil.rmtree (pytest's clean-up) can recurse
    assert leftovers == []
    assert outcome == "ok"


# -- 7: verify's temporary files ---------------------------------------------------------------------------------------


@pytest.fixture
def db_bytes(tmp_path: Path) -> bytes:
    make_db(tmp_path / "x.db", rows=6000)
    return (tmp_path / "x.db").read_bytes()


def _spied(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, bool]]:
    seen: list[tuple[str, bool]] = []
    original = databases._integrity_of_file

    def spy(path: str) -> str:
        seen.append((path, os.path.isfile(path)))
        return original(path)

    monkeypatch.setattr(databases, "_integrity_of_file", spy)
    return seen


def _verify_dirs(directory: Path) -> list[str]:
    return [n for n in os.listdir(directory) if n.startswith(".selfhost-dr-verify-")]


def test_spill_goes_beside_the_set_or_into_tmpdir_and_is_removed(
    sets: MakeDir, tmp_path: Path, db_bytes: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = sets()
    crafted = write_set(home, tree("srv/app", M("srv/app/x.db", data=db_bytes)), PATHS)
    seen = _spied(monkeypatch)
    assert verify(crafted.path, record=False, memory_limit=0).ok
    assert len(seen) == 1 and seen[0][1]
    assert Path(seen[0][0]).parent.parent == home and Path(seen[0][0]).parent.name.startswith(".selfhost-dr-verify-")
    assert _verify_dirs(home) == []

    scratch = tmp_path / "scratch"
    scratch.mkdir()
    assert verify(crafted.path, record=False, memory_limit=0, tmpdir=str(scratch)).ok
    assert Path(seen[1][0]).parent.parent == scratch
    assert os.listdir(scratch) == [] and _verify_dirs(home) == []


def test_spill_is_removed_when_the_run_stops_half_way(
    sets: MakeDir, dest: Path, db_bytes: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A database spilled to disk, then a member the unpacker refuses mid-stream: the exception leaves verify()."""
    home = sets()
    members = [
        M("srv/app", "dir"),
        M("srv/app/x.db", data=db_bytes),
        M("srv/app/two", data=b"a file where the manifest has a directory", record={"type": "dir"}),
    ]
    crafted = write_set(home, members, PATHS)
    monkeypatch.setattr(backup_set, "IN_MEMORY", False)  # every database is checked from a copy on disk
    seen = _spied(monkeypatch)
    before = state(dest)
    with pytest.raises(RestoreError):
        restore(crafted.path, dest_root=str(dest), only=["/srv/app/two"])
    assert seen and _verify_dirs(home) == []
    assert state(dest) == before and staging_leftovers(dest) == []


def test_a_full_temporary_file_system_is_reported_as_such(sets: MakeDir, tmp_path: Path, db_bytes: bytes) -> None:
    small = tmp_path / "small"
    small.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(small)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        assert len(db_bytes) > 1 << 20
        crafted = write_set(sets(), tree("srv/app", M("srv/app/x.db", data=db_bytes)), PATHS)
        with pytest.raises(BackupError) as caught:
            verify(crafted.path, record=False, memory_limit=0, tmpdir=str(small))
        message = str(caught.value)
        assert f"the temporary directory {small} is full" in message and "srv/app/x.db" in message
        assert "cannot be read" not in message
        assert os.listdir(small) == []
    finally:
        subprocess.run(["umount", str(small)], check=False)


# -- 8: a failed restore leaves everything as it was ----------------------------------------------------------------


def test_failed_restore_in_place_leaves_the_previous_data(sets: MakeDir, dest: Path) -> None:
    """The last member of the archive is wrong: everything before it was already unpacked into staging."""
    members = tree("srv/app", M("srv/app/zzz", data=b"tampered"))
    crafted = write_set(sets(), members, PATHS, edit=_edit_entry("srv/app/zzz", sha256="1" * 64))
    before = state(dest)
    refused(crafted, dest, None, "(sha256)")
    refused(crafted, dest, ["/srv/app/one"], "(sha256)")
    assert state(dest) == before
    records = list(Journal().records())
    assert records and {r.state for r in records} == {"aborted"}


def test_failed_swap_puts_back_every_tree(sets: MakeDir, dest: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (dest / "srv" / "b").mkdir()
    (dest / "srv" / "b" / "old").write_text("old b\n")
    os.chown(dest / "srv" / "b", VICTIM_UID, VICTIM_UID)
    members = [*tree("srv/app"), M("srv/b", "dir"), M("srv/b/new", data=b"new")]
    crafted = write_set(sets(), members, ["/srv/app", "/srv/b"])
    before = state(dest)
    real_rename = os.rename

    def rename(src: str, dst: str, **kw: object) -> None:
        if str(src).startswith(".b.selfhost-dr-restore-"):
            raise OSError(errno.EIO, "injected failure", src)
        real_rename(src, dst, **kw)  # type: ignore[arg-type]

    with monkeypatch.context() as patched, pytest.raises(RestoreError, match="injected failure"):
        patched.setattr(os, "rename", rename)
        restore(crafted.path, dest_root=str(dest))
    assert state(dest) == before
    assert staging_leftovers(dest) == []
    assert [r.state for r in Journal().records()] == ["rolled_back"]


_KILLED = """
import os, sys
from ansible_collections.selfhost.dr.plugins.module_utils.engine import swap as r
point = sys.argv[3]
if point == "unpacking":
    original_end = r.StagingUnpacker.end
    def end(self, member):
        original_end(self, member)
        if member.name.endswith("zzz"):
            os._exit(9)
    r.StagingUnpacker.end = end
else:
    real_rename = os.rename
    def rename(src, dst, **kw):
        if str(src).startswith(".b.selfhost-dr-restore-"):
            os._exit(9)
        real_rename(src, dst, **kw)
    os.rename = rename
r.restore(sys.argv[1], dest_root=sys.argv[2])
"""


@pytest.mark.parametrize("point", ["unpacking", "swapping"])
def test_failed_by_a_kill_is_undone_by_the_next_run(point: str, sets: MakeDir, dest: Path, root: Path) -> None:
    """The process dies (no except, no finally): the journal and the next run put everything back."""
    (dest / "srv" / "b").mkdir()
    (dest / "srv" / "b" / "old").write_text("old b\n")
    members = [*tree("srv/app"), M("srv/b", "dir"), M("srv/b/new", data=b"new"), M("srv/b/zzz", data=b"z")]
    crafted = write_set(sets(), members, ["/srv/app", "/srv/b"])
    before = state(dest)
    env = dict(os.environ, PYTHONPATH=str(root / ".cache" / "collections"))
    done = subprocess.run([sys.executable, "-c", _KILLED, crafted.path, str(dest), point], env=env, check=False)
    assert done.returncode == 9
    assert [r.state for r in Journal().records()] == ["staging" if point == "unpacking" else "swapping"]
    assert state(dest) != before or point == "unpacking"  # half-swapped, or staged beside the targets
    assert staging_leftovers(dest)
    undone = recover_interrupted()
    assert len(undone) == 1
    assert state(dest) == before and staging_leftovers(dest) == []
    assert [r.state for r in Journal().records()] == ["aborted" if point == "unpacking" else "rolled_back"]


def test_failed_partial_restore_creates_no_directories(sets: MakeDir, dest: Path) -> None:
    """Missing directories on the way to an only= target are not made from the unverified sidecar before the
    verification (they were, world-writable and owned by 4321 here, before the reviewed fix)."""
    members = tree("srv/app")
    tampered = manifest_for(members, PATHS)
    _edit_entry("srv/app/two", mode="0777", uid=4321)(tampered)
    crafted = write_set(sets(), members, PATHS, sidecar=manifest_blob(tampered))
    refused(crafted, dest, ["/srv/app/two/x.txt"], "differs from the manifest inside the archive")


def test_a_partial_restore_after_supersede_replaces_only_what_was_chosen(sets: MakeDir, dest: Path) -> None:
    one = dest / "srv" / "app" / "one"
    (one / "own.txt").write_text("the host's file\n")
    os.chown(one, VICTIM_UID, VICTIM_UID)
    os.chmod(one, 0o711)
    without_one = write_set(sets(), [M("srv/app", "dir"), M("srv/app/two", "dir")], PATHS)
    restore(without_one.path, dest_root=str(dest))  # not committed: /srv/app/one is in the safety copy
    assert not one.exists()
    ordinary = write_set(sets(), tree("srv/app"), PATHS)  # declares one as 0750 root
    done = restore(ordinary.path, dest_root=str(dest), only=["/srv/app/one/notes.txt"])
    commit(done.restore_id)
    # The first restore removed /srv/app/one (its set has none); the second brings back only what was chosen,
    # with the directory the set declares. The host's own one, own.txt in it, waits in the first one's safety copy.
    assert os.listdir(one) == ["notes.txt"] and (one / "notes.txt").read_bytes() == b"notes\n"
    st = one.lstat()
    assert (stat.S_IMODE(st.st_mode), st.st_uid) == (0o750, 0)
    kept = [p for p in pending() if p["state"] == "kept"]
    assert len(kept) == 1
    saved = Path(str(kept[0]["swaps"][0]["safety"])) / "one"  # type: ignore[index]
    assert (saved / "own.txt").read_bytes() == b"the host's file\n", "a file the restore was not asked for is gone"
    assert (stat.S_IMODE(saved.lstat().st_mode), saved.lstat().st_uid) == (0o711, VICTIM_UID)


def test_a_partial_restore_makes_missing_directories_as_declared(sets: MakeDir, dest: Path) -> None:
    """The counterpart of the refused case: missing directories on the way are staged with the chosen path and
    get the mode and owner the set declares; nothing else of the set is restored."""
    members = tree("srv/app", M("srv/app/new", "dir", mode=0o2750, gid=4321), M("srv/app/new/deep", "dir", mode=0o700))
    members.append(M("srv/app/new/deep/f", data=b"f", mode=0o640))
    crafted = write_set(sets(), members, PATHS)
    before = state(dest)
    restore(crafted.path, dest_root=str(dest), only=["/srv/app/new/deep/f"])
    app = dest / "srv" / "app"
    assert [(stat.S_IMODE(p.lstat().st_mode), p.lstat().st_gid) for p in (app / "new", app / "new" / "deep")] == [
        (0o2750, 4321),
        (0o700, 0),
    ]
    assert (app / "new" / "deep" / "f").read_bytes() == b"f" and os.listdir(app / "new" / "deep") == ["f"]
    after = state(dest)
    assert {k: v for k, v in after.items() if not k.startswith("srv/app/new")} == before


def test_rollback_of_a_restored_link(sets: MakeDir, dest: Path) -> None:
    """A tree that is one link (made only at the end): rollback finds it as the restore left it."""
    crafted = write_set(sets(), tree("srv/app", M("srv/app/latest", "symlink", target="two/x.txt")), PATHS)
    before = state(dest)
    done = restore(crafted.path, dest_root=str(dest), only=["/srv/app/latest"])
    assert os.readlink(dest / "srv/app/latest") == "two/x.txt"
    assert rollback(done.restore_id) is True
    assert state(dest) == before
