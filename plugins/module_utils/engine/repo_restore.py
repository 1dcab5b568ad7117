# Copyright: selfhost.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Restoring an application from a restic repository: the same procedure as from a set (engine/restore.py), with
the content fetched and checked while the application still runs.

    plan      choose the snapshot, read its manifest and its whole listing, refuse what a restore would refuse
              (repos/fetch.py), plan where every tree goes (check mode stops here, with the same sentence)
    fetch     ``restic restore`` of the chosen paths into a private directory beside the targets (one per
              filesystem, recorded in the host's journal), every file and database checked against the manifest,
              then moved into the staging places, each database's copy where the database was
    stop      the application, only now: a refused snapshot, an unreachable store or a full disk stop nothing
    swap      as for a set: safety copies, journal, undo; then start what ran when the snapshot was made, health

A restore that passed is marked in the repository: the snapshot gets the tag ``verified=restore``, which retention
never forgets the newest of.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass

from .. import safe_fs
from .._common import AppError, Log, RestoreError, no_log, write_all
from ..apps.base import Application
from ..repos import fetch
from ..repos.restic import VERIFIED_TAG, RepoError, Restic
from ..repos.stage import DEFAULT_BACKUP_DIR, stage_dir
from ..sets.restore import Unit, _set_metadata, is_under
from . import restore, swap
from .journal import Journal, Record, Scratch, SwapRecord

_COPY = 8 * 1024 * 1024


def plan(
    app: Application,
    restic: Restic,
    options: restore.Options,
    snapshot: str = "latest",
    host: str = "",
    log: Log = no_log,
    check: bool = False,
    backup_dir: str = DEFAULT_BACKUP_DIR,
) -> restore.Plan:
    """Everything checked before anything is fetched or stopped; check mode runs exactly this. ``backup_dir``: where
    this host's backups put their stage, a guess that lets the newest snapshot's manifest be read from the start
    (any other place, or an imported set's stage, only costs that head start)."""
    if not check:
        swap.recover_interrupted(options.state_dir, log)
    try:
        before = app.inspect()
    except AppError:
        before = None
    try:
        found = None if snapshot == "latest" else fetch.choose(restic, app.name, snapshot, host)
    except RepoError as exc:
        raise RestoreError(str(exc)) from exc
    # (check mode reads the manifest by the listed snapshot's id: it cannot compare it with what restic restores)
    snap = fetch.read(restic, found, app.name, host, "" if check else stage_dir(backup_dir, app.name))
    log(f"restore: snapshot {snap.short} of {snap.host} ({snap.time[:19]}) in {restic.repo.shown}")
    paths = app.restore_paths(snap.manifest)
    units = swap.check_manifest(snap.manifest, options.dest_root, paths, options.state_dir)
    restore.refuse_foreign(
        app, before, snap.manifest, paths, options.state_dir, f"snapshot {snap.short}", units=units,
        dest_root=options.dest_root,
    )  # fmt: skip
    fetch.check_listing(snap, [u.path for u in units])
    app.check_can_restart()

    def run_fetch(opts: restore.Options, run_log: Log, stop: Callable[[], None]) -> swap.Restored:
        filler = Filler(restic, snap, run_log)
        planned.checked = filler.checked  # (filled as the fetch goes: what it checked, should a later step fail)
        restored = swap.restore_from(
            f"snapshot {snap.short} of {restic.repo.name}",
            snap.manifest,
            filler,
            dest_root=opts.dest_root,
            only=paths,
            log=run_log,
            state_dir=opts.state_dir,
            before_swap=stop,
        )
        planned.warnings += filler.warnings
        return restored

    planned = restore.Plan(
        app.name,
        f"snapshot {snap.short} of {restic.repo.name}",
        [],
        [u.path for u in units],
        [u.target for u in units],
        app.units_to_start(snap.manifest),
        snap.manifest,
        before,
        fetch=run_fetch,
    )
    planned.snapshot = {
        "id": snap.id,
        "short_id": snap.short,
        "repository": restic.repo.name,
        "host": snap.host,
        "time": snap.time,
    }
    return planned


def mark_verified(restic: Restic, snapshot_id: str, log: Log = no_log) -> str:
    """Tag the snapshot ``verified=restore`` (restic saves it under a new id: returned); a failure is only said."""
    try:
        restic.add_tags(snapshot_id, [VERIFIED_TAG])
        latest = [s for s in restic.snapshots([VERIFIED_TAG]) if s.get("original") == snapshot_id]
        return str(latest[0]["id"]) if latest else ""
    except RepoError as exc:
        log(f"the snapshot restored well, but tagging it {VERIFIED_TAG} failed: {exc}")
        return ""


@dataclass
class _Group:
    """The units whose staging places are on one filesystem: one fetch directory and one ``restic restore``."""

    indexes: list[int]
    scratch_fd: int = -1


class Filler:
    """Fills a restore's staging places from a repository's snapshot (see :class:`swap.Filler`)."""

    def __init__(self, restic: Restic, snap: fetch.Snapshot, log: Log) -> None:
        self.restic, self.snap, self.log = restic, snap, log
        self.files = self.bytes = 0
        self.checked = {"files": 0, "bytes": 0, "databases": 0, "tables": 0}  # what was checked against the manifest
        self.warnings: list[str] = []
        self._fds: list[int] = []

    def fill(
        self, units: list[Unit], fds: list[int], record: Record, staged: list[int], journal: Journal
    ) -> dict[str, object]:
        groups: dict[int, _Group] = {}
        for index, fd in enumerate(fds):
            groups.setdefault(os.fstat(fd).st_dev, _Group([])).indexes.append(index)
        copies = self.snap.database_copies
        for number, group in enumerate(groups.values()):
            first = units[group.indexes[0]]
            paths = [units[i].path for i in group.indexes]
            size, used = self._needs(paths)
            if number == 0:  # the manifest, written beside them to be compared with the one planned from
                member = self.snap.nodes.get(self.snap.manifest_member, {})
                used += -(-int(member.get("size", 0) or 0) // 4096) * 4096 + 4096 * self.snap.stage.count("/")
            free = os.fstatvfs(fds[group.indexes[0]])
            if used > free.f_bavail * free.f_frsize:  # restic would fill the disk the running application writes to
                raise RestoreError(
                    f"snapshot {self.snap.short} needs {used / 2**20:.1f} MiB beside {first.parent}, which has "
                    f"{free.f_bavail * free.f_frsize / 2**20:.1f} MiB free"
                )
            name = swap.beside(first.name, "fetch", record.id)
            record.scratch.append(Scratch(first.parent, name))
            journal.save(record)  # before it exists: a kill right after mkdir leaves nothing unknown
            try:
                os.mkdir(name, 0o700, dir_fd=fds[group.indexes[0]])
            except FileExistsError as exc:
                raise RestoreError(f"{first.parent}/{name} already exists; it was not made by this restore") from exc
            group.scratch_fd = safe_fs.open_dir(name, fds[group.indexes[0]])
            self._fds.append(group.scratch_fd)
            st = os.fstat(group.scratch_fd)
            record.scratch[-1].made_id = [st.st_dev, st.st_ino]
            journal.save(record)
            includes = paths + [
                copies[m] for m in copies if copies[m] != "/" + m and any(is_under("/" + m, p) for p in paths)
            ]
            if number == 0:
                includes.append(self.snap.manifest_member)
            self.log(
                f"restore: fetching {', '.join(paths)} ({size / 2**20:.1f} MiB) from {self.restic.repo.shown}, "
                f"snapshot {self.snap.short}"
            )
            try:
                self.restic.restore_into(self.snap.id, group.scratch_fd, includes)
            except RepoError as exc:
                raise RestoreError(str(exc)) from exc
            if number == 0:
                fetch.check_manifest_copy(self.snap, group.scratch_fd)
            # Write back what restic wrote while it is checked: the sync before the swap stays short.
            threading.Thread(target=os.sync, daemon=True).start()
            self.log("restore: checking every file restic wrote against the snapshot's manifest")
            checked = fetch.check_tree(self.snap, group.scratch_fd, paths)
            self.warnings += checked.warnings
            self.files += checked.files
            self.bytes += checked.bytes
            for key in self.checked:
                self.checked[key] += getattr(checked, key)
            for index in group.indexes:
                held = self._move(units[index], fds[index], staged[index], record.swaps[index], group.scratch_fd)
                if held is not None:
                    staged[index] = held  # closed with the other staged trees, once swapped
        for fd in self._fds:
            os.close(fd)
        self._fds = []
        swap.remove_scratch(record)
        record.scratch = []
        journal.save(record)
        return self.snap.manifest

    def _needs(self, paths: list[str]) -> tuple[int, int]:
        """The bytes of the files of ``paths`` the manifest lists, and what restic needs on disk to write them (whole
        4 KiB blocks, one for each directory and link)."""
        size = used = 0
        for f in self.snap.manifest["files"]:  # type: ignore[attr-defined]
            if any(is_under("/" + str(f["path"]), p) for p in paths):
                length = int(f.get("size", 0) or 0) if f.get("type") == "file" else 0
                size += length
                used += -(-length // 4096) * 4096 or 4096
        return size, used

    def close(self) -> None:
        for fd in self._fds:
            os.close(fd)
        self._fds = []

    def _move(
        self, unit: Unit, parent_fd: int, staging_fd: int, swap_record: SwapRecord, scratch_fd: int
    ) -> int | None:
        """Move what restic wrote for ``unit`` (checked) into its staging place, each database's copy where the
        database was, and give every directory its owner, mode and times from the manifest. A link's staging place
        is returned as a descriptor to hold until the swap."""
        files = {"/" + str(f["path"]): f for f in self.snap.manifest["files"]}  # type: ignore[attr-defined]
        copies = {"/" + m: c.lstrip("/") for m, c in self.snap.database_copies.items()}
        want = files.get(unit.path, {})
        as_root = os.geteuid() == 0
        staging = swap_record.staging
        if unit.kind == "symlink":
            # Made in the private fetch directory, its owner and times set there, its identity noted, then moved to
            # its staging name: the target's directory may be the running application's to write in.
            os.symlink(str(want["target"]), staging, dir_fd=scratch_fd)
            if as_root:
                os.chown(staging, int(want["uid"]), int(want["gid"]), dir_fd=scratch_fd, follow_symlinks=False)  # type: ignore[call-overload]
            mtime = int(want.get("mtime", 0) or 0) * 10**9  # type: ignore[call-overload]
            os.utime(staging, ns=(mtime, mtime), dir_fd=scratch_fd, follow_symlinks=False)
            # Held open until the swap, so its inode number cannot be given to a file the application's user puts
            # there instead (it would pass for the link: an identity is a device and an inode number).
            held = os.open(staging, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=scratch_fd)
            st = os.fstat(held)
            swap_record.staged_id = [st.st_dev, st.st_ino]
            try:
                os.rename(staging, staging, src_dir_fd=scratch_fd, dst_dir_fd=parent_fd)
            except BaseException:
                os.close(held)
                raise
            return held
        if unit.kind == "file":
            source = copies.get(unit.path, unit.path.lstrip("/"))
            _copy_into(scratch_fd, source, staging_fd)
            _metadata(staging_fd, want)
            return None
        top = _open_rel(staging_fd, unit.prefix, create=True)
        try:
            source = fetch._open_below(scratch_fd, unit.path.lstrip("/"))
            try:
                for name in os.listdir(source):
                    os.rename(name, name, src_dir_fd=source, dst_dir_fd=top)
            finally:
                os.close(source)
            for path, copy in copies.items():
                if not is_under(path, unit.path) or path == unit.path or copy == path.lstrip("/"):
                    continue  # (a database read where it was is moved with its directory, as restic restored it)
                rel = os.path.relpath(path, unit.path).split("/")
                src = fetch._open_below(scratch_fd, os.path.dirname(copy))
                dst = _open_rel(top, tuple(rel[:-1]))
                try:
                    os.rename(os.path.basename(copy), rel[-1], src_dir_fd=src, dst_dir_fd=dst)
                    fd = os.open(rel[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dst)
                    try:
                        _metadata(fd, files[path])
                    finally:
                        os.close(fd)
                finally:
                    os.close(src)
                    os.close(dst)
            dirs = sorted(
                (p for p, f in files.items() if f.get("type") == "dir" and is_under(p, unit.path)),
                key=lambda p: p.count("/"),
                reverse=True,
            )
            for path in dirs:
                rel = () if path == unit.path else tuple(os.path.relpath(path, unit.path).split("/"))
                fd = _open_rel(top, rel)
                try:
                    _metadata(fd, files[path])
                finally:
                    os.close(fd)
        finally:
            os.close(top)
        for depth in range(len(unit.prefix) - 1, -1, -1):  # the directories staged above the path, deepest first
            above = unit.path.rsplit("/", len(unit.prefix) - depth)[0]
            if above in files:
                fd = _open_rel(staging_fd, unit.prefix[:depth])
                try:
                    _metadata(fd, files[above])
                finally:
                    os.close(fd)
        return None


def _metadata(fd: int, want: dict[str, object]) -> None:
    _set_metadata(
        fd,
        int(str(want["mode"]), 8),
        int(want["uid"]),  # type: ignore[call-overload]
        int(want["gid"]),  # type: ignore[call-overload]
        float(want.get("mtime", 0) or 0),  # type: ignore[arg-type]
        os.geteuid() == 0,
    )


def _open_rel(fd: int, parts: tuple[str, ...], create: bool = False) -> int:
    """The directory ``parts`` below ``fd`` (made, 0700, when ``create``), never through a link."""
    current = os.dup(fd)
    try:
        for part in parts:
            if create:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(part, 0o700, dir_fd=current)
            below = safe_fs.open_dir(part, current)
            os.close(current)
            current = below
    except BaseException:
        os.close(current)
        raise
    return current


def _copy_into(scratch_fd: int, rel: str, target_fd: int) -> None:
    parent = fetch._open_below(scratch_fd, os.path.dirname(rel))
    try:
        fd, _st = safe_fs.open_file(os.path.basename(rel), parent)
    finally:
        os.close(parent)
    try:
        while chunk := os.read(fd, _COPY):
            write_all(target_fd, chunk)
    finally:
        os.close(fd)
