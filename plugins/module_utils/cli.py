# Copyright: selfhost.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""``selfhost-dr``: the host command. The same procedures as the modules, run on the host itself (by systemd
timers, or by a person when no controller is left), configured by ``/etc/selfhost-dr/config.toml`` that the
roles write from the same variables.

    selfhost-dr backup   [--app A] [--mode hot|cold|instances] [--instance S:I]... [--label L] [--no-verify]
    selfhost-dr verify   [SET]                 (default: the newest set of the app)
    selfhost-dr list     [--app A]
    selfhost-dr prune    [--app A] [--dry-run] (the [retention] rules of the config)
    selfhost-dr restore  [SET] [--app A] [--instance S:I]... [--keep-safety] [--check]
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
from typing import Any

from ._common import Error, RollbackError, VerificationError
from .apps import tomo_document, tomo_export, tomo_schema
from .apps.registry import APPS, TENEMENT_SPEC, TOMO_SPEC, application
from .apps.tomo import Tomo
from .engine import backup, heartbeat, metrics, prune, restore, state, swap
from .engine.lock import DEFAULT_WAIT, HostLock, held
from .sets.catalog import catalog, leftovers
from .sets.verify import verify

CONFIG = "/etc/selfhost-dr/config.toml"
CONFIG_ENV = "SELFHOST_DR_CONFIG"
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNVERIFIED, EXIT_ROLLBACK, EXIT_INTERRUPTED = 0, 1, 2, 3, 4, 130


class UsageError(Error):
    """The command line or the configuration is wrong."""


