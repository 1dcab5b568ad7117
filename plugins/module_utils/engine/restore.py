# Copyright: selfhost.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Restoring an application from a set: the whole of it, or chosen units while the others keep running.

One sequence for every application, written once::

    plan      read the set's manifest, plan where every tree goes, verify the set: refuse here, before
              anything stops, every set the run would refuse (check mode stops here, with the same sentence)
    stop      the application (or the unit)
    swap      the set's trees in, each replaced tree kept aside as a safety copy (engine/swap.py, journaled)
    fix up    what must change in restored files before anything starts on them
    start     the application and what ran when the set was made (or the unit), and check their health
    commit    drop the safety copies (or keep them), and say so

and on any failure after the stop: stop what was started, roll the swap back, start what ran before, and fail
with one sentence that says what happened and that the previous data is back.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from .._common import AppError, Error, Log, RestoreError, RollbackError, VerificationError, no_log
from ..apps.base import Application, Facts
from ..sets.catalog import catalog
from ..sets.restore import Unit, is_under
from . import journal, swap


@dataclass
class Options:
    keep_safety: bool = False
    health_timeout: float = 60.0
    state_dir: str | None = None
    dest_root: str = "/"
    start: bool = True  # False: the restored data left as they are and the application stopped (a seed)


@dataclass
class Plan:
    app: str
    archive: str
    units: list[str]  # restored one at a time; empty: the whole application
    paths: list[str]  # the set's paths put back
    targets: list[str]  # where they go
    start: list[str]  # what runs afterwards (tenement: the instances the set recorded as running)
    manifest: dict[str, object] = field(default_factory=dict)
    before: Facts | None = None
    # Content that is not a set (a repository's snapshot): fetched and checked while the application still runs,
    # then swapped in by swap.restore_from, which calls the given ``stop`` right before the first rename.
    fetch: Callable[[Options, Log, Callable[[], None]], swap.Restored] | None = None
    warnings: list[str] = field(default_factory=list)
    snapshot: dict[str, str] = field(default_factory=dict)  # the repository's snapshot restored (with fetch)
    checked: dict[str, int] = field(default_factory=dict)  # what the fetch checked: files, bytes, databases, tables
    databases: list[Any] = field(default_factory=list)  # a point-in-time restore's databases (replica_restore)


@dataclass
class Result:
    plan: Plan
    restore_id: str = ""
    files: int = 0
    bytes: int = 0
    recovered: list[dict[str, object]] = field(default_factory=list)
    committed: bool = False
    warning: str = ""
    actions: list[str] = field(default_factory=list)  # what the application did beyond the procedure, in sentences


def newest(directory: str, app: str, units: list[str] | None = None) -> str:
    """The newest set of ``app`` in ``directory`` that holds what is restored: for the whole application, a set of
    the whole of it (never one instance's ``instance-SERVICE-ID``); for one unit, its own set or a whole one; for
    several, a whole one."""
    own = {"instance-" + units[0].replace(":", "-")} if units and len(units) == 1 else set()
    sets = [
        s
        for s in catalog(directory, app=app)
        if s.get("label") in own or not str(s.get("label", "")).startswith("instance-")
    ]
    if not sets:
        what = f"no {app} backup set holding {', '.join(units)}" if units else f"no {app} backup set of the whole {app}"
        raise RestoreError(f"there is {what} in {directory}")
    return str(sets[0]["path"])


def plan(
    app: Application,
    archive: str,
    options: Options,
    units: list[str] | None = None,
    log: Log = no_log,
    check: bool = False,
) -> Plan:
    """Everything the run checks before it stops anything: the set, where it goes, what starts afterwards.

    The real run first finishes or undoes restores of this host that were interrupted (check mode only reads),
    so that a journal that cannot be recovered refuses the restore here, before anything stops."""
    if not os.path.isfile(archive):
        raise RestoreError(f"there is no backup set at {archive}")
    if not check:
        swap.recover_interrupted(options.state_dir, log)
    try:
        before = app.inspect()
    except AppError:
        before = None  # nothing to note (a new server): a failed restore leaves it stopped
    chosen = [p for u in units for p in app.unit_paths(u, before or Facts(app.name))] if units else None

    def choose(manifest: dict[str, object]) -> list[str] | None:
        # The set's own application, from its manifest, before the whole set is read to verify it.
        app_of_set = manifest.get("app")
        if app_of_set not in (app.name, None):
            raise RestoreError(f"{os.path.basename(archive)} is a backup of {app_of_set}, not of {app.name}")
        if units:
            refuse_foreign(app, before, manifest, chosen, options.state_dir, os.path.basename(archive), here=True)
            return chosen
        paths = app.restore_paths(manifest)
        refuse_foreign(app, before, manifest, paths, options.state_dir, os.path.basename(archive))
        return paths

    manifest, planned = swap.check(archive, options.dest_root, None, options.state_dir, log, choose)
    refuse_foreign(
        app,
        before,
        manifest,
        chosen if units else app.restore_paths(manifest),
        options.state_dir,
        os.path.basename(archive),
        here=bool(units),
        units=planned,
        dest_root=options.dest_root,
    )
    if not units:
        app.check_can_restart()
    start = list(units) if units else app.units_to_start(manifest)
    return Plan(
        app.name,
        archive,
        list(units or []),
        [u.path for u in planned],
        [u.target for u in planned],
        start,
        manifest,
        before,
    )


