# Copyright: selfhost.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Backing up an application: hot (while it runs), cold (stopped, then started again with what ran) or one
unit at a time (tenement instances: stop, copy, start, compress).

:func:`plan` reads the application and refuses, before anything is stopped, every backup the run would
refuse; check mode stops there. :func:`run` carries the plan out: the application is started again whatever
happens to the archive, interrupted work of earlier runs is finished or undone first, and each set is verified
right after it is written when asked to.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from .. import safe_fs
from .._common import BackupError, Log, VerificationError, no_log, utc_now
from ..apps.base import Application, Facts, nothing_to_archive
from ..sets.codec import compressor_for
from ..sets.create import Created, create
from ..sets.names import default_host, set_name
from ..sets.scan import scan
from ..sets.verify import Verification, verify
from ..sqlite_snapshot import SnapshotError
from .swap import recover_interrupted


@dataclass
class Options:
    """How to write the sets: where, under which label, with what left out, how compressed."""

    dest: str
    label: str = ""
    excludes: list[str] = field(default_factory=list)
    compression: str = "auto"
    level: int = 3
    lock_timeout: float = 30.0
    host: str | None = None
    verify: bool = True
    health_timeout: float = 60.0
    state_dir: str | None = None
    row_counts_max_size: int = 0  # databases larger than this many bytes get no row counts (0: every one)


@dataclass
class Plan:
    """One backup of one application: what it archives, what it stops, the sets it will write."""

    app: str
    mode: str
    facts: Facts
    units: list[str]  # mode "instances": one set each
    names: list[str]  # the sets' names, as they would be written now
    files: int = 0
    databases: int = 0
    bytes_in: int = 0
    left_out: list[dict[str, object]] = field(default_factory=list)

    @property
    def stops(self) -> str:
        if self.mode == "cold":
            return f"{self.app} stops while it is archived"
        if self.mode == "instances":
            return "each instance stops while its data is copied"
        return "nothing stops"


@dataclass
class Result:
    plan: Plan
    sets: list[dict[str, object]] = field(default_factory=list)
    document: dict[str, object] = field(default_factory=dict)  # Tomo: the JSON document written beside the set
    actions: list[str] = field(default_factory=list)  # what the application did beyond the procedure, in sentences


def plan(app: Application, mode: str, options: Options, units: list[str] | None = None, check: bool = False) -> Plan:
    """Read the application and refuse what the run would refuse; changes nothing."""
    facts = app.inspect()
    app.refuse_backup(mode, facts)
    if os.path.lexists(options.dest) and not os.path.isdir(options.dest):
        raise BackupError(f"the backup directory {options.dest} exists and is not a directory")
    chosen: list[str] = []
    if mode == "instances":
        chosen = list(units or facts.running)
        if not chosen:
            raise BackupError(f"no {app.unit_word} of {app.name} runs, and none was named to back up")
        for unit in chosen:
            empty = nothing_to_archive(app.unit_word, unit, app.unit_paths(unit, facts))
            if empty:
                raise BackupError(f"{empty}{app.elsewhere(unit)}")
    else:
        missing = [p for p in facts.paths if not os.path.lexists(p)]
        if missing:
            raise BackupError(f"{missing[0]} does not exist, so {app.name} cannot be backed up")
    if mode == "cold":
        app.check_can_restart()
    kind = compressor_for(options.compression)
    host = options.host or default_host()
    labels = [f"instance-{u.replace(':', '-')}" for u in chosen] if chosen else [options.label or mode]
    names = [set_name(app.name, host, utc_now(), label, kind) for label in labels]
    result = Plan(app.name, mode, facts, chosen, names)
    # What goes into the set besides the paths (Tomo's document) is made as the run would make it, and
    # thrown away: what would refuse it refuses it now, before anything stops.
    preview = facts if chosen else app.before_archive(facts, options.dest, True)
    if check:
        paths = [p for u in chosen for p in app.unit_paths(u, facts)] if chosen else preview.paths
        found = scan(paths, [*options.excludes, *preview.excludes])
        result.files = found.count("file") + found.count("sqlite")
        result.databases = found.count("sqlite")
        result.bytes_in = found.bytes
        result.left_out = found.skipped
    return result


