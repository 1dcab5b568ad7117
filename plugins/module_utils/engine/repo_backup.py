# Copyright: selfhost.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Backing up an application into restic repositories: the same consistent snapshot as a set (every SQLite database
by the backup API, the application's stop and start rules, the running instances recorded), handed to restic, which
reads again only what changed since the snapshot before.

:func:`run` stages the snapshot once (``repos/stage.py``), then backs it up into each repository in turn: one
snapshot each, tagged ``selfhost-dr``, ``app=APP``, ``kind=MODE`` (and ``schedule=NAME``), with the newest earlier
snapshot of the same host and paths as its parent (the stage's path never changes). A file that changed between its
hash and the end of restic's read is hashed again and the backup made again (its data is mostly there already), and
the snapshot before it forgotten; a file that keeps changing is listed in the manifest's ``changed_during_backup``
after :data:`TRIES`.

Each repository's outcome is reported on its own. One marked ``required`` that fails fails the run (after the others
were tried); an optional one that fails is a warning, and simply gets the next run. Cold: the application stays
stopped until every repository has read the files, and is started again whatever happened.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from .. import safe_fs
from .._common import BackupError, Log, iso, no_log, utc_now
from ..apps.base import Application, Facts
from ..repos.restic import LockedError, NoRepositoryError, RepoError, Restic, Started
from ..repos.stage import Staged, refuse_inside, rehash, stage, unstable
from ..sets.names import default_host
from . import backup, state

TRIES = 3


@dataclass
class Outcome:
    """What happened in one repository."""

    repository: str
    location: str
    required: bool
    ok: bool = False
    snapshot_id: str = ""
    created: bool = False  # the repository was initialised by this run
    data_added: int = 0
    files_new: int = 0
    files_changed: int = 0
    files_unmodified: int = 0
    seconds: float = 0.0
    tries: int = 0
    snapshots: int = -1  # this host's selfhost-dr snapshots in the repository afterwards (-1: not counted)
    snapshots_added: int = 0  # net (the superseded ones forgotten): state.json counts on from its last count
    error: str = ""

    def as_dict(self) -> dict[str, object]:
        return dict(self.__dict__)


@dataclass
class Result:
    app: str
    mode: str
    outcomes: list[Outcome] = field(default_factory=list)
    manifest: dict[str, object] = field(default_factory=dict)
    hashed_bytes: int = 0
    actions: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def changed_during_backup(self) -> list[str]:
        return list(self.manifest.get("changed_during_backup") or [])  # type: ignore[call-overload]


class RepositoryFailedError(BackupError):
    """A required repository failed (the others were tried): the sentence, and every repository's outcome."""

    def __init__(self, message: str, result: Result) -> None:
        super().__init__(message)
        self.result = result


def record(
    outcomes: Sequence[Any],
    state_dir: str | None,
    started_at: str,
    schedule: str,
    log: Log,
    app: str = "",
    operation: str = "backup",
) -> None:
    """Each repository's outcome (an :class:`Outcome`, or any ``as_dict()``/dict with ``repository``, ``ok``,
    ``error``) in state.json's ``repositories``, for ``selfhost-dr status`` and the metrics; under the host lock, which
    the caller holds. A state.json that cannot be written never fails the run (it is logged)."""
    run = state.Run("", operation, started_at, schedule=schedule, app=app)
    run.finished_at = iso(utc_now())
    dicts = [o if isinstance(o, dict) else o.as_dict() for o in outcomes]
    try:
        state.Store(state_dir).record_repositories(run, dicts)
    except state.StateError as exc:
        log(f"the repositories' outcomes were not recorded: {exc}")


def tags(app: str, mode: str, schedule: str = "") -> list[str]:
    """The tags of the application's snapshots (the parent is the newest with the same ones)."""
    return ["selfhost-dr", f"app={app}", f"kind={mode}", *([f"schedule={schedule}"] if schedule else [])]


def plan(app: Application, mode: str, options: backup.Options, check: bool = False) -> backup.Plan:
    """What :func:`backup.plan` refuses, and the modes a repository takes (hot, cold)."""
    if mode not in ("hot", "cold"):
        raise BackupError(f"a repository backup is hot or cold, not {mode!r} (instances are backed up into sets)")
    planned = backup.plan(app, mode, options, check=check)
    refuse_inside(planned.facts.paths, options.dest)
    return planned


