# Copyright: selfhost.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What a restic snapshot of an application holds besides its live files: a consistent copy of every SQLite
database and the manifest, in a staging directory whose path never changes, so restic finds its parent snapshot and
reads again only what changed.

Standard library only. :func:`stage` walks the application's paths as a set's backup does (``sets/scan.py``: never
through a link), copies every database with the SQLite backup API into ``{backup_dir}/.selfhost-dr-repo/{app}/db/``
(the path the database has, below it), hashes every other file (a hash cache keyed by device, inode, size, mtime and
ctime spares the unchanged ones), and writes the manifest, in a set's format, to
``{stage}/selfhost-dr-manifest.json``. restic then backs up the stage and the live paths, leaving out the live
databases and their ``-wal``/``-shm``/``-journal`` (the exclude file). A copy of a database whose content did not
change is kept as it was (same file, same inode): restic does not read it again.

:func:`unstable` says which files changed between their hashing and the end of restic's read: the snapshot may hold
other bytes than the manifest says for them, so the backup is made again for those (see engine/repo_backup.py).
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import json
import os
import resource
import sqlite3
import stat
import threading
import uuid
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

from .. import safe_fs
from .._common import BackupError, Log, atomic_write, iso, no_log, utc_now
from ..sets.create import manifest_record
from ..sets.manifest import FORMAT, FORMAT_VERSION, MANIFEST_MEMBER
from ..sets.members import counted, open_member
from ..sets.names import default_host, token
from ..sets.scan import SQLITE_SIDE_FILES, Dirs, Entry, Scan, scan
from ..sqlite_snapshot import OPEN_LOCK, Held, SnapshotError, hold, row_counts, row_counts_of_file, snapshot

STAGE_DIR = ".selfhost-dr-repo"  # in the backup directory
DEFAULT_BACKUP_DIR = "/var/backups/selfhost-dr"  # the backup directory where none is configured
HASHES = "hashes.json"  # the hash cache, in the stage
TRASH = ".trash"  # beside the stages: previous copies of databases, deleted while restic reads
EXCLUDES = "excludes.txt"
_CHUNK = 1024 * 1024
_CACHE_LIMIT = 64 * 1024 * 1024
_WORKERS = max(2, min(4, os.cpu_count() or 2))  # copying databases and hashing files beside each other
_AHEAD = 16  # files opened (or databases being copied) ahead of the manifest's records
_IN_PLACE_MIN = 1024 * 1024  # smaller databases are copied (cheap), larger ones read where they are when they can be


