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
import shutil
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
from typing import Protocol, Union

from .sqlite_snapshot import SQLITE_HEADER, SnapshotError, fsync_dir, integrity_of, snapshot, snapshot_bytes
from .tar_stream import Member, TarReader, TarStreamError

FORMAT = "selfhost.dr/backup-set"
FORMAT_VERSION = 1
MANIFEST_MEMBER = "selfhost-dr-manifest.json"
EXTENSIONS = {"zstd": ".tar.zst", "gzip": ".tar.gz"}
MAGIC = {b"\x28\xb5\x2f\xfd": "zstd", b"\x1f\x8b": "gzip"}
MIB = 1024 * 1024
DEFAULT_MEMORY_LIMIT = 64 * MIB
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
class Entry:
    """One path to archive. ``kind`` is dir, file, sqlite or symlink."""

    path: str
    member: str
    kind: str
    st: os.stat_result
    target: str = ""


@dataclass
class Scan:
    entries: list[Entry] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)

    @property
    def bytes(self) -> int:
        return sum(e.st.st_size for e in self.entries if e.kind in ("file", "sqlite"))

    def count(self, kind: str) -> int:
        return sum(1 for e in self.entries if e.kind == kind)


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


def _is_sqlite_file(path: str, size: int) -> bool:
    if size < 100:  # smaller than a SQLite header: not a database
        return False
    try:
        with open(path, "rb") as handle:
            return handle.read(len(SQLITE_HEADER)) == SQLITE_HEADER
    except OSError:
        return False


def scan(paths: Iterable[str], excludes: Iterable[str] = (), stored_as: dict[str, str] | None = None) -> Scan:
    """Everything under ``paths`` that a set would hold, in archive order, without reading file contents.

    ``stored_as`` maps a path to the path its members are named after in the archive (a copy taken
    while an instance was stopped is stored under the instance's own data dir). Fails with one
    sentence when a path does not exist or a directory or file cannot be read.
    """
    stored_as = {os.path.normpath(k): os.path.normpath(v) for k, v in (stored_as or {}).items()}
    patterns = list(excludes)
    roots: list[str] = []
    for raw in paths:
        if not os.path.isabs(raw):
            raise BackupError(f"paths to back up must be absolute, got {raw!r}")
        path = os.path.normpath(raw)
        if path == "/":
            raise BackupError("backing up / as a whole is not supported; list the directories to back up")
        if not os.path.lexists(path):
            raise BackupError(f"path {path} does not exist")
        roots.append(path)
    result = Scan()
    seen: set[str] = set()
    for root in sorted(set(roots)):
        if any(root.startswith(other.rstrip("/") + "/") for other in roots if other != root):
            continue  # already inside another path
        _walk(root, patterns, result, seen, root, stored_as.get(root, root))
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


