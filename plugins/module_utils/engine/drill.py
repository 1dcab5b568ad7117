# Copyright: selfhost.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A DR drill on its throwaway target: the set verified, restored through the same engine as a real restore, the
recorded instances spawned, then checked: every instance running and healthy, the HTTP probes, the SQL checks.

Each step and check becomes a :class:`reports.Case` with its time and, when it fails, one sentence; a failed step
ends the drill there (what follows is reported as skipped), so the report says where a restore would break. The
controller adds what happened before (finding and fetching the set, making the target, installing the application)
and the figures (RTO, RPO) to make a host's suite (roles/drill, ``drill_report``).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import sqlite3
import stat
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone

from .._common import Error, Log, iso, no_log, parse_iso
from ..apps import tomo_export, tomo_schema
from ..apps.base import Application
from ..replicas.litestream import Replication
from ..reports import Case, Report, Suite
from ..repos.restic import Restic
from ..sets.verify import verification_state, verify
from ..sqlite_snapshot import open_checked
from . import replica_restore, repo_restore, restore, swap

STEPS = ("verify", "compatibility", "restore", "spawn", "checks")  # a drill of a set
REPOSITORY_STEPS = ("snapshot", "compatibility", "fetch", "restore", "spawn", "checks")  # of a repository's snapshot
REPLICA_STEPS = ("replica", "fetch", "restore", "spawn", "checks")  # of Litestream's replicas, at their newest
_LISTEN = re.compile(r"[A-Za-z0-9.-]+:[0-9]{1,5}|\[[0-9A-Fa-f:.]+\]:[0-9]{1,5}")  # an instance's host:port
_BODY_READ = 1 << 20  # bytes of a probe's answer searched for its pattern
_SQL_ROWS = 1000  # rows of a SQL check's answer compared


class DrillError(Error):
    """A drill's checks are malformed (a probe with no URL, a SQL check that writes)."""


@dataclass
class Probe:
    """An HTTP GET the restored application must answer: ``url``, or ``instance`` (``service:id``, tenement) and
    ``path`` on that instance's own address; ``status`` expected, ``body`` a regular expression its answer must
    hold, ``host`` the Host header (tenement's proxy routes by name). Retried until it passes or ``timeout`` s."""

    name: str
    url: str = ""
    instance: str = ""
    path: str = "/"
    status: int = 200
    body: str = ""
    host: str = ""
    timeout: float = 30.0


@dataclass
class SqlCheck:
    """A read-only query against a restored database: it must succeed and, with ``expect``, answer it: a list is
    compared with every row (each a list), anything else with the first row's first column; with ``expect`` None it
    must return at least one row."""

    name: str
    database: str
    query: str
    expect: object = None


@dataclass
class Options:
    restore: restore.Options
    probes: list[Probe] = field(default_factory=list)
    sql: list[SqlCheck] = field(default_factory=list)


@dataclass
class Drilled:
    """What the drill did on the target: its cases in order, and what the report shows about the set."""

    cases: list[Case]
    properties: dict[str, str | int | float | bool | None]

    @property
    def ok(self) -> bool:
        return not any(case.status == "failed" for case in self.cases)


def probes_from(raw: list[dict[str, object]]) -> list[Probe]:
    """Probes from the role's ``drill_probes`` (already typed by the module's argument spec), checked."""
    made = []
    for n, item in enumerate(raw):
        probe = Probe(**{k: v for k, v in item.items() if v is not None})  # type: ignore[arg-type]
        probe.name = probe.name or f"probe {n + 1}"
        if bool(probe.url) == bool(probe.instance):
            raise DrillError(f"probe {probe.name!r} needs a url or an instance, not both or neither")
        if probe.url and not re.match(r"^https?://[^/]", probe.url):
            raise DrillError(f"probe {probe.name!r} has url {probe.url!r}, which is not an http:// or https:// URL")
        if not probe.path.startswith("/"):
            raise DrillError(f"probe {probe.name!r} has path {probe.path!r}, which does not start with /")
        if probe.body:
            try:
                re.compile(probe.body)
            except re.error as exc:
                why = f"probe {probe.name!r} has a body pattern that is not a regular expression: {exc}"
                raise DrillError(why) from None
        made.append(probe)
    return made


