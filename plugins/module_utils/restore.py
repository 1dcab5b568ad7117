# Copyright: selfhost.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Restoring backup sets: verified first, unpacked beside the target, swapped in, undoable.

Standard library only. A restore never writes into the live tree:

1. The set is verified (checksum, members, databases). A set that fails, or
   whose format is newer than this collection knows, is refused before
   anything is touched.
2. Every member is checked against the target: no absolute path, no ``..``,
   no hard link or device, no symbolic link pointing outside the restored tree,
   nothing written through a link.
3. Each restored tree (a path recorded in the set, or a chosen part of one)
   is unpacked into a hidden staging directory next to its target, on the same
   file system, with modes, owners and times.
4. The current target is renamed to a hidden *safety copy* and the staged tree
   renamed into its place: two renames per tree.

:func:`rollback` puts the safety copies back; :func:`commit` deletes them once
the restored application has been checked.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import shutil
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone

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
from .tar_stream import Member

Log = Callable[[str], None]
_FLUSH_EVERY = 128 * 1024 * 1024


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
    files: int = 0
    bytes: int = 0
    seconds: float = 0.0
    manifest: dict[str, object] = field(default_factory=dict)


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
        if not posixpath.isabs(path):
            raise RestoreError(f"paths to restore must be absolute, got {raw!r}")
        if not any(_under(path, r) for r in recorded):
            raise RestoreError(f"{path} is not in this backup set (it holds {', '.join(recorded)})")
        units.append(path)
    return sorted(set(units))


def check_links(manifest: dict[str, object], units: list[str]) -> None:
    """Refuse symbolic links that point outside the tree they are restored into."""
    for entry in manifest.get("files", []):  # type: ignore[attr-defined]
        if entry.get("type") != "symlink":
            continue
        path = "/" + str(entry["path"])
        unit = next((u for u in units if _under(path, u)), None)
        if unit is None:
            continue
        target = str(entry.get("target", ""))
        resolved = posixpath.normpath(posixpath.join(posixpath.dirname(path), target))
        if posixpath.isabs(target) or not _under(resolved, unit):
            raise RestoreError(f"the set holds a link {path} -> {target} that points outside {unit}; refusing it")


def restore(
    archive: str,
    *,
    dest_root: str = "/",
    only: Iterable[str] | None = None,
    log: Log = _no_log,
    stamp: str | None = None,
) -> Restored:
    """Verify ``archive`` and put its trees (or the ``only`` parts) in place under ``dest_root``.

    With the sidecar manifest at hand, the archive is verified and unpacked into staging in one
    pass; the staged trees are swapped in only when every check passed. Without it, the set is
    verified first and unpacked in a second pass.
    """
    started = time.monotonic()
    stamp = stamp or datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    root = os.path.abspath(dest_root)
    try:
        manifest: dict[str, object] | None = read_manifest(Sidecars.of(archive).manifest)
    except NewerFormatError as exc:
        raise RestoreError(str(exc)) from exc
    except BackupError:
        manifest = None
    result = Restored(archive, [])
    unpacker: _Unpacker | None = None
    try:
        verified_now = False
        if manifest is None:  # a first pass learns what the set holds (and verifies it)
            manifest = _verify(archive, log, None, verified_now).manifest or {}
            verified_now = True
        units, expected = _plan(manifest, only)
        unpacker = _Unpacker(units, {u: _staging(root, u, stamp) for u in units})
        log(f"restore: verifying {os.path.basename(archive)} and unpacking it beside the targets")
        manifest = _verify(archive, log, unpacker, verified_now).manifest or manifest
        result.manifest = manifest
        missing = sorted(expected - unpacker.written)
        if missing:
            raise RestoreError(f"{len(missing)} member(s) of the set were not restored, first {missing[0]}")
        unpacker.apply_directory_metadata()
        os.sync()
        for unit in units:
            target = os.path.join(root, unit.lstrip("/"))
            safety = ""
            if os.path.lexists(target):
                safety = _sibling(target, f"safety-{stamp}")
                os.rename(target, safety)
            result.swaps.append(Swap(target, safety))
            os.rename(unpacker.staging[unit], target)
        result.files, result.bytes = unpacker.files, unpacker.bytes
    except BaseException as exc:
        rollback(result.swaps)
        if unpacker is not None:
            unpacker.close()
            for path in unpacker.staging.values():
                _remove(path)
        if isinstance(exc, (RestoreError, KeyboardInterrupt)):
            raise
        if isinstance(exc, BackupError):
            raise RestoreError(str(exc)) from exc
        if isinstance(exc, OSError):
            raise RestoreError(f"could not restore {exc.filename or ''}: {exc.strerror}".replace(" :", ":")) from exc
        raise
    result.seconds = round(time.monotonic() - started, 3)
    log(f"restore: {result.files} files, {result.bytes / 2**20:.1f} MiB in {result.seconds:.1f} s")
    return result


