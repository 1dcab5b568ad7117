# Copyright: selfhost.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Retention over a restic repository's snapshots, by the collection's own policy engine (``sets/retention.py``):
the same rules, the same calendar and the same handling of a snapshot dated in the future as the local sets.

:func:`plan` (shared by check mode and the real run) reads ``restic snapshots --json`` (only the snapshots tagged
``selfhost-dr``), groups them per (host, app), and decides for each. Only this host's snapshots are planned unless
``all_hosts`` is given (a repository shared by several hosts: each prunes its own, as a scheduled prune of a shared
directory of sets does). Never forgotten, whatever the rules say: the newest snapshot of each group, the newest one
tagged ``verified=restore`` (a restore from it passed every check), one dated in the future, one whose time or app
cannot be read. :func:`run` forgets the others by id (``restic forget ID...``), then ``restic prune`` (unless told
not to), and says how many bytes restic freed when it says so.

:func:`prune_all` does it for several repositories, each outcome on its own: a failed ``required`` repository fails
the run after the others were done, a failed optional one is a warning.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from .._common import Log, no_log
from ..repos.restic import SNAPSHOT_TAG, VERIFIED_TAG, RepoError, Restic
from ..sets.retention import FUTURE, Item, Policy, RetentionError
from ..sets.retention import plan as retention_plan
from . import prune as local_prune

NEWEST = "newest of its host and app"
NEWEST_VERIFIED = "newest verified by a restore (verified=restore)"
_TIME_RE = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d)$")


def policy_for(retention: Mapping[str, object], default: Mapping[str, object], name: str) -> Policy:
    """The repository's own ``keep_*`` rules, else the configuration's ``[retention]``; one sentence when neither
    gives a rule or a rule cannot be read."""
    rules = retention if any(k.startswith("keep_") for k in retention) else default
    if not rules:
        raise RepoError(
            f"repository {name} has no retention rule (keep_daily, ...) and the configuration has no [retention]"
        )
    where = f"[repositories.{name}]" if rules is retention else "[retention]"
    try:
        policy = local_prune.policy_of(rules)
    except (TypeError, ValueError, RetentionError) as exc:
        raise RepoError(f"the retention rules of {where} are not valid: {exc}") from None
    if policy.empty:
        raise RepoError(f"the retention rules of {where} keep nothing: set keep_last, keep_daily, ... or keep_all")
    return policy


def snapshot_time(text: object) -> datetime | None:
    """restic's snapshot time (``2026-11-28T15:40:00.123456789+01:00``, nanoseconds) as an aware datetime."""
    match = _TIME_RE.match(text) if isinstance(text, str) else None
    if not match:
        return None
    fraction = (match[2] or ".0")[:7]  # microseconds: Python reads no more
    zone = "+00:00" if match[3] == "Z" else match[3]
    try:
        return datetime.fromisoformat(f"{match[1]}{fraction}{zone}")
    except ValueError:
        return None


@dataclass
class Decision:
    """One snapshot and what retention decided for it (no reason: forget it)."""

    id: str
    short_id: str
    time: str
    host: str
    app: str
    tags: list[str]
    reasons: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        return dict(self.__dict__)


@dataclass
class Plan:
    """What a prune of one repository would do."""

    repository: str
    location: str
    required: bool
    kept: list[Decision] = field(default_factory=list)
    forget: list[Decision] = field(default_factory=list)
    future: list[str] = field(default_factory=list)
    other_hosts: int = 0  # snapshots of other hosts, left out (not with all_hosts)
    remaining: int = -1  # this host's selfhost-dr snapshots once the forgotten ones are gone


def decide(
    snapshots: Iterable[Mapping[str, Any]],
    policy: Policy,
    host: str,
    all_hosts: bool = False,
    app: str | None = None,
    now: datetime | None = None,
) -> tuple[list[Decision], list[Decision], int]:
    """The pure part of :func:`plan`: (kept, forgotten, snapshots of other hosts left out). Only snapshots tagged
    ``selfhost-dr`` are looked at; groups are (host, app)."""
    by_id: dict[str, Decision] = {}
    items: list[Item] = []
    kept_apart: list[Decision] = []
    others = 0
    for snapshot in snapshots:
        tags = [str(t) for t in snapshot.get("tags") or [] if isinstance(t, str)]
        if SNAPSHOT_TAG not in tags or not isinstance(snapshot.get("id"), str):
            continue
        apps = [t.removeprefix("app=") for t in tags if t.startswith("app=")]
        owner = str(snapshot.get("hostname", ""))
        decision = Decision(
            str(snapshot["id"]),
            str(snapshot.get("short_id") or str(snapshot["id"])[:8]),
            str(snapshot.get("time", "")),
            owner,
            apps[0] if len(apps) == 1 else "",
            tags,
        )
        if app is not None and apps != [app]:
            continue
        if not all_hosts and owner != host:
            others += 1
            continue
        if len(apps) != 1:
            decision.reasons.append("no single app= tag, so never forgotten")
            kept_apart.append(decision)
            continue
        by_id[decision.id] = decision
        items.append(Item(decision.id, snapshot_time(decision.time), VERIFIED_TAG in tags, (owner, decision.app)))
    groups: dict[tuple[str, ...], list[Item]] = {}
    for item in items:
        groups.setdefault(item.group, []).append(item)
    for decided in retention_plan(items, policy, now) if items else []:
        reasons = [NEWEST_VERIFIED if r == "newest verified set" else r for r in decided.reasons]
        by_id[decided.item.name].reasons.extend(reasons)
    for members in groups.values():  # whatever the rules say (they keep it already unless the policy is odd)
        timed = [i for i in members if i.time is not None and FUTURE not in by_id[i.name].reasons]
        if timed:
            newest = max(timed, key=lambda i: (i.time, i.name))
            if not by_id[newest.name].reasons:
                by_id[newest.name].reasons.append(NEWEST)
    ordered = sorted(by_id.values(), key=lambda d: (d.host, d.app, d.time), reverse=True)
    kept = [d for d in ordered if d.reasons] + kept_apart
    return kept, [d for d in ordered if not d.reasons], others


