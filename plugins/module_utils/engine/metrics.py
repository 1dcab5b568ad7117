# Copyright: selfhost.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The node_exporter textfile ``selfhost_dr.prom``, from state.json and the catalog of sets.

Standard library only. Timestamps, not ages: a value survives a reboot as it was (node_exporter reads the file
again), so nothing looks stale after a restart and the alert rules compute ages with ``time()``. The file is
written to a temp name in the same directory (``selfhost_dr.prom.partial``, which the textfile collector ignores)
and renamed over the old one: a reader never sees half a file, and a link at the name is replaced, never written
through.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping

from .._common import atomic_write, fsync_dir
from .state import OPERATIONS, last, timestamp

TEXTFILE = "selfhost_dr.prom"
DEFAULT_TEXTFILE_DIR = "/var/lib/node_exporter"
SET_STATES = ("verified", "unverified", "failed", "changed")

HELP = {
    "last_success_timestamp_seconds": "When the operation's last successful run ended (Unix time).",
    "last_attempt_timestamp_seconds": "When the operation's last run started (Unix time), whatever its outcome.",
    "last_attempt_success": "1 when the operation's last run succeeded, 0 when it failed or never finished.",
    "last_duration_seconds": "How long the operation's last finished run took.",
    "last_set_bytes": "Bytes of the set(s) the operation's last successful run wrote, verified or restored.",
    "last_verified_timestamp_seconds": "When a set of the application was last verified successfully (Unix time).",
    "sets": "Sets in the backup directory by verification state.",
    "schedule_last_success_timestamp_seconds": "When the schedule's last successful run ended (Unix time).",
    "schedule_last_attempt_timestamp_seconds": "When the schedule's last run started (Unix time).",
    "schedule_last_attempt_success": "1 when the schedule's last run succeeded, 0 when it failed or never finished.",
    "schedule_last_duration_seconds": "How long the schedule's last finished run took.",
    "schedule_next_run_timestamp_seconds": "When the schedule's timer fires next (Unix time, before its random delay).",
    "schedule_sets": "Sets in the backup directory the schedule's retention keeps (of those made for it).",
    "drill_last_attempt_timestamp_seconds": "When the application's last DR drill ended (Unix time), passed or not.",
    "drill_last_attempt_success": "1 when the application's last DR drill passed and met its targets, else 0.",
    "drill_last_success_timestamp_seconds": "When a DR drill of the application last passed (Unix time).",
    "drill_rto_seconds": "The recovery time the application's last passed DR drill measured.",
    "drill_rpo_seconds": "The recovery point (drill start minus the set's start) of the last passed DR drill.",
    "repository_last_success_timestamp_seconds": "When the operation last succeeded in the repository (Unix time).",
    "repository_last_attempt_timestamp_seconds": "When the operation last ran in the repository (Unix time).",
    "repository_last_attempt_success": "1 when the operation's last run succeeded in the repository, else 0.",
    "repository_last_bytes_added": "Bytes the last successful backup added to the repository (restic's data_added).",
    "repository_snapshots": (
        "selfhost-dr snapshots of this host in the repository (counted by the last prune, one more per backup since)."
    ),
    "replica_behind_txids": "Transactions (Litestream syncs) written locally and not yet on the database's replica.",
    "replica_lag_seconds": "How long the database's oldest change not yet on its replica had waited when measured.",
    "replica_last_sync_timestamp_seconds": "When the newest file on the database's replica was written (Unix time).",
    "replica_stalled": "1 when the database's replica had stalled when measured (or Litestream did not run), else 0.",
    "replica_measured_timestamp_seconds": "When the application's replicas were last measured (Unix time).",
}


def _escape(value: str) -> str:
    value = value.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")  # (a name not UTF-8)
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    if math.isfinite(value) and value == int(value) and abs(value) < 2**53:
        return str(int(value))
    return repr(float(value))


