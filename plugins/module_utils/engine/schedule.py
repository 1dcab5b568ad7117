# Copyright: selfhost.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Schedules: when a host backs itself up, what each run does, and how long its sets are kept.

A schedule is what the ``schedule`` role's ``schedule_list`` says of one timer: a name, a calendar (``every:
daily | weekly | monthly`` at a time, or any systemd ``OnCalendar`` expression), the operations each run does in
order (backup, verify, prune), the app, mode and label of its sets, and the retention of the sets it made. The role
writes them to ``/etc/selfhost-dr/schedules.toml`` (a ``[schedules.NAME]`` table each) and a systemd timer and
service per schedule that run ``selfhost-dr run NAME``. Standard library only: :func:`parse` checks an entry and
says what is wrong in one sentence; :func:`table` and :func:`from_table` are the two directions of the file.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from .._common import Error, parse_iso
from ..sets.retention import RetentionError
from .heartbeat import problem
from .prune import RULES, policy_of
from .state import SCHEDULE_RE

OPERATIONS = ("backup", "verify", "prune")  # in the order a run does them
EVERY = {"daily": 24.0, "weekly": 168.0, "monthly": 744.0}  # hours between runs (a month: 31 days at most)
WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_DAY_NAMES = dict(zip(WEEKDAYS, ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")))
UNIT_PREFIX = "selfhost-dr-"
SCHEDULES_FILE = "schedules.toml"
RETENTION_KEYS = (*(f"keep_{rule}" for rule in RULES), "keep_within", "keep_all", "timezone")
DEFAULT_TIMEOUT = 6 * 3600  # a run still going after this is stopped (SIGTERM: the app is started again)
DEFAULT_SHARE_WITHIN = 900
_AT_RE = re.compile(r"^([01]?\d|2[0-3]):([0-5]\d)\Z")
_SPAN_RE = re.compile(r"^(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m(?:in)?)?(?:(\d+)s?)?\Z")
_TIMER_KEYS = {"name", "every", "at", "weekday", "day", "randomized_delay", "timeout"}  # a schedule's and a drill's
_KNOWN = _TIMER_KEYS | {
    "operations",
    "app",
    "mode",
    "label",
    "retention",
    "share_within",
    "heartbeat",
    "every_hours",
    "repositories",
    "read_data_subset",
}
ALL_REPOSITORIES = "all"
_SUBSET_RE = re.compile(r"^(\d+(\.\d+)?%|\d+/\d+|\d+[KMGT]?)\Z")  # repos/restic.py SUBSET_RE
_REPOSITORY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")  # repos/config.py NAME_RE


class ScheduleError(Error):
    """A schedule that cannot be run, in one sentence."""


@dataclass(frozen=True)
class Schedule:
    name: str
    calendar: str  # systemd OnCalendar
    operations: tuple[str, ...]
    app: str
    mode: str
    label: str = ""  # "" : the [backup] label, else the mode
    randomized_delay: int = 0  # seconds (RandomizedDelaySec)
    timeout: int = DEFAULT_TIMEOUT  # seconds (TimeoutStartSec)
    share_within: int = DEFAULT_SHARE_WITHIN  # seconds: another schedule's set this recent is shared, not remade
    retention: Mapping[str, object] = field(default_factory=dict)  # keep_* options; {}: the [retention] rules
    heartbeat: str = ""  # a healthchecks.io-style URL pinged for the whole run (a secret: never shown)
    every_hours: float = 0.0  # how often it runs, for "due" and "overdue" (0: unknown)
    # Its backup goes into these restic repositories (config.toml's [repositories]) instead of a set; ("all",) every
    # one; (): a set.
    repositories: tuple[str, ...] = ()
    # With repositories, what its verify (restic check) also reads of the data: "5%", "1/7", "500M"; "": none.
    read_data_subset: str = ""

    @property
    def into_repositories(self) -> bool:
        return bool(self.repositories)

    @property
    def unit(self) -> str:
        """The systemd unit name without its suffix: ``selfhost-dr-NAME``."""
        return UNIT_PREFIX + self.name


def seconds(value: object, what: str) -> int:
    """A duration as seconds: a number, or ``1d2h30m10s`` (any of the parts, ``min`` for ``m``)."""
    if isinstance(value, bool):
        raise ScheduleError(f"{what} must be a duration such as 30m, 2h or 90 (seconds), not {value!r}")
    if isinstance(value, int) and value >= 0:
        return value
    match = _SPAN_RE.match(value.strip()) if isinstance(value, str) and value.strip() else None
    if not match or not any(match.groups()):
        raise ScheduleError(f"{what} must be a duration such as 30m, 2h or 90 (seconds), not {value!r}")
    days, hours, minutes, secs = (int(g) if g else 0 for g in match.groups())
    return ((days * 24 + hours) * 60 + minutes) * 60 + secs


def calendar(entry: Mapping[str, object], where: str) -> str:
    """The OnCalendar expression of an entry: ``every`` daily/weekly/monthly with ``at``, ``weekday`` and ``day``,
    or ``every`` itself (any systemd calendar expression; ``systemd-analyze calendar`` decides whether it is one)."""
    every = entry.get("every", "daily")
    if not isinstance(every, str) or not every.strip() or "\n" in every or len(every) > 200:
        raise ScheduleError(f"{where}: every must be daily, weekly, monthly or a systemd calendar expression")
    every = every.strip()
    extra = [key for key in ("at", "weekday", "day") if entry.get(key) not in (None, "")]
    if every not in EVERY:
        if extra:
            raise ScheduleError(
                f"{where}: {extra[0]} goes with every daily, weekly or monthly; put it into the calendar "
                f"expression {every!r} instead"
            )
        return every
    at = entry.get("at") or "03:00"
    match = _AT_RE.match(at) if isinstance(at, str) else None
    if not match:
        raise ScheduleError(f'{where}: at must be a time "HH:MM" (00:00 to 23:59), not {at!r}')
    time = f"{int(match[1]):02d}:{match[2]}:00"
    if every == "daily":
        for key in ("weekday", "day"):
            if key in extra:
                raise ScheduleError(f"{where}: {key} goes with every {'weekly' if key == 'weekday' else 'monthly'}")
        return f"*-*-* {time}"
    if every == "weekly":
        if "day" in extra:
            raise ScheduleError(f"{where}: day goes with every monthly; a weekly schedule takes weekday")
        weekday = entry.get("weekday") or "Sun"
        chosen = weekday[:3].capitalize() if isinstance(weekday, str) else None
        if chosen not in WEEKDAYS or str(weekday).strip().lower() not in (chosen.lower(), _DAY_NAMES[chosen]):
            raise ScheduleError(f"{where}: weekday must be one of {', '.join(WEEKDAYS)}, not {weekday!r}")
        return f"{chosen} *-*-* {time}"
    if "weekday" in extra:
        raise ScheduleError(f"{where}: weekday goes with every weekly; a monthly schedule takes day")
    day = entry.get("day")
    day = 1 if day in (None, "") else day  # 0 (or false) is refused below, not read as the first
    if day == "last":
        return f"*-*~01 {time}"
    if isinstance(day, bool) or not isinstance(day, int) or not 1 <= day <= 28:
        raise ScheduleError(
            f'{where}: day must be 1 to 28 or "last", not {day!r}: not every month has a day {day}'
            if isinstance(day, int) and not isinstance(day, bool) and 29 <= day <= 31
            else f'{where}: day must be 1 to 28 or "last", not {day!r}'
        )
    return f"*-*-{day:02d} {time}"


def _named(entry: object, kind: str) -> tuple[Mapping[str, object], str]:
    """A ``kind`` entry and its name, checked (its units are named after it)."""
    if not isinstance(entry, Mapping):
        raise ScheduleError(f"a {kind} must be a mapping with a name, not {entry!r}")
    name = entry.get("name")
    if not isinstance(name, str) or not SCHEDULE_RE.match(name):
        raise ScheduleError(
            f"a {kind}'s name must be 1 to 64 letters, digits, '.', '_' and '-' (starting with a letter or digit), "
            f"not {name!r}"
        )
    return entry, name


def parse(entry: object, apps: Mapping[str, tuple[str, ...]], default_app: str, default_mode: str) -> Schedule:
    """One entry of ``schedule_list``, checked. ``apps`` maps each application to its backup modes."""
    entry, name = _named(entry, "schedule")
    where = f"schedule {name!r}"
    unknown = sorted(str(k) for k in entry if k not in _KNOWN)
    if unknown:
        raise ScheduleError(f"{where}: {unknown[0]} is not a schedule setting ({', '.join(sorted(_KNOWN))})")
    repositories = _repositories(entry.get("repositories"), where)
    operations = entry.get("operations", ["backup"] if repositories else ["backup", "prune"])
    if isinstance(operations, str):
        operations = [operations]
    if not isinstance(operations, (list, tuple)) or not operations:
        raise ScheduleError(f"{where}: operations must be a list of {', '.join(OPERATIONS)}")
    for operation in operations:
        if operation not in OPERATIONS:
            raise ScheduleError(f"{where}: unknown operation {operation!r} (one of {', '.join(OPERATIONS)})")
    if len(set(operations)) != len(operations):
        raise ScheduleError(f"{where}: an operation is listed twice in {list(operations)}")
    subset = entry.get("read_data_subset") or ""
    if not isinstance(subset, str) or (subset and not _SUBSET_RE.match(subset)):
        raise ScheduleError(f"{where}: read_data_subset must be n% (5%), n/t (1/7) or a size (500M), not {subset!r}")
    if subset and not repositories:
        raise ScheduleError(f"{where}: read_data_subset is what verify reads of its repositories: give repositories")
    app = entry.get("app") or default_app
    if app not in apps:
        raise ScheduleError(f"{where}: app must be one of {', '.join(apps)}, not {app!r}")
    mode = entry.get("mode") or (default_mode if default_mode in apps[str(app)] else apps[str(app)][0])
    if mode not in apps[str(app)]:
        raise ScheduleError(f"{where}: {app} backs up in mode {', '.join(apps[str(app)])}, not {mode!r}")
    if repositories and mode not in ("hot", "cold"):
        raise ScheduleError(f"{where}: a backup into repositories is hot or cold, not {mode!r}")
    label = entry.get("label") or ""
    if not isinstance(label, str) or (label and not re.match(r"^[A-Za-z0-9_.-]{1,64}\Z", label)):
        raise ScheduleError(f"{where}: label must be letters, digits, '.', '_' and '-', not {label!r}")
    retention = entry.get("retention") or {}
    if not isinstance(retention, Mapping):
        raise ScheduleError(f"{where}: retention must be a mapping of keep_* rules, not {retention!r}")
    retention = {k: v for k, v in retention.items() if v not in (None, "", 0, False)}
    for key in retention:
        if key not in RETENTION_KEYS:
            raise ScheduleError(f"{where}: retention {key} is not a rule ({', '.join(RETENTION_KEYS)})")
    try:
        policy = policy_of(retention)
    except (RetentionError, TypeError, ValueError) as exc:
        raise ScheduleError(f"{where}: its retention is not valid: {exc}") from None
    if retention and policy.empty:  # a timezone alone: no rule of its own, and no fallback to [retention] either
        raise ScheduleError(
            f"{where}: its retention has a timezone but no keep_* rule (keep_last, keep_within, keep_daily, ... or "
            "keep_all); leave retention out to use the backup retention"
        )
    heartbeat = entry.get("heartbeat") or ""
    if not isinstance(heartbeat, str) or (heartbeat and problem(heartbeat)):  # as [heartbeat]: a port, a host
        raise ScheduleError(f"{where}: heartbeat must be an http(s) URL")  # never quoted: it may hold a token
    every_hours = entry.get("every_hours", EVERY.get(str(entry.get("every", "daily")).strip(), 0.0))
    if isinstance(every_hours, bool) or not isinstance(every_hours, (int, float)) or not every_hours >= 0:
        raise ScheduleError(f"{where}: every_hours must be a number of hours, not {every_hours!r}")
    timeout = seconds(entry.get("timeout", DEFAULT_TIMEOUT), f"{where}: timeout")
    if timeout < 60:
        raise ScheduleError(f"{where}: timeout must be a minute or more, not {timeout} seconds")
    return Schedule(
        name=name,
        calendar=calendar(entry, where),
        operations=tuple(o for o in OPERATIONS if o in operations),
        app=str(app),
        mode=str(mode),
        label=label,
        randomized_delay=seconds(entry.get("randomized_delay", 0), f"{where}: randomized_delay"),
        timeout=timeout,
        share_within=seconds(entry.get("share_within", DEFAULT_SHARE_WITHIN), f"{where}: share_within"),
        retention=retention,
        heartbeat=heartbeat,
        every_hours=float(every_hours),
        repositories=repositories,
        read_data_subset=subset,
    )


_DRILL_KNOWN = _TIMER_KEYS | {"inventory", "playbook", "limit", "extra_vars", "args", "ansible_playbook", "report_dir"}
_PLAYBOOK_RE = re.compile(r"^[a-z][a-z0-9_]*\.[a-z][a-z0-9_]*\.[A-Za-z0-9_]+\Z")  # a collection's playbook (FQCN)
_ARG_RE = re.compile(r"^[A-Za-z0-9_@%+=:,./-]{1,256}\Z")  # one word of a command line in a unit
_LIMIT_RE = re.compile(r"^[A-Za-z0-9_.:,!&*@\[\]-]{1,512}\Z")  # an Ansible host pattern


@dataclass(frozen=True)
class DrillSchedule:
    """A DR drill on a calendar, run where Ansible and the inventory are (the controller, a CI runner): its timer
    starts ``ansible-playbook -i INVENTORY PLAYBOOK -e @VARS`` (the collection's ``playbooks/drill.yml`` by default),
    whose report lands in ``report_dir``; its unit is ``selfhost-dr-drill-NAME``. The drill records itself on the
    drilled hosts (state, metrics), where a failed one shows."""

    name: str
    calendar: str
    inventory: str  # an absolute path
    playbook: str = "selfhost.dr.drill"  # a collection's playbook, or an absolute path
    limit: str = ""  # an Ansible host pattern (--limit); "": every host of the playbook's drill_hosts
    extra_vars: Mapping[str, object] = field(default_factory=dict)  # the drill role's variables (a 0600 file)
    args: tuple[str, ...] = ()  # more arguments, e.g. --vault-password-file /root/.vault
    ansible_playbook: str = "/usr/bin/ansible-playbook"
    report_dir: str = "/var/lib/selfhost-dr/drills"
    randomized_delay: int = 0
    timeout: int = DEFAULT_TIMEOUT
    every_hours: float = 0.0

    @property
    def unit(self) -> str:
        return UNIT_PREFIX + "drill-" + self.name


def _absolute(value: object, where: str, what: str) -> str:
    if not isinstance(value, str) or not value.startswith("/") or not _ARG_RE.match(value) or "/../" in value + "/":
        raise ScheduleError(f"{where}: {what} must be an absolute path of letters, digits and _@%+=:,.-, not {value!r}")
    return value


def parse_drill(entry: object) -> DrillSchedule:
    """One entry of ``schedule_drills``, checked."""
    entry, name = _named(entry, "drill schedule")
    where = f"drill schedule {name!r}"
    if len(name) > 58:  # (its units are selfhost-dr-drill-NAME, and a unit's name after selfhost-dr- is 64 at most)
        raise ScheduleError(f"{where}: a drill schedule's name is 58 characters at most, not {len(name)}")
    unknown = sorted(str(k) for k in entry if k not in _DRILL_KNOWN)
    if unknown:
        raise ScheduleError(
            f"{where}: {unknown[0]} is not a drill schedule setting ({', '.join(sorted(_DRILL_KNOWN))})"
        )
    playbook = entry.get("playbook") or "selfhost.dr.drill"
    if not (isinstance(playbook, str) and _PLAYBOOK_RE.match(playbook)):
        playbook = _absolute(playbook, where, "playbook (or a collection's playbook such as selfhost.dr.drill)")
    limit = entry.get("limit") or ""
    if not isinstance(limit, str) or (limit and not _LIMIT_RE.match(limit)):
        raise ScheduleError(
            f"{where}: limit must be an Ansible host pattern (letters, digits, _.:,!&*@[]-), not {limit!r}"
        )
    extra_vars = entry.get("extra_vars") or {}
    if not isinstance(extra_vars, Mapping) or not all(isinstance(k, str) and k.isidentifier() for k in extra_vars):
        raise ScheduleError(f"{where}: extra_vars must be a mapping of variable names to values")
    args = entry.get("args") or []
    if (
        isinstance(args, str)
        or not isinstance(args, (list, tuple))
        or not all(isinstance(a, str) and _ARG_RE.match(a) for a in args)
    ):
        raise ScheduleError(f"{where}: args must be a list of words of letters, digits and _@%+=:,./- each")
    timeout = seconds(entry.get("timeout", DEFAULT_TIMEOUT), f"{where}: timeout")
    if timeout < 60:
        raise ScheduleError(f"{where}: timeout must be a minute or more, not {timeout} seconds")
    every = str(entry.get("every", "monthly")).strip()
    return DrillSchedule(
        name=name,
        calendar=calendar({**entry, "every": every}, where),
        inventory=_absolute(entry.get("inventory"), where, "inventory"),
        playbook=playbook,
        limit=limit,
        extra_vars=dict(extra_vars),
        args=tuple(args),
        ansible_playbook=_absolute(
            entry.get("ansible_playbook") or "/usr/bin/ansible-playbook", where, "ansible_playbook"
        ),
        report_dir=_absolute(entry.get("report_dir") or "/var/lib/selfhost-dr/drills", where, "report_dir"),
        randomized_delay=seconds(entry.get("randomized_delay", 0), f"{where}: randomized_delay"),
        timeout=timeout,
        every_hours=EVERY.get(every, 0.0),
    )


def parse_drills(entries: object, schedules: list[Schedule] | None = None) -> list[DrillSchedule]:
    """Every entry of ``schedule_drills``, checked, with names unique among themselves."""
    if entries is None:
        return []
    if not isinstance(entries, (list, tuple)):
        raise ScheduleError(f"the drill schedules must be a list, not {type(entries).__name__}")
    drills = [parse_drill(e) for e in entries]
    units = {s.unit.lower(): f"schedule {s.name!r}" for s in schedules or []}
    seen: dict[str, str] = {}
    for d in drills:
        if d.name.lower() in seen:
            raise ScheduleError(f"two drill schedules are named {seen[d.name.lower()]!r} and {d.name!r}")
        seen[d.name.lower()] = d.name
        if d.unit.lower() in units:
            raise ScheduleError(f"drill schedule {d.name!r} and {units[d.unit.lower()]} would share the unit {d.unit}")
    return drills


def _repositories(value: object, where: str) -> tuple[str, ...]:
    """A schedule's ``repositories``: none (a set), ``all``, or a list of names of config.toml's [repositories]."""
    if value in (None, "", [], ()):
        return ()
    if value == ALL_REPOSITORIES or value == [ALL_REPOSITORIES]:
        return (ALL_REPOSITORIES,)
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) and _REPOSITORY_RE.match(v) for v in value):
        raise ScheduleError(f"{where}: repositories must be all or a list of repository names, not {value!r}")
    if ALL_REPOSITORIES in value:
        raise ScheduleError(f"{where}: repositories is either all or a list of names, not both")
    if len(set(value)) != len(value):
        raise ScheduleError(f"{where}: a repository is listed twice in {list(value)}")
    return tuple(value)


