# Copyright: selfhost.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The systemd side of schedules: every calendar checked by ``systemd-analyze``, a service and a timer per schedule
(``selfhost-dr-NAME.service`` runs ``selfhost-dr run NAME``), and :func:`converge`, which writes them only when their
bytes change, removes the units of schedules that are gone (only files carrying :data:`MARKER`), enables the timers
and writes ``schedules.toml`` beside the host command's configuration. Standard library only."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from .. import safe_fs, toml_writer
from .._common import iso
from ..host_install import write_if_changed
from .schedule import SCHEDULES_FILE, UNIT_PREFIX, DrillSchedule, Schedule, ScheduleError, table

MARKER = "# Managed by selfhost.dr (schedule role): edits are overwritten"
DEFAULT_CONFIG = "/etc/selfhost-dr/config.toml"
DEFAULT_UNIT_DIR = "/etc/systemd/system"
ITERATIONS = 32  # a month of a daily schedule: the longest gap of a weekday calendar is among them
SHOWN = 3  # the next runs a person is shown
_UNIT_FILE_RE = re.compile(r"^" + re.escape(UNIT_PREFIX) + r"([A-Za-z0-9][A-Za-z0-9_.-]{0,63})\.(service|timer)\Z")
_ON_FAILURE_RE = re.compile(r"^[A-Za-z0-9:_.@%\\-]+\.(service|target)\Z")
_UNIT_RE = re.compile(r"^[A-Za-z0-9:_.@\\-]+\.(service|target)\Z")
_UNSAFE_RE = re.compile(r"[\s\"'\\\x00-\x1f\x7f]")
_SECRET_LINE_RE = re.compile(r'^(\s*"?heartbeat"?\s*=\s*)(.*)$', re.MULTILINE)

Runner = Callable[..., "subprocess.CompletedProcess[str]"]


class TimerError(ScheduleError):
    """A timer or service that cannot be written or enabled, in one sentence."""


class CalendarError(TimerError):
    """``systemd-analyze`` refuses a calendar expression (or it never elapses again)."""

    def __init__(self, calendar: str, reason: str) -> None:
        super().__init__(f"{calendar!r} is not a calendar systemd can run: {reason}")
        self.calendar = calendar
        self.reason = reason


@dataclass(frozen=True)
class UnitSettings:
    """What the units of every schedule share: the host command, its configuration and the paths a run writes."""

    command: str = "/usr/local/bin/selfhost-dr"
    config_path: str = DEFAULT_CONFIG
    backup_dir: str = "/var/backups/selfhost-dr"
    state_dir: str = "/var/lib/selfhost-dr"
    textfile_dir: str = "/var/lib/node_exporter"  # "": no metrics
    tenement_data_dir: str = "/var/lib/tenement"
    tenement_config_dir: str = "/etc/tenement"
    tenement_service_manager: str = "auto"
    tomo_database: str = ""  # "": found at run time, /var/lib/tomo/tomo.db first
    tenement_unit: str = "tenement.service"  # a run starts after it (at boot: a missed run made up)
    tomo_service: str = "tomo.service"
    tomo_service_manager: str = "systemd"
    on_failure: str = ""  # a unit (or several, space-separated) started when a run fails
    hardening: bool = True  # False where namespacing fails (some containers)
    read_write_paths: tuple[str, ...] = ()  # more paths a run writes (instance data outside tenement's data dir)


@dataclass
class Result:
    changed: bool = False
    written: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    enabled: list[str] = field(default_factory=list)
    directories: list[str] = field(default_factory=list)
    schedules_file: str = ""
    next_runs: dict[str, list[str]] = field(default_factory=dict)
    diff: list[dict[str, str]] = field(default_factory=list)


# --- calendars -------------------------------------------------------------------------------------------------


def _analyze(calendars: Sequence[str], run: Runner) -> subprocess.CompletedProcess[str]:
    argv = ["systemd-analyze", "calendar", f"--iterations={ITERATIONS}", "--", *calendars]
    try:
        return run(argv, capture_output=True, text=True, check=False, timeout=60)
    except FileNotFoundError:
        raise TimerError(
            "systemd-analyze is not installed: schedules need systemd (Debian: the systemd package)"
        ) from None
    except (OSError, subprocess.SubprocessError) as exc:
        raise TimerError(f"cannot run systemd-analyze: {exc}") from None