def _runs(
    samples: dict[str, list[tuple[str, float]]], state: dict[str, object], section: str, names: Iterable[str]
) -> None:
    prefix = "schedule_" if section == "schedules" else ""
    for name in names:
        attempt = last(state, name, "last_attempt", section)
        if attempt is None:
            continue
        label = f'{section[:-1]}="{_escape(name)}"'
        success = last(state, name, "last_success", section)
        when = timestamp(success.get("finished_at")) if success else None
        if when is not None:
            samples[prefix + "last_success_timestamp_seconds"].append((label, when))
        started = timestamp(attempt.get("started_at"))
        if started is not None:
            samples[prefix + "last_attempt_timestamp_seconds"].append((label, started))
        ok = bool(attempt.get("finished_at")) and attempt.get("ok") is True
        samples[prefix + "last_attempt_success"].append((label, 1.0 if ok else 0.0))
        finished = attempt if attempt.get("finished_at") else last(state, name, "last_failure", section)
        duration = finished.get("duration_seconds") if finished and finished.get("finished_at") else None
        if isinstance(duration, (int, float)) and not isinstance(duration, bool):  # a hand-edited value is left out
            samples[prefix + "last_duration_seconds"].append((label, float(duration)))
        if not prefix and success and isinstance(success.get("set_bytes"), int):
            samples["last_set_bytes"].append((label, float(success["set_bytes"])))  # type: ignore[arg-type]


def _repositories(samples: dict[str, list[tuple[str, float]]], state: dict[str, object]) -> None:
    recorded = state.get("repositories")
    for name, about in sorted(recorded.items()) if isinstance(recorded, dict) else ():
        if not isinstance(about, dict):
            continue
        repo = f'repository="{_escape(str(name))}"'
        for operation, runs in sorted(about.items()):
            if not isinstance(runs, dict) or not isinstance(runs.get("last_attempt"), dict):
                continue
            label = f'{repo},operation="{_escape(str(operation))}"'
            attempt, success = runs["last_attempt"], runs.get("last_success")
            when = timestamp(attempt.get("at"))
            if when is not None:
                samples["repository_last_attempt_timestamp_seconds"].append((label, when))
            samples["repository_last_attempt_success"].append((label, 1.0 if attempt.get("ok") is True else 0.0))
            if isinstance(success, dict):
                done = timestamp(success.get("at"))
                if done is not None:
                    samples["repository_last_success_timestamp_seconds"].append((label, done))
                added = success.get("data_added")
                if operation == "backup" and isinstance(added, int) and not isinstance(added, bool):
                    samples["repository_last_bytes_added"].append((repo, float(added)))
        count = about.get("snapshots")
        if isinstance(count, int) and not isinstance(count, bool):
            samples["repository_snapshots"].append((repo, float(count)))


