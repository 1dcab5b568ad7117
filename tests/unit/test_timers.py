"""Schedules as systemd units: calendars checked by the real systemd-analyze (valid, invalid, past, another time
zone), the service and timer an operator reads, line by line (and accepted by ``systemd-analyze verify``), and
converge into a temporary unit directory with a recording systemctl (systemd is not PID 1 here): idempotent, removes
only marked units of schedules that are gone, replaces a link instead of following it, writes nothing in check mode,
never shows a heartbeat URL."""

from __future__ import annotations

import os
import shutil
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from ansible_collections.selfhost.dr.plugins.module_utils.apps.registry import MODES
from ansible_collections.selfhost.dr.plugins.module_utils.engine import timers
from ansible_collections.selfhost.dr.plugins.module_utils.engine.schedule import Schedule, ScheduleError, parse_all

pytestmark = pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")
SECRET = "https://hc-ping.com/5f1c9e2a-secret-token"


def schedules(*entries: dict[str, Any]) -> list[Schedule]:
    return parse_all(list(entries), MODES, "tenement", "hot")


NIGHTLY = {"name": "nightly", "at": "02:30", "retention": {"keep_daily": 7}, "heartbeat": SECRET}
SUNDAY = {"name": "sunday", "every": "weekly", "weekday": "Sun", "at": "05:00", "operations": ["verify"]}


