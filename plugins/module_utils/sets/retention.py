# Copyright: selfhost.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Which backup sets a retention policy keeps.

Standard library only; pure functions over (name, time, verified) items, so
the rules are tested against hand-computed calendars. The rules work like
restic's ``forget``:

- ``last``: the N newest sets;
- ``within``: every set newer than a duration (``7d``, ``2w``, ``1y6m``, ``36h``)
  before the *newest* set, so a host that stopped backing up keeps its history;
- ``hourly``/``daily``/``weekly``/``monthly``/``yearly``: walking from newest to
  oldest, the newest set of each of the last N calendar buckets that hold a set
  (ISO weeks; buckets in the policy's time zone, UTC by default);
- ``all``: everything.

A set survives if any rule keeps it. The newest verified set of each group is
never deleted, whatever the rules say. A set whose time is unknown is kept.

A set dated more than ``Policy.future_tolerance`` (1 hour by default) after
``now`` is kept with the reason ``FUTURE`` and left out of every rule: it is
never "the newest" that ``within`` measures from, never fills a ``last`` or
calendar slot, and is never the newest verified set. One such set (a clock that
was wrong when it was written) would otherwise push every real set out of
``keep_within`` and the calendar buckets.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone, tzinfo

from .._common import Error

_DURATION_RE = re.compile(r"^(?:(\d+)y)?(?:(\d+)m)?(?:(\d+)w)?(?:(\d+)d)?(?:(\d+)h)?$")


FUTURE = "dated in the future (clock skew?)"


class RetentionError(Error):
    """A policy that cannot be applied, in one sentence."""


@dataclass(frozen=True)
class Duration:
    years: int = 0
    months: int = 0
    weeks: int = 0
    days: int = 0
    hours: int = 0

    def before(self, when: datetime) -> datetime:
        """``when`` minus this duration, calendar months and years included (the 31st becomes the month's last day)."""
        months = when.month - 1 - self.months - 12 * self.years
        year, month = when.year + months // 12, months % 12 + 1
        day = min(when.day, _days_in(year, month))
        shifted = when.replace(year=year, month=month, day=day)
        return shifted - timedelta(weeks=self.weeks, days=self.days, hours=self.hours)


def _days_in(year: int, month: int) -> int:
    if month == 12:
        return 31
    return (datetime(year, month + 1, 1) - datetime(year, month, 1)).days


def timezone_named(name: str) -> tzinfo:
    """UTC, or an IANA time zone such as ``Europe/Berlin`` (needs the host's tzdata)."""
    if name.upper() == "UTC":
        return timezone.utc
    try:
        from zoneinfo import ZoneInfo

        return ZoneInfo(name)
    except Exception as exc:  # ZoneInfo raises several kinds for a name it cannot load
        raise RetentionError(f"unknown time zone {name!r} (is tzdata installed?)") from exc


def parse_duration(text: str) -> Duration:
    """``1y2m3w4d5h`` (any of the parts, in that order): years, months, weeks, days, hours."""
    match = _DURATION_RE.match(text.strip()) if text else None
    if not match or not any(match.groups()):
        raise RetentionError(f"keep_within must look like 7d, 2w, 6m, 1y or 36h, got {text!r}")
    years, months, weeks, days, hours = (int(g) if g else 0 for g in match.groups())
    return Duration(years, months, weeks, days, hours)


@dataclass(frozen=True)
class Policy:
    last: int = 0
    within: Duration | None = None
    hourly: int = 0
    daily: int = 0
    weekly: int = 0
    monthly: int = 0
    yearly: int = 0
    keep_all: bool = False
    tz: tzinfo = timezone.utc
    # How far after ``now`` a set may be dated and still count (clocks drift); later sets are kept apart.
    future_tolerance: timedelta = timedelta(hours=1)

    def __post_init__(self) -> None:
        for name in ("last", "hourly", "daily", "weekly", "monthly", "yearly"):
            if getattr(self, name) < 0:
                raise RetentionError(f"keep_{name} must be 0 or more, got {getattr(self, name)}")
        if self.future_tolerance < timedelta(0):
            raise RetentionError(f"the future tolerance must be 0 or more, got {self.future_tolerance}")

    @property
    def empty(self) -> bool:
        counts = (self.last, self.hourly, self.daily, self.weekly, self.monthly, self.yearly)
        return not self.keep_all and self.within is None and not any(counts)


@dataclass(frozen=True)
class Item:
    name: str
    time: datetime | None
    verified: bool = False
    group: tuple[str, ...] = ()


@dataclass
class Decision:
    item: Item
    reasons: list[str] = field(default_factory=list)

    @property
    def keep(self) -> bool:
        return bool(self.reasons)


_BUCKETS: dict[str, Callable[[datetime], tuple[int, ...]]] = {
    "hourly": lambda t: (t.year, t.month, t.day, t.hour),
    "daily": lambda t: (t.year, t.month, t.day),
    "weekly": lambda t: tuple(t.isocalendar()[:2]),
    "monthly": lambda t: (t.year, t.month),
    "yearly": lambda t: (t.year,),
}


def plan(items: Iterable[Item], policy: Policy, now: datetime | None = None) -> list[Decision]:
    """A decision for every item, newest first within each group; groups are independent.

    ``now`` (an aware datetime; the current UTC time by default) only decides which items are dated in the
    future: those later than ``now + policy.future_tolerance`` are kept as ``FUTURE`` and counted by no rule.
    """
    if policy.empty:
        raise RetentionError("no retention rule is set; set keep_last, keep_within, keep_daily, ... or keep_all")
    if now is None:
        now = datetime.now(timezone.utc)
    elif now.tzinfo is None or now.utcoffset() is None:
        raise RetentionError(f"now must carry a time zone, got {now.isoformat()}")
    horizon = now + policy.future_tolerance
    groups: dict[tuple[str, ...], list[Item]] = {}
    for item in items:
        groups.setdefault(item.group, []).append(item)
    decisions: list[Decision] = []
    for group in sorted(groups):
        decisions.extend(_plan_group(groups[group], policy, horizon))
    return decisions


def _plan_group(items: list[Item], policy: Policy, horizon: datetime) -> list[Decision]:
    timed = sorted((i for i in items if i.time is not None), key=lambda i: (i.time, i.name), reverse=True)
    untimed = [Decision(i, ["time unknown"]) for i in items if i.time is None]
    # A naive time is local time, as astimezone() reads it below; compared in UTC so naive and aware mix.
    future: list[Decision] = []
    decisions: list[Decision] = []
    for i in timed:
        if _utc(i) > horizon:
            future.append(Decision(i, [FUTURE]))
        else:
            decisions.append(Decision(i))
    if policy.keep_all:
        for d in decisions:
            d.reasons.append("keep_all")
    for n, d in enumerate(decisions):
        if n < policy.last:
            d.reasons.append(f"last {policy.last}")
    if policy.within is not None and decisions:
        newest = decisions[0].item.time
        assert newest is not None  # noqa: S101 - timed items only
        cutoff = policy.within.before(newest.astimezone(policy.tz))
        for d in decisions:
            if d.item.time is not None and d.item.time.astimezone(policy.tz) > cutoff:
                d.reasons.append("within")
    for rule, bucket in _BUCKETS.items():
        count = getattr(policy, rule)
        if not count:
            continue
        seen: list[tuple[int, ...]] = []
        for d in decisions:
            assert d.item.time is not None  # noqa: S101
            key = bucket(d.item.time.astimezone(policy.tz))
            if seen and seen[-1] == key:
                continue
            if len(seen) >= count:
                break
            seen.append(key)
            d.reasons.append(f"{rule} {len(seen)}")
    newest_verified = next((d for d in decisions if d.item.verified), None)
    if newest_verified is not None and not newest_verified.keep:
        newest_verified.reasons.append("newest verified set")
    return future + decisions + untimed


def _utc(item: Item) -> datetime:
    assert item.time is not None  # noqa: S101 - timed items only
    return item.time.astimezone(timezone.utc)