def render(
    state: dict[str, object],
    sets: list[dict[str, object]] | None,
    next_runs: Mapping[str, float] | None = None,
    kept: Mapping[str, int] | None = None,
    configured: Iterable[str] | None = None,
) -> str:
    """The textfile: a HELP and TYPE line per metric, then its samples. ``sets`` None: the directory could not be
    listed, and the set metrics are left out rather than reported as zero. ``next_runs``: each configured schedule's
    next run (Unix time); the schedules' metrics cover those and the ones state.json recorded. ``kept``: how many sets
    each schedule's retention keeps (else the sets made for each are counted). ``configured``: the schedules the host
    has now; a schedule removed since is left out (its last failure would alert for ever), None: every one recorded."""
    samples: dict[str, list[tuple[str, float]]] = {name: [] for name in HELP}
    _runs(samples, state, "operations", OPERATIONS)
    recorded = state.get("schedules")
    if configured is not None:
        schedules = sorted(set(configured))
    else:
        schedules = sorted({*(recorded if isinstance(recorded, dict) else {}), *(next_runs or {})})
    _runs(samples, state, "schedules", schedules)
    for name, when in sorted((next_runs or {}).items()):
        if name in schedules:
            samples["schedule_next_run_timestamp_seconds"].append((f'schedule="{_escape(name)}"', float(when)))
    if sets is not None:
        made: dict[str, int] = {**dict.fromkeys(next_runs or {}, 0), **(kept or {})}
        for entry in sets if kept is None else ():  # without what the retention keeps: the sets made for each
            tags = entry.get("schedules")
            for tag in tags if isinstance(tags, list) else []:
                made[str(tag)] = made.get(str(tag), 0) + 1
        for name, count in sorted(made.items()):
            if configured is not None and name not in schedules:
                continue
            samples["schedule_sets"].append((f'schedule="{_escape(name)}"', float(count)))
        newest: dict[str, float] = {}
        counts = dict.fromkeys(SET_STATES, 0)
        for entry in sets:
            verification = dict(entry.get("verification") or {})  # type: ignore[call-overload]
            state_name = str(verification.get("state", "unverified"))
            counts[state_name if state_name in counts else "unverified"] += 1
            when = timestamp(verification.get("verified_at")) if state_name == "verified" else None
            app = str(entry.get("app") or "")
            if when is not None and when > newest.get(app, 0.0):
                newest[app] = when
        for app, when in sorted(newest.items()):
            samples["last_verified_timestamp_seconds"].append((f'app="{_escape(app)}"', when))
        for state_name in SET_STATES:
            samples["sets"].append((f'state="{state_name}"', float(counts[state_name])))
    _repositories(samples, state)
    _drills(samples, state)
    _replicas(samples, state)
    lines: list[str] = []
    for name, help_text in HELP.items():
        if not samples[name]:
            continue
        metric = f"selfhost_dr_{name}"
        lines += [f"# HELP {metric} {help_text}", f"# TYPE {metric} gauge"]
        lines += [f"{metric}{{{labels}}} {_number(value)}" for labels, value in samples[name]]
    return "\n".join(lines) + "\n" if lines else ""


def _drills(samples: dict[str, list[tuple[str, float]]], state: dict[str, object]) -> None:
    drills = state.get("drills")
    for app, about in sorted(drills.items() if isinstance(drills, dict) else []):
        if not isinstance(about, dict):
            continue
        label = f'app="{_escape(str(app))}"'
        attempt, success = about.get("last_attempt"), about.get("last_success")
        if isinstance(attempt, dict) and timestamp(attempt.get("at")) is not None:
            samples["drill_last_attempt_timestamp_seconds"].append((label, timestamp(attempt.get("at")) or 0.0))
            samples["drill_last_attempt_success"].append((label, 1.0 if attempt.get("ok") is True else 0.0))
        if isinstance(success, dict) and timestamp(success.get("at")) is not None:
            samples["drill_last_success_timestamp_seconds"].append((label, timestamp(success.get("at")) or 0.0))
            for key in ("rto_seconds", "rpo_seconds"):
                value = success.get(key)
                if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                    samples[f"drill_{key}"].append((label, float(value)))


def _replicas(samples: dict[str, list[tuple[str, float]]], state: dict[str, object]) -> None:
    replicas = state.get("replicas")
    for app, about in sorted(replicas.items() if isinstance(replicas, dict) else []):
        if not isinstance(about, dict) or timestamp(about.get("at")) is None:
            continue
        measured = timestamp(about["at"]) or 0.0
        samples["replica_measured_timestamp_seconds"].append((f'app="{_escape(str(app))}"', measured))
        for lag in about.get("databases") or []:
            if not isinstance(lag, dict):
                continue
            label = f'app="{_escape(str(app))}",database="{_escape(str(lag.get("database", "")))}"'
            for key, metric in (("behind", "replica_behind_txids"), ("lag_seconds", "replica_lag_seconds"),
                                ("last_sync", "replica_last_sync_timestamp_seconds")):  # fmt: skip
                value = lag.get(key)
                number = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
                if number and (key != "last_sync" or float(value) > 0):  # type: ignore[arg-type]
                    samples[metric].append((label, float(value)))  # type: ignore[arg-type]
            samples["replica_stalled"].append((label, 1.0 if lag.get("stalled") is True else 0.0))


def write(directory: str, text: str) -> str:
    """Write the textfile into ``directory`` (which must exist) atomically; its path."""
    path = os.path.join(directory, TEXTFILE)
    atomic_write(path, text.encode(), 0o644)
    fsync_dir(directory)
    return path
