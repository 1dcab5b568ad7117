# Copyright: selfhost.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Consistent copies of live SQLite databases.

Standard library only. A database is copied with SQLite's online backup API in
*one step* (``Connection.backup(pages=-1)``): a stepped backup restarts every
time another connection commits, and under a writer committing continuously
it never finishes (issue 3 reports ``sqlite3 db ".backup"``, which steps 100
pages at a time, never finishing within 60 s at 200 commits/s on 200 MiB,
while the one-step copy took 0.3 s). The copy is one point in time: the backup holds a
read transaction for its whole duration. ``VACUUM INTO`` is the alternative
(``method="vacuum"``): also one read transaction, and it writes a compacted copy.

The copy is checked with ``PRAGMA integrity_check``, keeps the source's journal
mode (a WAL database stays WAL, with no ``-wal`` file beside the copy), and is
fsynced before it is renamed into place.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sqlite3
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

SQLITE_HEADER = b"SQLite format 3\x00"
_CHUNK = 1024 * 1024


class SnapshotError(Exception):
    """A failure with one sentence that says what went wrong."""


def is_sqlite(path: str) -> bool:
    """True when ``path`` is a SQLite database by its header (not by its name)."""
    try:
        with open(path, "rb") as handle:
            return handle.read(len(SQLITE_HEADER)) == SQLITE_HEADER
    except (IsADirectoryError, FileNotFoundError, PermissionError):
        return False


def journal_mode_of_file(path: str) -> str:
    """``wal`` or ``rollback``, from the file format bytes of the header (offsets 18 and 19)."""
    with open(path, "rb") as handle:
        header = handle.read(20)
    if len(header) < 20 or not header.startswith(SQLITE_HEADER):
        raise SnapshotError(f"{path} is not a SQLite database")
    return "wal" if header[18] == 2 and header[19] == 2 else "rollback"


