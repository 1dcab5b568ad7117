"""``selfhost-dr run NAME``: a schedule's operations in order under one hold of the host lock, each recorded as
itself and the whole run under the schedule; schedules that fall together share one set; and the retention of each
schedule over the sets made for it ("7 daily, 4 weekly, 12 monthly" exactly).

The runs are the real host command with the real backup procedure and set format over a directory (the application
is a Recorder, as in test_heartbeat.py); the retention is the real prune over set files on disk.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from ansible_collections.selfhost.dr.plugins.module_utils import cli
from ansible_collections.selfhost.dr.plugins.module_utils.engine import prune as prune_module
from ansible_collections.selfhost.dr.plugins.module_utils.engine import schedule
from ansible_collections.selfhost.dr.plugins.module_utils.sets.catalog import catalog, remove_set
from ansible_collections.selfhost.dr.plugins.module_utils.sets.names import Sidecars
from ansible_collections.selfhost.dr.plugins.module_utils.sets.retention import Policy
from ansible_collections.selfhost.dr.plugins.module_utils.sets.tags import add_tag, read_tags

from . import test_heartbeat
from .test_engine import Recorder
from .test_heartbeat import Hits, run_json
from .test_prune_module_logic import write_set

# The fixtures of test_heartbeat.py: tenement as a Recorder over a data dir, an HTTP receiver, signal handlers kept.
app, data, server = test_heartbeat.app, test_heartbeat.data, test_heartbeat.server
_keep_signal_handlers = test_heartbeat._keep_signal_handlers


def schedules_toml(tmp_path: Path, **tables: dict[str, object]) -> None:
    """schedules.toml beside config.toml, as the schedule role writes it."""
    lines = []
    for name, row in tables.items():
        lines.append(f"[schedules.{name}]")
        for key, value in row.items():
            lines.append(f"{key} = {json.dumps(value)}")
    (tmp_path / "schedules.toml").write_text("\n".join(lines) + "\n")


def config_of(tmp_path: Path, extra: str = "") -> Path:
    (tmp_path / "prom").mkdir(exist_ok=True)
    path = tmp_path / "config.toml"
    path.write_text(f'backup_dir = "{tmp_path}/sets"\n\n[metrics]\ntextfile_dir = "{tmp_path}/prom"\n{extra}')
    return path


DAILY = {"calendar": "*-*-* 03:00:00", "every_hours": 24, "operations": ["backup", "prune"], "keep_last": 2}
WEEKLY = {"calendar": "Sun *-*-* 03:00:00", "every_hours": 168, "operations": ["backup", "prune"], "keep_last": 4}


def state_json(state_dir: Path) -> dict[str, object]:
    return json.loads((state_dir / "state.json").read_text())  # type: ignore[no-any-return]


def prom(tmp_path: Path) -> str:
    return (tmp_path / "prom" / "selfhost_dr.prom").read_text()


def test_a_schedule_run_backs_up_then_prunes_by_its_own_retention_and_records_each_step(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], app: Recorder, state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TZ", "UTC")  # systemd-analyze computes the calendar in the host's zone
    config = config_of(tmp_path)
    schedules_toml(tmp_path, daily=DAILY)
    for _ in range(3):
        code, result = run_json(capsys, config, "run", "daily")
        assert code == 0, result
    sets = catalog(str(tmp_path / "sets"))
    assert len(sets) == 2  # keep_last 2 of the schedule
    assert all(s["schedules"] == ["daily"] for s in sets)
    assert all(s["verification"]["state"] == "verified" for s in sets)  # type: ignore[index]
    assert result["operations"]["prune"]["deleted"]  # type: ignore[index]
    recorded = state_json(state_dir)
    whole = recorded["schedules"]["daily"]  # type: ignore[index]
    assert whole["last_success"]["operation"] == "backup,prune"
    assert whole["last_success"]["run_id"] == result["run"]["run_id"]  # type: ignore[index]
    for operation in ("backup", "prune"):
        assert recorded["operations"][operation]["last_success"]["schedule"] == "daily"  # type: ignore[index]
    assert recorded["operations"]["backup"]["last_success"]["set_path"] == sets[0]["path"]  # type: ignore[index]
    text = prom(tmp_path)
    assert 'selfhost_dr_schedule_last_attempt_success{schedule="daily"} 1' in text
    assert 'selfhost_dr_schedule_sets{schedule="daily"} 2' in text
    assert 'selfhost_dr_last_attempt_success{operation="prune"} 1' in text
    # The next run as systemd computes it (the real systemd-analyze): 03:00 UTC tomorrow or today.
    (next_run,) = re.findall(r'selfhost_dr_schedule_next_run_timestamp_seconds\{schedule="daily"\} (\d+)', text)
    when = datetime.fromtimestamp(int(next_run), UTC)
    assert (when.hour, when.minute) == (3, 0) and 0 < when.timestamp() - time.time() <= 86400


def test_schedules_that_fall_together_write_one_set_recorded_under_both(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], app: Recorder, state_dir: Path
) -> None:
    config = config_of(tmp_path)
    schedules_toml(tmp_path, daily=DAILY, weekly=WEEKLY)
    assert run_json(capsys, config, "run", "daily")[0] == 0
    code, result = run_json(capsys, config, "run", "weekly")
    assert code == 0, result
    sets = catalog(str(tmp_path / "sets"))
    assert [s["schedules"] for s in sets] == [["daily", "weekly"]]
    assert result["operations"]["backup"]["shared"] is True  # type: ignore[index]
    assert app.calls.count("archive") == 1  # the application was archived once
    recorded = state_json(state_dir)
    assert recorded["schedules"]["weekly"]["last_success"]["set_path"] == sets[0]["path"]  # type: ignore[index]
    # The same schedule never shares its own set: its next run writes a new one.
    assert run_json(capsys, config, "run", "daily")[0] == 0
    assert [s["schedules"] for s in catalog(str(tmp_path / "sets"))] == [["daily"], ["daily", "weekly"]]


def test_a_failed_backup_ends_the_run_before_its_prune_and_is_recorded_and_exported(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], app: Recorder, state_dir: Path, server: tuple[str, Hits]
) -> None:
    url, hits = server
    config = config_of(tmp_path)
    schedules_toml(tmp_path, daily={**DAILY, "heartbeat": f"{url}/ping/daily"})
    assert run_json(capsys, config, "run", "daily")[0] == 0
    before = sorted(os.listdir(tmp_path / "sets"))
    app.fail = "archive"
    code, result = run_json(capsys, config, "run", "daily")
    assert code == 1
    assert result["error"] == "backup: tenement failed to archive"
    assert "prune" not in result["operations"]  # type: ignore[operator]
    assert sorted(os.listdir(tmp_path / "sets")) == before  # the earlier set is intact
    recorded = state_json(state_dir)
    failure = recorded["schedules"]["daily"]["last_failure"]  # type: ignore[index]
    assert failure["reason"] == "backup: tenement failed to archive"
    assert recorded["operations"]["backup"]["last_attempt"]["ok"] is False  # type: ignore[index]
    assert 'selfhost_dr_schedule_last_attempt_success{schedule="daily"} 0' in prom(tmp_path)
    # The schedule's own heartbeat: start and success of the first run, start and the exit status of the second.
    paths = [(r[0], r[1]) for r in hits.requests]
    assert paths == [
        ("POST", "/ping/daily/start"),
        ("POST", "/ping/daily"),
        ("POST", "/ping/daily/start"),
        ("POST", "/ping/daily/1"),
    ]
    assert hits.requests[-1][3].endswith(b"selfhost-dr run daily: backup: tenement failed to archive (exit 1)\n")


def test_an_unknown_schedule_is_a_usage_error_naming_the_known_ones(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], app: Recorder
) -> None:
    config = config_of(tmp_path)
    schedules_toml(tmp_path, daily=DAILY)
    code, result = run_json(capsys, config, "run", "hourly")
    assert code == 2
    assert result["error"] == "there is no schedule 'hourly' in the configuration (schedules: daily)"


def test_a_schedule_in_both_files_or_malformed_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = config_of(tmp_path, '\n[schedules.daily]\ncalendar = "daily"\n')
    schedules_toml(tmp_path, daily=DAILY)
    code, result = run_json(capsys, config, "status")
    assert code == 2
    assert result["error"] == "the schedule 'daily' is in both config.toml and schedules.toml"
    schedules_toml(tmp_path, weekly={**WEEKLY, "operations": ["backup", "push"]})
    code, result = run_json(capsys, config_of(tmp_path), "status")
    assert code == 2
    assert (
        result["error"] == "schedules.toml: schedule 'weekly': unknown operation 'push' (one of backup, verify, prune)"
    )


def test_status_shows_each_schedule_due_from_its_last_success(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], app: Recorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TZ", "UTC")
    config = config_of(tmp_path)
    schedules_toml(tmp_path, daily=DAILY, weekly=WEEKLY)
    code, result = run_json(capsys, config, "status")
    assert code == 0
    assert result["schedules"]["daily"]["overdue"] is True  # type: ignore[index]
    assert run_json(capsys, config, "run", "daily")[0] == 0
    code, result = run_json(capsys, config, "status")
    daily = result["schedules"]["daily"]  # type: ignore[index]
    assert daily["due"] is False and daily["overdue"] is False and daily["sets"] == 1
    assert daily["next_run"].endswith("T03:00:00.000000Z")
    assert result["schedules"]["weekly"]["due"] is True  # type: ignore[index]
    assert result["operations"]["backup"]["every_hours"] == 24  # type: ignore[index]
    cli.main(["status", "--config", str(config)])
    text = capsys.readouterr().out
    assert "schedule daily (backup, prune of tenement at *-*-* 03:00:00, 1 set(s) kept): last success" in text
    assert "schedule weekly (backup, prune of tenement at Sun *-*-* 03:00:00, 0 set(s) kept): never succeeded" in text


# -- the retention of each schedule ------------------------------------------------------------------------------------


@pytest.fixture
def year(tmp_path: Path) -> Iterator[tuple[Path, dict[str, set[str]]]]:
    """A year of sets as three schedules leave them: daily at 03:00, weekly on Sunday and monthly on the 1st at the
    same time, sharing the set of the day they fall on. Returns the directory and the names made for each."""
    directory = tmp_path / "sets"
    directory.mkdir()
    made: dict[str, set[str]] = {"daily": set(), "weekly": set(), "monthly": set()}
    day = datetime(2026, 1, 1, 3, 0, tzinfo=UTC)
    while day < datetime(2026, 11, 28, tzinfo=UTC):
        name = write_set(directory, "tenement", "web1", day)
        for which, falls in (("daily", True), ("weekly", day.isoweekday() == 7), ("monthly", day.day == 1)):
            if falls:
                add_tag(str(directory / name), which)
                made[which].add(name)
        day += timedelta(days=1)
    yield directory, made


def test_seven_daily_four_weekly_twelve_monthly_keeps_exactly_those(year: tuple[Path, dict[str, set[str]]]) -> None:
    directory, made = year
    policies = {"daily": Policy(last=7), "weekly": Policy(last=4), "monthly": Policy(last=12)}
    want = set()
    for which, count in (("daily", 7), ("weekly", 4), ("monthly", 12)):
        want |= set(sorted(made[which])[-count:])
    done = prune_module.prune_by_schedule(
        str(directory), policies, None, {"app": "tenement", "host": None, "label": None}
    )
    left = {s["name"] for s in catalog(str(directory))}
    assert left == want
    assert len(left) == 7 + 4 + 11 - 2  # two Sundays among the last seven days; the 1st of Nov is a Sunday too
    assert set(done.deleted) == set().union(*made.values()) - want


def test_a_set_is_kept_while_any_of_its_schedules_keeps_it(tmp_path: Path) -> None:
    directory = tmp_path / "sets"
    directory.mkdir()
    t0 = datetime(2026, 11, 1, 3, tzinfo=UTC)
    names = [write_set(directory, "tenement", "web1", t0 + timedelta(days=n)) for n in range(3)]
    add_tag(str(directory / names[0]), "daily")
    add_tag(str(directory / names[0]), "monthly")
    for name in names[1:]:
        add_tag(str(directory / name), "daily")
    wanted = {"app": "tenement", "host": None, "label": None}
    done = prune_module.prune_by_schedule(
        str(directory), {"daily": Policy(last=1), "monthly": Policy(last=1)}, None, wanted
    )
    assert done.deleted == [names[1]]
    kept = {str(k["name"]): k["reasons"] for k in done.kept}
    assert kept[names[0]] == ["monthly: last 1"]
    assert kept[names[2]] == ["daily: last 1"]


def test_sets_of_no_configured_schedule_fall_under_the_plain_rules_or_are_kept(tmp_path: Path) -> None:
    directory = tmp_path / "sets"
    directory.mkdir()
    t0 = datetime(2026, 11, 1, 3, tzinfo=UTC)
    by_hand = [write_set(directory, "tenement", "web1", t0 + timedelta(hours=n), label="manual") for n in range(3)]
    removed = [write_set(directory, "tenement", "web1", t0 + timedelta(days=1, hours=n)) for n in range(3)]
    for name in removed:
        add_tag(str(directory / name), "hourly")  # a schedule since removed from the configuration
    wanted = {"app": "tenement", "host": None, "label": None}
    kept_all = prune_module.prune_by_schedule(str(directory), {"daily": Policy(last=1)}, None, wanted, check=True)
    assert kept_all.deleted == []
    done = prune_module.prune_by_schedule(str(directory), {"daily": Policy(last=1)}, Policy(last=1), wanted)
    assert sorted(done.deleted) == sorted(by_hand[:2] + removed[:2])


def test_the_plain_prune_keeps_every_set_a_schedule_made(tmp_path: Path) -> None:
    """backup_prune (the backup role) knows no schedule: it never deletes their sets."""
    directory = tmp_path / "sets"
    directory.mkdir()
    t0 = datetime(2026, 11, 1, 3, tzinfo=UTC)
    names = [write_set(directory, "tenement", "web1", t0 + timedelta(days=n)) for n in range(4)]
    add_tag(str(directory / names[0]), "daily")
    done = prune_module.prune(str(directory), Policy(last=1), {"app": "tenement", "host": None, "label": None})
    assert sorted(done.deleted) == sorted(names[1:3])


def test_the_newest_verified_set_survives_every_schedules_retention(tmp_path: Path) -> None:
    directory = tmp_path / "sets"
    directory.mkdir()
    t0 = datetime(2026, 11, 1, 3, tzinfo=UTC)
    names = [write_set(directory, "tenement", "web1", t0 + timedelta(days=n)) for n in range(3)]
    for name in names:
        add_tag(str(directory / name), "daily")
    path = directory / names[0]
    st = os.stat(path)
    marker = {"ok": True, "verified_at": "2026-11-01T04:00:00Z", "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    Path(Sidecars.of(str(path)).verified).write_text(json.dumps(marker))
    wanted = {"app": "tenement", "host": None, "label": None}
    done = prune_module.prune_by_schedule(str(directory), {"daily": Policy(last=1)}, None, wanted)
    assert done.deleted == [names[1]]


# -- the tags sidecar as hostile input ---------------------------------------------------------------------------------


def test_a_hostile_schedules_sidecar_reads_as_no_schedules(tmp_path: Path) -> None:
    archive = tmp_path / "tenement-web1-20261101T030000Z-hot.tar.zst"
    archive.write_bytes(b"x")
    sidecar = Path(Sidecars.of(str(archive)).schedules)
    for content in ("[", '{"schedules": "daily"}', '{"schedules": ["../x", 3, "ok"]}', "{" * 100000):
        sidecar.write_text(content)
        assert read_tags(str(archive)) in ([], ["ok"])
    sidecar.unlink()
    (tmp_path / "elsewhere.json").write_text('{"schedules": ["daily"]}')
    sidecar.symlink_to(tmp_path / "elsewhere.json")
    assert read_tags(str(archive)) == []  # a link is never followed
    assert add_tag(str(archive), "weekly") == ["weekly"]
    assert not sidecar.is_symlink() and (tmp_path / "elsewhere.json").read_text() == '{"schedules": ["daily"]}'
    assert remove_set(str(archive)) > 0 and not sidecar.exists()


# -- which set a run shares ------------------------------------------------------------------------------------------


def _entry(when: datetime, tags: list[str], **over: object) -> dict[str, object]:
    base: dict[str, object] = {
        "name": "n",
        "path": "/b/n",
        "app": "tenement",
        "host": "web1",
        "label": "hot",
        "time": when.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "manifest": "ok",
        "metadata": {"mode": "hot"},
        "verification": {"state": "verified"},
        "schedules": tags,
    }
    return {**base, **over}


@pytest.mark.parametrize(
    ("offset", "tags", "over", "shared"),
    [
        (-60, ["daily"], {}, True),
        (-899, ["daily"], {}, True),
        (-901, ["daily"], {}, False),  # older than share_within before the run was invoked
        (120, ["daily"], {}, True),  # written while this run waited for the lock
        (-60, ["weekly"], {}, False),  # this schedule's own set
        (-60, [], {}, False),  # made by hand
        (-60, ["daily"], {"label": "manual"}, False),
        (-60, ["daily"], {"host": "web2"}, False),
        (-60, ["daily"], {"metadata": {"mode": "cold"}}, False),
        (-60, ["daily"], {"verification": {"state": "failed"}}, False),
        (-60, ["daily"], {"manifest": "damaged"}, False),
    ],
)
def test_a_run_shares_only_a_set_another_schedule_wrote_moments_before(
    offset: int, tags: list[str], over: dict[str, object], shared: bool
) -> None:
    invoked = datetime(2026, 11, 29, 3, 0, tzinfo=UTC)
    weekly = schedule.parse({"name": "weekly", "every": "weekly"}, {"tenement": ("hot", "cold")}, "tenement", "hot")
    entry = _entry(invoked + timedelta(seconds=offset), tags, **over)
    found = schedule.shared_set([entry], weekly, "hot", "web1", invoked, invoked + timedelta(minutes=5))
    assert (found is not None) is shared


def test_a_schedule_that_prunes_with_no_retention_rule_anywhere_is_refused() -> None:
    modes = {"tenement": ("hot", "cold")}
    pruning = schedule.parse_all(
        [{"name": "daily"}, {"name": "verify", "operations": ["verify"]}], modes, "tenement", "hot"
    )
    with pytest.raises(schedule.ScheduleError, match="schedule 'daily' prunes but has no retention rule"):
        schedule.prunable(pruning, {})
    schedule.prunable(pruning, {"keep_daily": 7})  # the backup retention is its rule
    schedule.prunable(pruning[1:], {})  # a schedule that does not prune needs none


def test_a_scheduled_prune_never_touches_another_hosts_sets_in_a_shared_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], app: Recorder
) -> None:
    config = config_of(tmp_path)
    schedules_toml(tmp_path, daily={**DAILY, "keep_last": 1})
    (tmp_path / "sets").mkdir()
    t0 = datetime(2026, 11, 1, 3, tzinfo=UTC)
    theirs = [write_set(tmp_path / "sets", "tenement", "otherhost", t0 + timedelta(days=n)) for n in range(3)]
    for name in theirs:
        add_tag(str(tmp_path / "sets" / name), "daily")
    for _ in range(2):
        assert run_json(capsys, config, "run", "daily")[0] == 0
    left = {s["name"] for s in catalog(str(tmp_path / "sets"))}
    assert set(theirs) <= left
    assert len(left) == len(theirs) + 1  # ours: keep_last 1