def plan(
    restic: Restic,
    policy: Policy,
    host: str,
    all_hosts: bool = False,
    app: str | None = None,
    now: datetime | None = None,
) -> Plan:
    """What a prune of the repository does: its snapshots read (``--no-lock``), decided. Refuses what the run
    refuses: a missing repository, a wrong password, an unreachable store."""
    snapshots = restic.snapshots([SNAPSHOT_TAG])
    kept, forget, others = decide(snapshots, policy, host, all_hosts, app, now or datetime.now(timezone.utc))
    repo = restic.repo
    planned = Plan(repo.name, repo.shown, repo.required, kept, forget, other_hosts=others)
    mine = sum(1 for s in snapshots if s.get("hostname") == host and SNAPSHOT_TAG in (s.get("tags") or []))
    planned.remaining = mine - sum(1 for d in forget if d.host == host)
    planned.future = [d.id for d in kept if FUTURE in d.reasons]
    return planned


@dataclass
class Outcome:
    """What happened in one repository."""

    repository: str
    location: str
    required: bool
    ok: bool = False
    kept: list[dict[str, object]] = field(default_factory=list)
    forgotten: list[dict[str, object]] = field(default_factory=list)
    future: list[str] = field(default_factory=list)
    other_hosts: int = 0
    pruned: bool = False
    freed_bytes: int | None = None
    snapshots: int = -1  # this host's selfhost-dr snapshots afterwards (for status and the metrics)
    error: str = ""

    def as_dict(self) -> dict[str, object]:
        return dict(self.__dict__)


def run(restic: Restic, planned: Plan, prune: bool = True, log: Log = no_log) -> Outcome:
    """Forget the planned snapshots by id, then ``restic prune`` (with ``prune``, when something was forgotten)."""
    outcome = _outcome(planned)
    doomed = [d.id for d in planned.forget]
    restic.forget(doomed)
    if doomed:
        log(f"{planned.location}: forgot {len(doomed)} snapshot(s), kept {len(planned.kept)}")
    if doomed and prune:
        outcome.freed_bytes = restic.prune()
        outcome.pruned = True
        freed = "" if outcome.freed_bytes is None else f", {outcome.freed_bytes / 1048576:.1f} MiB freed"
        log(f"{planned.location}: pruned{freed}")
    outcome.ok = True
    return outcome


def _outcome(planned: Plan) -> Outcome:
    return Outcome(
        planned.repository,
        planned.location,
        planned.required,
        kept=[d.as_dict() for d in planned.kept],
        forgotten=[d.as_dict() for d in planned.forget],
        future=planned.future,
        other_hosts=planned.other_hosts,
        snapshots=planned.remaining,
    )


@dataclass
class Result:
    outcomes: list[Outcome] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def prune_all(
    repos: Sequence[Restic],
    default: Mapping[str, object],
    host: str,
    all_hosts: bool = False,
    app: str | None = None,
    check: bool = False,
    prune: bool = True,
    log: Log = no_log,
    now: datetime | None = None,
) -> Result:
    """Plan (and unless ``check``, run) the prune of every repository; each outcome on its own. A failed required
    repository raises after the others were done; an optional one is a warning."""
    result = Result()
    for restic in repos:
        repo = restic.repo
        try:
            planned = plan(restic, policy_for(repo.retention, default, repo.name), host, all_hosts, app, now)
            if check:
                if planned.forget:  # the run would need the repository alone: a live run's lock refuses it
                    restic.refuse_live_lock()
                outcome = _outcome(planned)
                outcome.ok = True
            else:
                outcome = run(restic, planned, prune, log)
        except RepoError as exc:
            outcome = Outcome(repo.name, repo.shown, repo.required, error=str(exc))
        result.outcomes.append(outcome)
    judge(result.outcomes, result.warnings, "would prune" if check else "pruned", log)
    return result


class RepositoriesError(RepoError):
    """A required repository failed; ``result`` carries every repository's outcome (the host command reports them)."""

    def __init__(self, message: str, outcomes: Sequence[Any], warnings: Sequence[str]) -> None:
        super().__init__(message)
        self.result: dict[str, object] = {"repositories": [o.as_dict() for o in outcomes]}
        if warnings:
            self.result["warnings"] = list(warnings)


def judge(outcomes: Sequence[Any], warnings: list[str], done_what: str, log: Log) -> None:
    """Optional failures become warnings; the first required failure raises (:class:`RepositoriesError`), naming the
    repositories that were done."""
    failed = [o for o in outcomes if not o.ok]
    for outcome in failed:
        log(outcome.error)
        if not outcome.required:
            warnings.append(f"{outcome.repository} (optional): {outcome.error}")
    required = [o for o in failed if o.required]
    if required:
        done = [o.repository for o in outcomes if o.ok]
        others = f"; {done_what}: {', '.join(done)}" if done else ""
        raise RepositoriesError(f"{required[0].error}{others}", outcomes, warnings)