def _in_place_max() -> int:
    """How many databases may be held at once: each keeps three descriptors open (the file, its WAL and its WAL
    index), and a third of what the descriptor limit leaves beside the workers' and restic's is theirs."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return max(0, min(1000, (soft - 256) // 9)) if soft != resource.RLIM_INFINITY else 1000


@dataclass
class Staged:
    """A staged snapshot: the stage directory, the manifest written there, what restic is given and left out."""

    stage: str
    manifest: dict[str, object]
    roots: list[str]  # the live paths restic backs up, beside the stage
    exclude_file: str
    keys: dict[str, tuple[int, ...]] = field(default_factory=dict)  # file path -> the stat its hash is of
    excludes: bytes = b""  # the exclude file's lines
    hashed_bytes: int = 0  # read and hashed this time (the rest came from the cache)
    databases_replaced: int = 0  # database copies that changed (the others restic skips)
    emptying: threading.Thread | None = None  # deletes the previous copies beside restic's read: join it after
    held: dict[str, Held] = field(default_factory=dict)  # databases read where they are: release() after restic
    left_out: list[str] = field(default_factory=list)  # what the exclude file names
    lock_timeout: float = 30.0
    row_counts_max_size: int = 0  # databases larger than this many bytes are not counted (0: every one)

    def release(self) -> None:
        """End the read transactions of the databases read where they are (their WAL can be checkpointed again)."""
        while self.held:
            self.held.popitem()[1].close()

    def copy_held(self, log: Log = no_log) -> None:
        """Copy every database read where it is into the stage instead, and let it go: held no longer than one
        repository's read (its application's WAL cannot be copied back into the file meanwhile). One that cannot be
        copied stays held."""
        for path in list(self.held):
            _held_to_copy(self, path, log)

    @property
    def paths(self) -> list[str]:
        """What ``restic backup`` is given: the stage first, then the live paths."""
        return [self.stage, *self.roots]


def stage_dir(backup_dir: str, app: str) -> str:
    return os.path.join(backup_dir, STAGE_DIR, token(app))


def _key(st: os.stat_result) -> tuple[int, ...]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _glob_escape(path: str) -> str:
    """A path as a line of restic's exclude file that matches it alone: ``*``, ``?``, ``[`` and ``\\`` escaped,
    ``$`` doubled (restic expands ``$VAR`` there), a space at the end in brackets (restic trims each line), and a
    line break as ``?`` (:func:`_excluded_too` makes sure that matches nothing else)."""
    line = "".join(f"\\{c}" if c in "*?[]\\" else "$$" if c == "$" else "?" if c == "\n" else c for c in path)
    return f"{line[:-1]}[{line[-1]}]" if line[-1:].isspace() else line


def _excluded_too(left_out: str, paths: Iterable[str]) -> str:
    """A path of ``paths`` that the exclude line of ``left_out`` (a line break in its name read as ``?``) would leave
    out as well, or ``""``."""
    breaks = [i for i, c in enumerate(left_out) if c == "\n"]
    for path in paths:
        if (
            path != left_out
            and len(path) == len(left_out)
            and all(path[i] != "/" for i in breaks)
            and all(a == b for i, (a, b) in enumerate(zip(path, left_out)) if i not in breaks)
        ):
            return path
    return ""


def refuse_inside(paths: Iterable[str], backup_dir: str) -> None:
    """Raise when the stage would be inside a path backed up (its copies copied again below it every run, its
    manifest changing while restic reads it), or excluded with it."""
    real = os.path.join(os.path.realpath(backup_dir), STAGE_DIR)
    for path in paths:
        top = os.path.realpath(path)
        if real == top or real.startswith(top.rstrip("/") + "/") or top.startswith(real + "/"):
            raise BackupError(
                f"the stage {real} is inside {top}, which is backed up: choose a backup directory outside the paths"
            )


def _load_cache(path: str) -> dict[str, dict[str, object]]:
    try:
        data = json.loads(safe_fs.read_regular(path, _CACHE_LIMIT))
    except (OSError, ValueError, RecursionError):
        return {}
    return {k: v for k, v in data.items() if isinstance(v, dict)} if isinstance(data, dict) else {}


def _cached(cache: dict[str, dict[str, object]], path: str, key: tuple[int, ...]) -> str:
    about = cache.get(path)
    if not about or about.get("key") != list(key):
        return ""
    digest = about.get("sha256")
    return digest if isinstance(digest, str) and len(digest) == 64 else ""


def _snapshot_record(entry: Entry, got: _Database, in_place: bool = False) -> dict[str, object]:
    """A database as the manifest's ``snapshots`` lists it: its path, size, sha256, whether it was read where it is,
    and every table's rows (left out where SQLite could not count them)."""
    record: dict[str, object] = {"path": entry.member, "size": got.size, "sha256": got.sha256}
    if in_place:
        record["in_place"] = True
    if got.rows is not None:
        record["rows"] = got.rows
    return record


def _cached_rows(cache: dict[str, dict[str, object]], path: str) -> dict[str, int] | None:
    """The row counts the cache holds for ``path`` (its hash's entry), when they are well formed."""
    rows = (cache.get(path) or {}).get("rows")
    if isinstance(rows, dict) and all(isinstance(k, str) and type(v) is int and v >= 0 for k, v in rows.items()):
        return rows
    return None


def _hash_open(fd: int, st: os.stat_result) -> tuple[str, int, tuple[int, ...]]:
    """The sha256 and size of a file opened by :func:`open_member` (closed here), and the stat of what was read
    (``()`` when it changed while it was read: it is hashed again after restic's read). Runs in a worker thread:
    reading and hashing let go of the GIL."""
    digest = hashlib.sha256()
    size = 0
    try:
        while chunk := os.read(fd, _CHUNK):
            digest.update(chunk)
            size += len(chunk)
        after = os.fstat(fd)
    finally:
        os.close(fd)
    if _key(after) != _key(st) or size != st.st_size:
        return digest.hexdigest(), size, ()
    return digest.hexdigest(), size, _key(st)


