# Copyright: selfhost.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What the host command does around a run that changes something (backup, verify, prune, restore, or a schedule's
run of several): the host lock, its record in state.json, the node_exporter textfile, and the heartbeats.

Standard library only. :func:`settings` reads the [lock], [metrics], [heartbeat] and [schedule] tables of
config.toml (one sentence for a wrong one). A :class:`Monitor` holds the lock for the whole run and exports the
textfile once at its end; each :class:`Recorder` under it records one run (an operation, or the schedule's run as a
whole) and pings its heartbeats. Nothing here fails the run it watches: a state.json that cannot be written (a full
disk), a textfile that cannot be written, a heartbeat endpoint that is down are warnings, and the run's exit status
stays what it was.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .._common import Error, Log
from ..sets.catalog import catalog
from . import heartbeat, metrics, state
from .lock import DEFAULT_WAIT, HostLock

HEARTBEAT_KEYS = (*state.OPERATIONS, "push", "timeout")


class SettingsError(Error):
    """A monitoring setting of config.toml is wrong (the host command's exit status 2)."""


@dataclass
class Settings:
    wait: float = DEFAULT_WAIT
    textfile_dir: str = metrics.DEFAULT_TEXTFILE_DIR
    beats: dict[str, str] = field(default_factory=dict)  # [heartbeat]: URL per operation, push
    timeout: float = heartbeat.DEFAULT_TIMEOUT
    every: dict[str, float] = field(default_factory=dict)  # [schedule] OP_every, in hours


def _table(config: Mapping[str, Any], name: str, known: Iterable[str]) -> dict[str, Any]:
    value = config.get(name) or {}
    if not isinstance(value, dict):
        raise SettingsError(f"[{name}] of the configuration must be a table")
    for key in value:
        if key not in known:
            raise SettingsError(f"[{name}] {key} is not a setting selfhost-dr knows")
    return value