def sql_from(raw: list[dict[str, object]]) -> list[SqlCheck]:
    made = []
    for n, item in enumerate(raw):
        check = SqlCheck(**item)  # type: ignore[arg-type]
        check.name = check.name or f"sql {n + 1}"
        if not os.path.isabs(check.database):
            raise DrillError(f"SQL check {check.name!r} names database {check.database!r}, not an absolute path")
        if not check.query.strip():
            raise DrillError(f"SQL check {check.name!r} has no query")
        made.append(check)
    return made


class _Steps:
    """The drill's steps as cases: a failed one ends the drill, and the steps after it are added as skipped."""

    def __init__(self, cases: list[Case], names: tuple[str, ...], log: Log, clock: Callable[[], float]) -> None:
        self.cases, self.names, self.log, self.clock = cases, names, log, clock

    def __call__(self, name: str, started: float, error: str = "", detail: dict[str, object] | None = None) -> bool:
        seconds = round(self.clock() - started, 3)
        self.cases.append(Case(name, "step", "failed" if error else "passed", seconds, error, detail or {}))
        if error:
            self.log(f"drill: {name} failed: {error}")
            for later in self.names[self.names.index(name) + 1 :]:
                self.cases.append(Case(later, "step", "skipped", None, f"not run: {name} failed"))
        return not error


def run(
    app: Application,
    archive: str,
    options: Options,
    log: Log = no_log,
    clock: Callable[[], float] = time.monotonic,
) -> Drilled:
    """Verify, restore, spawn and check on this (throwaway) host; never raises for what a drill finds."""
    drilled = Drilled([], {"set": os.path.basename(archive), "source": "set"})
    cases = drilled.cases
    step = _Steps(cases, STEPS, log, clock)

    # 1. verify: every byte, every member, every database's integrity and row counts against the manifest
    started = clock()
    try:
        checked = verify(archive, record=True, log=log, deep=True)
    except Error as exc:
        step("verify", started, str(exc))
        return drilled
    found = []
    for c in checked.checks:
        ok = bool(c.get("ok"))
        detail = str(c.get("detail", ""))
        found.append(Case(str(c.get("check")), "check", "passed" if ok else "failed", None, "" if ok else detail))
    manifest = checked.manifest or {}
    drilled.properties.update(
        set_started_at=str(manifest.get("started_at", "")) or None,
        app=str(manifest.get("app", "")) or None,
        app_version=str(manifest.get("app_version", "")) or None,
        databases=int(checked.stats.get("databases", 0) or 0),  # type: ignore[call-overload]
        tables_counted=int(checked.stats.get("tables_counted", 0) or 0),  # type: ignore[call-overload]
    )
    drilled.properties["set_sha256"] = str(verification_state(archive).get("sha256") or "") or None
    ok = step("verify", started, "" if checked.ok else checked.summary, {"stats": checked.stats})
    at = next(n for n, c in enumerate(cases) if c.name == "verify") + 1
    cases[at:at] = found  # what verify checked, right after it
    if ok and _compatible(app, manifest, drilled, step, "set"):
        _restore_and_check(app, lambda: restore.plan(app, archive, options.restore, log=log), options, drilled, step)
    return drilled


