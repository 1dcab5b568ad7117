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
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TypeVar

from ._common import Error, fsync_dir

SQLITE_HEADER = b"SQLite format 3\x00"
_CHUNK = 1024 * 1024


class SnapshotError(Error):
    """A failure with one sentence that says what went wrong."""


class NotADatabaseError(SnapshotError):
    """The file starts like a SQLite database, but SQLite cannot read it as one (not a database, or damaged)."""


class CannotOpenError(SnapshotError):
    """SQLite cannot open the file (a path longer than it allows, a -wal or -shm it refuses, ...)."""


class ReplacedError(SnapshotError):
    """The file SQLite opened is not the one the caller checked (it was replaced, by a link or another file)."""


Identity = tuple[int, int]  # (st_dev, st_ino) of the file a caller checked


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


def sha256_fd(fd: int) -> tuple[str, int]:
    """The sha256 and size of an open file, read with ``pread`` (the descriptor's offset is untouched)."""
    digest = hashlib.sha256()
    offset = 0
    while chunk := os.pread(fd, _CHUNK, offset):
        digest.update(chunk)
        offset += len(chunk)
    return digest.hexdigest(), offset


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
    rows: dict[str, int] | None = None  # every table's rows in the copy (row_counts), when they were counted

    def to_dict(self) -> dict[str, object]:
        made = asdict(self)
        if self.rows is None:
            del made["rows"]
        return made


def check_source(source: str) -> None:
    """Raise SnapshotError unless ``source`` is a readable SQLite database."""
    if not os.path.exists(source):
        raise SnapshotError(f"database {source} does not exist")
    if not os.access(source, os.R_OK):
        raise SnapshotError(f"database {source} cannot be read: permission denied")
    if not is_sqlite(source):
        raise SnapshotError(f"{source} is not a SQLite database (its header is not 'SQLite format 3')")


def _fds_of(identity: Identity) -> set[int]:
    """This process's open descriptors of the file ``identity`` (device, inode)."""
    try:
        numbers = [int(n) for n in os.listdir("/proc/self/fd")]
    except OSError:
        return set()
    found = set()
    dev, ino = identity
    for fd in numbers:
        try:
            st = os.fstat(fd)
        except OSError:
            continue
        if st.st_ino == ino and st.st_dev == dev:
            found.add(fd)
    return found


def _open_source(source: str, lock_timeout: float, expect: Identity | None = None) -> tuple[sqlite3.Connection, str]:
    """A connection to ``source`` and its journal mode (from the header).

    With ``expect``, the file SQLite opened must be that file (device, inode): SQLite opens by name and
    follows links, so the descriptor it holds is found among those it opened and compared, and the header
    is read from that descriptor. Otherwise ``ReplacedError``.
    """
    conn, mode, _fd = _open_checked(source, lock_timeout, expect)
    return conn, mode


# Held while a database is opened by name and SQLite's descriptor found among the process's (and by callers that
# open files in other threads meanwhile, see repos/stage.py).
OPEN_LOCK = threading.Lock()


