# Copyright: selfhost.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Scanning the paths to back up: one walk through directory descriptors, never following a link.

Every directory is opened relative to its already-opened parent with ``O_NOFOLLOW`` and checked against what
the scan saw; create() reads members through the same walker (:class:`Dirs`).
"""

from __future__ import annotations

import errno
import fnmatch
import os
import resource
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field

from .. import safe_fs
from .._common import BackupError
from ..sqlite_snapshot import (
    SQLITE_HEADER,
)
from .manifest import MANIFEST_MEMBER

SQLITE_SIDE_FILES = ("-wal", "-shm", "-journal")


@dataclass
class Root:
    """One path to back up, opened as: its parent directory (resolved normally: the host's own layout), then
    ``name`` in it and everything below without following a link. ``link`` is set when the path given was a
    symbolic link, followed to ``real``."""

    path: str
    stored: str  # the path its members are named after
    parent: str
    name: str
    link: str = ""
    parent_st: os.stat_result | None = None


@dataclass
class Entry:
    """One path to archive. ``kind`` is dir, file, sqlite or symlink.

    ``rel`` is its place below its root's parent directory (the root's name first), which is how it is opened
    again: one directory at a time, each relative to the one before, never through a link.
    """

    path: str
    member: str
    kind: str
    st: os.stat_result
    target: str = ""
    root: int = 0
    rel: tuple[str, ...] = ()
    wal: bool = False  # a database whose header says WAL mode (when it was scanned)


@dataclass
class Scan:
    entries: list[Entry] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    roots: list[Root] = field(default_factory=list)
    dirs: dict[tuple[int, tuple[str, ...]], os.stat_result] = field(default_factory=dict)

    @property
    def bytes(self) -> int:
        return sum(e.st.st_size for e in self.entries if e.kind in ("file", "sqlite"))

    def count(self, kind: str) -> int:
        return sum(1 for e in self.entries if e.kind == kind)

    @property
    def links(self) -> list[dict[str, str]]:
        """The paths given that were symbolic links, and what they led to."""
        return [{"path": r.stored, "target": r.link} for r in self.roots if r.link]


def _excluded(path: str, patterns: Iterable[str]) -> str:
    base = os.path.basename(path)
    for pattern in patterns:
        if fnmatch.fnmatchcase(path, pattern) or fnmatch.fnmatchcase(base, pattern):
            return pattern
    return ""


def special_kind(mode: int) -> str:
    if stat.S_ISSOCK(mode):
        return "socket"
    if stat.S_ISFIFO(mode):
        return "fifo"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "device"
    return "special file"


class Dirs:
    """Directories below the roots, opened one level at a time relative to the level above.

    Holds the open directories of the current path only (a stack), so walking a tree in order opens each
    directory once. A directory that is now a link, or not the one the scan saw (device and inode), raises
    ``UnsafePathError``: nothing below it is read.
    """

    def __init__(self, roots: list[Root], known: dict[tuple[int, tuple[str, ...]], os.stat_result]) -> None:
        self._roots = roots
        self._known = known
        self._stack: list[tuple[int, tuple[str, ...], int]] = []

    def fd(self, root: int, rel: tuple[str, ...]) -> int:
        while self._stack and not (self._stack[-1][0] == root and rel[: len(self._stack[-1][1])] == self._stack[-1][1]):
            os.close(self._stack.pop()[2])
        if not self._stack:
            spec = self._roots[root]
            fd = os.open(spec.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            if spec.parent_st is not None and not safe_fs.same(os.fstat(fd), spec.parent_st):
                os.close(fd)
                raise safe_fs.UnsafePathError(errno.ESTALE, "was replaced", spec.parent)
            self._stack.append((root, (), fd))
        while len(self._stack[-1][1]) < len(rel):
            top = self._stack[-1]
            sub = rel[: len(top[1]) + 1]
            fd = safe_fs.open_dir(sub[-1], top[2], self._known.get((root, sub)))
            self._stack.append((root, sub, fd))
        return self._stack[-1][2]

    def close(self) -> None:
        while self._stack:
            os.close(self._stack.pop()[2])


def _root_of(raw: str, stored: str) -> Root:
    if not os.path.isabs(raw):
        raise BackupError(f"paths to back up must be absolute, got {raw!r}")
    path = os.path.normpath(raw)
    if path == "/":
        raise BackupError("backing up / as a whole is not supported; list the directories to back up")
    if not os.path.lexists(path):
        raise BackupError(f"path {path} does not exist")
    # What the user meant is what a link leads to (the set records that it was one), but only through links no one
    # else could have put or changed: otherwise a user would choose what root archives.
    try:
        real = safe_fs.resolve_trusted(path)
    except safe_fs.UntrustedLinkError as exc:
        raise BackupError(
            f"path {path} goes through the symbolic link {exc.link}, which others could have changed ({exc.problem}); "
            "not followed"
        ) from exc
    link = ""
    if os.path.islink(path):
        if not os.path.exists(real) or real == "/":
            raise BackupError(f"path {path} is a symbolic link to {os.readlink(path)}, which does not exist")
        link = real
    parent, name = os.path.split(real)
    return Root(path, stored, parent, name, link)


def scan(paths: Iterable[str], excludes: Iterable[str] = (), stored_as: dict[str, str] | None = None) -> Scan:
    """Everything under ``paths`` that a set would hold, in archive order, without reading file contents.

    ``stored_as`` maps a path to the path its members are named after in the archive (a copy taken
    while an instance was stopped is stored under the instance's own data dir). A path that is itself a
    symbolic link is followed (and recorded as one); below it, no link is ever followed. Fails with one
    sentence when a path does not exist or a directory or file cannot be read.
    """
    stored_as = {os.path.normpath(k): os.path.normpath(v) for k, v in (stored_as or {}).items()}
    patterns = list(excludes)
    given = sorted({os.path.normpath(p) if os.path.isabs(p) else p for p in paths})
    roots = [_root_of(p, stored_as.get(os.path.normpath(p), os.path.normpath(p))) for p in given]
    roots = [r for r in roots if not any(r.path.startswith(o.path.rstrip("/") + "/") for o in roots if o is not r)]
    result = Scan(roots=roots)
    seen: set[str] = set()
    safe_fs.raise_fd_limit()
    for index, root in enumerate(roots):
        try:
            _walk(index, root, patterns, result, seen)
        except OSError as exc:
            raise BackupError(read_error(exc, root.path)) from exc
    databases = {e.path for e in result.entries if e.kind == "sqlite"}
    kept: list[Entry] = []
    for entry in result.entries:
        side = next((s for s in SQLITE_SIDE_FILES if entry.path.endswith(s)), "")
        if entry.kind == "file" and side and entry.path[: -len(side)] in databases:
            result.skipped.append({"path": entry.path, "reason": f"SQLite {side} file (the snapshot holds its data)"})
            continue
        kept.append(entry)
    result.entries = kept
    return result


def read_error(exc: OSError, path: str) -> str:
    if exc.errno == errno.EMFILE:
        limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        return (
            f"the tree under {path} is nested deeper than this process may hold directories open (open-file limit "
            f"{limit}); raise the limit (ulimit -n, LimitNOFILE=)"
        )
    return f"{exc.filename or path} cannot be read: {exc.strerror or exc}"


def _walk(index: int, root: Root, patterns: list[str], result: Scan, seen: set[str]) -> None:
    try:
        root.parent_st = os.stat(root.parent)
    except OSError as exc:
        raise BackupError(f"path {root.path} cannot be reached: {exc.strerror}") from exc
    dirs = Dirs(result.roots, result.dirs)
    stack: list[tuple[str, ...]] = [(root.name,)]
    try:
        while stack:
            rel = stack.pop()
            path = os.path.join(root.path, *rel[1:])
            pattern = _excluded(path, patterns)
            if pattern:
                result.skipped.append({"path": path, "reason": f"excluded by {pattern}"})
                continue
            member = os.path.join(root.stored, *rel[1:]).lstrip("/")
            if member == MANIFEST_MEMBER:
                raise BackupError(f"{path} has the name this collection gives its manifest; it cannot be backed up")
            if member in seen:
                continue
            try:
                parent = dirs.fd(index, rel[:-1])
                st = os.stat(rel[-1], dir_fd=parent, follow_symlinks=False)
            except FileNotFoundError:
                result.skipped.append({"path": path, "reason": "vanished while scanning"})
                continue
            except safe_fs.UnsafePathError:
                result.skipped.append({"path": path, "reason": "its directory was replaced while scanning"})
                continue
            seen.add(member)
            mode = st.st_mode
            if stat.S_ISDIR(mode):
                result.dirs[(index, rel)] = st
                try:
                    fd = dirs.fd(index, rel)
                    with os.scandir(fd) as it:
                        names = sorted(entry.name for entry in it)
                except PermissionError as exc:
                    raise BackupError(f"directory {path} cannot be read: permission denied") from exc
                except (FileNotFoundError, safe_fs.UnsafePathError):
                    result.skipped.append({"path": path, "reason": "replaced or removed while scanning"})
                    continue
                result.entries.append(Entry(path, member, "dir", st, root=index, rel=rel))
                stack.extend((*rel, name) for name in reversed(names))
            elif stat.S_ISREG(mode):
                if not os.access(rel[-1], os.R_OK, dir_fd=parent, follow_symlinks=False):
                    raise BackupError(f"file {path} cannot be read: permission denied")
                header = _sqlite_header(rel[-1], parent, st)
                kind = "sqlite" if header else "file"
                wal = header[18:20] == b"\x02\x02"
                result.entries.append(Entry(path, member, kind, st, root=index, rel=rel, wal=wal))
            elif stat.S_ISLNK(mode):
                target = os.readlink(rel[-1], dir_fd=parent)
                result.entries.append(Entry(path, member, "symlink", st, target, root=index, rel=rel))
            else:
                result.skipped.append({"path": path, "reason": special_kind(mode)})
    finally:
        dirs.close()


def _sqlite_header(name: str, parent: int, st: os.stat_result) -> bytes:
    """The first 20 bytes of a SQLite database (through its journal mode's bytes), or ``b""`` for any other file."""
    if st.st_size < 100:  # smaller than a SQLite header: not a database
        return b""
    try:
        fd, opened = safe_fs.open_file(name, parent)
    except OSError:
        return b""
    try:
        header = os.read(fd, 20) if safe_fs.same(opened, st) else b""
    except OSError:
        return b""
    finally:
        os.close(fd)
    return header if header.startswith(SQLITE_HEADER) and len(header) == 20 else b""
