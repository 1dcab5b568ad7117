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
import errno
import hashlib
import os
import posixpath
import stat
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone

from . import safe_fs
from .backup_set import (
    BackupError,
    NewerFormatError,
    Sidecars,
    Verification,
    read_manifest,
    verified_earlier,
    verify,
    write_all,
)
from .journal import PENDING, Journal, JournalError, Record, SwapRecord, identity, open_parent
from .tar_stream import Member

Log = Callable[[str], None]
_FLUSH_EVERY = 128 * 1024 * 1024
_CLASHES = (errno.EEXIST, errno.ENOTDIR, errno.EISDIR, errno.ELOOP)


class RestoreError(Exception):
    """A restore that cannot go on, in one sentence."""


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


@dataclass
class Unit:
    """One tree to restore: ``path`` in the set.

    It is swapped in at ``name`` in the directory reached from ``anchor`` (the host's own directory, resolved as
    usual) through ``below`` (existing directories, opened without following links). ``prefix`` is the way from
    the swap point down to ``path`` when directories above ``path`` are missing: they are staged with it, so a
    refused restore creates nothing.
    """

    path: str
    kind: str  # dir, file or symlink: what is staged at the swap point
    anchor: str
    below: list[str]
    name: str
    prefix: tuple[str, ...] = ()
    via_link: str = ""  # a path that was a link when backed up, followed to the place the set recorded

    @property
    def parent(self) -> str:
        return os.path.join(self.anchor, *self.below)

    @property
    def target(self) -> str:
        """Where the set's ``path`` ends up."""
        return os.path.join(self.parent, self.name, *self.prefix)

    @property
    def swap_point(self) -> str:
        return os.path.join(self.parent, self.name)


def _no_log(_line: str) -> None:
    return None


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def units_for(manifest: dict[str, object], only: Iterable[str] | None) -> list[str]:
    """The absolute paths to restore: the set's paths, or the chosen ones (each inside one of them)."""
    recorded = [str(p) for p in manifest.get("paths", [])]  # type: ignore[attr-defined]
    if not only:
        return sorted(recorded)
    units = []
    for raw in only:
        path = posixpath.normpath(raw)
        if not posixpath.isabs(path) or path == "/":
            raise RestoreError(f"paths to restore must be absolute paths below /, got {raw!r}")
        if not any(_under(path, r) for r in recorded):
            raise RestoreError(f"{path} is not in this backup set (it holds {', '.join(recorded)})")
        units.append(path)
    units = sorted(set(units))
    return [u for u in units if not any(u != o and _under(u, o) for o in units)]


def plan(
    manifest: dict[str, object],
    dest_root: str = "/",
    only: Iterable[str] | None = None,
    restored: Iterable[str] = (),
) -> list[Unit]:
    """Where each tree of the set (or of ``only``) goes under ``dest_root``; the same for check mode and a run.

    Refuses in one sentence a target reached through a symbolic link below a path of the set, or through a
    link that an earlier restore put in place (``restored``: the trees earlier restores wrote; a link there is
    data, not this host's layout), a recorded link that now leads elsewhere, a component that is not a
    directory, and trees that would land in one another with different content.
    """
    root = os.path.abspath(dest_root)
    restored = list(restored)
    links = {str(link["path"]): str(link["target"]) for link in manifest.get("links", [])}  # type: ignore[attr-defined,index]
    kinds = {"/" + str(f["path"]): str(f["type"]) for f in manifest.get("files", [])}  # type: ignore[attr-defined,index]
    recorded = [str(p) for p in manifest.get("paths", [])]  # type: ignore[attr-defined]
    units: list[Unit] = []
    for path in units_for(manifest, only):
        if not any(_under(k, path) for k in kinds):
            if not only:
                continue  # a path that was excluded or empty when backed up: nothing to put back
            raise RestoreError(f"nothing in this backup set lies under {path}")
        top = next(r for r in recorded if _under(path, r))
        _refuse_restored_links(root, top, path, restored)
        units.append(_locate(path, top, kinds.get(path, "dir"), links, root))
    files = {"/" + str(f["path"]): f for f in manifest.get("files", [])}  # type: ignore[attr-defined,index]
    kept: list[Unit] = []
    for unit in sorted(units, key=lambda u: len(u.swap_point)):
        outer = next((k for k in kept if _under(unit.swap_point, k.swap_point)), None)
        if outer is None:
            kept.append(unit)
        elif not ((outer.via_link or unit.via_link) and _same_content(unit, outer, files)):
            raise RestoreError(
                f"two trees of this set would be restored into one another ({outer.target} and {unit.target}) "
                "with different content; restore them one at a time with paths"
            )
        # else: a path backed up through a link into another path of the set, holding the same: restored once
    return sorted(kept, key=lambda u: u.path)