def _plan(manifest: dict[str, object], only: Iterable[str] | None) -> tuple[list[str], set[str]]:
    """The trees to restore and every member path expected under them."""
    units = units_for(manifest, only)
    check_links(manifest, units)
    expected = {
        "/" + str(e["path"])
        for e in manifest["files"]  # type: ignore[attr-defined]
        if any(_under("/" + str(e["path"]), u) for u in units)
    }
    if not expected:
        raise RestoreError("nothing in this backup set lies under the chosen paths")
    return units, expected


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


def _staging(root: str, unit: str, stamp: str) -> str:
    target = os.path.join(root, unit.lstrip("/"))
    os.makedirs(os.path.dirname(target), exist_ok=True)
    return _sibling(target, f"restore-{stamp}")


def _sibling(target: str, what: str) -> str:
    return os.path.join(os.path.dirname(target), f".{os.path.basename(target)}.selfhost-dr-{what}")


class _Unpacker:
    """Writes the members under the restored trees into their staging directories, refusing what is unsafe."""

    def __init__(self, units: list[str], staging: dict[str, str]) -> None:
        self.units = units
        self.staging = staging
        self.written: set[str] = set()
        self.files = 0
        self.bytes = 0
        self._links: set[str] = set()
        self._dirs: list[tuple[str, Member]] = []
        self._fd = -1
        self.current_path = ""
        self._made: set[str] = set()
        self._flushed = 0
        self._flusher: threading.Thread | None = None
        self._root = os.geteuid() == 0

    def begin(self, member: Member) -> Callable[[memoryview], None] | None:
        path = "/" + member.name
        unit = next((u for u in self.units if _under(path, u)), None)
        if unit is None:
            return None
        if member.kind not in ("file", "dir", "symlink") or ".." in member.name.split("/"):
            raise RestoreError(f"member {member.name!r} is not a file, directory or link; refusing it")
        rel = os.path.relpath(path, unit) if path != unit else ""
        parts = rel.split("/") if rel else []
        for n in range(1, len(parts)):
            if unit + "/" + "/".join(parts[:n]) in self._links:
                raise RestoreError(f"member {member.name!r} would be written through a link; refusing it")
        dest = os.path.join(self.staging[unit], rel) if rel else self.staging[unit]
        try:
            parent = os.path.dirname(dest)
            if parts and parent not in self._made:
                os.makedirs(parent, mode=0o700, exist_ok=True)
                self._made.add(parent)
            self.written.add(path)
            if member.kind == "dir":
                if dest not in self._made:
                    os.makedirs(dest, mode=0o700, exist_ok=True)
                    self._made.add(dest)
                self._dirs.append((dest, member))
                return None
            if member.kind == "symlink":
                os.symlink(member.linkname, dest)
                self._links.add(path)
                if self._root:
                    os.lchown(dest, member.uid, member.gid)
                return None
            self._fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise RestoreError(f"could not write {dest}: {exc.strerror}") from exc
        self.current_path = dest
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
        try:
            if self._root:
                os.fchown(self._fd, member.uid, member.gid)
            os.fchmod(self._fd, member.mode & 0o7777)
        finally:
            os.close(self._fd)
            self._fd = -1
        os.utime(self.current_path, (member.mtime, member.mtime))
        self.files += 1

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def apply_directory_metadata(self) -> None:
        # Deepest first: a directory's mode may forbid writing, and writing into it changes its times.
        for dest, member in sorted(self._dirs, key=lambda d: d[0].count("/"), reverse=True):
            if self._root:
                os.chown(dest, member.uid, member.gid)
            os.chmod(dest, member.mode & 0o7777)
            os.utime(dest, (member.mtime, member.mtime))


def rollback(swaps: Iterable[Swap]) -> None:
    """Put the safety copies back (the restored trees are removed)."""
    for swap in reversed(list(swaps)):
        if os.path.lexists(swap.target):
            _remove(swap.target)
        if swap.safety and os.path.lexists(swap.safety):
            os.rename(swap.safety, swap.target)


def commit(swaps: Iterable[Swap]) -> None:
    """Delete the safety copies: the restore stays."""
    for swap in swaps:
        if swap.safety:
            _remove(swap.safety)


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
