# Copyright: selfhost.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Backup sets: make, verify and list them.

Standard library only. A backup set is one archive file and three small
files beside it::

    tenement-web1-20261122T035100Z-hot.tar.zst                 the archive
    tenement-web1-20261122T035100Z-hot.tar.zst.sha256          sha256sum -c format
    tenement-web1-20261122T035100Z-hot.tar.zst.manifest.json   a copy of the manifest
    tenement-web1-20261122T035100Z-hot.tar.zst.verified.json   written by verify()

The archive is a plain POSIX (pax) tar stream compressed by the ``zstd``
command (``gzip`` where zstd is missing), so ``zstd -d < set.tar.zst | tar -x``
restores it by hand. Members are the backed-up paths without their leading
``/``. Every SQLite database found in the paths (by its header, not its name)
is stored as a consistent snapshot instead of the live file, and its ``-wal``,
``-shm`` and ``-journal`` files are left out.

The archive is written in one pass: each file is read once, hashed as it goes
into the tar stream, and the compressed stream is hashed as it goes to disk.
So the manifest, which lists every member's sha256, is the *last* member of the
archive (``selfhost-dr-manifest.json``); the sidecar copy lets the catalog read
it without decompressing anything.

Everything is written under hidden temporary names, fsynced, and renamed into
place, archive last: a failure leaves no file that looks like a backup.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import errno
import fcntl
import fnmatch
import grp
import hashlib
import io
import json
import os
import pwd
import queue
import re
import resource
import shutil
import signal
import socket
import sqlite3
import stat
import subprocess
import tarfile
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Protocol

from . import safe_fs
from .sqlite_snapshot import (
    SQLITE_HEADER,
    CannotOpenError,
    NotADatabaseError,
    ReplacedError,
    SnapshotError,
    fsync_dir,
    integrity_of,
    snapshot,
    snapshot_bytes,
)
from .tar_stream import Member, TarReader, TarStreamError

FORMAT = "selfhost.dr/backup-set"
FORMAT_VERSION = 1
MANIFEST_MEMBER = "selfhost-dr-manifest.json"
EXTENSIONS = {"zstd": ".tar.zst", "gzip": ".tar.gz"}
MAGIC = {b"\x28\xb5\x2f\xfd": "zstd", b"\x1f\x8b": "gzip"}
MIB = 1024 * 1024
DEFAULT_MEMORY_LIMIT = 64 * MIB
# A manifest lists every member in about 250 bytes: 256 MiB is a million files with room to spare, and a bound
# on what a hostile set can make this process read into memory.
MAX_MANIFEST = 256 * MIB
# What such a manifest can list: verify keeps one small record per member, and stops reading past this many.
MAX_MEMBERS = 4_000_000
# Linux: a name is at most 255 bytes (a whole path may be longer: restores create members relative to their
# directory). A member that cannot be created is refused by verify, as by restore.
MAX_NAME_BYTES = 255
SQLITE_SIDE_FILES = ("-wal", "-shm", "-journal")
# Connection.serialize/deserialize (Python 3.11+) keep snapshots in memory; older hosts use a staging file.
IN_MEMORY = hasattr(sqlite3.Connection, "serialize")

_CHUNK = MIB
_SYNC_EVERY = 64 * MIB
_BLOCK = tarfile.BLOCKSIZE
_RECORD = tarfile.RECORDSIZE
_STAMP = "%Y%m%dT%H%M%SZ"
_TOKEN_RE = re.compile(r"[^A-Za-z0-9_.-]+")
_NAME_RE = re.compile(
    r"^(?P<app>[A-Za-z0-9_.]+)-(?P<host>.+)-(?P<stamp>\d{8}T\d{6}Z)-(?P<label>[A-Za-z0-9_.-]+)\.tar\.(?:zst|gz)$"
)

Log = Callable[[str], None]


class BackupError(Exception):
    """A failure with one sentence that says what went wrong."""


class NewerFormatError(BackupError):
    """A set written by a newer selfhost.dr: never read as if it were understood."""


def _no_log(_line: str) -> None:
    return None


try:
    _LIBC: ctypes.CDLL | None = ctypes.CDLL(None, use_errno=True)
except OSError:  # pragma: no cover - not Linux
    _LIBC = None
_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """In a child between fork and exec: be killed when this process dies (Linux), so a killed backup never
    leaves a compressor running."""
    if _LIBC is not None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def default_host() -> str:
    """This host's short name, as set names use it."""
    return socket.gethostname().split(".")[0]


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


def iso(when: datetime) -> str:
    return when.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_iso(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc)


# -- names -----------------------------------------------------------------------------------------------------------


def token(value: str) -> str:
    """``value`` made safe for a file name: letters, digits, ``_ . -``."""
    cleaned = _TOKEN_RE.sub("_", value).strip("._-")
    return cleaned or "x"


def set_name(app: str, host: str, when: datetime, label: str, compression: str) -> str:
    """``{app}-{host}-{UTC timestamp}-{label}.tar.zst``: sets of one app and host sort by time."""
    stamp = when.astimezone(timezone.utc).strftime(_STAMP)
    return f"{token(app).replace('-', '_')}-{token(host)}-{stamp}-{token(label)}{EXTENSIONS[compression]}"


def parse_name(name: str) -> dict[str, object] | None:
    """The parts of a set's file name, or None when it is not one."""
    match = _NAME_RE.match(name)
    if not match:
        return None
    when = datetime.strptime(match["stamp"], _STAMP).replace(tzinfo=timezone.utc)
    return {"app": match["app"], "host": match["host"], "time": when, "label": match["label"]}


@dataclass(frozen=True)
class Sidecars:
    checksum: str
    manifest: str
    verified: str

    @classmethod
    def of(cls, archive: str) -> Sidecars:
        return cls(archive + ".sha256", archive + ".manifest.json", archive + ".verified.json")


def is_set_file(name: str) -> bool:
    return not name.startswith(".") and any(name.endswith(ext) for ext in EXTENSIONS.values())


# -- what goes in ----------------------------------------------------------------------------------------------------


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


def _special(mode: int) -> str:
    if stat.S_ISSOCK(mode):
        return "socket"
    if stat.S_ISFIFO(mode):
        return "fifo"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "device"
    return "special file"


class _Dirs:
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
            raise BackupError(_read_error(exc, root.path)) from exc
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


def _read_error(exc: OSError, path: str) -> str:
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
    dirs = _Dirs(result.roots, result.dirs)
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
                kind = "sqlite" if _is_sqlite_file(rel[-1], parent, st) else "file"
                result.entries.append(Entry(path, member, kind, st, root=index, rel=rel))
            elif stat.S_ISLNK(mode):
                target = os.readlink(rel[-1], dir_fd=parent)
                result.entries.append(Entry(path, member, "symlink", st, target, root=index, rel=rel))
            else:
                result.skipped.append({"path": path, "reason": _special(mode)})
    finally:
        dirs.close()


def _is_sqlite_file(name: str, parent: int, st: os.stat_result) -> bool:
    if st.st_size < 100:  # smaller than a SQLite header: not a database
        return False
    try:
        fd, opened = safe_fs.open_file(name, parent)
    except OSError:
        return False
    try:
        return safe_fs.same(opened, st) and os.read(fd, len(SQLITE_HEADER)) == SQLITE_HEADER
    except OSError:
        return False
    finally:
        os.close(fd)


# -- the compressed stream -------------------------------------------------------------------------------------------


def compressor_for(compression: str) -> str:
    """The compression to use: ``zstd`` or ``gzip`` (``auto``: zstd when its command is installed)."""
    if compression == "auto":
        return "zstd" if shutil.which("zstd") else "gzip"
    if compression not in EXTENSIONS:
        raise BackupError(f"compression must be auto, zstd or gzip, got {compression!r}")
    if not shutil.which(compression):
        other = "gzip" if compression == "zstd" else "zstd"
        raise BackupError(f"the {compression} command is not installed on this host; install it or use {other}")
    return compression


def _grow_pipe(fd: int) -> None:
    # Fewer, larger transfers between this process and the compressor.
    with contextlib.suppress(OSError, AttributeError):
        fcntl.fcntl(fd, getattr(fcntl, "F_SETPIPE_SZ", 1031), MIB)


