# Copyright: selfhost.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""One database's Litestream replica on S3, read by the collection itself (issue 17): its files with their header
times (what a restore to a moment is planned from, replicas/ltx.py), and how far it lags behind the database.

On S3, Litestream 0.5 keeps a database's files at ``PATH/LLLL/MIN-MAX.ltx`` (``LLLL`` the level in 4 hex digits;
docs/litestream.md); locally, its position is the newest level-0 file in the database's ``-litestream`` directory."""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from . import ltx, s3
from .ltx import LtxError, LtxFile

MAX_FILES = 200_000  # files of one database's replica: far more than any retention keeps
_LEVEL = re.compile(r"^000[0-9]$")  # levels 0 to 9, as Litestream names them (4 hex digits)


@dataclass(frozen=True)
class Listing:
    files: list[LtxFile]
    vanished: int  # listed, then gone before their header was read (retention at work): plan again if it matters


def files(store: s3.Store, prefix: str, workers: int = 8) -> Listing:
    """Every LTX file of the replica at ``prefix`` (all levels), its header read and checked against its name."""
    prefix = prefix.strip("/")
    listed: list[tuple[int, s3.Object]] = []
    for level in ltx.LEVELS:
        for obj in store.list(f"{prefix}/{level:04x}/"):
            name = obj.key[len(prefix) + 6 :]
            ltx.parse_name(name)  # (and no "/": the key is exactly PREFIX/LLLL/NAME)
            listed.append((level, obj))
            if len(listed) > MAX_FILES:
                raise LtxError(f"the replica at {prefix} holds more than {MAX_FILES} files")
    return headers(store, listed, workers)


def headers(store: s3.Store, listed: list[tuple[int, s3.Object]], workers: int = 8) -> Listing:
    """The listed files of one database's replica, each header read (in parallel) and checked against its name."""

    def header(item: tuple[int, s3.Object]) -> LtxFile | None:
        level, obj = item
        if obj.size < ltx.HEADER_SIZE:
            raise LtxError(f"{obj.key} is {obj.size} bytes, shorter than an LTX header")
        try:
            data = store.read(obj.key, ltx.HEADER_SIZE)
        except s3.S3Error as exc:
            if exc.status == 404:  # deleted by Litestream's retention since it was listed
                return None
            raise
        found = ltx.read_header(data, obj.key.rsplit("/", 1)[1])
        return LtxFile(level, found.min_txid, found.max_txid, found.timestamp, obj.size)

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        read = list(pool.map(header, listed))
    kept = [f for f in read if f is not None]
    return Listing(kept, len(read) - len(kept))


def _shape(relative: str) -> list[str]:
    """The segments of a path below a replica's prefix: not empty, ``.`` or ``..``, each fitting a file name, no
    control character; refused in one sentence otherwise."""
    parts = relative.split("/")
    if (
        not relative
        or len(relative) > 1024
        or any(p in ("", ".", "..") for p in parts)
        or any(len(p.encode("utf-8", "surrogateescape")) > 255 for p in parts)
        or any(ord(c) < 32 or c == "\x7f" for c in relative)
    ):
        raise LtxError(f"{relative[:120]!r} is not the path of a database below a replica")
    if parts[-1].endswith(("-wal", "-shm", "-journal")):
        raise LtxError(f"{relative[:120]!r} names a file this collection never replicates (SQLite's journal)")
    return parts


def database_path(relative: str) -> str:
    """A database's path below the replica's prefix (its path below the data dir), checked (:func:`_shape`), and a
    name this collection restores (not hidden, not in a hidden directory); refused in one sentence otherwise."""
    parts = _shape(relative)
    if any(p.startswith(".") for p in parts):
        raise LtxError(
            f"{relative[:120]!r} names a file this collection never replicates (hidden, in a hidden directory, or "
            "SQLite's journal)"
        )
    return relative


def hidden(relative: str) -> bool:
    """A path with a hidden segment: Litestream replicates a database in a hidden directory (its ``pattern`` sees
    only the file's name), such as the safety copy of an instance a restore kept (``keep_safety``); this collection
    never restores one, and measures no lag for it."""
    return any(p.startswith(".") for p in relative.split("/"))


def databases(store: s3.Store, prefix: str, ignored: list[str] | None = None) -> dict[str, list[tuple[int, s3.Object]]]:
    """Every database replicated below ``prefix`` (one listing): its path below the prefix, with its files and their
    levels. Litestream's keys are ``PREFIX/DB/LLLL/MIN-MAX.ltx``; a key of another form is not Litestream's and is
    left alone (the prefix may hold other things), a database path that could escape the data dir is refused, one
    with a hidden segment is left out (and named in ``ignored``)."""
    prefix = prefix.strip("/")
    found: dict[str, list[tuple[int, s3.Object]]] = {}
    count = 0
    for obj in store.list(prefix + "/"):
        rest = obj.key[len(prefix) + 1 :]
        head, _, name = rest.rpartition("/")
        path, _, level = head.rpartition("/")
        if not path or not _LEVEL.match(level) or not ltx.NAME.match(name):
            continue
        ltx.parse_name(name)
        count += 1
        if count > MAX_FILES * 4:
            raise LtxError(f"the replicas below {prefix} hold more than {MAX_FILES * 4} files")
        if hidden(path) and _shape(path):
            if ignored is not None and path not in ignored and len(ignored) < 100:
                ignored.append(path)
            continue
        found.setdefault(database_path(path), []).append((int(level, 16), obj))
    return found


def replica_txid(found: Listing) -> int:
    """The newest txid on the replica (0: none): what Litestream itself takes as the replica's position."""
    return max((f.max_txid for f in found.files if f.level == 0), default=0) or max(
        (f.max_txid for f in found.files), default=0
    )
