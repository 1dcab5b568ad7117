# Copyright: selfhost.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The status store: per operation, and per schedule (a whole ``selfhost-dr run NAME``), the last attempt, the last
success and the last failure, in ``{state_dir}/state.json`` (``operations`` and ``schedules``).

Standard library only. Written only by a run that holds the host lock (:mod:`.lock`), atomically, mode 0644: it
holds no secret (a heartbeat is named by scheme and host, never by its URL), and monitoring may read it. A run
records its attempt when it starts (``finished_at`` empty) and replaces it when it ends, so an attempt killed with
SIGKILL stays visible as one that never finished. A missing file is an empty store; a damaged one is set aside
(``state.json.damaged-STAMP``, never deleted) by the next run that writes, and reported by every reader.

``due`` counts from the last success only: a run that failed, or never finished, does not make the next one
later.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta

from .. import safe_fs
from .._common import Error, atomic_write, fsync_dir, iso, parse_iso, utc_now
from .journal import state_dir

STATE_FILE = "state.json"
FORMAT = 1
OPERATIONS = ("backup", "verify", "prune", "restore")
SCHEDULE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")  # \Z: "$" also matches before a final newline
_MAX = 4 * 1024 * 1024
_RUN_KEYS = ("last_attempt", "last_success", "last_failure")


class StateError(Error):
    """state.json cannot be written."""


def new_run_id() -> str:
    """A run's id (a UUID 4, as healthchecks.io wants its ``rid``)."""
    raw = bytearray(secrets.token_bytes(16))
    raw[6] = (raw[6] & 0x0F) | 0x40
    raw[8] = (raw[8] & 0x3F) | 0x80
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


@dataclass
class Run:
    """One run of an operation, as state.json keeps it."""

    run_id: str
    operation: str
    started_at: str
    finished_at: str = ""  # empty while it runs (or when it was killed)
    duration_seconds: float = 0.0
    ok: bool = False
    exit_code: int | None = None
    reason: str = ""  # a failure's one sentence
    schedule: str = ""  # the --schedule the run was started by ("" by hand)
    app: str = ""
    set_path: str = ""  # the set written, verified or restored (the last one when a backup wrote several)
    set_bytes: int | None = None  # its size (all the sets a backup wrote)
    sets: int = 0  # how many sets the run wrote or read

    @classmethod
    def start(cls, operation: str, schedule: str = "", app: str = "", run_id: str = "") -> Run:
        return cls(run_id or new_run_id(), operation, iso(utc_now()), schedule=schedule, app=app)

    def finish(self, exit_code: int, reason: str = "", when: datetime | None = None) -> None:
        end = when or utc_now()
        self.finished_at = iso(end)
        self.duration_seconds = round(max(0.0, (end - parse_iso(self.started_at)).total_seconds()), 3)
        self.exit_code = exit_code
        self.ok = exit_code == 0
        self.reason = "" if self.ok else (reason or f"exit status {exit_code}")


def _valid_run(value: object) -> bool:
    if not isinstance(value, dict):
        return False
    try:
        parse_iso(str(value.get("started_at")))
        if value.get("finished_at"):
            parse_iso(str(value["finished_at"]))
    except ValueError:
        return False
    return isinstance(value.get("ok"), bool) and isinstance(value.get("run_id"), str)