def write_all(fd: int, data: bytes | memoryview) -> None:
    """``os.write`` until every byte is written."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


class _Pump:
    """Runs the compressor with its output going straight to ``out_path``.

    The tar stream is written to the compressor's stdin; a thread reads the
    output file right behind the compressor and hashes it, so the whole-file
    sha256 is ready when the compressor exits, without piping the compressed
    bytes through this process.
    """

    def __init__(self, argv: list[str], out_path: str, out_fd: int) -> None:
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=out_fd,
            stderr=subprocess.PIPE,
            bufsize=0,
            close_fds=True,
            preexec_fn=die_with_parent,  # started before any thread of this run
        )
        assert self.proc.stdin is not None  # noqa: S101 - Popen contract
        self._in = self.proc.stdin.fileno()
        _grow_pipe(self._in)
        self.digest = hashlib.sha256()
        self.size = 0
        self.written = 0
        self._buf = bytearray()
        self._exited = threading.Event()
        self._path = out_path
        self._thread = threading.Thread(target=self._follow, daemon=True)
        self._thread.start()

    def _follow(self) -> None:
        synced = 0
        with open(self._path, "rb", buffering=0) as handle:
            while True:
                exited = self._exited.is_set()
                chunk = handle.read(_CHUNK)
                if chunk:
                    self.digest.update(chunk)
                    self.size += len(chunk)
                    if self.size - synced >= _SYNC_EVERY:
                        # Flushing as it goes keeps the final fsync short and the page cache clean.
                        os.fdatasync(handle.fileno())
                        synced = self.size
                elif exited:
                    return  # the compressor is gone and everything it wrote has been read
                else:
                    time.sleep(0.005)

    def write(self, data: bytes | memoryview) -> None:
        self.written += len(data)
        if len(data) >= 256 * 1024:
            self.flush()
            self._send(data)
            return
        self._buf += data
        if len(self._buf) >= _CHUNK:
            self.flush()

    def flush(self) -> None:
        if self._buf:
            self._send(self._buf)
            self._buf = bytearray()

    def _send(self, data: bytes | memoryview) -> None:
        try:
            write_all(self._in, data)
        except BrokenPipeError as exc:
            raise self.failure() from exc

    def _stop(self) -> None:
        self.proc.wait()
        self._exited.set()
        self._thread.join()

    def failure(self) -> BackupError:
        self._stop()
        stderr = self.proc.stderr.read().decode(errors="replace").strip() if self.proc.stderr else ""
        if "No space left" in stderr or "Disk quota" in stderr:
            return _space_error(self.size)
        return BackupError(f"{self.proc.args[0]} failed (exit {self.proc.returncode}): {stderr or 'no message'}")

    def finish(self) -> None:
        self.flush()
        assert self.proc.stdin is not None  # noqa: S101
        self.proc.stdin.close()
        self._stop()
        if self.proc.returncode != 0:
            raise self.failure()

    def abort(self) -> None:
        with contextlib.suppress(OSError):
            self.proc.kill()
        with contextlib.suppress(OSError, ValueError):
            assert self.proc.stdin is not None  # noqa: S101
            self.proc.stdin.close()
        self._stop()
        if self.proc.stderr:
            self.proc.stderr.close()


def _space_error(written: int) -> BackupError:
    return BackupError(f"the backup directory ran out of space after {written / MIB:.1f} MiB of archive")


def _write_error(exc: OSError, written: int) -> BackupError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return _space_error(written)
    return BackupError(f"could not write the backup set: {exc.strerror or exc}")


class _Names:
    """uid/gid to names, looked up once each."""

    def __init__(self) -> None:
        self._users: dict[int, str] = {}
        self._groups: dict[int, str] = {}

    def user(self, uid: int) -> str:
        if uid not in self._users:
            try:
                self._users[uid] = pwd.getpwuid(uid).pw_name
            except KeyError:
                self._users[uid] = ""
        return self._users[uid]

    def group(self, gid: int) -> str:
        if gid not in self._groups:
            try:
                self._groups[gid] = grp.getgrgid(gid).gr_name
            except KeyError:
                self._groups[gid] = ""
        return self._groups[gid]


def _header(entry: Entry, size: int, names: _Names) -> bytes:
    info = tarfile.TarInfo(entry.member)
    info.mode = stat.S_IMODE(entry.st.st_mode)
    info.uid, info.gid = entry.st.st_uid, entry.st.st_gid
    info.uname, info.gname = names.user(info.uid), names.group(info.gid)
    info.mtime = int(entry.st.st_mtime)
    if entry.kind == "dir":
        info.type = tarfile.DIRTYPE
    elif entry.kind == "symlink":
        info.type = tarfile.SYMTYPE
        info.linkname = entry.target
    else:
        info.size = size
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


def _padding(size: int) -> bytes:
    return b"\0" * (-size % _BLOCK)


def _record(entry: Entry, size: int = 0, sha256: str = "") -> dict[str, object]:
    rec: dict[str, object] = {
        "path": entry.member,
        "type": "file" if entry.kind == "sqlite" else entry.kind,
        "mode": f"{stat.S_IMODE(entry.st.st_mode):04o}",
        "uid": entry.st.st_uid,
        "gid": entry.st.st_gid,
        "mtime": int(entry.st.st_mtime),
    }
    if entry.kind in ("file", "sqlite"):
        rec["size"] = size
        rec["sha256"] = sha256
    if entry.kind == "sqlite":
        rec["sqlite"] = True
    if entry.kind == "symlink":
        rec["target"] = entry.target
    return rec


# -- create ----------------------------------------------------------------------------------------------------------


@dataclass
class Created:
    path: str
    name: str
    sha256: str
    size: int
    manifest_path: str
    manifest: dict[str, object]
    stats: dict[str, object]


class _Progress:
    """A log line per stage and about every tenth of the work."""

    def __init__(self, log: Log, total_bytes: int, total_files: int) -> None:
        self.log = log
        self.total_bytes = max(total_bytes, 1)
        self.total_files = total_files
        self.bytes = 0
        self.files = 0
        self._next = self.total_bytes / 10
        self._started = time.monotonic()

    def add(self, size: int, files: int = 0) -> None:
        self.bytes += size
        self.files += files
        if self.bytes >= self._next:
            self._next += self.total_bytes / 10
            rate = self.bytes / MIB / max(time.monotonic() - self._started, 1e-6)
            self.log(
                f"archive: {self.bytes / MIB:.0f} of {self.total_bytes / MIB:.0f} MiB, "
                f"{self.files} of {self.total_files} files ({rate:.0f} MiB/s)"
            )


def create(
    paths: Iterable[str],
    dest_dir: str,
    *,
    app: str = "files",
    app_version: str = "",
    host: str | None = None,
    label: str = "manual",
    metadata: dict[str, object] | None = None,
    excludes: Iterable[str] = (),
    compression: str = "auto",
    level: int = 3,
    threads: int = 0,
    lock_timeout: float = 30.0,
    integrity_check: bool = False,
    memory_limit: int = DEFAULT_MEMORY_LIMIT,
    log: Log = _no_log,
    now: Callable[[], datetime] = utc_now,
    stored_as: dict[str, str] | None = None,
) -> Created:
    """Write one backup set of ``paths`` into ``dest_dir`` and return what was made.

    ``stored_as`` maps a path to the path it is recorded as (see :func:`scan`). ``integrity_check`` runs
    ``PRAGMA integrity_check`` on every snapshot as it is made; off by default, as in ``backup_create``,
    because :func:`verify` checks every database of the set.
    """
    clock = time.monotonic
    t0 = clock()
    started_at = now()
    host = host or default_host()
    excludes = list(excludes)
    if not os.path.isdir(dest_dir):
        raise BackupError(f"backup directory {dest_dir} does not exist")
    if not os.access(dest_dir, os.W_OK | os.X_OK):
        raise BackupError(f"backup directory {dest_dir} is not writable")
    kind = compressor_for(compression)
    paths = list(paths)
    for swept in sweep(dest_dir):
        log(f"removed {swept['path']} ({swept['kind']} left by a run that was killed)")
    found = scan(paths, excludes, stored_as)
    log(
        f"scan: {found.count('file') + found.count('sqlite')} files ({found.count('sqlite')} SQLite databases), "
        f"{found.bytes / MIB:.1f} MiB, {len(found.skipped)} skipped"
    )
    for link in found.links:
        log(f"scan: {link['path']} is a symbolic link; archived what it leads to, {link['target']}")
    name = set_name(app, host, started_at, label, kind)
    final = os.path.join(dest_dir, name)
    n = 2
    while os.path.lexists(final):
        name = set_name(app, host, started_at, f"{label}-{n}", kind)
        final = os.path.join(dest_dir, name)
        n += 1
    tmp = os.path.join(dest_dir, f".{name}.partial-{os.getpid()}")
    staging = os.path.join(dest_dir, f".{name}.staging-{os.getpid()}")
    sidecars = Sidecars.of(final)
    temps = [tmp, sidecars.checksum + ".partial", sidecars.manifest + ".partial"]
    argv = (
        ["zstd", f"-{max(1, min(level, 19))}", f"-T{threads}", "-q", "-c"]
        if kind == "zstd"
        else ["gzip", f"-{max(1, min(level, 9))}", "-n", "-c"]
    )
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    # Held (by this process and the compressor, which shares the descriptor) while the set is written:
    # sweep() removes a partial archive only when no live process holds it.
    safe_fs.lock(fd)
    pump: _Pump | None = None
    staging_fd = -1
    try:
        os.mkdir(staging, 0o700)
        staging_fd = safe_fs.open_dir(staging)
        safe_fs.lock(staging_fd)
        pump = _Pump(argv, tmp, fd)
        archived = _archive(found, pump, staging, lock_timeout, integrity_check, memory_limit, log)
        stats = archived.pop("stats")
        finished_at = now()
        manifest: dict[str, object] = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "name": name,
            "app": app,
            "app_version": app_version,
            "host": host,
            "label": label,
            "started_at": iso(started_at),
            "finished_at": iso(finished_at),
            "compression": kind,
            "paths": sorted({r.stored for r in found.roots}),
            "links": found.links,
            "excludes": excludes,
            **archived,
            "metadata": metadata or {},
        }
        blob = (json.dumps(manifest, indent=1, sort_keys=False) + "\n").encode()
        info = tarfile.TarInfo(MANIFEST_MEMBER)
        info.size, info.mode, info.mtime = len(blob), 0o600, int(time.time())
        pump.write(info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape"))
        pump.write(blob + _padding(len(blob)))
        end = 2 * _BLOCK  # two zero blocks end a tar stream, padded to a whole record
        pump.write(b"\0" * (end + (-(pump.written + end) % _RECORD)))
        t_fin = clock()
        pump.finish()
        os.fsync(fd)
        digest, size = pump.digest.hexdigest(), pump.size
        _write_file(sidecars.manifest, blob)
        _write_file(sidecars.checksum, f"{digest}  {name}\n".encode())
        os.replace(tmp, final)
        fsync_dir(dest_dir)
        os.close(fd)  # the lock goes with it, once the set has its final name
        fd = -1
        stats["seconds_finish"] = round(clock() - t_fin, 3)
    except BaseException as exc:
        if pump is not None:
            pump.abort()
        if fd >= 0:
            os.close(fd)
        for path in (*temps, sidecars.checksum, sidecars.manifest):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        if isinstance(exc, OSError):
            raise (_write_error(exc, pump.size if pump else 0)) from exc
        raise
    finally:
        safe_fs.remove_path(staging)
        if staging_fd >= 0:
            os.close(staging_fd)
    stats.update(
        {
            "bytes_out": size,
            "seconds": round(clock() - t0, 3),
        }
    )
    log(
        f"done: {name}, {size / MIB:.1f} MiB from {stats['bytes_in'] / MIB:.1f} MiB "
        f"in {stats['seconds']:.1f} s ({stats['bytes_in'] / MIB / max(stats['seconds'], 1e-6):.0f} MiB/s)"
    )
    return Created(final, name, digest, size, sidecars.manifest, manifest, stats)


def _archive(
    found: Scan,
    pump: _Pump,
    staging: str,
    lock_timeout: float,
    integrity_check: bool,
    memory_limit: int,
    log: Log,
) -> dict[str, object]:
    names = _Names()
    files: list[dict[str, object]] = []
    snapshots: list[dict[str, object]] = []
    changed: list[str] = []
    notes: list[dict[str, str]] = []
    progress = _Progress(log, found.bytes, found.count("file") + found.count("sqlite"))
    snapshot_seconds = 0.0
    snapshotter = _Snapshotter(
        [e for e in found.entries if e.kind == "sqlite"],
        found,
        staging,
        lock_timeout,
        integrity_check,
        memory_limit,
    )
    snapshotter.start()
    dirs = _Dirs(found.roots, found.dirs)
    # Databases go last, so their snapshots are made while the other files stream.
    ordered = [e for e in found.entries if e.kind != "sqlite"] + [e for e in found.entries if e.kind == "sqlite"]
    try:
        for entry in ordered:
            if entry.kind in ("dir", "symlink"):
                pump.write(_header(entry, 0, names))
                files.append(_record(entry))
                continue
            snap: dict[str, object] | None = None
            if entry.kind == "sqlite":
                got = snapshotter.next()
                if isinstance(got, str):
                    _left_out(found, changed, entry, got)
                    continue
                chunks, size, snap = got.chunks, got.size, got.record
                if got.replaced:
                    changed.append(entry.path)
                if got.note:
                    notes.append({"path": entry.path, "reason": got.note})
                    log(f"note: {entry.path} {got.note}")
                    entry = Entry(entry.path, entry.member, "file", got.st, root=entry.root, rel=entry.rel)
                if snap is not None:
                    snapshot_seconds += float(snap["duration"])  # type: ignore[arg-type]
                    snapshots.append(snap)
                    if size > 16 * MIB:
                        log(f"snapshot: {entry.path}, {size / MIB:.1f} MiB in {snap['duration']:.2f} s")
            else:
                opened = _open_member(entry, dirs)
                if isinstance(opened, str):
                    _left_out(found, changed, entry, opened)
                    continue
                fd, st = opened
                if not safe_fs.same(st, entry.st):
                    changed.append(entry.path)  # replaced by another file (a rename): that one is archived
                entry.st = st
                chunks, size = _file_chunks(entry, fd, changed)
            pump.write(_header(entry, size, names))
            digest = hashlib.sha256()
            written = 0
            for chunk in chunks:
                digest.update(chunk)
                pump.write(chunk)
                written += len(chunk)
                progress.add(len(chunk))
            pump.write(_padding(written))
            progress.add(0, files=1)
            files.append(_record(entry, written, digest.hexdigest()))
            if snap is not None:
                snap["sha256"] = digest.hexdigest()
    finally:
        dirs.close()
        snapshotter.stop()
    totals = {
        "files": sum(1 for f in files if f["type"] == "file"),
        "dirs": sum(1 for f in files if f["type"] == "dir"),
        "symlinks": sum(1 for f in files if f["type"] == "symlink"),
        "databases": len(snapshots),
        "bytes": sum(int(f.get("size", 0) or 0) for f in files),  # type: ignore[call-overload]
    }
    return {
        "totals": totals,
        "files": files,
        "snapshots": snapshots,
        "skipped": found.skipped,
        "changed_during_backup": changed,
        "notes": notes,
        "stats": {
            "files": totals["files"],
            "databases": totals["databases"],
            "bytes_in": totals["bytes"],
            "seconds_snapshots": round(snapshot_seconds, 3),
        },
    }


def _left_out(found: Scan, changed: list[str], entry: Entry, reason: str) -> None:
    changed.append(entry.path)
    found.skipped.append({"path": entry.path, "reason": reason})


def _open_member(entry: Entry, dirs: _Dirs) -> tuple[int, os.stat_result] | str:
    """The scanned file opened again, relative to its verified directory and never through a link; or why not."""
    try:
        parent = dirs.fd(entry.root, entry.rel[:-1])
        fd, st = safe_fs.open_file(entry.rel[-1], parent)
    except FileNotFoundError:
        return "vanished during the backup"
    except safe_fs.UnsafePathError:
        return "a directory above it was replaced during the backup"
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "was replaced by a symbolic link during the backup (not followed)"
        raise BackupError(_read_error(exc, entry.path)) from exc
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        return (
            f"was replaced by a {'directory' if stat.S_ISDIR(st.st_mode) else _special(st.st_mode)} during the backup"
        )
    return fd, st


def _replaced_since(entry: Entry, dirs: _Dirs, st: os.stat_result) -> str:
    """Why SQLite's failure came from a swap during the backup (the file or a side file replaced), or ""."""
    name = entry.rel[-1]
    try:
        parent = dirs.fd(entry.root, entry.rel[:-1])
        now = os.stat(name, dir_fd=parent, follow_symlinks=False)
        if not safe_fs.same(now, st):
            return "was replaced while it was being copied (not followed)"
        for side in SQLITE_SIDE_FILES:
            with contextlib.suppress(FileNotFoundError):
                if not stat.S_ISREG(os.stat(name + side, dir_fd=parent, follow_symlinks=False).st_mode):
                    return f"its {side} file was replaced by a link or special file during the backup; left out"
    except (FileNotFoundError, safe_fs.UnsafePathError):
        return "vanished or was moved while it was being copied"
    return ""


