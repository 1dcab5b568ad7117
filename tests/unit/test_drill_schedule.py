"""A monthly DR drill through the schedule role (``schedule_drills``): the entry checked in one sentence, the service
an operator reads (``ansible-playbook`` of the drill playbook with its variables from a 0600 file, in its report
directory) accepted by ``systemd-analyze verify``, converged beside the backup schedules and removed with its
variables when it is no longer listed. (tests/integration/test_drill_timer.py runs the service's command.)"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from ansible_collections.selfhost.dr.plugins.module_utils.apps.registry import MODES
from ansible_collections.selfhost.dr.plugins.module_utils.engine import timers
from ansible_collections.selfhost.dr.plugins.module_utils.engine.schedule import (
    DrillSchedule,
    ScheduleError,
    parse_all,
    parse_drills,
)

from .test_timers import assert_systemd_accepts, host  # noqa: F401 - host: the unit directory and its systemctl

pytestmark = pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")
MONTHLY = {
    "name": "monthly",
    "inventory": "/etc/ansible/production.yml",
    "extra_vars": {"drill_rto_target": 900, "drill_source": "repository", "drill_repository": "offsite"},
    "args": ["--vault-password-file", "/root/.vault-pass"],
}


def drill(**entry: Any) -> DrillSchedule:
    (made,) = parse_drills([{**MONTHLY, **entry}])
    return made


def test_a_drill_runs_monthly_on_the_first_at_three_by_default() -> None:
    made = drill()
    assert made.calendar == "*-*-01 03:00:00" and made.every_hours == 744.0
    assert made.unit == "selfhost-dr-drill-monthly" and made.playbook == "selfhost.dr.drill"
    assert drill(every="weekly", weekday="Sat", at="04:30").calendar == "Sat *-*-* 04:30:00"
    assert drill(day="last").calendar == "*-*~01 03:00:00"


@pytest.mark.parametrize(
    ("entry", "sentence"),
    [
        ({"inventory": "hosts.yml"}, "inventory must be an absolute path"),
        ({"inventory": "/etc/a b.yml"}, "inventory must be an absolute path"),
        ({"playbook": "drill.yml"}, "playbook (or a collection's playbook such as selfhost.dr.drill) must be"),
        ({"limit": "web; rm -rf /"}, "limit must be an Ansible host pattern"),
        ({"args": "--check"}, "args must be a list of words"),
        ({"args": ["--extra-vars", "a=1 b=2"]}, "args must be a list of words"),
        ({"extra_vars": {"not a name": 1}}, "extra_vars must be a mapping of variable names"),
        ({"operations": ["backup"]}, "operations is not a drill schedule setting"),
        ({"day": 31}, "not every month has a day 31"),
        ({"timeout": 10}, "timeout must be a minute or more"),
        ({"name": "../x"}, "a drill schedule's name must be"),
        ({"name": "m" * 59}, "a drill schedule's name is 58 characters at most, not 59"),
    ],
)
def test_an_entry_that_cannot_run_is_refused_in_one_sentence(entry: dict[str, Any], sentence: str) -> None:
    with pytest.raises(ScheduleError) as caught:
        parse_drills([{**MONTHLY, **entry}])
    assert sentence in str(caught.value) and "\n" not in str(caught.value)


def test_names_must_not_meet_another_drill_or_a_schedules_unit() -> None:
    with pytest.raises(ScheduleError, match="two drill schedules are named 'monthly' and 'Monthly'"):
        parse_drills([MONTHLY, {**MONTHLY, "name": "Monthly"}])
    backups = parse_all([{"name": "drill-monthly"}], MODES, "tenement", "hot")
    with pytest.raises(ScheduleError, match="would share the unit selfhost-dr-drill-monthly"):
        parse_drills([MONTHLY], backups)


def test_the_service_an_operator_reads(tmp_path: Path) -> None:
    settings = timers.UnitSettings(config_path="/etc/selfhost-dr/config.toml", on_failure="notify@%n.service")
    lines = timers.render_drill_service(drill(limit="web*:!web-3"), settings).splitlines()
    assert lines[0] == timers.MARKER
    for line in (
        "Description=selfhost.dr DR drill monthly (selfhost.dr.drill over /etc/ansible/production.yml)",
        "OnFailure=notify@%n.service",
        "Type=oneshot",
        "ExecStart=/usr/bin/ansible-playbook -i /etc/ansible/production.yml selfhost.dr.drill "
        "-e @/etc/selfhost-dr/drills/monthly.json --limit web*:!web-3 --vault-password-file /root/.vault-pass",
        "WorkingDirectory=/var/lib/selfhost-dr/drills",
        "TimeoutStartSec=21600",
    ):
        assert line in lines, line
    assert not any(line.startswith("ProtectSystem") for line in lines)  # it makes containers, reaches hosts
    (stop_post,) = [line for line in lines if line.startswith("ExecStopPost=")]  # a killed drill's containers
    assert "timeout|signal|core-dump|watchdog)" in stop_post and "label=selfhost-dr.drill=target" in stop_post
    timer = timers.render_timer(drill())
    assert "Description=selfhost.dr DR drill monthly (*-*-01 03:00:00)" in timer
    assert "Unit=selfhost-dr-drill-monthly.service" in timer and "Persistent=true" in timer
    (tmp_path / "selfhost-dr-drill-monthly.service").write_text(
        timers.render_drill_service(drill(ansible_playbook="/bin/true"), settings)
    )
    (tmp_path / "selfhost-dr-drill-monthly.timer").write_text(timer)
    assert_systemd_accepts(tmp_path)


def converge(at: dict[str, Any], drills: list[DrillSchedule], check: bool = False) -> timers.Result:
    backups = parse_all([{"name": "nightly"}], MODES, "tenement", "hot")
    return timers.converge(
        backups, at["settings"], str(at["units"]), check=check, systemctl=at["systemctl"], drills=drills
    )


def test_converge_writes_the_drill_beside_the_schedules_and_removes_it_when_gone(
    host: dict[str, Any],  # noqa: F811
    tmp_path: Path,
) -> None:
    reports = tmp_path / "reports"
    monthly = drill(report_dir=str(reports))
    first = converge(host, [monthly])
    units, etc = host["units"], host["etc"]
    assert sorted(os.listdir(units)) == [
        "selfhost-dr-drill-monthly.service",
        "selfhost-dr-drill-monthly.timer",
        "selfhost-dr-nightly.service",
        "selfhost-dr-nightly.timer",
    ]
    assert "selfhost-dr-drill-monthly.timer" in first.enabled and len(first.next_runs["drill-monthly"]) == 3
    variables = etc / "drills" / "monthly.json"
    assert variables.stat().st_mode & 0o777 == 0o600 and reports.is_dir()
    assert json.loads(variables.read_text()) == {
        "drill_report_dir": str(reports),
        "drill_title": "DR drill monthly",
        "drill_rto_target": 900,
        "drill_source": "repository",
        "drill_repository": "offsite",
    }
    assert "offsite" not in repr(first.diff)  # the variables file is shown as (hidden) in a diff
    assert "drill" not in (etc / "schedules.toml").read_text()  # selfhost-dr run never runs a drill
    assert not converge(host, [monthly]).changed

    host["systemctl"].calls.clear()
    gone = converge(host, [])
    assert ["disable", "--now", "selfhost-dr-drill-monthly.timer"] in host["systemctl"].calls
    assert str(variables) in gone.removed and not variables.exists()
    assert sorted(os.listdir(units)) == ["selfhost-dr-nightly.service", "selfhost-dr-nightly.timer"]


def test_a_long_drill_name_is_still_found_and_removed_when_gone(host: dict[str, Any], tmp_path: Path) -> None:  # noqa: F811
    longest = drill(name="m" * 58, report_dir=str(tmp_path / "reports"))
    converge(host, [longest])
    assert f"selfhost-dr-drill-{'m' * 58}.timer" in os.listdir(host["units"])
    converge(host, [])
    assert sorted(os.listdir(host["units"])) == ["selfhost-dr-nightly.service", "selfhost-dr-nightly.timer"]


def test_the_variables_are_never_written_through_a_link(host: dict[str, Any], tmp_path: Path) -> None:  # noqa: F811
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    host["etc"].mkdir()
    (host["etc"] / "drills").symlink_to(elsewhere)
    with pytest.raises(ScheduleError, match="is a symbolic link"):
        converge(host, [drill(report_dir=str(tmp_path / "reports"))])
    assert list(elsewhere.iterdir()) == []


def test_check_mode_writes_nothing(host: dict[str, Any], tmp_path: Path) -> None:  # noqa: F811
    result = converge(host, [drill(report_dir=str(tmp_path / "reports"))], check=True)
    assert result.changed and os.listdir(host["units"]) == [] and not (host["etc"] / "drills").exists()