def _open_checked(
    source: str, lock_timeout: float, expect: Identity | None, any_thread: bool = False
) -> tuple[sqlite3.Connection, str, int]:
    """:func:`_open_source`, and SQLite's own descriptor of the file it opened (-1 without ``expect``).

    ``any_thread``: the connection may be used (never concurrently) from another thread than this one.
    """
    # The connection's timeout is SQLite's busy timeout for each statement. Reading
    # through mmap saves a copy per page; it changes nothing on disk.
    if expect is None:
        conn = sqlite3.connect(source, timeout=lock_timeout, isolation_level=None, check_same_thread=not any_thread)
        try:
            conn.execute("PRAGMA mmap_size = 1073741824")
        except BaseException:
            conn.close()
            raise
        return conn, journal_mode_of_file(source), -1
    # mode=rw: SQLite never creates the file, so a link swapped in before it opens cannot make root create one
    # anywhere; read-write (not read-only) because opening a FIFO swapped in for reading would block forever.
    # Nothing is read or written before the descriptor is checked below. SQLite (3.40) refuses a -wal or -shm
    # that is a link (tests/unit/test_attack_backup.py swaps both). The descriptor SQLite opened is the one that
    # appeared during connect(): no other thread of this process opens a file meanwhile (OPEN_LOCK), or its
    # descriptor of the expected file (a hard link's) would pass for SQLite's.
    uri = f"file:{urllib.parse.quote(os.path.abspath(source))}?mode=rw"
    with OPEN_LOCK:
        before = _fds_of(expect)
        conn = sqlite3.connect(
            uri, timeout=lock_timeout, isolation_level=None, uri=True, check_same_thread=not any_thread
        )
        try:
            opened = sorted(_fds_of(expect) - before)
        except BaseException:
            conn.close()
            raise
    try:
        if not opened:
            raise ReplacedError(f"{source} was replaced while it was being backed up; it was not read")
        header = os.pread(opened[0], 20, 0)
        if len(header) < 20 or not header.startswith(SQLITE_HEADER):
            raise NotADatabaseError(f"{source} is not a SQLite database")
        conn.execute("PRAGMA mmap_size = 1073741824")
        return conn, "wal" if header[18] == 2 and header[19] == 2 else "rollback", opened[0]
    except BaseException:
        conn.close()
        raise


# The byte of a WAL database's -shm file that SQLite's unix VFS locks (fcntl, shared) for a reader on read mark 0
# (WALINDEX_LOCK_OFFSET 120 + WAL_READ_LOCK(0) 3): a reader that reads the database file alone, never the WAL.
_READ_MARK_0_BYTE = 123


@dataclass
class Held:
    """A read transaction on a live WAL database that sees the database file alone (SQLite's read mark 0): every
    commit in its WAL was already copied into the file when it began, and while it is open no checkpoint can write to
    the file (a checkpoint needs read mark 0 to itself). The file's bytes are then one consistent point in time, and
    stay so until :meth:`close`: the application's writers go on committing to the WAL meanwhile."""

    conn: sqlite3.Connection
    fd: int  # SQLite's own descriptor of the file (checked to be the file the caller scanned)

    def stat(self) -> os.stat_result:
        return os.fstat(self.fd)

    def sha256(self) -> tuple[str, int]:
        """The sha256 and size of the file, read through SQLite's descriptor (``pread``: its offset is untouched)."""
        return sha256_fd(self.fd)

    def close(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self.conn.close()


def _holds_read_mark_0(shm: str) -> bool:
    """Whether this process holds SQLite's read-mark-0 lock of the WAL index ``shm``, by the kernel's lock table.
    (Never by opening ``shm``: closing any descriptor of a file lets go of every lock the process holds on it.)"""
    try:
        st = os.stat(shm)
        with open("/proc/locks", "rb") as table:
            lines = table.read().decode("ascii", "replace").splitlines()
    except OSError:
        return False
    where = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    pid = str(os.getpid())
    for line in lines:
        if where not in line:
            continue
        fields = line.split()
        # "1: POSIX  ADVISORY  READ 1234 fe:01:5678 123 123"; a waiter's line has "->" after the number.
        if len(fields) != 8 or fields[1] != "POSIX" or fields[3] != "READ" or fields[4] != pid or fields[5] != where:
            continue
        end = (1 << 63) if fields[7] == "EOF" else int(fields[7])
        if int(fields[6]) <= _READ_MARK_0_BYTE <= end:
            return True
    return False


def hold(source: str, lock_timeout: float, expect: Identity, tries: int = 3) -> Held | None:
    """A :class:`Held` read transaction on the WAL database ``source`` (which must be the file ``expect``), or None
    where there is none to be had: a database in rollback-journal mode (a reader there would block its writers), or a
    WAL that a writer keeps adding to between the checkpoint that empties it and the read that begins after it.
    Any error is None too: the caller copies the database instead, and that copy reports it."""
    try:
        conn, mode, fd = _open_checked(source, lock_timeout, expect, any_thread=True)
    except (sqlite3.Error, SnapshotError, OSError):
        return None
    try:
        if mode != "wal":
            conn.close()
            return None
        for _attempt in range(tries):
            busy, frames, copied = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            if busy or frames != copied:
                continue
            conn.execute("BEGIN")
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()  # the read transaction begins here
            if _holds_read_mark_0(source + "-shm"):
                return Held(conn, fd)
            conn.execute("COMMIT")
    except sqlite3.Error:
        pass
    except BaseException:
        conn.close()
        raise
    conn.close()
    return None


def row_counts(conn: sqlite3.Connection) -> dict[str, int]:
    """Every table's number of rows (``SELECT count(*)``), as this connection's read transaction sees them: what a
    restore or a drill compares exactly without knowing the application. Virtual tables are left out (their module may
    be missing where they are counted; their shadow tables are counted). Raises sqlite3.Error for a damaged
    database."""
    tables = conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND sql NOT LIKE 'CREATE VIRTUAL%' ORDER BY name"
    ).fetchall()
    counts: dict[str, int] = {}
    for (name,) in tables:
        if isinstance(name, str):
            quoted = '"' + name.replace('"', '""') + '"'
            counts[name] = int(conn.execute(f"SELECT count(*) FROM {quoted}").fetchone()[0])  # noqa: S608 (quoted)
    return counts