def parse_all(
    entries: object, apps: Mapping[str, tuple[str, ...]], default_app: str, default_mode: str
) -> list[Schedule]:
    """Every entry, checked, with unique names (unit names are case-sensitive, but two names that differ only in
    case are refused: they read as one)."""
    if entries is None:
        return []
    if not isinstance(entries, (list, tuple)):
        raise ScheduleError(f"the schedules must be a list, not {type(entries).__name__}")
    schedules = [parse(e, apps, default_app, default_mode) for e in entries]
    seen: dict[str, str] = {}
    for s in schedules:
        if s.name.lower() in seen:
            raise ScheduleError(f"two schedules are named {seen[s.name.lower()]!r} and {s.name!r}")
        seen[s.name.lower()] = s.name
    return schedules


def prunable(schedules: list[Schedule], default_retention: Mapping[str, object]) -> None:
    """Refuse a schedule that prunes with no retention rule of its own and none in [retention]."""
    fallback = policy_of(default_retention) if default_retention else None
    for s in schedules:
        if "prune" in s.operations and not s.retention and (fallback is None or fallback.empty):
            raise ScheduleError(
                f"schedule {s.name!r} prunes but has no retention rule (keep_last, keep_within, keep_daily, ... or "
                "keep_all) and the backup retention has none either"
            )