def in_zone(zone: str) -> timers.Runner:
    def run(argv: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
        return subprocess.run(argv, env={**os.environ, "TZ": zone}, **kw)

    return run


# --- next runs ----------------------------------------------------------------------------------------------------


def test_next_runs_of_valid_calendars() -> None:
    runs = timers.next_runs(["*-*-* 02:30:00", "Sun *-*-* 05:00:00", "*-*-* 00/6:00"], run=in_zone("UTC"))
    daily = runs["*-*-* 02:30:00"]
    assert len(daily) == timers.ITERATIONS and all(t.tzinfo == UTC and (t.hour, t.minute) == (2, 30) for t in daily)
    assert daily[0] > datetime.now(UTC) and daily[1] - daily[0] == timedelta(days=1)
    assert all(t.weekday() == 6 for t in runs["Sun *-*-* 05:00:00"])
    assert timers.every_hours(runs["*-*-* 00/6:00"]) == 6.0
    assert timers.every_hours(runs["Sun *-*-* 05:00:00"]) == 168.0
    assert timers.every_hours(daily[:1]) == 0.0
    # Weekdays at noon: a run may rightly not come for three days (Friday to Monday), never "overdue" at a weekend.
    weekdays = timers.next_runs(["Mon..Fri *-*-* 12:00"], run=in_zone("UTC"))["Mon..Fri *-*-* 12:00"]
    assert timers.every_hours(weekdays) == 72.0


def test_next_runs_in_the_hosts_time_zone_are_utc() -> None:
    # India keeps no daylight saving time: 03:00 there is always 21:30 UTC the day before.
    runs = timers.next_runs(["*-*-* 03:00:00"], run=in_zone("Asia/Kolkata"))["*-*-* 03:00:00"]
    assert [(t.hour, t.minute, t.tzinfo) for t in runs] == [(21, 30, UTC)] * timers.ITERATIONS
    for zone in ("GMT", "Europe/London", "America/New_York"):  # printed as GMT, or with an "(in UTC)" line
        assert len(timers.next_runs(["hourly"], run=in_zone(zone))["hourly"]) == timers.ITERATIONS


@pytest.mark.parametrize(
    ("every", "reason"),
    [("bogus", "Failed to parse calendar specification"), ("-1", "Failed to parse"), ("2001-01-01", "never elapses")],
)
def test_a_calendar_systemd_refuses_names_the_schedule(every: str, reason: str) -> None:
    chosen = schedules(dict(NIGHTLY), {"name": "odd", "every": every, "operations": ["verify"]})
    with pytest.raises(ScheduleError) as caught:
        timers.schedule_runs(chosen)
    message = str(caught.value)
    assert message.startswith(f"schedule 'odd': its calendar {every!r}") and reason in message
    assert "\n" not in message


def test_systemd_analyze_missing_is_one_sentence() -> None:
    def run(argv: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
        raise FileNotFoundError(argv[0])

    with pytest.raises(timers.TimerError, match=r"^systemd-analyze is not installed: .*systemd package\)$"):
        timers.next_runs(["daily"], run=run)


def test_custom_calendars_get_every_hours() -> None:
    chosen = schedules({"name": "six", "every": "*-*-* 00/6:00", "operations": ["verify"]}, dict(NIGHTLY))
    assert chosen[0].every_hours == 0.0
    runs = timers.schedule_runs(chosen)
    done = timers.with_every_hours(chosen, runs)
    assert [s.every_hours for s in done] == [6.0, 24.0]


# --- units ----------------------------------------------------------------------------------------------------------


def test_the_service_an_operator_reads() -> None:
    (nightly,) = schedules(dict(NIGHTLY))
    text = timers.render_service(nightly, timers.UnitSettings(on_failure="notify@%n.service"))
    lines = text.splitlines()
    assert lines[0] == timers.MARKER
    for line in (
        "Description=selfhost.dr schedule nightly: backup, prune of tenement (hot)",
        "After=network-online.target tenement.service",
        "Wants=network-online.target",
        "RequiresMountsFor=/var/backups/selfhost-dr",
        "OnFailure=notify@%n.service",
        "Type=oneshot",
        "ExecStart=/usr/local/bin/selfhost-dr run nightly",
        "TimeoutStartSec=21600",
        "Nice=19",
        "IOSchedulingClass=idle",
        "CPUSchedulingPolicy=batch",
        "PrivateTmp=yes",
        "Environment=TMPDIR=/var/tmp",
        "ProtectSystem=strict",
        "ReadWritePaths=-/var/backups/selfhost-dr",
        "ReadWritePaths=-/var/lib/selfhost-dr",
        "ReadWritePaths=-/var/lib/node_exporter",
        "ReadWritePaths=-/var/lib/tenement",
        "ReadWritePaths=-/etc/tenement",
        "ProtectHome=read-only",
        "NoNewPrivileges=yes",
        "PrivateDevices=yes",
        "ProtectKernelTunables=yes",
        "ProtectKernelModules=yes",
        "ProtectKernelLogs=yes",
        "ProtectControlGroups=yes",
        "RestrictSUIDSGID=yes",
        "LockPersonality=yes",
        "RestrictRealtime=yes",
        "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6",
        "UMask=0077",
    ):
        assert line in lines, line
    assert "KillMode=process" not in lines and SECRET not in text
    assert lines.index("[Unit]") < lines.index("OnFailure=notify@%n.service") < lines.index("[Service]")


def test_tomo_config_elsewhere_and_percent_signs() -> None:
    (tomo,) = schedules({"name": "tomo", "app": "tomo", "operations": ["backup"]})
    settings = timers.UnitSettings(config_path="/etc/dr%1/config.toml", tomo_database="/srv/tomo/tomo.db")
    lines = timers.render_service(tomo, settings).splitlines()
    assert "ExecStart=/usr/local/bin/selfhost-dr run tomo --config /etc/dr%%1/config.toml" in lines
    assert "ReadWritePaths=-/srv/tomo" in lines and "ReadWritePaths=-/var/lib/tenement" not in lines
    (default,) = schedules({"name": "t", "app": "tomo", "operations": ["backup"]})
    assert "ReadWritePaths=-/var/lib/tomo" in timers.render_service(default, timers.UnitSettings()).splitlines()


def test_a_run_starts_after_its_application_and_the_backup_disk() -> None:
    """At boot a missed run is made up: it must find the application up and the backup disk mounted (never write
    the sets beneath a mount point that is not there yet)."""
    (tomo,) = schedules({"name": "tomo", "app": "tomo"})
    settings = timers.UnitSettings(tomo_service="tomo-server", backup_dir="/mnt/backup disk".replace(" ", "_"))
    lines = timers.render_service(tomo, settings).splitlines()
    assert "After=network-online.target tomo-server.service" in lines
    assert "RequiresMountsFor=/mnt/backup_disk" in lines
    (plain,) = schedules({"name": "plain"})
    lines = timers.render_service(plain, timers.UnitSettings(tenement_service_manager="process")).splitlines()
    assert "After=network-online.target" in lines  # no tenement unit to start after
    with pytest.raises(timers.TimerError, match="must be a systemd unit name"):
        timers.render_service(plain, timers.UnitSettings(tenement_unit="ten ement.service"))


def test_tenement_as_a_plain_process_is_not_sandboxed() -> None:
    (cold,) = schedules({"name": "cold", "mode": "cold", "operations": ["backup"]})
    text = timers.render_service(cold, timers.UnitSettings(tenement_service_manager="process"))
    lines = text.splitlines()
    assert "KillMode=process" in lines and "# KillMode=process leaves it running when the run ends" in text
    for gone in ("ProtectSystem=", "PrivateTmp=", "NoNewPrivileges=", "Nice=", "UMask=", "RestrictAddressFamilies="):
        assert not any(line.startswith(gone) for line in lines), gone
    (tomo,) = schedules({"name": "t", "app": "tomo", "operations": ["backup"]})
    process = timers.UnitSettings(tenement_service_manager="process")
    assert "ProtectSystem=strict" in timers.render_service(tomo, process)


def test_tomo_as_a_plain_process_is_not_sandboxed_and_starts_after_no_unit() -> None:
    (cold,) = schedules({"name": "t", "app": "tomo", "mode": "cold", "operations": ["backup"]})
    lines = timers.render_service(cold, timers.UnitSettings(tomo_service_manager="process")).splitlines()
    assert "KillMode=process" in lines and "After=network-online.target" in lines
    assert not any(line.startswith(("ProtectSystem=", "PrivateTmp=", "Nice=")) for line in lines)
    (tenement,) = schedules({"name": "n", "mode": "cold", "operations": ["backup"]})
    tomo_process = timers.UnitSettings(tomo_service_manager="process")
    assert "ProtectSystem=strict" in timers.render_service(tenement, tomo_process)


def test_hardening_off() -> None:
    (nightly,) = schedules(dict(NIGHTLY))
    lines = timers.render_service(nightly, timers.UnitSettings(hardening=False)).splitlines()
    assert "Nice=19" in lines and not any(line.startswith(("Protect", "Private", "ReadWritePaths")) for line in lines)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (timers.UnitSettings(backup_dir="/var/my backups"), "the backup dir must be an absolute path without"),
        (timers.UnitSettings(command="/usr/bin/dr\nExecStartPre=/bin/sh"), "the host command must be an absolute path"),
        (timers.UnitSettings(state_dir="relative"), "the state dir must be an absolute path"),
        (timers.UnitSettings(on_failure="x.service\nExecStart=/bin/sh"), "the failure hook must be systemd unit"),
        (timers.UnitSettings(on_failure="notify"), "the failure hook must be systemd unit names"),
    ],
)
def test_values_that_cannot_go_into_a_unit(settings: timers.UnitSettings, message: str) -> None:
    (nightly,) = schedules(dict(NIGHTLY))
    with pytest.raises(timers.TimerError, match=message):
        timers.render_service(nightly, settings)