def _when(text: str, calendar: str) -> datetime:
    parts = text.split()  # "Sun 2026-11-29 02:00:00 UTC"; GMT when TZ=GMT (systemd adds no "(in UTC)" line then)
    if len(parts) < 3 or parts[-1] not in ("UTC", "GMT"):
        raise CalendarError(calendar, f"systemd-analyze printed a time that is not in UTC ({text!r})")
    try:
        return datetime.strptime(f"{parts[-3]} {parts[-2]}", "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC)
    except ValueError:
        raise CalendarError(calendar, f"systemd-analyze printed a time that cannot be read ({text!r})") from None


def _blocks(output: str) -> list[list[str]]:
    """The output of ``systemd-analyze calendar``, one list of elapse times (as printed, UTC preferred) per
    expression: each block starts with its ``Normalized form:`` line."""
    blocks: list[list[str]] = []
    for raw in output.splitlines():
        line = raw.strip()
        label, _, value = line.partition(":")
        if label == "Normalized form":
            blocks.append([])
        elif blocks and (label == "Next elapse" or re.fullmatch(r"Iter\. #\d+", label)):
            if value.strip() != "never":
                blocks[-1].append(value.strip())
        elif blocks and blocks[-1] and label == "(in UTC)":
            blocks[-1][-1] = value.strip()
    return blocks


def next_runs(calendars: Sequence[str], run: Runner = subprocess.run) -> dict[str, list[datetime]]:
    """The next runs (:data:`ITERATIONS` of them, aware UTC datetimes) of each calendar, as ``systemd-analyze
    calendar`` computes them in the host's time zone. Raises :class:`CalendarError` for the first expression systemd
    refuses or that never elapses again, :class:`TimerError` when systemd-analyze is missing."""
    unique = list(dict.fromkeys(calendars))
    if not unique:
        return {}
    for calendar in unique:
        if not isinstance(calendar, str) or not calendar.strip() or _UNSAFE_RE.sub(" ", calendar) != calendar:
            raise CalendarError(str(calendar), "it must be one line of text")
    done = _analyze(unique, run)
    blocks = _blocks(done.stdout or "")
    if done.returncode != 0 or len(blocks) != len(unique):
        blocks = []
        for calendar in unique:  # one by one: which one is it, and why
            alone = _analyze([calendar], run)
            if alone.returncode != 0:
                said = [x.strip() for x in (alone.stderr or alone.stdout or "").splitlines() if x.strip()]
                raise CalendarError(calendar, said[0] if said else f"systemd-analyze exited {alone.returncode}")
            found = _blocks(alone.stdout or "")
            if len(found) != 1:
                raise CalendarError(calendar, "systemd-analyze printed no normalized form for it")
            blocks.append(found[0])
    runs: dict[str, list[datetime]] = {}
    for calendar, elapses in zip(unique, blocks):
        if not elapses:
            raise CalendarError(calendar, "it never elapses again (a date in the past?)")
        runs[calendar] = [_when(text, calendar) for text in elapses]
    return runs


def every_hours(runs: Sequence[datetime]) -> float:
    """The longest gap between consecutive runs, in hours (0.0 with fewer than two runs): how long a schedule may
    rightly go without a run (Friday to Monday for ``Mon..Fri 12:00``), so "overdue" is never said of a weekend."""
    gaps = [(b - a).total_seconds() / 3600 for a, b in zip(runs, runs[1:])]
    return round(max(gaps), 6) if gaps else 0.0


def schedule_runs(
    schedules: Sequence[Schedule | DrillSchedule], run: Runner = subprocess.run
) -> dict[str, list[datetime]]:
    """:func:`next_runs` by schedule name (a drill's by ``drill-NAME``, its unit's); a refused calendar is a
    :class:`ScheduleError` naming the schedule."""
    try:
        by_calendar = next_runs([s.calendar for s in schedules], run)
    except CalendarError as exc:
        names = [_shown(s) for s in schedules if s.calendar == exc.calendar]
        raise ScheduleError(
            f"{names[0] if names else 'a schedule'}: its calendar {exc.calendar!r} is not one systemd can run: "
            f"{exc.reason}"
        ) from None
    return {_key(s): by_calendar[s.calendar] for s in schedules}


def _key(s: Schedule | DrillSchedule) -> str:
    return "drill-" + s.name if isinstance(s, DrillSchedule) else s.name


def _shown(s: Schedule | DrillSchedule) -> str:
    return f"{'drill schedule' if isinstance(s, DrillSchedule) else 'schedule'} {s.name!r}"


def with_every_hours(schedules: Sequence[Schedule], runs: Mapping[str, Sequence[datetime]]) -> list[Schedule]:
    """Each schedule with a custom calendar (``every_hours`` 0) given the longest gap between its next runs."""
    return [
        s if s.every_hours or not runs.get(s.name) else dataclasses.replace(s, every_hours=every_hours(runs[s.name]))
        for s in schedules
    ]


# --- units ------------------------------------------------------------------------------------------------------


def _escape(value: str) -> str:
    """A value for a unit file: ``%`` (specifiers) doubled."""
    return value.replace("%", "%%")


def _checked(value: str, what: str) -> str:
    if not isinstance(value, str) or not os.path.isabs(value) or _UNSAFE_RE.search(value):
        raise TimerError(
            f"{what} must be an absolute path without whitespace, quotes or backslashes to go into a systemd unit, "
            f"not {value!r}"
        )
    return os.path.normpath(value)


def _path(value: str, what: str) -> str:
    """A checked path for a unit file, ``%`` doubled."""
    return _escape(_checked(value, what))


def _writable(schedule: Schedule, settings: UnitSettings) -> list[str]:
    """The paths a run of ``schedule`` writes: sets, state, metrics, and the app's own (cold backups and the
    keep-aside rename work inside them; readers of WAL databases write ``-shm``)."""
    paths = [(settings.backup_dir, "the backup dir"), (settings.state_dir, "the state dir")]
    if settings.textfile_dir:
        paths.append((settings.textfile_dir, "the metrics textfile dir"))
    if schedule.app == "tenement":
        paths += [(settings.tenement_data_dir, "tenement's data dir"), (settings.tenement_config_dir, "its config dir")]
    elif schedule.app == "tomo":
        database = settings.tomo_database
        paths.append((os.path.dirname(database) if database else "/var/lib/tomo", "Tomo's database directory"))
    paths += [(path, "a path of schedule_read_write_paths") for path in settings.read_write_paths]
    return list(dict.fromkeys(_path(p, what) for p, what in paths))


def _plain_process(schedule: Schedule, settings: UnitSettings) -> bool:
    """The application runs as a plain process (start-stop-daemon), which a run may start again."""
    manager = settings.tomo_service_manager if schedule.app == "tomo" else settings.tenement_service_manager
    return manager == "process"


def _app_unit(schedule: Schedule, settings: UnitSettings) -> str:
    """`` UNIT``: the application's service a run starts after (a run made up at boot finds it up), "" for none."""
    unit = settings.tomo_service if schedule.app == "tomo" else settings.tenement_unit
    if _plain_process(schedule, settings) or not unit:
        return ""
    unit = unit if "." in unit else unit + ".service"
    if not _UNIT_RE.match(unit):
        raise TimerError(f"the application's unit must be a systemd unit name such as tenement.service, not {unit!r}")
    return " " + unit


def render_service(schedule: Schedule, settings: UnitSettings) -> str:
    """``selfhost-dr-NAME.service``: one run of the schedule, at low priority, sandboxed unless it must not be."""
    command = _path(settings.command, "the host command").replace("$", "$$")
    exec_start = f"{command} run {schedule.name}"
    if os.path.normpath(settings.config_path) != DEFAULT_CONFIG:
        exec_start += f" --config {_path(settings.config_path, 'the configuration').replace('$', '$$')}"
    on_failure = settings.on_failure.split() if settings.on_failure else []
    for unit in on_failure:
        if not _ON_FAILURE_RE.match(unit):
            raise TimerError(f"the failure hook must be systemd unit names such as notify@%n.service, not {unit!r}")
    plain = _plain_process(schedule, settings)
    lines = [
        MARKER,
        "[Unit]",
        f"Description=selfhost.dr schedule {schedule.name}: {', '.join(schedule.operations)} of {schedule.app} "
        f"({schedule.mode})",
        f"After=network-online.target{_app_unit(schedule, settings)}",
        "Wants=network-online.target",
        "# The backup dir's file system (a backup disk): mounted before a run, which never writes beneath it.",
        f"RequiresMountsFor={_path(settings.backup_dir, 'the backup dir')}",
        *([f"OnFailure={' '.join(on_failure)}"] if on_failure else []),
        "",
        "[Service]",
        "Type=oneshot",
        f"ExecStart={exec_start}",
        f"TimeoutStartSec={schedule.timeout}",
        "# On SIGTERM a run starts the application again before it exits: give it the time to.",
        "TimeoutStopSec=15min",
        "# Temporary files on disk (/tmp may be a tmpfs).",
        "Environment=TMPDIR=/var/tmp",
    ]
    if plain:
        lines += [
            f"# {schedule.app} runs as a plain process (start-stop-daemon): a cold backup starts it again from this",
            "# service, so it would stay in this unit's cgroup and inherit its sandbox, priority and umask.",
            "# KillMode=process leaves it running when the run ends; what it would inherit is left out.",
            "KillMode=process",
        ]
        return "\n".join(lines) + "\n"
    lines += ["Nice=19", "IOSchedulingClass=idle", "CPUSchedulingPolicy=batch", "UMask=0077"]
    if not settings.hardening:
        return "\n".join([*lines, "# Sandboxing is off (schedule_hardening: false)."]) + "\n"
    lines += [
        "PrivateTmp=yes",
        "ProtectSystem=strict",
        *(f"ReadWritePaths=-{path}" for path in _writable(schedule, settings)),
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
    ]
    return "\n".join(lines) + "\n"


def render_drill_service(drill: DrillSchedule, settings: UnitSettings) -> str:
    """``selfhost-dr-drill-NAME.service``: one DR drill, ``ansible-playbook`` of the drill playbook with the drill's
    variables from its 0600 file (:func:`drill_vars_path`), in its report directory. Not sandboxed: a drill makes
    containers and reaches the hosts it drills."""
    argv = [
        _path(drill.ansible_playbook, "ansible_playbook"),
        "-i",
        _path(drill.inventory, "the inventory"),
        _escape(drill.playbook),
        "-e",
        "@" + _path(drill_vars_path(drill, settings), "the drill's variables"),
        *(["--limit", _escape(drill.limit)] if drill.limit else []),
        *(_escape(a) for a in drill.args),
    ]
    on_failure = settings.on_failure.split() if settings.on_failure else []
    for unit in on_failure:
        if not _ON_FAILURE_RE.match(unit):
            raise TimerError(f"the failure hook must be systemd unit names such as notify@%n.service, not {unit!r}")
    lines = [
        MARKER,
        "[Unit]",
        f"Description=selfhost.dr DR drill {drill.name} ({_escape(drill.playbook)} over {_escape(drill.inventory)})",
        "After=network-online.target",
        "Wants=network-online.target",
        *([f"OnFailure={' '.join(on_failure)}"] if on_failure else []),
        "",
        "[Service]",
        "Type=oneshot",
        f"ExecStart={' '.join(a.replace('$', '$$') for a in argv)}",
        "# The report (drill.json, drill.md, drill.xml) is written here; the drill removes its containers.",
        f"WorkingDirectory={_path(drill.report_dir, 'report_dir')}",
        f"TimeoutStartSec={drill.timeout}",
        "TimeoutStopSec=5min",
        "Environment=PYTHONUNBUFFERED=1 ANSIBLE_NOCOLOR=1 ANSIBLE_RETRY_FILES_ENABLED=0 TMPDIR=/var/tmp",
        "Nice=10",
        "UMask=0077",
        "# A drill stopped (its timeout, a kill) never reaches its report play, which removes its containers: they",
        "# would hold restored data (and a repository's credentials) until the next drill. Removed here instead.",
        "ExecStopPost=-/bin/sh -c 'case $$SERVICE_RESULT in timeout|signal|core-dump|watchdog) podman ps -aq "
        "--filter label=selfhost-dr.drill=target | xargs -r podman rm --force --time 10;; esac'",
    ]
    return "\n".join(lines) + "\n"


def drill_vars_path(drill: DrillSchedule, settings: UnitSettings) -> str:
    """Where the drill's variables go: ``drills/NAME.json`` beside the host command's configuration (0600: they may
    hold a repository's password)."""
    return os.path.join(
        os.path.dirname(_checked(settings.config_path, "the configuration")), "drills", drill.name + ".json"
    )


def drill_vars(drill: DrillSchedule) -> bytes:
    """The drill's ``extra_vars``, with its report directory and title (its own say over them kept)."""
    wanted = {"drill_report_dir": drill.report_dir, "drill_title": f"DR drill {drill.name}", **drill.extra_vars}
    return (json.dumps(wanted, indent=2, sort_keys=True) + "\n").encode()


def render_timer(schedule: Schedule | DrillSchedule) -> str:
    """``selfhost-dr-NAME.timer``: runs the service on the schedule's calendar, also after a missed run."""
    kind = "DR drill" if isinstance(schedule, DrillSchedule) else "schedule"
    if _UNSAFE_RE.sub(" ", schedule.calendar) != schedule.calendar:
        raise TimerError(f"{kind} {schedule.name!r}: its calendar must be one line of text")
    return (
        f"{MARKER}\n[Unit]\nDescription=selfhost.dr {kind} {schedule.name} ({_escape(schedule.calendar)})\n\n"
        f"[Timer]\nOnCalendar={_escape(schedule.calendar)}\nPersistent=true\n"
        f"RandomizedDelaySec={schedule.randomized_delay}\nAccuracySec=1s\nUnit={schedule.unit}.service\n\n"
        "[Install]\nWantedBy=timers.target\n"
    )


# --- converge ---------------------------------------------------------------------------------------------------


def _systemctl(args: list[str]) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(["systemctl", *args], capture_output=True, text=True, check=False, timeout=300)
    except FileNotFoundError:
        raise TimerError("systemctl is not installed: schedules need systemd") from None


def _must(systemctl: Callable[[list[str]], subprocess.CompletedProcess[str]], args: list[str]) -> None:
    done = systemctl(args)
    if done.returncode != 0:
        said = [x.strip() for x in (done.stderr or done.stdout or "").splitlines() if x.strip()]
        raise TimerError(f"systemctl {' '.join(args)} failed: {said[-1] if said else f'exit {done.returncode}'}")


def _current(path: str) -> str | None:
    """The text of the regular file at ``path`` (never through a link), None when there is none."""
    try:
        return safe_fs.read_regular(path, limit=1 << 20).decode("utf-8", "replace")
    except (FileNotFoundError, safe_fs.NotRegularError, safe_fs.TooLargeError):
        return None


def _ours(path: str) -> bool:
    text = _current(path)
    return text is not None and text.startswith(MARKER + "\n")


def _masked(text: str, known: set[str] | None = None) -> str:
    """``text`` with every heartbeat URL hidden; with ``known``, one not among them is marked as changed."""

    def hide(match: re.Match[str]) -> str:
        return f'{match[1]}"(hidden{"" if known is None or match[2].strip() in known else ", changed"})"'

    return _SECRET_LINE_RE.sub(hide, text)


def schedules_toml(schedules: Sequence[Schedule]) -> str:
    head = "# Written by selfhost.dr (the schedule role's schedule_list) for selfhost-dr run. Edits are overwritten.\n"
    return head + toml_writer.dumps({"schedules": {s.name: table(s) for s in schedules}}, SCHEDULES_FILE)


def converge(
    schedules: Sequence[Schedule],
    settings: UnitSettings,
    unit_dir: str = DEFAULT_UNIT_DIR,
    check: bool = False,
    systemctl: Callable[[list[str]], subprocess.CompletedProcess[str]] = _systemctl,
    runs: Mapping[str, Sequence[datetime]] | None = None,
    run: Runner = subprocess.run,
    drills: Sequence[DrillSchedule] = (),
) -> Result:
    """Make ``unit_dir`` hold exactly the units of ``schedules`` with their timers enabled and running, and
    ``schedules.toml`` beside the configuration. Everything is checked (every calendar by systemd-analyze, every
    path) before anything is written; ``check`` writes nothing, changes nothing and reports the same changes."""
    if runs is None:
        runs = schedule_runs([*schedules, *drills], run)
    schedules = with_every_hours(schedules, runs)
    unit_dir = _checked(unit_dir, "the unit directory")
    wanted: dict[str, str] = {}
    for s in schedules:
        wanted[f"{s.unit}.service"] = render_service(s, settings)
        wanted[f"{s.unit}.timer"] = render_timer(s)
    drill_files = {drill_vars_path(d, settings): drill_vars(d) for d in drills}
    for d in drills:
        wanted[f"{d.unit}.service"] = render_drill_service(d, settings)
        wanted[f"{d.unit}.timer"] = render_timer(d)
    config_dir = os.path.dirname(_checked(settings.config_path, "the configuration"))
    toml_path = os.path.join(config_dir, SCHEDULES_FILE)
    toml_text = schedules_toml(schedules)
    result = Result(schedules_file=toml_path)
    result.next_runs = {name: [iso(when) for when in times[:SHOWN]] for name, times in runs.items()}

    stale = []
    if os.path.isdir(unit_dir):
        for name in sorted(os.listdir(unit_dir)):
            if _UNIT_FILE_RE.match(name) and name not in wanted and _ours(os.path.join(unit_dir, name)):
                stale.append(name)
    made = [settings.backup_dir, settings.state_dir]  # ReadWritePaths= binds only what exists
    made += [d.report_dir for d in drills] + ([os.path.join(config_dir, "drills")] if drills else [])
    for directory in dict.fromkeys(made):
        if not os.path.lexists(directory):
            result.directories.append(directory)
            if not check:
                safe_fs.makedirs_private(directory)
    drills_dir = os.path.join(config_dir, "drills")
    if os.path.islink(drills_dir):
        raise TimerError(f"{drills_dir} is a symbolic link: the drills' variables are never written through one")
    if os.path.isdir(drills_dir):
        for name in sorted(os.listdir(drills_dir)):
            path = os.path.join(drills_dir, name)
            if (
                name.endswith(".json")
                and path not in drill_files
                and _UNIT_FILE_RE.match(f"{UNIT_PREFIX}{name[:-5]}.timer")
            ):
                result.removed.append(path)  # the variables of a drill no longer scheduled
                if not check:
                    os.unlink(path)
    for path, blob in drill_files.items():  # (before the units: a timer that fires at once finds them)
        if write_if_changed(path, blob, 0o600, check):
            result.written.append(path)
            result.diff.append({"before_header": path, "after_header": path, "before": "(hidden)", "after": "(hidden)"})

    # schedules.toml first: a timer that fires as soon as it is enabled finds its schedule.
    before = _current(toml_path)
    if write_if_changed(toml_path, toml_text.encode(), 0o600, check):
        known = None if before is None else {m[2].strip() for m in _SECRET_LINE_RE.finditer(before)}
        result.diff.append(
            {
                "before_header": toml_path,
                "after_header": toml_path,
                "before": _masked(before or ""),
                "after": _masked(toml_text, known),
            }
        )
        result.written.append(toml_path)
    for name in stale:
        if name.endswith(".timer") and not check:
            _must(systemctl, ["disable", "--now", name])
    for name in stale:
        path = os.path.join(unit_dir, name)
        result.diff.append({"before_header": path, "after_header": path, "before": _current(path) or "", "after": ""})
        result.removed.append(path)
        if not check:
            os.unlink(path)
    changed_timers = set()
    for name, text in wanted.items():
        path = os.path.join(unit_dir, name)
        before = _current(path)
        if write_if_changed(path, text.encode(), 0o644, check):
            result.written.append(path)
            if name.endswith(".timer"):
                changed_timers.add(name)
            result.diff.append({"before_header": path, "after_header": path, "before": before or "", "after": text})
    if (any(path != toml_path for path in result.written) or result.removed) and not check:
        _must(systemctl, ["daemon-reload"])
    for s in [*schedules, *drills]:
        timer = f"{s.unit}.timer"
        enabled = systemctl(["is-enabled", timer]).stdout.strip() == "enabled"
        active = systemctl(["is-active", timer]).stdout.strip() == "active"
        if enabled and active:
            if timer in changed_timers and not check:
                _must(systemctl, ["restart", timer])  # a changed OnCalendar= takes effect now
            continue
        result.enabled.append(timer)
        if not check:
            _must(systemctl, ["enable", "--now", timer])

    result.changed = bool(result.written or result.removed or result.enabled or result.directories)
    return result
