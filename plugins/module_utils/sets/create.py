# Copyright: selfhost.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""create(): write a backup set in one pass (scan, snapshot, tar, compress, hash), then its sidecars."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import stat
import tarfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime

from .. import safe_fs
from .._common import MIB, BackupError, Log, atomic_write, iso, no_log, utc_now
from ..sqlite_snapshot import (
    fsync_dir,
)
from .catalog import sweep
from .codec import CHUNK, Pump, compressor_for, write_error, zstd_options
from .delta import Base, delta_fields
from .manifest import FORMAT, FORMAT_VERSION, MANIFEST_MEMBER
from .members import DEFAULT_MEMORY_LIMIT, Snapshotter, file_chunks, left_out, open_member
from .names import Sidecars, default_host, set_name
from .pages import PageHasher, PageMap, PatchWriter
from .scan import Dirs, Entry, Scan, scan
from .tar_stream import BLOCK, RECORD, Names, header, padding


def manifest_record(entry: Entry, size: int = 0, sha256: str = "") -> dict[str, object]:
    """A scanned entry as the manifest's ``files`` lists it (a set's, and a repository snapshot's)."""
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
    log: Log = no_log,
    now: Callable[[], datetime] = utc_now,
    stored_as: dict[str, str] | None = None,
    row_counts_max_size: int = 0,
    base: Base | None = None,
    page_maps: dict[str, PageMap] | None = None,
) -> Created:
    """Write one backup set of ``paths`` into ``dest_dir`` and return what was made.

    ``stored_as`` maps a path to the path it is recorded as (see :func:`scan`). ``integrity_check`` runs
    ``PRAGMA integrity_check`` on every snapshot as it is made; off by default, as in ``backup_create``,
    because :func:`verify` checks every database of the set. Every table's rows are counted and recorded, except in
    databases larger than ``row_counts_max_size`` bytes (0: no limit).

    With ``base``, a delta set (sets/delta.py) is written: the files ``base`` holds as they are now are listed as
    kept, not archived, and a changed database whose pages ``base`` mapped is archived as a page patch
    (sets/pages.py). ``page_maps``, when given, is filled with the page map of every database's snapshot, by
    member name (a migration's seed keeps them in its index).
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
    zstd_level = max(1, min(level, 19))
    argv = (
        ["zstd", f"-{zstd_level}", f"-T{threads}", *zstd_options(zstd_level), "-q", "-c"]
        if kind == "zstd"
        else ["gzip", f"-{max(1, min(level, 9))}", "-n", "-c"]
    )
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    # Held (by this process and the compressor, which shares the descriptor) while the set is written:
    # sweep() removes a partial archive only when no live process holds it.
    safe_fs.lock(fd)
    pump: Pump | None = None
    staging_fd = -1
    try:
        os.mkdir(staging, 0o700)
        staging_fd = safe_fs.open_dir(staging)
        safe_fs.lock(staging_fd)
        pump = Pump(argv, tmp, fd)
        archived = _archive(
            found, pump, staging, lock_timeout, integrity_check, memory_limit, log, row_counts_max_size, base, page_maps
        )
        stats = archived.pop("stats")
        kept: list[str] = archived.pop("kept")  # type: ignore[assignment]
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
        if base is not None:
            manifest.update(delta_fields(base, manifest["files"], kept))  # type: ignore[arg-type]
        blob = (json.dumps(manifest, indent=1, sort_keys=False) + "\n").encode()
        info = tarfile.TarInfo(MANIFEST_MEMBER)
        info.size, info.mode, info.mtime = len(blob), 0o600, int(time.time())
        pump.write(info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape"))
        pump.write(blob + padding(len(blob)))
        end = 2 * BLOCK  # two zero blocks end a tar stream, padded to a whole record
        pump.write(b"\0" * (end + (-(pump.written + end) % RECORD)))
        t_fin = clock()
        pump.finish()
        os.fsync(fd)
        digest, size = pump.digest.hexdigest(), pump.size
        atomic_write(sidecars.manifest, blob)
        atomic_write(sidecars.checksum, f"{digest}  {name}\n".encode())
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
            raise (write_error(exc, pump.size if pump else 0)) from exc
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
    pump: Pump,
    staging: str,
    lock_timeout: float,
    integrity_check: bool,
    memory_limit: int,
    log: Log,
    rows_max: int = 0,
    base: Base | None = None,
    page_maps: dict[str, PageMap] | None = None,
) -> dict[str, object]:
    names = Names()
    kept: list[str] = []
    files: list[dict[str, object]] = []
    snapshots: list[dict[str, object]] = []
    changed: list[str] = []
    notes: list[dict[str, str]] = []
    progress = _Progress(log, found.bytes, found.count("file") + found.count("sqlite"))
    snapshot_seconds = 0.0
    # Databases go last, so their snapshots are made while the other files stream; those too large to wait in
    # memory first among them, since their snapshots (staged on disk) can then be made without holding memory.
    entries = found.entries
    if base is not None:  # a delta: what the base holds as it is now is kept, not archived
        kept = [e.member for e in entries if base.unchanged(e)]
        unchanged = set(kept)
        entries = [e for e in entries if e.member not in unchanged]
    databases = sorted((e for e in entries if e.kind == "sqlite"), key=lambda e: e.st.st_size <= memory_limit)
    snapshotter = Snapshotter(
        databases,
        found,
        staging,
        lock_timeout,
        integrity_check,
        memory_limit,
        rows_max,
        log,
    )
    snapshotter.start()
    dirs = Dirs(found.roots, found.dirs)
    ordered = [e for e in entries if e.kind != "sqlite"] + databases
    buf = bytearray(CHUNK)  # every file is read into this one buffer, hashed and sent from it
    try:
        for entry in ordered:
            if entry.kind in ("dir", "symlink"):
                pump.write(header(entry, 0, names))
                files.append(manifest_record(entry))
                continue
            snap: dict[str, object] | None = None
            patch: dict[str, object] | None = None
            pager: PageHasher | None = None
            if entry.kind == "sqlite":
                got = snapshotter.next(dirs)
                if isinstance(got, str):
                    left_out(found, changed, entry, got)
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
                    against = base.page_base(entry.member) if base is not None and entry.rel[1:] else None
                    if against is not None:  # a delta: only the pages that changed since the base
                        chunks, size, patch = _patched(chunks, against, staging, len(snapshots), log, entry.path)
                        snap["sha256"] = patch["sha256"]
                    elif page_maps is not None:
                        pager = PageHasher()
            else:
                opened = open_member(entry, dirs)
                if isinstance(opened, str):
                    left_out(found, changed, entry, opened)
                    continue
                fd, st = opened
                if not safe_fs.same(st, entry.st):
                    changed.append(entry.path)  # replaced by another file (a rename): that one is archived
                entry.st = st
                chunks, size = file_chunks(entry, fd, changed, buf)
            pump.write(header(entry, size, names))
            digest = hashlib.sha256()
            written = 0
            for chunk in chunks:
                digest.update(chunk)
                if pager is not None:
                    pager.update(chunk)
                pump.write(chunk)
                written += len(chunk)
                progress.add(len(chunk))
            pump.write(padding(written))
            progress.add(0, files=1)
            files.append(manifest_record(entry, written, digest.hexdigest()))
            if patch is not None:
                files[-1]["patch"] = patch
            elif snap is not None:
                snap["sha256"] = digest.hexdigest()
            if pager is not None and page_maps is not None:
                page_maps[entry.member] = pager.result()
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
        "kept": kept,
        "stats": {
            "files": totals["files"],
            "databases": totals["databases"],
            "bytes_in": totals["bytes"],
            "seconds_snapshots": round(snapshot_seconds, 3),
        },
    }


def _patched(
    chunks: Iterable[bytes | memoryview], against: tuple[PageMap, str], staging: str, n: int, log: Log, path: str
) -> tuple[Iterator[bytes], int, dict[str, object]]:
    """A database's snapshot turned into the page patch against its base (staged as a file, then streamed): the
    member's chunks, its size, and the record's ``patch`` field."""
    pages, base_sha256 = against
    staged = os.path.join(staging, f"{n}.patch")
    fd = os.open(staged, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        os.unlink(staged)  # (read back through the descriptor only)
        writer = PatchWriter(pages, fd)
        for chunk in chunks:
            writer.update(chunk)
        made = writer.result()
    except BaseException:
        os.close(fd)
        raise
    if made.size > 16 * MIB:
        log(f"snapshot: {path}, {made.pages} of {-(-made.size // made.page_size)} pages changed since the seed")

    def read() -> Iterator[bytes]:
        try:
            offset = 0
            while chunk := os.pread(fd, CHUNK, offset):
                offset += len(chunk)
                yield chunk
        finally:
            os.close(fd)

    return read(), made.patch_size, made.record(base_sha256)