def test_the_timer_an_operator_reads() -> None:
    (sunday,) = schedules({**SUNDAY, "randomized_delay": "30m"})
    lines = timers.render_timer(sunday).splitlines()
    assert lines[0] == timers.MARKER
    for line in (
        "OnCalendar=Sun *-*-* 05:00:00",
        "Persistent=true",
        "RandomizedDelaySec=1800",
        "AccuracySec=1s",
        "Unit=selfhost-dr-sunday.service",
        "[Install]",
        "WantedBy=timers.target",
    ):
        assert line in lines, line


def test_systemd_accepts_the_units(tmp_path: Path) -> None:
    (nightly,) = schedules(dict(NIGHTLY))
    for name, text in (
        ("selfhost-dr-nightly.service", timers.render_service(nightly, timers.UnitSettings(command="/bin/true"))),
        ("selfhost-dr-nightly.timer", timers.render_timer(nightly)),
    ):
        (tmp_path / name).write_text(text)
    assert_systemd_accepts(tmp_path)


def assert_systemd_accepts(units: Path) -> None:
    """``systemd-analyze verify`` finds nothing to say about the unit files in ``units``."""
    done = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", *(str(p) for p in sorted(units.iterdir()))],
        capture_output=True,
        text=True,
        check=False,
    )
    assert str(units) not in done.stderr, done.stderr


# --- converge -------------------------------------------------------------------------------------------------------


class Systemctl:
    """systemctl as a recorder: which timers are enabled and active, and every call that changes something."""

    def __init__(self) -> None:
        self.enabled: set[str] = set()
        self.active: set[str] = set()
        self.calls: list[list[str]] = []

    def __call__(self, args: list[str]) -> subprocess.CompletedProcess[str]:
        verb, unit = args[0], args[-1]
        out = ""
        if verb == "is-enabled":
            out = "enabled" if unit in self.enabled else "disabled"
        elif verb == "is-active":
            out = "active" if unit in self.active else "inactive"
        else:
            self.calls.append(args)
            if verb == "enable":
                self.enabled.add(unit)
                self.active.add(unit)
            elif verb == "disable":
                self.enabled.discard(unit)
                self.active.discard(unit)
        return subprocess.CompletedProcess(["systemctl", *args], 0, out + "\n", "")


