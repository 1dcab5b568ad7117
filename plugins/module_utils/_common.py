# Copyright: selfhost.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What every part of the core shares: the error classes, the logging hook, atomic writes and fsync, time.

Standard library only, like all of ``module_utils``: the same code runs inside Ansible modules and as the host
command ``selfhost-dr``.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
from collections.abc import Callable
from datetime import datetime, timezone

from . import safe_fs

MIB = 1024 * 1024


# Where the core reports progress and what it did, one line at a time (a module's log, the command's stderr).
Log = Callable[[str], None]


class Error(Exception):
    """A failure of selfhost.dr, with one sentence that says what went wrong (``str(exc)``).

    Every error the core raises on purpose is one of these; the modules and the host command turn it into a
    failed result with that sentence as its message, and anything else is a bug.
    """


class BackupError(Error):
    """Making, verifying, listing or deleting a backup set failed."""


class RestoreError(Error):
    """Putting a set back failed, or a restore cannot be committed or rolled back."""


class VerificationError(RestoreError, BackupError):
    """A set failed verification: it is not restored, and a backup that wrote it failed."""


class RollbackError(RestoreError):
    """A restore failed, and putting the previous data back failed too: the host needs a person."""


class JournalError(Error):
    """The on-host journal of restores cannot be read or written."""


class UsageError(Error):
    """The command line or the configuration of the host command is wrong (its exit status 2)."""


class AppError(Error):
    """An application (tenement, Tomo) cannot be inspected, stopped, started or checked."""


def no_log(_line: str) -> None:
    return None


try:
    _LIBC: ctypes.CDLL | None = ctypes.CDLL(None, use_errno=True)
except OSError:  # pragma: no cover - not Linux
    _LIBC = None
_PR_SET_PDEATHSIG = 1
_SETPRIV = shutil.which("setpriv", path=os.defpath + ":/usr/bin:/bin")


def die_with_parent() -> None:
    """In a child between fork and exec: be killed when this process dies (Linux). The fallback of
    :func:`dying_with_parent`, for hosts without ``setpriv``."""
    if _LIBC is not None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def dying_with_parent(argv: list[str]) -> tuple[list[str], Callable[[], None] | None]:
    """``argv`` (and a ``preexec_fn``) for a child that is SIGKILLed when this process dies, so a killed backup
    never leaves a compressor running.

    Through ``setpriv --pdeathsig KILL`` (util-linux) when the host has it, so that no Python code runs between
    fork and exec: a ``preexec_fn`` in a process with threads can deadlock on a lock another thread held at the
    fork (seen with tracemalloc's). Without setpriv, ``die_with_parent`` runs as the ``preexec_fn``."""
    if _SETPRIV:
        return [_SETPRIV, "--pdeathsig", "KILL", "--", *argv], None
    return list(argv), die_with_parent


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


def iso(when: datetime) -> str:
    return when.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_iso(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc)


def write_all(fd: int, data: bytes | memoryview) -> None:
    """``os.write`` until every byte is written."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def atomic_write(path: str, data: bytes, mode: int = 0o600) -> None:
    """Write ``path`` atomically: a temp name (locked while it is written, never a link followed), fsync, rename."""
    tmp = path + ".partial"
    with contextlib.suppress(FileNotFoundError):
        if not safe_fs.in_use(tmp):
            os.unlink(tmp)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        safe_fs.lock(fd)
        write_all(fd, data)
        if mode != 0o600:
            os.fchmod(fd, mode)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def fsync_dir(directory: str) -> None:
    """Make the entries of ``directory`` (a rename into it) durable."""
    fd = os.open(directory or ".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