def sha256_file(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class Snapshot:
    """What a snapshot produced, as modules return it."""

    source: str
    path: str
    size: int
    pages: int
    page_size: int
    sha256: str
    journal_mode: str
    method: str
    duration: float
    attempts: int
    integrity: str

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def fsync_dir(directory: str) -> None:
    """Make the entries of ``directory`` (a rename into it) durable."""
    fd = os.open(directory or ".", os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def check_source(source: str) -> None:
    """Raise SnapshotError unless ``source`` is a readable SQLite database."""
    if not os.path.exists(source):
        raise SnapshotError(f"database {source} does not exist")
    if not os.access(source, os.R_OK):
        raise SnapshotError(f"database {source} cannot be read: permission denied")
    if not is_sqlite(source):
        raise SnapshotError(f"{source} is not a SQLite database (its header is not 'SQLite format 3')")


def _open_source(source: str, lock_timeout: float) -> sqlite3.Connection:
    # The connection's timeout is SQLite's busy timeout for each statement. Reading
    # through mmap saves a copy per page; it changes nothing on disk.
    conn = sqlite3.connect(source, timeout=lock_timeout, isolation_level=None)
    conn.execute("PRAGMA mmap_size = 1073741824")
    return conn


def _is_busy(exc: sqlite3.Error) -> bool:
    text = str(exc).lower()
    return "locked" in text or "busy" in text


class _LockTimeoutError(Exception):
    pass


def _retry_while_busy(
    attempt: Callable[[], None], discard: Callable[[], None], deadline: float, clock: Callable[[], float]
) -> int:
    """Run ``attempt`` until it is not refused by a lock (``discard`` drops its partial copy), or the deadline
    passes; return how many attempts it took."""
    attempts = 0
    while True:
        attempts += 1
        try:
            attempt()
            return attempts
        except sqlite3.OperationalError as exc:
            if not _is_busy(exc):
                raise
            discard()
            if clock() >= deadline:
                raise _LockTimeoutError() from exc
            time.sleep(0.05)


def snapshot(
    source: str,
    dest: str,
    method: str = "backup",
    lock_timeout: float = 30.0,
    check_integrity: bool = True,
    clock: Callable[[], float] = time.monotonic,
    durable: bool = True,
    digest: bool = True,
) -> Snapshot:
    """Copy the live database ``source`` to ``dest`` consistently; return what was made.

    ``dest`` is written as ``dest + ".tmp-snapshot"`` first and renamed only once
    the copy is complete, fsynced and (optionally) checked: a failure leaves no
    file at ``dest``. ``lock_timeout`` bounds how long a writer holding an
    exclusive lock (rollback journal mode) may keep the copy waiting.
    ``durable=False`` skips the fsyncs and ``digest=False`` the sha256, for a
    temporary copy that a caller streams (and hashes) right away.
    """
    if method not in ("backup", "vacuum"):
        raise SnapshotError(f"method must be 'backup' or 'vacuum', got {method!r}")
    started = clock()
    deadline = started + lock_timeout
    tmp = dest + ".tmp-snapshot"
    for leftover in (tmp, tmp + "-journal", tmp + "-wal", tmp + "-shm"):
        _remove(leftover)
    check_source(source)
    # From the header: asking the connection would need a lock a writer may hold.
    source_mode = journal_mode_of_file(source)
    try:
        with contextlib.closing(_open_source(source, lock_timeout)) as src:
            attempts = _retry_while_busy(
                lambda: _copy(src, tmp, method, deadline, clock), lambda: _remove(tmp), deadline, clock
            )
        pages, page_size, integrity = _finish(tmp, source_mode == "wal", check_integrity)
        if check_integrity and integrity != "ok":
            raise SnapshotError(f"the copy of {source} fails integrity_check: {integrity}")
        if durable:
            with open(tmp, "rb+") as handle:
                os.fsync(handle.fileno())
        os.replace(tmp, dest)
        if durable:
            fsync_dir(os.path.dirname(os.path.abspath(dest)))
    except BaseException as exc:
        _remove(tmp)
        raise _translate(exc, source, dest, lock_timeout) from exc
    return Snapshot(
        source=source,
        path=dest,
        size=os.path.getsize(dest),
        pages=pages,
        page_size=page_size,
        sha256=sha256_file(dest) if digest else "",
        journal_mode=journal_mode_of_file(dest),
        method=method,
        duration=round(clock() - started, 6),
        attempts=attempts,
        integrity=integrity if check_integrity else "not checked",
    )


def _copy(src: sqlite3.Connection, tmp: str, method: str, deadline: float, clock: Callable[[], float]) -> None:
    if method == "vacuum":
        src.execute("VACUUM INTO ?", (tmp,))
        return
    dst = sqlite3.connect(tmp, isolation_level=None)
    try:
        _backup_one_step(src, dst, deadline, clock)
    finally:
        dst.close()


def _backup_one_step(
    src: sqlite3.Connection, dst: sqlite3.Connection, deadline: float, clock: Callable[[], float]
) -> None:
    def give_up_when_late(status: int, remaining: int, total: int) -> None:
        # CPython retries a busy backup step forever; this bounds it.
        if status in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED) and clock() >= deadline:
            raise _LockTimeoutError()

    # One step: the whole database under one read transaction (see module doc).
    src.backup(dst, pages=-1, progress=give_up_when_late, sleep=0.05)


def snapshot_connection(
    source: str, lock_timeout: float = 30.0, clock: Callable[[], float] = time.monotonic
) -> tuple[sqlite3.Connection, int]:
    """Copy the live database ``source`` into an in-memory database; return the connection and the attempts it took.

    The same one-step online backup as :func:`snapshot`: one point in time of
    the source, however busy its writers are. The caller closes the connection.
    """
    deadline = clock() + lock_timeout
    check_source(source)
    dst = sqlite3.connect(":memory:", isolation_level=None)

    def fresh_copy() -> None:
        nonlocal dst
        dst.close()
        dst = sqlite3.connect(":memory:", isolation_level=None)

    try:
        with contextlib.closing(_open_source(source, lock_timeout)) as src:
            attempts = _retry_while_busy(
                lambda: _backup_one_step(src, dst, deadline, clock), fresh_copy, deadline, clock
            )
    except BaseException as exc:
        dst.close()
        raise _translate(exc, source, "memory", lock_timeout) from exc
    return dst, attempts


def snapshot_bytes(
    source: str,
    lock_timeout: float = 30.0,
    check_integrity: bool = True,
    clock: Callable[[], float] = time.monotonic,
    digest: bool = True,
) -> tuple[bytes, Snapshot]:
    """Copy the live database ``source`` into memory consistently; return its bytes and what was made.

    The same one-step online backup as :func:`snapshot`, into an in-memory
    database, then serialized: nothing touches the disk, which is what
    ``backup_create`` wants for the many small databases of a tree. The bytes
    are a complete database file with the source's journal mode in its header.
    ``digest=False`` leaves ``sha256`` empty for a caller that hashes the bytes as it writes them.
    """
    started = clock()
    check_source(source)
    source_mode = journal_mode_of_file(source)
    dst, attempts = snapshot_connection(source, lock_timeout, clock)
    try:
        with contextlib.closing(dst):
            integrity = integrity_of(dst) if check_integrity else "not checked"
            pages = int(dst.execute("PRAGMA page_count").fetchone()[0])
            page_size = int(dst.execute("PRAGMA page_size").fetchone()[0])
            data = dst.serialize()
    except BaseException as exc:
        raise _translate(exc, source, "memory", lock_timeout) from exc
    if check_integrity and integrity != "ok":
        raise SnapshotError(f"the copy of {source} fails integrity_check: {integrity}")
    # The header's bytes 18 and 19 say WAL (2) or rollback (1); the backup copies them from the source.
    version = b"\x02\x02" if source_mode == "wal" else b"\x01\x01"
    if data[18:20] != version:
        data = data[:18] + version + data[20:]
    return data, Snapshot(
        source=source,
        path="",
        size=len(data),
        pages=pages,
        page_size=page_size,
        sha256=hashlib.sha256(data).hexdigest() if digest else "",
        journal_mode=source_mode,
        method="backup",
        duration=round(clock() - started, 6),
        attempts=attempts,
        integrity=integrity,
    )


def integrity_of(conn: sqlite3.Connection) -> str:
    """``ok``, or the first problems ``PRAGMA integrity_check`` reports."""
    rows = [str(r[0]) for r in conn.execute("PRAGMA integrity_check").fetchall()]
    return "ok" if rows == ["ok"] else "; ".join(rows[:5])


def _translate(exc: BaseException, source: str, dest: str, lock_timeout: float) -> BaseException:
    """One sentence for every way a copy fails; other exceptions pass unchanged."""
    if isinstance(exc, _LockTimeoutError):
        return SnapshotError(f"database {source} stayed locked by another process for longer than {lock_timeout:g} s")
    if isinstance(exc, sqlite3.DatabaseError):
        return SnapshotError(f"could not copy database {source}: {exc}")
    if isinstance(exc, OSError):
        return SnapshotError(f"could not write the copy of {source} to {dest}: {exc.strerror}")
    return exc


def _finish(tmp: str, wal: bool, check_integrity: bool) -> tuple[int, int, str]:
    conn = sqlite3.connect(tmp, isolation_level=None)
    try:
        conn.execute(f"PRAGMA journal_mode = {'WAL' if wal else 'DELETE'}")
        integrity = integrity_of(conn) if check_integrity else "ok"
        pages = int(conn.execute("PRAGMA page_count").fetchone()[0])
        page_size = int(conn.execute("PRAGMA page_size").fetchone()[0])
        if wal:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    # Closing the last connection of a WAL database removes its -wal and -shm.
    for extra in (tmp + "-wal", tmp + "-shm"):
        _remove(extra)
    return pages, page_size, integrity


def _remove(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