@pytest.fixture
def host(tmp_path: Path) -> dict[str, Any]:
    units = tmp_path / "units"
    units.mkdir()
    settings = timers.UnitSettings(
        config_path=str(tmp_path / "etc" / "config.toml"),
        backup_dir=str(tmp_path / "backups"),
        state_dir=str(tmp_path / "state"),
    )
    return {"units": units, "settings": settings, "systemctl": Systemctl(), "etc": tmp_path / "etc"}


def converge(host: dict[str, Any], chosen: list[Schedule], check: bool = False) -> timers.Result:
    return timers.converge(chosen, host["settings"], str(host["units"]), check=check, systemctl=host["systemctl"])


def test_converge_writes_enables_and_is_idempotent(host: dict[str, Any]) -> None:
    chosen = schedules(dict(NIGHTLY), dict(SUNDAY))
    first = converge(host, chosen)
    units = host["units"]
    assert first.changed and sorted(os.listdir(units)) == [
        "selfhost-dr-nightly.service",
        "selfhost-dr-nightly.timer",
        "selfhost-dr-sunday.service",
        "selfhost-dr-sunday.timer",
    ]
    assert first.enabled == ["selfhost-dr-nightly.timer", "selfhost-dr-sunday.timer"]
    assert host["systemctl"].calls == [
        ["daemon-reload"],
        ["enable", "--now", "selfhost-dr-nightly.timer"],
        ["enable", "--now", "selfhost-dr-sunday.timer"],
    ]
    toml = host["etc"] / "schedules.toml"
    assert first.schedules_file == str(toml) and oct(toml.stat().st_mode & 0o777) == "0o600"
    assert (units / "selfhost-dr-nightly.timer").stat().st_mode & 0o777 == 0o644
    import tomllib

    table = tomllib.loads(toml.read_text())["schedules"]
    assert table["nightly"]["heartbeat"] == SECRET and table["nightly"]["keep_daily"] == 7
    assert table["sunday"]["every_hours"] == 168.0 and table["sunday"]["operations"] == ["verify"]
    assert len(first.next_runs["nightly"]) == 3 and first.next_runs["nightly"][0].endswith("Z")
    assert sorted(os.listdir(host["settings"].backup_dir)) == [] and first.directories
    # Nothing secret in the diff, which shows every file written.
    assert SECRET not in repr(first.diff) and '"(hidden)"' in repr(first.diff)
    assert {d["after_header"] for d in first.diff} == {str(units / n) for n in os.listdir(units)} | {str(toml)}

    host["systemctl"].calls.clear()
    second = converge(host, chosen)
    assert not second.changed and not second.diff and host["systemctl"].calls == []
    assert not converge(host, chosen, check=True).changed


def test_a_changed_heartbeat_shows_as_changed_but_hidden(host: dict[str, Any]) -> None:
    converge(host, schedules(dict(NIGHTLY)))
    again = converge(host, schedules({**NIGHTLY, "heartbeat": SECRET + "-new"}))
    assert again.changed and [d["after_header"] for d in again.diff] == [again.schedules_file]
    assert "secret-token" not in repr(again.diff) and "(hidden, changed)" in again.diff[0]["after"]


def test_a_changed_calendar_restarts_its_timer(host: dict[str, Any]) -> None:
    converge(host, schedules(dict(NIGHTLY)))
    host["systemctl"].calls.clear()
    result = converge(host, schedules({**NIGHTLY, "at": "04:00"}))
    assert result.written == [result.schedules_file, str(host["units"] / "selfhost-dr-nightly.timer")]
    assert host["systemctl"].calls == [["daemon-reload"], ["restart", "selfhost-dr-nightly.timer"]]