def _number(table: str, key: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SettingsError(f"[{table}] {key} must be a number, not {value!r}")
    return float(value)


def settings(config: Mapping[str, Any]) -> Settings:
    """The [lock], [metrics], [heartbeat] and [schedule] tables, checked. A URL is never quoted back: it may hold
    a token."""
    found = Settings()
    lock = _table(config, "lock", ("wait",))
    found.wait = _number("lock", "wait", lock.get("wait", DEFAULT_WAIT))
    if not found.wait >= 0:  # also NaN
        raise SettingsError(f"[lock] wait must be 0 or more seconds, not {found.wait:g}")
    textfile_dir = _table(config, "metrics", ("textfile_dir",)).get("textfile_dir", metrics.DEFAULT_TEXTFILE_DIR)
    if not isinstance(textfile_dir, str) or (textfile_dir and not os.path.isabs(textfile_dir)):
        raise SettingsError(f'[metrics] textfile_dir must be an absolute path or "", not {textfile_dir!r}')
    found.textfile_dir = textfile_dir
    beats = _table(config, "heartbeat", HEARTBEAT_KEYS)
    for key, value in beats.items():
        if key != "timeout" and value != "" and heartbeat.problem(value):
            raise SettingsError(f"[heartbeat] {key} {heartbeat.problem(value)}")
    found.beats = {k: str(v) for k, v in beats.items() if k != "timeout"}
    found.timeout = _number("heartbeat", "timeout", beats.get("timeout", heartbeat.DEFAULT_TIMEOUT))
    if not 0 < found.timeout <= 600:  # also NaN
        raise SettingsError(f"[heartbeat] timeout must be more than 0 and at most 600 seconds, not {found.timeout:g}")
    schedule = _table(config, "schedule", (f"{op}_every" for op in state.OPERATIONS))
    for key, value in schedule.items():
        hours = _number("schedule", key, value)
        if not hours > 0:  # also NaN
            raise SettingsError(f"[schedule] {key} must be more than 0 hours, not {hours:g}")
        found.every[key.removesuffix("_every")] = hours
    return found


class Recorder:
    """One recorded run, under the lock its :class:`Monitor` holds: the attempt in state.json when it begins, the
    outcome when it ends, and the heartbeats of both."""

    def __init__(
        self,
        monitor: Monitor,
        run: state.Run,
        check_url: str,
        push_url: str,
        whole_schedule: bool = False,
    ) -> None:
        self.monitor = monitor
        self.run = run
        self.whole_schedule = whole_schedule
        what = f"schedule {run.schedule}" if whole_schedule else run.operation
        self.beats = heartbeat.Heartbeats(check_url, push_url, run.run_id, what, monitor.settings.timeout)

    def begin(self) -> None:
        """Ping the start, record the attempt. A stop (SIGTERM, Ctrl-C) while the start is pinged is raised once the
        attempt is recorded: the run ends there (:meth:`end` records it as interrupted), it does not go on."""
        interrupted = self.monitor.ping(self.beats.start)
        self.run = state.Run.start(self.run.operation, self.run.schedule, self.run.app, self.run.run_id)
        self._record()
        if interrupted is not None:
            raise interrupted

    def end(self, code: int, result: Mapping[str, Any]) -> dict[str, object]:
        """Record the outcome and ping it; what the run adds to the command's result."""
        self.run.finish(code, str(result.get("error", "")))
        self._set_facts(result)
        self._record()
        outcome = self.run.reason or "ok"
        what = f"run {self.run.schedule}" if self.whole_schedule else self.run.operation
        self.monitor.ping(lambda: self.beats.finish(code, outcome, self.monitor.tail(what, outcome, code)))
        if self.beats.sent and not self.whole_schedule:
            with contextlib.suppress(state.StateError):
                self.monitor.store.note(self.run.operation, "heartbeats", [b.as_dict() for b in self.beats.sent])
        return {
            "run": {
                "run_id": self.run.run_id,
                "schedule": self.run.schedule,
                "duration_seconds": self.run.duration_seconds,
            },
            "heartbeats": [b.as_dict() for b in self.beats.sent],
        }

    def _record(self) -> None:
        try:
            self.monitor.store.record(self.run, self.whole_schedule)
        except state.StateError as exc:
            self.monitor.warn(str(exc))

    def _set_facts(self, result: Mapping[str, Any]) -> None:
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


class Monitor:
    """The host lock for one command's run, and the textfile written when it ends."""

    def __init__(
        self,
        config: Mapping[str, Any],
        operation: str,
        backup_dir: str,
        log: Log,
        lines: Iterable[str] = (),
        wait: float | None = None,
        schedule: str = "",
        next_runs: Callable[[], Mapping[str, float]] | None = None,
        kept_sets: Callable[[], Mapping[str, int]] | None = None,
        configured: Callable[[], Iterable[str]] | None = None,
    ) -> None:
        self.settings = settings(config)
        wait = self.settings.wait if wait is None else wait
        if not wait >= 0:  # also NaN
            raise SettingsError(f"--wait must be 0 or more seconds (inf: for ever), not {wait:g}")
        self.state_dir = config.get("state_dir")
        self.backup_dir = backup_dir
        self.log = log
        self.lines = lines  # the run's log so far, whose tail the heartbeats carry
        self.store = state.Store(self.state_dir)
        self.lock = HostLock(self.state_dir, operation, wait, schedule, log)
        self.next_runs = next_runs
        self.kept_sets = kept_sets  # per schedule, the sets its retention keeps
        self.configured = configured  # the schedules the host has now (a removed one is not exported)
        self.warnings: list[str] = []
        self.held = False

    def recorder(
        self,
        operation: str,
        app: str,
        schedule: str = "",
        whole_schedule: bool = False,
        check_url: str | None = None,
        step: bool = False,
    ) -> Recorder:
        """A recorder for one run: the operation's own [heartbeat] URL (or ``check_url``), and the push URL (sent once
        per command: by a schedule's run as a whole, not by each ``step`` of it)."""
        url = self.settings.beats.get(operation, "") if check_url is None else check_url
        push = "" if step else self.settings.beats.get("push", "")
        return Recorder(self, state.Run.start(operation, schedule, app), url, push, whole_schedule)

    def begin(self) -> None:
        """Take the host lock (or fail, with nothing recorded)."""
        self.lock.__enter__()
        self.held = True
        self.store.read()
        if self.store.problem:
            self.warn(self.store.problem)

    def end(self) -> str:
        """Write the textfile and release the lock; the textfile's path ("" when none was written)."""
        try:
            return self.export()
        finally:
            if self.held:
                self.held = False
                self.lock.__exit__()

    def export(self) -> str:
        """The textfile from what was recorded (also when state.json could not be written: a full disk's failure is
        exported all the same)."""
        directory = self.settings.textfile_dir
        if not directory:
            return ""
        if not os.path.isdir(directory):
            self.log(f"metrics: {directory} does not exist, so no textfile was written")
            return ""
        try:
            sets: list[dict[str, object]] | None = catalog(self.backup_dir) if os.path.isdir(self.backup_dir) else []
        except (Error, OSError):
            sets = None
        try:
            upcoming = dict(self.next_runs()) if self.next_runs else {}
        except Exception as exc:  # the next runs are a nicety: never a reason to export nothing
            self.warn(f"metrics: the next scheduled runs are unknown ({type(exc).__name__}: {exc})")
            upcoming = {}
        try:
            kept = dict(self.kept_sets()) if self.kept_sets and sets else None
        except Exception as exc:  # as the next runs: the tags are counted instead
            self.warn(f"metrics: the sets each schedule keeps are unknown ({type(exc).__name__}: {exc})")
            kept = None
        try:
            names: list[str] | None = list(self.configured()) if self.configured else None
        except Exception:  # a configuration that cannot be read failed the run before: export what was recorded
            names = None
        try:
            recorded = self.store.latest or self.store.read()
            return metrics.write(directory, metrics.render(recorded, sets, upcoming, kept, names))
        except OSError as exc:
            self.warn(f"cannot write the metrics textfile in {directory}: {exc.strerror or exc}")
        except Exception as exc:
            self.warn(f"cannot write the metrics textfile in {directory}: {type(exc).__name__}: {exc}")
        return ""

    def ping(self, send: Callable[[], list[heartbeat.Sent]]) -> KeyboardInterrupt | None:
        """Send pings; a failure is a warning. A stop while sending is returned (the caller decides), never lost."""
        try:
            for sent in send():
                if sent.error:
                    self.warn(f"heartbeat: {sent.error}")
        except KeyboardInterrupt as exc:
            self.warn("heartbeat: interrupted, not sent")
            return exc
        except Exception as exc:
            self.warn(f"heartbeat: not sent ({type(exc).__name__})")
        return None

    def tail(self, what: str, outcome: str, code: int) -> bytes:
        lines = [*self.lines, f"selfhost-dr {what}: {outcome} (exit {code})"]
        return heartbeat.tail("\n".join(lines) + "\n")

    def warn(self, sentence: str) -> None:
        self.warnings.append(sentence)
        self.log(f"warning: {sentence}")