@dataclass
class _Snapped:
    chunks: Iterator[bytes | memoryview]
    size: int
    record: dict[str, object] | None  # None: archived as a plain file (see note)
    held: int  # bytes held in memory until written
    st: os.stat_result
    note: str = ""
    replaced: bool = False


class _Snapshotter(threading.Thread):
    """Takes the databases' snapshots in archive order, ahead of the writer.

    SQLite releases the GIL while it copies, so snapshots are made while the
    writer streams the other files (which come first in the archive). Finished
    snapshots wait in memory up to ``memory_limit`` bytes in all; larger ones
    wait in a staging file. Each item is a snapshot, the reason a database was
    left out (a string), or the exception that ends the backup.
    """

    def __init__(
        self,
        entries: list[Entry],
        found: Scan,
        staging: str,
        lock_timeout: float,
        integrity_check: bool,
        memory_limit: int,
    ) -> None:
        super().__init__(daemon=True)
        self._entries = entries
        self._found = found
        self._staging = staging
        self._args = (lock_timeout, integrity_check, memory_limit)
        self._budget = memory_limit
        self._ready: collections.deque[tuple[_Snapped | str | BaseException, int]] = collections.deque()
        self._pending = 0
        self._cond = threading.Condition()
        self._stopping = False

    def run(self) -> None:
        dirs = _Dirs(self._found.roots, self._found.dirs)
        try:
            self._run(dirs)
        finally:
            dirs.close()

    def _run(self, dirs: _Dirs) -> None:
        for index, entry in enumerate(self._entries):
            with self._cond:
                while not self._stopping and self._ready and self._pending >= self._budget:
                    self._cond.wait()
                if self._stopping:
                    return
            item: _Snapped | str | BaseException
            held = 0
            try:
                item = _snapshot_member(entry, dirs, os.path.join(self._staging, f"{index}.db"), *self._args)
                held = item.held if isinstance(item, _Snapped) else 0
            except BaseException as exc:  # handed to the writer, which raises it
                item = exc
            with self._cond:
                self._ready.append((item, held))
                self._pending += held
                self._cond.notify_all()
            if isinstance(item, BaseException):
                return

    def next(self) -> _Snapped | str:
        """The next database's snapshot, or why it was left out."""
        with self._cond:
            while not self._ready:
                self._cond.wait()
            item, held = self._ready.popleft()
            self._pending -= held
            self._cond.notify_all()
        if isinstance(item, BaseException):
            raise item
        return item

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._ready.clear()
            self._cond.notify_all()
        self.join()


