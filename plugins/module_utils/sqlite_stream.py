# Copyright: selfhost.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Consistent copies of live SQLite databases made to be streamed into an archive and read once: in memory, in a
private staging file, or read straight from the database file while a read transaction keeps it from changing.
The copies that stay on disk, and the checks every copy shares, are in ``sqlite_snapshot.py``."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import sqlite3
import time
from collections.abc import Callable, Iterator

from .sqlite_snapshot import (
    _CHUNK,
    SQLITE_HEADER,
    Identity,
    Snapshot,
    SnapshotError,
    _backup_one_step,
    _is_busy,
    _open_checked,
    _open_source,
    _retry_while_busy,
    _snapshot_to_memory,
    _translate,
    integrity_of,
    row_counts,
)

# -- for streaming into an archive: copies made to be read once ------------------------------------------


def snapshot_in_memory(
    source: str,
    *,
    lock_timeout: float,
    check_integrity: bool,
    expect: Identity | None,
    clock: Callable[[], float] = time.monotonic,
    count_rows: bool = False,
) -> tuple[bytes, Snapshot, bytes]:
    """:func:`snapshot_bytes`, less one copy of the database: the header's bytes 18 and 19 (the source's journal
    mode, :func:`journal_version`) are returned for the reader to put in the first chunk it streams. The rest, the
    one-step backup and the check of the file SQLite opened (``expect``), is the same. ``count_rows``: the snapshot
    records every table's rows in the copy (:func:`row_counts`, counted in the same read transaction)."""
    started = clock()
    rows: dict[str, int] | None = {} if count_rows else None
    # Unchecked copies go to a memdb database, whose pages serialize() hands over without an extra copy: one copy of
    # the database less at the peak. It is only serialized: its header may say WAL, which a memdb database cannot
    # open again for a query, so the page size and count are read from the bytes.
    dst, attempts, mode = _snapshot_to_memory(source, lock_timeout, clock, expect, memdb=not check_integrity, rows=rows)
    try:
        with contextlib.closing(dst):
            if check_integrity:
                integrity = integrity_of(dst)
                pages = int(dst.execute("PRAGMA page_count").fetchone()[0])
                page_size = int(dst.execute("PRAGMA page_size").fetchone()[0])
                data = dst.serialize()
            else:
                integrity = "not checked"
                data = dst.serialize()
                page_size = int.from_bytes(data[16:18], "big") if len(data) >= 100 else 0
                page_size = 65536 if page_size == 1 else page_size
                pages = len(data) // page_size if page_size else 0
    except BaseException as exc:
        raise _translate(exc, source, "memory", lock_timeout) from exc
    if check_integrity and integrity != "ok":
        raise SnapshotError(f"the copy of {source} fails integrity_check: {integrity}")
    snap = Snapshot(
        source=source,
        path="",
        size=len(data),
        pages=pages,
        page_size=page_size,
        sha256="",
        journal_mode=mode,
        method="backup",
        duration=round(clock() - started, 6),
        attempts=attempts,
        integrity=integrity,
        rows=rows or None,
    )
    return data, snap, journal_version(mode)


def journal_version(mode: str) -> bytes:
    """A database header's bytes 18 and 19 for this journal mode: 2 (WAL) or 1 (rollback)."""
    return b"\x02\x02" if mode == "wal" else b"\x01\x01"