# selfhost.dr's own configuration (the repositories' passwords): never a restore's to replace
CONFIG_DIR = "/etc/selfhost-dr"
# The system's own places: a restore never replaces one, a tree above one or a tree in one, unless the operator's
# own settings put the application's files there (/etc/tenement, /etc/tomo/environment). A host's tenement.toml is
# no such setting: a restore writes it back, so a hostile set could name data_dir = "/" in it for the next one.
SYSTEM = (
    "/etc", "/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/boot", "/dev", "/proc", "/sys", "/run",
    "/root", "/home", "/var/spool", "/var/lib/dpkg", "/var/lib/apt", "/var/lib/systemd", "/var/lib/selfhost-dr",
)  # fmt: skip


def _touches(path: str, places: Iterable[str]) -> str:
    """The first of ``places`` that ``path`` lies in or holds, or ""."""
    return next((p for p in places if is_under(path, p) or is_under(p, path)), "")


def refuse_foreign(
    app: Application,
    before: Facts | None,
    manifest: dict[str, object],
    paths: list[str] | None,
    state_dir: str | None,
    what: str,
    here: bool = False,
    units: Iterable[Unit] = (),
    dest_root: str = "/",
) -> None:
    """Refuse, before anything is stopped or changed, a restore that would put a tree of the set (or snapshot,
    ``what``) anywhere but where the application keeps its data on this host, in or over a system directory, or in
    or over selfhost.dr's own state and configuration. A set's manifest is hostile input: a crafted one, with valid
    checksums, could name ``/etc``.

    ``here``: the paths were chosen by this host (a unit's, from its configuration), not by the set. ``paths``
    None: all the set's paths. ``units``: where the planned trees land (a recorded link at a path is followed to
    where the set says it led), checked as well, relative to ``dest_root``."""
    if paths is not None and not paths:
        raise RestoreError(f"{what} holds nothing of {app.name} to restore; nothing was changed")
    chosen = [str(p) for p in (paths if paths is not None else manifest.get("paths", []))]  # type: ignore[attr-defined]
    root = os.path.abspath(dest_root)
    landing: list[str] = []
    for unit in units:
        for place in (unit.target, unit.swap_point):
            if not is_under(place, root):
                raise RestoreError(f"{what} would restore {place}, outside {root}; nothing was changed")
            landing.append("/" + os.path.relpath(place, root).removeprefix(".").lstrip("/"))
    own = [journal.state_dir(state_dir), CONFIG_DIR]
    given = [r for r in app.trusted_roots() if r]
    every = [r for r in [*given, *app.restore_roots(before)] if r]
    # Each path as named, and (restoring into this host's /) as this host's links resolve it, each against the
    # roots in the same form: a data dir reached through a link of the host's is still the data dir.
    forms: list[Callable[[str], str]] = [os.path.abspath] + ([os.path.realpath] if root == "/" else [])
    for path in [*chosen, *landing]:
        for form in forms:
            where, trusted, roots = form(path), [form(r) for r in given], [form(r) for r in every]
            mine = _touches(where, own)
            if mine:
                raise RestoreError(
                    f"{what} would restore {path}, which holds or lies in selfhost.dr's own {mine}; nothing was changed"
                )
            if any(is_under(where, t) for t in trusted):
                continue
            system = _touches(where, SYSTEM)
            if system:
                raise RestoreError(
                    f"{what} would restore {path}, which holds or lies in the system's {system}; nothing was changed"
                )
            if not here and not any(is_under(where, r) for r in roots):
                raise RestoreError(
                    f"{what} would restore {path}, which is not where {app.name} keeps its {app.data_words} on this "
                    f"host ({', '.join(dict.fromkeys(every)) or 'nothing found'}); nothing was changed"
                )