def _file_chunks(entry: Entry, fd: int, changed: list[str]) -> tuple[Iterator[bytes], int]:
    """The open file's bytes as its size was when opened; a file that shrinks is padded and noted."""
    handle = open(fd, "rb", closefd=True)  # noqa: SIM115 - closed by the generator
    size = entry.st.st_size

    def chunks() -> Iterator[bytes]:
        with handle:
            left = size
            while left > 0:
                try:
                    chunk = handle.read(min(_CHUNK, left))
                except OSError as exc:
                    raise BackupError(f"file {entry.path} cannot be read: {exc.strerror}") from exc
                if not chunk:
                    changed.append(entry.path)
                    yield b"\0" * left
                    return
                left -= len(chunk)
                yield chunk
            if os.fstat(handle.fileno()).st_size != size:
                changed.append(entry.path)

    return chunks(), size


def _snapshot_member(
    entry: Entry, dirs: _Dirs, staged: str, lock_timeout: float, integrity_check: bool, memory_limit: int
) -> _Snapped | str:
    """A consistent copy of the database ``entry``, checked to be the file that was scanned.

    SQLite opens a database and its ``-wal``/``-shm`` by name, following links, so the file is looked at
    first through its verified directory: it must still be a regular file, its side files must not be links,
    and the file SQLite then holds open must be that same file (device and inode). A file that only looks
    like a database (its header) is archived as a plain file, with a note.
    """
    name = entry.rel[-1]
    try:
        parent = dirs.fd(entry.root, entry.rel[:-1])
        st = os.stat(name, dir_fd=parent, follow_symlinks=False)
        for side in SQLITE_SIDE_FILES:
            with contextlib.suppress(FileNotFoundError):
                side_st = os.stat(name + side, dir_fd=parent, follow_symlinks=False)
                if not stat.S_ISREG(side_st.st_mode):
                    return f"its {side} file is not a regular file (a link?); the database was not opened"
    except FileNotFoundError:
        return "vanished during the backup"
    except safe_fs.UnsafePathError:
        return "a directory above it was replaced during the backup"
    if not stat.S_ISREG(st.st_mode):
        return "was replaced by something that is not a regular file during the backup (not followed)"
    replaced = not safe_fs.same(st, entry.st)  # by another database (a rename): that one is archived
    expect = (st.st_dev, st.st_ino)
    try:
        if IN_MEMORY and st.st_size <= memory_limit:
            data, snap = snapshot_bytes(
                entry.path, lock_timeout=lock_timeout, check_integrity=integrity_check, digest=False, expect=expect
            )
            view = memoryview(data)
            chunks: Iterator[bytes | memoryview] = (view[i : i + _CHUNK] for i in range(0, len(data), _CHUNK))
            size = held = len(data)
        else:
            os.makedirs(os.path.dirname(staged), mode=0o700, exist_ok=True)
            snap = snapshot(
                entry.path,
                staged,
                lock_timeout=lock_timeout,
                check_integrity=integrity_check,
                durable=False,
                digest=False,
                expect=expect,
            )
            size, held = snap.size, 0
            chunks = _staged_chunks(staged)
    except ReplacedError:
        return "was replaced while it was being copied (not followed)"
    except SnapshotError as exc:
        replaced = _replaced_since(entry, dirs, st)
        if replaced:
            return replaced
        if not isinstance(exc, (NotADatabaseError, CannotOpenError)):
            raise BackupError(str(exc)) from exc

        note = (
            f"starts like a SQLite database but is not one ({exc}); archived as a plain file"
            if isinstance(exc, NotADatabaseError)
            else f"could not be opened by SQLite ({exc}); archived as a plain file, without what its -wal holds"
        )
        opened = _open_member(entry, dirs)
        if isinstance(opened, str):
            return opened
        fd, st = opened
        entry.st = st
        plain, size = _file_chunks(entry, fd, [])
        return _Snapped(plain, size, None, 0, st, note)
    record = snap.to_dict()
    record["path"] = entry.member
    del record["source"]
    return _Snapped(chunks, size, record, held, st, replaced=replaced)


def _staged_chunks(path: str) -> Iterator[bytes]:
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            yield chunk
    os.unlink(path)


def _write_file(path: str, data: bytes) -> None:
    """Write ``path`` atomically: a temp name (locked while it is written, never a link followed), fsync, rename."""
    tmp = path + ".partial"
    with contextlib.suppress(FileNotFoundError):
        if not safe_fs.in_use(tmp):
            os.unlink(tmp)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        safe_fs.lock(fd)
        write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


# -- reading sets ----------------------------------------------------------------------------------------------------


def compression_of(path: str) -> str:
    with open(path, "rb") as handle:
        head = handle.read(4)
    for magic, kind in MAGIC.items():
        if head.startswith(magic):
            return kind
    raise BackupError(f"{path} is neither zstd nor gzip compressed")


