"""The procedures of engine/: one sequence for every application, check mode refusing what the run refuses.

The application here is a recorder (``Recorder``): a stand-in for tenement or Tomo that only notes what the
procedure asked of it, so these tests can assert the order of stop, swap, fix-up, start and commit, and that a
refused set is refused *before* anything stops. The real applications run the same procedures in
tests/integration (tenement) and in the Molecule scenarios.
"""

from __future__ import annotations

import os
import shutil
from datetime import UTC, datetime
from pathlib import Path

import pytest

from ansible_collections.selfhost.dr.plugins.module_utils._common import AppError, BackupError, Error, Log, RestoreError
from ansible_collections.selfhost.dr.plugins.module_utils.apps.base import Application, Facts
from ansible_collections.selfhost.dr.plugins.module_utils.engine import backup, restore
from ansible_collections.selfhost.dr.plugins.module_utils.engine.journal import Journal
from ansible_collections.selfhost.dr.plugins.module_utils.sets.create import create

from .crafted_sets import M, manifest_blob, manifest_for, tree, write_set
from .test_attack_restore import DIFFERS, MALFORMED, OUT, PATHS, STRUCTURE, UNSAFE, state


class Recorder(Application):
    """An application whose data is ``paths``; it records every call, and fails once where it is told to."""

    modes = ("hot", "cold")

    def __init__(self, name: str, paths: list[str], fail: str = "", running: bool = True) -> None:
        self.name = name
        self.paths = paths
        self.fail = fail
        self.running = running
        self.calls: list[str] = []

    def _note(self, call: str) -> None:
        self.calls.append(call)
        if call == self.fail:
            self.fail = ""  # once
            raise AppError(f"{self.name} failed to {call}")

    def inspect(self) -> Facts:
        running = ["svc:a"] if self.running else []
        unreachable = "" if self.running else "it is not running"
        return Facts(self.name, "1.0", list(self.paths), [], {"running": running}, running, unreachable)

    def stop(self, log: Log = print) -> bool:
        self._note("stop")
        return self.running

    def start(self, units: list[str], timeout: float, log: Log = print) -> None:
        self._note("start " + ",".join(units))

    def fix_up(self, manifest: dict[str, object], targets: list[str], log: Log = print) -> None:
        self._note("fix_up")

    def before_archive(self, facts: Facts, dest: str, check: bool, log: Log = print) -> Facts:
        if not check:
            self._note("archive")
        return facts


def _refused_alike(app: Recorder, archive: str, dest: Path) -> str:
    """Check mode and the real run refuse ``archive`` in the same sentence, and nothing was stopped or changed."""
    options = restore.Options(dest_root=str(dest))
    before = state(dest)
    with pytest.raises(Error) as in_check:
        restore.plan(app, archive, options, check=True)
    with pytest.raises(Error) as in_run:
        restore.run(app, restore.plan(app, archive, options), options)
    assert str(in_run.value) == str(in_check.value)
    assert app.calls == [], "the application was touched before the set was refused"
    assert state(dest) == before
    return str(in_check.value)


@pytest.fixture
def dest(tmp_path: Path) -> Path:
    app = tmp_path / "dest" / "srv" / "app"
    (app / "one").mkdir(parents=True)
    (app / "one" / "notes.txt").write_text("current notes\n")
    return tmp_path / "dest"


def _hostile_sets(tmp_path: Path) -> dict[str, str]:
    outside = tmp_path / "outside"
    outside.mkdir()
    made: dict[str, str] = {}

    def place(name: str) -> Path:
        where = tmp_path / "sets" / name
        where.mkdir(parents=True)
        return where

    for case, (extra, _words) in STRUCTURE.items():
        members = [M(m.name, m.kind, m.data, m.mode, target=m.target.replace(OUT, str(outside))) for m in extra]
        made[f"structure-{case}"] = write_set(place(f"s-{case}"), tree("srv/app", *members), PATHS).path
    for case, (member, _key) in DIFFERS.items():
        made[f"differs-{case}"] = write_set(place(f"d-{case}"), tree("srv/app", member), PATHS).path
    for case, (member, _words) in UNSAFE.items():
        member.listed = False
        made[f"unsafe-{case}"] = write_set(place(f"u-{case}"), tree("srv/app", member), PATHS).path
    for case, (edit, _words) in MALFORMED.items():
        members = tree("srv/app")
        bad = manifest_for(members, PATHS)
        edit(bad)
        made[f"malformed-{case}"] = write_set(place(f"m-{case}"), members, PATHS, sidecar=manifest_blob(bad)).path
    return made


