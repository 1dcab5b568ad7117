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
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone

from .backup_set import BackupError, decompressor, verify
from .tar_stream import Member, TarReader, TarStreamError

Log = Callable[[str], None]


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
    """Verify ``archive`` and put its trees (or the ``only`` parts) in place under ``dest_root``."""
    started = time.monotonic()
    try:
        checked = verify(archive, record=False, log=log)
    except BackupError as exc:
        raise RestoreError(str(exc)) from exc
    if not checked.ok or checked.manifest is None:
        raise RestoreError(f"refusing to restore: {checked.summary}")
    manifest = checked.manifest
    units = units_for(manifest, only)
    check_links(manifest, units)
    stamp = stamp or datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    root = os.path.abspath(dest_root)
    targets = {u: os.path.join(root, u.lstrip("/")) for u in units}
    staging = {u: _sibling(t, f"restore-{stamp}") for u, t in targets.items()}
    expected = {
        "/" + str(e["path"])
        for e in manifest["files"]  # type: ignore[attr-defined]
        if any(_under("/" + str(e["path"]), u) for u in units)
    }
    if not expected:
        raise RestoreError("nothing in this backup set lies under the chosen paths")
    result = Restored(archive, [], manifest=manifest)
    try:
        for target in targets.values():
            os.makedirs(os.path.dirname(target), exist_ok=True)
        log(f"restore: unpacking {len(expected)} members of {os.path.basename(archive)}")
        written = _unpack(archive, units, staging, result)
        missing = sorted(expected - written)
        if missing:
            raise RestoreError(f"{len(missing)} member(s) of the set were not restored, first {missing[0]}")
        os.sync()
        for unit in units:
            target = targets[unit]
            safety = ""
            if os.path.lexists(target):
                safety = _sibling(target, f"safety-{stamp}")
                os.rename(target, safety)
            result.swaps.append(Swap(target, safety))
            os.rename(staging[unit], target)
    except BaseException as exc:
        rollback(result.swaps)
        for path in staging.values():
            _remove(path)
        if isinstance(exc, (RestoreError, KeyboardInterrupt)):
            raise
        if isinstance(exc, TarStreamError):
            raise RestoreError(f"the archive cannot be read: {exc}") from exc
        if isinstance(exc, OSError):
            raise RestoreError(f"could not restore {exc.filename or ''}: {exc.strerror}".replace(" :", ":")) from exc
        raise
    result.seconds = round(time.monotonic() - started, 3)
    log(f"restore: {result.files} files, {result.bytes / 2**20:.1f} MiB in {result.seconds:.1f} s")
    return result


def _sibling(target: str, what: str) -> str:
    return os.path.join(os.path.dirname(target), f".{os.path.basename(target)}.selfhost-dr-{what}")


def _unpack(archive: str, units: list[str], staging: dict[str, str], result: Restored) -> set[str]:
    proc = decompressor(archive)
    assert proc.stdout is not None  # noqa: S101
    written: set[str] = set()
    links: set[str] = set()
    dirs: list[tuple[str, Member]] = []
    euid = os.geteuid()
    try:
        with open(proc.stdout.fileno(), "rb", buffering=1024 * 1024, closefd=False) as stream:
            reader = TarReader(stream)
            for member in reader.members():
                path = "/" + member.name
                unit = next((u for u in units if _under(path, u)), None)
                if unit is None:
                    continue
                if member.kind not in ("file", "dir", "symlink") or ".." in member.name.split("/"):
                    raise RestoreError(f"member {member.name!r} is not a file, directory or link; refusing it")
                rel = os.path.relpath(path, unit) if path != unit else ""
                parts = rel.split("/") if rel else []
                for n in range(1, len(parts)):
                    if "/".join(parts[:n]) in links:
                        raise RestoreError(f"member {member.name!r} would be written through a link; refusing it")
                dest = os.path.join(staging[unit], rel) if rel else staging[unit]
                if parts:
                    os.makedirs(os.path.dirname(dest), mode=0o700, exist_ok=True)
                if member.kind == "dir":
                    os.makedirs(dest, mode=0o700, exist_ok=True)
                    dirs.append((dest, member))
                elif member.kind == "symlink":
                    os.symlink(member.linkname, dest)
                    links.add(rel)
                    if euid == 0:
                        os.lchown(dest, member.uid, member.gid)
                else:
                    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
                    try:
                        for chunk in reader.chunks():
                            view = memoryview(chunk)
                            while view:
                                view = view[os.write(fd, view) :]
                            result.bytes += len(chunk)
                        if euid == 0:
                            os.fchown(fd, member.uid, member.gid)
                        os.fchmod(fd, member.mode & 0o7777)
                    finally:
                        os.close(fd)
                    os.utime(dest, (member.mtime, member.mtime))
                    result.files += 1
                written.add(path)
        # Directories last, deepest first: their modes may forbid writing, and writing changes their times.
        for dest, member in sorted(dirs, key=lambda d: d[0].count("/"), reverse=True):
            if euid == 0:
                os.chown(dest, member.uid, member.gid)
            os.chmod(dest, member.mode & 0o7777)
            os.utime(dest, (member.mtime, member.mtime))
    finally:
        with contextlib.suppress(OSError):
            proc.stdout.close()
        proc.kill()
        proc.wait()
    return written


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