def decompressor(archive: str) -> subprocess.Popen[bytes]:
    """``zstd -d`` (or ``gzip -d``) reading ``archive``, its output on a pipe."""
    kind = compression_of(archive)
    argv = ["zstd", "-d", "-q", "-c", "--", archive] if kind == "zstd" else ["gzip", "-d", "-c", "--", archive]
    if not shutil.which(argv[0]):
        raise BackupError(f"the {argv[0]} command is needed to read {archive} and is not installed")
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        preexec_fn=die_with_parent,  # started before this run's threads
    )
    assert proc.stdout is not None  # noqa: S101 - Popen contract
    _grow_pipe(proc.stdout.fileno())
    return proc


def parse_manifest(blob: bytes, where: str) -> dict[str, object]:
    """Manifest bytes parsed and checked in every field; raises BackupError with one sentence, never more."""
    if len(blob) > MAX_MANIFEST:
        raise BackupError(
            f"{where} is larger than {MAX_MANIFEST // MIB} MiB; it is not a manifest this collection wrote"
        )
    try:
        data = json.loads(blob, parse_constant=_no_constant)
    except RecursionError as exc:
        raise BackupError(f"{where} is nested too deeply to be a manifest") from exc
    except ValueError as exc:
        raise BackupError(f"{where} cannot be read as JSON") from exc
    check_format(data, where)
    return data  # type: ignore[return-value]


def _no_constant(name: str) -> object:
    raise ValueError(f"{name} is not JSON")


def read_manifest(path: str) -> dict[str, object]:
    """A manifest (sidecar) file, checked in every field; raises BackupError with one sentence."""
    try:
        blob = safe_fs.read_regular(path, MAX_MANIFEST)
    except FileNotFoundError as exc:
        raise BackupError(f"manifest {path} does not exist") from exc
    except ValueError as exc:
        raise BackupError(f"manifest {path} is larger than {MAX_MANIFEST // MIB} MiB") from exc
    except OSError as exc:
        raise BackupError(f"manifest {path} cannot be read ({exc.strerror or 'not a regular file'})") from exc
    return parse_manifest(blob, f"manifest {path}")


def check_format(data: object, where: str) -> None:
    """Raise BackupError (NewerFormatError for a newer format) unless ``data`` is a manifest this collection reads,
    with the right type in every field it uses."""
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise BackupError(f"{where} is not a selfhost.dr backup manifest")
    version = data.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise BackupError(f"{where} has no format version")
    if version > FORMAT_VERSION:
        raise NewerFormatError(
            f"{where} has format version {version}, newer than the {FORMAT_VERSION} this collection reads; "
            "upgrade selfhost.dr"
        )
    problem = _manifest_problem(data)
    if problem:
        raise BackupError(f"{where} is not a valid manifest: {problem}")


MAX_ID = 2**32 - 2  # uid and gid: 2**32 - 1 is (uid_t)-1, which chown reads as "leave unchanged"


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def path_problem(path: object) -> str:
    """Why ``path`` is not an absolute, normalised path other than ``/``, or ""."""
    if not isinstance(path, str) or not path.startswith("/") or path == "/":
        return "is not an absolute path below /"
    if "\0" in path or os.path.normpath(path) != path or path.startswith("//"):
        return "is not a normalised path"
    return ""


def name_problem(name: str) -> str:
    """Why ``name`` cannot be a member name (relative, normalised, no ``..``, creatable on Linux), or ""."""
    if not name:
        return "an empty name"
    if name.startswith("/"):
        return "an absolute path"
    parts = name.split("/")
    if ".." in parts:
        return "a '..' component"
    if "" in parts or "." in parts or "\0" in name:
        return "a name that is not normalised"
    if any(len(part.encode("utf-8", "surrogateescape")) > MAX_NAME_BYTES for part in parts):
        return f"a name component longer than {MAX_NAME_BYTES} bytes"
    return ""


def _manifest_problem(data: dict[str, object]) -> str:
    for key, kind in (("started_at", str), ("app", str), ("files", list), ("snapshots", list), ("paths", list)):
        if not isinstance(data.get(key), kind):
            return f"{key!r} is missing or not a {kind.__name__}"
    for key, kind in (
        ("name", str),
        ("host", str),
        ("label", str),
        ("app_version", str),
        ("finished_at", str),
        ("links", list),
        ("skipped", list),
        ("changed_during_backup", list),
        ("notes", list),
        ("totals", dict),
        ("metadata", dict),
        ("excludes", list),
    ):
        if key in data and not isinstance(data[key], kind):
            return f"{key!r} is not a {kind.__name__}"
    paths = data["paths"]
    for n, path in enumerate(paths):  # type: ignore[arg-type]
        bad = path_problem(path)
        if bad:
            return f"paths[{n}] {bad}"
    for a in paths:  # type: ignore[union-attr]
        for b in paths:  # type: ignore[union-attr]
            if a != b and str(b).startswith(str(a) + "/"):
                return f"paths {a} and {b} overlap"
    for n, link in enumerate(data.get("links", [])):  # type: ignore[arg-type]
        if not isinstance(link, dict) or link.get("path") not in paths or path_problem(link.get("target")):
            return f"links[{n}] is not a path of the set with an absolute target"
    seen: set[str] = set()
    for n, rec in enumerate(data["files"]):  # type: ignore[arg-type]
        if not isinstance(rec, dict):
            return f"files[{n}] is not an object"
        name = rec.get("path")
        if not isinstance(name, str) or name_problem(name):
            return f"files[{n}] has no valid path"
        if name in seen:
            return f"files lists {name} twice"
        seen.add(name)
        if not any(("/" + name + "/").startswith(str(p) + "/") for p in paths):  # type: ignore[union-attr]
            return f"{name} is outside the paths of the set"
        kind = rec.get("type")
        if kind not in ("file", "dir", "symlink"):
            return f"{name} has an unknown type"
        mode = rec.get("mode")
        if not isinstance(mode, str) or not re.fullmatch(r"[0-7]{4}", mode):
            return f"{name} has no valid mode"
        mtime = rec.get("mtime", 0)
        if not isinstance(mtime, (int, float)) or isinstance(mtime, bool) or not abs(mtime) <= 2**62 / 1e9:
            return f"{name} has no valid mtime"  # (NaN fails the comparison too)
        uid, gid = rec.get("uid"), rec.get("gid")
        if not (_is_int(uid) and _is_int(gid) and 0 <= uid <= MAX_ID and 0 <= gid <= MAX_ID):  # type: ignore[operator]
            return f"{name} has no valid owner"
        if kind == "file":
            size, digest = rec.get("size"), rec.get("sha256")
            if not _is_int(size) or size < 0:  # type: ignore[operator]
                return f"{name} has no valid size"
            if not isinstance(digest, str) or not re.fullmatch(r"[0-9a-f]{64}", digest):
                return f"{name} has no valid sha256"
        if kind == "symlink":
            target = rec.get("target")
            if not isinstance(target, str) or not target or "\0" in target:
                return f"{name} has no valid link target"
    for n, snap in enumerate(data["snapshots"]):  # type: ignore[arg-type]
        if not isinstance(snap, dict):
            return f"snapshots[{n}] is not an object"
    return ""


def read_checksum(path: str) -> str:
    try:
        text = safe_fs.read_regular(path, 4096).decode("utf-8", "replace")
        digest = text.split()[0]
    except (OSError, ValueError, IndexError) as exc:
        raise BackupError(f"checksum file {path} is missing, empty or not a checksum file") from exc
    if not re.fullmatch(r"[0-9a-f]{64}", digest):
        raise BackupError(f"checksum file {path} does not hold a sha256")
    return digest


def _unsafe_member(member: Member) -> str:
    """Why a member could not have been written by create(), or ""."""
    problem = name_problem(member.name)
    if problem:
        return problem
    if member.kind == "hardlink":
        return "a hard link"
    if member.kind == "special":
        return "a device, fifo or other special type"
    if member.kind == "symlink" and (not member.linkname or "\0" in member.linkname):
        return "an empty link target, or one with a NUL byte"
    return ""


