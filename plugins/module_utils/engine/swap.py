# Copyright: selfhost.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Restoring backup sets: verified first, unpacked beside the target, swapped in, undoable.

Standard library only. A restore never writes into the live tree, and never
writes, chmods or chowns through a symbolic link:

1. :func:`plan` finds where each restored tree goes (a path recorded in the
   set, or a chosen part of one) and refuses, in one sentence, a target whose
   way down passes through a link (one left by an earlier restore included).
   A path that was a link when it was backed up is followed again only to
   where the set recorded it led. Check mode runs the same plan.
2. The host's restore journal records the restore before anything is made.
3. The set is verified and unpacked in one pass into a private staging tree
   beside each target (mode 0700 until the end). Every directory is opened
   relative to its parent without following links; files are created with
   ``O_EXCL | O_NOFOLLOW``; owners, modes and times are set through file
   descriptors. Links are created last, after every other member and only
   when the verification passed, so nothing is ever written through one.
4. The journal records each swap before it happens; the current target is
   renamed to a hidden *safety copy* and the staged tree renamed into its
   place.

:func:`commit` deletes the safety copies once the restored application was
checked; :func:`rollback` puts them back. Both act only on what the journal
recorded, and repeating either changes nothing. A restore killed half-way is
finished or undone by the next run on the host (:func:`recover`).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Protocol

from .. import safe_fs
from .._common import BackupError, Error, JournalError, Log, RestoreError, VerificationError, no_log
from ..sets.manifest import NewerFormatError, read_manifest
from ..sets.names import Sidecars
from ..sets.restore import StagingUnpacker, Unit, is_under, make_staging, open_unit_parent, plan
from ..sets.verify import Verification, verified_earlier, verify
from .journal import PENDING, Journal, Record, SwapRecord, identity, open_parent


@dataclass
class Swap:
    """One restored tree: where it went and where the previous content was kept."""

    target: str
    safety: str  # empty when there was nothing at the target

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


@dataclass
class Restored:
    archive: str
    swaps: list[Swap]
    restore_id: str = ""
    files: int = 0
    bytes: int = 0
    seconds: float = 0.0
    manifest: dict[str, object] = field(default_factory=dict)
    recovered: list[dict[str, object]] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)  # the paths of the set that were restored
    targets: list[str] = field(default_factory=list)  # where each of them is now


def restore(
    archive: str,
    *,
    dest_root: str = "/",
    only: Iterable[str] | None = None,
    log: Log = no_log,
    stamp: str | None = None,
    state_dir: str | None = None,
) -> Restored:
    """Verify ``archive`` and put its trees (or the ``only`` parts) in place under ``dest_root``.

    With the sidecar manifest at hand, the archive is verified and unpacked into staging in one
    pass; the staged trees are swapped in only when every check passed. Without it, the set is
    verified first and unpacked in a second pass.
    """
    started = time.monotonic()
    stamp = stamp or datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    safe_fs.raise_fd_limit()  # one descriptor per directory level is held while unpacking and removing
    try:
        with Journal(state_dir) as journal:
            recovered = recover(journal, log)
            return _restore(journal, archive, dest_root, only, log, stamp, started, recovered)
    except JournalError as exc:
        raise RestoreError(str(exc)) from exc


def restore_from(
    label: str,
    manifest: dict[str, object],
    filler: Filler,
    *,
    dest_root: str = "/",
    only: Iterable[str] | None = None,
    log: Log = no_log,
    stamp: str | None = None,
    state_dir: str | None = None,
    before_swap: Callable[[], None] | None = None,
) -> Restored:
    """Put the trees of ``manifest`` (or the ``only`` parts) in place under ``dest_root``, their content staged by
    ``filler`` (a repository's snapshot, say): planned, journaled, swapped and undone exactly as a set's.
    ``before_swap`` runs once everything is staged and checked, right before the first rename (it stops the
    application: it runs while its content is fetched)."""
    started = time.monotonic()
    stamp = stamp or datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    safe_fs.raise_fd_limit()
    try:
        with Journal(state_dir) as journal:
            recovered = recover(journal, log)
            units = plan(manifest, dest_root, only, restored_targets(journal))
            return _swap_in(journal, label, manifest, units, filler, log, stamp, started, recovered, before_swap)
    except JournalError as exc:
        raise RestoreError(str(exc)) from exc