def load_config(path: str | None) -> dict[str, Any]:
    """The host's configuration; an absent default file is an empty one (every option takes its default)."""
    chosen = path or os.environ.get(CONFIG_ENV) or CONFIG
    try:
        import tomllib
    except ImportError as exc:  # Python < 3.11
        raise UsageError("selfhost-dr needs Python 3.11 or newer (tomllib) to read its configuration") from exc
    try:
        with open(chosen, "rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError as exc:
        if path:
            raise UsageError(f"the configuration {chosen} does not exist") from exc
        return {}
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(f"the configuration {chosen} cannot be read: {exc}") from exc


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
    return str(config.get("backup_dir") or "/var/backups/selfhost-dr")


def _section(config: dict[str, Any], name: str) -> dict[str, Any]:
    value = config.get(name) or {}
    if not isinstance(value, dict):
        raise UsageError(f"[{name}] of the configuration must be a table")
    return value


MONITORED = state.OPERATIONS  # the commands that take the host lock and are recorded, exported and pinged
_HEARTBEAT_KEYS = (*state.OPERATIONS, "push", "timeout")


def monitoring(config: dict[str, Any]) -> dict[str, Any]:
    """The [lock], [metrics], [heartbeat] and [schedule] tables, checked: one sentence (exit 2) for a wrong one.
    A URL is never quoted back: it may hold a token."""
    wait = _number(config, "lock", "wait", DEFAULT_WAIT)
    for key in _section(config, "lock"):
        if key != "wait":
            raise UsageError(f"[lock] {key} is not a setting selfhost-dr knows")
    if not wait >= 0:  # also NaN
        raise UsageError(f"[lock] wait must be 0 or more seconds, not {wait:g}")
    textfile_dir = _section(config, "metrics").get("textfile_dir", metrics.DEFAULT_TEXTFILE_DIR)
    for key in _section(config, "metrics"):
        if key != "textfile_dir":
            raise UsageError(f"[metrics] {key} is not a setting selfhost-dr knows")
    if not isinstance(textfile_dir, str) or (textfile_dir and not os.path.isabs(textfile_dir)):
        raise UsageError(f'[metrics] textfile_dir must be an absolute path or "", not {textfile_dir!r}')
    beats = _section(config, "heartbeat")
    for key, value in beats.items():
        if key not in _HEARTBEAT_KEYS:
            raise UsageError(f"[heartbeat] {key} is not a setting selfhost-dr knows")
        if key != "timeout" and value != "" and heartbeat.problem(value):
            raise UsageError(f"[heartbeat] {key} {heartbeat.problem(value)}")
    timeout = _number(config, "heartbeat", "timeout", heartbeat.DEFAULT_TIMEOUT)
    if not 0 < timeout <= 600:  # also NaN
        raise UsageError(f"[heartbeat] timeout must be more than 0 and at most 600 seconds, not {timeout:g}")
    every: dict[str, float] = {}
    for key in _section(config, "schedule"):
        operation = key.removesuffix("_every")
        if operation == key or operation not in state.OPERATIONS:
            raise UsageError(f"[schedule] {key} is not a setting selfhost-dr knows")
        hours = _number(config, "schedule", key, 0)
        if not hours > 0:  # also NaN
            raise UsageError(f"[schedule] {key} must be more than 0 hours, not {hours:g}")
        every[operation] = hours
    return {"wait": wait, "textfile_dir": textfile_dir, "heartbeat": beats, "timeout": timeout, "every": every}


class Monitor:
    """One recorded run of backup, verify, prune or restore: the host lock, state.json, the textfile, heartbeats."""

    def __init__(self, args: argparse.Namespace, config: dict[str, Any], log: Progress) -> None:
        self.settings = monitoring(config)
        self.operation = str(args.command)
        self.config = config
        self.log = log
        schedule = args.schedule or ""
        if schedule and not state.SCHEDULE_RE.match(schedule):
            raise UsageError(f"--schedule must be a name of letters, digits, '.', '_' and '-', not {schedule!r}")
        wait = self.settings["wait"] if args.wait is None else args.wait
        if not wait >= 0:  # also NaN
            raise UsageError(f"--wait must be 0 or more seconds (inf: for ever), not {wait:g}")
        self.store = state.Store(config.get("state_dir"))
        self.run = state.Run.start(self.operation, schedule, _app(args, config))
        self.lock = HostLock(config.get("state_dir"), self.operation, wait, schedule, log)
        beats = self.settings["heartbeat"]
        self.beats = heartbeat.Heartbeats(
            str(beats.get(self.operation, "")),
            str(beats.get("push", "")),
            self.run.run_id,
            self.operation,
            self.settings["timeout"],
        )
        self.begun = False
        self.warnings: list[str] = []

    @staticmethod
    def of(args: argparse.Namespace, config: dict[str, Any], log: Progress) -> Monitor | None:
        """The run's monitor; None for a run that changes nothing (``--check``, ``--dry-run``), which takes no lock
        and is not recorded, but whose settings are checked all the same."""
        if args.command not in MONITORED:
            return None
        monitor = Monitor(args, config, log)
        return None if getattr(args, "check", False) or getattr(args, "dry_run", False) else monitor

    def begin(self) -> None:
        """Take the host lock (or fail: nothing recorded), ping the start, record the attempt. A state.json that
        cannot be written (a full disk) is a warning: the run goes on, and its outcome is still exported and pinged."""
        self.lock.__enter__()
        try:
            self._ping(self.beats.start)
            self.run = state.Run.start(self.operation, self.run.schedule, self.run.app, self.run.run_id)
            try:
                self.store.record(self.run)
            except state.StateError as exc:
                self._warn(str(exc))
        except BaseException:
            self.lock.__exit__()
            raise
        self.begun = True
        if self.store.problem:
            self._warn(self.store.problem)

    def end(self, code: int, result: dict[str, Any]) -> dict[str, object]:
        """Record the outcome, write the textfile, ping; the exit status stays ``code`` whatever fails here."""
        try:
            self.run.finish(code, str(result.get("error", "")))
            self._set_facts(result)
            try:
                self.store.record(self.run)
            except state.StateError as exc:
                self._warn(str(exc))
            exported = self._export()
            self._ping(lambda: self.beats.finish(code, self.run.reason or "ok", self._tail()))
            if self.beats.sent:
                with contextlib.suppress(state.StateError):
                    self.store.note(self.operation, "heartbeats", [b.as_dict() for b in self.beats.sent])
        finally:
            self.lock.__exit__()
        run = {"run_id": self.run.run_id, "schedule": self.run.schedule, "duration_seconds": self.run.duration_seconds}
        return {"run": run, "metrics": exported, "heartbeats": [b.as_dict() for b in self.beats.sent]}

    def _set_facts(self, result: dict[str, Any]) -> None:
        paths = [str(s["path"]) for s in result.get("sets", []) if isinstance(s, dict) and "path" in s]
        if not paths and result.get("path"):
            paths = [str(result["path"])]
        if not paths:
            return
        self.run.set_path, self.run.sets = paths[-1], len(paths)
        try:
            self.run.set_bytes = sum(os.stat(p).st_size for p in paths)
        except OSError:
            self.run.set_bytes = None

    def _export(self) -> str:
        directory = self.settings["textfile_dir"]
        if not directory:
            return ""
        if not os.path.isdir(directory):
            self.log(f"metrics: {directory} does not exist, so no textfile was written")
            return ""
        backups = _dir(self.config)
        try:
            sets: list[dict[str, object]] | None = catalog(backups) if os.path.isdir(backups) else []
        except (Error, OSError):
            sets = None
        try:
            # What was recorded, also when state.json could not be written (a full disk): the failure is exported.
            return metrics.write(directory, metrics.render(self.store.latest or self.store.read(), sets))
        except OSError as exc:
            self._warn(f"cannot write the metrics textfile in {directory}: {exc.strerror or exc}")
            return ""
        except Exception as exc:
            self._warn(f"cannot write the metrics textfile in {directory}: {type(exc).__name__}: {exc}")
            return ""

    def _ping(self, send: Callable[[], list[heartbeat.Sent]]) -> None:
        try:
            for sent in send():
                if sent.error:
                    self._warn(f"heartbeat: {sent.error}")
        except KeyboardInterrupt:
            self._warn("heartbeat: interrupted, not sent")
        except Exception as exc:
            self._warn(f"heartbeat: not sent ({type(exc).__name__})")

    def _tail(self) -> bytes:
        lines = [
            *self.log.lines,
            f"selfhost-dr {self.operation}: {self.run.reason or 'ok'} (exit {self.run.exit_code})",
        ]
        return heartbeat.tail("\n".join(lines) + "\n")

    def _warn(self, sentence: str) -> None:
        self.warnings.append(sentence)
        self.log(f"warning: {sentence}")


def cmd_backup(args: argparse.Namespace, config: dict[str, Any], log: Progress) -> dict[str, object]:
    settings = _section(config, "backup")
    name = _app(args, config)
    app = application(name, app_options(config))
    mode = args.mode or str(settings.get("mode", "hot"))
    if args.instance and mode != "instances":
        raise UsageError("--instance backs up instances one at a time: use it with --mode instances")
    options = backup.Options(
        dest=_dir(config),
        label=args.label or str(settings.get("label", "")),
        excludes=_strings(config, "backup", "exclude"),
        compression=str(settings.get("compression", "auto")),
        level=int(_number(config, "backup", "compression_level", 3)),
        lock_timeout=_number(config, "backup", "lock_timeout", 30),
        verify=_flag(config, "backup", "verify", True) and not args.no_verify,
        health_timeout=_number(config, "backup", "health_timeout", 60),
        state_dir=config.get("state_dir"),
    )
    planned = backup.plan(app, mode, options, args.instance, check=args.check)
    if args.check:
        return {"app": name, "mode": mode, "would_write": planned.names, "stops": planned.stops, "files": planned.files}
    done = backup.run(app, planned, options, log)
    return {"app": name, "mode": mode, "stops": planned.stops, "sets": done.sets, "actions": done.actions}


def cmd_verify(args: argparse.Namespace, config: dict[str, Any], log: Progress) -> dict[str, object]:
    archive = _set_path(args, config, _app(args, config))
    checked = verify(archive, log=log)
    if not checked.ok:
        raise VerificationError(checked.summary)
    return {"path": archive, "ok": checked.ok, "summary": checked.summary, "warnings": checked.warnings}


def cmd_list(args: argparse.Namespace, config: dict[str, Any], log: Progress) -> dict[str, object]:
    sets = catalog(_dir(config), app=args.app)
    return {"directory": _dir(config), "sets": sets}


def cmd_prune(args: argparse.Namespace, config: dict[str, Any], log: Progress) -> dict[str, object]:
    rules = _section(config, "retention")
    if not rules:
        raise UsageError("the configuration has no [retention] rules, so nothing would be pruned")
    try:
        policy = prune.policy_of(rules)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"the [retention] rules of the configuration are not valid: {exc}") from exc
    done = prune.prune(
        _dir(config), policy, {"app": _app(args, config), "host": None, "label": None}, check=args.dry_run
    )
    return {"deleted": done.deleted, "kept": done.kept, "future": done.future, "freed_bytes": done.freed_bytes}