def _private_dir(path: str, top: str, stale: bool = False) -> None:
    """``path`` below ``top``, made (0700) one directory at a time; each one there already must be a directory, not
    a link to one: nothing is ever written through a link. With ``stale``, a file in the way (the copy of a database
    that is now a directory) is removed."""
    here = top
    for name in os.path.relpath(path, top).split(os.sep):
        here = os.path.join(here, name)
        try:
            st: os.stat_result | None = os.lstat(here)
        except FileNotFoundError:
            st = None
        if st is not None and stale and stat.S_ISREG(st.st_mode):
            with contextlib.suppress(FileNotFoundError, IsADirectoryError):  # (another worker got there first)
                os.unlink(here)
            st = None
        if st is None:
            safe_fs.makedirs_private(here)
            st = os.lstat(here)
        if not stat.S_ISDIR(st.st_mode):
            raise BackupError(f"{here} is not a directory, so nothing can be staged there")


def _source_key(entry: Entry) -> list[object]:
    """What says a database did not change: the stat of its file and of its ``-wal`` and ``-journal`` (a commit writes
    one of them, a checkpoint the file), as restic and git decide a file did not change."""
    key: list[object] = [list(_key(entry.st))]
    for side in ("-wal", "-journal"):
        try:
            key.append(list(_key(os.lstat(entry.path + side))))
        except FileNotFoundError:
            key.append(None)
    return key


@dataclass
class _Database:
    """How a database was staged: its sha256 and size; a copy that changed (``replaced``), or the live file held
    still by a read transaction (``held``, with the stat its hash is of)."""

    sha256: str
    size: int
    replaced: bool = False
    rows: dict[str, int] | None = None  # every table's rows (None: SQLite could not count them)
    held: Held | None = None
    key: tuple[int, ...] = ()


def _stage_database(
    entry: Entry,
    db_dir: str,
    cache: dict[str, dict[str, object]],
    lock_timeout: float,
    trash: str,
    in_place: bool,
    count: bool = True,
) -> _Database:
    """The database read where it is (``in_place``, when SQLite can hold its file still), else copied; its rows
    counted unless not ``count``."""
    if in_place:
        held = hold(entry.path, lock_timeout, (entry.st.st_dev, entry.st.st_ino))
        if held is not None:
            try:
                st = held.stat()
                digest, size = _cached(cache, entry.path, _key(st)), st.st_size
                rows = _cached_rows(cache, entry.path) if digest and count else None
                if not digest:
                    digest, size = held.sha256()
                if rows is None and count:
                    with contextlib.suppress(sqlite3.Error):
                        rows = row_counts(held.conn)  # (in the read transaction the file's bytes are of)
                if _key(held.stat()) == _key(st) and size == st.st_size:
                    return _Database(digest, size, rows=rows, held=held, key=_key(st))
            except BaseException:
                held.close()
                raise
            held.close()  # (written to by something else than SQLite: copied instead)
    digest, size, replaced = _copy_database(entry, db_dir, cache, lock_timeout, trash, count)
    copy = os.path.join(db_dir, entry.member)
    rows = _cached_rows(cache, copy) if count else None
    if rows is None and count:  # (a copy made before counts were kept, or one SQLite could not count)
        rows = row_counts_of_file(copy)
        cache[copy] = {**cache[copy], "rows": rows}
    return _Database(digest, size, replaced, rows)