def _walk(path: str, patterns: list[str], result: Scan, seen: set[str], root: str, stored: str) -> None:
    pattern = _excluded(path, patterns)
    if pattern:
        result.skipped.append({"path": path, "reason": f"excluded by {pattern}"})
        return
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        result.skipped.append({"path": path, "reason": "vanished while scanning"})
        return
    member = (stored + path[len(root) :]).lstrip("/")
    if member == MANIFEST_MEMBER:
        raise BackupError(f"{path} has the name this collection gives its manifest; it cannot be backed up")
    if member in seen:
        return
    seen.add(member)
    mode = st.st_mode
    if stat.S_ISDIR(mode):
        try:
            with os.scandir(path) as it:
                names = sorted(entry.name for entry in it)
        except PermissionError as exc:
            raise BackupError(f"directory {path} cannot be read: permission denied") from exc
        result.entries.append(Entry(path, member, "dir", st))
        for name in names:
            _walk(os.path.join(path, name), patterns, result, seen, root, stored)
    elif stat.S_ISREG(mode):
        if not os.access(path, os.R_OK):
            raise BackupError(f"file {path} cannot be read: permission denied")
        kind = "sqlite" if _is_sqlite_file(path, st.st_size) else "file"
        result.entries.append(Entry(path, member, kind, st))
    elif stat.S_ISLNK(mode):
        result.entries.append(Entry(path, member, "symlink", st, os.readlink(path)))
    else:
        result.skipped.append({"path": path, "reason": _special(mode)})


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
            argv, stdin=subprocess.PIPE, stdout=out_fd, stderr=subprocess.PIPE, bufsize=0, close_fds=True
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
    found = scan(paths, excludes, stored_as)
    log(
        f"scan: {found.count('file') + found.count('sqlite')} files ({found.count('sqlite')} SQLite databases), "
        f"{found.bytes / MIB:.1f} MiB, {len(found.skipped)} skipped"
    )
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
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    pump: _Pump | None = None
    try:
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
            "paths": sorted({os.path.normpath((stored_as or {}).get(p, p)) for p in paths}),
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
        os.close(fd)
        fd = -1
        digest, size = pump.digest.hexdigest(), pump.size
        _write_file(sidecars.manifest, blob)
        _write_file(sidecars.checksum, f"{digest}  {name}\n".encode())
        os.replace(tmp, final)
        fsync_dir(dest_dir)
        stats["seconds_finish"] = round(clock() - t_fin, 3)
    except BaseException as exc:
        if pump is not None:
            pump.abort()
        if fd >= 0:
            os.close(fd)
        for path in (*temps, sidecars.checksum, sidecars.manifest):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        shutil.rmtree(staging, ignore_errors=True)
        if isinstance(exc, OSError):
            raise (_write_error(exc, pump.size if pump else 0)) from exc
        raise
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
    progress = _Progress(log, found.bytes, found.count("file") + found.count("sqlite"))
    snapshot_seconds = 0.0
    snapshotter = _Snapshotter(
        [e for e in found.entries if e.kind == "sqlite"], staging, lock_timeout, integrity_check, memory_limit
    )
    snapshotter.start()
    # Databases go last, so their snapshots are made while the other files stream.
    ordered = [e for e in found.entries if e.kind != "sqlite"] + [e for e in found.entries if e.kind == "sqlite"]
    try:
        for entry in ordered:
            if entry.kind in ("dir", "symlink"):
                pump.write(_header(entry, 0, names))
                files.append(_record(entry))
                continue
            if entry.kind == "sqlite":
                chunks, size, snap = snapshotter.next()
                snapshot_seconds += float(snap["duration"])  # type: ignore[arg-type]
                snapshots.append(snap)
                if size > 16 * MIB:
                    log(f"snapshot: {entry.path}, {size / MIB:.1f} MiB in {snap['duration']:.2f} s")
            else:
                chunks, size = _file_chunks(entry, changed)
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
            if entry.kind == "sqlite":
                snap["sha256"] = digest.hexdigest()
    finally:
        snapshotter.stop()
        shutil.rmtree(staging, ignore_errors=True)
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
        "stats": {
            "files": totals["files"],
            "databases": totals["databases"],
            "bytes_in": totals["bytes"],
            "seconds_snapshots": round(snapshot_seconds, 3),
        },
    }


# (data chunks, size, snapshot record, bytes held in memory until written)
_Snapped = tuple[Iterator[Union[bytes, memoryview]], int, dict[str, object], int]


class _Snapshotter(threading.Thread):
    """Takes the databases' snapshots in archive order, ahead of the writer.

    SQLite releases the GIL while it copies, so snapshots are made while the
    writer streams the other files (which come first in the archive). Finished
    snapshots wait in memory up to ``memory_limit`` bytes in all; larger ones
    wait in a staging file.
    """

    def __init__(
        self, entries: list[Entry], staging: str, lock_timeout: float, integrity_check: bool, memory_limit: int
    ) -> None:
        super().__init__(daemon=True)
        self._entries = entries
        self._staging = staging
        self._args = (lock_timeout, integrity_check, memory_limit)
        self._budget = memory_limit
        self._ready: collections.deque[tuple[_Snapped | BaseException, int]] = collections.deque()
        self._pending = 0
        self._cond = threading.Condition()
        self._stopping = False

    def run(self) -> None:
        for index, entry in enumerate(self._entries):
            with self._cond:
                while not self._stopping and self._ready and self._pending >= self._budget:
                    self._cond.wait()
                if self._stopping:
                    return
            item: _Snapped | BaseException
            held = 0
            try:
                item = _snapshot_member(entry, os.path.join(self._staging, f"{index}.db"), *self._args)
                held = item[3]
            except BaseException as exc:  # handed to the writer, which raises it
                item = exc
            with self._cond:
                self._ready.append((item, held))
                self._pending += held
                self._cond.notify_all()
            if isinstance(item, BaseException):
                return

    def next(self) -> tuple[Iterator[bytes | memoryview], int, dict[str, object]]:
        """The next database's data chunks, size and snapshot record."""
        with self._cond:
            while not self._ready:
                self._cond.wait()
            item, held = self._ready.popleft()
            self._pending -= held
            self._cond.notify_all()
        if isinstance(item, BaseException):
            raise item
        return item[:3]

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._ready.clear()
            self._cond.notify_all()
        self.join()


