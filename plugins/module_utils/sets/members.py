# Copyright: selfhost.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Reading each scanned member for create(): files through the descriptors the scan checked, SQLite databases
as consistent snapshots taken ahead of the writer in a thread.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import os
import sqlite3
import stat
import threading
from collections.abc import Iterator
from dataclasses import dataclass

from .. import safe_fs
from .._common import MIB, BackupError, Log, no_log
from ..sqlite_snapshot import (
    CannotOpenError,
    NotADatabaseError,
    ReplacedError,
    SnapshotError,
)
from ..sqlite_stream import FileCopy, snapshot_file, snapshot_in_memory, snapshot_to_scratch
from .codec import CHUNK
from .scan import SQLITE_SIDE_FILES, Dirs, Entry, Scan, read_error, special_kind

# Snapshots waiting in memory (and the one being made) in all; each briefly takes about three times its size while
# it is made. Above it databases are staged on disk, which costs more CPU than a copy in memory: 8 MiB keeps
# create's process under about 64 MiB besides zstd's own (benchmarks/backup_speed.py measures it).
DEFAULT_MEMORY_LIMIT = 8 * MIB


# Connection.serialize/deserialize (Python 3.11+) keep snapshots in memory; older hosts use a staging file.
IN_MEMORY = hasattr(sqlite3.Connection, "serialize")


def left_out(found: Scan, changed: list[str], entry: Entry, reason: str) -> None:
    changed.append(entry.path)
    found.skipped.append({"path": entry.path, "reason": reason})


def open_member(entry: Entry, dirs: Dirs) -> tuple[int, os.stat_result] | str:
    """The scanned file opened again, relative to its verified directory and never through a link; or why not."""
    try:
        parent = dirs.fd(entry.root, entry.rel[:-1])
        fd, st = safe_fs.open_file(entry.rel[-1], parent)
    except FileNotFoundError:
        return "vanished during the backup"
    except safe_fs.UnsafePathError:
        return "a directory above it was replaced during the backup"
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "was replaced by a symbolic link during the backup (not followed)"
        raise BackupError(read_error(exc, entry.path)) from exc
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        kind = "directory" if stat.S_ISDIR(st.st_mode) else special_kind(st.st_mode)
        return f"was replaced by a {kind} during the backup"
    return fd, st


def _replaced_since(entry: Entry, dirs: Dirs, st: os.stat_result) -> str:
    """Why SQLite's failure came from a swap during the backup (the file or a side file replaced), or ""."""
    name = entry.rel[-1]
    try:
        parent = dirs.fd(entry.root, entry.rel[:-1])
        now = os.stat(name, dir_fd=parent, follow_symlinks=False)
        if not safe_fs.same(now, st):
            return "was replaced while it was being copied (not followed)"
        for side in SQLITE_SIDE_FILES:
            with contextlib.suppress(FileNotFoundError):
                if not stat.S_ISREG(os.stat(name + side, dir_fd=parent, follow_symlinks=False).st_mode):
                    return f"its {side} file was replaced by a link or special file during the backup; left out"
    except (FileNotFoundError, safe_fs.UnsafePathError):
        return "vanished or was moved while it was being copied"
    return ""


@dataclass
class _Snapped:
    chunks: Iterator[bytes | memoryview]
    size: int
    record: dict[str, object] | None  # None: archived as a plain file (see note)
    held: int  # bytes held in memory until written
    st: os.stat_result
    note: str = ""
    replaced: bool = False


@dataclass
class _Deferred:
    """A database too large to wait in memory: the writer takes its snapshot when it reaches it (see next())."""

    entry: Entry
    staged: str