def _copy_database(
    entry: Entry,
    db_dir: str,
    cache: dict[str, dict[str, object]],
    lock_timeout: float,
    trash: str = "",
    count: bool = True,
) -> tuple[str, int, bool]:
    """A consistent copy of the database at ``db_dir/<its path>``: its sha256, its size, and whether the copy
    changed (an unchanged one is left as it was, so restic does not read it again). A database whose file, ``-wal``
    and ``-journal`` have the stat they had at the last copy is not copied again."""
    final = os.path.join(db_dir, entry.member)
    source = _source_key(entry)
    about = cache.get(final) or {}
    try:
        kept = os.lstat(final)
    except (FileNotFoundError, NotADirectoryError):  # (a copy where a directory is now)
        kept = None
    if (
        kept is not None
        and stat.S_ISREG(kept.st_mode)
        and about.get("source") == source
        and _cached(cache, final, _key(kept))
    ):
        return str(about["sha256"]), kept.st_size, False
    _private_dir(os.path.dirname(final), db_dir, stale=True)
    fresh = final + ".new"
    try:
        made = snapshot(
            entry.path,
            fresh,
            lock_timeout=lock_timeout,
            check_integrity=False,
            durable=False,
            digest=True,
            expect=(entry.st.st_dev, entry.st.st_ino),
        )
    except SnapshotError as exc:
        raise BackupError(str(exc)) from exc
    try:
        old = os.lstat(final)
    except FileNotFoundError:
        old = None
    rows = row_counts_of_file(fresh) if count else None
    if old is not None and stat.S_ISREG(old.st_mode) and _cached(cache, final, _key(old)) == made.sha256:
        os.unlink(fresh)
        cache[final] = {"key": list(_key(old)), "sha256": made.sha256, "source": source, "rows": rows}
        return made.sha256, made.size, False
    if old is not None and stat.S_ISDIR(old.st_mode):  # the copies of a directory that is now this database
        parent = os.open(os.path.dirname(final), safe_fs.DIR_FLAGS)
        try:
            safe_fs.remove_tree(os.path.basename(final), parent)
        finally:
            os.close(parent)
    os.chmod(fresh, 0o600)
    if trash and old is not None and stat.S_ISREG(old.st_mode):
        # The previous copy is moved aside and deleted beside restic's read (freeing a large file's blocks takes a
        # tenth of a second per 200 MiB): outside the stage, so restic never sees it.
        with contextlib.suppress(FileNotFoundError):
            os.rename(final, os.path.join(trash, uuid.uuid4().hex))
    os.replace(fresh, final)  # a link at the name is replaced, never followed
    cache[final] = {"key": list(_key(os.lstat(final))), "sha256": made.sha256, "source": source, "rows": rows}
    return made.sha256, made.size, True


