# Copyright: selfhost.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""How far each database's replica is behind the database (issue 17): what ``selfhost-dr replicas`` reports, records
in state.json and exports as metrics, and what makes it fail.

Litestream exports no replica position (docs/litestream.md, section 6), so both ends are read here:

- the local position: Litestream's newest level-0 file in the database's state directory (below ``meta_dir``), each
  file named by its txid range and written when Litestream turned a stretch of the WAL into it;
- the replica's position: the newest level-0 file on the store (names only: one listing of the application's
  prefix), and the time of its newest file (its header: the sync's time).

Per database: ``behind``, the txids written locally and not yet on the replica; ``lag_seconds``, how long the oldest
of them has waited (0 when none waits); ``since_sync_seconds``, now minus the replica's newest file's time (an idle
database's grows, and is no fault). A database whose oldest waiting change has waited longer than ``stall_seconds``
has **stalled**, and so has every database while Litestream does not run: a stalled replica is a failure.

Commits SQLite made in the last ``monitor-interval`` (1 s) are not in a level-0 file yet and count in neither
number.

A database Litestream never picked up (below tenement's data dir, found as Litestream's ``dir`` entry finds them,
with neither local state nor replica) is reported too, ``unreplicated_since`` the first measure that saw it or its
last change, whichever is older: it stalls once that is longer ago than ``stall_seconds`` (Litestream watches the
data dir, so a new instance's database is normally picked up within a second or two)."""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass

from .. import safe_fs
from ..apps.service import Service
from . import ltx, replica, s3
from .litestream import Replication
from .ltx import LtxError


@dataclass
class Lag:
    app: str
    database: str  # its path below the data dir, as on the replica
    local_txid: int = 0
    replica_txid: int = 0
    behind: int = 0
    lag_seconds: float = 0.0
    last_sync: float = 0.0  # Unix time of the replica's newest file (0: no file)
    since_sync_seconds: float = 0.0
    stalled: bool = False
    why: str = ""
    unreplicated_since: float = 0.0  # Unix time: Litestream has not picked this database up (0: it has)

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def meta_of(replication: Replication, app: str, database: str) -> tuple[str, tuple[str, ...]]:
    """Litestream's state directory of one database (replicas/config.py puts it there): ``meta_dir`` and the parts
    below it."""
    if app == "tomo":
        return replication.meta_dir, ("tomo", os.path.basename(database))
    *parents, name = database.split("/")
    return replication.meta_dir, (app, *parents, name + "-litestream")


def _local(meta: tuple[str, tuple[str, ...]]) -> list[tuple[int, float]]:
    """Litestream's local level-0 files of one database: (max txid, time written), never through a link."""
    fd = _below(meta[0], (*meta[1], "ltx", "0"))
    if fd < 0:
        return []
    try:
        found = []
        for name in os.listdir(fd):
            try:
                _low, high = ltx.parse_name(name)
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            except (LtxError, FileNotFoundError):
                continue  # (Litestream's temporary files; one removed by its retention meanwhile)
            if stat.S_ISREG(st.st_mode):
                found.append((high, st.st_mtime))
        return found
    finally:
        os.close(fd)


def _below(top: str, parts: tuple[str, ...]) -> int:
    """The directory ``parts`` below ``top`` (opened as a whole: root's own ``meta_dir``), each part opened without
    following a link; -1 when one is missing or not a directory."""
    try:
        fd = safe_fs.open_dir(top)
    except (OSError, safe_fs.UnsafePathError):
        return -1
    for part in parts:
        try:
            below = safe_fs.open_dir(part, fd)
        except (OSError, safe_fs.UnsafePathError):
            below = -1
        os.close(fd)
        if below < 0:
            return -1
        fd = below
    return fd


def _locals(replication: Replication, app: str) -> Iterable[str]:
    """The databases Litestream keeps state for below ``meta_dir`` (those it replicates now or did)."""
    if app == "tomo":
        top = os.path.join(replication.meta_dir, "tomo")
        return [n for n in _listdir(top) if not n.startswith(".")]
    top = os.path.join(replication.meta_dir, app)
    found = []
    for parent, dirs, _files in os.walk(top):  # (os.walk does not follow links to directories)
        for name in list(dirs):
            if name.endswith("-litestream") and _is_dir(os.path.join(parent, name, "ltx")):
                path = os.path.relpath(os.path.join(parent, name), top).removesuffix("-litestream")
                if not replica.hidden(path):  # (a kept safety copy: replica.hidden)
                    found.append(path)
                dirs.remove(name)
    return found


SQLITE_HEADER = b"SQLite format 3\x00"
SCAN_LIMIT = 200_000  # directory entries (files and directories) looked at below the data dir, at most
SCAN_DEPTH = 64  # directories deep below the data dir, at most
SHOWN = 100  # databases Litestream never picked up reported by name, at most (then one entry for the rest)


class ScanError(OSError):
    """The data dir could not be scanned whole: said in one sentence."""


def shown(name: str) -> str:
    """A name from a directory or a bucket as it may be printed: a byte that is not UTF-8 as ``\\xNN``, a control
    character escaped (no name rewrites a terminal or forges a line)."""
    text = name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def _is_database(header: bytes, size: int) -> bool:
    """SQLite's own test of a database's first 100 bytes: its magic, a page size that is a power of two from 512 to
    65536, the payload fractions 64/32/32, and a file of whole pages."""
    if len(header) < 100 or not header.startswith(SQLITE_HEADER) or header[21:24] != b"\x40\x20\x20":
        return False
    page = int.from_bytes(header[16:18], "big")
    page = 65536 if page == 1 else page
    return 512 <= page <= 65536 and page & (page - 1) == 0 and size % page == 0


def on_disk(data_dir: str) -> dict[str, float]:
    """The SQLite databases below ``data_dir`` that Litestream's ``dir`` entry replicates (replicas/config.py: files
    not hidden, not SQLite's journals, that are SQLite databases): path below the data dir (:func:`shown`) -> the
    newer of its mtime and ctime (a database renamed into place, or copied keeping its mtime, is new). Databases in
    hidden directories are left out (replica.hidden).

    Every directory is opened without following a link (``O_DIRECTORY | O_NOFOLLOW``: no FIFO or device is ever
    opened, whatever the application's user swaps in), every file is read only when it is still the regular file
    listed. Raises :class:`ScanError` when the data dir is missing, a link or no directory (Litestream replicates
    nothing below it), or deeper than ``SCAN_DEPTH`` or larger than ``SCAN_LIMIT`` entries (the scan would not be
    whole)."""
    try:
        top = safe_fs.open_dir(data_dir)
    except (OSError, safe_fs.UnsafePathError) as exc:
        raise ScanError(
            f"tenement's data dir {data_dir} cannot be read as a directory ({exc.strerror or exc}): Litestream "
            "replicates nothing below it"
        ) from None
    found: dict[str, float] = {}
    seen = [0]

    def walk(fd: int, rel: str) -> None:  # (open directories: only those along the path, at most SCAN_DEPTH)
        listed = []
        try:
            with os.scandir(fd) as entries:
                for entry in entries:
                    try:
                        listed.append((entry.name, entry.stat(follow_symlinks=False)))
                    except FileNotFoundError:
                        continue  # (this entry removed meanwhile, not the rest)
        except OSError as exc:
            raise ScanError(
                f"{os.path.join(data_dir, shown(rel))} cannot be listed ({exc.strerror or exc}): not scanned"
            ) from None
        seen[0] += len(listed)
        if seen[0] > SCAN_LIMIT:
            raise ScanError(f"tenement's data dir {data_dir} holds more than {SCAN_LIMIT} entries: not scanned")
        for name, st in listed:
            if name.startswith("."):
                continue
            path = f"{rel}/{name}" if rel else name
            if stat.S_ISDIR(st.st_mode):
                if path.count("/") >= SCAN_DEPTH:
                    raise ScanError(f"tenement's data dir {data_dir} is more than {SCAN_DEPTH} directories deep: "
                                    "not scanned")  # fmt: skip
                try:
                    below = safe_fs.open_dir(name, fd, expect=st)
                except (FileNotFoundError, safe_fs.UnsafePathError):
                    continue  # (replaced or removed meanwhile)
                except OSError as exc:  # (out of descriptors, say: never a silent gap in the scan)
                    raise ScanError(f"{os.path.join(data_dir, shown(path))} cannot be opened ({exc.strerror or exc}): "
                                    "not scanned") from None  # fmt: skip
                try:
                    walk(below, path)
                finally:
                    os.close(below)
            elif _candidate(name, st) and _database_file(name, fd, st):
                found[shown(path)] = max(st.st_mtime, st.st_ctime)

    try:
        walk(top, "")
    finally:
        os.close(top)
    return found


def _candidate(name: str, st: os.stat_result) -> bool:
    return stat.S_ISREG(st.st_mode) and st.st_size >= 512 and not name.endswith(("-wal", "-shm", "-journal"))


def _database_file(name: str, parent: int, st: os.stat_result) -> bool:
    try:
        fd, opened = safe_fs.open_file(name, parent)
    except OSError:
        return False
    try:
        return safe_fs.same(opened, st) and _is_database(os.read(fd, 100), opened.st_size)
    except OSError:
        return False  # (replaced meanwhile by what cannot be read)
    finally:
        os.close(fd)


def _is_dir(path: str) -> bool:
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False


def _listdir(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except OSError:
        return []


def measure(
    replication: Replication,
    app: str,
    now: float | None = None,
    service: Service | None = None,
    data_dir: str | None = None,
    earlier: dict[str, float] | None = None,
) -> list[Lag]:
    """The lag of every database of ``app`` replicated on this host (one listing of the store, one header read per
    database), and, given tenement's ``data_dir``, every database there Litestream never picked up (``earlier``:
    their ``unreplicated_since`` at the last measure). Raises :class:`s3.S3Error` when the store cannot be read."""
    now = time.time() if now is None else now
    store = replication.store()
    remote = replica.databases(store, replication.prefix(app))
    known = {*remote, *_locals(replication, app)}
    names = sorted(known)
    listed = {shown(n) for n in known}
    missed = {n: t for n, t in (on_disk(data_dir) if data_dir else {}).items() if n not in listed}
    running = True
    why_down = ""
    if service is not None:
        running = service.active()
        why_down = "" if running else f"{service.unit} does not run"

    def one(name: str) -> Lag:
        files = remote.get(name, [])
        level0 = [ltx.parse_name(obj.key.rsplit("/", 1)[1])[1] for level, obj in files if level == 0]
        everything = [(ltx.parse_name(obj.key.rsplit("/", 1)[1])[1], obj) for _level, obj in files]
        lag = Lag(app, shown(name))
        lag.replica_txid = max(level0, default=0) or max((t for t, _o in everything), default=0)
        local = _local(meta_of(replication, app, name))
        lag.local_txid = max((t for t, _w in local), default=0)
        waiting = [when for txid, when in local if txid > lag.replica_txid]
        lag.behind = max(0, lag.local_txid - lag.replica_txid)
        lag.lag_seconds = round(max(0.0, now - min(waiting)), 3) if waiting else 0.0
        if everything:
            newest = max(everything, key=lambda item: item[0])[1]
            try:
                header = ltx.read_header(store.read(newest.key, ltx.HEADER_SIZE), newest.key.rsplit("/", 1)[1])
                lag.last_sync = header.timestamp.timestamp()
                lag.since_sync_seconds = round(max(0.0, now - lag.last_sync), 3)
            except s3.S3Error as exc:
                if exc.status != 404:  # (a file compacted away since the listing: its time is left out)
                    raise
        if not running:
            lag.stalled, lag.why = True, why_down
        elif lag.lag_seconds > replication.stall_seconds:
            lag.stalled = True
            lag.why = (
                f"{lag.behind} txid(s) of {lag.database} have waited {lag.lag_seconds:.0f} s for the replica "
                f"(more than {replication.stall_seconds:g} s)"
            )
        return lag

    def unpicked(name: str, changed: float) -> Lag:
        lag = Lag(app, name, unreplicated_since=min(changed, (earlier or {}).get(name) or now, now))
        waited = now - lag.unreplicated_since
        lag.why = f"{name} has no replica and no Litestream state (there for {waited:.0f} s)"
        if not running:
            lag.stalled, lag.why = True, why_down
        elif waited > replication.stall_seconds:
            lag.stalled = True
        return lag

    with ThreadPoolExecutor(max_workers=8) as pool:
        measured = list(pool.map(one, names))
    strays = sorted((unpicked(n, t) for n, t in missed.items()), key=lambda m: (not m.stalled, m.database))
    if len(strays) > SHOWN:  # (a data dir full of them: each named would only bloat state.json)
        rest = strays[SHOWN - 1 :]
        strays = strays[: SHOWN - 1]
        summary = Lag(app, f"({len(rest)} more databases with no replica)", stalled=any(r.stalled for r in rest),
                      unreplicated_since=min(r.unreplicated_since for r in rest))  # fmt: skip
        summary.why = f"{len(rest)} more databases have no replica and no Litestream state, {rest[0].database} first"
        strays.append(summary)
    return sorted([*measured, *strays], key=lambda m: m.database)