def run_repository(
    app: Application,
    restic: Restic,
    options: Options,
    snapshot: str = "latest",
    host: str = "",
    log: Log = no_log,
    clock: Callable[[], float] = time.monotonic,
) -> Drilled:
    """A drill from a restic repository's snapshot (REPOSITORY_STEPS), through the same engine as ``selfhost-dr
    restore --repo``: ``snapshot`` chooses it, reads its manifest and refuses a listing a restore would refuse;
    ``fetch`` is ``restic restore`` (reading and decrypting the packs) into a private directory, every file and
    database checked against the manifest (sha256, integrity, row counts); ``restore`` the swap. A drill that passed
    tags the snapshot ``verified=restore`` (its new id in ``snapshot_tagged``). Never raises for what a drill finds."""
    drilled = Drilled([], {"set": f"latest snapshot in {restic.repo.name}", "source": "repository"})
    drilled.properties["repository"] = restic.repo.name
    step = _Steps(drilled.cases, REPOSITORY_STEPS, log, clock)
    started = clock()
    try:
        planned = repo_restore.plan(app, restic, options.restore, snapshot, host, log)
    except (Error, OSError) as exc:
        step("snapshot", started, swap.sentence(exc))
        return drilled
    snap, manifest = planned.snapshot, planned.manifest
    drilled.properties.update(
        set=f"snapshot {snap['short_id']} of {restic.repo.name}",
        snapshot_id=snap["id"],
        snapshot_host=snap["host"],
        set_started_at=str(manifest.get("started_at", "")) or snap["time"] or None,
        app=str(manifest.get("app", "")) or None,
        app_version=str(manifest.get("app_version", "")) or None,
    )
    step("snapshot", started, "", {"snapshot": dict(snap)})
    if _compatible(app, manifest, drilled, step, f"snapshot {snap['short_id']}"):
        _restore_and_check(app, lambda: planned, options, drilled, step)
    if drilled.ok:  # as after a restore: retention never forgets the newest snapshot a restore proved
        drilled.properties["snapshot_tagged"] = repo_restore.mark_verified(restic, snap["id"], log) or None
    return drilled


def run_replica(
    app: Application,
    replication: Replication,
    options: Options,
    log: Log = no_log,
    clock: Callable[[], float] = time.monotonic,
) -> Drilled:
    """A drill from Litestream's replicas at their newest state (REPLICA_STEPS), through the same engine as
    ``selfhost-dr restore --at latest``: ``replica`` lists the application's replicas and plans every database
    (their files' headers read as hostile input); ``fetch`` is ``litestream restore -txid`` of each into a private
    directory, its integrity checked; ``restore`` the swap; ``spawn`` what ran at the replicas' newest moment. The
    set's start is the newest transaction replicated (each database's ``reached``): the RPO is the drill's start
    minus it. Never raises for what a drill finds."""
    drilled = Drilled([], {"set": f"the replicas in {replication.shown}", "source": "replica"})
    drilled.properties.update(replica=replication.shown, replica_host=replication.host)
    step = _Steps(drilled.cases, REPLICA_STEPS, log, clock)
    started = clock()
    try:
        planned = replica_restore.plan(app, replication, options.restore, None, None, log)
    except (Error, OSError) as exc:
        step("replica", started, swap.sentence(exc))
        return drilled

    def newest() -> None:  # (the fetch plans again, at the moment it stops Litestream: the figure follows it)
        reached = [d.reached for d in planned.databases if d.reached]
        if reached:
            drilled.properties["set_started_at"] = iso(max(datetime.fromisoformat(r) for r in reached))

    newest()
    drilled.properties.update(app=app.name, databases=len(planned.databases))
    step("replica", started, "", {"databases": [d.to_dict() for d in planned.databases]})
    _restore_and_check(app, lambda: planned, options, drilled, step)
    newest()
    return drilled


def _compatible(app: Application, manifest: dict[str, object], drilled: Drilled, step: _Steps, what: str) -> bool:
    """The target must run the set's version of the application, or a newer one."""
    started = step.clock()
    installed = installed_version(app)
    wanted = str(manifest.get("app_version", "") or "")
    drilled.properties["target_version"] = installed or None
    if wanted and installed and version_key(wanted) > version_key(installed):
        why = f"the {what} was made by {app.name} {wanted}, newer than the {installed} on the target"
        return step("compatibility", started, why)
    return step("compatibility", started)