def table(s: Schedule) -> dict[str, object]:
    """The ``[schedules.NAME]`` table of schedules.toml (the retention's keep_* rules among its keys)."""
    row: dict[str, object] = {
        "calendar": s.calendar,
        "every_hours": s.every_hours,
        "operations": list(s.operations),
        "app": s.app,
        "mode": s.mode,
        "label": s.label,
        "randomized_delay": s.randomized_delay,
        "timeout": s.timeout,
        "share_within": s.share_within,
    }
    if s.heartbeat:
        row["heartbeat"] = s.heartbeat
    if s.repositories:
        row["repositories"] = ALL_REPOSITORIES if s.repositories == (ALL_REPOSITORIES,) else list(s.repositories)
    if s.read_data_subset:
        row["read_data_subset"] = s.read_data_subset
    row.update(s.retention)
    return row


def from_table(name: str, row: object) -> Schedule:
    """A ``[schedules.NAME]`` table as :func:`table` writes it (or a person does), checked as :func:`parse`
    checks an entry."""
    if not isinstance(row, Mapping):
        raise ScheduleError(f"[schedules.{name}] must be a table")
    retention = {k: v for k, v in row.items() if k in RETENTION_KEYS}
    rest = {k: v for k, v in row.items() if k not in RETENTION_KEYS and k != "calendar"}
    cal = row.get("calendar")
    if not isinstance(cal, str) or not cal.strip():
        raise ScheduleError(f"[schedules.{name}] needs calendar, a systemd OnCalendar expression")
    from ..apps.registry import MODES  # the apps and their modes, read only when a file is

    parsed = parse({**rest, "name": name, "every": cal, "retention": retention}, MODES, "tenement", "hot")
    return parsed