def snapshot_to_scratch(
    source: str,
    staged: str,
    *,
    lock_timeout: float,
    check_integrity: bool,
    expect: Identity,
    opened: tuple[sqlite3.Connection, str] | None = None,
    count_rows: bool = False,
) -> tuple[Snapshot, bytes]:
    """A consistent copy of the live database ``source`` in the private file ``staged``, made to be read once.

    The same one-step online backup (one read transaction, retried while a writer holds a lock) and the same check
    of the file SQLite opened (``expect``) as :func:`snapshot`, without what that function does to
    leave a database in place: the copy is written with no journal and no fsync (it is streamed into the archive
    and removed; a crash leaves it in the caller's private staging directory, which it sweeps), and the source is
    read without mmap, whose pages would count in this process's memory for the whole size of the database. Also
    returns the
    header's bytes 18 and 19 (WAL or rollback, the source's journal mode) for the reader to put in, as
    :func:`snapshot_in_memory` does. ``opened``: the connection to ``source`` (checked to be ``expect``, with no
    transaction open) and its journal mode, to use (and close) instead of opening it again.
    """
    clock = time.monotonic
    started = clock()
    deadline = started + lock_timeout
    dst: sqlite3.Connection | None = None
    rows: dict[str, int] | None = {} if count_rows else None

    def fresh() -> None:
        nonlocal dst
        if dst is not None:
            dst.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(staged)
        dst = sqlite3.connect(staged, isolation_level=None)
        dst.execute("PRAGMA journal_mode = OFF")
        dst.execute("PRAGMA synchronous = OFF")

    try:
        src, mode = opened if opened is not None else _open_source(source, lock_timeout, expect)
        opened = None
        with contextlib.closing(src):
            src.execute("PRAGMA mmap_size = 0")
            fresh()
            attempts = _retry_while_busy(
                lambda: _backup_one_step(src, dst, deadline, clock, rows),  # type: ignore[arg-type]
                fresh,
                deadline,
                clock,
            )
        assert dst is not None  # noqa: S101 - made by fresh()
        integrity = integrity_of(dst) if check_integrity else "not checked"
        dst.close()
        dst = None
        with open(staged, "rb") as handle:
            header = handle.read(100)
        size = os.path.getsize(staged)
    except BaseException as exc:
        if opened is not None:
            opened[0].close()
        if dst is not None:
            dst.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(staged)
        raise _translate(exc, source, staged, lock_timeout) from exc
    if check_integrity and integrity != "ok":
        os.unlink(staged)
        raise SnapshotError(f"the copy of {source} fails integrity_check: {integrity}")
    page_size = int.from_bytes(header[16:18], "big")
    page_size = 65536 if page_size == 1 else page_size
    snap = Snapshot(
        source=source,
        path=staged,
        size=size,
        pages=size // max(page_size, 1),
        page_size=page_size,
        sha256="",
        journal_mode=mode,
        method="backup",
        duration=round(clock() - started, 6),
        attempts=attempts,
        integrity=integrity,
        rows=rows or None,
    )
    return snap, journal_version(mode)


# -- the database file itself, read while a read transaction keeps it from changing ---------------------------
#
# Why the file's bytes are one point in time, the state of the read transaction that is held until the last byte:
#
# Rollback journal (delete, truncate, persist, ...): the read transaction holds a SHARED lock on the database file
# (taken by BEGIN + the first SELECT; a hot journal left by a crashed writer is rolled back before it is granted).
# A writer writes the database file only under an EXCLUSIVE lock, which it cannot get while any SHARED lock is held:
# the file is the transaction's snapshot until COMMIT.
#
# WAL: a writer appends frames to the -wal; only a checkpoint writes the database file (and truncates it). A
# checkpoint copies frames up to the smallest read mark held by a reader (a reader keeps WAL_READ_LOCK(i) shared,
# i > 0, with the last frame of its snapshot as mark i), and copies nothing without WAL_READ_LOCK(0) exclusive,
# which it cannot get while a reader holds it shared: a reader on slot 0 is one that ignores the -wal because all
# of it was already in the database file when it began (wal.c, walTryBeginRead and walCheckpoint). So the file is
# this transaction's snapshot, and stays it, when the snapshot has no frame (its last frame is 0: every page comes
# from the file, and a checkpoint may copy frames up to 0) or when it reads from slot 0. The copy is made only when
# the -wal that SQLite opened for this connection (its own descriptor, found like the database's) is empty while
# the transaction is held, which implies one of the two: a snapshot with frames was made from a -wal that held them,
# and the -wal only shrinks to 0 bytes by a TRUNCATE checkpoint, which needs WAL_READ_LOCK(1..) exclusive (it
# waits for every reader on a slot i > 0), or when the last connection closes, which needs an EXCLUSIVE lock on the
# database file (every connection in WAL mode holds a SHARED one). Leaving WAL mode needs that EXCLUSIVE lock too.
# A -wal that is not empty (a busy writer, or frames not yet checkpointed) makes :func:`snapshot_file` return
# None, and the caller makes its copy with the backup API instead. This module never checkpoints the source.
#
# The descriptor read is SQLite's own (os.pread, never closed here): closing another descriptor of the file in
# this process would drop SQLite's POSIX locks on it. The copy is the file's first page_count pages, byte for
# byte: it differs from what the backup API writes for the same content only in the header's change counter
# (bytes 24-27), schema cookie (40-43), version-valid-for (92-95) and the SQLite version that last wrote it
# (96-99), which the backup API sets as a new database's (1, 1, 1, this process's SQLite), and here are the
# source's (tests/unit/test_sqlite_file_copy.py). Bytes 18-19 are set as before (the source's journal mode).