def _restore_and_check(
    app: Application, make_plan: Callable[[], restore.Plan], options: Options, drilled: Drilled, step: _Steps
) -> None:
    """The restore engine (fetch, when the plan has one, then restore and spawn: the moments the fetch stops the
    application and the application starts split the steps), then the checks."""
    clock, log, cases = step.clock, step.log, drilled.cases
    spawning: list[float] = []
    stopping: list[float] = []
    swapped: list[bool] = []
    start, fix_up = app.start, app.fix_up

    def timed_fix_up(manifest: dict[str, object], targets: list[str], log: Log = no_log) -> None:
        fix_up(manifest, targets, log)
        swapped.append(True)  # the restored data are in place: the next start is theirs

    def timed_start(units: list[str], timeout: float, log: Log = no_log) -> None:
        if swapped and not spawning:  # (never the start of the previous data a rollback makes)
            spawning.append(clock())
        start(units, timeout, log)

    app.start, app.fix_up = timed_start, timed_fix_up  # type: ignore[method-assign]
    started = clock()
    planned: restore.Plan | None = None
    try:
        planned = make_plan()
        fetch = planned.fetch
        if fetch is not None:

            def timed_fetch(opts: restore.Options, run_log: Log, stop: Callable[[], None]) -> swap.Restored:
                def timed_stop() -> None:
                    stopping.append(clock())
                    stop()

                return fetch(opts, run_log, timed_stop)

            planned.fetch = timed_fetch
        done = restore.run(app, planned, options.restore, log)
    except (Error, OSError) as exc:
        reason = swap.sentence(exc)
        fetched = planned is not None and planned.fetch is not None
        if fetched and not stopping:
            step("fetch", started, reason)
            return
        if fetched:
            checked = dict(planned.checked)  # type: ignore[union-attr]
            cases.append(Case("fetch", "step", "passed", round(stopping[0] - started, 3), "", checked))
        began = stopping[0] if stopping else started
        if spawning:
            cases.append(Case("restore", "step", "passed", round(spawning[0] - began, 3)))
            step("spawn", spawning[0], reason)
        else:
            step("restore", began, reason)
        return
    finally:
        app.start, app.fix_up = start, fix_up  # type: ignore[method-assign]
    spawned = spawning[0] if spawning else clock()
    began = started
    if planned.fetch is not None:
        began = stopping[0] if stopping else spawned
        cases.append(Case("fetch", "step", "passed", round(began - started, 3), "", dict(planned.checked)))
        drilled.properties.update(
            databases=planned.checked.get("databases", 0), tables_counted=planned.checked.get("tables", 0)
        )
    cases.append(Case("restore", "step", "passed", round(spawned - began, 3), "", {"files": done.files}))
    drilled.properties.update(files=done.files, bytes=done.bytes, instances=len(planned.start))
    step("spawn", spawned, "", {"instances": list(planned.start)})

    # checks
    started = clock()
    before = len(cases)
    cases.extend(_instances(app, planned.start, options.restore.health_timeout, clock))
    if app.name == "tomo":
        cases.append(_tomo_counts(app, planned.manifest, clock))
    cases.extend(_probe(app, probe, clock) for probe in options.probes)
    cases.extend(_sql(check, clock) for check in options.sql)
    failed = [c for c in cases[before:] if c.status == "failed"]
    step("checks", started, f"{failed[0].name}: {failed[0].message}" if failed else "")


def installed_version(app: Application) -> str:
    """The application's version on the target ("" when it cannot be told)."""
    try:
        version = app.inspect().version
    except Error:
        version = ""
    client = getattr(app, "client", None)
    if not version and client is not None:
        try:
            version = client.version() or ""
        except (Error, OSError):
            version = ""
    return version


def version_key(text: str) -> tuple[int, ...]:
    """A version's numbers (``0.2.2rc1`` → (0, 2, 2)), for comparing."""
    return tuple(int(n) for n in re.findall(r"\d+", text.split("+")[0])[:4])