class Filler(Protocol):
    """What fills the staging places of a restore (each made empty by :func:`make_staging`; a link's not at all).

    ``fill`` raises when the content is refused; nothing it made outside the staging places may remain unless it
    is recorded in ``record.scratch`` (removed by the undo). ``files``, ``bytes`` and ``manifest`` say what it
    staged; ``close`` releases what it holds after a failure."""

    files: int
    bytes: int

    def fill(
        self, units: list[Unit], fds: list[int], record: Record, staged: list[int], journal: Journal
    ) -> dict[str, object]: ...

    def close(self) -> None: ...


class _SetFiller:
    """A set's archive, verified and unpacked in one pass (:class:`StagingUnpacker`)."""

    def __init__(self, archive: str, manifest: dict[str, object], log: Log, verified_now: bool) -> None:
        self.archive, self.manifest, self.log, self.verified_now = archive, manifest, log, verified_now
        self.unpacker: StagingUnpacker | None = None
        self.files = self.bytes = 0

    def fill(
        self, units: list[Unit], fds: list[int], record: Record, staged: list[int], journal: Journal
    ) -> dict[str, object]:
        manifest = self.manifest
        dirs = {
            "/" + str(f["path"]): (int(str(f["mode"]), 8), int(f["uid"]), int(f["gid"]), int(f.get("mtime", 0) or 0))
            for f in manifest["files"]  # type: ignore[attr-defined]
            if f.get("type") == "dir"
        }
        unpacker = StagingUnpacker(units, fds, [s.staging for s in record.swaps], staged, dirs)
        self.unpacker = unpacker
        expected = {
            "/" + str(e["path"])
            for e in manifest["files"]  # type: ignore[attr-defined]
            if any(is_under("/" + str(e["path"]), u.path) for u in units)
        }
        self.log(f"restore: verifying {os.path.basename(self.archive)} and unpacking it beside the targets")
        manifest = _verify(self.archive, self.log, unpacker, self.verified_now).manifest or manifest
        missing = sorted(expected - unpacker.written)
        if missing:
            raise RestoreError(f"{len(missing)} member(s) of the set were not restored, first {missing[0]}")
        unpacker.finish()
        self.files, self.bytes = unpacker.files, unpacker.bytes
        return manifest

    def close(self) -> None:
        if self.unpacker is not None:
            self.unpacker.close()


def _restore(
    journal: Journal,
    archive: str,
    dest_root: str,
    only: Iterable[str] | None,
    log: Log,
    stamp: str,
    started: float,
    recovered: list[dict[str, object]],
) -> Restored:
    manifest, verified_now = _manifest_of(archive, log)
    units = plan(manifest, dest_root, only, restored_targets(journal))
    filler = _SetFiller(archive, manifest, log, verified_now)
    return _swap_in(journal, archive, manifest, units, filler, log, stamp, started, recovered)