class FileCopy:
    """A consistent copy of a live database read from its file: :attr:`snapshot` says what it is, :meth:`chunks`
    yields its bytes once, the header's bytes 18 and 19 set to ``version`` (:func:`journal_version`), while the read
    transaction is held; it ends after the last chunk, or with :meth:`close`."""

    def __init__(self, conn: sqlite3.Connection, fd: int, snap: Snapshot, version: bytes) -> None:
        self._conn: sqlite3.Connection | None = conn
        self._fd = fd
        self.snapshot = snap
        self.version = version

    def chunks(self, buf: bytearray | None = None) -> Iterator[memoryview]:
        """The database's ``snapshot.size`` bytes, each a view of one buffer (valid until the next is asked for)."""
        view = memoryview(buf if buf is not None else bytearray(_CHUNK))
        size, offset = self.snapshot.size, 0
        try:
            while offset < size:
                want = view[: min(len(view), size - offset)]
                got = os.preadv(self._fd, [want], offset)
                if got <= 0:  # cannot happen while the transaction is held; never padded
                    raise SnapshotError(f"{self.snapshot.source} ended at byte {offset} of {size} while it was copied")
                if offset == 0 and got >= 20:
                    want[18:20] = self.version
                offset += got
                yield want[:got]
        finally:
            self.close()

    def close(self) -> None:
        """Ends the read transaction and closes the connection (again: nothing)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(sqlite3.Error):
                if conn.in_transaction:
                    conn.execute("COMMIT")
            conn.close()


def _side_fd(fd: int, suffix: str, before: set[int]) -> int | None:
    """The one descriptor opened since ``before`` on the file named as ``fd``'s file plus ``suffix``, or None."""
    try:
        name = os.readlink(f"/proc/self/fd/{fd}") + suffix
        numbers = {int(n) for n in os.listdir("/proc/self/fd")} - before
    except OSError:
        return None
    found = []
    for number in numbers:
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/self/fd/{number}") == name:
                found.append(number)
    return found[0] if len(found) == 1 else None


def snapshot_file(
    source: str, staged: str, *, lock_timeout: float, check_integrity: bool, expect: Identity, count_rows: bool = False
) -> FileCopy | tuple[Snapshot, bytes]:
    """A consistent copy of the live database ``source`` read straight from its file (see the comment above); when
    that is not safe now (a WAL database whose -wal holds frames) or the source is busy, what
    :func:`snapshot_to_scratch` makes in ``staged`` with the same connection (one more connection to the file from
    this process could be handed the descriptor this one leaves, which SQLite keeps open while another connection
    of this process holds a lock on the file: its check of the file opened would fail). The same check of the file
    SQLite opened (``expect``) as :func:`snapshot`.

    The read transaction is held until the copy's last byte is read: in rollback journal mode writers wait for it
    (as they wait for a backup API copy), in WAL mode checkpoints do. ``check_integrity`` runs
    ``PRAGMA integrity_check`` in the same transaction, on the same content.
    """
    clock = time.monotonic
    started = clock()
    try:
        before = {int(n) for n in os.listdir("/proc/self/fd")}
    except OSError:
        before = set()
    try:
        conn, header_mode, fd = _open_checked(source, lock_timeout, expect, any_thread=True)
    except BaseException as exc:
        raise _translate(exc, source, "memory", lock_timeout) from exc
    copy = (
        _file_copy(conn, fd, before, source, check_integrity, started + lock_timeout, clock, count_rows)
        if before
        else None
    )
    if copy is not None:
        return copy
    with contextlib.suppress(sqlite3.Error):
        if conn.in_transaction:
            conn.execute("COMMIT")
    return snapshot_to_scratch(
        source,
        staged,
        lock_timeout=lock_timeout,
        check_integrity=check_integrity,
        expect=expect,
        opened=(conn, header_mode),
        count_rows=count_rows,
    )