def _instances(app: Application, units: list[str], timeout: float, clock: Callable[[], float]) -> list[Case]:
    """Every instance the set recorded as running: running now and answering its health check."""
    client = getattr(app, "client", None)
    cases = []
    for unit in units:
        started = clock()
        name = f"instance {unit} running and healthy"
        if client is None:
            cases.append(Case(name, "check", "skipped", None, f"{app.name} has no instances to check"))
            continue
        try:
            client.wait_healthy(unit, min(timeout, 30.0))
        except Error as exc:
            cases.append(Case(name, "check", "failed", round(clock() - started, 3), str(exc)))
            continue
        cases.append(Case(name, "check", "passed", round(clock() - started, 3)))
    return cases


def _tomo_counts(app: Application, manifest: dict[str, object], clock: Callable[[], float]) -> Case:
    """Tomo: a fresh export of the restored database (nothing written) holds what the backup's export held, category
    by category (the set's manifest records those counts)."""
    started = clock()
    name = "tomo export matches the backup's counts"
    metadata = manifest.get("metadata")
    want = metadata.get("counts") if isinstance(metadata, dict) else None
    if not isinstance(want, dict) or not want:
        return Case(name, "check", "skipped", None, "the set records no per-category counts")
    try:
        database = str(app.inspect().metadata["database"])
        categories = [c for c in tomo_schema.CATEGORIES if c in want]
        made = tomo_export.export(database, os.path.dirname(database), categories, write=False)
    except (Error, OSError, KeyError) as exc:
        return Case(
            name, "check", "failed", round(clock() - started, 3), f"the restored database cannot be exported: {exc}"
        )
    got = made["counts"]
    wrong = [c for c in categories if got.get(c) != want.get(c)]
    message = (
        f"the restored database exports {got.get(wrong[0])} {wrong[0]}, the backup's export held {want.get(wrong[0])}"
        if wrong
        else ""
    )
    detail: dict[str, object] = {"counts": got}
    return Case(name, "check", "failed" if wrong else "passed", round(clock() - started, 3), message, detail)


def _probe(app: Application, probe: Probe, clock: Callable[[], float]) -> Case:
    started = clock()
    name = f"probe {probe.name}"
    url = probe.url
    if probe.instance:
        try:
            listen = app.client.instances()[probe.instance].listen  # type: ignore[attr-defined]
        except (AttributeError, KeyError, Error):
            return Case(name, "check", "failed", 0.0, f"instance {probe.instance} is not running to be probed")
        if not isinstance(listen, str) or not re.fullmatch(
            r"[A-Za-z0-9.\-]+:[0-9]{1,5}|\[[0-9A-Fa-f:.]+\]:[0-9]{1,5}", listen
        ):
            return Case(name, "check", "failed", 0.0, f"instance {probe.instance} listens on {listen!r}, not host:port")
        url = f"http://{listen}{probe.path}"
    deadline = started + probe.timeout
    while True:
        problem = _get(url, probe)
        if not problem or clock() >= deadline:
            break
        time.sleep(0.5)
    detail: dict[str, object] = {"url": url, "status": probe.status}
    return Case(name, "check", "failed" if problem else "passed", round(clock() - started, 3), problem, detail)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirect is the probe's answer (its status), never followed: it could lead to another scheme or host."""

    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirect)


def _get(url: str, probe: Probe) -> str:
    """Why ``url`` does not answer as ``probe`` wants ("" when it does)."""
    request = urllib.request.Request(url, method="GET")  # noqa: S310 - the scheme is checked (probes_from)
    if probe.host:
        request.add_header("Host", probe.host)
    try:
        with _OPENER.open(request, timeout=min(probe.timeout, 10.0)) as answer:
            status, body = answer.status, answer.read(_BODY_READ)
    except urllib.error.HTTPError as exc:
        status, body = exc.code, exc.read(_BODY_READ) if exc.fp else b""
    except (urllib.error.URLError, OSError, ValueError) as exc:
        return f"{url} does not answer ({getattr(exc, 'reason', exc)})"
    if status != probe.status:
        return f"{url} answered HTTP {status}, not {probe.status}"
    if probe.body and not re.search(probe.body, body.decode("utf-8", "replace")):
        return f"{url} answered HTTP {status} without {probe.body!r} in its body"
    return ""