T = TypeVar("T")


def _on_copy(path: str, read: Callable[[sqlite3.Connection], T], failed: Callable[[sqlite3.Error], T]) -> T:
    """``read`` on a copy nothing else writes (opened ``immutable``: no locks, no -wal or -shm made beside it), or
    ``failed`` with SQLite's error when it cannot be opened or read (a damaged database)."""
    try:
        conn = sqlite3.connect(f"file:{urllib.parse.quote(path)}?immutable=1", uri=True)
    except sqlite3.Error as exc:
        return failed(exc)
    try:
        conn.execute("PRAGMA mmap_size = 1073741824")
        return read(conn)
    except sqlite3.Error as exc:
        return failed(exc)
    finally:
        conn.close()


def row_counts_of_file(path: str) -> dict[str, int] | None:
    """:func:`row_counts` of a copy nothing else writes; None when SQLite cannot count them (a damaged database)."""
    return _on_copy(path, row_counts, lambda _exc: None)


def integrity_and_rows(conn: sqlite3.Connection) -> tuple[str, dict[str, int] | None]:
    """``PRAGMA integrity_check`` ("ok" or what is wrong) and, when the database is sound, :func:`row_counts`."""
    result = integrity_of(conn)
    return result, row_counts(conn) if result == "ok" else None


def check_copy(path: str) -> tuple[str, dict[str, int] | None]:
    """:func:`integrity_and_rows` of a copy nothing else writes (one connection); SQLite's error and None when it
    cannot be opened or read."""
    return _on_copy(path, integrity_and_rows, lambda exc: (str(exc), None))


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
    expect: Identity | None = None,
) -> Snapshot:
    """Copy the live database ``source`` to ``dest`` consistently; return what was made.

    ``dest`` is written as ``dest + ".tmp-snapshot"`` first and renamed only once
    the copy is complete, fsynced and (optionally) checked: a failure leaves no
    file at ``dest``. ``lock_timeout`` bounds how long a writer holding an
    exclusive lock (rollback journal mode) may keep the copy waiting.
    ``durable=False`` skips the fsyncs and ``digest=False`` the sha256, for a
    temporary copy that a caller streams (and hashes) right away. ``expect``
    (device, inode) is the file the caller checked: the copy is refused with
    ``ReplacedError`` when SQLite opened another one.
    """
    if method not in ("backup", "vacuum"):
        raise SnapshotError(f"method must be 'backup' or 'vacuum', got {method!r}")
    started = clock()
    deadline = started + lock_timeout
    tmp = dest + ".tmp-snapshot"
    for leftover in (tmp, tmp + "-journal", tmp + "-wal", tmp + "-shm"):
        _remove(leftover)
    if expect is None:
        check_source(source)
    try:
        # From the header: asking the connection would need a lock a writer may hold.
        src, source_mode = _open_source(source, lock_timeout, expect)
        with contextlib.closing(src):
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
        # The copy is a new private file, renamed into place only once complete (and fsynced by the caller when it
        # must be durable): SQLite's own journal and syncs would only cost a few fsyncs per database.
        dst.execute("PRAGMA journal_mode = OFF")
        dst.execute("PRAGMA synchronous = OFF")
        _backup_one_step(src, dst, deadline, clock)
    finally:
        dst.close()