def run(
    app: Application,
    planned: backup.Plan,
    repos: Sequence[Restic],
    options: backup.Options,
    log: Log = no_log,
    schedule: str = "",
) -> Result:
    """Stage the snapshot and back it up into every repository; the application runs again afterwards."""
    if not repos:
        raise BackupError("no repository to back up into")
    if not os.path.isdir(options.dest):  # as a set's backup: the stage (and Tomo's document) go below it
        try:
            safe_fs.makedirs_private(options.dest)
        except OSError as exc:
            raise BackupError(f"could not create the backup directory {options.dest}: {exc.strerror}") from exc
    result = Result(app.name, planned.mode)
    facts = planned.facts
    if planned.mode == "cold":
        was_running = True
        try:
            was_running = app.stop(log)
            facts = app.before_archive(facts, options.dest, False, log)
            _store(app, facts, planned.mode, repos, options, log, schedule, result)
        finally:
            if was_running:
                app.start(facts.running, options.health_timeout, log)
    else:
        facts = app.before_archive(facts, options.dest, False, log)
        _store(app, facts, planned.mode, repos, options, log, schedule, result)
    result.actions = app.actions()
    return _verdict(result, log, "got the snapshot")


def _verdict(result: Result, log: Log, done_words: str) -> Result:
    """A failed optional repository is a warning; a failed required one fails the run, after the others were tried."""
    failed = [o for o in result.outcomes if not o.ok]
    for outcome in failed:
        log(outcome.error)
        if not outcome.required:  # the run goes on; the next run tries it again
            result.warnings.append(f"{outcome.repository} (optional): {outcome.error}")
    required = [o for o in failed if o.required]
    if required:
        done = [o.repository for o in result.outcomes if o.ok]
        others = f"; {', '.join(done)} {done_words}" if done else ""
        raise RepositoryFailedError(f"{required[0].error}{others}", result)
    return result


def preflight(app: str, mode: str, repos: Sequence[Restic], log: Log = no_log) -> Result:
    """What check mode says of each repository, refusing what :func:`run` would: it is there and its password opens
    it, or ``init`` creates it (``created``); restic is new enough. A required one that fails raises its sentence
    (:class:`RepositoryFailedError`), an optional one is a warning, as in a run."""
    if not repos:
        raise BackupError("no repository to back up into")
    result = Result(app, mode)
    for restic in repos:
        outcome = Outcome(restic.repo.name, restic.repo.shown, restic.repo.required)
        try:
            restic.version()
            if not restic.exists():
                if not restic.repo.init:
                    raise NoRepositoryError(
                        f"{restic.repo.shown} does not exist: no restic repository is there (init: true creates one)"
                    )
                outcome.created = True
            else:
                restic.refuse_live_lock(exclusive_only=True)  # a live prune or check would keep the backup out
            outcome.ok = True
        except RepoError as exc:
            outcome.error = str(exc)
        result.outcomes.append(outcome)
    return _verdict(result, log, "would get the snapshot")


