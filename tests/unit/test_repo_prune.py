"""Retention over a restic repository's snapshots (engine/repo_prune.py), on snapshot dicts as ``restic snapshots
--json`` gives them: the same choice as the local prune for the same times, per host and app, never the newest or
the newest verified by a restore; and restic's words (a lock, a prune's total) read into one sentence."""

from __future__ import annotations

import os
import socket
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from ansible_collections.selfhost.dr.plugins.module_utils.engine import prune as local_prune
from ansible_collections.selfhost.dr.plugins.module_utils.engine import repo_prune
from ansible_collections.selfhost.dr.plugins.module_utils.engine.repo_prune import (
    NEWEST_VERIFIED,
    decide,
    policy_for,
    snapshot_time,
)
from ansible_collections.selfhost.dr.plugins.module_utils.repos import restic as restic_module
from ansible_collections.selfhost.dr.plugins.module_utils.repos.restic import (
    SNAPSHOT_TAG,
    VERIFIED_TAG,
    RepoError,
    Repository,
)
from ansible_collections.selfhost.dr.plugins.module_utils.sets.retention import FUTURE, Policy

from .test_prune_module_logic import write_set

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
SEVEN_FOUR_TWELVE = {"keep_daily": 7, "keep_weekly": 4, "keep_monthly": 12}


def snapshot(when: datetime, host: str = "web1", app: str = "tenement", *extra: str) -> dict[str, object]:
    ident = f"{abs(hash((when, host, app, extra))):064x}"[-64:]
    return {
        "id": ident,
        "short_id": ident[:8],
        "time": when.isoformat().replace("+00:00", "Z"),
        "hostname": host,
        "tags": [SNAPSHOT_TAG, f"app={app}", "kind=hot", *extra],
        "paths": ["/var/backups/selfhost-dr/.selfhost-dr-repo/tenement"],
    }


def calendar(end: datetime) -> list[datetime]:
    """Fourteen months of backups, as a host makes them: daily lately (twice on some days), weekly before, then
    every three weeks or so, with a gap of two months."""
    times = [end - timedelta(days=n) for n in range(12)]
    times += [end - timedelta(days=n, hours=9) for n in (0, 3, 4)]
    times += [end - timedelta(days=12 + 7 * n, hours=5) for n in range(8)]
    times += [end - timedelta(days=70 + 23 * n) for n in range(16) if n not in (5, 6)]
    return sorted(times)


def kept_times(kept: list[repo_prune.Decision]) -> list[datetime]:
    found = [snapshot_time(d.time) for d in kept]
    assert None not in found
    return sorted(t for t in found if t is not None)


def test_seven_daily_four_weekly_twelve_monthly_keep_what_the_local_prune_keeps(tmp_path: Path) -> None:
    times = calendar(NOW - timedelta(days=1))
    written = {write_set(tmp_path, "tenement", "web1", when): when for when in times}
    policy = local_prune.policy_of(SEVEN_FOUR_TWELVE)
    local = local_prune.prune(str(tmp_path), policy, {"app": "tenement", "host": None, "label": None}, check=True)
    local_kept = sorted(written[str(entry["name"])] for entry in local.kept)
    assert len(local_kept) + len(local.deleted) == len(times)
    kept, forgotten, others = decide([snapshot(t) for t in times], policy, "web1", now=NOW)
    assert kept_times(kept) == local_kept
    assert len(kept) + len(forgotten) == len(times) and others == 0
    assert len(kept) == 20  # 7 + 4 + 12 less the overlaps: the newest snapshot is a day's, a week's and a month's
    assert forgotten and all(not d.reasons for d in forgotten)


def test_the_newest_verified_snapshot_and_the_newest_of_each_group_are_never_forgotten() -> None:
    days = [NOW - timedelta(days=n) for n in range(30)]
    snapshots = [snapshot(t) for t in days]
    verified = snapshot(days[20], "web1", "tenement", VERIFIED_TAG)
    older_verified = snapshot(days[25], "web1", "tenement", VERIFIED_TAG)
    snapshots[20], snapshots[25] = verified, older_verified
    kept, forgotten, _ = decide(snapshots, Policy(daily=3), "web1", now=NOW)
    reasons = {d.id: d.reasons for d in kept}
    assert reasons[verified["id"]] == [NEWEST_VERIFIED]
    assert older_verified["id"] in {d.id for d in forgotten}  # only the newest verified one
    assert len(kept) == 4 and VERIFIED_TAG == "verified=restore"


def test_groups_are_host_and_app_and_other_hosts_are_left_alone_unless_asked() -> None:
    days = [NOW - timedelta(days=n) for n in range(5)]
    snapshots = [snapshot(t, h, a) for t in days for h in ("web1", "web2") for a in ("tenement", "tomo")]
    snapshots.append({**snapshot(days[0]), "id": "f" * 64, "tags": ["made-by-hand"]})  # not ours: never looked at
    kept, forgotten, others = decide(snapshots, Policy(last=2), "web1", now=NOW)
    assert others == 10 and {d.host for d in kept + forgotten} == {"web1"}
    assert [(d.app, len([k for k in kept if k.app == d.app])) for d in kept[:1]] == [("tomo", 2)]
    assert len(kept) == 4 and len(forgotten) == 6
    kept, forgotten, others = decide(snapshots, Policy(last=2), "web1", all_hosts=True, now=NOW)
    assert others == 0 and len(kept) == 8 and len(forgotten) == 12
    kept, forgotten, others = decide(snapshots, Policy(last=2), "web1", app="tomo", now=NOW)
    assert {d.app for d in kept + forgotten} == {"tomo"} and len(kept) == 2