def _file_chunks(entry: Entry, changed: list[str]) -> tuple[Iterator[bytes], int]:
    """The file's bytes as its size was when opened; a file that shrinks is padded and noted."""
    try:
        handle = open(entry.path, "rb")  # noqa: SIM115 - closed by the generator
    except FileNotFoundError as exc:
        raise BackupError(f"file {entry.path} vanished during the backup") from exc
    except OSError as exc:
        raise BackupError(f"file {entry.path} cannot be read: {exc.strerror}") from exc
    size = os.fstat(handle.fileno()).st_size

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
    entry: Entry, staged: str, lock_timeout: float, integrity_check: bool, memory_limit: int
) -> _Snapped:
    try:
        if IN_MEMORY and entry.st.st_size <= memory_limit:
            data, snap = snapshot_bytes(
                entry.path, lock_timeout=lock_timeout, check_integrity=integrity_check, digest=False
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
            )
            size, held = snap.size, 0
            chunks = _staged_chunks(staged)
    except SnapshotError as exc:
        raise BackupError(str(exc)) from exc
    record = snap.to_dict()
    record["path"] = entry.member
    del record["source"]
    return chunks, size, record, held


def _staged_chunks(path: str) -> Iterator[bytes]:
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            yield chunk
    os.unlink(path)


def _write_file(path: str, data: bytes) -> None:
    """Write ``path`` atomically: a temp name, fsync, rename."""
    tmp = path + ".partial"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
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
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None  # noqa: S101 - Popen contract
    _grow_pipe(proc.stdout.fileno())
    return proc


def read_manifest(path: str) -> dict[str, object]:
    """A manifest (sidecar) file, checked for format; raises BackupError with one sentence."""
    try:
        with open(path, "rb") as handle:
            data = json.loads(handle.read())
    except FileNotFoundError as exc:
        raise BackupError(f"manifest {path} does not exist") from exc
    except (OSError, ValueError) as exc:
        raise BackupError(f"manifest {path} cannot be read as JSON") from exc
    check_format(data, path)
    return data


def check_format(data: object, where: str) -> None:
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise BackupError(f"{where} is not a selfhost.dr backup manifest")
    version = data.get("format_version")
    if not isinstance(version, int):
        raise BackupError(f"{where} has no format version")
    if version > FORMAT_VERSION:
        raise NewerFormatError(
            f"{where} has format version {version}, newer than the {FORMAT_VERSION} this collection reads; "
            "upgrade selfhost.dr"
        )
    for key, kind in (("files", list), ("snapshots", list), ("started_at", str), ("app", str)):
        if not isinstance(data.get(key), kind):
            raise BackupError(f"{where} is missing {key!r} or it has the wrong type")


def read_checksum(path: str) -> str:
    try:
        with open(path) as handle:
            digest = handle.read().split()[0]
    except (OSError, IndexError) as exc:
        raise BackupError(f"checksum file {path} is missing or empty") from exc
    if not re.fullmatch(r"[0-9a-f]{64}", digest):
        raise BackupError(f"checksum file {path} does not hold a sha256")
    return digest


def _unsafe_member(member: Member) -> str:
    """Why a member could not have been written by create(), or ""."""
    if member.name.startswith("/"):
        return "an absolute path"
    if ".." in member.name.split("/"):
        return "a '..' component"
    if member.kind == "hardlink":
        return "a hard link"
    if member.kind == "special":
        return "a device, fifo or other special type"
    return ""


