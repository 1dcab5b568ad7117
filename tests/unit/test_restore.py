"""Restoring sets: verified first, swapped in with a safety copy, undoable, and refusing what is unsafe."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from ansible_collections.selfhost.dr.plugins.module_utils import safe_fs
from ansible_collections.selfhost.dr.plugins.module_utils._common import JournalError, RestoreError
from ansible_collections.selfhost.dr.plugins.module_utils.engine.swap import commit, pending, restore, rollback
from ansible_collections.selfhost.dr.plugins.module_utils.sets.create import create
from ansible_collections.selfhost.dr.plugins.module_utils.sets.verify import verify

from .sqlite_helpers import consistent, make_db


@pytest.fixture
def app(tmp_path: Path) -> Path:
    root = tmp_path / "srv" / "app"
    (root / "one" / "uploads").mkdir(parents=True)
    (root / "two").mkdir()
    (root / "empty").mkdir()
    (root / "one" / "notes.txt").write_text("one\n")
    (root / "one" / "uploads" / "f.bin").write_bytes(os.urandom(100_000))
    (root / "two" / "notes.txt").write_text("two\n")
    os.chmod(root / "one" / "notes.txt", 0o640)
    os.chmod(root / "two", 0o750)
    (root / "one" / "latest").symlink_to("notes.txt")
    make_db(root / "one" / "app.db", rows=300)
    return root


def snapshot_of(root: Path) -> dict[str, object]:
    """What a user would compare: every path with its type, mode and content (databases by their rows)."""
    seen: dict[str, object] = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        mode = stat.S_IMODE(path.lstat().st_mode)
        if path.is_symlink():
            seen[rel] = ("link", os.readlink(path))
        elif path.is_dir():
            seen[rel] = ("dir", mode)
        elif path.suffix == ".db":
            seen[rel] = ("db", mode, consistent(path))
        else:
            seen[rel] = ("file", mode, path.read_bytes())
    return seen


def test_full_restore_into_another_root_reproduces_the_tree(app: Path, tmp_path: Path) -> None:
    made = create([str(app)], str(tmp_path))
    drill = tmp_path / "drill"
    done = restore(made.path, dest_root=str(drill))
    restored = drill / str(app).lstrip("/")
    assert snapshot_of(restored) == snapshot_of(app)
    assert [s.target for s in done.swaps] == [str(restored)] and done.swaps[0].safety == ""
    assert done.files == 4 and not [p for p in restored.parent.iterdir() if p.name.startswith(".")]


def test_restore_in_place_keeps_a_safety_copy_until_commit_and_rolls_back(app: Path, tmp_path: Path) -> None:
    made = create([str(app)], str(tmp_path))
    before = snapshot_of(app)
    (app / "one" / "notes.txt").write_text("damaged\n")
    (app / "two" / "stray.txt").write_text("new\n")
    damaged = snapshot_of(app)

    done = restore(made.path, stamp="T1")
    assert snapshot_of(app) == before
    safety = Path(done.swaps[0].safety)
    assert safety.name == f".app.selfhost-dr-safety-{done.restore_id}" and snapshot_of(safety) == damaged
    assert done.restore_id.startswith("T1-")

    assert rollback(done.restore_id) is True
    assert snapshot_of(app) == damaged and not safety.exists()
    assert rollback(done.restore_id) is False  # repeating it changes nothing
    assert snapshot_of(app) == damaged

    done = restore(made.path)
    assert commit(done.restore_id) is True
    assert commit(done.restore_id) is False
    assert snapshot_of(app) == before
    assert [p.name for p in app.parent.iterdir()] == ["app"]


def test_restore_of_one_part_leaves_the_rest_alone(app: Path, tmp_path: Path) -> None:
    made = create([str(app)], str(tmp_path))
    before = snapshot_of(app / "one")
    (app / "one" / "app.db").write_bytes(b"garbage")
    (app / "two" / "notes.txt").write_text("changed since the backup\n")
    done = restore(made.path, only=[str(app / "one")])
    commit(done.restore_id)
    assert snapshot_of(app / "one") == before
    assert (app / "two" / "notes.txt").read_text() == "changed since the backup\n"
    with pytest.raises(RestoreError, match=r"/elsewhere is not in this backup set"):
        restore(made.path, only=["/elsewhere"])


def test_a_damaged_or_newer_set_is_refused_before_anything_changes(app: Path, tmp_path: Path) -> None:
    made = create([str(app)], str(tmp_path))
    (app / "two" / "notes.txt").write_text("current\n")
    current = snapshot_of(app)
    data = bytearray(Path(made.path).read_bytes())
    data[len(data) // 2] ^= 1
    Path(made.path).write_bytes(bytes(data))
    with pytest.raises(RestoreError, match=r"^refusing to restore: backup set .* failed verification: the sha256"):
        restore(made.path)
    assert snapshot_of(app) == current

    newer = create([str(app)], str(tmp_path), label="newer")
    manifest = json.loads(Path(newer.manifest_path).read_text())
    manifest["format_version"] = 2
    Path(newer.manifest_path).write_text(json.dumps(manifest))
    with pytest.raises(RestoreError, match=r"format version 2, newer than the 1 this collection reads"):
        restore(newer.path)
    assert snapshot_of(app) == current


def test_a_link_pointing_outside_the_tree_is_restored_as_a_link(app: Path, tmp_path: Path) -> None:
    (app / "one" / "localtime").symlink_to("/usr/share/zoneinfo/UTC")
    (app / "current").symlink_to("../../releases/42")
    made = create([str(app)], str(tmp_path))
    assert verify(made.path).ok
    restored = tmp_path / "drill" / str(app).lstrip("/")
    restore(made.path, dest_root=str(tmp_path / "drill"))
    assert os.readlink(restored / "one" / "localtime") == "/usr/share/zoneinfo/UTC"
    assert os.readlink(restored / "current") == "../../releases/42"
    assert snapshot_of(restored) == snapshot_of(app)


def test_a_set_without_its_sidecar_manifest_is_verified_then_unpacked(app: Path, tmp_path: Path) -> None:
    made = create([str(app)], str(tmp_path))
    Path(made.manifest_path).unlink()
    done = restore(made.path, dest_root=str(tmp_path / "drill"))
    assert snapshot_of(tmp_path / "drill" / str(app).lstrip("/")) == snapshot_of(app)
    assert done.files == 4


def test_a_set_verified_before_is_checked_by_its_whole_file_sha256(app: Path, tmp_path: Path) -> None:
    made = create([str(app)], str(tmp_path))
    assert verify(made.path).ok  # as the backup role does right after writing
    lines: list[str] = []
    done = restore(made.path, dest_root=str(tmp_path / "drill"), log=lines.append)
    assert snapshot_of(tmp_path / "drill" / str(app).lstrip("/")) == snapshot_of(app)
    assert done.files == 4
    assert any("passed verification before" in line for line in lines), lines

    # Bit rot that keeps size and mtime: the record still says "verified", the whole-file sha256 does not.
    st = os.stat(made.path)
    data = bytearray(Path(made.path).read_bytes())
    data[len(data) // 3] ^= 0x10
    Path(made.path).write_bytes(bytes(data))
    os.utime(made.path, ns=(st.st_atime_ns, st.st_mtime_ns))
    with pytest.raises(RestoreError, match=r"^refusing to restore: .*the sha256 of the file does not match"):
        restore(made.path, dest_root=str(tmp_path / "drill2"))
    assert not (tmp_path / "drill2").exists() or not any((tmp_path / "drill2").rglob("*.txt"))


def test_an_uncommitted_restore_is_superseded_by_the_next_one_and_nothing_is_deleted(app: Path, tmp_path: Path) -> None:
    made = create([str(app)], str(tmp_path))
    (app / "two" / "notes.txt").write_text("before the first restore\n")
    first = restore(made.path, stamp="T1")  # the controller dies before it commits
    assert [p["restore_id"] for p in pending()] == [first.restore_id]
    (app / "two" / "notes.txt").write_text("written after the first restore\n")
    second = restore(made.path, stamp="T2")
    assert [r["restore_id"] for r in second.recovered] == [first.restore_id]
    # What the application wrote since the first restore is the second one's safety copy; the state before both
    # is still the first one's: nothing was deleted, and both are listed until someone commits them.
    assert (Path(second.swaps[0].safety) / "two" / "notes.txt").read_text() == "written after the first restore\n"
    assert (Path(first.swaps[0].safety) / "two" / "notes.txt").read_text() == "before the first restore\n"
    assert {p["restore_id"]: p["state"] for p in pending()} == {first.restore_id: "kept", second.restore_id: "swapped"}
    with pytest.raises(JournalError, match=r"^.* changed since restore .*; nothing was put back$"):
        rollback(first.restore_id)  # its target is the second restore's tree now: refused, nothing touched
    assert (app / "two" / "notes.txt").read_text() == "two\n"

    # Accepted with its safety copy kept: the next restore leaves it alone, a later commit deletes it.
    assert commit(second.restore_id, keep_safety=True) is True
    assert commit(second.restore_id, keep_safety=True) is False
    third = restore(made.path, stamp="T3")
    assert third.recovered == [] and Path(second.swaps[0].safety).is_dir()
    assert all(commit(r.restore_id) is True for r in (third, second, first))
    assert pending() == []
    assert [p.name for p in app.parent.iterdir()] == ["app"]


def test_a_path_that_was_excluded_when_backed_up_verifies_and_restores(app: Path, tmp_path: Path) -> None:
    cache = app.parent / "cache"
    cache.mkdir()
    made = create([str(app), str(cache)], str(tmp_path), excludes=[str(cache)])
    assert str(cache) in made.manifest["paths"] and verify(made.path).ok  # type: ignore[operator]
    done = restore(made.path, dest_root=str(tmp_path / "drill"))  # nothing to put back for cache: left alone
    assert done.paths == [str(app)]
    with pytest.raises(RestoreError, match=r"^nothing in this backup set lies under .*/cache$"):
        restore(made.path, dest_root=str(tmp_path / "drill2"), only=[str(cache)])


def test_a_verification_without_databases_does_not_spare_a_restore_checking_them(app: Path, tmp_path: Path) -> None:
    made = create([str(app)], str(tmp_path))
    assert verify(made.path, check_sqlite=False).ok
    lines: list[str] = []
    restore(made.path, dest_root=str(tmp_path / "drill"), log=lines.append)
    assert not any("passed verification before" in line for line in lines), lines
    assert verify(made.path).ok
    restore(made.path, dest_root=str(tmp_path / "drill2"), log=lines.append)
    assert any("passed verification before" in line for line in lines), lines


def test_a_roll_back_whose_safety_copy_is_gone_leaves_the_restored_tree(app: Path, tmp_path: Path) -> None:
    made = create([str(app)], str(tmp_path))
    done = restore(made.path)
    safe_fs.remove_path(done.swaps[0].safety)  # deleted by hand, or by a commit that began and failed
    before = snapshot_of(app)
    with pytest.raises(JournalError, match=r"^the safety copy .* of restore .* is gone; .*/app was left as it is$"):
        rollback(done.restore_id)
    assert snapshot_of(app) == before


def test_a_manifest_with_an_impossible_mtime_is_refused_in_one_sentence(app: Path, tmp_path: Path) -> None:
    made = create([str(app)], str(tmp_path))
    manifest = json.loads(Path(made.manifest_path).read_text())
    manifest["files"][0]["mtime"] = 2**70
    Path(made.manifest_path).write_text(json.dumps(manifest))
    with pytest.raises(RestoreError, match=r"is not a valid manifest: .* has no valid mtime$"):
        restore(made.path, dest_root=str(tmp_path / "drill"))
    assert not (tmp_path / "drill").exists() or not any((tmp_path / "drill").rglob("*.txt"))
