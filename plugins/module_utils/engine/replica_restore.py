# Copyright: selfhost.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Point-in-time restore from Litestream replicas (issue 17): one database, chosen ones or all of an application,
to the newest state the replicas hold or to a moment, through the same procedure as a set (engine/restore.py).

    plan      list the application's replicas (one S3 listing), read every file's header, and plan each database
              at one moment: the newest snapshot and the chain of files stamped at or before it (replicas/ltx.py),
              its end restored by transaction id, never by Litestream's ``-timestamp``. A database with nothing by
              then, a path that could leave the data dir, a target through a link: refused here, before anything
              stops (check mode stops here, with the same sentence)
    fetch     Litestream stopped first (it watches the data dir and would replicate the staged copies); each
              database planned again at the same moment (for the newest state: the moment Litestream stopped),
              ``litestream restore -txid`` into a private directory of the state dir, retried when retention
              deleted a planned file meanwhile, checked (SQLite's header, ``PRAGMA integrity_check``), copied into
              its staging place beside the database, with the live file's owner and mode
    stop      the application; each database's ``-wal`` checkpointed into it and gone, so the safety copy is whole
              and nothing of the old database is played into the restored one
    swap      as for a set: safety copies, journal, undo; tenement's ``instance_state`` emptied, then what ran
              before is started again and checked; Litestream started again (it continues the replica's history
              from the restored state)

Every database is restored to the same moment ``T``: each holds no commit made after ``T``; how close to ``T`` each
comes is the granularity of the replica's files (``reached``, reported per database).
"""

from __future__ import annotations

import contextlib
import os
import re
import sqlite3
import stat
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from .. import safe_fs
from .._common import AppError, Log, RestoreError, atomic_write, no_log, write_all
from ..apps.base import Application, Facts
from ..replicas import ltx, replica
from ..replicas.litestream import (
    ATTEMPTS,
    ReplicaRestoreError,
    Replication,
    VanishedError,
    from_config,
    stop_for_restore,
)
from ..replicas.ltx import LtxError
from ..replicas.s3 import S3Error
from ..sets.restore import Unit, is_under
from ..sqlite_snapshot import SnapshotError, open_checked
from . import journal, restore, swap
from .journal import Journal, Record, Scratch
from .lock import held
from .repo_restore import _open_rel

_COPY = 8 * 1024 * 1024
PAUSED = "litestream-paused-by-restore"  # in the state dir while a restore has Litestream stopped
_HEADER = b"SQLite format 3\x00"


@dataclass
class Database:
    """One database to restore: its path below the replica's prefix, where it goes, and what its plan reaches."""

    path: str
    target: str
    txid: int = 0
    reached: str = ""  # the newest time among the files applied (ISO 8601, UTC)
    files: int = 0
    attempts: int = 0

    def to_dict(self) -> dict[str, object]:
        return {"path": self.path, "target": self.target, "txid": f"{self.txid:016x}", "reached": self.reached,
                "files": self.files, "attempts": self.attempts}  # fmt: skip


@dataclass
class Chosen:
    """What a point-in-time restore restores: the moment (None: the newest state) and the databases."""

    moment: datetime | None
    databases: list[Database] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # databases made after the moment (not named): left as they are


def data_root(app: Application, before: Facts | None) -> str:
    """The directory the application's replica paths are relative to: tenement's data dir, Tomo's database's
    directory (replicas/config.py builds the replica paths the same way)."""
    if app.name == "tenement":
        return os.path.normpath(str((before.metadata.get("data_dir") if before else "") or app.data_dir))  # type: ignore[attr-defined]
    if app.name == "tomo":
        from ..apps.tomo_schema import locate_database

        given = str(app.settings.database or "")  # type: ignore[attr-defined]
        # The configured path whether or not tomo.db is there now: a deleted one is what its replica restores.
        return os.path.dirname(os.path.abspath(given) if given else locate_database(None))
    raise RestoreError(f"{app.name} is not replicated by this collection")


def parse_moment(text: str) -> datetime | None:
    """``latest`` (None), or a moment in ISO 8601 with its time zone (``2026-11-29T18:00:00Z``); refused in one
    sentence otherwise."""
    if text == "latest":
        return None
    try:
        when = datetime.fromisoformat(text.replace("z", "Z"))
    except ValueError:
        raise RestoreError(
            f"the moment to restore to is latest or a time such as 2026-11-29T18:00:00Z, not {text!r:.60}"
        ) from None
    if when.tzinfo is None:
        raise RestoreError(f"the moment {text} needs its time zone (Z for UTC, or +01:00)")
    return when


def _when(moment: datetime | None) -> datetime:
    return moment if moment is not None else datetime.now(UTC)


def _plan_one(replication: Replication, app: str, path: str, moment: datetime | None, listing: replica.Listing
              ) -> ltx.Plan:  # fmt: skip
    found = ltx.plan_at(listing.files, _when(moment)) if moment is not None else ltx.latest(listing.files)
    if found is None:
        when = f"by {moment.isoformat()}" if moment is not None else "yet"
        raise RestoreError(
            f"the replica of {path} in {replication.shown} holds nothing replicated {when}; nothing was changed"
        )
    return found


def plan(
    app: Application,
    replication: Replication,
    options: restore.Options,
    moment: datetime | None = None,
    databases: list[str] | None = None,
    log: Log = no_log,
    check: bool = False,
) -> restore.Plan:
    """Everything checked before Litestream or the application stops; check mode runs exactly this."""
    if moment is not None and moment.tzinfo is None:
        raise RestoreError("the moment to restore to needs a time zone (2026-11-29T18:00:00Z)")
    if os.path.abspath(options.dest_root) != "/":
        raise RestoreError("a point-in-time restore puts the databases back where they are on this host (dest_root /)")
    if not check:
        swap.recover_interrupted(options.state_dir, log)
    try:
        before = app.inspect()
    except AppError:
        before = None
    root = data_root(app, before)
    store = replication.store()
    prefix = replication.prefix(app.name)
    ignored: list[str] = []
    try:
        found = replica.databases(store, prefix, ignored)
    except (S3Error, LtxError) as exc:
        raise RestoreError(
            f"the replicas of {app.name} in {replication.shown} cannot be read: {exc}; nothing was changed"
        ) from exc
    for name in ignored:
        log(f"restore: the replica of {name} is left alone (a hidden path: a safety copy or staged tree Litestream "
            "found, never restored)")  # fmt: skip
    if not found:
        raise RestoreError(f"there is no replica of {app.name} in {replication.shown}; nothing was changed")
    names = list(dict.fromkeys(databases)) if databases else sorted(found)
    unknown = [n for n in names if n not in found]
    if unknown:
        raise RestoreError(
            f"there is no replica of {unknown[0]} among {app.name}'s in {replication.shown} "
            f"({', '.join(sorted(found)[:8])}{', ...' if len(found) > 8 else ''}); nothing was changed"
        )
    chosen = Chosen(moment)
    for name in names:
        try:
            listing = replica.headers(store, found[name])
        except (S3Error, LtxError) as exc:
            raise RestoreError(f"the replica of {name} cannot be read: {exc}") from exc
        if not databases and moment is not None and ltx.plan_at(listing.files, moment) is None:
            chosen.skipped.append(name)  # (made after the moment: it did not exist then, and stays as it is)
            log(f"restore: {name} did not exist by {moment.isoformat()} (nothing replicated by then): left as it is")
            continue
        planned_one = _plan_one(replication, app.name, name, moment, listing)
        database = Database(name, os.path.join(root, name), planned_one.txid, planned_one.reached.isoformat(),
                            len(planned_one.files))  # fmt: skip
        chosen.databases.append(database)
        log(f"restore: {name} to txid {planned_one.txid:016x} ({len(planned_one.files)} file(s), reaching "
            f"{planned_one.reached.isoformat()})")  # fmt: skip
    if not chosen.databases:
        raise RestoreError(f"nothing of {app.name} was replicated by {moment.isoformat() if moment else 'now'}; "
                           "nothing was changed")  # fmt: skip
    manifest, paths = _manifest(app.name, root, [d.target for d in chosen.databases], named=bool(databases))
    units = swap.check_manifest(manifest, options.dest_root, paths, options.state_dir)
    what = f"the replicas in {replication.shown}"
    restore.refuse_foreign(app, before, manifest, paths, options.state_dir, what, units=units, dest_root="/")
    if before is not None:
        app.check_can_restart()
    label = "the replicas" + (f" at {moment.isoformat()}" if moment is not None else " (newest)")

    def run_fetch(opts: restore.Options, run_log: Log, stop: Callable[[], None]) -> swap.Restored:
        filler = Filler(replication, app.name, chosen, manifest, journal.state_dir(opts.state_dir), run_log)
        services = before.metadata.get("services") if before is not None else None
        filler.services = set(services) if isinstance(services, dict) else None

        def stop_and_settle() -> None:
            stop()
            for database in chosen.databases:
                settle(database.target, run_log, root=root)

        restored = swap.restore_from(
            label, manifest, filler, dest_root="/", only=paths, log=run_log, state_dir=opts.state_dir,
            before_swap=stop_and_settle,
        )  # fmt: skip
        # What ran at the moment (the restored tenement.db's instance_state) runs again, with what runs now.
        planned.start = sorted({*planned.start, *filler.ran})
        planned.checked = {"databases": len(chosen.databases)}
        return restored

    planned = restore.Plan(
        app.name, label, [], [u.path for u in units], [u.target for u in units],
        list(before.running) if before is not None else [], manifest, before, fetch=run_fetch,
    )  # fmt: skip
    planned.snapshot = {"moment": moment.isoformat() if moment else "latest", "replica": replication.shown}
    planned.databases = chosen.databases
    planned.warnings = [f"{name} did not exist by the moment: left as it is" for name in chosen.skipped]
    return planned


def run(app: Application, planned: restore.Plan, options: restore.Options, replication: Replication,
        log: Log = no_log) -> restore.Result:  # fmt: skip
    """Carry out a plan: Litestream stopped for the whole restore and started again afterwards (whether the restore
    stood or was undone), the rest exactly as a set's restore (engine/restore.py)."""
    return paused(replication, options.state_dir, lambda: restore.run(app, planned, options, log), log)


def host_replication(config_path: str | None) -> Replication | None:
    """The replication the host command's configuration sets up (``[replicate]``), whose Litestream a restore stops;
    None when it has none, or when no configuration is named and there is none at the default path."""
    from ..repos import config as repo_config

    if not config_path and not os.path.exists(repo_config.DEFAULT_CONFIG):
        return None
    return stoppable(repo_config.load(config_path or repo_config.DEFAULT_CONFIG).get("replicate"))


def stoppable(table: object) -> Replication | None:
    """The ``[replicate]`` table as far as a restore needs it, to stop and start Litestream; None without one.
    Stopping needs no credentials: a new server's table names an env file the replicate role has not written yet,
    and its restore must not fail for it."""
    if not isinstance(table, dict) or not table:
        return None
    return from_config({k: v for k, v in table.items() if k != "env_file"})


def paused(replication: Replication | None, state_dir: str | None, restoring: Callable[[], restore.Result],
           log: Log = no_log) -> restore.Result:  # fmt: skip
    """Run ``restoring`` (any restore of this host: from a set, a repository or the replicas) with Litestream stopped:
    it watches the data dir, and would replicate staged copies and upload WAL frames of a database being replaced.
    A mark in the state dir says it was stopped, until it runs again (a killed restore leaves it for the next
    ``selfhost-dr replicas``). Starting it again after a restore that stood is never that restore's failure: the
    sentence goes into the result's warning."""
    if replication is None or replication.service is None:
        return restoring()
    marker = os.path.join(journal.state_dir(state_dir), PAUSED)
    if replication.service.active():
        safe_fs.makedirs_private(os.path.dirname(marker))
        atomic_write(marker, f"{replication.service.unit}\n".encode(), 0o600)  # before the stop: a kill after it
    was_running = stop_for_restore(replication, log) or os.path.exists(marker)  # leaves a mark for the next run
    try:
        result = restoring()
    except BaseException:
        if was_running:
            _resume(replication, marker, log)
        raise
    problem = _resume(replication, marker, log) if was_running else ""
    if problem:
        result.warning = f"{result.warning}; {problem}" if result.warning else problem
    return result


def _resume(replication: Replication, marker: str, log: Log) -> str:
    """Start Litestream again after a restore; a sentence when that failed (the mark stays: the next measure tries
    again), else ""."""
    if replication.service is None:
        return ""
    log(f"replicate: starting {replication.service.unit} again")
    try:
        replication.service.start()
    except (AppError, OSError) as exc:
        said = f"the restore stood, but starting {replication.service.unit} again failed ({exc}); nothing is " \
            "replicated until it runs (selfhost-dr replicas tries again)"  # fmt: skip
        log(said)
        return said
    with contextlib.suppress(FileNotFoundError):
        os.unlink(marker)
    return ""


def resume_paused(replication: Replication, state_dir: str | None, log: Log = no_log) -> str:
    """Start Litestream again when a restore that stopped it was killed before it could (its mark is left in the
    state dir, and no run holds the host lock now); the sentence saying so, "" when there was nothing to do."""
    marker = os.path.join(journal.state_dir(state_dir), PAUSED)
    if replication.service is None or not os.path.exists(marker) or held(state_dir) is not None:
        return ""
    if swap.pending(state_dir):  # a killed restore's swap is still to be finished or undone: the next restore does it
        return ""
    replication.service.start()
    os.unlink(marker)
    said = f"started {replication.service.unit} again: a restore that stopped it was interrupted before it could"
    log(f"replicate: {said}")
    return said


def _entry(path: str, st: os.stat_result | None, kind: str, like: os.stat_result) -> dict[str, object]:
    """A manifest entry for ``path``: its own owner, mode and time when it exists, else its parent's owner."""
    if st is not None:
        mode, uid, gid, mtime = stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, int(st.st_mtime)
    else:
        # (a directory made as its nearest existing one is; a database readable by its owner alone)
        mode = stat.S_IMODE(like.st_mode) if kind == "dir" else 0o600
        uid, gid, mtime = like.st_uid, like.st_gid, int(time.time())
    if kind == "file":
        mtime = int(time.time())  # a restored database is new content
    return {"path": path.lstrip("/"), "type": kind, "mode": f"{mode:04o}", "uid": uid, "gid": gid, "mtime": mtime}


def _manifest(app: str, root: str, targets: list[str], named: bool = False) -> tuple[dict[str, object], list[str]]:
    """What the swap engine restores, as a manifest of this host's own layout: every database, and the directories
    between ``root`` and it. The paths to swap in: a database whose directory exists, else its first missing
    directory (staged whole, with every restored database below it). A file there that is no SQLite database is
    refused, unless the databases were ``named`` by the operator (a damaged database is what one restores over)."""
    try:
        root_st = os.lstat(root)
    except FileNotFoundError:
        root_st = None
    if root_st is not None and not stat.S_ISDIR(root_st.st_mode):
        raise RestoreError(f"{root} is not a directory; refusing to restore databases below it")
    anchor = root_st or os.stat(os.path.dirname(root))
    entries: dict[str, dict[str, object]] = {root: _entry(root, root_st, "dir", anchor)}
    paths: list[str] = []
    for target in targets:
        rel = os.path.relpath(target, root).split("/")
        current, like, swap_at = root, root_st or anchor, "" if root_st is not None else root
        for n, part in enumerate(rel):
            current = os.path.join(current, part)
            last = n == len(rel) - 1
            st: os.stat_result | None = None
            if not swap_at:
                try:
                    st = os.lstat(current)
                except FileNotFoundError:
                    swap_at = current
                except OSError as exc:
                    raise RestoreError(f"{current} cannot be looked at ({exc.strerror}); nothing was changed") from exc
            if st is not None:
                if stat.S_ISLNK(st.st_mode):
                    raise RestoreError(f"{current} is a symbolic link; refusing to restore {target} through it")
                if last and not stat.S_ISREG(st.st_mode):
                    raise RestoreError(f"{current} is not a regular file; refusing to restore a database over it")
                if last and not named and not _is_database(current):  # (named: a damaged one may be replaced)
                    raise RestoreError(
                        f"{current} is not an SQLite database, so no replica of it can be Litestream's; the replica "
                        "may not replace it (nothing was changed)"
                    )
                if not last and not stat.S_ISDIR(st.st_mode):
                    raise RestoreError(f"{current} is not a directory; cannot restore {target} below it")
            entries.setdefault(current, _entry(current, st, "file" if last else "dir", like))
            if st is not None:
                like = st
        paths.append(swap_at or target)
    manifest: dict[str, object] = {
        "app": app,
        "paths": [root],
        "files": list(entries.values()),
        "links": [],
        "metadata": {"data_dir": root},
    }
    return manifest, list(dict.fromkeys(paths))


def _is_database(path: str) -> bool:
    """Whether the regular file at ``path`` begins with SQLite's header (or is empty: SQLite's before its first
    write), read without following a link."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return False
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return False
        head = os.pread(fd, len(_HEADER), 0)
    finally:
        os.close(fd)
    return head in (_HEADER, b"")


def _parent_fd(root: str, target: str) -> int:
    """The directory of ``target`` below ``root``, each part opened without following a link (-1: missing)."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for part in os.path.relpath(os.path.dirname(target), root).split("/"):
            if part in ("", "."):
                continue
            try:
                below = safe_fs.open_dir(part, fd)
            except FileNotFoundError:
                os.close(fd)
                return -1
            except (OSError, safe_fs.UnsafePathError) as exc:
                raise RestoreError(f"{os.path.dirname(target)} is no longer a directory (a link?); nothing was swapped"
                                   ) from exc  # fmt: skip
            os.close(fd)
            fd = below
    except BaseException:
        with contextlib.suppress(OSError):
            os.close(fd)
        raise
    return fd


def settle(database: str, log: Log = no_log, timeout: float = 30.0, root: str = "") -> None:
    """With the application and Litestream stopped: the database's ``-wal`` (or hot ``-journal``) finished into it by
    SQLite and gone, so that its safety copy is whole and nothing of it is played into the restored file. SQLite
    removes the ``-wal`` only when no process has the database open: a process of the application still exiting is
    waited for (``timeout`` seconds), one that stays is named. The database is reached from ``root`` (its parent by
    default) without following a link: the application's user may have swapped a directory for one meanwhile."""
    parent = _parent_fd(root or os.path.dirname(database), database)
    if parent < 0:
        return
    name = os.path.basename(database)
    sidecars = ("-wal", "-journal", "-shm")

    def there(suffix: str) -> bool:
        try:
            os.stat(name + suffix, dir_fd=parent, follow_symlinks=False)
        except FileNotFoundError:
            return False
        return True

    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                st = os.stat(name, dir_fd=parent, follow_symlinks=False)
            except FileNotFoundError:
                return
            if not stat.S_ISREG(st.st_mode):
                raise RestoreError(f"{database} is not a regular file; nothing was swapped")
            if not any(there(s) for s in sidecars):
                return
            try:
                conn = open_checked(f"/proc/self/fd/{parent}/{name}", 30.0, (st.st_dev, st.st_ino))
                try:
                    conn.execute("SELECT count(*) FROM sqlite_master").fetchone()  # rolls a hot journal back
                    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                finally:
                    conn.close()  # the last connection: SQLite removes the -wal and -shm
            except (SnapshotError, sqlite3.Error) as exc:
                raise RestoreError(f"cannot finish {database}'s journal before it is replaced: {exc}") from exc
            if not any(there(s) for s in sidecars):
                log(f"restore: {name}'s journal finished into it before it is replaced")
                return
            if time.monotonic() >= deadline:
                holders = holding(st)
                who = f"process {holders[0]}" if holders else "another process"
                raise RestoreError(
                    f"{who} still has {database} open {timeout:g} s after the stop; it cannot be replaced"
                )
            time.sleep(0.2)
    finally:
        os.close(parent)


def holding(st: os.stat_result) -> list[str]:
    """The processes (``pid (name)``) that have the file ``st`` open, from ``/proc``."""
    found = []
    for pid in (p for p in os.listdir("/proc") if p.isdigit()):
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    other = os.stat(f"/proc/{pid}/fd/{fd}")
                    if (other.st_dev, other.st_ino) == (st.st_dev, st.st_ino):
                        with open(f"/proc/{pid}/comm", encoding="utf-8", errors="replace") as comm:
                            found.append(f"{pid} ({comm.read().strip()})")
                        break
    return found


class Filler:
    """Fills a point-in-time restore's staging places from the replicas (see :class:`swap.Filler`)."""

    def __init__(self, replication: Replication, app: str, chosen: Chosen, manifest: dict[str, object],
                 state_dir: str, log: Log) -> None:  # fmt: skip
        self.replication, self.app, self.chosen, self.log = replication, app, chosen, log
        self.manifest = manifest
        self.state_dir = state_dir
        self.files_of = {"/" + str(f["path"]): f for f in manifest["files"]}  # type: ignore[attr-defined]
        self.files = self.bytes = 0
        self.ran: list[str] = []  # tenement: the instances that ran at the moment
        self.services: set[str] | None = None  # tenement: the services tenement.toml configures (None: unknown)
        self._fds: list[int] = []

    def fill(self, units: list[Unit], fds: list[int], record: Record, staged: list[int], jrnl: Journal
             ) -> dict[str, object]:  # fmt: skip
        parent = os.path.join(self.state_dir, "litestream-restore")
        safe_fs.makedirs_private(parent)
        name = swap.beside("databases", "fetch", record.id)
        record.scratch.append(Scratch(parent, name))
        jrnl.save(record)
        parent_fd = safe_fs.open_dir(parent)
        try:
            os.mkdir(name, 0o700, dir_fd=parent_fd)
            scratch = safe_fs.open_dir(name, parent_fd)
            st = os.fstat(scratch)
            record.scratch[-1].made_id = [st.st_dev, st.st_ino]
            jrnl.save(record)
        finally:
            os.close(parent_fd)
        self._fds.append(scratch)
        by_target = {d.target: d for d in self.chosen.databases}
        for unit, staging_fd in zip(units, staged):
            if unit.kind == "file":
                self._one(by_target[unit.path], scratch, staging_fd)
                _metadata(staging_fd, self.files_of[unit.path])
                continue
            below = sorted((p for p in self.files_of if is_under(p, unit.path) and p != unit.path),
                           key=lambda p: p.count("/"))  # fmt: skip
            for path in below:
                rel = os.path.relpath(path, unit.path).split("/")
                where = _open_rel(staging_fd, tuple(rel[:-1]))
                try:
                    if self.files_of[path]["type"] == "dir":
                        os.mkdir(rel[-1], 0o700, dir_fd=where)
                    else:
                        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
                        out = os.open(rel[-1], flags, 0o600, dir_fd=where)
                        try:
                            self._one(by_target[path], scratch, out)
                            _metadata(out, self.files_of[path])
                        finally:
                            os.close(out)
                finally:
                    os.close(where)
            for path in [*reversed([p for p in below if self.files_of[p]["type"] == "dir"]), unit.path]:
                rel = () if path == unit.path else tuple(os.path.relpath(path, unit.path).split("/"))
                fd = _open_rel(staging_fd, rel)
                try:
                    _metadata(fd, self.files_of[path])
                finally:
                    os.close(fd)
        self.close()
        swap.remove_scratch(record)
        record.scratch = []
        jrnl.save(record)
        manifest = dict(self.manifest)
        manifest["metadata"] = {**dict(manifest["metadata"]), "databases": [d.to_dict() for d in self.chosen.databases]}  # type: ignore[call-overload]
        return manifest

    def _one(self, database: Database, scratch: int, out: int) -> None:
        """Restore one database at the chosen moment (or its newest state, now that Litestream stopped) into the
        file open as ``out``: planned again (retention may have compacted files since the plan), restored by txid,
        retried when a planned file vanishes, then checked."""
        store = self.replication.store()
        prefix = self.replication.prefix(self.app, database.path)
        name = f"{self.chosen.databases.index(database)}.restored"  # (not the replica's name: hostile input)
        for attempt in range(1, ATTEMPTS + 1):
            database.attempts = attempt
            try:
                listing = replica.files(store, prefix)
                found = _plan_one(self.replication, self.app, database.path, self.chosen.moment, listing)
                database.txid, database.reached = found.txid, found.reached.isoformat()
                database.files = len(found.files)
                self.log(f"restore: fetching {database.path} to txid {found.txid:016x} from {self.replication.shown}")
                self.replication.restore(self.app, database.path, found.txid, scratch, name, database.target)
                break
            except VanishedError as exc:
                if attempt == ATTEMPTS:
                    raise RestoreError(f"{exc} ({ATTEMPTS} attempts, retention deleting files each time)") from exc
                self.log(f"restore: {exc}; planning {database.path} again")
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(name, dir_fd=scratch)
            except (ReplicaRestoreError, S3Error, LtxError) as exc:
                raise RestoreError(str(exc)) from exc
        fd, st = safe_fs.open_file(name, scratch)
        try:
            if os.pread(fd, len(_HEADER), 0) != _HEADER:
                raise RestoreError(f"what Litestream restored of {database.path} is not an SQLite database")
            check_integrity(f"/proc/self/fd/{scratch}/{name}", database.path)
            if self.app == "tenement" and database.path == "tenement.db":
                self.ran = ran_at(f"/proc/self/fd/{scratch}/{name}", self.services)
                if keep_token(database.target, f"/proc/self/fd/{scratch}/{name}"):
                    self.log("restore: this host's API token stays valid in the restored tenement.db")
            while chunk := os.read(fd, _COPY):
                write_all(out, chunk)
            os.fsync(out)
            self.files += 1
            self.bytes += st.st_size
        finally:
            os.close(fd)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name, dir_fd=scratch)

    def close(self) -> None:
        for fd in self._fds:
            os.close(fd)
        self._fds = []


