"""Retention rules against calendars worked out by hand."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from ansible_collections.selfhost.dr.plugins.module_utils.sets.retention import (
    FUTURE,
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


# -- sets dated in the future (a host whose clock was wrong) ---------------------------------------------------------


def test_a_set_dated_a_year_ahead_does_not_push_real_sets_out_of_keep_within() -> None:
    items = daily_at_two("2026-11-01", 10)  # 11-01 .. 11-10, 02:00
    items.append(Item("skewed", utc("2027-11-10 02:00")))
    now = utc("2026-11-10 03:00")
    decisions = plan(items, Policy(within=parse_duration("7d")), now=now)
    # 7 days before the newest *real* set (11-10 02:00) is 11-03 02:00: 11-04 .. 11-10 are strictly newer.
    assert sorted(d.item.name for d in decisions if d.keep) == [f"11-{n:02d}" for n in range(4, 11)] + ["skewed"]
    assert sorted(d.item.name for d in decisions if not d.keep) == ["11-01", "11-02", "11-03"]
    assert {d.item.name: d.reasons for d in decisions}["skewed"] == [FUTURE]
    assert [d.item.name for d in decisions][:2] == ["skewed", "11-10"]  # still newest first


# Real sets: 2025-06-01, 2026-10-15, and 11-01 (Sunday, ISO week 44) .. 11-05 (Thursday, week 45), all 02:00;
# one more dated 2027-01-10, in its own hour, day, week, month and year. Counted, it would take the first slot.
CALENDAR_WITH_A_SKEWED_SET = [
    Item("2025-06-01", utc("2025-06-01 02:00")),
    Item("10-15", utc("2026-10-15 02:00")),
    *daily_at_two("2026-11-01", 5),
    Item("skewed", utc("2027-01-10 02:00")),
]


@pytest.mark.parametrize(
    ("rule", "expected", "newest_reason"),
    [
        ("last", ["11-04", "11-05"], "last 2"),
        ("hourly", ["11-04", "11-05"], "hourly 1"),
        ("daily", ["11-04", "11-05"], "daily 1"),
        ("weekly", ["11-01", "11-05"], "weekly 1"),
        ("monthly", ["10-15", "11-05"], "monthly 1"),
        ("yearly", ["11-05", "2025-06-01"], "yearly 1"),
    ],
)
def test_a_future_set_takes_no_slot_of_any_counting_rule(rule: str, expected: list[str], newest_reason: str) -> None:
    decisions = plan(CALENDAR_WITH_A_SKEWED_SET, Policy(**{rule: 2}), now=utc("2026-11-05 03:00"))
    reasons = {d.item.name: d.reasons for d in decisions}
    assert sorted(n for n, r in reasons.items() if r) == sorted([*expected, "skewed"])
    assert reasons["skewed"] == [FUTURE]
    assert reasons["11-05"] == [newest_reason]


def test_a_set_a_few_hours_ahead_does_not_take_todays_daily_slot() -> None:
    items = [Item("yesterday", utc("2026-11-04 02:00")), Item("today", utc("2026-11-05 02:00"))]
    items.append(Item("later-today", utc("2026-11-05 06:00")))  # written by a host 3 hours fast
    reasons = {d.item.name: d.reasons for d in plan(items, Policy(daily=1), now=utc("2026-11-05 03:00"))}
    assert reasons == {"later-today": [FUTURE], "today": ["daily 1"], "yesterday": []}


def test_a_future_set_is_not_the_newest_verified_set() -> None:
    items = [
        Item("old-verified", utc("2026-11-01 02:00"), verified=True),
        Item("newer", utc("2026-11-04 02:00")),
        Item("newest", utc("2026-11-05 02:00")),
        Item("skewed-verified", utc("2026-12-25 02:00"), verified=True),
    ]
    reasons = {d.item.name: d.reasons for d in plan(items, Policy(last=1), now=utc("2026-11-05 03:00"))}
    assert reasons == {
        "skewed-verified": [FUTURE],
        "newest": ["last 1"],
        "newer": [],
        "old-verified": ["newest verified set"],
    }


def test_the_future_tolerance_is_one_hour_by_default_and_can_be_set() -> None:
    now = utc("2026-11-05 03:00")
    items = [
        Item("real", utc("2026-11-05 02:00")),
        Item("at-the-edge", now + timedelta(hours=1)),  # not *more* than the tolerance ahead: counted
        Item("past-the-edge", now + timedelta(hours=1, seconds=1)),
    ]
    reasons = [(d.item.name, d.reasons) for d in plan(items, Policy(last=1), now=now)]
    assert reasons == [("past-the-edge", [FUTURE]), ("at-the-edge", ["last 1"]), ("real", [])]
    strict = [(d.item.name, d.reasons) for d in plan(items, Policy(last=1, future_tolerance=timedelta(0)), now=now)]
    assert strict == [("past-the-edge", [FUTURE]), ("at-the-edge", [FUTURE]), ("real", ["last 1"])]
    # The rule applies per group, and keep_all keeps a future set without counting it either.
    assert [d.reasons for d in plan(items[2:], Policy(keep_all=True), now=now)] == [[FUTURE]]


def test_now_defaults_to_the_current_time_and_must_be_aware() -> None:
    real_now = datetime.now(UTC)
    items = [Item("yesterday", real_now - timedelta(days=1)), Item("next-week", real_now + timedelta(days=7))]
    assert {d.item.name: d.reasons for d in plan(items, Policy(last=1))} == {
        "next-week": [FUTURE],
        "yesterday": ["last 1"],
    }
    with pytest.raises(RetentionError, match=r"now must carry a time zone"):
        plan(items, Policy(last=1), now=datetime(2026, 11, 5, 3, 0))  # naive on purpose
    with pytest.raises(RetentionError, match=r"future tolerance must be 0 or more"):
        Policy(last=1, future_tolerance=timedelta(minutes=-1))