def test_a_removed_schedule_removes_only_its_marked_units(host: dict[str, Any]) -> None:
    units = host["units"]
    converge(host, schedules(dict(NIGHTLY), dict(SUNDAY)))
    (units / "selfhost-dr-mine.service").write_text("[Service]\nExecStart=/bin/true\n")  # no marker: not ours
    (units / "selfhost-dr-failure@.service").write_text("[Service]\nExecStart=/usr/local/bin/notify %i\n")
    (units / "other.timer").write_text(timers.MARKER + "\n")  # marked, but not one of our names
    host["systemctl"].calls.clear()
    check = converge(host, schedules(dict(NIGHTLY)), check=True)
    assert check.removed == [str(units / "selfhost-dr-sunday.service"), str(units / "selfhost-dr-sunday.timer")]
    assert (units / "selfhost-dr-sunday.timer").exists() and host["systemctl"].calls == []
    result = converge(host, schedules(dict(NIGHTLY)))
    assert result.removed == check.removed and result.changed
    assert host["systemctl"].calls == [["disable", "--now", "selfhost-dr-sunday.timer"], ["daemon-reload"]]
    assert sorted(os.listdir(units)) == [
        "other.timer",
        "selfhost-dr-failure@.service",
        "selfhost-dr-mine.service",
        "selfhost-dr-nightly.service",
        "selfhost-dr-nightly.timer",
    ]
    assert "sunday" not in (host["etc"] / "schedules.toml").read_text()


def test_a_link_at_a_unit_path_is_replaced_not_followed(host: dict[str, Any], tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    link = host["units"] / "selfhost-dr-nightly.service"
    link.symlink_to(victim)
    converge(host, schedules(dict(NIGHTLY)))
    assert victim.read_text() == "precious\n"
    assert not link.is_symlink() and link.read_text().startswith(timers.MARKER)


def test_check_mode_writes_nothing_and_reports_the_same(host: dict[str, Any]) -> None:
    chosen = schedules(dict(NIGHTLY), dict(SUNDAY))
    check = converge(host, chosen, check=True)
    assert os.listdir(host["units"]) == [] and not host["etc"].exists() and host["systemctl"].calls == []
    assert not os.path.exists(host["settings"].backup_dir)
    real = converge(host, chosen)
    for key in ("changed", "written", "removed", "enabled", "directories", "next_runs"):
        assert getattr(check, key) == getattr(real, key), key


def test_check_mode_refuses_what_the_real_run_refuses(host: dict[str, Any]) -> None:
    chosen = schedules(dict(NIGHTLY), {"name": "bad", "every": "Mon..Fry", "operations": ["verify"]})
    for check in (True, False):
        with pytest.raises(ScheduleError, match=r"^schedule 'bad': its calendar"):
            converge(host, chosen, check=check)
    assert os.listdir(host["units"]) == [] and host["systemctl"].calls == []
    bad = timers.UnitSettings(config_path=host["settings"].config_path, backup_dir="/srv/my backups")
    with pytest.raises(timers.TimerError):
        timers.converge(schedules(dict(NIGHTLY)), bad, str(host["units"]), check=True, systemctl=host["systemctl"])
    assert os.listdir(host["units"]) == []


def test_a_failing_systemctl_is_one_sentence(host: dict[str, Any]) -> None:
    def broken(args: list[str]) -> subprocess.CompletedProcess[str]:
        failed = subprocess.CompletedProcess(args, 1, "", "Failed to connect to bus: No such file or directory\n")
        return failed if args[0] in ("daemon-reload", "enable") else subprocess.CompletedProcess(args, 3, "", "")

    with pytest.raises(timers.TimerError, match=r"^systemctl daemon-reload failed: Failed to connect to bus"):
        timers.converge(schedules(dict(NIGHTLY)), host["settings"], str(host["units"]), systemctl=broken)


def test_a_config_with_heartbeat_urls_is_private() -> None:
    from ansible_collections.selfhost.dr.plugins.module_utils.host_install import config_mode

    assert config_mode({"app": "tenement", "heartbeat": {"timeout": 5.0}}) == 0o644
    assert config_mode({"heartbeat": {"backup": "", "push": ""}}) == 0o644
    assert config_mode({"heartbeat": {"timeout": 5.0, "push": SECRET}}) == 0o600


def test_weekdays_by_short_or_full_name_only() -> None:
    assert schedules({**SUNDAY, "weekday": "sunday"})[0].calendar == "Sun *-*-* 05:00:00"
    with pytest.raises(ScheduleError, match="weekday must be one of Mon"):
        schedules({**SUNDAY, "weekday": "Sunblah"})


def test_more_writable_paths() -> None:
    (nightly,) = schedules(dict(NIGHTLY))
    settings = timers.UnitSettings(read_write_paths=("/srv/instances", "/var/lib/tenement"))
    lines = timers.render_service(nightly, settings).splitlines()
    assert "ReadWritePaths=-/srv/instances" in lines and lines.count("ReadWritePaths=-/var/lib/tenement") == 1
    with pytest.raises(timers.TimerError, match="a path of schedule_read_write_paths must be an absolute path"):
        timers.render_service(nightly, timers.UnitSettings(read_write_paths=("srv",)))