def stage(
    paths: Sequence[str],
    backup_dir: str,
    *,
    app: str,
    app_version: str = "",
    host: str | None = None,
    label: str = "",
    metadata: dict[str, object] | None = None,
    excludes: Iterable[str] = (),
    lock_timeout: float = 30.0,
    log: Log = no_log,
    scanned: Callable[[list[str]], None] | None = None,
    row_counts_max_size: int = 0,
) -> Staged:
    """Stage a snapshot of ``paths``: the databases copied, every file hashed, the manifest and the exclude file
    written. Every table's rows are counted, except in databases larger than ``row_counts_max_size`` bytes (0: no
    limit). Raises BackupError in one sentence."""
    started = utc_now()
    excludes = list(excludes)
    found: Scan = scan(paths, excludes)
    for root in found.roots:
        if root.link:
            raise BackupError(
                f"{root.stored} is a symbolic link to {root.link}: name the real path for a repository backup"
            )
        real = os.path.join(root.parent, root.name)
        if real != root.path:  # restic reads the real path: the manifest and the exclude file must name it
            raise BackupError(
                f"{root.stored} goes through a symbolic link to {real}: name the real path for a repository backup"
            )
    where = stage_dir(backup_dir, app)
    refuse_inside([os.path.join(r.parent, r.name) for r in found.roots], backup_dir)
    db_dir = os.path.join(where, "db")
    safe_fs.makedirs_private(backup_dir)
    _private_dir(db_dir, backup_dir)
    trash = os.path.join(backup_dir, STAGE_DIR, TRASH)
    _private_dir(trash, backup_dir)
    cache_path = os.path.join(where, HASHES)
    cache = _load_cache(cache_path)
    fresh_cache: dict[str, dict[str, object]] = {}
    staged = Staged(where, {}, [os.path.join(r.parent, r.name) for r in found.roots], os.path.join(where, EXCLUDES))
    staged.lock_timeout = lock_timeout
    staged.row_counts_max_size = row_counts_max_size
    if scanned is not None:  # (the stage directory is there already: restic, started now, finds every path it is given)
        scanned(staged.paths)
    records: list[dict[str, object]] = []
    snapshots: list[dict[str, object]] = []
    changed: list[str] = []
    skipped = list(found.skipped)
    # Never in a snapshot: what the scan left out, and the stage's own bookkeeping.
    left_out = [s["path"] for s in found.skipped if "path" in s]
    left_out += [os.path.join(where, HASHES), os.path.join(where, EXCLUDES)]
    dirs = Dirs(found.roots, found.dirs)
    # Databases are copied and files hashed by workers (SQLite's backup, reads and sha256 let go of the GIL), at most
    # _AHEAD ahead of the records, which are made in the scan's order. Files are opened here, in order: Dirs walks
    # one path at a time.
    pending: collections.deque[tuple[Entry, Future[Any] | None, object]] = collections.deque()
    pool = ThreadPoolExecutor(max_workers=_WORKERS)

    def settle(entry: Entry, job: Future[Any] | None, ready: object) -> None:
        if entry.kind in ("dir", "symlink"):
            records.append(manifest_record(entry))
            return
        if entry.kind == "sqlite":
            got: _Database = job.result()  # type: ignore[union-attr]
            if got.held is not None:  # restic reads the live file, which the read transaction keeps still
                staged.held[entry.path] = got.held
                staged.keys[entry.path] = got.key
                fresh_cache[entry.path] = {"key": list(got.key), "sha256": got.sha256, "rows": got.rows}
                records.append({**manifest_record(entry, got.size, got.sha256), "in_place": True})
                snapshots.append(_snapshot_record(entry, got, in_place=True))
                left_out.extend(entry.path + side for side in SQLITE_SIDE_FILES)
                return
            digest, size = got.sha256, got.size
            staged.databases_replaced += int(got.replaced)
            copy = os.path.join(db_dir, entry.member)
            fresh_cache[copy] = cache[copy]
            records.append(manifest_record(entry, size, digest))
            snapshots.append(_snapshot_record(entry, got))
            left_out.extend(entry.path + side for side in ("", *SQLITE_SIDE_FILES))
            return
        if isinstance(ready, str):
            skipped.append({"path": entry.path, "reason": ready})
            left_out.append(entry.path)
            return
        if job is not None:
            digest, size, key = job.result()
            staged.hashed_bytes += size
        else:
            digest, size, key = ready  # type: ignore[misc]
        staged.keys[entry.path] = key
        if key:
            fresh_cache[entry.path] = {"key": list(key), "sha256": digest}
        else:  # written to while it was hashed: backed up all the same, and hashed again after restic's read
            changed.append(entry.member)
        records.append(manifest_record(entry, size, digest))

    in_place, in_place_max = 0, _in_place_max()
    linked: dict[tuple[int, int], Future[Any]] = {}  # the last copy of each hard-linked database
    try:
        for entry in found.entries:
            job: Future[Any] | None = None
            ready: object = None
            if entry.kind == "sqlite":
                # (a database with another name, a hard link, is held under one name while written under the other)
                large = entry.wal and entry.st.st_nlink == 1 and entry.st.st_size >= _IN_PLACE_MIN
                large = large and in_place < in_place_max
                in_place += int(large)
                if entry.st.st_nlink > 1:
                    # SQLite's unix VFS hands a new connection a descriptor its other connection to the same file
                    # left open, and a copy that sees no new descriptor must call it replaced: one name at a time.
                    same = (entry.st.st_dev, entry.st.st_ino)
                    if same in linked:
                        wait([linked[same]])
                count = counted(row_counts_max_size, entry.st.st_size, entry.path, log)
                job = pool.submit(_stage_database, entry, db_dir, cache, lock_timeout, trash, large, count)
                if entry.st.st_nlink > 1:
                    linked[(entry.st.st_dev, entry.st.st_ino)] = job
            elif entry.kind not in ("dir", "symlink"):
                key = _key(entry.st)
                digest = _cached(cache, entry.path, key)
                if digest:
                    ready = (digest, entry.st.st_size, key)
                else:
                    with OPEN_LOCK:  # (a worker may be finding SQLite's descriptor among this process's)
                        opened = open_member(entry, dirs)
                    if isinstance(opened, str):
                        ready = opened
                    else:
                        job = pool.submit(_hash_open, *opened)
                        ready = opened[0]  # (closed by the job, or below when the job never runs)
            pending.append((entry, job, ready))
            while len(pending) > _AHEAD or (pending and (pending[0][1] is None or pending[0][1].done())):
                settle(*pending.popleft())
        while pending:
            settle(*pending.popleft())
    except BaseException:
        staged.release()
        raise
    finally:
        # A failure: the jobs not started are dropped (a database copy may wait its lock timeout), and the files
        # their hash jobs would have read and closed are closed here, the databases they held let go.
        for _entry, job, ready in pending:
            if job is not None and job.cancel() and isinstance(ready, int):
                os.close(ready)
        pool.shutdown(wait=True)
        for _entry, job, _ready in pending:
            if job is not None and not job.cancelled() and job.exception() is None:
                got = job.result()
                if isinstance(got, _Database) and got.held is not None:
                    got.held.close()
        dirs.close()
    try:
        copied = {os.path.join(db_dir, str(s["path"])) for s in snapshots if not s.get("in_place")}
        for stale in _stale_copies(db_dir, copied):
            # (deleted beside restic's read, as a replaced copy is: a large one takes a tenth of a second per 200 MiB)
            with contextlib.suppress(FileNotFoundError):
                os.rename(stale, os.path.join(trash, uuid.uuid4().hex))
        files = sum(1 for r in records if r["type"] == "file")
        manifest: dict[str, object] = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "name": "",
            "app": app,
            "app_version": app_version,
            "host": host or default_host(),
            "label": label,
            "started_at": iso(started),
            "finished_at": iso(utc_now()),
            "compression": "restic",
            "paths": sorted({r.stored for r in found.roots}),
            "links": found.links,
            "excludes": excludes,
            "files": records,
            "snapshots": snapshots,
            "skipped": skipped,
            "changed_during_backup": changed,
            "notes": [],
            "totals": {
                "files": files,
                "databases": len(snapshots),
                "bytes": sum(int(r.get("size", 0)) for r in records if r["type"] == "file"),  # type: ignore[call-overload]
            },
            "metadata": {**(metadata or {}), "store": "restic", "stage": where},
        }
        staged.manifest = manifest
        staged.emptying = threading.Thread(target=empty_trash, args=(trash,), daemon=True)
        staged.emptying.start()
        write_manifest(staged)
        atomic_write(cache_path, json.dumps(fresh_cache).encode())
        for path in left_out:
            other = _excluded_too(path, (e.path for e in found.entries)) if "\n" in path else ""
            if other and other not in left_out:
                raise BackupError(
                    f"{path!r} has a line break in its name, and restic's exclude file cannot leave it out without "
                    f"{other!r}: rename one of them"
                )
        staged.left_out = left_out
        write_excludes(staged)
        log(
            f"staged: {files} files ({len(snapshots)} databases, {staged.databases_replaced} changed), "
            f"{staged.hashed_bytes / 1048576:.1f} MiB read to hash"
        )
        return staged
    except BaseException:
        staged.release()
        raise