def cmd_restore(args: argparse.Namespace, config: dict[str, Any], log: Progress) -> dict[str, object]:
    name = _app(args, config)
    app = application(name, app_options(config))
    options = restore.Options(
        keep_safety=args.keep_safety or _flag(config, "restore", "keep_safety", False),
        health_timeout=_number(config, "restore", "health_timeout", 60),
        state_dir=config.get("state_dir"),
    )
    archive = _set_path(args, config, name, args.instance)
    planned = restore.plan(app, archive, options, args.instance, log, check=args.check)
    result: dict[str, object] = {"path": archive, "paths": planned.paths, "targets": planned.targets}
    result["started"] = planned.start
    if args.check:
        return result
    done = restore.run(app, planned, options, log)
    result.update(
        restore_id=done.restore_id,
        files=done.files,
        recovered=done.recovered,
        warning=done.warning,
        actions=done.actions,
    )
    return result


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
    every = monitoring(config)["every"]
    store = state.Store(config.get("state_dir"))
    recorded = store.read()
    operations: dict[str, object] = {}
    for operation in state.OPERATIONS:
        about = dict(dict(recorded.get("operations") or {}).get(operation) or {})  # type: ignore[call-overload]
        if not about and operation not in every:
            continue
        for key in ("last_attempt", "last_success", "last_failure"):
            entry = about.get(key)
            when = state.timestamp(entry.get("finished_at") or entry.get("started_at")) if entry else None
            if entry and when is not None:
                about[key] = {**entry, "age_hours": round((now - when) / 3600, 1)}
        if operation in every:
            about["every_hours"] = every[operation]
            about["due"] = state.due(recorded, operation, every[operation] * 3600)
            success = state.last(recorded, operation, "last_success")
            started = state.timestamp(success["started_at"]) if success else None
            about["overdue"] = started is None or now - started > 2 * every[operation] * 3600
        operations[operation] = about
    return {
        "directory": directory,
        "apps": apps,
        "pending_restores": swap.pending(config.get("state_dir")),
        "leftovers": leftovers(directory) if os.path.isdir(directory) else [],
        "operations": operations,
        "state_file": store.path,
        "state_problem": store.problem,
        "running": held(config.get("state_dir")),
    }


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
        with HostLock(config.get("state_dir"), "restore", monitoring(config)["wait"], "", log):
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
    "restore": cmd_restore,
    "status": cmd_status,
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
    p = sub.add_parser("verify", parents=[common, runs], help="verify a set end to end (default: the newest)")
    p.add_argument("set", nargs="?")
    sub.add_parser("list", parents=[common], help="the sets, newest first")
    p = sub.add_parser("prune", parents=[common, runs], help="apply the [retention] rules")
    p.add_argument("--dry-run", action="store_true")
    p = sub.add_parser("restore", parents=[common, runs], help="restore a set (default: the newest) and start the app")
    p.add_argument("set", nargs="?")
    p.add_argument("--instance", action="append", default=[], help="restore only this service:id (repeat)")
    p.add_argument("--keep-safety", action="store_true")
    p.add_argument("--check", action="store_true", help="verify and plan, refusing what the restore would refuse")
    sub.add_parser(
        "status",
        parents=[common],
        help="last success, attempt and failure per operation; newest set per app; leftovers",
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
        lines = [f"restored {', '.join(result['targets'])} from {result['path']}; running: {started}"]
        return "\n".join([*lines, *result.get("actions", []), *([result["warning"]] if result.get("warning") else [])])
    if command == "status":
        lines = [f"backup directory {result['directory']}"]
        for app, about in result["apps"].items():
            lines.append(
                f"{app}: {about['sets']} set(s); newest {about['newest']}, {about['age_hours']} h old, "
                f"{about['verification']}"
            )
        lines += _operation_lines(result)
        lines += [f"restore {r['restore_id']} of {r['archive']} is {r['state']}" for r in result["pending_restores"]]
        if result["leftovers"]:
            lines.append(f"{len(result['leftovers'])} leftover(s) of interrupted runs (swept by the next backup)")
        return "\n".join(lines if len(lines) > 1 else [*lines, "no sets yet"])
    if command == "verify":
        return str(result["summary"])
    if command == "prune":
        return (
            f"deleted {len(result['deleted'])} set(s), freed {result['freed_bytes']} bytes; kept {len(result['kept'])}"
        )
    return json.dumps(result, indent=2, sort_keys=True, default=str)


def _operation_lines(result: dict[str, Any]) -> list[str]:
    lines = [f"warning: {result['state_problem']}"] if result.get("state_problem") else []
    if result.get("running"):
        about = result["running"]
        lines.append(
            f"running now: {about.get('operation', '?')} (pid {about.get('pid', '?')}, since {about.get('since', '?')})"
        )
    for operation, about in result.get("operations", {}).items():
        success, attempt, failure = (about.get(k) for k in ("last_success", "last_attempt", "last_failure"))
        parts = []
        if success:
            size = f", {success.get('set_bytes')} bytes" if success.get("set_bytes") is not None else ""
            parts.append(
                f"last success {success.get('finished_at', '?')} ({success.get('age_hours', '?')} h ago{size})"
            )
        else:
            parts.append("never succeeded")
        running = result.get("running") or {}
        if attempt and not attempt.get("finished_at") and running.get("operation") == operation:
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
        lines.append(f"{operation}: " + "; ".join(parts))
    return lines


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
    monitor: Monitor | None = None
    try:
        args = parser().parse_args([a for a in args_in if a != "--json"])
        command = args.command
        config = load_config(args.config)
        monitor = Monitor.of(args, config, log)
        if monitor is not None:
            monitor.begin()
        result = COMMANDS[command](args, config, log)
    except SystemExit as exc:  # --help
        return EXIT_OK if exc.code in (0, None) else EXIT_USAGE
    except UsageError as exc:
        result, code = {"error": str(exc)}, EXIT_USAGE
    except VerificationError as exc:
        result, code = {"error": str(exc)}, EXIT_UNVERIFIED
    except RollbackError as exc:
        result, code = {"error": str(exc)}, EXIT_ROLLBACK
    except Error as exc:
        result, code = {"error": str(exc)}, EXIT_FAILED
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        result, code = {"error": f"{where}{exc.strerror or exc}"}, EXIT_FAILED
    except KeyboardInterrupt as exc:
        result, code = {"error": f"interrupted{' by ' + str(exc) if str(exc) else ''}"}, EXIT_INTERRUPTED
    except Exception as exc:
        result = {"error": f"{command or 'selfhost-dr'} failed unexpectedly: {type(exc).__name__}: {exc}"}
        code = EXIT_FAILED
    if monitor is not None and monitor.begun:
        try:
            result = {**result, **monitor.end(code, result)}
        except KeyboardInterrupt:  # a second signal while recording: the lock is released, the record may lag
            code = code or EXIT_INTERRUPTED
    warnings = monitor.warnings if monitor is not None else []
    if warnings:
        result["warnings"] = warnings
    if as_json:
        print(json.dumps({"ok": code == 0, "command": command, **result}, sort_keys=True, default=str))
    elif code:
        print(f"selfhost-dr{' ' + command if command else ''}: {result['error']}", file=sys.stderr)
    else:
        print(_text(command, result))
    return code


if __name__ == "__main__":
    sys.exit(main())
