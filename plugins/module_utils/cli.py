# Copyright: selfhost.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""``selfhost-dr``: the host command. The same procedures as the modules, run on the host itself (by systemd
timers, or by a person when no controller is left), configured by ``/etc/selfhost-dr/config.toml`` that the
roles write from the same variables.

    selfhost-dr backup   [--app A] [--mode hot|cold|instances] [--instance S:I]... [--label L] [--no-verify]
                         [--repo NAME]... [--all-repos]  (into restic repositories instead of a set)
    selfhost-dr verify   [SET]                 (default: the newest set of the app)
    selfhost-dr list     [--app A] [--repo NAME]   (a repository's snapshots)
    selfhost-dr prune    [--app A] [--dry-run|--check] (the [retention] rules of the config)
                         [--repo NAME]... [--all-repos] [--all-hosts] [--no-prune]  (a repository's snapshots)
    selfhost-dr check    --repo NAME... | --all-repos [--read-data | --read-data-subset N%|n/t|SIZE]
    selfhost-dr key      add --repo NAME --password-file FILE | list --repo NAME
    selfhost-dr restore  [SET] [--app A] [--instance S:I]... [--keep-safety] [--check]
                         [--repo NAME [--snapshot ID] [--from-host HOST]]  (from a restic repository)
    selfhost-dr status
    selfhost-dr tomo create --output DIR | tomo restore --input FILE [--categories C,...] [--mode M] [--live]
        [--password-file F (a .enc)] | tomo list

Every command takes ``--json`` (one result object on stdout) and ``--config PATH``. backup, verify, prune and
restore (not ``--check`` or ``--dry-run``) run under the host lock (``--wait SECONDS``), are recorded in state.json
(``--schedule NAME`` with them), then export the node_exporter textfile and send their heartbeats. Exit codes: 0 done;
1 the operation failed (the sentence is on stderr, or in the JSON's ``error``) and the previous data is as it
was; 2 usage or configuration error; 3 a set failed verification; 4 a restore failed and putting the previous
data back failed too (see ``status``); 130 interrupted (SIGINT, SIGTERM or SIGHUP).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from typing import Any

from ._common import Error, RollbackError, UsageError, VerificationError, iso, utc_now
from .apps import tomo_document, tomo_export, tomo_schema
from .apps.registry import APPS, TENEMENT_SPEC, TOMO_SPEC, application
from .apps.tomo import Tomo
from .engine import (
    backup,
    journal,
    monitor,
    prune,
    replica_restore,
    repo_backup,
    repo_check,
    repo_import,
    repo_prune,
    repo_restore,
    restore,
    schedule,
    state,
    swap,
)
from .engine.lock import DEFAULT_WAIT, HostLock, held
from .replicas import lag, litestream
from .replicas.config import ReplicaConfigError
from .repos import config as repo_config
from .repos.restic import SUBSET_RE, RepoError, Restic, open_private, public
from .repos.stage import DEFAULT_BACKUP_DIR
from .sets.catalog import catalog, leftovers
from .sets.names import default_host
from .sets.tags import add_tag
from .sets.verify import verify

CONFIG = "/etc/selfhost-dr/config.toml"
CONFIG_ENV = "SELFHOST_DR_CONFIG"
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNVERIFIED, EXIT_ROLLBACK, EXIT_INTERRUPTED = 0, 1, 2, 3, 4, 130


_SCHEDULES_PATH = "\x00schedules.toml"  # where load_config noted schedules.toml's path (no TOML key can be this)
_CONFIG_PATH = "\x00config.toml"  # and the configuration's own (a schedule's repositories are checked against it)


def load_config(path: str | None, missing_ok: bool = False) -> dict[str, Any]:
    """The host's configuration; an absent default file is an empty one (every option takes its default). The
    schedules live in schedules.toml beside it (see :func:`schedules`)."""
    chosen = path or os.environ.get(CONFIG_ENV) or CONFIG
    try:
        import tomllib
    except ImportError as exc:  # Python < 3.11
        raise UsageError("selfhost-dr needs Python 3.11 or newer (tomllib) to read its configuration") from exc
    try:
        with open(chosen, "rb") as handle:
            config = tomllib.load(handle)
    except FileNotFoundError as exc:
        if path and not missing_ok:
            raise UsageError(f"the configuration {chosen} does not exist") from exc
        config = {}
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(f"the configuration {chosen} cannot be read: {exc}") from exc
    config[_SCHEDULES_PATH] = os.path.join(os.path.dirname(os.path.abspath(chosen)), schedule.SCHEDULES_FILE)
    config[_CONFIG_PATH] = chosen
    return config


_TYPES: dict[str, tuple[type, ...]] = {"str": (str,), "path": (str,), "bool": (bool,), "float": (int, float)}


def app_options(config: dict[str, Any]) -> dict[str, object]:
    """config.toml's [tenement] and [tomo] tables as the modules' ``tenement_*`` / ``tomo_*`` options, each
    checked against its type (the modules' argument specs)."""
    options: dict[str, object] = {}
    for table, spec in (("tenement", TENEMENT_SPEC), ("tomo", TOMO_SPEC)):
        for key, value in _section(config, table).items():
            name = f"{table}_{key}"
            if name not in spec:
                raise UsageError(f"[{table}] {key} is not a setting selfhost-dr knows")
            kind = str(spec[name]["type"])
            if kind == "list":
                ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
            elif kind == "dict":
                ok = isinstance(value, dict)
            else:
                ok = isinstance(value, _TYPES[kind]) and not (kind == "float" and isinstance(value, bool))
            choices = spec[name].get("choices")
            if not ok or (choices and value not in choices):  # type: ignore[operator]
                want = {
                    "list": "a list of strings",
                    "dict": "a table",
                    "bool": "true or false",
                    "float": "a number",
                }.get(kind, "a string")
                if choices:
                    want = "one of " + ", ".join(str(c) for c in choices)  # type: ignore[attr-defined]
                raise UsageError(f"[{table}] {key} must be {want}, not {value!r}")
            options[name] = value
    return options


def _number(config: dict[str, Any], table: str, key: str, default: float) -> float:
    value = _section(config, table).get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise UsageError(f"[{table}] {key} must be a number, not {value!r}")
    return float(value)


def _flag(config: dict[str, Any], table: str, key: str, default: bool) -> bool:
    value = _section(config, table).get(key, default)
    if not isinstance(value, bool):
        raise UsageError(f"[{table}] {key} must be true or false, not {value!r}")
    return value


def _strings(config: dict[str, Any], table: str, key: str) -> list[str]:
    value = _section(config, table).get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise UsageError(f"[{table}] {key} must be a list of strings, not {value!r}")
    return value


class Progress:
    """Log lines on stderr; on a terminal, long work's progress lines are shown in place."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.tty = sys.stderr.isatty()
        self.started = time.monotonic()
        self.lines: deque[str] = deque(maxlen=500)  # the run's log, whose tail the heartbeats carry

    def __call__(self, line: str) -> None:
        if not line.startswith("archive: "):
            self.lines.append(line)
        if self.quiet:
            return
        stamp = f"[{time.monotonic() - self.started:6.1f}s]"
        if self.tty and line.startswith("archive: "):
            sys.stderr.write(f"\r\033[K{stamp} {line}")
        else:
            sys.stderr.write(("\r\033[K" if self.tty else "") + f"{stamp} {line}\n")
        sys.stderr.flush()


def _set_path(args: argparse.Namespace, config: dict[str, Any], name: str, units: list[str] | None = None) -> str:
    """The set named on the command line (a path, or a name in the backup directory), else the newest."""
    if not args.set:
        return restore.newest(_dir(config), name, units)
    if os.path.isabs(args.set) or os.sep in args.set or os.path.exists(args.set):
        return str(args.set)
    return os.path.join(_dir(config), args.set)


def _app(args: argparse.Namespace, config: dict[str, Any]) -> str:
    name = args.app or config.get("app") or "tenement"
    if name not in APPS:
        raise UsageError(f"the application must be one of {', '.join(APPS)}, got {name!r}")
    return str(name)


def _dir(config: dict[str, Any]) -> str:
    return str(config.get("backup_dir") or DEFAULT_BACKUP_DIR)


def _section(config: dict[str, Any], name: str) -> dict[str, Any]:
    value = config.get(name) or {}
    if not isinstance(value, dict):
        raise UsageError(f"[{name}] of the configuration must be a table")
    return value


MONITORED = state.OPERATIONS  # the commands that take the host lock and are recorded, exported and pinged


def monitoring(config: dict[str, Any]) -> monitor.Settings:
    """The [lock], [metrics], [heartbeat] and [schedule] tables, checked (exit 2 for a wrong one)."""
    try:
        return monitor.settings(config)
    except monitor.SettingsError as exc:
        raise UsageError(str(exc)) from None


def schedules(config: dict[str, Any]) -> dict[str, schedule.Schedule]:
    """The schedules: config.toml's [schedules.NAME] tables and those of schedules.toml beside it (which the
    schedule role writes), checked; a name in both is refused."""
    found: dict[str, schedule.Schedule] = {}
    for source, tables in (("config.toml", config.get("schedules")), (schedule.SCHEDULES_FILE, _scheduled(config))):
        if tables is None:
            continue
        if not isinstance(tables, dict):
            raise UsageError(f"[schedules] of {source} must be a table of schedules")
        for name, row in tables.items():
            if name in found:
                raise UsageError(f"the schedule {name!r} is in both config.toml and {schedule.SCHEDULES_FILE}")
            try:
                found[name] = schedule.from_table(name, row)
            except schedule.ScheduleError as exc:
                raise UsageError(f"{source}: {exc}") from None
    return found


def _scheduled(config: dict[str, Any]) -> object:
    path = config.get(_SCHEDULES_PATH)
    if not path:
        return None
    loaded = load_config(str(path), missing_ok=True)
    return loaded.get("schedules")


def _next_runs(config: dict[str, Any]) -> Callable[[], dict[str, float]]:
    def upcoming() -> dict[str, float]:
        found = schedules(config)
        if not found:
            return {}
        from .engine import timers  # systemd-analyze, only when there are schedules

        runs = timers.next_runs([s.calendar for s in found.values()])
        return {name: runs[s.calendar][0].timestamp() for name, s in found.items() if runs.get(s.calendar)}

    return upcoming


def _kept(config: dict[str, Any]) -> dict[str, int]:
    """Per schedule, how many sets its own retention keeps now (a dry run of the prune of every application)."""
    found = schedules(config)
    counts = dict.fromkeys(found, 0)
    if not found or not os.path.isdir(_dir(config)):
        return counts
    for app in APPS:
        for entry in _prune(config, app, check=True)["kept"]:  # type: ignore[attr-defined]
            for name in counts:
                if any(str(reason).startswith(f"{name}: ") for reason in entry.get("reasons", [])):
                    counts[name] += 1
    return counts


def _monitor(args: argparse.Namespace, config: dict[str, Any], log: Progress) -> monitor.Monitor | None:
    """The run's monitor; None for a command that changes nothing (``--check``, ``--dry-run``, list, status), which
    takes no lock and is not recorded, but whose settings are checked all the same."""
    if args.command not in MONITORED:
        return None
    watcher = _new_monitor(config, args.command, log, args.wait, args.schedule or "")
    return None if getattr(args, "check", False) or getattr(args, "dry_run", False) else watcher


def _new_monitor(
    config: dict[str, Any], operation: str, log: Progress, wait: float | None, name: str
) -> monitor.Monitor:
    if name and not state.SCHEDULE_RE.match(name):
        raise UsageError(f"--schedule must be a name of letters, digits, '.', '_' and '-', not {name!r}")
    try:
        return monitor.Monitor(
            config,
            operation,
            _dir(config),
            log,
            log.lines,
            wait,
            name,
            _next_runs(config),
            lambda: _kept(config),
            lambda: list(schedules(config)),
        )
    except monitor.SettingsError as exc:
        raise UsageError(str(exc)) from None


def _backup_options(config: dict[str, Any], label: str, verify_sets: bool) -> backup.Options:
    settings = _section(config, "backup")
    return backup.Options(
        dest=_dir(config),
        label=label or str(settings.get("label", "")),
        excludes=_strings(config, "backup", "exclude"),
        compression=str(settings.get("compression", "auto")),
        level=int(_number(config, "backup", "compression_level", 3)),
        lock_timeout=_number(config, "backup", "lock_timeout", 30),
        row_counts_max_size=int(_number(config, "backup", "row_counts_max_size", 0)),
        verify=_flag(config, "backup", "verify", True) and verify_sets,
        health_timeout=_number(config, "backup", "health_timeout", 60),
        state_dir=config.get("state_dir"),
    )


def _chosen_repos(args: argparse.Namespace, config: dict[str, Any]) -> list[Restic]:
    """The repositories named by ``--repo`` (or all with ``--all-repos``), ready to run restic on."""
    try:
        known = repo_config.repositories(config)
    except repo_config.RepoConfigError as exc:
        raise UsageError(str(exc)) from None
    names = list(known) if args.all_repos else list(dict.fromkeys(args.repo))
    chosen = args.config or os.environ.get(CONFIG_ENV) or CONFIG
    with contextlib.suppress(OSError):
        secret = [
            n for n in names if n in known and (known[n].password or public(known[n].location) != known[n].location)
        ]
        if secret and os.stat(chosen).st_mode & 0o077:
            raise UsageError(
                f"{chosen} holds a secret of repository {secret[0]} (its password, or credentials in its location) "
                "and can be read by other users: chmod 600 it"
            )
    if args.all_repos and not names:
        raise UsageError("--all-repos: the configuration has no [repositories]")
    unknown = [n for n in names if n not in known]
    if unknown:
        raise UsageError(f"there is no repository {unknown[0]!r} in the configuration ({', '.join(known) or 'none'})")
    binary = str(_section(config, "restic").get("binary", "restic"))
    cache = os.path.join(journal.state_dir(config.get("state_dir")), "restic-cache")
    return [Restic(known[n], binary=binary, cache_dir=cache) for n in names]


def _backup_into_repos(args: argparse.Namespace, config: dict[str, Any], log: Progress) -> dict[str, object]:
    name = _app(args, config)
    app = application(name, app_options(config))
    mode = args.mode or str(_section(config, "backup").get("mode", "hot"))
    repos = _chosen_repos(args, config)
    options = _backup_options(config, args.label, False)
    planned = repo_backup.plan(app, mode, options, check=args.check)
    if args.check:  # there (or created by init) and opened by its password; an optional one's failure a warning
        checked = repo_backup.preflight(name, mode, repos, log)
        return {
            "app": name,
            "mode": mode,
            "stops": planned.stops,
            "files": planned.files,
            "repositories": [r.repo.name for r in repos],
            **({"warnings": checked.warnings} if checked.warnings else {}),
        }
    started = iso(utc_now())
    try:
        done = repo_backup.run(app, planned, repos, options, log, args.schedule or "")
    except repo_backup.RepositoryFailedError as exc:  # each repository's outcome is recorded, also then
        repo_backup.record(exc.result.outcomes, config.get("state_dir"), started, args.schedule or "", log, name)
        raise
    repo_backup.record(done.outcomes, config.get("state_dir"), started, args.schedule or "", log, name)
    return {
        "app": name,
        "mode": mode,
        "stops": planned.stops,
        "repositories": [o.as_dict() for o in done.outcomes],
        "changed_during_backup": done.changed_during_backup,
        "actions": done.actions,
        **({"warnings": done.warnings} if done.warnings else {}),
    }


def cmd_backup(args: argparse.Namespace, config: dict[str, Any], log: Progress) -> dict[str, object]:
    if args.import_set:
        return _import_into_repos(args, config, log)
    if args.repo or args.all_repos:
        return _backup_into_repos(args, config, log)
    name = _app(args, config)
    app = application(name, app_options(config))
    mode = args.mode or str(_section(config, "backup").get("mode", "hot"))
    if args.instance and mode != "instances":
        raise UsageError("--instance backs up instances one at a time: use it with --mode instances")
    options = _backup_options(config, args.label, not args.no_verify)
    planned = backup.plan(app, mode, options, args.instance, check=args.check)
    if args.check:
        return {"app": name, "mode": mode, "would_write": planned.names, "stops": planned.stops, "files": planned.files}
    done = backup.run(app, planned, options, log)
    return {"app": name, "mode": mode, "stops": planned.stops, "sets": done.sets, "actions": done.actions}


def _import_into_repos(args: argparse.Namespace, config: dict[str, Any], log: Progress) -> dict[str, object]:
    if not (args.repo or args.all_repos):
        raise UsageError("--import puts a set into repositories: give --repo NAME or --all-repos")
    repos = _chosen_repos(args, config)
    chosen = None if args.import_set == "newest" else args.import_set
    archive = _set_path(argparse.Namespace(**{**vars(args), "set": chosen}), config, _app(args, config))
    if args.check:
        return {"path": archive, "repositories": [r.repo.name for r in repos]}
    started = iso(utc_now())
    try:
        done = repo_import.run(archive, repos, _dir(config), config.get("state_dir"), log)
    except repo_import.ImportFailedError as exc:
        repo_backup.record(exc.result.outcomes, config.get("state_dir"), started, "", log, exc.result.app)
        raise
    repo_backup.record(done.outcomes, config.get("state_dir"), started, "", log, done.app)
    return {
        "path": archive,
        "app": done.app,
        "host": done.host,
        "started_at": done.started_at,
        "repositories": [o.as_dict() for o in done.outcomes],
        "warnings": done.warnings,
    }


def cmd_verify(args: argparse.Namespace, config: dict[str, Any], log: Progress) -> dict[str, object]:
    archive = _set_path(args, config, _app(args, config))
    checked = verify(archive, log=log)
    if not checked.ok:
        raise VerificationError(checked.summary)
    return {"path": archive, "ok": checked.ok, "summary": checked.summary, "warnings": checked.warnings}


def cmd_list(args: argparse.Namespace, config: dict[str, Any], log: Progress) -> dict[str, object]:
    if args.repo:
        if len(args.repo) > 1:
            raise UsageError("list --repo takes one repository")
        (restic,) = _chosen_repos(args, config)
        wanted = ["selfhost-dr", *([f"app={args.app}"] if args.app else [])]
        found = sorted(restic.snapshots(wanted), key=lambda s: str(s.get("time", "")), reverse=True)
        snapshots = [
            {
                "id": str(s["id"]),
                "short_id": str(s.get("short_id") or s["id"][:8]),
                "time": str(s.get("time", "")),
                "host": str(s.get("hostname", "")),
                "tags": [str(t) for t in s.get("tags") or []],
            }
            for s in found
        ]
        return {"repository": restic.repo.name, "location": public(restic.repo.location), "snapshots": snapshots}
    sets = catalog(_dir(config), app=args.app)
    return {"directory": _dir(config), "sets": sets}


def cmd_prune(args: argparse.Namespace, config: dict[str, Any], log: Progress) -> dict[str, object]:
    if args.repo or args.all_repos:
        return _prune_repos(args, config, log)
    if args.all_hosts or args.no_prune:
        raise UsageError("--all-hosts and --no-prune go with --repo NAME or --all-repos")
    return _prune(config, _app(args, config), args.dry_run)


def _prune_repos(args: argparse.Namespace, config: dict[str, Any], log: Progress) -> dict[str, object]:
    """Each repository's own retention (else [retention]) over its snapshots of this host, per app."""
    repos = _chosen_repos(args, config)
    started = iso(utc_now())
    try:
        done = repo_prune.prune_all(
            repos,
            _section(config, "retention"),
            default_host(),
            all_hosts=args.all_hosts,
            app=args.app,
            check=args.dry_run,
            prune=not args.no_prune,
            log=log,
        )
    except repo_prune.RepositoriesError as exc:  # each repository's outcome is recorded, also then
        if not args.dry_run:
            _record_repos(exc.result["repositories"], config, started, args, log, "prune")  # type: ignore[arg-type]
        raise
    if not args.dry_run:
        _record_repos(done.outcomes, config, started, args, log, "prune")
    return {
        "check": args.dry_run,
        "repositories": [o.as_dict() for o in done.outcomes],
        **({"warnings": done.warnings} if done.warnings else {}),
    }


def _record_repos(
    outcomes: Any, config: dict[str, Any], started: str, args: argparse.Namespace, log: Progress, operation: str
) -> None:
    """Each repository's outcome of a prune or check in state.json (status and metrics per repository)."""
    repo_backup.record(
        list(outcomes),
        config.get("state_dir"),
        started,
        getattr(args, "schedule", "") or "",
        log,
        args.app or "",
        operation,
    )


def _prune(config: dict[str, Any], app: str, check: bool) -> dict[str, object]:
    """The [retention] rules over the sets made by hand, and each schedule's retention over the sets made for it."""
    rules = _section(config, "retention")
    found = schedules(config)
    if not rules and not found:
        raise UsageError("the configuration has no [retention] rules, so nothing would be pruned")
    try:
        default = prune.policy_of(rules) if rules else None
        policies = {name: prune.policy_of(s.retention) if s.retention else None for name, s in found.items()}
    except (TypeError, ValueError) as exc:
        raise UsageError(f"the [retention] rules of the configuration are not valid: {exc}") from exc
    wanted: dict[str, str | None] = {"app": app, "host": None, "label": None}
    if found:
        # Schedules are this host's: another host's sets in a shared directory are never pruned by them.
        wanted["host"] = default_host()
        done = prune.prune_by_schedule(_dir(config), policies, default, wanted, check=check)
    else:
        assert default is not None  # noqa: S101 - rules were given
        done = prune.prune(_dir(config), default, wanted, check=check)
    return {"deleted": done.deleted, "kept": done.kept, "future": done.future, "freed_bytes": done.freed_bytes}


def cmd_check(args: argparse.Namespace, config: dict[str, Any], log: Progress) -> dict[str, object]:
    """``restic check`` of the repositories named (or all), reading all their data or a subset of it."""
    if not args.repo and not args.all_repos:
        raise UsageError("check needs --repo NAME (repeat) or --all-repos")
    subset = args.read_data_subset or ""
    if subset and not SUBSET_RE.fullmatch(subset):
        raise UsageError(f"--read-data-subset must be n% (5%), n/t (1/7) or a size (500M), not {subset!r}")
    if subset and args.read_data:
        raise UsageError("--read-data reads everything: give it or --read-data-subset, not both")
    done = repo_check.check_all(_chosen_repos(args, config), args.read_data, subset, log)
    return {
        "repositories": [o.as_dict() for o in done.outcomes],
        **({"warnings": done.warnings} if done.warnings else {}),
    }


def cmd_key(args: argparse.Namespace, config: dict[str, Any], log: Progress) -> dict[str, object]:
    """``key add``: a second key (an escrow kept offline, or the next password of a rotation) from a private file;
    ``key list``: the repository's keys."""
    if len(args.repo) != 1:
        raise UsageError(f"key {args.verb} takes one repository: --repo NAME")
    (restic,) = _chosen_repos(args, config)
    shown = {"repository": restic.repo.name, "location": public(restic.repo.location)}
    if args.verb == "add":
        if not args.password_file:
            raise UsageError("key add needs --password-file FILE (the new key's password, a file only you can read)")
        try:
            os.close(open_private(args.password_file, "the new key's password file"))
        except RepoError as exc:
            raise UsageError(str(exc)) from None
        added = restic.add_key(args.password_file)
        log(f"{restic.repo.shown}: key {added} added; keep its password offline")
        return {**shown, "added": added, "keys": restic.keys()}
    if args.password_file:
        raise UsageError("--password-file goes with key add")
    return {**shown, "keys": restic.keys()}


def cmd_restore(args: argparse.Namespace, config: dict[str, Any], log: Progress) -> dict[str, object]:
    name = _app(args, config)
    app = application(name, app_options(config))
    options = restore.Options(
        keep_safety=args.keep_safety or _flag(config, "restore", "keep_safety", False),
        health_timeout=_number(config, "restore", "health_timeout", 60),
        state_dir=config.get("state_dir"),
    )
    if args.at:
        return _restore_from_replicas(args, config, app, options, log)
    if args.database:
        raise UsageError("--database chooses databases of a point-in-time restore: give --at TIME or --at latest")
    if args.repo:
        return _restore_from_repo(args, config, app, options, log)
    if args.snapshot or args.from_host:
        raise UsageError("--snapshot and --from-host choose a snapshot of a repository: give --repo NAME")
    archive = _set_path(args, config, name, args.instance)
    planned = restore.plan(app, archive, options, args.instance, log, check=args.check)
    result: dict[str, object] = {"path": archive, "paths": planned.paths, "targets": planned.targets}
    result["started"] = planned.start
    if args.check:
        return result
    done = replica_restore.paused(_replicated(config), options.state_dir,
                                  lambda: restore.run(app, planned, options, log), log)  # fmt: skip
    result.update(
        restore_id=done.restore_id,
        files=done.files,
        recovered=done.recovered,
        warning=done.warning,
        actions=done.actions,
    )
    return result


def _restore_from_repo(
    args: argparse.Namespace, config: dict[str, Any], app: Any, options: restore.Options, log: Progress
) -> dict[str, object]:
    if len(args.repo) > 1:
        raise UsageError("restore --repo takes one repository")
    if args.set or args.instance:
        raise UsageError("restore --repo restores the whole application from a snapshot: no set and no --instance")
    (restic,) = _chosen_repos(args, config)
    planned = repo_restore.plan(
        app, restic, options, args.snapshot or "latest", args.from_host or "", log, args.check, _dir(config)
    )
    result: dict[str, object] = {
        "repository": restic.repo.name,
        "snapshot": planned.snapshot,
        "paths": planned.paths,
        "targets": planned.targets,
        "started": planned.start,
    }
    if args.check:
        return result
    done = replica_restore.paused(_replicated(config), options.state_dir,
                                  lambda: restore.run(app, planned, options, log), log)  # fmt: skip
    tagged = repo_restore.mark_verified(restic, planned.snapshot["id"], log)
    result.update(
        restore_id=done.restore_id,
        files=done.files,
        bytes=done.bytes,
        recovered=done.recovered,
        warning=done.warning,
        warnings=planned.warnings,
        actions=done.actions,
        snapshot_tagged=tagged,
    )
    return result


def moment(text: str) -> datetime | None:
    """``--at``: ``latest``, or a moment in ISO 8601 with its time zone (``2026-11-29T18:00:00Z``)."""
    try:
        return replica_restore.parse_moment(text)
    except Error as exc:
        raise UsageError(str(exc)) from None


def _replicated(config: dict[str, Any]) -> litestream.Replication | None:
    """The host's replication when it has one (Litestream is stopped for every restore), else None."""
    try:
        return replica_restore.stoppable(config.get("replicate"))
    except ReplicaConfigError as exc:
        raise UsageError(str(exc)) from None


def replication(config: dict[str, Any]) -> litestream.Replication:
    """The host's ``[replicate]`` table, checked (its env file, with the store's credentials, must be private)."""
    try:
        return litestream.from_config(config.get("replicate"))
    except ReplicaConfigError as exc:
        raise UsageError(str(exc)) from None


def _restore_from_replicas(
    args: argparse.Namespace, config: dict[str, Any], app: Any, options: restore.Options, log: Progress
) -> dict[str, object]:
    if args.set or args.instance or args.repo or args.snapshot or args.from_host:
        raise UsageError("--at restores databases from their replicas: no set, --instance, --repo or --snapshot")
    when = moment(args.at)
    replicas = replication(config)
    planned = replica_restore.plan(app, replicas, options, when, args.database or None, log, check=args.check)
    result: dict[str, object] = {
        "at": args.at,
        "replica": replicas.shown,
        "databases": [d.to_dict() for d in planned.databases],
        "warnings": planned.warnings,
        "paths": planned.paths,
        "targets": planned.targets,
        "started": planned.start,
    }
    if args.check:
        return result
    done = replica_restore.run(app, planned, options, replicas, log)
    result.update(
        databases=[d.to_dict() for d in planned.databases],
        started=planned.start,
        restore_id=done.restore_id,
        files=done.files,
        bytes=done.bytes,
        recovered=done.recovered,
        warning=done.warning,
        actions=done.actions,
    )
    return result


def _recorded_replicas(store: state.Store, name: str) -> dict[str, Any]:
    try:
        recorded = store.read().get("replicas") or {}
    except (OSError, ValueError):
        return {}
    entry = recorded.get(name) if isinstance(recorded, dict) else None
    return entry if isinstance(entry, dict) else {}


def cmd_replicas(args: argparse.Namespace, config: dict[str, Any], log: Progress) -> dict[str, object]:
    """How far each database's replica is behind (replicas/lag.py): recorded, exported, and a failure when one
    stalled or the store cannot be read."""
    name = _app(args, config)
    replicas = replication(config)
    store = state.Store(config.get("state_dir"))
    entry: dict[str, object] = {"at": iso(utc_now()), "ok": False, "reason": "", "databases": []}
    earlier = _recorded_replicas(store, name).get("unreplicated") or {}
    earlier = (
        {str(k): float(v) for k, v in earlier.items() if isinstance(v, (int, float))}
        if isinstance(earlier, dict)
        else {}
    )
    entry["unreplicated"] = earlier  # (kept when this measure fails: a database with no replica still stalls in time)
    resumed = replica_restore.resume_paused(replicas, config.get("state_dir"), log)
    if resumed:
        time.sleep(2)  # (Litestream opens every database before it is measured as running)
    try:
        data_dir = application(name, app_options(config)).configured_data_dir() if name == "tenement" else None  # type: ignore[attr-defined]
        found = lag.measure(replicas, name, service=replicas.service, data_dir=data_dir, earlier=earlier)
        entry["databases"] = [f.to_dict() for f in found]
        entry["unreplicated"] = {f.database: f.unreplicated_since for f in found if f.unreplicated_since}
        stalled = sorted((f for f in found if f.stalled), key=lambda f: bool(f.unreplicated_since))
        if not found:
            entry["reason"] = f"no database of {name} is replicated to {replicas.shown}"
        elif stalled:
            entry["reason"] = (
                f"{len(stalled)} of {len(found)} replica(s) of {name} stalled: {stalled[0].why}"
                if len(stalled) > 1 else f"the replica of {stalled[0].database} stalled: {stalled[0].why}"
            )  # fmt: skip
        entry["ok"] = not entry["reason"]
    except lag.ScanError as exc:
        entry["reason"] = str(exc)
    except (Error, OSError) as exc:
        entry["reason"] = f"the replicas of {name} in {replicas.shown} cannot be read: {exc}"
    except Exception as exc:  # recorded all the same: state.json and the metrics never keep a stale "ok"
        entry["reason"] = f"measuring the replicas of {name} failed: {type(exc).__name__}: {exc}"
    store.record_replicas(name, entry)
    exported = ""
    if args.export:
        watcher = _new_monitor(config, "status", log, 0, "")
        exported = watcher.export()
    if not entry["ok"]:
        raise Error(str(entry["reason"]))
    return {"app": name, "replica": replicas.shown, "databases": entry["databases"], "metrics": exported,
            "actions": [resumed] if resumed else []}  # fmt: skip


def cmd_status(args: argparse.Namespace, config: dict[str, Any], log: Progress) -> dict[str, object]:
    directory = _dir(config)
    apps: dict[str, object] = {}
    sets = catalog(directory) if os.path.isdir(directory) else []
    now = time.time()
    for name in APPS:
        mine = [s for s in sets if s.get("app") == name]
        if not mine:
            continue
        newest = mine[0]
        mtime = os.stat(str(newest["path"])).st_mtime
        apps[name] = {
            "sets": len(mine),
            "newest": newest["name"],
            "age_hours": round((now - mtime) / 3600, 1),
            "verification": dict(newest.get("verification") or {}).get("state", "unknown"),  # type: ignore[call-overload]
        }
    found = schedules(config)
    every = dict(monitoring(config).every)
    for s in found.values():  # an operation a schedule runs is due as often as its most frequent schedule
        for operation in s.operations:
            if s.every_hours > 0 and operation not in monitoring(config).every:
                every[operation] = min(every.get(operation, s.every_hours), s.every_hours)
    store = state.Store(config.get("state_dir"))
    recorded = store.read()
    operations: dict[str, object] = {}
    for operation in state.OPERATIONS:
        about = _timeline(recorded, "operations", operation, every.get(operation, 0.0), now)
        if about or operation in every:
            operations[operation] = about
    upcoming: dict[str, float] = {}
    if found:
        try:
            upcoming = _next_runs(config)()
        except Exception as exc:  # a nicety: status never fails for it
            log(f"warning: the next scheduled runs are unknown ({type(exc).__name__}: {exc})")
    scheduled: dict[str, object] = {}
    try:
        kept: dict[str, int] | None = _kept(config) if found else {}
    except Exception as exc:  # a nicety as the next runs: the sets made for each are counted instead
        log(f"warning: the sets each schedule keeps are unknown ({type(exc).__name__}: {exc})")
        kept = None
    for name, s in found.items():
        about = _timeline(recorded, "schedules", name, s.every_hours, now)
        about.update(calendar=s.calendar, operations=list(s.operations), app=s.app, mode=s.mode)
        made = sum(1 for entry in sets if name in list(entry.get("schedules") or []))  # type: ignore[call-overload]
        about["sets"] = made if kept is None else kept.get(name, 0)
        if name in upcoming:
            about["next_run"] = iso(datetime.fromtimestamp(upcoming[name], timezone.utc))
        scheduled[name] = about
    if args.export:
        watcher = _new_monitor(config, "status", log, 0, "")
        watcher.next_runs = lambda: upcoming
        watcher.kept_sets = None if kept is None else lambda: kept
        exported = watcher.export()
        if watcher.warnings:
            raise Error(watcher.warnings[0])
    else:
        exported = ""
    return {
        "directory": directory,
        "apps": apps,
        "repositories": _repository_status(config, recorded, now, log),
        "replicas": _replica_status(recorded, now),
        "pending_restores": swap.pending(config.get("state_dir")),
        "leftovers": leftovers(directory) if os.path.isdir(directory) else [],
        "operations": operations,
        "schedules": scheduled,
        "metrics": exported,
        "state_file": store.path,
        "state_problem": store.problem,
        "running": held(config.get("state_dir")),
    }


def _replica_status(recorded: dict[str, object], now: float) -> dict[str, Any]:
    """Per application, the last measure of its replicas (``selfhost-dr replicas``), with its age."""
    found: dict[str, Any] = {}
    for app, about in dict(recorded.get("replicas") or {}).items():  # type: ignore[call-overload]
        if isinstance(about, dict):
            when = state.timestamp(about.get("at"))
            age = {"age_seconds": round(now - when, 1)} if when is not None else {}
            found[str(app)] = {**about, **age}
    return found


def _repository_status(
    config: dict[str, Any], recorded: dict[str, object], now: float, log: Progress
) -> dict[str, Any]:
    """Per repository (configured now, or recorded): each operation's last attempt, success and failure with their
    ages, and the snapshots its last backup counted."""
    try:
        configured = repo_config.repositories(config)
    except repo_config.RepoConfigError as exc:
        log(f"warning: {exc}")
        configured = {}
    seen = dict(recorded.get("repositories") or {})  # type: ignore[call-overload]
    found: dict[str, Any] = {}
    for name in [*configured, *(n for n in seen if n not in configured)]:
        about: dict[str, Any] = {}
        if name in configured:
            about.update(location=public(configured[name].location), required=configured[name].required)
        else:
            about["configured"] = False
        for operation, runs in dict(seen.get(name) or {}).items():
            if not isinstance(runs, dict):
                about[operation] = runs
                continue
            timeline = {}
            for key, entry in runs.items():
                when = state.timestamp(entry.get("at")) if isinstance(entry, dict) else None
                timeline[key] = {**entry, "age_hours": round((now - when) / 3600, 1)} if when is not None else entry
            about[operation] = timeline
        found[name] = about
    return found


def run_schedule(args: argparse.Namespace, config: dict[str, Any], log: Progress) -> tuple[dict[str, Any], int]:
    """``selfhost-dr run NAME``: the schedule's operations in order (backup, verify, prune) under one hold of the host
    lock, each recorded and pinged as itself (with the schedule's name), the whole run recorded under the schedule
    and pinged on its own URL; the first failure ends the run. A backup shares the set another schedule wrote moments
    before (see :func:`schedule.shared_set`) instead of writing a second one."""
    invoked = utc_now()
    found = schedules(config)
    chosen = found.get(args.name)
    if chosen is None:
        known = ", ".join(sorted(found)) or "none"
        raise UsageError(f"there is no schedule {args.name!r} in the configuration (schedules: {known})")
    watcher = _new_monitor(config, "run", log, args.wait, chosen.name)
    whole = watcher.recorder(",".join(chosen.operations), chosen.app, chosen.name, True, chosen.heartbeat)
    result: dict[str, Any] = {"schedule": chosen.name, "operations": {}}
    code = EXIT_OK
    watcher.begin()
    try:
        made: list[str] = []
        try:
            whole.begin()
        except KeyboardInterrupt as exc:  # stopped while its start was pinged: recorded as interrupted, no step runs
            failed, code = _failed(exc, "run")
            result["error"] = failed["error"]
        for operation in () if code else chosen.operations:
            step = watcher.recorder(operation, chosen.app, chosen.name, step=True)
            try:
                step.begin()
                outcome, step_code = _STEPS[operation](chosen, config, log, invoked, made), EXIT_OK
            except BaseException as exc:  # every failure is recorded, then the run stops
                outcome, step_code = _failed(exc, operation)
            outcome.update(step.end(step_code, outcome))
            result["operations"][operation] = outcome
            if step_code:
                code = step_code
                result["error"] = f"{operation}: {outcome['error']}"
                break
        result.update(whole.end(code, {**result, "sets": [{"path": p} for p in made]}))
    finally:
        result["metrics"] = watcher.end()
        if watcher.warnings:
            result["warnings"] = watcher.warnings
    return result, code


def _step_backup(
    chosen: schedule.Schedule, config: dict[str, Any], log: Progress, invoked: datetime, made: list[str]
) -> dict[str, Any]:
    if chosen.into_repositories:  # its repositories instead of a set: one snapshot and one outcome each
        args = _schedule_args(chosen)
        args.config = config.get(_CONFIG_PATH)
        return {**_backup_into_repos(args, config, log), "shared": False, "sets": []}
    options = _backup_options(config, chosen.label, "verify" not in chosen.operations)
    label = options.label or chosen.mode
    directory = _dir(config)
    sets = catalog(directory, app=chosen.app) if os.path.isdir(directory) else []
    shared = schedule.shared_set(sets, chosen, label, default_host(), invoked, utc_now())
    if shared is not None:
        path = str(shared["path"])
        state_now = dict(shared.get("verification") or {}).get("state")  # type: ignore[call-overload]
        if options.verify and state_now != "verified":  # the run that wrote it was stopped before verifying it
            checked = verify(path, log=log)
            if not checked.ok:
                raise VerificationError(checked.summary)
        tags = add_tag(path, chosen.name)
        others = ", ".join(t for t in tags if t != chosen.name)
        log(f"shared {shared['name']}, written moments ago for schedule {others}")
        made.append(path)
        return {"app": chosen.app, "mode": chosen.mode, "shared": True, "sets": [{"path": path, "schedules": tags}]}
    app = application(chosen.app, app_options(config))
    planned = backup.plan(app, chosen.mode, options)
    done = backup.run(app, planned, options, log)
    for written in done.sets:
        add_tag(str(written["path"]), chosen.name)
        made.append(str(written["path"]))
    return {"app": chosen.app, "mode": chosen.mode, "shared": False, "sets": done.sets, "actions": done.actions}


def _step_verify(
    chosen: schedule.Schedule, config: dict[str, Any], log: Progress, invoked: datetime, made: list[str]
) -> dict[str, Any]:
    if chosen.into_repositories:  # restic check of its repositories, reading chosen.read_data_subset of the data
        repos = _schedule_repos(chosen, config)
        started = iso(utc_now())
        try:
            checked = repo_check.check_all(repos, False, chosen.read_data_subset, log)
        except repo_prune.RepositoriesError as exc:
            _record_repos(exc.result["repositories"], config, started, _schedule_args(chosen), log, "check")  # type: ignore[arg-type]
            raise
        _record_repos(checked.outcomes, config, started, _schedule_args(chosen), log, "check")
        return {"repositories": [o.as_dict() for o in checked.outcomes], "warnings": checked.warnings}
    archives = made or [restore.newest(_dir(config), chosen.app)]
    results = []
    for archive in archives:
        checked = verify(archive, log=log)
        if not checked.ok:
            raise VerificationError(checked.summary)
        results.append({"path": archive, "ok": True, "summary": checked.summary})
    return {"path": archives[-1], "verified": results}


def _step_prune(
    chosen: schedule.Schedule, config: dict[str, Any], log: Progress, invoked: datetime, made: list[str]
) -> dict[str, Any]:
    if chosen.into_repositories:  # each repository's retention over this host's snapshots of the app
        args = _schedule_args(chosen)
        args.dry_run, args.all_hosts, args.no_prune, args.config = False, False, False, config.get(_CONFIG_PATH)
        return _prune_repos(args, config, log)
    done = _prune(config, chosen.app, check=False)
    log(f"pruned: deleted {len(done['deleted'])} set(s), freed {done['freed_bytes']} bytes")  # type: ignore[arg-type]
    return done


def _schedule_args(chosen: schedule.Schedule) -> argparse.Namespace:
    every = chosen.repositories == (schedule.ALL_REPOSITORIES,)
    args = argparse.Namespace(
        app=chosen.app, mode=chosen.mode, label=chosen.label, repo=[] if every else list(chosen.repositories)
    )
    args.all_repos, args.check, args.schedule = every, False, chosen.name
    return args


def _schedule_repos(chosen: schedule.Schedule, config: dict[str, Any]) -> list[Restic]:
    args = _schedule_args(chosen)
    args.config = config.get(_CONFIG_PATH)
    return _chosen_repos(args, config)


_STEPS: dict[str, Callable[[schedule.Schedule, dict[str, Any], Progress, datetime, list[str]], dict[str, Any]]] = {
    "backup": _step_backup,
    "verify": _step_verify,
    "prune": _step_prune,
}


def _failed(exc: BaseException, command: str) -> tuple[dict[str, Any], int]:
    """The result and exit status of a command that raised ``exc``: one sentence each."""
    if isinstance(exc, UsageError):
        return {"error": str(exc)}, EXIT_USAGE
    if isinstance(exc, VerificationError):
        return {"error": str(exc)}, EXIT_UNVERIFIED
    if isinstance(exc, RollbackError):
        return {"error": str(exc)}, EXIT_ROLLBACK
    if isinstance(exc, Error):  # a repository command's failure also carries each repository's outcome
        return {**dict(getattr(exc, "result", None) or {}), "error": str(exc)}, EXIT_FAILED
    if isinstance(exc, OSError):
        where = f"{exc.filename}: " if exc.filename else ""
        return {"error": f"{where}{exc.strerror or exc}"}, EXIT_FAILED
    if isinstance(exc, KeyboardInterrupt):
        return {"error": f"interrupted{' by ' + str(exc) if str(exc) else ''}"}, EXIT_INTERRUPTED
    if isinstance(exc, Exception):
        return {"error": f"{command or 'selfhost-dr'} failed unexpectedly: {type(exc).__name__}: {exc}"}, EXIT_FAILED
    raise exc  # SystemExit and the like


def _timeline(recorded: dict[str, object], section: str, name: str, every_hours: float, now: float) -> dict[str, Any]:
    """An operation's or a schedule's last attempt, success and failure with their ages; with ``every_hours``, whether
    it is due (its last success started that long ago) and overdue (twice that long ago, or never succeeded)."""
    about = dict(dict(recorded.get(section) or {}).get(name) or {})  # type: ignore[call-overload]
    for key in ("last_attempt", "last_success", "last_failure"):
        entry = about.get(key)
        when = state.timestamp(entry.get("finished_at") or entry.get("started_at")) if entry else None
        if entry and when is not None:
            about[key] = {**entry, "age_hours": round((now - when) / 3600, 1)}
    if every_hours > 0:
        about["every_hours"] = every_hours
        about["due"] = state.due(recorded, name, every_hours * 3600, section=section)
        success = state.last(recorded, name, "last_success", section)
        started = state.timestamp(success["started_at"]) if success else None
        about["overdue"] = started is None or now - started > 2 * every_hours * 3600
    return about


def cmd_tomo(args: argparse.Namespace, config: dict[str, Any], log: Progress) -> dict[str, object]:
    options = app_options(config)
    database = tomo_schema.locate_database(str(options.get("tomo_database") or "") or None)
    if args.verb == "create":
        version = str(options.get("tomo_version") or "") or None
        return dict(tomo_export.export(database, args.output or _dir(config), application_version=version))
    if args.verb == "restore":
        if not args.input:
            raise UsageError("tomo restore needs --input PATH (a tomo-backup-*.json document or Tomo's .enc backup)")
        categories = args.categories.split(",") if args.categories else list(tomo_schema.CATEGORIES)
        password = _tomo_password(args.password_file) if args.input.endswith(".enc") else None
        tomo = application("tomo", {**options, "tomo_database": database})
        assert isinstance(tomo, Tomo)  # noqa: S101 - application("tomo") is one

        def run() -> dict[str, object]:
            return dict(
                tomo.import_document(
                    args.input, categories, args.mode, password=password, check=args.check, stop=not args.live, log=log
                )
            )

        if args.check:
            return run()
        # Under the host lock, as a restore: never while a timer backs Tomo up or restores it.
        with HostLock(config.get("state_dir"), "restore", monitoring(config).wait, "", log):
            return run()
    return {"documents": tomo_document.catalog(args.output or _dir(config))}


TOMO_PASSWORD_ENV = "SELFHOST_DR_TOMO_PASSWORD"  # noqa: S105 - the name of the variable, not a password


def _tomo_password(password_file: str | None) -> str | None:
    """The password of Tomo's .enc backup: from --password-file (``-`` for stdin), else $SELFHOST_DR_TOMO_PASSWORD.

    Never from argv, where any user of the host could read it.
    """
    if not password_file:
        return os.environ.get(TOMO_PASSWORD_ENV) or None
    try:
        if password_file == "-":  # noqa: S105 - stdin, not a password
            text = sys.stdin.readline()
        else:
            with open(password_file, encoding="utf-8") as handle:
                text = handle.readline()
    except OSError as exc:
        raise UsageError(f"the password file {password_file} cannot be read: {exc.strerror}") from None
    return text.rstrip("\r\n") or None


COMMANDS: dict[str, Callable[[argparse.Namespace, dict[str, Any], Progress], dict[str, object]]] = {
    "backup": cmd_backup,
    "verify": cmd_verify,
    "list": cmd_list,
    "prune": cmd_prune,
    "check": cmd_check,
    "key": cmd_key,
    "restore": cmd_restore,
    "status": cmd_status,
    "replicas": cmd_replicas,
    "tomo": cmd_tomo,
}


def parser() -> argparse.ArgumentParser:
    top = _Parser(
        prog="selfhost-dr",
        description="Back up, verify, list, prune and restore tenement and Tomo on this host (selfhost.dr).",
        epilog="Exit codes: 0 done; 1 failed, the previous data as it was; 2 usage or configuration error; "
        "3 a set failed verification; 4 a restore and its roll back failed (see status); 130 interrupted.",
    )
    common = _Parser(add_help=False)
    common.add_argument("--config", help=f"configuration file (default ${CONFIG_ENV}, else {CONFIG})")
    common.add_argument("--json", action="store_true", help="print one JSON result object on stdout")
    common.add_argument("--app", choices=APPS, help="the application (default: the configuration's app)")
    runs = _Parser(add_help=False)
    runs.add_argument(
        "--wait",
        type=float,
        metavar="SECONDS",
        help=f"wait this long for another run to release the host lock, 0 not at all "
        f"(default [lock] wait, else {DEFAULT_WAIT:g})",
    )
    runs.add_argument("--schedule", metavar="NAME", help="the schedule (timer) that started this run, recorded with it")
    sub = top.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)
    p = sub.add_parser("backup", parents=[common, runs], help="write a backup set (and verify it)")
    p.add_argument("--mode", choices=["hot", "cold", "instances"])
    p.add_argument("--instance", action="append", default=[], help="with --mode instances: service:id (repeat)")
    p.add_argument("--label", default="")
    p.add_argument("--no-verify", action="store_true")
    p.add_argument("--check", action="store_true", help="refuse what the backup would refuse; change nothing")
    p.add_argument(
        "--repo",
        action="append",
        default=[],
        metavar="NAME",
        help="into this restic repository instead of a set (repeat)",
    )
    p.add_argument("--all-repos", action="store_true", help="into every repository of [repositories]")
    p.add_argument(
        "--import",
        dest="import_set",
        metavar="SET",
        help="with --repo/--all-repos: put this existing set (a name in the backup directory, a path, or newest) "
        "into the repositories as a snapshot dated when the set was made",
    )
    p = sub.add_parser("verify", parents=[common, runs], help="verify a set end to end (default: the newest)")
    p.add_argument("set", nargs="?")
    p = sub.add_parser("list", parents=[common], help="the sets (or a repository's snapshots), newest first")
    p.add_argument("--repo", action="append", default=[], metavar="NAME", help="the snapshots of this repository")
    p.set_defaults(all_repos=False)
    p = sub.add_parser("prune", parents=[common, runs], help="apply the [retention] rules (or a repository's)")
    p.add_argument(
        "--dry-run", "--check", action="store_true", dest="dry_run", help="say what would go; change nothing"
    )
    p.add_argument(
        "--repo", action="append", default=[], metavar="NAME", help="the snapshots of this restic repository (repeat)"
    )
    p.add_argument("--all-repos", action="store_true", help="every repository of [repositories]")
    p.add_argument("--all-hosts", action="store_true", help="with --repo: every host's snapshots, not only this one's")
    p.add_argument(
        "--no-prune", action="store_true", help="with --repo: forget snapshots, leave restic prune for later"
    )
    p = sub.add_parser("check", parents=[common], help="restic check of repositories (a damaged pack is named)")
    p.add_argument("--repo", action="append", default=[], metavar="NAME", help="this repository (repeat)")
    p.add_argument("--all-repos", action="store_true", help="every repository of [repositories]")
    p.add_argument("--read-data", action="store_true", help="also read every pack's data (all of it)")
    p.add_argument("--read-data-subset", metavar="N%|n/t|SIZE", help="also read this part of the data (5%%, 1/7)")
    p = sub.add_parser("key", parents=[common], help="a repository's keys: add one (an escrow), list them")
    p.add_argument("verb", choices=["add", "list"])
    p.add_argument("--repo", action="append", default=[], metavar="NAME", required=True, help="the repository")
    p.add_argument("--password-file", metavar="FILE", help="add: the new key's password (first line; mode 0600)")
    p.set_defaults(all_repos=False)
    p = sub.add_parser("restore", parents=[common, runs], help="restore a set (default: the newest) and start the app")
    p.add_argument("set", nargs="?")
    p.add_argument("--instance", action="append", default=[], help="restore only this service:id (repeat)")
    p.add_argument("--repo", action="append", default=[], metavar="NAME", help="from this restic repository")
    p.add_argument("--snapshot", metavar="ID", help="with --repo: this snapshot (default: latest)")
    p.add_argument("--from-host", metavar="HOST", help="with --repo: the newest snapshot another host made")
    p.set_defaults(all_repos=False)
    p.add_argument(
        "--at", metavar="TIME|latest", help="from the Litestream replicas: every database as it was at TIME (ISO 8601)"
    )
    p.add_argument(
        "--database", action="append", default=[], metavar="PATH", help="with --at: only this database (repeat)"
    )
    p.add_argument("--keep-safety", action="store_true")
    p.add_argument("--check", action="store_true", help="verify and plan, refusing what the restore would refuse")
    p = sub.add_parser(
        "status",
        parents=[common],
        help="last success, attempt and failure per operation and schedule; newest set per app; leftovers",
    )
    p.add_argument("--export", action="store_true", help="also write the node_exporter textfile now")
    p = sub.add_parser(
        "replicas",
        parents=[common],
        help="how far each database's Litestream replica is behind; fails when one stalled ([replicate])",
    )
    p.add_argument("--export", action="store_true", help="also write the node_exporter textfile now")
    p = sub.add_parser(
        "run",
        parents=[common],
        help="run a schedule now: its operations in order, as its timer does (schedules.toml)",
    )
    p.add_argument("name", help="the schedule")
    p.add_argument(
        "--wait",
        type=float,
        metavar="SECONDS",
        help=f"wait this long for another run to release the host lock (default [lock] wait, else {DEFAULT_WAIT:g})",
    )
    p = sub.add_parser("tomo", parents=[common], help="Tomo's JSON document: create, restore, list")
    p.add_argument("verb", choices=["create", "restore", "list"])
    p.add_argument("--output", help="create: the directory to write to; list: the directory to look in")
    p.add_argument("--input", help="restore: the document, or Tomo's own encrypted backup (.enc)")
    p.add_argument(
        "--password-file",
        help=f"restore of a .enc: a file whose first line is its password, - for stdin (default ${TOMO_PASSWORD_ENV})",
    )
    p.add_argument("--categories", help="restore: comma-separated categories (default: all)")
    p.add_argument("--mode", default="merge", choices=list(tomo_schema.MODES))
    p.add_argument("--check", action="store_true")
    p.add_argument(
        "--live",
        action="store_true",
        help="restore: import while Tomo runs (by default it is stopped while its data changes, then started again)",
    )
    return top


def _text(command: str, result: dict[str, Any]) -> str:
    """What a person reads: a line per set for list and backup, one sentence for a restore, else the result."""
    if command == "list" and "snapshots" in result:
        rows = [f"{s['short_id']}  {s['time'][:19]}  {s['host']}  {','.join(s['tags'])}" for s in result["snapshots"]]
        return "\n".join(rows) or f"no snapshots of selfhost-dr in {result['location']}"
    if command == "list":
        rows = []
        for entry in result["sets"]:
            state = dict(entry.get("verification") or {}).get("state", "")
            rows.append(f"{entry['name']}  {entry.get('size', 0)} bytes  {state}")
        return "\n".join(rows) or f"no sets in {result['directory']}"
    if command == "backup" and "sets" in result:
        lines = [f"wrote {s['path']} ({s['files']} files, {s['databases']} databases)" for s in result["sets"]]
        return "\n".join([*lines, *result.get("actions", [])])
    if command == "restore" and "restore_id" in result:
        started = ", ".join(result["started"]) or "nothing else"
        if "at" in result:
            reached = [f"{d['path']} to txid {d['txid']} ({d['reached'][:19]})" for d in result["databases"]]
            source = f"the replicas in {result['replica']} at {result['at']}: " + ", ".join(reached)
        else:
            source = result.get("path") or f"snapshot {result['snapshot']['short_id']} of {result['repository']}"
        lines = [f"restored {', '.join(result['targets'])} from {source}; running: {started}"]
        lines += [f"warning: {w}" for w in result.get("warnings", [])]
        return "\n".join([*lines, *result.get("actions", []), *([result["warning"]] if result.get("warning") else [])])
    if command == "status":
        lines = [f"backup directory {result['directory']}"]
        for app, about in result["apps"].items():
            lines.append(
                f"{app}: {about['sets']} set(s); newest {about['newest']}, {about['age_hours']} h old, "
                f"{about['verification']}"
            )
        lines += _operation_lines(result)
        lines += _repository_lines(result.get("repositories") or {})
        for app, about in (result.get("replicas") or {}).items():
            dbs = about.get("databases") or []
            behind = sum(1 for d in dbs if d.get("behind"))
            said = "ok" if about.get("ok") else f"FAILED: {about.get('reason', '')}"
            lines.append(
                f"replicas of {app}: {len(dbs)} database(s), {behind} behind, measured "
                f"{about.get('age_seconds', '?')} s ago: {said}"
            )
        lines += [f"restore {r['restore_id']} of {r['archive']} is {r['state']}" for r in result["pending_restores"]]
        if result["leftovers"]:
            lines.append(f"{len(result['leftovers'])} leftover(s) of interrupted runs (swept by the next backup)")
        return "\n".join(lines if len(lines) > 1 else [*lines, "no sets yet"])
    if command == "replicas":
        return "\n".join(
            f"{d['database']}: txid {d['replica_txid']:x} on the replica, {d['behind']} behind"
            + (f", waiting {d['lag_seconds']:.1f} s" if d["behind"] else "")
            + (f"; last sync {d['since_sync_seconds']:.0f} s ago" if d["last_sync"] else "; nothing replicated yet")
            for d in result["databases"]
        )
    if command == "verify":
        return str(result["summary"])
    if command == "key":
        rows = [
            f"{'*' if k.get('current') else ' '} {k.get('id', '?')}  {k.get('userName', '')}@{k.get('hostName', '')}"
            f"  {k.get('created', '')}"
            for k in result["keys"]
        ]
        added = [f"added key {result['added']}: keep its password offline"] if result.get("added") else []
        return "\n".join([*added, *rows])
    if command == "check":
        return "\n".join(
            f"{o['repository']}: " + ("no damage found" if o["ok"] else f"FAILED: {o['error']}")
            for o in result["repositories"]
        )
    if command == "prune" and "repositories" in result:
        return "\n".join(_repo_prune_line(o, result["check"]) for o in result["repositories"])
    if command == "prune":
        return (
            f"deleted {len(result['deleted'])} set(s), freed {result['freed_bytes']} bytes; kept {len(result['kept'])}"
        )
    return json.dumps(result, indent=2, sort_keys=True, default=str)


def _repository_lines(repositories: dict[str, Any]) -> list[str]:
    lines = []
    for name, about in repositories.items():
        backup = about.get("backup") or {}
        success, failure = backup.get("last_success"), backup.get("last_failure")
        if success is None and failure is None:
            lines.append(f"repository {name} ({about.get('location', '?')}): never backed up into")
            continue
        parts = []
        if success:
            added = success.get("data_added")
            parts.append(
                f"last backup {success.get('age_hours', '?')} h ago"
                + (f", {added / 1048576:.1f} MiB added" if isinstance(added, int) else "")
            )
        if "snapshots" in about:
            parts.append(f"{about['snapshots']} snapshot(s)")
        attempt = backup.get("last_attempt") or {}
        if failure and not attempt.get("ok"):
            parts.append(f"last attempt failed {failure.get('age_hours', '?')} h ago: {failure.get('reason', '')}")
        lines.append(f"repository {name}: " + "; ".join(parts))
    return lines


def _repo_prune_line(outcome: dict[str, Any], check: bool) -> str:
    if not outcome["ok"]:
        return f"{outcome['repository']}: FAILED: {outcome['error']}"
    verb = "would forget" if check else "forgot"
    freed = f", freed {outcome['freed_bytes']} bytes" if outcome.get("freed_bytes") is not None else ""
    gone = "".join(f"\n  - {d['short_id']}  {d['time'][:19]}  {d['host']}  {d['app']}" for d in outcome["forgotten"])
    kept = "".join(
        f"\n  + {d['short_id']}  {d['time'][:19]}  {d['host']}  {d['app']}: {', '.join(d['reasons'])}"
        for d in outcome["kept"]
    )
    counts = f"{verb} {len(outcome['forgotten'])} snapshot(s){freed}; kept {len(outcome['kept'])}"
    if outcome.get("other_hosts"):
        counts += f" (and {outcome['other_hosts']} of other hosts, left alone)"
    return f"{outcome['repository']}: {counts}{kept}{gone}"


def _operation_lines(result: dict[str, Any]) -> list[str]:
    lines = [f"warning: {result['state_problem']}"] if result.get("state_problem") else []
    if result.get("running"):
        about = result["running"]
        lines.append(
            f"running now: {about.get('operation', '?')} (pid {about.get('pid', '?')}, since {about.get('since', '?')})"
        )
    running = result.get("running") or {}
    for operation, about in result.get("operations", {}).items():
        lines.append(f"{operation}: " + "; ".join(_run_parts(about, running.get("operation") == operation)))
    for name, about in result.get("schedules", {}).items():
        what = f"{', '.join(about['operations'])} of {about['app']} at {about['calendar']}"
        parts = _run_parts(about, running.get("operation") == "run" and running.get("schedule") == name)
        if about.get("next_run"):
            parts.append(f"next run {about['next_run']}")
        lines.append(f"schedule {name} ({what}, {about['sets']} set(s) kept): " + "; ".join(parts))
    return lines


def _run_parts(about: dict[str, Any], running_now: bool) -> list[str]:
    success, attempt, failure = (about.get(k) for k in ("last_success", "last_attempt", "last_failure"))
    parts = []
    if success:
        size = f", {success.get('set_bytes')} bytes" if success.get("set_bytes") is not None else ""
        parts.append(f"last success {success.get('finished_at', '?')} ({success.get('age_hours', '?')} h ago{size})")
    else:
        parts.append("never succeeded")
    if attempt and not attempt.get("finished_at") and running_now:
        parts.append(f"running since {attempt.get('started_at', '?')}")
    elif attempt and not attempt.get("finished_at"):
        parts.append(f"a run started {attempt.get('started_at', '?')} never finished")
    elif attempt and not attempt.get("ok"):
        parts.append(f"last attempt {attempt.get('finished_at', '?')} failed: {attempt.get('reason', '?')}")
    elif failure:
        when, age = failure.get("finished_at", "?"), failure.get("age_hours", "?")
        parts.append(f"last failure {when} ({age} h ago): {failure.get('reason', '?')}")
    if about.get("overdue"):
        every = about.get("every_hours")
        parts.append(f"OVERDUE (every {every:g} h)" if isinstance(every, (int, float)) else "OVERDUE")
    elif about.get("due"):
        parts.append("due")
    return parts


def _interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:
        raise UsageError(f"{self.prog}: {message}")


def main(argv: Sequence[str] | None = None) -> int:
    args_in = list(sys.argv[1:] if argv is None else argv)
    as_json = "--json" in args_in  # anywhere on the line, also when the rest of it is wrong
    # A stopped timer (SIGTERM) or a dropped SSH session (SIGHUP) interrupts like Ctrl-C: the procedures then
    # start the application again and put the previous data back before the command ends.
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _interrupt)
    log = Progress(quiet=as_json)
    code, command = EXIT_OK, ""
    watcher: monitor.Monitor | None = None
    recorder: monitor.Recorder | None = None
    begun = False
    result: dict[str, Any] = {}
    try:
        args = parser().parse_args([a for a in args_in if a != "--json"])
        command = args.command
        config = load_config(args.config)
        if command == "run":
            result, code = run_schedule(args, config, log)
        else:
            watcher = _monitor(args, config, log)
            if watcher is not None:
                recorder = watcher.recorder(command, _app(args, config), args.schedule or "")
                watcher.begin()
                begun = True  # from here the outcome is recorded, also of a stop while the start is pinged
                recorder.begin()
            result = COMMANDS[command](args, config, log)
    except SystemExit as exc:  # --help
        return EXIT_OK if exc.code in (0, None) else EXIT_USAGE
    except BaseException as exc:  # each becomes its exit status and one sentence
        result, code = _failed(exc, command)
    try:
        if recorder is not None and begun:
            result.update(recorder.end(code, result))
        if watcher is not None and watcher.held:
            result["metrics"] = watcher.end()
    except KeyboardInterrupt:  # a second signal while recording: the lock is released, the record may lag
        code = code or EXIT_INTERRUPTED
    finally:
        if watcher is not None and watcher.held:
            watcher.end()
    if watcher is not None and watcher.warnings:
        result["warnings"] = watcher.warnings
    if as_json:
        print(json.dumps({"ok": code == 0, "command": command, **result}, sort_keys=True, default=str))
    elif code:
        print(f"selfhost-dr{' ' + command if command else ''}: {result['error']}", file=sys.stderr)
    else:
        print(_text(command, result))
    return code


if __name__ == "__main__":
    sys.exit(main())