def run(app: Application, planned: Plan, options: Options, log: Log = no_log) -> Result:
    """Carry a plan out; the application runs again afterwards, whatever happened to the archive."""
    if not os.path.isdir(options.dest):
        try:
            safe_fs.makedirs_private(options.dest)
        except OSError as exc:
            raise BackupError(f"could not create the backup directory {options.dest}: {exc.strerror}") from exc
    recover_interrupted(options.state_dir, log)
    result = Result(planned)
    facts = planned.facts
    if planned.mode == "instances":
        for unit in planned.units:
            args = create_args(app, facts, options, planned.mode, label=f"instance-{unit.replace(':', '-')}")
            done = app.backup_unit(unit, facts, options.dest, options.health_timeout, log, args)
            extra = {"downtime": done.downtime, "copy_seconds": done.copy_seconds, "hot_reason": done.hot_reason}
            result.sets.append(_finish(done.created, options, log, unit=unit, **extra))
        result.actions = app.actions()
        return result
    if planned.mode == "cold":
        was_running = True
        try:
            was_running = app.stop(log)
            facts = app.before_archive(facts, options.dest, False, log)
            made = _create(app, facts, options, planned.mode, log)
        finally:
            if was_running:  # started again as it was, whatever happened to the archive
                app.start(facts.running, options.health_timeout, log)
    else:
        facts = app.before_archive(facts, options.dest, False, log)
        made = _create(app, facts, options, planned.mode, log)
    result.document = dict(facts.details.get("document") or {})  # type: ignore[call-overload]
    result.sets.append(_finish(made, options, log, hot_reason=""))
    result.actions = app.actions()
    return result


def create_args(app: Application, facts: Facts, options: Options, mode: str, label: str) -> dict[str, object]:
    return dict(
        app=app.name,
        app_version=facts.version,
        host=options.host,
        label=label,
        metadata={**facts.metadata, "mode": mode},
        excludes=[*options.excludes, *facts.excludes],
        compression=options.compression,
        level=options.level,
        lock_timeout=options.lock_timeout,
        row_counts_max_size=options.row_counts_max_size,
    )


def _create(app: Application, facts: Facts, options: Options, mode: str, log: Log) -> Created:
    args = create_args(app, facts, options, mode, options.label or mode)
    try:
        return create(facts.paths, options.dest, log=log, **args)  # type: ignore[arg-type]
    except SnapshotError as exc:
        raise BackupError(str(exc)) from exc


def described(made: Created, **extra: object) -> dict[str, object]:
    """A set just written, as the modules and the host command report it."""
    manifest = made.manifest
    totals = dict(manifest["totals"])  # type: ignore[call-overload]
    return dict(
        path=made.path,
        name=made.name,
        sha256=made.sha256,
        size=made.size,
        manifest_path=made.manifest_path,
        files=totals["files"],
        databases=totals["databases"],
        bytes_in=totals["bytes"],
        snapshots=manifest["snapshots"],
        left_out=manifest["skipped"],
        changed_during_backup=manifest["changed_during_backup"],
        notes=manifest["notes"],
        links=manifest["links"],
        metadata=manifest.get("metadata", {}),
        stats=made.stats,
        **extra,
    )


def _finish(made: Created, options: Options, log: Log, **extra: object) -> dict[str, object]:
    entry = described(made, **extra)
    if options.verify:
        checked: Verification = verify(made.path, log=log)
        entry["verified"] = checked.ok
        entry["warnings"] = checked.warnings
        if not checked.ok:
            raise VerificationError(checked.summary)
    return entry