def _backup_one_step(
    src: sqlite3.Connection,
    dst: sqlite3.Connection,
    deadline: float,
    clock: Callable[[], float],
    rows: dict[str, int] | None = None,
) -> None:
    """The copy; with ``rows``, also every table's row count (:func:`row_counts`) of the very state copied: counted
    on the copy (rollback journal), or for a WAL database in the source's read transaction the copy is made in."""

    def give_up_when_late(status: int, remaining: int, total: int) -> None:
        # CPython retries a busy backup step forever; this bounds it.
        if status in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED) and clock() >= deadline:
            raise _LockTimeoutError()

    wal = rows is not None and str(src.execute("PRAGMA journal_mode").fetchone()[0]).lower() == "wal"
    if rows is None or not wal:
        # One step: the whole database under one read transaction (see module doc).
        src.backup(dst, pages=-1, progress=give_up_when_late, sleep=0.05)
        if rows is not None:  # (rollback journal: counted on the copy, the writers never wait for it)
            rows.clear()
            try:
                rows.update(row_counts(dst))
            except sqlite3.DatabaseError:  # damaged: copied as it is, with no counts
                rows.clear()
        return
    # WAL: the copy of a WAL database (its header says so) cannot be queried in memory, so the rows are counted on
    # the source, in the read transaction the copy is made in; a WAL reader keeps no writer waiting.
    rows.clear()
    src.execute("BEGIN")
    try:
        src.execute("SELECT count(*) FROM sqlite_master").fetchone()  # the read transaction holds from here
        src.backup(dst, pages=-1, progress=give_up_when_late, sleep=0.05)  # (in it: the same state)
        try:
            rows.update(row_counts(src))
        except sqlite3.DatabaseError:  # damaged: copied as it is, with no counts (rows stays empty)
            rows.clear()
    finally:
        with contextlib.suppress(sqlite3.Error):
            src.execute("COMMIT")


def snapshot_connection(
    source: str,
    lock_timeout: float = 30.0,
    clock: Callable[[], float] = time.monotonic,
    expect: Identity | None = None,
) -> tuple[sqlite3.Connection, int]:
    """Copy the live database ``source`` into an in-memory database; return the connection and the attempts it took.

    The same one-step online backup as :func:`snapshot`: one point in time of
    the source, however busy its writers are. The caller closes the connection.
    """
    conn, _attempts, _mode = _snapshot_to_memory(source, lock_timeout, clock, expect)
    return conn, _attempts


def _memory_db(memdb: bool) -> sqlite3.Connection:
    """An empty in-memory database: SQLite's ``memdb`` VFS (its pages in one buffer, which ``serialize`` hands over
    without copying) when ``memdb`` and SQLite has it, else ``:memory:`` (pages in the page cache)."""
    if memdb:
        with contextlib.suppress(sqlite3.Error):
            # A name without a leading "/" is private to this connection.
            return sqlite3.connect("file:snapshot?vfs=memdb", uri=True, isolation_level=None)
    return sqlite3.connect(":memory:", isolation_level=None)


