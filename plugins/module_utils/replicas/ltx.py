# Copyright: selfhost.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Litestream 0.5's replica files (LTX), read as data: their names, their headers, and the point a restore to a
moment can reach (issue 17; what Litestream does is in docs/litestream.md).

A replica holds, per database, files ``<level>/<min txid>-<max txid>.ltx`` (16 hex digits each, the range
inclusive): level 0 one per sync, 1 to 8 compactions of the level below, 9 snapshots from txid 1. Each file's time
is in its header (bytes 32-39, milliseconds since the epoch): the sync's time for a level-0 file, the newest input's
for a compacted one, the snapshot's for a snapshot. A transaction id (txid) is one sync of Litestream's, not one
SQLite transaction.

A restore to a moment ``T`` is planned here, not by ``litestream restore -timestamp`` (open bugs once level-0 files
are compacted away, and a replica-URL restore refuses a moment after the newest file): the newest snapshot stamped at
or before ``T``, then, as long as one continues it, the file stamped at or before ``T`` that reaches the highest txid
(Litestream's own planner, ``replica.go`` ``CalcRestorePlan``). The end of that chain is restored with ``-txid``,
which it reaches by construction. Every commit it holds was made at or before ``T``; commits after the chain's last
file and before ``T`` are in a file stamped after ``T`` and cannot be had without commits after ``T``: the plan says
which moment it reaches (``reached``), never a later one.

Standard library only; every name and header is hostile input (a replica is written by whoever holds the store's
credentials).
"""

from __future__ import annotations

import re
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from .._common import Error

MAGIC = b"LTX1"
HEADER_SIZE = 100
SNAPSHOT_LEVEL = 9
LEVELS = range(0, 10)
NAME = re.compile(r"^([0-9a-f]{16})-([0-9a-f]{16})\.ltx$")
_HEADER = struct.Struct(">4sIIIQQq")  # magic, flags, page size, commit (pages), min txid, max txid, timestamp (ms)
_MAX_TXID = (1 << 63) - 1


class LtxError(Error):
    """A replica file that is not what Litestream writes."""


@dataclass(frozen=True)
class LtxFile:
    """One file of a replica: its level, its txid range (inclusive), its time (UTC) and size."""

    level: int
    min_txid: int
    max_txid: int
    timestamp: datetime
    size: int = 0

    @property
    def name(self) -> str:
        return f"{format_txid(self.min_txid)}-{format_txid(self.max_txid)}.ltx"


@dataclass(frozen=True)
class Header:
    flags: int
    page_size: int
    commit: int  # the database's size in pages after this file
    min_txid: int
    max_txid: int
    timestamp: datetime


def format_txid(txid: int) -> str:
    """A txid as ``litestream restore -txid`` takes it: exactly 16 hex digits."""
    if not 0 < txid <= _MAX_TXID:
        raise LtxError(f"{txid} is no transaction id")
    return f"{txid:016x}"


def parse_name(name: str) -> tuple[int, int]:
    """The txid range a replica file's name gives; refused unless it is exactly Litestream's form."""
    found = NAME.match(name)
    if not found:
        raise LtxError(f"{name[:80]!r} is not the name of a Litestream replica file (MIN-MAX.ltx, 16 hex digits each)")
    low, high = int(found.group(1), 16), int(found.group(2), 16)
    if not 0 < low <= high <= _MAX_TXID:
        raise LtxError(f"{name} names the transaction range {low}-{high}, which no replica holds")
    return low, high


def read_header(data: bytes, name: str = "") -> Header:
    """The header of an LTX file (its first 100 bytes, or more); checked against its name when given."""
    if len(data) < HEADER_SIZE:
        raise LtxError(f"{name or 'an LTX file'} is {len(data)} bytes, shorter than an LTX header")
    magic, flags, page_size, commit, low, high, millis = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise LtxError(f"{name or 'the file'} is not an LTX file (it begins {magic!r}, not {MAGIC!r})")
    if page_size < 512 or page_size > 65536 or page_size & (page_size - 1):
        raise LtxError(f"{name or 'the LTX file'} claims a page size of {page_size}, which SQLite never uses")
    if not 0 < low <= high <= _MAX_TXID:
        raise LtxError(f"{name or 'the LTX file'} claims the transaction range {low}-{high}")
    if name and parse_name(name) != (low, high):
        raise LtxError(f"{name} holds the transactions {format_txid(low)}-{format_txid(high)}, not what its name says")
    try:
        when = datetime.fromtimestamp(millis / 1000, UTC)
    except (OverflowError, OSError, ValueError) as exc:
        raise LtxError(f"{name or 'the LTX file'} claims a time of {millis} ms since the epoch") from exc
    return Header(flags, page_size, commit, low, high, when)


@dataclass(frozen=True)
class Plan:
    """The files a restore to ``moment`` applies, in order, and the txid and moment it reaches."""

    moment: datetime
    files: tuple[LtxFile, ...]

    @property
    def txid(self) -> int:
        return self.files[-1].max_txid

    @property
    def reached(self) -> datetime:
        """The newest time among the files applied: every commit restored was made at or before it."""
        return max(f.timestamp for f in self.files)


def plan_at(files: Iterable[LtxFile], moment: datetime) -> Plan | None:
    """The restore that reaches furthest without a commit after ``moment`` (aware datetime); None when nothing of the
    database was replicated by then. A file counts only when stamped at or before ``moment``, so a compacted file
    counts only when every transaction in it was (its time is its newest input's)."""
    if moment.tzinfo is None:
        raise LtxError("a moment to restore to needs a time zone")
    usable = [f for f in files if f.timestamp <= moment]
    snapshots = [f for f in usable if f.level == SNAPSHOT_LEVEL and f.min_txid == 1]
    # From the newest snapshot; without one (a database Litestream found after its start is snapshotted only at the
    # next snapshot interval), from the files that begin at txid 1: the first holds the whole database.
    chain = [max(snapshots, key=lambda f: (f.max_txid, f.timestamp))] if snapshots else []
    # Of the files continuing the chain (starting at most one past its end, reaching beyond it), the one reaching
    # furthest; on a tie the higher level (fewer, larger files), then the later time.
    rest = [f for f in usable if f.level != SNAPSHOT_LEVEL]
    while True:
        end = chain[-1].max_txid if chain else 0
        following = [f for f in rest if f.min_txid <= end + 1 and f.max_txid > end]
        if not following:
            return Plan(moment, tuple(chain)) if chain else None
        chain.append(max(following, key=lambda f: (f.max_txid, f.level, f.timestamp)))


def latest(files: Iterable[LtxFile]) -> Plan | None:
    """The restore to the newest state the replica holds."""
    found = list(files)
    if not found:
        return None
    return plan_at(found, max(f.timestamp for f in found))
