"""Retention rules against calendars worked out by hand."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from ansible_collections.selfhost.dr.plugins.module_utils.retention import (
    Duration,
    Item,
    Policy,
    RetentionError,
    parse_duration,
    plan,
    timezone_named,
)


def utc(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%d %H:%M").replace(tzinfo=UTC)


def kept(items: list[Item], policy: Policy) -> list[str]:
    return sorted(d.item.name for d in plan(items, policy) if d.keep)


def daily_at_two(first: str, days: int) -> list[Item]:
    start = utc(first + " 02:00")
    return [Item((start + timedelta(days=n)).strftime("%m-%d"), start + timedelta(days=n)) for n in range(days)]


def test_keep_last() -> None:
    items = daily_at_two("2026-11-01", 10)
    assert kept(items, Policy(last=3)) == ["11-08", "11-09", "11-10"]


def test_keep_daily_takes_the_newest_set_of_each_day() -> None:
    items = [
        Item("mon-early", utc("2026-11-16 01:00")),
        Item("mon-late", utc("2026-11-16 23:00")),
        Item("tue", utc("2026-11-17 12:00")),
        Item("thu", utc("2026-11-19 12:00")),  # Wednesday has none: buckets count days that have a set
        Item("fri-a", utc("2026-11-20 08:00")),
        Item("fri-b", utc("2026-11-20 09:00")),
    ]
    assert kept(items, Policy(daily=3)) == ["fri-b", "thu", "tue"]
    assert kept(items, Policy(daily=10)) == ["fri-b", "mon-late", "thu", "tue"]


def test_keep_weekly_uses_iso_weeks() -> None:
    # 2026-11-01 is a Sunday (ISO week 44); 2026-11-02 a Monday (week 45).
    items = daily_at_two("2026-10-28", 22)  # Wed 10-28 .. Wed 11-18
    # Newest of each ISO week: Sun 11-01 (w44), Sun 11-08 (w45), Sun 11-15 (w46), Wed 11-18 (w47).
    assert kept(items, Policy(weekly=4)) == ["11-01", "11-08", "11-15", "11-18"]
    assert kept(items, Policy(weekly=2)) == ["11-15", "11-18"]


def test_keep_monthly_and_yearly_across_a_year_end() -> None:
    items = [
        Item("2025-11-30", utc("2025-11-30 02:00")),
        Item("2025-12-15", utc("2025-12-15 02:00")),
        Item("2025-12-31", utc("2025-12-31 23:30")),
        Item("2026-01-01", utc("2026-01-01 00:30")),
        Item("2026-01-20", utc("2026-01-20 02:00")),
        Item("2026-03-02", utc("2026-03-02 02:00")),
    ]
    assert kept(items, Policy(monthly=3)) == ["2025-12-31", "2026-01-20", "2026-03-02"]
    assert kept(items, Policy(yearly=5)) == ["2025-12-31", "2026-03-02"]


def test_the_calendar_follows_the_time_zone() -> None:
    # 23:30 UTC on the 31st is already 00:30 on the 1st in Berlin (UTC+1 in winter).
    items = [Item("a", utc("2025-12-31 22:30")), Item("b", utc("2025-12-31 23:30"))]
    assert kept(items, Policy(daily=2)) == ["b"]
    assert kept(items, Policy(daily=2, tz=timezone_named("Europe/Berlin"))) == ["a", "b"]
    with pytest.raises(RetentionError, match=r"unknown time zone 'Mars/Olympus'"):
        timezone_named("Mars/Olympus")


def test_keep_within_counts_from_the_newest_set_with_calendar_months() -> None:
    items = daily_at_two("2026-01-25", 40)  # 01-25 .. 03-05
    # 1 month before 03-05 02:00 is 02-05 02:00; strictly newer sets are kept.
    assert kept(items, Policy(within=parse_duration("1m")))[0] == "02-06"
    assert len(kept(items, Policy(within=parse_duration("1m")))) == 28
    # 3 days before 03-05 02:00 is 03-02 02:00.
    assert kept(items, Policy(within=parse_duration("3d"))) == ["03-03", "03-04", "03-05"]
    # Measured from the newest set, not from now: an old history stays.
    assert Duration(months=1).before(utc("2026-03-31 00:00")) == utc("2026-02-28 00:00")
    assert Duration(years=1, hours=2).before(utc("2028-02-29 03:00")) == utc("2027-02-28 01:00")


def test_rules_add_up_and_say_why() -> None:
    items = daily_at_two("2026-10-01", 50)  # 10-01 .. 11-19
    decisions = {d.item.name: d.reasons for d in plan(items, Policy(last=2, weekly=2, monthly=2))}
    assert decisions["11-19"] == ["last 2", "weekly 1", "monthly 1"]
    assert decisions["11-18"] == ["last 2"]
    assert decisions["11-15"] == ["weekly 2"]  # Sunday closing ISO week 46
    assert decisions["10-31"] == ["monthly 2"]
    assert sorted(n for n, r in decisions.items() if r) == ["10-31", "11-15", "11-18", "11-19"]


def test_the_newest_verified_set_is_never_deleted() -> None:
    items = [
        Item("old-verified", utc("2026-11-01 02:00"), verified=True),
        Item("newer", utc("2026-11-10 02:00")),
        Item("newest", utc("2026-11-11 02:00")),
    ]
    decisions = {d.item.name: d.reasons for d in plan(items, Policy(last=1))}
    assert decisions == {"newest": ["last 1"], "newer": [], "old-verified": ["newest verified set"]}


def test_groups_are_pruned_apart_and_unknown_times_are_kept() -> None:
    items = [
        Item("hot-1", utc("2026-11-01 02:00"), group=("hot",)),
        Item("hot-2", utc("2026-11-02 02:00"), group=("hot",)),
        Item("cold-1", utc("2026-10-01 02:00"), group=("cold",)),
        Item("mystery", None, group=("hot",)),
    ]
    assert kept(items, Policy(last=1)) == ["cold-1", "hot-2", "mystery"]


def test_keep_all_and_bad_policies() -> None:
    items = daily_at_two("2026-11-01", 3)
    assert len(kept(items, Policy(keep_all=True))) == 3
    with pytest.raises(RetentionError, match=r"no retention rule is set"):
        plan(items, Policy())
    with pytest.raises(RetentionError, match=r"keep_daily must be 0 or more, got -1"):
        Policy(daily=-1)
    for bad in ("", "7", "d7", "1d2y", "7 days"):
        with pytest.raises(RetentionError, match=r"keep_within must look like"):
            parse_duration(bad)
    assert parse_duration("1y6m2w3d12h") == Duration(1, 6, 2, 3, 12)
