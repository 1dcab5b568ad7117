# Copyright: selfhost.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What tenement 0.2.2 destroys by itself, and how this collection keeps it from happening.

* **The data of instances that do not persist.** For a service with ``storage_persist = false``, tenement
  removes the instance's data dir ``{data_dir}/{service}/{id}`` whenever the instance stops: ``ten stop``,
  ``ten restart``, and SIGTERM of ``ten serve`` (``systemctl stop tenement``), which stops them all. It removes
  the dir only when it exists (``hypervisor.rs``: ``if !storage_persist && data_dir.exists()``), and a spawn
  only creates it when missing. So before anything of this collection stops such an instance, its data dir is
  renamed aside in the same directory (:func:`keep_aside`), where tenement does not look; once the stop is done
  it is renamed back (:func:`put_back`). The process keeps writing into its open files until it is stopped:
  nothing is lost, and the data is there again, as it was at the stop, for the archive and the next spawn. An
  interrupted run leaves the dir aside under a name no instance can have (tenement names have no ``.``), and
  the next stop or start of tenement by this collection puts it back (:func:`put_back_all`).
* **Processes named by a restored database.** When ``ten serve`` starts it SIGKILLs every live pid listed in
  ``tenement.db``'s ``instance_state`` (orphan recovery). A restored ``tenement.db`` lists the pids of another
  moment or another machine: :func:`clear_instance_state` empties the table before ``ten serve`` can start.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sqlite3
import stat
from collections.abc import Iterable
from dataclasses import dataclass

from .. import safe_fs
from .._common import AppError, Log, no_log
from ..sqlite_snapshot import SnapshotError, open_checked
from .tenement_client import parse_instance

ASIDE_PREFIX = ".selfhost-dr-kept-"


@dataclass(frozen=True)
class Kept:
    unit: str
    path: str  # the instance's data dir
    aside: str  # where it is while tenement stops the instance


def _aside(path: str) -> str:
    return os.path.join(os.path.dirname(path), ASIDE_PREFIX + os.path.basename(path))


def instance_dir(data_dir: str, unit: str) -> str:
    """``{data_dir}/{service}/{id}``: the dir tenement creates for an instance, and removes when it does not
    persist."""
    service, ident = parse_instance(unit)
    return os.path.join(data_dir, service, ident)


def why_not_keepable(data_dir: str, unit: str) -> str:
    """Why the data dir of ``unit`` could not be renamed aside ("" when it can, or when it does not exist)."""
    path = instance_dir(data_dir, unit)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return ""
    if stat.S_ISLNK(st.st_mode):
        return f"its data dir {path} is a symbolic link"
    if not stat.S_ISDIR(st.st_mode):
        return f"its data dir {path} is not a directory"
    if os.path.lexists(_aside(path)) and _has_entries(path):
        # (An empty dir beside it is what a spawn made after an interrupted run: put_back_all fixes that first.)
        return f"{_aside(path)}, left by an interrupted run, is in the way; compare it with {path} and remove one"
    if os.lstat(os.path.dirname(path)).st_dev != st.st_dev:
        return f"its data dir {path} is a mount point"
    return ""


def _has_entries(path: str) -> bool:
    try:
        with os.scandir(path) as entries:
            return any(True for _ in entries)
    except OSError:
        return True


def refuse_unkeepable(data_dir: str, units: list[str], doing: str) -> None:
    """Raise, before anything stops, when the data of one of ``units`` (instances that do not persist) could
    not be kept across ``doing``."""
    for unit in units:
        problem = why_not_keepable(data_dir, unit)
        if problem:
            raise AppError(
                f"{doing} would let tenement delete the data of {unit}, whose service sets storage_persist = false, "
                f"and it cannot be kept aside: {problem}"
            )


def keep_aside(data_dir: str, units: list[str], log: Log = no_log, must: Iterable[str] = ()) -> list[Kept]:
    """Rename the data dir of each of ``units`` aside, so that tenement finds nothing to delete when it stops them.

    tenement decides with the ``storage_persist`` an instance was *spawned* with, which tenement.toml may no
    longer say (the role writes the new config, then restarts): so every instance's dir is kept aside, and only for
    those of ``must`` (known not to persist) is one that cannot be kept aside an error; the others are left where
    they are. All or nothing: on failure the ones already renamed are put back, and one sentence says why."""
    kept: list[Kept] = []
    required = set(must)
    try:
        for unit in units:
            path = instance_dir(data_dir, unit)
            problem = why_not_keepable(data_dir, unit)
            if problem and unit not in required:
                continue
            if problem:
                raise AppError(
                    f"the data of {unit} (storage_persist = false) cannot be kept aside while tenement stops it: "
                    f"{problem}"
                )
            if not os.path.lexists(path):
                continue
            try:
                os.rename(path, _aside(path))
            except OSError as exc:
                if unit not in required:
                    continue
                raise AppError(
                    f"the data of {unit} (storage_persist = false) cannot be kept aside while tenement stops it: "
                    f"renaming {path} failed: {exc.strerror}"
                ) from exc
            kept.append(Kept(unit, path, _aside(path)))
            if unit in required:
                log(f"tenement: {unit} does not persist its data; {path} kept aside while it stops")
    except BaseException:
        put_back(kept)
        raise
    return kept