class Snapshotter(threading.Thread):
    """Takes the databases' snapshots in archive order, ahead of the writer.

    SQLite releases the GIL while it copies, so snapshots are made while the
    writer streams the other files (which come first in the archive). Finished
    snapshots wait in memory up to ``memory_limit`` bytes in all, the one being
    made included. Larger ones (without ``integrity_check``) are taken by the writer itself when it reaches them
    (:meth:`next`): read from the database file under a read transaction held while it is written
    (:func:`snapshot_file`), which must not start long before, or when that is not safe now copied to a staging
    file. Each item is a snapshot, the reason a database was left out (a string), or the exception that ends the
    backup.
    """

    def __init__(
        self,
        entries: list[Entry],
        found: Scan,
        staging: str,
        lock_timeout: float,
        integrity_check: bool,
        memory_limit: int,
        rows_max: int = 0,
        log: Log = no_log,
    ) -> None:
        super().__init__(daemon=True)
        self._entries = entries
        self._found = found
        self._staging = staging
        self._args = (lock_timeout, integrity_check, memory_limit, rows_max)
        for entry in entries:
            counted(rows_max, entry.st.st_size, entry.path, log)
        self._budget = memory_limit
        self._ready: collections.deque[tuple[_Snapped | _Deferred | str | BaseException, int]] = collections.deque()
        self._pending = 0
        self._cond = threading.Condition()
        self._stopping = False

    def run(self) -> None:
        dirs = Dirs(self._found.roots, self._found.dirs)
        try:
            self._run(dirs)
        finally:
            dirs.close()

    def _run(self, dirs: Dirs) -> None:
        memory_limit = self._args[2]
        for index, entry in enumerate(self._entries):
            # A snapshot made in memory waits until it fits beside those not yet written: memory_limit bounds them
            # all together, this one included (SQLite's copy and the serialized bytes briefly hold it twice more).
            expected = entry.st.st_size if IN_MEMORY and entry.st.st_size <= memory_limit else 0
            with self._cond:
                while not self._stopping and self._ready and self._pending + max(expected, 1) > self._budget:
                    self._cond.wait()
                if self._stopping:
                    return
            item: _Snapped | _Deferred | str | BaseException
            held = 0
            staged = os.path.join(self._staging, f"{index}.db")
            try:
                # A deferred one is taken by the writer (next()): its read transaction must not start long before.
                # With integrity_check, the staging file's copy is made and checked here, beside the writer: the
                # check would stop the writer for as long as it takes (a second or more for 200 MiB).
                deferred = not expected and not self._args[1]
                item = _Deferred(entry, staged) if deferred else _snapshot_member(entry, dirs, staged, *self._args)
                held = item.held if isinstance(item, _Snapped) else 0
            except BaseException as exc:  # handed to the writer, which raises it
                item = exc
            with self._cond:
                self._ready.append((item, held))
                self._pending += held
                self._cond.notify_all()
            if isinstance(item, BaseException):
                return

    def next(self, dirs: Dirs) -> _Snapped | str:
        """The next database's snapshot, or why it was left out; ``dirs`` are the caller's (for a deferred one)."""
        with self._cond:
            while not self._ready:
                self._cond.wait()
            item, held = self._ready.popleft()
            self._pending -= held
            self._cond.notify_all()
        if isinstance(item, BaseException):
            raise item
        if isinstance(item, _Deferred):
            return _snapshot_member(item.entry, dirs, item.staged, *self._args, in_file=True)
        return item

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._ready.clear()
            self._cond.notify_all()
        self.join()


def file_chunks(
    entry: Entry, fd: int, changed: list[str], buf: bytearray | None = None
) -> tuple[Iterator[memoryview], int]:
    """The open file's bytes as its size was when opened; a file that shrinks is padded and noted.

    Each chunk is a view of ``buf`` (a new buffer when none is given), read straight into it: valid until the next
    chunk is asked for, so a caller hashes and writes it (or copies it) first.
    """
    handle = open(fd, "rb", buffering=0, closefd=True)  # noqa: SIM115 - closed by the generator
    size = entry.st.st_size
    view = memoryview(buf if buf is not None else bytearray(min(CHUNK, max(size, 1))))

    def chunks() -> Iterator[memoryview]:
        with handle:
            left = size
            while left > 0:
                want = view[: min(len(view), left)]
                try:
                    got = handle.readinto(want)
                except OSError as exc:
                    raise BackupError(f"file {entry.path} cannot be read: {exc.strerror}") from exc
                if not got:
                    changed.append(entry.path)
                    zeros = memoryview(bytes(len(want)))
                    while left > 0:
                        yield zeros[: min(len(zeros), left)]
                        left -= len(zeros)
                    return
                left -= got
                yield want[:got]
            if os.fstat(handle.fileno()).st_size != size:
                changed.append(entry.path)

    return chunks(), size


def counted(limit: int, size: int, path: str, log: Log = no_log) -> bool:
    """Whether the tables of a database of ``size`` bytes get their rows counted under ``row_counts_max_size``
    ``limit`` (0: every database); says so when they do not."""
    if limit <= 0 or size <= limit:
        return True
    log(
        f"rows: {path} ({size / 2**20:.0f} MiB) is larger than row_counts_max_size ({limit / 2**20:.0f} MiB): its "
        "tables' rows are not counted, so a restore checks its bytes and integrity only"
    )
    return False