def empty_trash(trash: str) -> None:
    """Delete the previous copies of databases moved aside (also those a killed run left); never through a link."""
    try:
        fd = safe_fs.open_dir(trash)
    except OSError:
        return
    try:
        for name in os.listdir(fd):
            with contextlib.suppress(OSError):
                os.unlink(name, dir_fd=fd)
    finally:
        os.close(fd)


def write_excludes(staged: Staged) -> None:
    lines = "\n".join(_glob_escape(p) for p in sorted(set(staged.left_out))) + "\n"
    staged.excludes = os.fsencode(lines)
    atomic_write(staged.exclude_file, staged.excludes)  # a name that is not UTF-8 as its bytes


def _held_to_copy(staged: Staged, path: str, log: Log, replaced: bool = False) -> bool:
    """The database held at ``path`` copied into the stage (SQLite's backup API, at the moment it is copied) and let
    go, its records in the manifest and the exclude file changed to say so; True when copied. When it cannot be
    copied it stays held (False); but a database ``replaced`` at its path (or written to by something else than
    SQLite) is let go all the same, and its records dropped and its path left out."""
    member = path.lstrip("/")
    records = [r for r in staged.manifest["files"] if r.get("path") == member]  # type: ignore[union-attr]
    snaps = [s for s in staged.manifest["snapshots"] if s.get("path") == member]  # type: ignore[union-attr]
    db_dir = os.path.join(staged.stage, "db")
    try:
        st = os.lstat(path)
        if not stat.S_ISREG(st.st_mode) or "\n" in path:
            raise BackupError(f"{path} is no longer a regular file")
        cache: dict[str, dict[str, object]] = {}
        trash = os.path.join(os.path.dirname(staged.stage), TRASH)
        entry = Entry(path, member, "sqlite", st)
        count = counted(staged.row_counts_max_size, st.st_size, path)
        digest, size, _replaced = _copy_database(entry, db_dir, cache, staged.lock_timeout, trash, count)
        rows = _cached_rows(cache, os.path.join(db_dir, member)) if count else None
    except (OSError, BackupError) as exc:
        if not replaced:
            log(f"{path}: stays held, it cannot be copied ({exc})")
            return False
        staged.held.pop(path).close()
        staged.keys.pop(path, None)
        log(f"{path}: dropped from the snapshot, it was replaced and cannot be copied ({exc})")
        for record in records:
            staged.manifest["files"].remove(record)  # type: ignore[union-attr]
        for snap in snaps:
            staged.manifest["snapshots"].remove(snap)  # type: ignore[union-attr]
        staged.left_out.append(path)
        write_excludes(staged)
        write_manifest(staged)
        return False
    staged.held.pop(path).close()
    staged.keys.pop(path, None)
    for record in records:
        record.update(size=size, sha256=digest, mtime=int(st.st_mtime))
        record.pop("in_place", None)
    for snap in snaps:
        snap.clear()
        snap.update(path=member, size=size, sha256=digest, **({"rows": rows} if rows is not None else {}))
    staged.left_out.append(path)
    write_excludes(staged)
    write_manifest(staged)
    return True