@dataclass
class Verification:
    path: str
    ok: bool
    checks: list[dict[str, object]]
    problems: list[str]
    stats: dict[str, object]
    manifest: dict[str, object] | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def summary(self) -> str:
        if self.ok:
            return f"backup set {os.path.basename(self.path)} is intact"
        return f"backup set {os.path.basename(self.path)} failed verification: {self.problems[0]}"


class Unpacker(Protocol):
    """Receives each member while verify() streams the archive."""

    current_path: str  # where the file member given by the last begin() is written

    def begin(self, member: Member) -> Callable[[memoryview], None] | None:
        """Make a directory or link, or return where a file member's data goes (None: nowhere)."""

    def end(self, member: Member) -> None:
        """The member's data is complete."""


class _Hasher(threading.Thread):
    """Hashes the archive file while the decompressor reads it (the second read comes from the page cache)."""

    def __init__(self, path: str) -> None:
        super().__init__(daemon=True)
        self.path = path
        self.digest = hashlib.sha256()
        self.size = 0
        self.error: str = ""

    def run(self) -> None:
        try:
            with open(self.path, "rb", buffering=0) as handle:
                while chunk := handle.read(_CHUNK):
                    self.digest.update(chunk)
                    self.size += len(chunk)
        except OSError as exc:
            self.error = f"cannot read {self.path}: {exc.strerror}"


def verify(
    archive: str,
    *,
    check_sqlite: bool = True,
    memory_limit: int = DEFAULT_MEMORY_LIMIT,
    record: bool = True,
    log: Log = _no_log,
    now: Callable[[], datetime] = utc_now,
    unpack: Unpacker | None = None,
    deep: bool = True,
    tmpdir: str | None = None,
) -> Verification:
    """Check a set: whole-file sha256, every member against the manifest, integrity_check of every database.

    Decompression, member checks and integrity checks run alongside the whole-file hash. With
    ``unpack``, every member is also handed to it as it streams by (a restore unpacks into staging
    in the same pass, and uses the result only when the verification passed). ``deep=False`` checks
    the whole-file sha256 and the member list but not each member's sha256 nor the databases: enough
    when this very content (same sha256) already passed a deep verification.

    Databases too large to check in memory are copied to a temporary directory in ``tmpdir`` (by default the
    set's own directory, never a tmpfs ``/tmp``), one or two at a time, removed as soon as they are checked.
    Every member is checked as a restore would use it: a safe name, not a link, device or FIFO, listed once,
    not below a link or a file, and equal to its manifest entry in type, mode, owner, size, link target and
    sha256. So a set that verifies is a set that restores.
    """
    check_sqlite = check_sqlite and deep
    t0 = time.monotonic()
    if not os.path.isfile(archive):
        raise BackupError(f"backup set {archive} does not exist")
    sidecars = Sidecars.of(archive)
    checks: list[dict[str, object]] = []
    problems: list[str] = []

    def check(name: str, ok: bool, detail: str) -> None:
        checks.append({"check": name, "ok": ok, "detail": detail})
        if not ok:
            problems.append(detail)

    expected = ""
    try:
        expected = read_checksum(sidecars.checksum)
    except BackupError as exc:
        check("checksum", False, str(exc))
    sidecar_manifest: dict[str, object] | None = None
    if os.path.lexists(sidecars.manifest):
        try:
            sidecar_manifest = read_manifest(sidecars.manifest)
        except NewerFormatError:
            raise
        except BackupError as exc:
            check("manifest", False, str(exc))
    spill = _Spill(tmpdir or os.path.dirname(os.path.abspath(archive)))
    proc = decompressor(archive)
    assert proc.stdout is not None  # noqa: S101
    hasher = _Hasher(archive)
    hasher.start()
    log(f"verify: reading {archive}")
    members: dict[str, dict[str, object]] = {}
    checker = _Checker()
    checker.start()
    embedded: bytes | None = None
    stream_error = ""
    drained = False
    too_many = ""
    name_bytes = 0
    try:
        with open(proc.stdout.fileno(), "rb", buffering=_CHUNK, closefd=False) as stream:
            reader = TarReader(stream)
            for member in reader.members():
                unsafe = _unsafe_member(member)
                if unsafe:
                    check("members", False, f"member {shown(member.name)} is unsafe: it has {unsafe}")
                    continue
                if member.name == MANIFEST_MEMBER and member.kind == "file":
                    if embedded is not None:
                        check("manifest", False, "the archive holds more than one manifest")
                    elif member.size > MAX_MANIFEST:
                        check(
                            "manifest",
                            False,
                            f"the manifest inside the archive is larger than {MAX_MANIFEST // MIB} MiB",
                        )
                    else:
                        embedded = b"".join(bytes(c) for c in reader.chunks())
                    continue
                if member.name in members:
                    check("members", False, f"member {shown(member.name)} appears twice in the archive")
                    continue
                name_bytes += len(member.name)
                if len(members) >= MAX_MEMBERS or name_bytes > MAX_MANIFEST:
                    too_many = "the archive holds more members, or longer names, than a manifest can list"
                    break
                sink = unpack.begin(member) if unpack is not None else None
                staged = unpack.current_path if sink is not None and unpack is not None else ""
                members[member.name] = _member_record(
                    reader, member, check_sqlite, memory_limit, checker, spill, sink, staged, deep
                )
                if unpack is not None:
                    unpack.end(member)
            # Read what follows the end-of-archive marker (tar's padding), so the decompressor can finish
            # instead of dying of a closed pipe; anything but zeros there was not written by create().
            while not too_many and (rest := stream.read(_CHUNK)):
                if rest.count(0) != len(rest):
                    check("archive", False, "there is data after the end of the tar archive")
                    break
            drained = not too_many
    except (TarStreamError, OSError) as exc:
        stream_error = str(exc) or type(exc).__name__
    except BaseException:
        if proc.stderr:
            proc.stderr.close()  # an exception (from the unpacker, say) is on its way out: nothing will read it
        raise
    finally:
        with contextlib.suppress(OSError):
            proc.stdout.close()
        if not drained and proc.poll() is None:
            proc.kill()  # stopped early (an error, or an exception from the unpacker): nothing more is read
        hasher.join()
        proc.wait()
        databases = checker.finish()
        spill.close()
    stderr = proc.stderr.read().decode(errors="replace").strip() if proc.stderr else ""
    if proc.stderr:
        proc.stderr.close()
    if hasher.error:
        raise BackupError(hasher.error)
    actual = hasher.digest.hexdigest()
    if expected:
        check(
            "checksum",
            actual == expected,
            "sha256 of the whole file matches"
            if actual == expected
            else "the sha256 of the file does not match its .sha256 (it was changed, truncated or damaged)",
        )
    if too_many:
        check("members", False, too_many)
    elif proc.returncode != 0 or stream_error:
        reason = stderr.splitlines()[-1] if stderr else stream_error
        check("archive", False, f"the archive cannot be read to its end ({reason})")
    manifest = _pick_manifest(embedded, sidecar_manifest, sidecars.manifest, check)
    if manifest is not None:
        structure = _structure_problems(members, [str(p) for p in manifest["paths"]])  # type: ignore[attr-defined]
        if structure:
            check("members", False, structure[0] + (f" (and {len(structure) - 1} more)" if len(structure) > 1 else ""))
        _compare(manifest, members, check, deep)
    warnings: list[str] = []
    if check_sqlite:
        bad: list[str] = []
        if manifest is not None:  # what create() archived as a plain file may start like a database: not one
            listed = {str(f["path"]): f for f in manifest["files"] if isinstance(f, dict) and f.get("sqlite")}  # type: ignore[attr-defined]
            databases = [(path, result) for path, result in databases if path in listed]
            for path, result in databases:
                if result == "ok":
                    continue
                if members.get(path, {}).get("sha256") == listed[path].get("sha256"):
                    # The very bytes create() snapshotted: the database was damaged when it was backed up. The set
                    # holds it faithfully, so it restores; the operator learns the live database is damaged.
                    warnings.append(f"database {path} was already damaged when it was backed up: {result}")
                else:
                    bad.append(f"{path}: {result}")
        else:
            bad = [f"{path}: {result}" for path, result in databases if result != "ok"]
        passed = len(databases) - len(bad) - len(warnings)
        detail = f"{passed} databases pass integrity_check" + (
            f"; {len(warnings)} held as they were backed up, damaged" if warnings else ""
        )
        check("sqlite", not bad, detail if not bad else f"database {bad[0]} fails integrity_check")
    ok = not problems
    stats = {
        "bytes": hasher.size,
        "members": len(members),
        "databases": len(databases),
        "seconds": round(time.monotonic() - t0, 3),
    }
    result = Verification(archive, ok, checks, problems, stats, manifest, warnings)
    if record:
        st = os.stat(archive)
        marker = {
            "ok": ok,
            "databases_checked": check_sqlite,
            "verified_at": iso(now()),
            "sha256": actual,
            "size": st.st_size,
            "mtime_ns": st.st_mtime_ns,
            "problems": problems,
        }
        _write_file(sidecars.verified, (json.dumps(marker, indent=1) + "\n").encode())
    log(result.summary)
    return result