def _file_copy(
    conn: sqlite3.Connection,
    fd: int,
    before: set[int],
    source: str,
    check_integrity: bool,
    deadline: float,
    clock: Callable[[], float],
    count_rows: bool = False,
) -> FileCopy | None:
    """:func:`snapshot_file`'s copy from the file, its read transaction begun, or None when that is not safe now
    (or the source was busy, before ``deadline``: a lock held longer fails as the backup API's copy does)."""
    started = clock()
    copy: FileCopy | None = None
    try:
        # Pages SQLite reads (the schema, integrity_check) are not mapped: they would count in this process's memory.
        conn.execute("PRAGMA mmap_size = 0")
        conn.execute("BEGIN")
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()  # the read transaction holds from here
        wal = str(conn.execute("PRAGMA journal_mode").fetchone()[0]).lower() == "wal"
        if not wal:
            # Safe too (the SHARED lock keeps writers out), but writers would wait for the whole stream, a few
            # times longer than for the backup API's copy: rollback-journal databases keep that copy.
            return None
        page_size = int(conn.execute("PRAGMA page_size").fetchone()[0])
        pages = int(conn.execute("PRAGMA page_count").fetchone()[0])
        header = os.pread(fd, 100, 0)
        in_header = int.from_bytes(header[16:18], "big") if len(header) == 100 else 0
        if (
            len(header) < 100
            or not header.startswith(SQLITE_HEADER)
            or (65536 if in_header == 1 else in_header) != page_size
            or (header[18] == 2 and header[19] == 2) != wal
            or pages < 1
            or os.fstat(fd).st_size < pages * page_size
        ):
            return None
        if wal:
            wal_fd = _side_fd(fd, "-wal", before)
            if wal_fd is None or os.fstat(wal_fd).st_size != 0:
                return None
        integrity = integrity_of(conn) if check_integrity else "not checked"
        if check_integrity and integrity != "ok":
            raise SnapshotError(f"the copy of {source} fails integrity_check: {integrity}")
        rows = None
        if count_rows:
            with contextlib.suppress(sqlite3.DatabaseError):  # damaged: copied as it is, with no counts
                rows = row_counts(conn) or None
        mode = "wal" if wal else "rollback"
        snap = Snapshot(
            source=source,
            path="",
            size=pages * page_size,
            pages=pages,
            page_size=page_size,
            sha256="",
            journal_mode=mode,
            method="file",
            duration=round(clock() - started, 6),
            attempts=1,
            integrity=integrity,
            rows=rows,
        )
        copy = FileCopy(conn, fd, snap, journal_version(mode))
        return copy
    except sqlite3.OperationalError as exc:
        if _is_busy(exc) and clock() < deadline:
            return None
        conn.close()
        if _is_busy(exc):
            raise SnapshotError(f"database {source} stayed locked by another process for too long") from exc
        raise _translate(exc, source, "memory", 0) from exc
    except BaseException as exc:
        conn.close()
        raise _translate(exc, source, "memory", 0) from exc


def snapshot_bytes(
    source: str,
    lock_timeout: float = 30.0,
    check_integrity: bool = True,
    clock: Callable[[], float] = time.monotonic,
    digest: bool = True,
    expect: Identity | None = None,
) -> tuple[bytes, Snapshot]:
    """Copy the live database ``source`` into memory consistently; return its bytes and what was made.

    The same one-step online backup as :func:`snapshot`, into an in-memory
    database, then serialized: nothing touches the disk. The bytes are a complete database file with the
    source's journal mode in its header (one more copy than :func:`snapshot_in_memory`, which leaves that to
    its reader). ``digest=False`` leaves ``sha256`` empty for a caller that hashes the bytes as it writes them.
    """
    data, snap, version = snapshot_in_memory(
        source, lock_timeout=lock_timeout, check_integrity=check_integrity, expect=expect, clock=clock
    )
    if data[18:20] != version:
        data = data[:18] + version + data[20:]
    return data, dataclasses.replace(snap, sha256=hashlib.sha256(data).hexdigest()) if digest else snap