def write_manifest(staged: Staged) -> None:
    atomic_write(os.path.join(staged.stage, MANIFEST_MEMBER), (json.dumps(staged.manifest, indent=1) + "\n").encode())


def _stale_copies(db_dir: str, wanted: set[str]) -> list[str]:
    """Copies of databases that are no longer there (or leftovers of a killed copy): never read through a link."""
    found = []
    for top, subdirs, names in os.walk(db_dir, followlinks=False):
        for name in names:
            path = os.path.join(top, name)
            if path not in wanted:
                found.append(path)
        subdirs[:] = [d for d in subdirs if not os.path.islink(os.path.join(top, d))]
    return found


def unstable(staged: Staged) -> list[str]:
    """The files whose stat is no longer the one their hash is of: changed (or replaced) since they were hashed."""
    moved = []
    for path, key in staged.keys.items():
        try:
            now = _key(os.lstat(path))
        except OSError:
            moved.append(path)
            continue
        if now != key and (path not in staged.held or now[:4] != key[:4]):  # (a held file's ctime: a chmod)
            moved.append(path)
    return moved


def _open_unlinked(path: str) -> int:
    """``path`` opened for reading through its directories one at a time, never through a link (the paths staged
    have none: a link there now was put there since)."""
    parent = os.open("/", safe_fs.DIR_FLAGS)
    try:
        for name in path.strip("/").split("/")[:-1]:
            below = safe_fs.open_dir(name, parent)
            os.close(parent)
            parent = below
        return safe_fs.open_file(os.path.basename(path), parent)[0]
    finally:
        os.close(parent)


def rehash(staged: Staged, paths: Iterable[str]) -> list[str]:
    """Hash these files again (they changed during the backup) and record them in the manifest's
    ``changed_during_backup``; the ones that are gone or no longer regular files are dropped from the manifest."""
    by_path = {os.sep + str(r["path"]): r for r in staged.manifest["files"]}  # type: ignore[union-attr]
    again = []
    for path in paths:
        record = by_path.get(path)
        if record is None:
            continue
        if path in staged.held:  # replaced or written to by something else than SQLite: copied as it is now
            _held_to_copy(staged, path, no_log, replaced=True)
            continue
        try:
            fd = _open_unlinked(path)
        except OSError:
            staged.manifest["files"].remove(record)  # type: ignore[union-attr]
            staged.keys.pop(path, None)
            continue
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                staged.manifest["files"].remove(record)  # type: ignore[union-attr]
                staged.keys.pop(path, None)
                continue
            digest = hashlib.sha256()
            size = 0
            while chunk := os.read(fd, _CHUNK):
                digest.update(chunk)
                size += len(chunk)
        finally:
            os.close(fd)
        record.update(size=size, sha256=digest.hexdigest(), mtime=int(st.st_mtime))
        staged.keys[path] = _key(st)
        again.append(str(record["path"]))
    listed = staged.manifest["changed_during_backup"]
    listed.extend(p for p in again if p not in listed)  # type: ignore[union-attr]
    files = [r for r in staged.manifest["files"] if r["type"] == "file"]  # type: ignore[union-attr]
    staged.manifest["totals"].update(files=len(files), bytes=sum(int(r.get("size", 0)) for r in files))  # type: ignore[union-attr]
    write_manifest(staged)
    return again
