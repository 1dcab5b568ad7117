# Copyright: selfhost.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The on-host restore journal: what a restore swapped, written before it swaps.

Standard library only. Every restore gets one JSON record under
``/var/lib/selfhost-dr/journal/`` (``SELFHOST_DR_STATE_DIR`` or the caller
moves it), written atomically before each step that changes the live tree.
Commit and roll back act on these records only: a path that no restore of this
host recorded is never deleted, and repeating either is a no-op. A record left
half-way by a killed run is finished or undone by the next run on the host.

States: ``staging`` (unpacking beside the targets; nothing live touched),
``swapping`` (renames under way), ``swapped`` (restored, safety copies kept,
waiting for commit or roll back), ``committing`` and ``rolling_back`` (under
way: a killed one is finished by the next run), then ``committed``, ``kept``
(committed, the safety copies kept on request: a later commit deletes them, a
roll back still puts them back), ``rolled_back``, ``aborted`` (failed before
any swap; staging removed) or ``stuck`` (could not be undone without touching
something the restore did not make; the reason says what, and a new restore
of the same place is refused until a person resolves it).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import secrets
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone

from .. import safe_fs
from .._common import JournalError

STATE_DIR_ENV = "SELFHOST_DR_STATE_DIR"
DEFAULT_STATE_DIR = "/var/lib/selfhost-dr"
# Records the next run looks at: interrupted (staging, swapping, committing, rolling_back), waiting for a commit or
# a roll back (swapped), or that could not be undone (stuck: listed, and refused as the base of a new restore).
PENDING = ("staging", "swapping", "swapped", "committing", "rolling_back", "stuck")
_ID_RE = re.compile(r"^[0-9A-Za-z]{1,32}-[0-9a-f]{8}$")
_MAX_RECORD = 16 * 1024 * 1024
# The modules' option for state_dir (documented once, in doc_fragments/state_dir.py).
STATE_DIR_SPEC: dict[str, dict[str, object]] = {"state_dir": {"type": "path"}}


def state_dir(override: str | None = None) -> str:
    """Where this host keeps selfhost.dr's state: ``override``, ``$SELFHOST_DR_STATE_DIR``, /var/lib/selfhost-dr for
    root, else the user's own state directory (``$XDG_STATE_HOME/selfhost-dr``, ``~/.local/state/selfhost-dr``)."""
    chosen = override or os.environ.get(STATE_DIR_ENV)
    if not chosen and os.geteuid() != 0:
        home = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
        chosen = os.path.join(home, "selfhost-dr")
    return os.path.abspath(chosen or DEFAULT_STATE_DIR)


@dataclass
class SwapRecord:
    """One restored tree: ``name`` in the directory ``parent`` (a resolved path) is the target."""

    parent: str
    name: str
    staging: str  # the staged tree's name in parent
    safety: str = ""  # the previous content's name in parent, once it was moved there ("" when there was none)
    staged_id: list[int] = field(default_factory=list)  # [st_dev, st_ino] of the staged tree
    previous_id: list[int] = field(default_factory=list)  # [st_dev, st_ino] of what was at the target
    swapped: bool = False

    @property
    def target(self) -> str:
        return os.path.join(self.parent, self.name)

    @property
    def safety_path(self) -> str:
        return os.path.join(self.parent, self.safety) if self.safety else ""


@dataclass
class Scratch:
    """A private directory a restore made beside a target to fetch content into (``name`` in ``parent``): removed
    by the restore, or by the undo of a failed or killed one, only while it is the directory the restore made."""

    parent: str
    name: str
    made_id: list[int] = field(default_factory=list)  # [st_dev, st_ino]

    @property
    def path(self) -> str:
        return os.path.join(self.parent, self.name)