def _swap_in(
    journal: Journal,
    archive: str,
    manifest: dict[str, object],
    units: list[Unit],
    filler: Filler,
    log: Log,
    stamp: str,
    started: float,
    recovered: list[dict[str, object]],
    before_swap: Callable[[], None] | None = None,
) -> Restored:
    _refuse_stuck(journal, [u.swap_point for u in units])
    record = journal.new(archive, [], stamp)
    record.swaps = [SwapRecord(u.parent, u.name, beside(u.name, "restore", record.id)) for u in units]
    journal.save(record)
    result = Restored(
        archive, [], record.id, recovered=recovered, paths=[u.path for u in units], targets=[u.target for u in units]
    )
    fds: list[int] = []
    staged: list[int] = []
    try:
        for unit in units:
            fds.append(open_unit_parent(unit))
        for unit, swap, fd in zip(units, record.swaps, fds):
            swap.staged_id, staging_fd = make_staging(unit.kind, swap.staging, fd)
            staged.append(staging_fd)
        journal.save(record)
        manifest = filler.fill(units, fds, record, staged, journal)
        result.manifest = manifest
        os.sync()
        for index, (unit, swap, fd) in enumerate(zip(units, record.swaps, fds)):
            if unit.kind == "symlink" and not swap.staged_id:  # made only now (a set's, with the application stopped)
                # held until the swap: its inode number cannot be given to anything else meanwhile
                staged[index] = os.open(swap.staging, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
                st = os.fstat(staged[index])
                swap.staged_id = [st.st_dev, st.st_ino]
            elif identity(fd, swap.staging) != swap.staged_id:
                raise RestoreError(f"{swap.parent}/{swap.staging} was replaced while restoring; nothing was swapped")
        if before_swap is not None:
            before_swap()
            for swap, fd in zip(record.swaps, fds):  # again, now that the application (which may write beside its
                if identity(fd, swap.staging) != swap.staged_id:  # targets) is stopped: it ran while it was fetched
                    raise RestoreError(
                        f"{swap.parent}/{swap.staging} was replaced while restoring; nothing was swapped"
                    )
        record.state = "swapping"
        journal.save(record)
        for swap, fd in zip(record.swaps, fds):
            previous = identity(fd, swap.name)
            if previous:
                swap.safety = beside(swap.name, "safety", record.id)
                if identity(fd, swap.safety):
                    raise RestoreError(f"{swap.safety_path} already exists; it was not made by this restore")
                swap.previous_id = previous
                journal.save(record)  # what is about to move, before it moves
                os.rename(swap.name, swap.safety, src_dir_fd=fd, dst_dir_fd=fd)
            os.rename(swap.staging, swap.name, src_dir_fd=fd, dst_dir_fd=fd)
            os.fsync(fd)  # the renames are on disk before the journal says so
            swap.swapped = True
            journal.save(record)
            result.swaps.append(Swap(swap.target, swap.safety_path))
        record.state = "swapped"
        journal.save(record)
        result.files, result.bytes = filler.files, filler.bytes
        result.recovered += supersede(journal, record, log)
    except BaseException as exc:
        filler.close()
        reason = sentence(exc)
        try:
            _undo(record)
            record.state = "aborted" if record.state == "staging" else "rolled_back"
        except (JournalError, OSError) as undo_exc:
            reason += f"; putting things back failed too: {sentence(undo_exc)}"
            record.state = "stuck"
        record.reason = reason
        with contextlib.suppress(OSError):
            journal.save(record)
        if isinstance(exc, KeyboardInterrupt):
            raise
        if isinstance(exc, VerificationError) and reason == str(exc):
            raise VerificationError(reason) from exc  # nothing else went wrong: the content did not verify
        raise RestoreError(reason) from exc
    finally:
        for fd in fds + [f for f in staged if f >= 0]:
            os.close(fd)
    result.seconds = round(time.monotonic() - started, 3)
    log(f"restore: {result.files} files, {result.bytes / 2**20:.1f} MiB in {result.seconds:.1f} s (id {record.id})")
    return result


def restored_targets(journal: Journal) -> list[str]:
    """Every tree a restore of this host put in place and did not roll back: links in them are data."""
    live = ("swapped", "kept", "committed", "committing", "stuck")
    return [s.target for r in journal.records() if r.state in live for s in r.swaps if s.swapped]


def check(
    archive: str,
    dest_root: str = "/",
    only: Iterable[str] | None = None,
    state_dir: str | None = None,
    log: Log = no_log,
    choose: Callable[[dict[str, object]], Iterable[str] | None] | None = None,
) -> tuple[dict[str, object], list[Unit]]:
    """What a restore would do, refusing what it would refuse, in the same order and words; changes nothing.

    (A real restore first finishes or undoes restores of this host that were interrupted; check mode leaves them,
    so where one of them cannot be finished the real run refuses what check mode let through.)"""
    manifest, checked = _manifest_of(archive, log)
    if choose is not None:  # the paths to restore depend on what the set holds (an application's choice)
        only = choose(manifest)
    journal = Journal(state_dir)
    units = plan(manifest, dest_root, only, restored_targets(journal))
    try:
        _refuse_stuck(journal, [u.swap_point for u in units])
    except JournalError as exc:
        raise RestoreError(str(exc)) from exc
    if not checked:
        manifest = _verify(archive, log, None, False).manifest or manifest
    return manifest, units


def check_manifest(
    manifest: dict[str, object], dest_root: str = "/", only: Iterable[str] | None = None, state_dir: str | None = None
) -> list[Unit]:
    """:func:`check` for content that is not a set (a repository's snapshot): where its trees would go, refusing
    what a restore would refuse; changes nothing."""
    journal = Journal(state_dir)
    units = plan(manifest, dest_root, only, restored_targets(journal))
    try:
        _refuse_stuck(journal, [u.swap_point for u in units])
    except JournalError as exc:
        raise RestoreError(str(exc)) from exc
    return units


def _manifest_of(archive: str, log: Log) -> tuple[dict[str, object], bool]:
    """The set's manifest, from its sidecar; without one (or an unreadable one), from a first verifying pass.
    The flag says whether that pass ran (the set is verified then)."""
    try:
        return read_manifest(Sidecars.of(archive).manifest), False
    except NewerFormatError as exc:
        raise RestoreError(str(exc)) from exc
    except BackupError:
        return _verify(archive, log, None, False).manifest or {}, True


def sentence(exc: BaseException) -> str:
    """What went wrong, in one sentence: an Error's own, or an OSError's file and reason."""
    if isinstance(exc, Error):
        return str(exc)
    if isinstance(exc, OSError):
        where = f" {exc.filename}" if exc.filename else ""
        return f"could not restore{where}: {exc.strerror or exc}"
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted"
    return f"{type(exc).__name__}: {exc}"


def _verify(archive: str, log: Log, unpacker: StagingUnpacker | None, verified_now: bool) -> Verification:
    # Content that passed a deep verification (earlier, or in this restore's first pass) needs its
    # whole-file sha256 checked, not every member again.
    deep = not (verified_now or verified_earlier(archive))
    if not deep:
        log("restore: this content passed verification before; checking its whole-file sha256 and member list")
    checked = verify(archive, record=False, log=log, unpack=unpacker, deep=deep)
    if not checked.ok or checked.manifest is None:
        raise VerificationError(f"refusing to restore: {checked.summary}")
    return checked


def _undo(record: Record) -> None:
    """Put back what ``record`` changed: staged trees removed, safety copies renamed back.

    Everything is checked first (device and inode of what is at each target, safety copy and staging name);
    when anything there is not what the restore made or moved, nothing at all is changed and JournalError says
    what. Then, per tree: the restored tree is renamed aside, the safety copy renamed back, the tree removed, so a
    kill at any point leaves something the next run finishes.
    """
    remove_scratch(record)
    steps: list[tuple[SwapRecord, int]] = []
    try:
        for swap in reversed(record.swaps):
            try:
                fd = open_parent(swap.parent)
            except JournalError:
                if not (swap.swapped or swap.safety):
                    continue  # nothing was made there
                raise
            steps.append((swap, fd))
            _check_undo(record, swap, fd)
        for swap, fd in steps:
            _undo_one(record, swap, fd)
    finally:
        for _swap, fd in steps:
            os.close(fd)


def remove_scratch(record: Record) -> None:
    """Remove the fetch directories ``record`` made (only the very directories it made: device and inode)."""
    for scratch in record.scratch:
        try:
            fd = open_parent(scratch.parent)
        except JournalError:
            continue  # its parent is gone: so is it
        try:
            found = identity(fd, scratch.name)
            if found and (found == scratch.made_id or (not scratch.made_id and _made_here(fd, scratch.name))):
                safe_fs.remove_tree(scratch.name, fd)
                os.fsync(fd)
        finally:
            os.close(fd)


def _aside(record: Record, swap: SwapRecord) -> str:
    return beside(swap.name, "undone", record.id)


def beside(name: str, what: str, restore_id: str) -> str:
    """The hidden name of a staging tree, a safety copy or a tree being undone, next to ``name``: short enough
    for any name (the restore id keeps it unique)."""
    raw = name.encode("utf-8", "surrogateescape")
    if len(raw) > 150:  # cut on bytes (a name is at most 255), kept distinct by a hash of the whole
        name = f"{raw[:100].decode('utf-8', 'ignore')}~{hashlib.sha256(raw).hexdigest()[:8]}"
    return f".{name}.selfhost-dr-{what}-{restore_id}"


def _check_undo(record: Record, swap: SwapRecord, fd: int) -> None:
    current = identity(fd, swap.name)
    ours = bool(current) and current == swap.staged_id
    if current and not ours and current != swap.previous_id and (swap.swapped or swap.previous_id):
        raise JournalError(
            f"{swap.target} changed since restore {record.id} (it is neither the restored tree nor what was there "
            "before); nothing was put back"
        )
    if swap.safety:
        saved = identity(fd, swap.safety)
        if saved and saved != swap.previous_id:
            raise JournalError(
                f"{swap.safety_path} is not the safety copy restore {record.id} made; nothing was put back"
            )
        if saved and current and not ours:
            raise JournalError(
                f"{swap.target} exists again beside the safety copy {swap.safety_path}; nothing was put back"
            )
        if not saved and ours:
            # Moved aside, then its safety copy went (deleted by hand, or by a commit that began): removing the
            # restored tree would leave nothing at the target.
            raise JournalError(
                f"the safety copy {swap.safety_path} of restore {record.id} is gone; {swap.target} was left as it is"
            )


def _undo_one(record: Record, swap: SwapRecord, fd: int) -> None:
    aside = _aside(record, swap)
    current = identity(fd, swap.name)
    if current and current == swap.staged_id:
        os.rename(swap.name, aside, src_dir_fd=fd, dst_dir_fd=fd)
    if swap.safety and identity(fd, swap.safety) == swap.previous_id and swap.previous_id:
        os.rename(swap.safety, swap.name, src_dir_fd=fd, dst_dir_fd=fd)
    os.fsync(fd)  # the target is back on disk before the journal says so
    for name in (aside, swap.staging):
        found = identity(fd, name)
        if found and (found == swap.staged_id or (name == swap.staging and _made_here(fd, name))):
            safe_fs.remove_tree(name, fd)


def _made_here(fd: int, name: str) -> bool:
    """A staging place whose identity was not recorded yet (killed right after making it): ours when this user owns
    it and it is what a restore makes first (an empty file or directory of mode 0600/0700, or a link)."""
    try:
        st = os.stat(name, dir_fd=fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    if st.st_uid != os.geteuid():
        return False
    if stat.S_ISLNK(st.st_mode):
        return True
    if stat.S_ISREG(st.st_mode):
        return st.st_size == 0 and stat.S_IMODE(st.st_mode) == 0o600
    return stat.S_ISDIR(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o700


def _delete_safety_copies(record: Record) -> None:
    """Delete the safety copies of ``record``, after checking every one of them is the copy it made."""
    steps: list[tuple[SwapRecord, int]] = []
    try:
        for swap in record.swaps:
            if swap.safety:
                steps.append((swap, open_parent(swap.parent)))
        for swap, fd in steps:
            saved = identity(fd, swap.safety)
            if saved and saved != swap.previous_id:
                raise JournalError(
                    f"{swap.safety_path} is not the safety copy restore {record.id} made; nothing was deleted"
                )
        for swap, fd in steps:
            if identity(fd, swap.safety):
                safe_fs.remove_tree(swap.safety, fd)
                os.fsync(fd)
    finally:
        for _swap, fd in steps:
            os.close(fd)


def recover(journal: Journal, log: Log = no_log) -> list[dict[str, object]]:
    """Finish what killed runs left: a restore still unpacking is cleaned up, one killed while swapping or rolling
    back is undone, a commit killed half-way is finished. Restores that finished but were never committed are left
    (see :func:`supersede`). A record that cannot be finished without touching what the restore did not make is
    marked ``stuck`` (listed, with the reason) instead of blocking every later run."""
    done = []
    for record in journal.pending():
        if record.state in ("swapped", "stuck"):
            continue
        was = record.state
        try:
            if was == "committing":
                _delete_safety_copies(record)
                record.state, record.reason = "committed", "a commit was interrupted; finished by the next run"
            else:
                _undo(record)
                record.state = "aborted" if was == "staging" else "rolled_back"
                record.reason = f"interrupted while {_said(was)[len('interrupted while ') :]}; undone by the next run"
        except (JournalError, OSError) as exc:
            record.state = "stuck"
            record.reason = f"interrupted while {_said(was)[len('interrupted while ') :]}, and could not be finished: "
            record.reason += sentence(exc)
        journal.save(record)
        log(f"restore {record.id} of {record.archive} was {_said(was)}; now {record.state.replace('_', ' ')}")
        done.append(record.summary())
    return done


def recover_interrupted(state_dir: str | None = None, log: Log = no_log) -> list[dict[str, object]]:
    """:func:`recover`, from an operation that is not a restore (a backup): only when no restore runs now, and
    only when the host has a journal."""
    journal = Journal(state_dir, lock_timeout=0)
    if not os.path.isdir(journal.dir):
        return []
    try:
        with journal:
            return recover(journal, log)
    except JournalError as exc:
        log(f"interrupted restores were not looked at: {exc}")
        return []


def _refuse_stuck(journal: Journal, targets: list[str]) -> None:
    for record in journal.pending():
        if record.state == "stuck" and _overlaps(record, targets):
            raise JournalError(
                f"restore {record.id} of the same place could not be finished ({record.reason}); fix that and roll "
                "it back (backup_restore state=rolled_back) before restoring here again"
            )


def _overlaps(record: Record, targets: list[str]) -> bool:
    return any(is_under(s.target, t) or is_under(t, s.target) for s in record.swaps for t in targets)


def supersede(journal: Journal, newer: Record, log: Log = no_log) -> list[dict[str, object]]:
    """Earlier restores of the places ``newer`` just restored that were never committed or rolled back (the
    controller died): what they put in place, and whatever was written into it since, is now ``newer``'s safety
    copy. They are recorded as accepted with their own safety copies kept (state ``kept``): nothing is deleted, and
    ``backup_info`` lists them until someone commits them."""
    done = []
    for record in journal.pending():
        if record.state != "swapped" or record.id == newer.id or not _overlaps(record, [s.target for s in newer.swaps]):
            continue
        record.state = "kept"
        record.reason = f"never committed; superseded by restore {newer.id}, its safety copies kept"
        journal.save(record)
        log(f"restore {record.id} was never committed; {record.reason}")
        done.append(record.summary())
    return done


def commit(restore_id: str, state_dir: str | None = None, check: bool = False, keep_safety: bool = False) -> bool:
    """Accept restore ``restore_id``: delete its safety copies (``keep_safety``: keep them, state ``kept``); True
    when that changed something, False when it was done already. Refuses a restore that was rolled back, or did
    not finish, and deletes nothing unless every safety copy is the one the restore made. ``check``: only say."""
    with Journal(state_dir) as journal:
        finished = not check and any(r["restore_id"] == restore_id for r in recover(journal))
        record = journal.load(restore_id)
        if record.state == "committed" or (record.state == "kept" and keep_safety):
            return finished  # a killed commit the recovery just finished did change something
        stuck_committing = record.state == "stuck" and record.reason.startswith("interrupted while committing")
        if record.state not in ("swapped", "kept") and not stuck_committing:
            raise JournalError(f"restore {restore_id} was {_said(record.state)}; there is nothing to commit")
        if check:
            return True
        if keep_safety:
            record.state = "kept"
            journal.save(record)
            return True
        previous = record.state
        record.state = "committing"
        journal.save(record)
        try:
            _delete_safety_copies(record)
        except JournalError:
            record.state = previous  # refused before anything was deleted
            journal.save(record)
            raise
        except OSError as exc:  # some may be gone: the commit stays under way, and the next run finishes it
            raise JournalError(
                f"committing restore {restore_id} failed: {sentence(exc)}; the next commit (or restore) on this "
                "host finishes it"
            ) from exc
        record.state = "committed"
        journal.save(record)
        return True


def rollback(restore_id: str, state_dir: str | None = None, check: bool = False) -> bool:
    """Put back what restore ``restore_id`` replaced; True when it did, False when it was rolled back already.
    Refuses a restore that was committed (its safety copies are gone), and changes nothing unless every target
    and safety copy is what the restore left. ``check``: only say."""
    with Journal(state_dir) as journal:
        finished = not check and any(r["restore_id"] == restore_id for r in recover(journal))
        record = journal.load(restore_id)
        if record.state in ("rolled_back", "aborted"):
            return finished  # a killed roll back the recovery just finished did change something
        if record.state in ("committed", "committing") or record.reason.startswith("interrupted while committing"):
            raise JournalError(
                f"restore {restore_id} was committed; its safety copies are gone and it cannot be rolled back"
            )
        if check:
            return True
        previous = record.state  # a stuck record is tried again: whoever fixed what stopped it rolls it back so
        record.state = "rolling_back"
        journal.save(record)
        try:
            _undo(record)
        except JournalError:
            record.state = previous  # refused before anything changed
            journal.save(record)
            raise
        except OSError as exc:
            raise JournalError(
                f"rolling back restore {restore_id} failed: {sentence(exc)}; the next roll back (or restore) on "
                "this host tries again"
            ) from exc
        record.state = "rolled_back"
        record.reason = "rolled back"
        journal.save(record)
        return True


def _said(state: str) -> str:
    return {
        "staging": "interrupted while unpacking",
        "swapping": "interrupted while swapping",
        "committing": "interrupted while committing",
        "rolling_back": "interrupted while rolling back",
        "kept": "committed with its safety copies kept",
    }.get(state, state.replace("_", " "))


def pending(state_dir: str | None = None) -> list[dict[str, object]]:
    """Restores of this host that wait for a commit or a roll back, were interrupted, or keep safety copies."""
    journal = Journal(state_dir)
    try:
        return [r.summary() for r in journal.records() if r.state in (*PENDING, "kept")]
    except OSError:
        return []