def test_check_mode_refuses_every_hostile_set_the_run_refuses_before_anything_stops(tmp_path: Path, dest: Path) -> None:
    sets = _hostile_sets(tmp_path)
    assert len(sets) > 60
    sentences = {case: _refused_alike(Recorder("files", PATHS), archive, dest) for case, archive in sets.items()}
    assert all(s.count("\n") == 0 for s in sentences.values()), sentences


def test_a_set_of_another_application_is_refused_before_anything_stops(tmp_path: Path, dest: Path) -> None:
    crafted = write_set(tmp_path, tree("srv/app"), PATHS)  # app "files"
    sentence = _refused_alike(Recorder("tenement", PATHS), crafted.path, dest)
    assert sentence.endswith("is a backup of files, not of tenement")


def test_a_set_naming_a_path_the_application_does_not_keep_is_refused_before_anything_stops(
    tmp_path: Path, dest: Path
) -> None:
    """A crafted set with valid checksums whose manifest names /etc/cron.d beside the application's own tree: a
    restore as root would put a cron job in place. Only where the application keeps its data on this host is
    restored, whatever the set says."""
    (tmp_path / "a").mkdir()
    only_foreign = write_set(tmp_path / "a", tree("etc/cron.d"), ["/etc/cron.d"]).path
    sentence = _refused_alike(Recorder("files", PATHS), only_foreign, dest)
    assert sentence == (
        f"{os.path.basename(only_foreign)} would restore /etc/cron.d, which holds or lies in the system's /etc; "
        "nothing was changed"
    )
    (tmp_path / "b").mkdir()
    beside = write_set(tmp_path / "b", [*tree("srv/app"), *tree("srv/other")], ["/srv/app", "/srv/other"]).path
    assert _refused_alike(Recorder("files", PATHS), beside, dest).endswith(
        "would restore /srv/other, which is not where files keeps its data on this host (/srv/app); nothing was changed"
    )
    # the parent of the application's path is not the application's either
    (tmp_path / "c").mkdir()
    above = write_set(tmp_path / "c", tree("srv"), ["/srv"]).path
    assert "would restore /srv, which is not where files keeps" in _refused_alike(Recorder("files", PATHS), above, dest)


@pytest.mark.parametrize("where", ["above", "below"])
def test_a_set_holding_or_inside_selfhost_drs_own_state_is_refused_even_where_the_application_keeps_data(
    where: str, tmp_path: Path, dest: Path, state_dir: Path
) -> None:
    """An application configured (by mistake) to keep its data above selfhost.dr's state, or a set naming a tree
    inside it: a restore would replace the restore journal it runs on."""
    top = str(state_dir.parent if where == "above" else state_dir / "journal").lstrip("/")
    (tmp_path / "s").mkdir()
    crafted = write_set(tmp_path / "s", tree(top), ["/" + top]).path
    sentence = _refused_alike(Recorder("files", [str(state_dir.parent)]), crafted, dest)
    assert sentence.endswith(
        f"would restore /{top}, which holds or lies in selfhost.dr's own {state_dir}; nothing was changed"
    )


class _Derived(Recorder):
    """An application whose data dir comes from a file a restore writes back (tenement.toml): not trusted."""

    def __init__(self, derived: list[str], trusted: list[str]) -> None:
        super().__init__("files", [])
        self.derived, self.trusted = derived, trusted

    def trusted_roots(self) -> list[str]:
        return self.trusted

    def restore_roots(self, before: Facts | None) -> list[str]:
        return self.derived


@pytest.mark.parametrize(
    ("top", "words"),
    [
        ("etc/cron.d", "holds or lies in the system's /etc"),
        ("usr/local/bin", "holds or lies in the system's /usr"),
        ("home/alice/.ssh", "holds or lies in the system's /home"),
        ("var", "holds or lies in the system's /var/spool"),
    ],
)
def test_a_data_dir_named_by_a_restored_file_never_opens_the_systems_places(
    top: str, words: str, tmp_path: Path, dest: Path
) -> None:
    """A first hostile set restores a tenement.toml saying data_dir = "/": the next set is still refused the
    system's places (the operator's own settings alone may put the application's files there)."""
    crafted = write_set(tmp_path, tree(top), ["/" + top]).path
    assert words in _refused_alike(_Derived(["/"], []), crafted, dest)
    app = _Derived([], ["/" + top])  # what the operator's settings name is the operator's choice
    options = restore.Options(dest_root=str(dest))
    restore.run(app, restore.plan(app, crafted, options), options)
    assert (dest / top / "one" / "notes.txt").read_bytes() == b"notes\n"