_READS = {sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_FUNCTION, sqlite3.SQLITE_RECURSIVE}


def _sql(check: SqlCheck, clock: Callable[[], float]) -> Case:
    started = clock()
    name = f"sql {check.name}"

    def failed(message: str) -> Case:
        return Case(name, "check", "failed", round(clock() - started, 3), message)

    # The path is the operator's, the tree below it the set's: no link anywhere on the way (a restored link to a
    # directory would lead elsewhere), and the file SQLite opens must be the regular file looked at.
    path = os.path.normpath(check.database)
    if os.path.realpath(path) != path:
        return failed(f"{check.database} goes through a link; it was not opened")
    try:
        st = os.lstat(path)
    except OSError:
        return failed(f"there is no database at {check.database} on the target")
    if not stat.S_ISREG(st.st_mode):
        return failed(f"{check.database} is not a regular file; it was not opened")
    try:
        conn = open_checked(path, 10.0, (st.st_dev, st.st_ino))
    except Error as exc:
        return failed(str(exc))
    try:
        # Reads only: SQLite refuses every write (query_only), every ATTACH and VACUUM INTO (which could make files
        # anywhere as root) and every PRAGMA (the authorizer allows reading and nothing else).
        conn.execute("PRAGMA query_only = 1")
        conn.setlimit(sqlite3.SQLITE_LIMIT_ATTACHED, 0)
        conn.set_authorizer(lambda action, *_: sqlite3.SQLITE_OK if action in _READS else sqlite3.SQLITE_DENY)
        deadline = clock() + 30.0
        conn.set_progress_handler(lambda: int(clock() > deadline), 10000)
        rows = [list(r) for r in conn.execute(check.query).fetchmany(_SQL_ROWS)]
    except sqlite3.Error as exc:
        return failed(f"the query failed: {exc}")
    finally:
        conn.close()
    got: object = rows if isinstance(check.expect, list) else (rows[0][0] if rows and rows[0] else None)
    if check.expect is None:
        ok, message = bool(rows), "the query returned no row"
    else:
        ok = _same(got, check.expect)
        message = f"the query answered {_shown(got)}, not {_shown(check.expect)}"
    return Case(name, "check", "passed" if ok else "failed", round(clock() - started, 3), "" if ok else message)


def _same(got: object, want: object) -> bool:
    """Equal as JSON values: a number from SQLite equals the same number written in YAML (1 == 1.0), text text."""
    return json.loads(json.dumps(got, default=str)) == json.loads(json.dumps(want, default=str))


def _shown(value: object) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 120 else text[:117] + "..."


# -- on the controller: a host's suite from what the role measured and what drill_run returned ----------------

ROLE_STEPS = ("source", "target", "install")  # measured by roles/drill before drill_run
COLUMNS = [
    ("rto_seconds", "RTO (s)"),
    ("rpo_seconds", "RPO (s)"),
    ("set", "set"),
    ("target", "target"),
]


def _text(value: object, default: str = "") -> str:
    return value if isinstance(value, str) else default


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _when(value: object) -> float | None:
    """Seconds since the epoch, between 2000 and 2200 (a controller's clock), or None."""
    when = _number(value)
    return when if when is not None and 946684800 <= when <= 7258118400 else None


def _list(value: object) -> list[object]:
    return value if isinstance(value, list) else []


