# Copyright: selfhost.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""One lock per host: ``{state_dir}/lock``, an ``flock`` that the kernel releases when its holder dies, however
it dies (SIGKILL, OOM, power loss), so there is never a stale lock to clean up.

Standard library only. The holder writes its pid, operation, schedule and start time into the file while it holds
it, so a run that cannot take the lock says who has it. A run waits ``wait`` seconds for it (``None``: for ever,
``0``: not at all), then fails with that sentence; nothing is recorded for a run that did not run.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time

from .. import safe_fs
from .._common import Error, Log, iso, no_log, utc_now, write_all
from .journal import state_dir

LOCK_FILE = "lock"
DEFAULT_WAIT = 3600.0
_POLL = 0.2


class LockError(Error):
    """Another run holds the host lock (or the lock cannot be taken)."""


def holder(path: str) -> dict[str, object]:
    """What the lock file says about its holder ({} when it says nothing readable)."""
    try:
        blob = safe_fs.read_regular(path, 4096)
        about = json.loads(blob.decode("utf-8"))
    except (OSError, ValueError):
        return {}
    return about if isinstance(about, dict) else {}


def describe(about: dict[str, object]) -> str:
    if not about:
        return "another selfhost-dr run"
    what = f"selfhost-dr {about.get('operation') or 'run'}"
    if about.get("schedule"):
        what += f" of schedule {about['schedule']}"
    return f"{what} (pid {about.get('pid', '?')}, since {about.get('since', '?')})"


class HostLock:
    """Hold the host lock for the ``with`` block."""

    def __init__(
        self,
        directory: str | None,
        operation: str,
        wait: float | None = DEFAULT_WAIT,
        schedule: str = "",
        log: Log = no_log,
    ) -> None:
        self.dir = state_dir(directory)
        self.path = os.path.join(self.dir, LOCK_FILE)
        self.operation = operation
        self.wait = wait
        self.schedule = schedule
        self.log = log
        self._fd = -1

    def __enter__(self) -> HostLock:
        try:
            safe_fs.makedirs_private(self.dir)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise LockError(f"cannot open the host lock {self.path}: {exc.strerror or exc}") from exc
        try:
            self._take(fd)
            about = {
                "pid": os.getpid(),
                "operation": self.operation,
                "schedule": self.schedule,
                "since": iso(utc_now()),
            }
            os.ftruncate(fd, 0)
            write_all(fd, json.dumps(about).encode())
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return self

    def _take(self, fd: int) -> None:
        if safe_fs.try_lock(fd):
            return
        about = holder(self.path)
        if self.wait is not None and self.wait <= 0:
            raise LockError(f"{describe(about)} holds the host lock {self.path}, so this {self.operation} did not run")
        limit = "" if self.wait is None else f" for up to {self.wait:g} s"
        self.log(f"waiting{limit} for {describe(about)} to release the host lock")
        deadline = None if self.wait is None else time.monotonic() + self.wait
        while not safe_fs.try_lock(fd):
            if deadline is not None and time.monotonic() >= deadline:
                about = holder(self.path) or about
                raise LockError(
                    f"{describe(about)} held the host lock {self.path} for the {self.wait:g} s this "
                    f"{self.operation} waited, so it did not run"
                )
            time.sleep(_POLL)

    def __exit__(self, *_exc: object) -> None:
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = -1


def held(directory: str | None = None) -> dict[str, object] | None:
    """The holder of the host lock when a live process holds it, else None (never takes it for long)."""
    path = os.path.join(state_dir(directory), LOCK_FILE)
    return (holder(path) or {"pid": "?"}) if safe_fs.in_use(path) else None