@dataclass
class Verification:
    path: str
    ok: bool
    checks: list[dict[str, object]]
    problems: list[str]
    stats: dict[str, object]
    manifest: dict[str, object] | None = None

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
) -> Verification:
    """Check a set: whole-file sha256, every member against the manifest, integrity_check of every database.

    Decompression, member checks and integrity checks run alongside the whole-file hash. With
    ``unpack``, every member is also handed to it as it streams by (a restore unpacks into staging
    in the same pass, and uses the result only when the verification passed). ``deep=False`` checks
    the whole-file sha256 and the member list but not each member's sha256 nor the databases: enough
    when this very content (same sha256) already passed a deep verification.
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
    try:
        sidecar_manifest = read_manifest(sidecars.manifest)
    except NewerFormatError:
        raise
    except BackupError:
        sidecar_manifest = None
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
    try:
        with open(proc.stdout.fileno(), "rb", buffering=_CHUNK, closefd=False) as stream:
            reader = TarReader(stream)
            for member in reader.members():
                unsafe = _unsafe_member(member)
                if unsafe:
                    check("members", False, f"member {member.name!r} is unsafe: it has {unsafe}")
                    continue
                if member.name == MANIFEST_MEMBER and member.kind == "file":
                    embedded = b"".join(bytes(c) for c in reader.chunks())
                    continue
                sink = unpack.begin(member) if unpack is not None else None
                staged = unpack.current_path if sink is not None and unpack is not None else ""
                members[member.name] = _member_record(
                    reader, member, check_sqlite, memory_limit, checker, sink, staged, deep
                )
                if unpack is not None:
                    unpack.end(member)
            # Read what follows the end-of-archive marker (tar's padding), so the decompressor can finish
            # instead of dying of a closed pipe; anything but zeros there was not written by create().
            while rest := stream.read(_CHUNK):
                if rest.count(0) != len(rest):
                    check("archive", False, "there is data after the end of the tar archive")
                    break
    except (TarStreamError, OSError) as exc:
        stream_error = str(exc) or type(exc).__name__
    finally:
        with contextlib.suppress(OSError):
            proc.stdout.close()
        hasher.join()
        proc.wait()
        databases = checker.finish()
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
    if proc.returncode != 0 or stream_error:
        reason = stderr.splitlines()[-1] if stderr else stream_error
        check("archive", False, f"the archive cannot be read to its end ({reason})")
    manifest = _pick_manifest(embedded, sidecar_manifest, sidecars.manifest, check)
    if manifest is not None:
        _compare(manifest, members, check, deep)
    if check_sqlite:
        bad = [f"{path}: {result}" for path, result in databases if result != "ok"]
        check(
            "sqlite",
            not bad,
            f"{len(databases)} databases pass integrity_check"
            if not bad
            else f"database {bad[0]} fails integrity_check",
        )
    ok = not problems
    stats = {
        "bytes": hasher.size,
        "members": len(members),
        "databases": len(databases),
        "seconds": round(time.monotonic() - t0, 3),
    }
    result = Verification(archive, ok, checks, problems, stats, manifest)
    if record:
        st = os.stat(archive)
        marker = {
            "ok": ok,
            "verified_at": iso(now()),
            "sha256": actual,
            "size": st.st_size,
            "mtime_ns": st.st_mtime_ns,
            "problems": problems,
        }
        _write_file(sidecars.verified, (json.dumps(marker, indent=1) + "\n").encode())
    log(result.summary)
    return result


def _member_record(
    reader: TarReader,
    member: Member,
    check_sqlite: bool,
    memory_limit: int,
    checker: _Checker,
    sink: Callable[[memoryview], None] | None = None,
    staged: str = "",
    deep: bool = True,
) -> dict[str, object]:
    rec: dict[str, object] = {"type": member.kind, "mode": f"{member.mode:04o}"}
    if member.kind == "symlink":
        rec["target"] = member.linkname
    if member.kind != "file":
        return rec
    digest = hashlib.sha256()
    size = 0
    is_db: bool | None = None
    held = bytearray()
    spill: io.BufferedWriter | None = None
    spill_dir = ""
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
                spill_dir = tempfile.mkdtemp(prefix="selfhost-dr-verify-")
                spill = open(os.path.join(spill_dir, "db"), "wb")  # noqa: SIM115 - closed below
            elif is_db:
                held = bytearray(member.size)
        if spill is not None:
            spill.write(chunk)
        elif is_db and not staged:
            held[size : size + len(chunk)] = chunk
        size += len(chunk)
    rec["size"] = size
    rec["sha256"] = digest.hexdigest()
    if spill is not None:
        spill.close()
        checker.submit(member.name, os.path.join(spill_dir, "db"), remove=True)
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
                    shutil.rmtree(os.path.dirname(data), ignore_errors=True)
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
            inside = json.loads(embedded)
            check_format(inside, "the manifest inside the archive")
        except ValueError:
            check("manifest", False, "the manifest inside the archive is not valid JSON")
            inside = None
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
    for path in sorted(set(listed) & set(members)):
        want, got = listed[path], members[path]
        for key in ("type", "size", "sha256", "target") if deep else ("type", "size", "target"):
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
        with open(path, "rb") as handle:
            marker = json.loads(handle.read())
        st = os.stat(archive)
    except (OSError, ValueError):
        return {"state": "unverified"}
    if not isinstance(marker, dict):
        return {"state": "unverified"}
    if marker.get("size") != st.st_size or marker.get("mtime_ns") != st.st_mtime_ns:
        return {"state": "changed", "verified_at": marker.get("verified_at")}
    return {
        "state": "verified" if marker.get("ok") else "failed",
        "verified_at": marker.get("verified_at"),
        "sha256": marker.get("sha256"),
    }


def verified_earlier(archive: str) -> bool:
    """True when this exact content passed a deep verification: the record's sha256 is the checksum file's
    and the file's size and mtime are unchanged since. Checking the whole-file sha256 again then covers every
    member and database."""
    state = verification_state(archive)
    if state["state"] != "verified":
        return False
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