def shared_set(
    sets: list[Mapping[str, object]], schedule: Schedule, label: str, host: str, invoked: datetime, now: datetime
) -> Mapping[str, object] | None:
    """The set another schedule's run wrote moments ago that this run shares instead of writing its own: the newest
    set of ``sets`` (a catalog, newest first) of the same app, host, mode and label, made for another schedule and not
    for this one, started no earlier than ``share_within`` before this run was invoked (before it waited for the
    lock) and not after ``now``, with a usable manifest and not failed or changed since its verification."""
    if schedule.mode not in ("hot", "cold") or schedule.share_within <= 0:
        return None  # mode instances writes a set per instance: never shared
    earliest = invoked - timedelta(seconds=schedule.share_within)
    for entry in sets:
        tags = entry.get("schedules")
        if not isinstance(tags, list) or not tags or schedule.name in tags or entry.get("manifest") != "ok":
            continue
        metadata = entry.get("metadata")
        mode = metadata.get("mode") if isinstance(metadata, Mapping) else None
        verification = entry.get("verification")
        state = verification.get("state") if isinstance(verification, Mapping) else None
        made = (entry.get("app"), entry.get("host"), entry.get("label"), mode)
        if made != (schedule.app, host, label, schedule.mode) or state in ("failed", "changed"):
            continue
        try:
            when = parse_iso(str(entry.get("time")))
        except ValueError:
            continue
        if earliest <= when <= now:
            return entry
    return None