def _check(data: object) -> str:
    """Why ``data`` is not a state.json this version reads ("" when it is one)."""
    if not isinstance(data, dict) or not isinstance(data.get("operations"), dict):
        return "it is not an object with operations"
    if data.get("format") != FORMAT:
        return f"its format is {data.get('format')!r}, not {FORMAT}"
    schedules = data.get("schedules", {})
    if not isinstance(schedules, dict):
        return "its schedules are not an object"
    repositories = data.get("repositories", {})
    if not isinstance(repositories, dict) or not all(
        SCHEDULE_RE.match(str(k)) and isinstance(v, dict) for k, v in repositories.items()
    ):
        return "its repositories are not an object of repositories"
    drills = data.get("drills", {})
    if not isinstance(drills, dict) or not all(isinstance(v, dict) for v in drills.values()):
        return "its drills are not an object of applications"
    for section, known in (("operations", OPERATIONS), ("schedules", None)):
        for name, about in data.get(section, {}).items():
            if (name not in known if known else not SCHEDULE_RE.match(name)) or not isinstance(about, dict):
                return f"it has an unknown {section[:-1]} {name!r}"
            for key in _RUN_KEYS:
                if about.get(key) is not None and not _valid_run(about[key]):
                    return f"its {name} {key} is malformed"
    return ""