def _same_content(inner: Unit, outer: Unit, files: dict[str, dict[str, object]]) -> bool:
    """Whether the set holds the same members for ``inner`` as for the place in ``outer`` it lands on."""
    keys = ("type", "mode", "uid", "gid", "size", "sha256", "target")

    def below(unit: Unit, where: str) -> dict[str, tuple[object, ...]]:
        start = os.path.join(unit.path, os.path.relpath(where, unit.target)) if where != unit.target else unit.path
        return {
            os.path.relpath(name, start): tuple(rec.get(k) for k in keys)
            for name, rec in files.items()
            if _under(name, start)
        }

    return below(inner, inner.target) == below(outer, inner.target)


def _refuse_restored_links(root: str, top: str, path: str, restored: list[str]) -> None:
    probe = root
    for part in os.path.dirname(top).strip("/").split("/"):
        if not part:
            continue
        probe = os.path.join(probe, part)
        if os.path.islink(probe):
            if any(_under(probe, t) for t in restored):
                raise RestoreError(
                    f"{probe} is a symbolic link an earlier restore put there (data, not this host's layout); "
                    f"refusing to restore {path} through it"
                )
            probe = os.path.realpath(probe)


def _host(root: str, path: str) -> str:
    return os.path.join(root, path.lstrip("/"))


def _trusted(path: str, what: str) -> str:
    try:
        return safe_fs.resolve_trusted(path)
    except safe_fs.UntrustedLinkError as exc:
        raise RestoreError(
            f"the way to {what} goes through the symbolic link {exc.link}, which others could have changed "
            f"({exc.problem}); not followed"
        ) from exc


def _locate(path: str, top: str, kind: str, links: dict[str, str], root: str) -> Unit:
    # Above the set's path is the host's own layout, resolved as usual (through links only root could have made);
    # from it down, no link is followed.
    anchor = _trusted(os.path.dirname(_host(root, top)), path)
    name = os.path.basename(top)
    here = os.path.join(anchor, name)
    via = ""
    if os.path.islink(here):
        if top in links:
            want = _trusted(_host(root, links[top]), path)
            now = _trusted(here, path)
            if now != want:
                raise RestoreError(
                    f"{here} is a symbolic link to {now}, but the set was taken through it from {want}; "
                    "point it back or restore with another dest_root"
                )
            anchor, name = os.path.split(now)
            via = here
        elif path != top:
            raise RestoreError(f"{here} is a symbolic link; refusing to restore {path} through it")
    if path == top:
        return Unit(path, kind, anchor, [], name, (), via)
    chain = [name, *os.path.relpath(path, top).split("/")]
    below: list[str] = []
    current = anchor
    for n, part in enumerate(chain[:-1]):
        current = os.path.join(current, part)
        try:
            st = os.lstat(current)
        except FileNotFoundError:
            # Stage from the first missing directory down: nothing is made outside staging before the swap.
            return Unit(path, "dir", anchor, below, part, tuple(chain[n + 1 :]), via)
        if stat.S_ISLNK(st.st_mode):
            raise RestoreError(f"{current} is a symbolic link; refusing to restore {path} through it")
        if not stat.S_ISDIR(st.st_mode):
            raise RestoreError(f"{current} is not a directory; cannot restore {path} below it")
        below.append(part)
    return Unit(path, kind, anchor, below, chain[-1], (), via)