def put_back(kept: list[Kept], log: Log = no_log) -> list[str]:
    """Rename each kept dir back; what could not be put back, in sentences (nothing is ever deleted but an empty
    dir a spawn made meanwhile)."""
    problems = []
    for item in kept:
        problem = _put_back_one(item.path, item.aside)
        if problem:
            problems.append(problem)
            log(f"tenement: {problem}")
    return problems


def _put_back_one(path: str, aside: str) -> str:
    try:
        st = os.lstat(aside)
    except FileNotFoundError:
        return ""
    if not stat.S_ISDIR(st.st_mode):
        return ""
    if os.path.lexists(path):
        # A spawn (the health monitor's restart) created a new, empty dir meanwhile: ours is the data.
        with contextlib.suppress(OSError):
            os.rmdir(path)
    try:
        os.rename(aside, path)
    except OSError as exc:
        if exc.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.EISDIR, errno.ENOTDIR):
            return f"{aside} was kept, not put back: {path} holds other data now; compare them and move it by hand"
        return f"{aside} was kept, not put back: {exc.strerror}"
    return ""


def put_back_all(data_dir: str, log: Log = no_log) -> list[str]:
    """Put back every dir an interrupted run left aside under ``data_dir`` (``{service}/.selfhost-dr-kept-{id}``),
    before tenement starts; the ones that could not be, in sentences."""
    problems = []
    try:
        services = sorted(os.listdir(data_dir))
    except OSError:
        return []
    for service in services:
        base = os.path.join(data_dir, service)
        if os.path.islink(base) or not os.path.isdir(base):
            continue
        try:
            names = sorted(n for n in os.listdir(base) if n.startswith(ASIDE_PREFIX))
        except OSError:
            continue
        for name in names:
            aside = os.path.join(base, name)
            path = os.path.join(base, name[len(ASIDE_PREFIX) :])
            problem = _put_back_one(path, aside)
            if problem:
                problems.append(problem)
                log(f"tenement: {problem}")
            else:
                log(f"tenement: put {path} back (an earlier run kept it aside and was interrupted)")
    return problems


def clear_instance_state(database: str, log: Log = no_log) -> int:
    """Empty ``instance_state`` in the tenement database ``database`` (a restored one, before ``ten serve``
    starts on it); the number of rows removed. Nothing to do when there is no database or no such table.

    The file must be a regular file (not a link) in a directory reached through no link others could change, and
    SQLite must open that very file (the same check as a snapshot's)."""
    try:
        real = os.path.join(
            safe_fs.resolve_trusted(os.path.dirname(os.path.abspath(database))), os.path.basename(database)
        )
        st = os.lstat(real)
    except FileNotFoundError:
        return 0
    except OSError as exc:
        raise AppError(f"cannot clear the instance state of {database}: {exc.strerror or exc}") from exc
    if not stat.S_ISREG(st.st_mode):
        raise AppError(f"cannot clear the instance state of {database}: it is not a regular file")
    try:
        conn = open_checked(real, 30.0, (st.st_dev, st.st_ino))
    except SnapshotError as exc:
        raise AppError(f"cannot clear the instance state of {database}: {exc}") from exc
    try:
        # tenement makes a plain table; a view, a trigger or a second spelling of it could keep rows for ten serve.
        odd = conn.execute(
            "SELECT type, name FROM sqlite_master WHERE (lower(name) = 'instance_state' AND type != 'table') "
            "OR (type = 'trigger' AND lower(tbl_name) = 'instance_state')"
        ).fetchone()
        if odd:
            raise AppError(
                f"cannot clear the instance state of {database}: it has a {odd[0]} {odd[1]!r} on instance_state, "
                "which tenement never makes"
            )
        if not conn.execute("SELECT 1 FROM sqlite_master WHERE lower(name) = 'instance_state'").fetchone():
            return 0
        removed = conn.execute("DELETE FROM instance_state").rowcount
        left = int(conn.execute("SELECT count(*) FROM instance_state").fetchone()[0])
    except sqlite3.Error as exc:
        raise AppError(f"cannot clear the instance state of {database}: {exc}") from exc
    finally:
        conn.close()
    if left:
        raise AppError(f"cannot clear the instance state of {database}: {left} row(s) are still there")
    if removed:
        log(
            f"tenement: emptied instance_state in {database} ({removed} row(s)): ten serve would otherwise kill "
            "whatever holds those pids now"
        )
    return max(removed, 0)