def _store(
    app: Application,
    facts: Facts,
    mode: str,
    repos: Sequence[Restic],
    options: backup.Options,
    log: Log,
    schedule: str,
    result: Result,
) -> None:
    host = options.host or default_host()
    counted = state.Store(options.state_dir).read().get("repositories") or {}
    # Counting this host's snapshots costs a restic command (half a second of key derivation): only where
    # state.json has no count to go on from (a prune counts again), and while the snapshot is staged.
    uncounted = [
        r
        for r in repos
        if not isinstance(dict(counted.get(r.repo.name) or {}).get("snapshots"), int)  # type: ignore[attr-defined]
    ]
    before: dict[str, Future[list[dict[str, Any]]]] = {}
    if uncounted:
        counting = ThreadPoolExecutor(max_workers=len(uncounted))
        before = {r.repo.name: counting.submit(r.snapshots, ["selfhost-dr"], host) for r in uncounted}
        counting.shutdown(wait=False)
    wanted = tags(app.name, mode, schedule)
    # The first repository's restic opens it (half a second of key derivation) while the snapshot is staged, then
    # waits for the exclude file: started once the scan knows the paths (and the stage directory is made).
    starting: list[Started] = []

    def start(paths: list[str]) -> None:
        started = repos[0].start_backup(paths, host, wanted) if repos else None
        starting.extend([started] if started is not None else [])

    try:
        staged = stage(
            facts.paths,
            options.dest,
            app=app.name,
            app_version=facts.version,
            host=options.host,
            label=options.label or mode,
            metadata={**facts.metadata, "mode": mode},
            excludes=[*options.excludes, *facts.excludes],
            lock_timeout=options.lock_timeout,
            log=log,
            scanned=start,
            row_counts_max_size=options.row_counts_max_size,
        )
    except BaseException:
        for started in starting:
            started.abandon()
        raise
    result.hashed_bytes = staged.hashed_bytes
    early = starting[0] if starting else None
    try:
        for restic in repos:
            outcome = _into(restic, staged, host, wanted, log, early if restic is repos[0] else None)
            if restic is not repos[-1]:
                staged.copy_held(log)  # (held no longer than the first repository's read: the others get copies)
            listed = before.get(restic.repo.name)
            if outcome.ok and outcome.snapshots < 0 and listed is not None:
                try:
                    outcome.snapshots = len(listed.result()) + 1  # the ones before, and this one
                except RepoError as exc:  # for status and the metrics; no failure of the backup
                    log(f"{restic.repo.shown}: the snapshots could not be counted ({exc})")
            result.outcomes.append(outcome)
    finally:
        if early is not None:
            early.abandon()  # (once finished, nothing)
        staged.release()  # the databases read where they are: read by every repository's restic
    if staged.emptying is not None:
        staged.emptying.join()
    result.manifest = staged.manifest


def _into(
    restic: Restic, staged: Staged, host: str, wanted: list[str], log: Log, early: Started | None = None
) -> Outcome:
    """One repository's snapshot. One restic command in the usual case (each one derives the key from the password,
    about half a second): restic takes as parent the newest snapshot of the same host and paths, which the stage's
    fixed path keeps the same."""
    repo = restic.repo
    outcome = Outcome(repo.name, restic.repo.shown, repo.required)
    started = time.monotonic()
    try:
        superseded: list[str] = []
        for attempt in range(1, TRIES + 1):
            outcome.tries = attempt
            try:
                summary: dict[str, Any] | None = None
                if early is not None:
                    waiting, early = early, None
                    with contextlib.suppress(LockedError):  # (the plain backup removes a stale lock, tries again)
                        summary = waiting.finish(staged.excludes)
                if summary is None:
                    summary = restic.backup(staged.paths, host, wanted, staged.exclude_file)
            except NoRepositoryError:
                if not repo.init or outcome.created:
                    raise
                restic.init()
                outcome.created = True
                log(f"{repo.shown}: created")
                summary = restic.backup(staged.paths, host, wanted, staged.exclude_file)
            outcome.snapshot_id = str(summary["snapshot_id"])
            for key in ("data_added", "files_new", "files_changed", "files_unmodified"):
                value = summary.get(key)
                setattr(outcome, key, getattr(outcome, key) + (value if isinstance(value, int) else 0))
            moved = unstable(staged)
            if not moved:
                break
            rehash(staged, moved)
            if attempt == TRIES:  # the last snapshot stays: its files are listed in changed_during_backup
                log(f"{repo.shown}: {len(moved)} file(s) kept changing while restic read them")
                break
            log(f"{repo.shown}: {len(moved)} file(s) changed while restic read them; backing up again")
            superseded.append(outcome.snapshot_id)
        restic.forget(superseded)
        outcome.ok = True
        outcome.snapshots_added = 1
        if outcome.created:
            outcome.snapshots = 1  # a repository this run made holds this one snapshot
        log(
            f"{repo.shown}: snapshot {outcome.snapshot_id}, {outcome.data_added / 1048576:.1f} MiB added "
            f"({outcome.files_new} new, {outcome.files_changed} changed, {outcome.files_unmodified} unchanged files)"
        )
    except RepoError as exc:
        outcome.error = str(exc)
    outcome.seconds = round(time.monotonic() - started, 3)
    return outcome
