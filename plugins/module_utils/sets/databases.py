# Copyright: selfhost.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Checking the databases of a set while verify() streams it: each SQLite member is held in memory (or spilled to a
private file beside the set when larger than memory_limit) and ``PRAGMA integrity_check``ed in a thread."""

from __future__ import annotations

import contextlib
import errno
import io
import os
import queue
import sqlite3
import tempfile
import threading

from .. import safe_fs
from .._common import MIB, BackupError
from ..sqlite_snapshot import check_copy, integrity_and_rows

# A database's integrity_check result ("ok" or what is wrong) and, when it is sound, every table's rows.
Checked = tuple[str, "dict[str, int] | None"]


class _Spill:
    """A private temporary directory for database copies that verify checks on disk, created on first use.

    It lives in the backup directory's file system (or one the caller names), is locked while in use so the
    next run's sweep can tell it from a leftover, and is removed at the end, whatever happened.
    """

    def __init__(self, base: str) -> None:
        self.base = base
        self.path = ""
        self._fd = -1
        self._n = 0

    def new_file(self, member: str, size: int) -> tuple[str, io.BufferedWriter]:
        if not self.path:
            try:
                self.path = tempfile.mkdtemp(prefix=".selfhost-dr-verify-", dir=self.base)
                self._fd = safe_fs.open_dir(self.path)
                safe_fs.lock(self._fd)
            except OSError as exc:
                raise self.error(exc, member, size) from exc
        self._n += 1
        path = os.path.join(self.path, f"{self._n}.db")
        try:
            return path, open(path, "xb")
        except OSError as exc:
            raise self.error(exc, member, size) from exc

    def error(self, exc: OSError, member: str, size: int) -> BackupError:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return BackupError(
                f"the temporary directory {self.base} is full: checking database {member} needs {size / MIB:.1f} MiB "
                "there (set tmpdir to a larger file system)"
            )
        return BackupError(f"cannot write a temporary copy of database {member} in {self.base}: {exc.strerror}")

    def close(self) -> None:
        if self.path:
            safe_fs.remove_path(self.path)
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class _Checker(threading.Thread):
    """Runs integrity_check on the archive's databases while the stream goes on (SQLite releases the GIL), and
    counts the rows of those that pass."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.results: list[tuple[str, Checked]] = []
        self._queue: queue.Queue[tuple[str, bytearray | str, bool] | None] = queue.Queue(maxsize=2)

    def submit(self, name: str, data: bytearray | str, remove: bool = False) -> None:
        """Check ``data`` (the bytes, or the path of a copy on disk, removed afterwards when ``remove``)."""
        self._queue.put((name, data, remove))

    def run(self) -> None:
        while (item := self._queue.get()) is not None:
            name, data, remove = item
            if isinstance(data, str):
                self.results.append((name, _integrity_of_file(data)))
                if remove:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(data)
            else:
                self.results.append((name, _integrity_of_bytes(data)))

    def finish(self) -> list[tuple[str, Checked]]:
        self._queue.put(None)
        self.join()
        return self.results


def _integrity_of_bytes(data: bytearray) -> Checked:
    data[18:20] = b"\x01\x01"  # an in-memory database cannot be in WAL mode; the check is the same
    conn = sqlite3.connect(":memory:")
    try:
        conn.deserialize(data)
        return integrity_and_rows(conn)
    except sqlite3.DatabaseError as exc:
        return str(exc), None
    finally:
        conn.close()


def _integrity_of_file(path: str) -> Checked:
    return check_copy(path)  # (a copy in verify's own spill directory, or the restore's staging file)
