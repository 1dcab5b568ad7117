"""Attacks on unattended backups (issue 13): ``selfhost-dr run NAME``, shared sets, per-schedule retention, the units.

Each test is what an operator would check after a schedule misbehaved; the runs are the real host command over a
directory (tenement as a Recorder, as in test_schedule_runs.py).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from ansible_collections.selfhost.dr.plugins.module_utils import cli
from ansible_collections.selfhost.dr.plugins.module_utils.engine import heartbeat, schedule, timers
from ansible_collections.selfhost.dr.plugins.module_utils.engine import prune as prune_module
from ansible_collections.selfhost.dr.plugins.module_utils.sets.catalog import catalog
from ansible_collections.selfhost.dr.plugins.module_utils.sets.names import default_host
from ansible_collections.selfhost.dr.plugins.module_utils.sets.tags import add_tag, read_tags
from ansible_collections.selfhost.dr.plugins.module_utils.sets.verify import verify as real_verify

from . import test_heartbeat
from .test_engine import Recorder
from .test_heartbeat import run_json
from .test_prune_module_logic import write_set
from .test_schedule_runs import DAILY, WEEKLY, config_of, schedules_toml

app, data = test_heartbeat.app, test_heartbeat.data
_keep_signal_handlers = test_heartbeat._keep_signal_handlers

APPS = {"tenement": ("hot", "cold", "instances"), "tomo": ("hot",)}


def _parse(**entry: object) -> schedule.Schedule:
    return schedule.parse({"every": "daily", **entry}, APPS, "tenement", "hot")


# -- names and values that would break a unit file -------------------------------------------------------------------


@pytest.mark.parametrize(
    "entry",
    [
        {"name": "nightly\n"},  # `$` matches before a final newline
        {"name": "nightly", "label": "hot\n"},
        {"name": "nightly", "at": "03:00\n"},
    ],
)
def test_a_schedule_value_ending_in_a_newline_is_refused(entry: dict[str, object]) -> None:
    with pytest.raises(schedule.ScheduleError):
        _parse(**entry)


def test_no_unit_file_gets_a_line_break_from_a_unit_name(tmp_path: Path) -> None:
    """tenement's unit (dr_tenement_unit) goes into After=: a trailing newline would end the line there."""
    nightly = _parse(name="nightly")
    with pytest.raises(timers.TimerError):
        timers.render_service(nightly, timers.UnitSettings(tenement_unit="tenement.service\n"))
    with pytest.raises(timers.TimerError):
        timers.render_service(_parse(name="t", app="tomo"), timers.UnitSettings(tomo_service="tomo.service\n"))


def test_a_tag_ending_in_a_newline_is_not_a_schedule(tmp_path: Path) -> None:
    archive = tmp_path / "tenement-web1-20261101T030000Z-hot.tar.zst"
    archive.write_bytes(b"x")
    Path(str(archive) + ".schedules.json").write_text('{"schedules": ["daily\\n", "weekly"]}')
    assert read_tags(str(archive)) == ["weekly"]
    with pytest.raises(ValueError):
        add_tag(str(archive), "daily\n")


# -- retention -------------------------------------------------------------------------------------------------------


def test_a_retention_of_only_a_timezone_is_refused_when_the_schedule_is_written() -> None:
    """It keeps nothing by itself: the play passed, then every prune on the host failed ("no retention rule")."""
    with pytest.raises(schedule.ScheduleError, match="timezone"):
        _parse(name="nightly", retention={"timezone": "Europe/Berlin"})


def test_one_schedule_with_a_timezone_only_retention_does_not_stop_every_prune(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], app: Recorder
) -> None:
    """schedules.toml written by hand: refused as a usage error naming the schedule, not a failed prune of all."""
    config = config_of(tmp_path, "\n[retention]\nkeep_last = 3\n")
    (tmp_path / "sets").mkdir()
    schedules_toml(tmp_path, daily=DAILY, weekly={**WEEKLY, "keep_last": 0, "timezone": "Europe/Berlin"})
    code, result = run_json(capsys, config, "prune", "--dry-run")
    assert code == 2, result
    assert "weekly" in str(result["error"])


# -- sharing ---------------------------------------------------------------------------------------------------------