@dataclass
class Record:
    id: str
    archive: str
    state: str
    started_at: str
    updated_at: str = ""
    swaps: list[SwapRecord] = field(default_factory=list)
    reason: str = ""
    scratch: list[Scratch] = field(default_factory=list)

    def to_dict(self) -> dict[str, object]:
        data = asdict(self)
        data["targets"] = [s.target for s in self.swaps]
        return data

    def summary(self) -> dict[str, object]:
        """What a person needs to decide: id, state, set, when, and each target with its safety copy."""
        return {
            "restore_id": self.id,
            "state": self.state,
            "archive": self.archive,
            "started_at": self.started_at,
            "swaps": [{"target": s.target, "safety": s.safety_path} for s in self.swaps],
        }


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class Journal:
    """The records of one host. Use as a context manager: it holds the host's restore lock meanwhile."""

    def __init__(self, directory: str | None = None, lock_timeout: float = 60.0) -> None:
        self.dir = os.path.join(state_dir(directory), "journal")
        self.lock_timeout = lock_timeout
        self._lock_fd = -1

    def __enter__(self) -> Journal:
        try:
            safe_fs.makedirs_private(self.dir)
            fd = os.open(os.path.join(self.dir, ".lock"), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise JournalError(f"cannot use the restore journal in {self.dir}: {exc.strerror}") from exc
        deadline = time.monotonic() + self.lock_timeout
        while not self._try(fd):
            if time.monotonic() >= deadline:
                os.close(fd)
                raise JournalError(
                    f"another restore, commit or roll back is running on this host (lock {self.dir}/.lock held "
                    f"for more than {self.lock_timeout:g} s)"
                )
            time.sleep(0.2)
        self._lock_fd = fd
        return self

    def _try(self, fd: int) -> bool:
        try:
            return safe_fs.try_lock(fd)
        except OSError as exc:
            os.close(fd)
            raise JournalError(f"cannot lock the restore journal in {self.dir}: {exc.strerror}") from exc

    def __exit__(self, *_exc: object) -> None:
        if self._lock_fd >= 0:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = -1

    def new(self, archive: str, swaps: list[SwapRecord], stamp: str | None = None) -> Record:
        stamp = stamp or datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        if not re.fullmatch(r"[0-9A-Za-z]{1,32}", stamp):
            raise JournalError(f"{stamp!r} cannot start a restore id (letters and digits only)")
        record = Record(f"{stamp}-{secrets.token_hex(4)}", archive, "staging", _now(), swaps=swaps)
        self.save(record)
        return record

    def save(self, record: Record) -> None:
        """Write ``record`` atomically and durably (temp file, fsync, rename, fsync of the directory)."""
        record.updated_at = _now()
        path = self._path(record.id)
        tmp = f"{path}.partial"
        data = (json.dumps(record.to_dict(), indent=1) + "\n").encode()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        dfd = os.open(self.dir, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)

    def _path(self, restore_id: str) -> str:
        if not _ID_RE.match(restore_id):
            raise JournalError(f"{restore_id!r} is not a restore id (they look like 20261122T040000Z-1a2b3c4d)")
        return os.path.join(self.dir, f"{restore_id}.json")

    def load(self, restore_id: str) -> Record:
        path = self._path(restore_id)
        try:
            return _parse(safe_fs.read_regular(path, _MAX_RECORD), path)
        except FileNotFoundError as exc:
            raise JournalError(f"no restore {restore_id} is recorded on this host (in {self.dir})") from exc
        except (OSError, ValueError) as exc:
            raise JournalError(f"the journal record {path} cannot be read") from exc

    def records(self) -> Iterator[Record]:
        """Every readable record, oldest first."""
        try:
            names = sorted(os.listdir(self.dir))
        except OSError:  # none yet, or not this user's to read: no record this user can act on
            return
        for name in names:
            if name.endswith(".json") and _ID_RE.match(name[:-5]):
                with contextlib.suppress(JournalError):
                    yield self.load(name[:-5])

    def pending(self) -> list[Record]:
        return [r for r in self.records() if r.state in PENDING]

    def find(self, target: str, safety: str) -> Record:
        """The newest record holding the swap ``target`` / ``safety`` (the module's old ``swaps`` argument)."""
        for record in sorted(
            self.records(), key=lambda r: (r.state in ("swapped", "kept"), r.started_at), reverse=True
        ):
            if any(s.target == target and s.safety_path == safety for s in record.swaps):
                return record
        raise JournalError(
            f"{safety or target} is not a safety copy recorded by a restore on this host; nothing was changed"
        )


def _parse(blob: bytes, where: str) -> Record:
    try:
        data = json.loads(blob)
        swaps = [
            SwapRecord(
                parent=str(s["parent"]),
                name=str(s["name"]),
                staging=str(s["staging"]),
                safety=str(s.get("safety", "")),
                staged_id=[int(x) for x in s.get("staged_id", [])],
                previous_id=[int(x) for x in s.get("previous_id", [])],
                swapped=bool(s.get("swapped", False)),
            )
            for s in data["swaps"]
        ]
        scratch = [
            Scratch(str(s["parent"]), str(s["name"]), [int(x) for x in s.get("made_id", [])])
            for s in data.get("scratch", [])
        ]
        return Record(
            id=str(data["id"]),
            archive=str(data["archive"]),
            state=str(data["state"]),
            started_at=str(data["started_at"]),
            updated_at=str(data.get("updated_at", "")),
            swaps=swaps,
            reason=str(data.get("reason", "")),
            scratch=scratch,
        )
    except (KeyError, TypeError, ValueError, RecursionError) as exc:
        raise ValueError(f"{where} is not a journal record") from exc


def identity(parent_fd: int, name: str) -> list[int]:
    """[st_dev, st_ino] of ``name`` in ``parent_fd`` (not followed), or [] when there is nothing."""
    try:
        st = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
    except FileNotFoundError:
        return []
    return [st.st_dev, st.st_ino]


def open_parent(path: str) -> int:
    try:
        return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            raise JournalError(f"directory {path} of a restored tree no longer exists") from exc
        raise JournalError(f"cannot open directory {path}: {exc.strerror}") from exc