def test_a_snapshot_dated_in_the_future_is_kept_and_takes_no_slot() -> None:
    days = [NOW - timedelta(days=n) for n in range(5)]
    ahead = snapshot(NOW + timedelta(days=365))
    kept, forgotten, _ = decide([ahead, *(snapshot(t) for t in days)], Policy(last=2), "web1", now=NOW)
    assert {d.id: d.reasons for d in kept}[str(ahead["id"])] == [FUTURE]
    assert kept_times([d for d in kept if d.id != ahead["id"]]) == sorted(days[:2])
    assert len(forgotten) == 3


def test_a_snapshot_without_one_app_tag_or_a_readable_time_is_kept() -> None:
    days = [NOW - timedelta(days=n) for n in range(3)]
    no_app = {**snapshot(days[2]), "id": "a" * 64, "tags": [SNAPSHOT_TAG, "kind=hot"]}
    two_apps = {**snapshot(days[2]), "id": "b" * 64, "tags": [SNAPSHOT_TAG, "app=tenement", "app=tomo"]}
    no_time = {**snapshot(days[2]), "id": "c" * 64, "time": "yesterday"}
    kept, forgotten, _ = decide([no_app, two_apps, no_time, *(snapshot(t) for t in days)], Policy(last=1), "web1")
    reasons = {d.id: d.reasons for d in kept}
    assert reasons["a" * 64] == reasons["b" * 64] == ["no single app= tag, so never forgotten"]
    assert reasons["c" * 64] == ["time unknown"]
    assert len(forgotten) == 2


def test_restic_times_with_nanoseconds_and_offsets() -> None:
    assert snapshot_time("2026-11-28T15:40:00.123456789+01:00") == datetime(2026, 11, 28, 14, 40, 0, 123456, UTC)
    assert snapshot_time("2026-11-28T15:40:00Z") == datetime(2026, 11, 28, 15, 40, tzinfo=UTC)
    assert snapshot_time("2026-11-28 15:40") is None and snapshot_time(None) is None


def test_a_repositorys_rules_come_before_the_configurations_and_neither_is_one_sentence() -> None:
    assert policy_for({"keep_last": 3}, {"keep_daily": 7}, "offsite") == Policy(last=3)
    assert policy_for({"timezone": "UTC"}, {"keep_daily": 7}, "offsite") == Policy(daily=7)
    with pytest.raises(RepoError) as none:
        policy_for({}, {}, "offsite")
    assert str(none.value) == (
        "repository offsite has no retention rule (keep_daily, ...) and the configuration has no [retention]"
    )
    with pytest.raises(RepoError, match=r"^the retention rules of \[repositories.offsite\] are not valid: "):
        policy_for({"keep_within": "a while"}, {}, "offsite")
    with pytest.raises(RepoError, match="keep nothing"):
        policy_for({"keep_last": 0}, {}, "offsite")


# -- restic's words ----------------------------------------------------------------------------------------------------

LOCKED = """unable to create lock in backend: repository is already locked exclusively by PID 4242 on web1 by root \
(UID 0, GID 0)
lock was created at 2026-11-28 15:37:17 (1.953075691s ago)
storage ID bad97320
the `unlock` command can be used to remove stale locks
"""


def test_a_live_lock_is_one_sentence_saying_who_holds_it_since_when() -> None:
    repo = Repository("local", "/srv/restic", password="pw-for-the-test")
    sentence = restic_module._locked_sentence(repo.shown, LOCKED, repo)
    assert sentence.startswith(
        "repository local (/srv/restic) is locked exclusively by PID 4242 on web1 (root) since 2026-11-28 15:37:17, "
    )
    assert "\n" not in sentence and sentence.endswith("so it was left in place")


def test_the_bytes_a_prune_frees_are_read_from_its_total() -> None:
    text = "to delete:             3 blobs / 391.163 KiB\ntotal prune:           3 blobs / 1.500 MiB\n"
    match = restic_module._FREED_RE.search(text)
    assert match is not None and restic_module._bytes(match["size"], match["unit"]) == 1572864


def test_a_lock_is_stale_by_restics_rule_only() -> None:
    recent = (datetime.now(UTC) - timedelta(minutes=5)).isoformat().replace("+00:00", "Z")
    old = (datetime.now(UTC) - timedelta(minutes=31)).isoformat()
    here = socket.gethostname()
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = restic_module._stale
    assert stale({"time": recent, "hostname": here, "pid": dead.pid}) is True  # a killed run of this host
    assert stale({"time": recent, "hostname": here, "pid": os.getpid()}) is False  # a live run
    assert stale({"time": recent, "hostname": "elsewhere", "pid": dead.pid}) is False  # cannot be seen from here
    assert stale({"time": old, "hostname": "elsewhere", "pid": os.getpid()}) is True  # older than 30 minutes
    assert stale({"time": "whenever", "hostname": here, "pid": dead.pid}) is False