def shown(name: str) -> str:
    """A member name as a sentence shows it: quoted, and shortened in the middle when it is very long."""
    return repr(name if len(name) <= 160 else f"{name[:100]}...{name[-50:]}")


def _structure_problems(members: dict[str, dict[str, object]], paths: list[str]) -> list[str]:
    """Why members cannot sit where they are: below a link or a file, or below nothing (no directory member and
    not above a path of the set). Linear: each member looks at its parent only, which must then be a directory
    member itself (or lie above the set's paths), so no chain of implicit directories can hide a link."""
    above: set[str] = set()
    for path in paths:
        parts = path.strip("/").split("/")
        above.update("/".join(parts[:n]) for n in range(1, len(parts)))
    problems = []
    for name in members:
        parent = name.rpartition("/")[0]
        if not parent:
            continue
        kind = members.get(parent, {}).get("type")
        if kind is None and parent not in above:
            problems.append(f"member {shown(name)} has no directory member above it")
        elif kind not in (None, "dir"):
            what = "a symbolic link" if kind == "symlink" else "a file"
            problems.append(f"member {shown(name)} lies below {shown(parent)}, which is {what}")
    return problems


class _Spill:
    """A private temporary directory for database copies that verify checks on disk, created on first use.

    It lives in the backup directory's file system (or one the caller names), is locked while in use so the
    next run's sweep can tell it from a leftover, and is removed at the end, whatever happened.
    """

    def __init__(self, base: str) -> None:
        self.base = base
        self.path = ""
        self._fd = -1
        self._n = 0

    def new_file(self, member: str, size: int) -> tuple[str, io.BufferedWriter]:
        if not self.path:
            try:
                self.path = tempfile.mkdtemp(prefix=".selfhost-dr-verify-", dir=self.base)
                self._fd = safe_fs.open_dir(self.path)
                safe_fs.lock(self._fd)
            except OSError as exc:
                raise self.error(exc, member, size) from exc
        self._n += 1
        path = os.path.join(self.path, f"{self._n}.db")
        try:
            return path, open(path, "xb")
        except OSError as exc:
            raise self.error(exc, member, size) from exc

    def error(self, exc: OSError, member: str, size: int) -> BackupError:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return BackupError(
                f"the temporary directory {self.base} is full: checking database {member} needs {size / MIB:.1f} MiB "
                "there (set tmpdir to a larger file system)"
            )
        return BackupError(f"cannot write a temporary copy of database {member} in {self.base}: {exc.strerror}")

    def close(self) -> None:
        if self.path:
            safe_fs.remove_path(self.path)
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def _member_record(
    reader: TarReader,
    member: Member,
    check_sqlite: bool,
    memory_limit: int,
    checker: _Checker,
    spill: _Spill,
    sink: Callable[[memoryview], None] | None = None,
    staged: str = "",
    deep: bool = True,
) -> dict[str, object]:
    rec: dict[str, object] = {"type": member.kind, "mode": f"{member.mode:04o}", "uid": member.uid, "gid": member.gid}
    if member.kind == "symlink":
        rec["target"] = member.linkname
    if member.kind != "file":
        return rec
    digest = hashlib.sha256()
    size = 0
    is_db: bool | None = None
    held = bytearray()
    spilled: io.BufferedWriter | None = None
    spill_path = ""
    if not deep:
        for chunk in reader.chunks():
            if sink is not None:
                sink(chunk)
            size += len(chunk)
        rec["size"] = size
        return rec
    for chunk in reader.chunks():
        digest.update(chunk)
        if sink is not None:
            sink(chunk)
        if is_db is None:
            is_db = check_sqlite and bytes(chunk[: len(SQLITE_HEADER)]) == SQLITE_HEADER
            if is_db and staged:
                pass  # checked from the copy being written
            elif is_db and (member.size > memory_limit or not IN_MEMORY):
                spill_path, spilled = spill.new_file(member.name, member.size)
            elif is_db:
                held = bytearray(member.size)
        if spilled is not None:
            try:
                spilled.write(chunk)
            except OSError as exc:
                spilled.close()
                raise spill.error(exc, member.name, member.size) from exc
        elif is_db and not staged:
            held[size : size + len(chunk)] = chunk
        size += len(chunk)
    rec["size"] = size
    rec["sha256"] = digest.hexdigest()
    if spilled is not None:
        try:
            spilled.close()
        except OSError as exc:
            raise spill.error(exc, member.name, member.size) from exc
        checker.submit(member.name, spill_path, remove=True)
    elif is_db and staged:
        checker.submit(member.name, staged)
    elif is_db:
        checker.submit(member.name, held)
    return rec