def test_a_shared_set_is_verified_when_the_run_that_wrote_it_never_verified_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], app: Recorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The daily run (backup, then verify) is stopped by its timeout while verifying; the weekly run (backup, prune)
    waiting for the lock shares that set. Its backup succeeded only if the set it records is a verified one."""
    config = config_of(tmp_path)
    schedules_toml(tmp_path, daily={**DAILY, "operations": ["backup", "verify"]}, weekly=WEEKLY)

    def stopped(*_args: object, **_kwargs: object) -> object:
        raise KeyboardInterrupt("SIGTERM")

    monkeypatch.setattr(cli, "verify", stopped)
    code, result = run_json(capsys, config, "run", "daily")
    assert code == 130, result
    (written,) = catalog(str(tmp_path / "sets"))
    assert written["verification"]["state"] == "unverified"  # type: ignore[index]
    monkeypatch.setattr(cli, "verify", real_verify)
    code, result = run_json(capsys, config, "run", "weekly")
    assert code == 0, result
    for entry in catalog(str(tmp_path / "sets")):
        if "weekly" in entry["schedules"]:  # type: ignore[operator]
            assert entry["verification"]["state"] == "verified"  # type: ignore[index]


def test_a_shared_set_that_fails_verification_fails_the_backup_and_nothing_is_pruned(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], app: Recorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = config_of(tmp_path)
    schedules_toml(tmp_path, daily={**DAILY, "operations": ["backup", "verify"]}, weekly=WEEKLY)

    def stopped(*_args: object, **_kwargs: object) -> object:
        raise KeyboardInterrupt("SIGTERM")

    monkeypatch.setattr(cli, "verify", stopped)
    assert run_json(capsys, config, "run", "daily")[0] == 130
    monkeypatch.setattr(cli, "verify", real_verify)
    (written,) = catalog(str(tmp_path / "sets"))
    with open(str(written["path"]), "r+b") as f:  # bit rot on the backup disk
        f.seek(-8, 2)
        f.write(b"\0" * 8)
    code, result = run_json(capsys, config, "run", "weekly")
    assert code == 3, result
    assert "prune" not in result["operations"]  # type: ignore[operator]


# -- prune -----------------------------------------------------------------------------------------------------------


def test_a_hand_named_minus_two_label_is_not_read_as_the_manifests(tmp_path: Path) -> None:
    """The ``-2`` fix is for ``{label}-2`` only: a file label of just ``-2`` disagrees with the manifest's ``hot``."""
    directory = tmp_path / "sets"
    directory.mkdir()
    t0 = datetime(2026, 11, 1, 3, tzinfo=UTC)
    names = [write_set(directory, "tenement", "web1", t0 + timedelta(days=n)) for n in range(3)]
    odd = write_set(directory, "tenement", "web1", t0 - timedelta(days=1))
    renamed = odd.replace("-hot.tar.zst", "--2.tar.zst")
    for suffix in ("", ".manifest.json"):
        (directory / (odd + suffix)).rename(directory / (renamed + suffix))
    done = prune_module.prune(
        str(directory), prune_module.policy_of({"keep_last": 1}), {"app": "tenement", "host": None, "label": None}
    )
    assert renamed not in done.deleted
    assert sorted(done.deleted) == sorted(names[:2])


# -- a stop while a heartbeat is sent -------------------------------------------------------------------------------


@pytest.fixture
def stop_during_start_ping(monkeypatch: pytest.MonkeyPatch) -> None:
    """SIGTERM (systemctl stop, the timer's timeout) arrives while the start ping waits for a slow endpoint."""
    real = heartbeat.send

    def send(url: str, kind: str, *args: object, **kwargs: object) -> heartbeat.Sent:
        if kind == "start":
            raise KeyboardInterrupt("SIGTERM")
        return real(url, kind, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(heartbeat, "send", send)


@pytest.mark.usefixtures("stop_during_start_ping")
def test_a_run_stopped_during_its_start_ping_stops_and_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], app: Recorder, state_dir: Path
) -> None:
    """A stop is a stop: the backup (a cold one stops tenement) must not go on until systemd's SIGKILL."""
    config = config_of(tmp_path)
    schedules_toml(tmp_path, daily={**DAILY, "heartbeat": "http://127.0.0.1:9/ping/daily"})
    code, result = run_json(capsys, config, "run", "daily")
    assert code == 130, result
    assert "archive" not in app.calls and "stop" not in app.calls
    recorded = json.loads((state_dir / "state.json").read_text())
    attempt = recorded["schedules"]["daily"]["last_attempt"]
    assert attempt["finished_at"] and attempt["reason"] == "interrupted by SIGTERM"


@pytest.mark.usefixtures("stop_during_start_ping")
def test_a_step_stopped_during_its_start_ping_ends_the_run_recorded(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], app: Recorder, state_dir: Path
) -> None:
    config = config_of(tmp_path, '\n[heartbeat]\nprune = "http://127.0.0.1:9/ping/prune"\n')
    schedules_toml(tmp_path, daily=DAILY)
    code, result = run_json(capsys, config, "run", "daily")
    assert code == 130, result
    assert result["error"] == "prune: interrupted by SIGTERM"
    recorded = json.loads((state_dir / "state.json").read_text())
    for section, name in (("schedules", "daily"), ("operations", "prune")):
        attempt = recorded[section][name]["last_attempt"]
        assert attempt["finished_at"] and attempt["ok"] is False, (section, attempt)