def run(app: Application, planned: Plan, options: Options, log: Log = no_log) -> Result:
    """Carry out a plan; on failure the previous data is back and running, and the error says so.

    Once the restored application runs and is healthy, the restore stands: a commit that does not finish (its
    safety copies not all deleted) is left to the next run on the host to finish, and said in ``warning``."""
    steps = _Steps(app, planned, options.health_timeout, log)
    name = os.path.basename(planned.archive)
    result = Result(planned)
    restored: swap.Restored | None = None
    stopped = stop_failed = False

    def stop() -> None:
        nonlocal stopped, stop_failed
        stopped = stop_failed = True
        steps.stop()
        stop_failed = False

    try:
        if planned.fetch is not None:
            restored = planned.fetch(options, log, stop)
        else:
            stop()
            restored = swap.restore(
                planned.archive, dest_root=options.dest_root, only=planned.paths, log=log, state_dir=options.state_dir
            )
        result.restore_id, result.files, result.bytes = restored.restore_id, restored.files, restored.bytes
        result.recovered = restored.recovered
        if options.start:
            app.fix_up(restored.manifest, restored.targets, log)
            steps.start_restored()
    except BaseException as exc:
        reason = swap.sentence(exc)
        if not stopped:  # refused or failed while fetching: nothing was stopped, nothing changed
            log(f"restoring {steps.what} from {name} failed ({reason}); nothing was changed")
            if isinstance(exc, KeyboardInterrupt):
                raise
            running = f"; {app.name} kept running on its data" if planned.before is not None else ""
            kind = VerificationError if isinstance(exc, VerificationError) else RestoreError
            raise kind(f"restoring {steps.what} from {name} failed ({reason}); nothing was changed{running}") from exc
        log(f"restoring {steps.what} from {name} failed ({reason}); putting the previous data back")
        try:
            steps.stop()
            if restored is not None:
                swap.rollback(restored.restore_id, options.state_dir)
            steps.start_previous()
        except Exception as again:  # (any failure here: said in one sentence, never a bare traceback)
            if stop_failed:  # the stop comes before the first rename: nothing was swapped, nothing to put back
                raise RestoreError(
                    f"restoring {steps.what} from {name} failed ({reason}); its previous data were not changed, but "
                    f"stopping and starting it again failed too ({again})"
                ) from exc
            raise RollbackError(
                f"restoring {steps.what} from {name} failed ({reason}), and putting the previous data back "
                f"failed too ({again}); see selfhost-dr status"
            ) from exc
        if isinstance(exc, KeyboardInterrupt):
            raise
        raise RestoreError(f"restoring {steps.what} from {name} failed ({reason}); {steps.back}") from exc
    try:
        swap.commit(restored.restore_id, options.state_dir, keep_safety=options.keep_safety)
        result.committed = True
    except (Error, OSError) as exc:
        result.actions = app.actions()
        result.warning = (
            f"{steps.what} runs on the restored data, but dropping the safety copies did not finish "
            f"({swap.sentence(exc)}); the next restore or backup on this host finishes it"
        )
        log(result.warning)
    result.actions = app.actions()
    return result


class _Steps:
    """Stop and start for a whole application or for chosen units: the same sequence drives both."""

    def __init__(self, app: Application, planned: Plan, timeout: float, log: Log) -> None:
        self.app, self.planned, self.timeout, self.log = app, planned, timeout, log
        units = planned.units
        if units:
            self.what = ", ".join(units)
            self.back = "it runs on its previous data again" if len(units) == 1 else "they run on their previous data"
        else:
            self.what = app.name
            words = app.data_words
            self.back = f"the previous {words} are back" + (
                f" and {app.name} runs them again" if planned.before else ""
            )

    def stop(self) -> None:
        if self.planned.units:
            for unit in self.planned.units:
                self.app.stop_unit(unit, self.log)
        else:
            self.app.stop(self.log)

    def start_restored(self) -> None:
        if self.planned.units:
            for unit in self.planned.units:
                self.app.start_unit(unit, self.timeout, self.log)
        else:
            self.app.start(self.planned.start, self.timeout, self.log)

    def start_previous(self) -> None:
        if self.planned.units:
            self.start_restored()  # the same units, on their previous data
        elif self.planned.before is not None:
            self.app.start(self.planned.before.running, self.timeout, self.log)