def test_a_set_whose_paths_the_application_all_leaves_out_restores_nothing(tmp_path: Path, dest: Path) -> None:
    """Tomo leaves out the copy of its document: a set holding nothing else must not restore everything."""
    crafted = write_set(tmp_path, tree("srv/app"), PATHS).path
    app = Recorder("files", PATHS)
    app.restore_paths = lambda manifest: []  # type: ignore[method-assign]
    assert _refused_alike(app, crafted, dest).endswith("holds nothing of files to restore; nothing was changed")


def test_a_path_recorded_as_a_link_lands_where_it_leads_and_that_place_is_checked(tmp_path: Path, dest: Path) -> None:
    """An earlier restore left a link at the application's path (links are data); a set recording that path as a
    link to /etc would be swapped in at /etc: the place a tree lands is checked, not only the path it names."""
    (dest / "etc").mkdir()
    app_dir = dest / "srv" / "app"
    shutil.rmtree(app_dir)
    app_dir.symlink_to("../etc")
    crafted = write_set(tmp_path, tree("srv/app"), PATHS, links=[{"path": "/srv/app", "target": "/etc"}]).path
    assert _refused_alike(Recorder("files", PATHS), crafted, dest).endswith(
        "would restore /etc, which holds or lies in selfhost.dr's own /etc/selfhost-dr; nothing was changed"
    )


def _good_set(tmp_path: Path, content: str = "restored notes\n") -> str:
    source = tmp_path / "source" / "srv" / "app"
    (source / "one").mkdir(parents=True, exist_ok=True)
    (source / "one" / "notes.txt").write_text(content)
    out = tmp_path / "sets-good"
    out.mkdir(exist_ok=True)
    made = create([str(source)], str(out), app="files", stored_as={str(source): "/srv/app"}, label="hot")
    return made.path


def test_a_restore_stops_swaps_fixes_up_starts_what_ran_and_commits(tmp_path: Path, dest: Path) -> None:
    archive = _good_set(tmp_path)
    app = Recorder("files", PATHS)
    options = restore.Options(dest_root=str(dest))
    planned = restore.plan(app, archive, options)
    assert app.calls == []
    done = restore.run(app, planned, options)
    assert app.calls == ["stop", "fix_up", "start "]  # the set recorded nothing as running
    assert (dest / "srv" / "app" / "one" / "notes.txt").read_text() == "restored notes\n"
    assert done.committed
    assert Journal().load(done.restore_id).state == "committed"


def test_a_restore_that_does_not_start_puts_the_previous_data_back_and_starts_what_ran(
    tmp_path: Path, dest: Path
) -> None:
    archive = _good_set(tmp_path)
    app = Recorder("files", PATHS, fail="start ")
    options = restore.Options(dest_root=str(dest))
    with pytest.raises(RestoreError) as failed:
        restore.run(app, restore.plan(app, archive, options), options)
    sentence = str(failed.value)
    assert sentence.startswith(f"restoring files from {os.path.basename(archive)} failed (files failed to start )")
    assert sentence.endswith("the previous data are back and files runs them again")
    # stopped, restored, fixed up, failed to start; stopped again, rolled back, started with what ran before
    assert app.calls == ["stop", "fix_up", "start ", "stop", "start svc:a"]
    assert (dest / "srv" / "app" / "one" / "notes.txt").read_text() == "current notes\n"


def test_a_failed_roll_back_says_both_failures_in_one_sentence(tmp_path: Path, dest: Path) -> None:
    archive = _good_set(tmp_path)

    class Twice(Recorder):
        def start(self, units: list[str], timeout: float, log: Log = print) -> None:
            self._note("start " + ",".join(units))
            raise AppError("the service does not start")

    app = Twice("files", PATHS)
    options = restore.Options(dest_root=str(dest))
    with pytest.raises(RestoreError) as failed:
        restore.run(app, restore.plan(app, archive, options), options)
    sentence = str(failed.value)
    assert "failed (the service does not start), and putting the previous data back failed too" in sentence
    assert "\n" not in sentence
    # The data is back even so: only the start failed.
    assert (dest / "srv" / "app" / "one" / "notes.txt").read_text() == "current notes\n"


def test_newest_picks_a_units_own_set_or_a_whole_one(tmp_path: Path) -> None:
    source = tmp_path / "data"
    source.mkdir()
    (source / "f").write_text("x")
    out = tmp_path / "sets"
    out.mkdir()
    made = {}
    for hour, label in ((3, "hot"), (4, "instance-demo-alpha"), (5, "instance-demo-beta")):
        when = datetime(2026, 11, 22, hour, tzinfo=UTC)
        made[label] = create([str(source)], str(out), app="tenement", label=label, now=lambda when=when: when)
    hot, alpha = made["hot"], made["instance-demo-alpha"]
    assert restore.newest(str(out), "tenement") == hot.path  # never one instance's set for the whole server
    assert restore.newest(str(out), "tenement", ["demo:alpha"]) == alpha.path
    assert restore.newest(str(out), "tenement", ["demo:gamma"]) == hot.path
    assert restore.newest(str(out), "tenement", ["demo:alpha", "demo:beta"]) == hot.path
    assert restore.newest(str(out), "tenement", ["demo:beta"]) == made["instance-demo-beta"].path
    with pytest.raises(RestoreError, match=r"^there is no tomo backup set of the whole tomo in "):
        restore.newest(str(out), "tomo")