class _Checker(threading.Thread):
    """Runs integrity_check on the archive's databases while the stream goes on (SQLite releases the GIL)."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.results: list[tuple[str, str]] = []
        self._queue: queue.Queue[tuple[str, bytearray | str, bool] | None] = queue.Queue(maxsize=2)

    def submit(self, name: str, data: bytearray | str, remove: bool = False) -> None:
        """Check ``data`` (the bytes, or the path of a copy on disk, removed afterwards when ``remove``)."""
        self._queue.put((name, data, remove))

    def run(self) -> None:
        while (item := self._queue.get()) is not None:
            name, data, remove = item
            if isinstance(data, str):
                self.results.append((name, _integrity_of_file(data)))
                if remove:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(data)
            else:
                self.results.append((name, _integrity_of_bytes(data)))

    def finish(self) -> list[tuple[str, str]]:
        self._queue.put(None)
        self.join()
        return self.results


def _integrity_of_bytes(data: bytearray) -> str:
    data[18:20] = b"\x01\x01"  # an in-memory database cannot be in WAL mode; the check is the same
    conn = sqlite3.connect(":memory:")
    try:
        conn.deserialize(data)
        return integrity_of(conn)
    except sqlite3.DatabaseError as exc:
        return str(exc)
    finally:
        conn.close()


def _integrity_of_file(path: str) -> str:
    try:
        # immutable: no locks and no -wal/-shm files beside a copy nothing else writes
        conn = sqlite3.connect(f"file:{urllib.parse.quote(path)}?immutable=1", uri=True)
    except sqlite3.DatabaseError as exc:
        return str(exc)
    try:
        conn.execute("PRAGMA mmap_size = 1073741824")
        return integrity_of(conn)
    except sqlite3.DatabaseError as exc:
        return str(exc)
    finally:
        conn.close()


def _pick_manifest(
    embedded: bytes | None,
    sidecar: dict[str, object] | None,
    sidecar_path: str,
    check: Callable[[str, bool, str], None],
) -> dict[str, object] | None:
    inside: dict[str, object] | None = None
    if embedded is None:
        check("manifest", False, "the archive holds no manifest")
    else:
        try:
            inside = parse_manifest(embedded, "the manifest inside the archive")
        except NewerFormatError:
            raise
        except BackupError as exc:
            check("manifest", False, str(exc))
            inside = None
    if inside is not None and sidecar is not None and inside != sidecar:
        check("manifest", False, f"{os.path.basename(sidecar_path)} differs from the manifest inside the archive")
    elif inside is not None:
        detail = "manifest readable" + ("" if sidecar is not None else "; no sidecar copy beside the archive")
        check("manifest", True, detail)
    return inside if inside is not None else sidecar


def _compare(
    manifest: dict[str, object],
    members: dict[str, dict[str, object]],
    check: Callable[[str, bool, str], None],
    deep: bool = True,
) -> None:
    listed = {str(f["path"]): f for f in manifest["files"] if isinstance(f, dict)}  # type: ignore[attr-defined]
    missing = sorted(set(listed) - set(members))
    extra = sorted(set(members) - set(listed))
    differ = []
    keys = ("type", "mode", "uid", "gid", "size", "target") + (("sha256",) if deep else ())
    for path in sorted(set(listed) & set(members)):
        want, got = listed[path], members[path]
        for key in keys:
            if want.get(key) != got.get(key):
                differ.append(f"{path} ({key})")
                break
    if missing:
        check("members", False, f"{len(missing)} member(s) listed in the manifest are missing, first {missing[0]}")
    if extra:
        check("members", False, f"{len(extra)} member(s) are not in the manifest, first {extra[0]}")
    if differ:
        check("members", False, f"{len(differ)} member(s) differ from the manifest, first {differ[0]}")
    if not (missing or extra or differ):
        what = "match the manifest" if deep else "match the manifest's list (sha256s verified earlier)"
        check("members", True, f"{len(members)} members {what}")


# -- catalog ---------------------------------------------------------------------------------------------------------


def verification_state(archive: str) -> dict[str, object]:
    """``verified``, ``failed``, ``changed`` (the file changed since it was verified) or ``unverified``."""
    path = Sidecars.of(archive).verified
    try:
        marker = json.loads(safe_fs.read_regular(path, MIB))
        st = os.stat(archive)
    except (OSError, ValueError, RecursionError):
        return {"state": "unverified"}
    if not isinstance(marker, dict):
        return {"state": "unverified"}
    if marker.get("size") != st.st_size or marker.get("mtime_ns") != st.st_mtime_ns:
        return {"state": "changed", "verified_at": marker.get("verified_at")}
    return {
        "state": "verified" if marker.get("ok") else "failed",
        "verified_at": marker.get("verified_at"),
        "sha256": marker.get("sha256"),
        "databases_checked": marker.get("databases_checked") is True,
    }


def verified_earlier(archive: str) -> bool:
    """True when this exact content passed a deep verification: the record's sha256 is the checksum file's
    and the file's size and mtime are unchanged since. Checking the whole-file sha256 again then covers every
    member and database."""
    state = verification_state(archive)
    if state["state"] != "verified" or not state.get("databases_checked"):
        return False  # (a verification with sqlite=false did not check the databases: it does not count)
    try:
        return state.get("sha256") == read_checksum(Sidecars.of(archive).checksum)
    except BackupError:
        return False


def describe(archive: str) -> dict[str, object]:
    """One set as the catalog lists it, from its sidecar manifest (or its name when that is missing)."""
    name = os.path.basename(archive)
    st = os.stat(archive)
    info: dict[str, object] = {"name": name, "path": archive, "size": st.st_size}
    try:
        manifest = read_manifest(Sidecars.of(archive).manifest)
    except BackupError as exc:
        parts = parse_name(name) or {}
        when = parts.get("time")
        info.update(
            {
                "app": parts.get("app", ""),
                "host": parts.get("host", ""),
                "label": parts.get("label", ""),
                "time": iso(when) if isinstance(when, datetime) else "",
                "manifest": str(exc),
            }
        )
    else:
        totals = manifest.get("totals") if isinstance(manifest.get("totals"), dict) else {}
        info.update(
            {
                "app": manifest["app"],
                "app_version": manifest.get("app_version", ""),
                "host": manifest.get("host", ""),
                "label": manifest.get("label", ""),
                "time": manifest["started_at"],
                "finished_at": manifest.get("finished_at", ""),
                "format_version": manifest["format_version"],
                "files": totals.get("files", 0),  # type: ignore[union-attr]
                "databases": totals.get("databases", 0),  # type: ignore[union-attr]
                "bytes": totals.get("bytes", 0),  # type: ignore[union-attr]
                "metadata": manifest.get("metadata", {}),
                "manifest": "ok",
            }
        )
    info["verification"] = verification_state(archive)
    return info


def catalog(directory: str, **match: str | None) -> list[dict[str, object]]:
    """Every set in ``directory``, newest first, whose fields equal ``match`` (None matches anything).

    Reads only the sidecar manifests.
    """
    if not os.path.isdir(directory):
        raise BackupError(f"backup directory {directory} does not exist")
    sets = []
    with os.scandir(directory) as it:
        for entry in it:
            if is_set_file(entry.name) and entry.is_file(follow_symlinks=False):
                sets.append(describe(entry.path))
    sets = [s for s in sets if all(value is None or s.get(key) == value for key, value in match.items())]
    sets.sort(key=lambda s: (str(s.get("time", "")), str(s["name"])), reverse=True)
    return sets


_LEFTOVERS = (
    (re.compile(r"^\..+\.partial-\d+$"), "partial archive"),
    (re.compile(r"^\..+\.staging-\d+$"), "snapshot staging directory"),
    (re.compile(r"^\..+\.copy-\d+$"), "per-instance copy"),
    (re.compile(r"^\.selfhost-dr-verify-.+$"), "verify temporary directory"),
    (re.compile(r"^[^.].*\.tar\.(?:zst|gz)\.(?:sha256|manifest\.json|verified\.json)\.partial$"), "partial sidecar"),
)
_SIDECAR_RE = re.compile(r"^([^.].*\.tar\.(?:zst|gz))\.(?:sha256|manifest\.json|verified\.json)$")


def leftovers(directory: str) -> list[dict[str, object]]:
    """What killed runs left in a backup directory: partial archives and sidecars, staging directories,
    per-instance copies, verify's temporary files, and sidecars whose archive is gone.

    ``in_use`` is true while a live process still holds the item (its lock); :func:`sweep` leaves those.
    """
    found: list[dict[str, object]] = []
    try:
        names = sorted(os.listdir(directory))
    except FileNotFoundError:
        return found
    present = set(names)
    for name in names:
        kind = next((k for pattern, k in _LEFTOVERS if pattern.match(name)), "")
        if not kind:
            match = _SIDECAR_RE.match(name)
            if not match or match[1] in present:
                continue
            partials = [n for n in present if n.startswith(f".{match[1]}.partial-")]
            if any(safe_fs.in_use(os.path.join(directory, n)) for n in partials):
                continue  # its archive is being written
            kind = "sidecar without its archive"
        path = os.path.join(directory, name)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            continue
        found.append(
            {"path": path, "kind": kind, "size": st.st_size, "mtime": int(st.st_mtime), "in_use": safe_fs.in_use(path)}
        )
    return found


def _archive_of_sidecar_lives(sidecar: str) -> bool:
    # Partials first, then the archive: a writer always holds one of the two, and renames the first into the second.
    directory, name = os.path.split(sidecar)
    archive = _SIDECAR_RE.match(name)[1]  # type: ignore[index]
    partials = [n for n in os.listdir(directory) if n.startswith(f".{archive}.partial-")]
    if any(safe_fs.in_use(os.path.join(directory, n)) for n in partials):
        return True
    return os.path.lexists(os.path.join(directory, archive))


def sweep(directory: str) -> list[dict[str, object]]:
    """Remove what killed runs left in ``directory`` (see :func:`leftovers`) and return what was removed.

    Only names this collection writes are touched, never through a link, and never while a live process
    holds them.
    """
    removed = []
    for item in leftovers(directory):
        if item["in_use"]:
            continue
        if item["kind"] == "sidecar without its archive" and _archive_of_sidecar_lives(str(item["path"])):
            continue  # its archive was being written, and got its name since the listing
        if safe_fs.in_use(str(item["path"])):
            continue  # taken by a run that started since the listing
        with contextlib.suppress(FileNotFoundError):
            safe_fs.remove_path(str(item["path"]))
            removed.append(item)
    return removed


def remove_set(archive: str) -> int:
    """Delete a set and its sidecars; returns the bytes freed."""
    freed = 0
    sidecars = Sidecars.of(archive)
    # The archive goes first: an interrupted removal leaves sidecars, never a set without its checksum.
    for path in (archive, sidecars.verified, sidecars.checksum, sidecars.manifest):
        try:
            freed += os.stat(path).st_size
            os.unlink(path)
        except FileNotFoundError:
            continue
    return freed