def _snapshot_to_memory(
    source: str,
    lock_timeout: float,
    clock: Callable[[], float],
    expect: Identity | None,
    memdb: bool = False,
    rows: dict[str, int] | None = None,
) -> tuple[sqlite3.Connection, int, str]:
    deadline = clock() + lock_timeout
    if expect is None:
        check_source(source)
    dst = _memory_db(memdb)

    def fresh_copy() -> None:
        nonlocal dst
        dst.close()
        dst = _memory_db(memdb)

    try:
        src, mode = _open_source(source, lock_timeout, expect)
        with contextlib.closing(src):
            attempts = _retry_while_busy(
                lambda: _backup_one_step(src, dst, deadline, clock, rows), fresh_copy, deadline, clock
            )
    except BaseException as exc:
        dst.close()
        raise _translate(exc, source, "memory", lock_timeout) from exc
    return dst, attempts, mode


def integrity_of(conn: sqlite3.Connection) -> str:
    """``ok``, or the first problems ``PRAGMA integrity_check`` reports."""
    rows = [str(r[0]) for r in conn.execute("PRAGMA integrity_check").fetchall()]
    return "ok" if rows == ["ok"] else "; ".join(rows[:5])


def _translate(exc: BaseException, source: str, dest: str, lock_timeout: float) -> BaseException:
    """One sentence for every way a copy fails; other exceptions pass unchanged."""
    if isinstance(exc, SnapshotError):
        return exc
    if isinstance(exc, _LockTimeoutError):
        return SnapshotError(f"database {source} stayed locked by another process for longer than {lock_timeout:g} s")
    if isinstance(exc, sqlite3.DatabaseError) and _not_a_database(exc):
        return NotADatabaseError(f"SQLite cannot read {source} as a database: {exc}")
    if isinstance(exc, sqlite3.DatabaseError) and _code(exc) == 14:  # SQLITE_CANTOPEN
        if dest == "memory" or os.path.isdir(os.path.dirname(os.path.abspath(dest))):
            return CannotOpenError(f"SQLite cannot open {source}: {exc}")
        return SnapshotError(f"could not write the copy of {source}: {os.path.dirname(dest)} does not exist")
    if isinstance(exc, sqlite3.DatabaseError):
        return SnapshotError(f"could not copy database {source}: {exc}")
    if isinstance(exc, OSError):
        return SnapshotError(f"could not write the copy of {source} to {dest}: {exc.strerror}")
    return exc


def _code(exc: sqlite3.DatabaseError) -> int:
    """SQLite's primary result code (Python 3.11+), or one guessed from the message."""
    code = getattr(exc, "sqlite_errorcode", None)
    if isinstance(code, int):
        return code & 0xFF
    text = str(exc).lower()
    if "not a database" in text:
        return 26
    if "malformed" in text:
        return 11
    return 14 if "unable to open" in text else 1


def _not_a_database(exc: sqlite3.DatabaseError) -> bool:
    return _code(exc) in (11, 26)  # SQLITE_CORRUPT, SQLITE_NOTADB


def _finish(tmp: str, wal: bool, check_integrity: bool) -> tuple[int, int, str]:
    conn = sqlite3.connect(tmp, isolation_level=None)
    try:
        conn.execute("PRAGMA synchronous = OFF")  # (see _copy)
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


def open_checked(source: str, lock_timeout: float, expect: Identity) -> sqlite3.Connection:
    """A read-write connection to the existing database ``source``, which must be the file ``expect`` (device,
    inode): the same check as a snapshot's, for the few writes the collection makes to a restored database."""
    try:
        conn, _ = _open_source(source, lock_timeout, expect)
    except sqlite3.Error as exc:
        raise SnapshotError(f"cannot open {source}: {exc}") from exc
    return conn