_UNIT_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


MAX_INSTANCES = 1000


def ran_at(path: str, services: set[str] | None = None) -> list[str]:
    """The instances a restored ``tenement.db`` records as running (``instance_state``: ``service:id``), those whose
    names tenement could have made and whose service this host's tenement.toml configures (the replica is hostile
    input), at most ``MAX_INSTANCES``; none when it cannot tell."""
    try:
        conn = sqlite3.connect(f"file:{urllib.parse.quote(path)}?mode=ro&immutable=1", uri=True)
        try:
            rows = conn.execute("SELECT process_name, id FROM instance_state LIMIT 10000").fetchall()
        finally:
            conn.close()
    except sqlite3.Error:
        return []
    found = sorted({
        f"{a}:{b}" for a, b in rows
        if isinstance(a, str) and isinstance(b, str) and _UNIT_PART.match(a) and _UNIT_PART.match(b)
        and (services is None or a in services)
    })  # fmt: skip
    return found[:MAX_INSTANCES]


def keep_token(live: str, restored: str) -> bool:
    """Put the live ``tenement.db``'s ``api_token_hash`` into the restored one: the replicas hold the databases, not
    the data dir's ``api_token`` file, so the host's own token (a new server's, or one rotated since the moment) must
    stay the one ``ten serve`` accepts. Whether there was one to keep."""
    try:
        st = os.lstat(live)
    except FileNotFoundError:
        return False
    if not stat.S_ISREG(st.st_mode):
        raise RestoreError(f"{live} is not a regular file; nothing was swapped")
    try:
        conn = open_checked(live, 30.0, (st.st_dev, st.st_ino))
        try:
            row = conn.execute("SELECT value FROM config WHERE key = 'api_token_hash'").fetchone()
        finally:
            conn.close()
    except (SnapshotError, sqlite3.Error):
        return False  # (no config table yet: a tenement that never made a token)
    if not row or not isinstance(row[0], str):
        return False
    try:
        conn = sqlite3.connect(restored, isolation_level=None)
        try:
            conn.execute("PRAGMA trusted_schema = OFF")  # (the restored schema is the replica's: hostile)
            odd = conn.execute(
                "SELECT type, name FROM sqlite_master WHERE (lower(name) = 'config' AND type != 'table') "
                "OR (type = 'trigger' AND lower(tbl_name) = 'config')"
            ).fetchone()
            if odd:
                raise RestoreError(
                    f"the restored tenement.db has a {odd[0]} {odd[1]!r} on its config table, which tenement never "
                    "makes; nothing was swapped"
                )
            conn.execute("CREATE TABLE IF NOT EXISTS config (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            conn.execute("INSERT OR REPLACE INTO config (key, value) VALUES ('api_token_hash', ?)", (row[0],))
            kept = conn.execute("SELECT value FROM config WHERE key = 'api_token_hash'").fetchall()
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise RestoreError(f"cannot keep this host's API token in the restored tenement.db: {exc}") from exc
    if kept != [(row[0],)]:
        raise RestoreError("the restored tenement.db does not keep this host's API token; nothing was swapped")
    return True


def check_integrity(path: str, what: str) -> None:
    """``PRAGMA integrity_check`` of a restored database, opened read-only and immutable (nothing written beside)."""
    try:
        conn = sqlite3.connect(f"file:{urllib.parse.quote(path)}?mode=ro&immutable=1", uri=True)
        try:
            said = [row[0] for row in conn.execute("PRAGMA integrity_check")]
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise RestoreError(f"what Litestream restored of {what} cannot be read by SQLite: {exc}") from exc
    if said != ["ok"]:
        raise RestoreError(f"what Litestream restored of {what} fails SQLite's integrity check: {said[0][:200]}")


def _metadata(fd: int, want: dict[str, object]) -> None:
    from ..sets.restore import _set_metadata

    _set_metadata(fd, int(str(want["mode"]), 8), int(want["uid"]), int(want["gid"]),  # type: ignore[call-overload]
                  float(want.get("mtime", 0) or 0), os.geteuid() == 0)  # type: ignore[arg-type]  # fmt: skip
