# Copyright: selfhost.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""One database's Litestream replica on S3, read by the collection itself (issue 17): its files with their header
times (what a restore to a moment is planned from, replicas/ltx.py), and how far it lags behind the database.

On S3, Litestream 0.5 keeps a database's files at ``PATH/LLLL/MIN-MAX.ltx`` (``LLLL`` the level in 4 hex digits;
docs/litestream.md); locally, its position is the newest level-0 file in the database's ``-litestream`` directory."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from .. import safe_fs
from . import ltx, s3
from .ltx import LtxError, LtxFile

MAX_FILES = 200_000  # files of one database's replica: far more than any retention keeps


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
            if obj.size < ltx.HEADER_SIZE:
                raise LtxError(f"{obj.key} is {obj.size} bytes, shorter than an LTX header")
            listed.append((level, obj))
            if len(listed) > MAX_FILES:
                raise LtxError(f"the replica at {prefix} holds more than {MAX_FILES} files")

    def header(item: tuple[int, s3.Object]) -> LtxFile | None:
        level, obj = item
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


def replica_txid(found: Listing) -> int:
    """The newest txid on the replica (0: none): what Litestream itself takes as the replica's position."""
    return max((f.max_txid for f in found.files if f.level == 0), default=0) or max(
        (f.max_txid for f in found.files), default=0
    )


def local_txid(meta: str) -> int:
    """Litestream's local position for a database whose state is in ``meta`` (its ``-litestream`` directory): the
    newest level-0 file's end, 0 when there is none. Read without following a link."""
    level0 = os.path.join(meta, "ltx", "0")
    try:
        fd = safe_fs.open_dir(level0)
    except FileNotFoundError:
        return 0
    try:
        names = os.listdir(fd)
    finally:
        os.close(fd)
    ends = []
    for name in names:
        try:
            ends.append(ltx.parse_name(name)[1])
        except LtxError:
            continue  # (Litestream's temporary files)
    return max(ends, default=0)