def test_a_cold_backup_starts_the_application_again_when_archiving_fails(tmp_path: Path) -> None:
    app = Recorder("files", [str(tmp_path)], fail="archive")
    options = backup.Options(dest=str(tmp_path / "sets"), verify=False)
    planned = backup.plan(app, "cold", options)
    with pytest.raises(AppError, match="files failed to archive"):
        backup.run(app, planned, options)
    assert app.calls == ["stop", "archive", "start svc:a"]


def test_a_backup_of_a_path_that_is_gone_is_refused_before_anything_stops(tmp_path: Path) -> None:
    app = Recorder("files", [str(tmp_path / "missing")])
    options = backup.Options(dest=str(tmp_path / "sets"))
    for check in (True, False):
        with pytest.raises(BackupError, match=r"missing does not exist, so files cannot be backed up$"):
            backup.plan(app, "cold", options, check=check)
    assert app.calls == []


def test_a_restore_that_runs_stands_when_dropping_its_safety_copies_fails(
    tmp_path: Path, dest: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    archive = _good_set(tmp_path)
    app = Recorder("files", PATHS)
    options = restore.Options(dest_root=str(dest))

    def broken(*_args: object, **_kwargs: object) -> bool:
        raise RestoreError("the disk went read-only")

    monkeypatch.setattr(restore.swap, "commit", broken)
    done = restore.run(app, restore.plan(app, archive, options), options)
    assert app.calls == ["stop", "fix_up", "start "], "a healthy restore was stopped again"
    assert not done.committed and "dropping the safety copies did not finish (the disk went read-only)" in done.warning
    assert (dest / "srv" / "app" / "one" / "notes.txt").read_text() == "restored notes\n"


def test_a_failed_stop_starts_again_what_it_stopped(tmp_path: Path, dest: Path) -> None:
    archive = _good_set(tmp_path)
    app = Recorder("files", PATHS, fail="stop")
    options = restore.Options(dest_root=str(dest))
    with pytest.raises(RestoreError, match=r"failed \(files failed to stop\); the previous data are back"):
        restore.run(app, restore.plan(app, archive, options), options)
    assert app.calls == ["stop", "stop", "start svc:a"]
    assert (dest / "srv" / "app" / "one" / "notes.txt").read_text() == "current notes\n"


def test_a_cold_backup_of_a_stopped_application_is_refused_before_anything_stops(tmp_path: Path) -> None:
    app = Recorder("files", [str(tmp_path)], running=False)
    with pytest.raises(AppError, match="a cold backup stops files and starts it again, but it is not running"):
        backup.plan(app, "cold", backup.Options(dest=str(tmp_path / "sets")))
    assert app.calls == []


def test_check_mode_of_a_backup_reports_what_it_would_archive_and_writes_nothing(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.txt").write_text("a")
    (data / "b.txt").write_text("bb")
    app = Recorder("files", [str(data)])
    options = backup.Options(dest=str(tmp_path / "sets"))
    planned = backup.plan(app, "hot", options, check=True)
    assert (planned.files, planned.bytes_in) == (2, 3)
    assert planned.names[0].startswith("files-") and planned.names[0].endswith("-hot.tar.zst")
    assert not (tmp_path / "sets").exists()
    assert app.calls == []


def test_a_hot_backup_writes_a_verified_set_and_stops_nothing(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.txt").write_text("a")
    app = Recorder("files", [str(data)])
    options = backup.Options(dest=str(tmp_path / "sets"))
    done = backup.run(app, backup.plan(app, "hot", options), options)
    (made,) = done.sets
    assert made["verified"] is True and made["files"] == 1
    assert made["metadata"] == {"running": ["svc:a"], "mode": "hot"}
    assert app.calls == ["archive"]  # nothing stopped or started


def test_a_mode_the_application_does_not_have_is_refused(tmp_path: Path) -> None:
    with pytest.raises(AppError, match=r"^files backups are hot, cold, not 'instances'$"):
        backup.plan(Recorder("files", [str(tmp_path)]), "instances", backup.Options(dest=str(tmp_path / "s")))


def test_errors_are_one_base_class() -> None:
    assert issubclass(BackupError, Error) and issubclass(RestoreError, Error) and issubclass(AppError, Error)