def _open_unit_parent(unit: Unit) -> int:
    """Open the directory ``unit`` is swapped into: the host's directory, then down without following links."""
    if not os.path.isdir(unit.anchor):
        try:  # like mkdir -p, readable by the services that will use them; the host's part, not the set's
            safe_fs.makedirs_private(unit.anchor, mode=0o755)
        except OSError as exc:
            raise RestoreError(f"cannot create {unit.anchor}: {exc.strerror}") from exc
    fd = os.open(unit.anchor, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    current = unit.anchor
    try:
        for part in unit.below:
            current = os.path.join(current, part)
            try:
                child = safe_fs.open_dir(part, fd)
            except safe_fs.UnsafePathError as exc:
                raise RestoreError(f"{current} is not a directory (a link?); refusing to restore {unit.path}") from exc
            except FileNotFoundError as exc:
                raise RestoreError(f"{current} vanished while restoring {unit.path}") from exc
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


def restore(
    archive: str,
    *,
    dest_root: str = "/",
    only: Iterable[str] | None = None,
    log: Log = _no_log,
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
    _refuse_stuck(journal, [u.swap_point for u in units])
    dirs = {
        "/" + str(f["path"]): (int(str(f["mode"]), 8), int(f["uid"]), int(f["gid"]), int(f.get("mtime", 0) or 0))
        for f in manifest["files"]  # type: ignore[attr-defined]
        if f.get("type") == "dir"
    }
    record = journal.new(archive, [], stamp)
    record.swaps = [SwapRecord(u.parent, u.name, _beside(u.name, "restore", record.id)) for u in units]
    journal.save(record)
    result = Restored(
        archive, [], record.id, recovered=recovered, paths=[u.path for u in units], targets=[u.target for u in units]
    )
    fds: list[int] = []
    staged: list[int] = []
    unpacker: _Unpacker | None = None
    try:
        for unit in units:
            fds.append(_open_unit_parent(unit))
        for unit, swap, fd in zip(units, record.swaps, fds):
            swap.staged_id, staging_fd = _make_staging(unit.kind, swap.staging, fd)
            staged.append(staging_fd)
        journal.save(record)
        unpacker = _Unpacker(units, fds, [s.staging for s in record.swaps], staged, dirs)
        expected = {
            "/" + str(e["path"])
            for e in manifest["files"]  # type: ignore[attr-defined]
            if any(_under("/" + str(e["path"]), u.path) for u in units)
        }
        log(f"restore: verifying {os.path.basename(archive)} and unpacking it beside the targets")
        manifest = _verify(archive, log, unpacker, verified_now).manifest or manifest
        result.manifest = manifest
        missing = sorted(expected - unpacker.written)
        if missing:
            raise RestoreError(f"{len(missing)} member(s) of the set were not restored, first {missing[0]}")
        unpacker.finish()
        os.sync()
        for unit, swap, fd in zip(units, record.swaps, fds):
            if unit.kind == "symlink":
                swap.staged_id = identity(fd, swap.staging)  # made only now
            elif identity(fd, swap.staging) != swap.staged_id:
                raise RestoreError(f"{swap.parent}/{swap.staging} was replaced while restoring; nothing was swapped")
        record.state = "swapping"
        journal.save(record)
        for swap, fd in zip(record.swaps, fds):
            previous = identity(fd, swap.name)
            if previous:
                swap.safety = _beside(swap.name, "safety", record.id)
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
        result.files, result.bytes = unpacker.files, unpacker.bytes
        result.recovered += supersede(journal, record, log)
    except BaseException as exc:
        if unpacker is not None:
            unpacker.close()
        reason = _sentence(exc)
        try:
            _undo(record)
            record.state = "aborted" if record.state == "staging" else "rolled_back"
        except (JournalError, OSError) as undo_exc:
            reason += f"; putting things back failed too: {_sentence(undo_exc)}"
            record.state = "stuck"
        record.reason = reason
        with contextlib.suppress(OSError):
            journal.save(record)
        if isinstance(exc, KeyboardInterrupt):
            raise
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
    log: Log = _no_log,
) -> tuple[dict[str, object], list[Unit]]:
    """What a restore would do, refusing what it would refuse, in the same order and words; changes nothing.

    (A real restore first finishes or undoes restores of this host that were interrupted; check mode leaves them,
    so where one of them cannot be finished the real run refuses what check mode let through.)"""
    manifest, checked = _manifest_of(archive, log)
    journal = Journal(state_dir)
    units = plan(manifest, dest_root, only, restored_targets(journal))
    try:
        _refuse_stuck(journal, [u.swap_point for u in units])
    except JournalError as exc:
        raise RestoreError(str(exc)) from exc
    if not checked:
        manifest = _verify(archive, log, None, False).manifest or manifest
    return manifest, units


def _manifest_of(archive: str, log: Log) -> tuple[dict[str, object], bool]:
    """The set's manifest, from its sidecar; without one (or an unreadable one), from a first verifying pass.
    The flag says whether that pass ran (the set is verified then)."""
    try:
        return read_manifest(Sidecars.of(archive).manifest), False
    except NewerFormatError as exc:
        raise RestoreError(str(exc)) from exc
    except BackupError:
        return _verify(archive, log, None, False).manifest or {}, True


def _sentence(exc: BaseException) -> str:
    if isinstance(exc, (RestoreError, BackupError, JournalError)):
        return str(exc)
    if isinstance(exc, OSError):
        where = f" {exc.filename}" if exc.filename else ""
        return f"could not restore{where}: {exc.strerror or exc}"
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted"
    return f"{type(exc).__name__}: {exc}"


def _make_staging(kind: str, name: str, parent_fd: int) -> tuple[list[int], int]:
    """Create the private staging place of one tree (a directory, or an empty file): its identity, and a descriptor
    of it that the unpacker works through (never the name again: the target's directory may be writable by others,
    who could swap the name)."""
    if kind == "symlink":
        return [], -1  # made at the end, when the links are made
    try:
        if kind == "file":
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            fd = os.open(name, flags, 0o600, dir_fd=parent_fd)
        else:
            os.mkdir(name, 0o700, dir_fd=parent_fd)
            fd = safe_fs.open_dir(name, parent_fd)
    except FileExistsError as exc:
        raise RestoreError(f"{name} already exists beside the target; it was not made by this restore") from exc
    st = os.fstat(fd)
    return [st.st_dev, st.st_ino], fd


def _verify(archive: str, log: Log, unpacker: _Unpacker | None, verified_now: bool) -> Verification:
    # Content that passed a deep verification (earlier, or in this restore's first pass) needs its
    # whole-file sha256 checked, not every member again.
    deep = not (verified_now or verified_earlier(archive))
    if not deep:
        log("restore: this content passed verification before; checking its whole-file sha256 and member list")
    checked = verify(archive, record=False, log=log, unpack=unpacker, deep=deep)
    if not checked.ok or checked.manifest is None:
        raise RestoreError(f"refusing to restore: {checked.summary}")
    return checked


class _Unpacker:
    """Writes the members under the restored trees into their staging places, never through a link.

    Directories are opened one level at a time relative to the level above (``O_NOFOLLOW``), kept open along
    the current path; files are created with ``O_EXCL | O_NOFOLLOW`` and given their owner, mode and times
    through their descriptor. Links wait for :meth:`finish`, which runs only after the verification passed.
    """

    def __init__(
        self,
        units: list[Unit],
        parent_fds: list[int],
        stagings: list[str],
        staging_fds: list[int],
        dirs: dict[str, tuple[int, int, int, int]],
    ) -> None:
        self._staging_fds = staging_fds  # owned by the caller
        self.units = units
        self._set_dirs = dirs
        self._parents = parent_fds
        self._stagings = stagings
        self.written: set[str] = set()
        self.files = 0
        self.bytes = 0
        self.current_path = ""
        self._links: list[tuple[int, tuple[str, ...], Member]] = []
        self._dirs: list[tuple[int, tuple[str, ...], Member]] = []
        self._stack: list[tuple[int, tuple[str, ...], int]] = []
        self._fd = -1
        self._root_file = -1  # the unit whose root file is being written (its metadata waits for finish())
        self._held: list[tuple[int, Member]] = []  # such files, open, until the set verified
        self._flushed = 0
        self._flusher: threading.Thread | None = None
        self._root = os.geteuid() == 0

    def _dir(self, unit: int, rel: tuple[str, ...], create: bool = True) -> int:
        """The staging directory ``rel`` of ``unit`` (``()``: the staging root), made when missing."""
        while self._stack and not (self._stack[-1][0] == unit and rel[: len(self._stack[-1][1])] == self._stack[-1][1]):
            os.close(self._stack.pop()[2])
        if not self._stack:
            self._stack.append((unit, (), os.dup(self._staging_fds[unit])))
        while len(self._stack[-1][1]) < len(rel):
            top = self._stack[-1]
            sub = rel[: len(top[1]) + 1]
            if create:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(sub[-1], 0o700, dir_fd=top[2])
            self._stack.append((unit, sub, safe_fs.open_dir(sub[-1], top[2])))
        return self._stack[-1][2]

    def begin(self, member: Member) -> Callable[[memoryview], None] | None:
        path = "/" + member.name
        index = next((n for n, u in enumerate(self.units) if _under(path, u.path)), -1)
        if index < 0:
            return None
        unit = self.units[index]
        rel = unit.prefix + (tuple(os.path.relpath(path, unit.path).split("/")) if path != unit.path else ())
        if not rel and member.kind != unit.kind:
            return None  # not what the manifest says this path is: verify refuses the set, nothing is staged
        if member.kind == "symlink":
            self.written.add(path)
            self._links.append((index, rel, member))
            return None
        try:
            if member.kind == "dir":
                self._dir(index, rel)
                self._dirs.append((index, rel, member))
                self.written.add(path)
                return None
            if not rel:
                self._fd = os.dup(self._staging_fds[index])
                self._root_file = index
                self.current_path = os.path.join(unit.parent, self._stagings[index])
            else:
                parent = self._dir(index, rel[:-1])
                self._fd = os.open(
                    rel[-1], os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=parent
                )
                self.current_path = os.path.join(unit.parent, self._stagings[index], *rel)
        except OSError as exc:
            if isinstance(exc, safe_fs.UnsafePathError) or exc.errno in _CLASHES:
                # Two members of this set claim one place (a file and a directory, a name twice): the set's
                # structure is wrong, and the verification running alongside refuses it in its own words.
                return None
            raise RestoreError(f"could not unpack {member.name}: {exc.strerror}") from exc
        self.written.add(path)
        return self._write

    def _write(self, chunk: memoryview) -> None:
        try:
            write_all(self._fd, chunk)
        except OSError as exc:
            raise RestoreError(f"could not write {self.current_path}: {exc.strerror}") from exc
        self.bytes += len(chunk)
        if self.bytes - self._flushed >= _FLUSH_EVERY and not (self._flusher and self._flusher.is_alive()):
            # Write back what is staged while unpacking goes on: the sync before the swap stays short.
            self._flushed = self.bytes
            self._flusher = threading.Thread(target=os.sync, daemon=True)
            self._flusher.start()

    def end(self, member: Member) -> None:
        if self._fd < 0:
            return
        if self._root_file >= 0:
            # A tree that is one file is staged right in the target's directory, where others may look: its
            # owner and mode (setuid, say) are given only once the whole set verified, in finish().
            self._held.append((self._fd, member))
            self._fd, self._root_file = -1, -1
            self.files += 1
            return
        try:
            _set_metadata(self._fd, member.mode, member.uid, member.gid, member.mtime, self._root)
        except OSError as exc:
            raise RestoreError(f"could not give {self.current_path} its owner, mode and times: {exc.strerror}") from exc
        finally:
            os.close(self._fd)
            self._fd = -1
        self.files += 1

    def finish(self) -> None:
        """Make the links, give the files that are whole trees their metadata, then every directory its owner,
        mode and times, deepest first."""
        while self._held:
            fd, member = self._held.pop()
            try:
                _set_metadata(fd, member.mode, member.uid, member.gid, member.mtime, self._root)
            finally:
                os.close(fd)
        for index, rel, member in self._links:
            if rel:
                parent, name = self._dir(index, rel[:-1]), rel[-1]
            else:
                parent, name = self._parents[index], self._stagings[index]
            os.symlink(member.linkname, name, dir_fd=parent)
            if self._root:
                os.chown(name, member.uid, member.gid, dir_fd=parent, follow_symlinks=False)
            os.utime(name, ns=(int(member.mtime * 1e9),) * 2, dir_fd=parent, follow_symlinks=False)
        todo = [(index, rel, member.mode, member.uid, member.gid, member.mtime) for index, rel, member in self._dirs]
        for index, unit in enumerate(self.units):  # the missing directories staged above the chosen path
            for depth in range(len(unit.prefix)):
                above = unit.path.rsplit("/", len(unit.prefix) - depth)[0]
                if above in self._set_dirs:
                    todo.append((index, unit.prefix[:depth], *self._set_dirs[above]))
        for index, rel, mode, uid, gid, mtime in sorted(todo, key=lambda d: (d[0], len(d[1])), reverse=True):
            _set_metadata(self._dir(index, rel, create=False), mode, uid, gid, mtime, self._root)
        self.close()

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        while self._held:
            os.close(self._held.pop()[0])
        while self._stack:
            os.close(self._stack.pop()[2])


def _set_metadata(fd: int, mode: int, uid: int, gid: int, mtime: float, as_root: bool) -> None:
    """Owner, then mode (chown clears setuid and setgid), then times: all through the descriptor."""
    if as_root:
        os.fchown(fd, uid, gid)
    os.fchmod(fd, mode & 0o7777)
    os.utime(fd, ns=(int(mtime * 1e9),) * 2)


# -- the journal's operations ------------------------------------------------------------------------------------


def _undo(record: Record) -> None:
    """Put back what ``record`` changed: staged trees removed, safety copies renamed back.

    Everything is checked first (device and inode of what is at each target, safety copy and staging name);
    when anything there is not what the restore made or moved, nothing at all is changed and JournalError says
    what. Then, per tree: the restored tree is renamed aside, the safety copy renamed back, the tree removed, so a
    kill at any point leaves something the next run finishes.
    """
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


def _aside(record: Record, swap: SwapRecord) -> str:
    return _beside(swap.name, "undone", record.id)


def _beside(name: str, what: str, restore_id: str) -> str:
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


def recover(journal: Journal, log: Log = _no_log) -> list[dict[str, object]]:
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
            record.reason += _sentence(exc)
        journal.save(record)
        log(f"restore {record.id} of {record.archive} was {_said(was)}; now {record.state.replace('_', ' ')}")
        done.append(record.summary())
    return done


def recover_interrupted(state_dir: str | None = None, log: Log = _no_log) -> list[dict[str, object]]:
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
    return any(_under(s.target, t) or _under(t, s.target) for s in record.swaps for t in targets)


def supersede(journal: Journal, newer: Record, log: Log = _no_log) -> list[dict[str, object]]:
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
                f"committing restore {restore_id} failed: {_sentence(exc)}; the next commit (or restore) on this "
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
                f"rolling back restore {restore_id} failed: {_sentence(exc)}; the next roll back (or restore) on "
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
