"""Litestream replica files read as data, and the restore plan to a moment (replicas/ltx.py, issue 17).

tests/fixtures/litestream/single is a real replica written by Litestream 0.5.17 (file backend; level 1 every 10 s,
level 2 every 30 s, level-0 files kept 20 s, a snapshot a minute) while a writer committed a row every 0.7 s
(single-writes.jsonl, each row's commit time). Its level-0 files for txids 0x01-0x32 were compacted away, as in any
replica older than a few minutes."""

from __future__ import annotations

import struct
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from ansible_collections.selfhost.dr.plugins.module_utils.replicas import ltx
from ansible_collections.selfhost.dr.plugins.module_utils.replicas.ltx import LtxError, LtxFile

REPLICA = Path(__file__).resolve().parents[1] / "fixtures" / "litestream" / "single" / "ltx"


def _files() -> list[LtxFile]:
    found = []
    for path in sorted(REPLICA.glob("*/*.ltx")):
        header = ltx.read_header(path.read_bytes(), path.name)
        found.append(LtxFile(int(path.parent.name), header.min_txid, header.max_txid, header.timestamp,
                             path.stat().st_size))  # fmt: skip
    return found


def _at(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def test_the_real_replicas_files_are_read_with_their_times() -> None:
    files = _files()
    assert len(files) == 19 and {f.level for f in files} == {0, 1, 2, 3, 9}
    snapshot = next(f for f in files if f.level == 9 and f.max_txid == 0x25)
    assert snapshot.name == "0000000000000001-0000000000000025.ltx"
    assert snapshot.timestamp == _at("2026-11-29T15:45:00.007Z")


def test_the_newest_state_is_the_newest_txid() -> None:
    plan = ltx.latest(_files())
    assert plan is not None and plan.txid == 0x35 and ltx.format_txid(plan.txid) == "0000000000000035"


def test_a_moment_in_a_compacted_window_reaches_what_litestream_itself_reaches() -> None:
    # Litestream 0.5.17's own dry run for this moment (the commit of row 30) planned txids 1-0x11: the level-0
    # files after 0x11 are gone, and the level-1 file 0x12-0x1b is stamped 15:44:49.9, after it.
    plan = ltx.plan_at(_files(), _at("2026-11-29T15:44:44.927Z"))
    assert plan is not None and plan.txid == 0x11
    assert plan.reached == _at("2026-11-29T15:44:39.935Z")
    assert plan.files[0].name == "0000000000000001-0000000000000001.ltx"


def test_a_plan_is_a_contiguous_chain_never_stamped_after_its_moment() -> None:
    files = _files()
    first = min(f.timestamp for f in files if f.level == 9)
    last = max(f.timestamp for f in files)
    moments = [first + timedelta(seconds=s / 2) for s in range(int((last - first).total_seconds() * 2) + 2)]
    txids = []
    for moment in moments:
        plan = ltx.plan_at(files, moment)
        assert plan is not None
        assert plan.files[0].level == 9 and plan.files[0].min_txid == 1
        assert all(f.timestamp <= moment for f in plan.files)
        assert all(
            b.min_txid <= a.max_txid + 1 < b.max_txid + 1 for a, b in zip(plan.files, plan.files[1:], strict=False)
        )
        txids.append(plan.txid)
    assert txids == sorted(txids), "a later moment reached an earlier state"
    assert txids[-1] == 0x35


def test_a_moment_before_anything_was_replicated_has_no_plan() -> None:
    first = min(f.timestamp for f in _files())
    assert ltx.plan_at(_files(), first - timedelta(milliseconds=1)) is None
    plan = ltx.plan_at(_files(), first)
    assert plan is not None and plan.txid == 1, "the database's first file holds the whole database"
    with pytest.raises(LtxError, match="time zone"):
        ltx.plan_at(_files(), datetime(2026, 11, 29, 15, 45))


def test_a_gap_ends_the_chain() -> None:
    t = datetime(2026, 1, 1, tzinfo=UTC)
    files = [LtxFile(9, 1, 4, t), LtxFile(0, 5, 5, t), LtxFile(0, 8, 8, t), LtxFile(1, 5, 6, t)]  # 7 is gone
    plan = ltx.plan_at(files, t)
    assert plan is not None and plan.txid == 6 and [f.level for f in plan.files] == [9, 1]


def test_a_database_found_after_litestreams_start_is_planned_from_its_first_file_until_a_snapshot_exists() -> None:
    t = datetime(2026, 1, 1, tzinfo=UTC)
    # Litestream snapshots a database it finds later only at the next snapshot interval: its files begin at txid 1.
    files = [LtxFile(1, 1, 6, t), LtxFile(0, 1, 1, t), LtxFile(0, 7, 7, t + timedelta(seconds=1))]
    plan = ltx.plan_at(files, t)
    assert plan is not None and plan.txid == 6 and [f.level for f in plan.files] == [1]
    latest = ltx.latest(files)
    assert latest is not None and latest.txid == 7
    assert ltx.plan_at([LtxFile(0, 2, 3, t)], t) is None, "a chain not from txid 1 is no database"


def _header(
    low: int = 1, high: int = 1, page: int = 4096, millis: int = 1_700_000_000_000, magic: bytes = b"LTX1"
) -> bytes:
    return struct.pack(">4sIIIQQq", magic, 2, page, 4, low, high, millis) + bytes(60)


@pytest.mark.parametrize(
    ("data", "name", "said"),
    [
        (_header()[:99], "", "shorter than an LTX header"),
        (_header(magic=b"LTX2"), "", "is not an LTX file"),
        (_header(page=1000), "", "page size of 1000"),
        (_header(low=5, high=4), "", "transaction range 5-4"),
        (_header(low=0, high=0), "", "transaction range 0-0"),
        (_header(high=2), "0000000000000001-0000000000000001.ltx", "not what its name says"),
        (_header(millis=2**62), "", "claims a time of"),
        (_header(), "../0000000000000001-0000000000000001.ltx", "is not the name of a Litestream replica file"),
        (_header(), "0000000000000001-0000000000000001.ltx.tmp", "is not the name"),
        (_header(), "000000000000000G-0000000000000001.ltx", "is not the name"),
    ],
)
def test_a_file_that_is_not_what_litestream_writes_is_refused(data: bytes, name: str, said: str) -> None:
    with pytest.raises(LtxError, match=said):
        ltx.read_header(data, name)


def test_a_txid_is_written_as_restore_takes_it() -> None:
    assert ltx.format_txid(0x1B) == "000000000000001b"
    for bad in (0, -1, 2**63):
        with pytest.raises(LtxError):
            ltx.format_txid(bad)