def _case(raw: object, kind: str = "") -> Case | None:
    if not isinstance(raw, dict):
        return None
    status = _text(raw.get("status"))
    if status not in ("passed", "failed", "skipped"):
        return None
    detail = raw.get("detail")
    return Case(
        _text(raw.get("name"), "?"),
        kind or (_text(raw.get("kind")) if raw.get("kind") in ("step", "check", "target") else "check"),
        status,
        _number(raw.get("seconds")),
        _text(raw.get("message")) or ("failed, saying nothing" if status == "failed" else ""),
        detail if isinstance(detail, dict) else {},
    )


def suite_of(result: dict[str, object], rto_target: float = 0, rpo_target: float = 0) -> Suite:
    """One host's suite: the role's steps, drill_run's cases, the steps never reached as skipped, RTO (drill start to
    the last check passing) and RPO (drill start minus the set's start) with their targets as cases."""
    started = _when(result.get("started")) or datetime.now(timezone.utc).timestamp()
    finished = max(_when(result.get("finished")) or started, started)
    cases = [c for c in (_case(s, "step") for s in _list(result.get("steps"))) if c is not None]
    cases += [c for c in (_case(s) for s in _list(result.get("cases"))) if c is not None]
    raw = result.get("properties")
    properties: dict[str, str | int | float | bool | None] = {
        k: v for k, v in (raw.items() if isinstance(raw, dict) else []) if isinstance(v, (str, int, float, bool))
    }
    properties["target"] = _text(result.get("target")) or None
    reached = {c.name for c in cases if c.kind == "step"}
    failed = next((c for c in cases if c.status == "failed"), None)
    steps = {"repository": REPOSITORY_STEPS, "replica": REPLICA_STEPS}.get(str(properties.get("source")), STEPS)
    missing = [name for name in steps if name not in reached]
    if failed is None and missing:  # (nothing said why: a drill that stopped is a drill that failed)
        failed = Case(missing[0], "step", "failed", None, "the drill ended before this step, saying nothing")
        cases.append(failed)
        reached.add(failed.name)
    for name in (*ROLE_STEPS, *steps):
        if name not in reached and failed is not None:
            cases.append(Case(name, "step", "skipped", None, f"not run: {failed.name} failed"))
    passed = failed is None and all(s in reached for s in steps)
    rto = round(finished - started, 1) if passed else None
    rpo = None
    with contextlib.suppress(ValueError, TypeError):
        rpo = round(started - parse_iso(str(properties.get("set_started_at"))).timestamp(), 1)
    properties.update(rto_seconds=rto, rpo_seconds=rpo, rto_target=rto_target or None, rpo_target=rpo_target or None)
    if rpo is not None and rpo < 0:  # a set from the future: a clock or its manifest is wrong, and no RPO is known
        cases.append(Case("RPO", "target", "failed", rpo, f"the set says it started {-rpo:g} s after the drill began"))
        rpo = None
    for figure, value, target in (("RTO", rto, rto_target), ("RPO", rpo, rpo_target)):
        if not target:
            continue
        name = f"{figure} ≤ {target:g} s"
        if value is None:
            why = f"no {figure}: the drill failed at {failed.name}" if failed else f"no {figure} was measured"
            cases.append(Case(name, "target", "skipped", None, why))
        else:
            met = value <= target
            said = "" if met else f"{figure} was {value:g} s, over its target of {target:g} s"
            cases.append(Case(name, "target", "passed" if met else "failed", value, said))
    return Suite(
        _text(result.get("host"), "?"),
        iso(datetime.fromtimestamp(started, timezone.utc)),
        iso(datetime.fromtimestamp(finished, timezone.utc)),
        cases,
        properties,
    )


def report_of(
    results: list[dict[str, object]], rto_target: float = 0, rpo_target: float = 0, title: str = "DR drill"
) -> Report:
    suites = sorted((suite_of(r, rto_target, rpo_target) for r in results), key=lambda s: s.name)
    started = min((s.started for s in suites), default=iso(datetime.now(timezone.utc)))
    finished = max((s.finished for s in suites), default=started)
    return Report("drill", title, started, finished, suites, list(COLUMNS))