class Store:
    """state.json of one host. ``read`` never fails; ``record`` and ``note`` write (under the host lock)."""

    def __init__(self, directory: str | None = None) -> None:
        self.dir = state_dir(directory)
        self.path = os.path.join(self.dir, STATE_FILE)
        self.problem = ""  # why the file could not be read, when it could not
        self.latest: dict[str, object] | None = None  # what ``record`` last meant to write (even when it could not)

    def read(self, set_aside: bool = False) -> dict[str, object]:
        """The store (empty when missing or damaged; ``problem`` then says why). With ``set_aside``, a damaged file
        is renamed ``state.json.damaged-STAMP`` so the next write starts afresh and the old bytes stay for a person."""
        self.problem = ""
        empty: dict[str, object] = {"format": FORMAT, "operations": {}}
        try:
            blob = safe_fs.read_regular(self.path, _MAX)
        except FileNotFoundError:
            return empty
        except (OSError, ValueError) as exc:
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            self.problem = f"{self.path} cannot be read: {why}"
            return empty
        try:
            data = json.loads(blob.decode("utf-8"))
            why = _check(data)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            why = f"it is not JSON ({exc})"
        if not why:
            return data  # type: ignore[no-any-return]
        self.problem = f"{self.path} is damaged ({why})"
        if set_aside:
            aside = f"{self.path}.damaged-{utc_now().strftime('%Y%m%dT%H%M%SZ')}"
            with contextlib.suppress(OSError):
                os.rename(self.path, aside)
                self.problem += f"; it was kept as {aside} and a new one started"
        return empty

    def _write(self, data: dict[str, object]) -> None:
        blob = (json.dumps(data, indent=1, sort_keys=True) + "\n").encode()
        if len(blob) > _MAX:  # every reader would find it unreadable, and the next write would start afresh
            raise StateError(
                f"cannot write {self.path}: it would be {len(blob) / 2**20:.1f} MiB, more than the "
                f"{_MAX // 2**20} MiB it is read back with; the previous one was kept"
            )
        try:
            safe_fs.makedirs_private(self.dir)
            atomic_write(self.path, blob, 0o644)
            fsync_dir(self.dir)
        except OSError as exc:
            raise StateError(f"cannot write {self.path}: {exc.strerror or exc}") from exc

    def record(self, run: Run, whole_schedule: bool = False) -> None:
        """``run`` as the operation's last attempt and, once it ended, its last success or last failure; with
        ``whole_schedule``, as its schedule's (``run.schedule``), the run of all the schedule's operations."""
        data = self.read(set_aside=True)
        section, key = ("schedules", run.schedule) if whole_schedule else ("operations", run.operation)
        about = data.setdefault(section, {}).setdefault(key, {})  # type: ignore[attr-defined]
        entry = asdict(run)
        about["last_attempt"] = entry
        if run.finished_at:
            about["last_success" if run.ok else "last_failure"] = entry
        self.latest = data
        self._write(data)

    def record_repositories(self, run: Run, outcomes: list[dict[str, object]]) -> None:
        """Each repository's outcome of ``run`` (a backup, prune or check into several repositories): its own last
        attempt, success or failure per operation, the bytes a backup added, and this host's snapshots there: counted by
        a prune (or a backup when none were counted yet), one more for each backup since."""
        data = self.read(set_aside=True)
        section = data.setdefault("repositories", {})
        for outcome in outcomes:
            name = str(outcome.get("repository", ""))
            if not SCHEDULE_RE.match(name):
                continue
            about = section.setdefault(name, {})  # type: ignore[attr-defined]
            entry = {
                "at": run.finished_at or iso(utc_now()),
                "ok": outcome.get("ok") is True,
                "reason": str(outcome.get("error") or ""),
                "app": run.app,
                "schedule": run.schedule,
                "snapshot_id": str(outcome.get("snapshot_id") or ""),
                "data_added": outcome.get("data_added") if isinstance(outcome.get("data_added"), int) else None,
            }
            runs = about.setdefault(run.operation, {})
            runs["last_attempt"] = entry
            runs["last_success" if entry["ok"] else "last_failure"] = entry
            if isinstance(outcome.get("snapshots"), int) and outcome["snapshots"] >= 0:  # type: ignore[operator]
                about["snapshots"] = outcome["snapshots"]
            elif isinstance(outcome.get("snapshots_added"), int) and isinstance(about.get("snapshots"), int):
                about["snapshots"] += outcome["snapshots_added"]  # type: ignore[operator]
        self.latest = data
        self._write(data)

    def record_drill(self, app: str, entry: dict[str, object]) -> None:
        """A DR drill of this host's ``app`` (role drill, ``drill_record``): ``entry`` (``at``, ``ok``, ``reason``,
        ``set``, ``rto_seconds``, ``rpo_seconds``) as its last attempt and its last success or failure."""
        data = self.read(set_aside=True)
        about = data.setdefault("drills", {}).setdefault(app, {})  # type: ignore[attr-defined]
        about["last_attempt"] = entry
        about["last_success" if entry.get("ok") is True else "last_failure"] = entry
        self.latest = data
        self._write(data)

    def record_replicas(self, app: str, entry: dict[str, object]) -> None:
        """The last measure of ``app``'s replicas (``selfhost-dr replicas``): ``at``, ``ok``, ``reason`` and each
        database's lag (replicas/lag.py)."""
        data = self.read(set_aside=True)
        data.setdefault("replicas", {})[app] = entry  # type: ignore[index]
        self.latest = data
        self._write(data)

    def due(self, operation: str, every_seconds: float, now: datetime | None = None) -> bool:
        """:func:`due` of this host's store."""
        return due(self.read(), operation, every_seconds, now)

    def note(self, operation: str, key: str, value: object) -> None:
        """Another fact of the operation's last run (its heartbeats)."""
        data = self.read(set_aside=True)
        data["operations"].setdefault(operation, {})[key] = value  # type: ignore[attr-defined]
        self._write(data)


def last(data: dict[str, object], operation: str, key: str, section: str = "operations") -> dict[str, object] | None:
    """The operation's (or with ``section="schedules"`` the schedule's) ``last_attempt``, ``last_success`` or
    ``last_failure`` record, or None."""
    about = dict(data.get(section) or {}).get(operation) or {}  # type: ignore[call-overload]
    value = about.get(key)
    return value if isinstance(value, dict) else None


def due(
    data: dict[str, object],
    operation: str,
    every_seconds: float,
    now: datetime | None = None,
    section: str = "operations",
) -> bool:
    """True when the operation's (or schedule's) last success started ``every_seconds`` ago or longer, or there is
    none; failed and unfinished attempts do not count."""
    success = last(data, operation, "last_success", section)
    if success is None:
        return True
    started = parse_iso(str(success["started_at"]))
    return (now or utc_now()) >= started + timedelta(seconds=every_seconds)


def timestamp(text: object) -> float | None:
    """An ISO time of state.json as Unix time."""
    if not text:
        return None
    try:
        return parse_iso(str(text)).timestamp()
    except ValueError:
        return None