@pytest.mark.usefixtures("stop_during_start_ping")
def test_a_backup_by_hand_stopped_during_its_start_ping_stops(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], app: Recorder, state_dir: Path
) -> None:
    config = config_of(tmp_path, '\n[heartbeat]\nbackup = "http://127.0.0.1:9/ping/backup"\n')
    code, result = run_json(capsys, config, "backup", "--mode", "cold")
    assert code == 130, result
    assert "stop" not in app.calls
    attempt = json.loads((state_dir / "state.json").read_text())["operations"]["backup"]["last_attempt"]
    assert attempt["finished_at"] and attempt["reason"] == "interrupted by SIGTERM"


@pytest.mark.parametrize("url", ["https://hc-ping.com:99999/uuid", "https:///uuid", "https://user:secret@/uuid"])
def test_a_schedule_heartbeat_config_toml_would_refuse_is_refused_without_quoting_it(url: str) -> None:
    """The play passed and every run's ping then failed: [heartbeat] refuses these, so must a schedule."""
    with pytest.raises(schedule.ScheduleError) as raised:
        _parse(name="nightly", heartbeat=url)
    assert "uuid" not in str(raised.value) and "secret" not in str(raised.value)


# -- status ----------------------------------------------------------------------------------------------------------


def test_status_counts_the_sets_a_schedules_retention_keeps_not_every_set_it_shared(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """7 daily and 4 weekly: the daily schedule shared every Sunday's set with the weekly one, and keeps 2 (its
    keep_last) of them; status and the textfile said it keeps all the sets it was ever recorded on."""
    config = config_of(tmp_path)
    schedules_toml(tmp_path, daily=DAILY, weekly=WEEKLY)  # keep_last 2 and 4
    directory = tmp_path / "sets"
    directory.mkdir()
    t0 = datetime(2026, 11, 1, 3, tzinfo=UTC)
    for n in range(4):
        name = write_set(directory, "tenement", default_host(), t0 + timedelta(days=7 * n))
        add_tag(str(directory / name), "daily")
        add_tag(str(directory / name), "weekly")
    code, result = run_json(capsys, config, "status", "--export")
    assert code == 0, result
    assert {name: about["sets"] for name, about in result["schedules"].items()} == {"daily": 2, "weekly": 4}  # type: ignore[union-attr]
    text = (tmp_path / "prom" / "selfhost_dr.prom").read_text()
    assert 'selfhost_dr_schedule_sets{schedule="daily"} 2' in text
    assert 'selfhost_dr_schedule_sets{schedule="weekly"} 4' in text


@pytest.mark.parametrize("day", [0, False])
def test_a_monthly_day_zero_is_refused_not_read_as_the_first(day: object) -> None:
    with pytest.raises(schedule.ScheduleError, match="day must be 1 to 28"):
        _parse(name="monthly", every="monthly", day=day)


def test_sets_a_removed_schedule_shared_stay_under_the_plain_rules_not_the_remaining_schedules(
    tmp_path: Path,
) -> None:
    """docs/schedule.md: the sets a removed schedule made stay, under [retention] from then on (kept when it has
    none). The weekly schedule was taken out; its Sunday sets, shared with the daily one, went with daily's
    keep_last."""
    directory = tmp_path / "sets"
    directory.mkdir()
    t0 = datetime(2026, 11, 1, 3, tzinfo=UTC)  # a Sunday
    names = [write_set(directory, "tenement", "web1", t0 + timedelta(days=n)) for n in range(15)]
    sundays = [names[0], names[7], names[14]]
    for name in names:
        add_tag(str(directory / name), "daily")
    for name in sundays:
        add_tag(str(directory / name), "weekly")
    wanted = {"app": "tenement", "host": None, "label": None}
    daily = {"daily": prune_module.policy_of({"keep_last": 2})}
    done = prune_module.prune_by_schedule(str(directory), daily, None, wanted)
    left = {str(s["name"]) for s in catalog(str(directory))}
    assert left == {*sundays, names[13]}
    assert sorted(done.deleted) == sorted(set(names) - left)
    # With a [retention] rule (keep_last 1), that rule decides over them: the newest Sunday stays.
    again = prune_module.prune_by_schedule(str(directory), daily, prune_module.policy_of({"keep_last": 1}), wanted)
    assert sorted(again.deleted) == sorted([names[0], names[7]])