def _snapshot_member(
    entry: Entry,
    dirs: Dirs,
    staged: str,
    lock_timeout: float,
    integrity_check: bool,
    memory_limit: int,
    rows_max: int = 0,
    in_file: bool = False,
) -> _Snapped | str:
    """A consistent copy of the database ``entry``, checked to be the file that was scanned.

    SQLite opens a database and its ``-wal``/``-shm`` by name, following links, so the file is looked at
    first through its verified directory: it must still be a regular file, its side files must not be links,
    and the file SQLite then holds open must be that same file (device and inode). A file that only looks
    like a database (its header) is archived as a plain file, with a note. ``in_file``: a database too large
    for memory is read from its file when that is safe now (:func:`snapshot_file`), its read transaction held
    until its chunks are read: only for a snapshot written right away.
    """
    name = entry.rel[-1]
    try:
        parent = dirs.fd(entry.root, entry.rel[:-1])
        st = os.stat(name, dir_fd=parent, follow_symlinks=False)
        for side in SQLITE_SIDE_FILES:
            with contextlib.suppress(FileNotFoundError):
                side_st = os.stat(name + side, dir_fd=parent, follow_symlinks=False)
                if not stat.S_ISREG(side_st.st_mode):
                    return f"its {side} file is not a regular file (a link?); the database was not opened"
    except FileNotFoundError:
        return "vanished during the backup"
    except safe_fs.UnsafePathError:
        return "a directory above it was replaced during the backup"
    if not stat.S_ISREG(st.st_mode):
        return "was replaced by something that is not a regular file during the backup (not followed)"
    replaced = not safe_fs.same(st, entry.st)  # by another database (a rename): that one is archived
    expect = (st.st_dev, st.st_ino)
    count = rows_max <= 0 or entry.st.st_size <= rows_max  # (the size the Snapshotter said it by)
    try:
        if IN_MEMORY and st.st_size <= memory_limit:
            data, snap, version = snapshot_in_memory(
                entry.path, lock_timeout=lock_timeout, check_integrity=integrity_check, expect=expect, count_rows=count
            )
            chunks: Iterator[memoryview] = _memory_chunks(data, version)
            size = held = len(data)
        else:
            os.makedirs(os.path.dirname(staged), mode=0o700, exist_ok=True)
            args = {"lock_timeout": lock_timeout, "check_integrity": integrity_check, "expect": expect}
            args["count_rows"] = count  # every table's rows, for a restore and a drill to compare
            # From the file, or when that is not safe now staged on disk (see snapshot_file).
            made = snapshot_file(entry.path, staged, **args) if in_file else None  # type: ignore[arg-type]
            if made is None:
                made = snapshot_to_scratch(entry.path, staged, **args)  # type: ignore[arg-type]
            if isinstance(made, FileCopy):
                snap, size, held = made.snapshot, made.snapshot.size, 0
                chunks = made.chunks()
            else:
                snap, version = made
                size, held = snap.size, 0
                chunks = _staged_chunks(staged, version)
    except ReplacedError:
        return "was replaced while it was being copied (not followed)"
    except SnapshotError as exc:
        replaced = _replaced_since(entry, dirs, st)
        if replaced:
            return replaced
        if not isinstance(exc, (NotADatabaseError, CannotOpenError)):
            raise BackupError(str(exc)) from exc

        note = (
            f"starts like a SQLite database but is not one ({exc}); archived as a plain file"
            if isinstance(exc, NotADatabaseError)
            else f"could not be opened by SQLite ({exc}); archived as a plain file, without what its -wal holds"
        )
        opened = open_member(entry, dirs)
        if isinstance(opened, str):
            return opened
        fd, st = opened
        entry.st = st
        plain, size = file_chunks(entry, fd, [])
        return _Snapped(plain, size, None, 0, st, note)
    record = snap.to_dict()
    record["path"] = entry.member
    del record["source"]
    return _Snapped(chunks, size, record, held, st, replaced=replaced)


_HEAD = 4096


def _memory_chunks(data: bytes, version: bytes) -> Iterator[memoryview]:
    """Views of a snapshot in memory, its first bytes copied to put in its journal mode (``version``)."""
    view = memoryview(data)
    head = bytearray(view[:_HEAD])
    if len(head) >= 20:
        head[18:20] = version
    yield memoryview(head)
    for i in range(_HEAD, len(data), CHUNK):
        yield view[i : i + CHUNK]


def _staged_chunks(path: str, version: bytes) -> Iterator[memoryview]:
    """The staged copy, read into one buffer (views valid until the next), its journal mode bytes put in."""
    view = memoryview(bytearray(CHUNK))
    with open(path, "rb", buffering=0) as handle:
        first = True
        while got := handle.readinto(view):
            if first and got >= 20:
                view[18:20] = version
            first = False
            yield view[:got]
    os.unlink(path)
