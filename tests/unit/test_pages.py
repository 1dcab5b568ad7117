"""Page patches of SQLite databases (sets/pages.py): made from a base's page map and a new snapshot, rebuilt onto
the base byte for byte; a hostile patch refused in one sentence, never a wrong database written."""

from __future__ import annotations

import hashlib
import os
import sqlite3
import struct
from pathlib import Path

import pytest

from ansible_collections.selfhost.dr.plugins.module_utils.sets import pages


def _db(path: Path, rows: int, page_size: int = 4096) -> None:
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA page_size={page_size}")
    db.execute("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, v TEXT)")
    db.executemany("INSERT INTO t (v) VALUES (?)", [(os.urandom(40).hex(),) for _ in range(rows)])
    db.commit()
    db.close()


def _chunks(data: bytes, size: int) -> list[bytes]:
    return [data[n : n + size] for n in range(0, len(data), size)]


def _map(data: bytes, chunk: int = 65536) -> pages.PageMap:
    hasher = pages.PageHasher()
    for piece in _chunks(data, chunk):
        hasher.update(piece)
    return hasher.result()


def _patch(tmp_path: Path, base: bytes, new: bytes, chunk: int = 65536) -> tuple[Path, pages.Patch]:
    out = tmp_path / "patch"
    fd = os.open(out, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        writer = pages.PatchWriter(_map(base), fd)
        for piece in _chunks(new, chunk):
            writer.update(piece)
        made = writer.result()
    finally:
        os.close(fd)
    return out, made


def _rebuild(tmp_path: Path, base: bytes, patch: Path, size: int, page_size: int) -> tuple[bytes, str]:
    (tmp_path / "base").write_bytes(base)
    out = tmp_path / "out"
    with _Fd(tmp_path / "base") as b, _Fd(patch) as p:
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            digest = pages.rebuild(b, p, fd, size, page_size)
        finally:
            os.close(fd)
    return out.read_bytes(), digest


class _Fd:  # a read-only descriptor, closed on exit
    def __init__(self, path: Path) -> None:
        self.fd = os.open(path, os.O_RDONLY)

    def __enter__(self) -> int:
        return self.fd

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)


@pytest.mark.parametrize("chunk", [7, 1000, 4096, 65536, 1 << 20])
def test_a_few_changed_rows_cost_a_few_pages_and_rebuild_the_database_exactly(tmp_path: Path, chunk: int) -> None:
    path = tmp_path / "a.db"
    _db(path, 5000)
    base = path.read_bytes()
    db = sqlite3.connect(path)
    db.execute("UPDATE t SET v = 'changed' WHERE id IN (10, 2500, 4990)")
    db.commit()
    db.close()
    new = path.read_bytes()
    patch, made = _patch(tmp_path, base, new, chunk)
    assert made.page_size == 4096 and made.size == len(new)
    assert 1 <= made.pages <= 5, f"{made.pages} pages carried for three rows and the header"
    assert patch.stat().st_size == made.patch_size < len(new) / 20
    rebuilt, digest = _rebuild(tmp_path, base, patch, made.size, made.page_size)
    assert rebuilt == new and digest == made.sha256 == hashlib.sha256(new).hexdigest()


def test_a_database_that_grew_shrank_or_changed_its_page_size_rebuilds_exactly(tmp_path: Path) -> None:
    path = tmp_path / "a.db"
    _db(path, 3000)
    base = path.read_bytes()
    _db(path, 3000)  # grew
    grown = path.read_bytes()
    db = sqlite3.connect(path)
    db.execute("DELETE FROM t WHERE id > 1000")
    db.commit()
    db.execute("VACUUM")  # shrank
    db.close()
    shrunk = path.read_bytes()
    db = sqlite3.connect(path)
    db.execute("PRAGMA page_size=1024")
    db.execute("VACUUM")  # another page size: every page is carried
    db.close()
    resized = path.read_bytes()
    for new in (grown, shrunk, resized, base + b"tail not a whole page"):
        patch, made = _patch(tmp_path, base, new)
        rebuilt, digest = _rebuild(tmp_path, base, patch, made.size, made.page_size)
        assert rebuilt == new and digest == hashlib.sha256(new).hexdigest()
        patch.unlink()
    assert pages.page_size_of(resized) == 1024


def test_a_page_map_survives_json_and_a_damaged_one_is_refused() -> None:
    mapped = _map(b"SQLite format 3\0" + b"\x10\x00" + bytes(8192 - 18))
    assert (mapped.page_size, mapped.pages) == (4096, 2)
    assert pages.PageMap.from_json(mapped.to_json()) == mapped
    for bad in (
        {**mapped.to_json(), "page_size": 1000},
        {**mapped.to_json(), "size": 4096},  # two digests for one page
        {**mapped.to_json(), "digests": "not base64!"},
        {**mapped.to_json(), "size": True},
        [],
    ):
        assert pages.PageMap.from_json(bad) is None


def test_a_hostile_patch_is_refused_in_one_sentence_and_writes_no_database(tmp_path: Path) -> None:
    path = tmp_path / "a.db"
    _db(path, 2000)
    base = path.read_bytes()
    good = bytearray(base)
    good[5 * 4096 + 100] ^= 0xFF
    patch, made = _patch(tmp_path, base, bytes(good))
    body = patch.read_bytes()
    header = len(pages.MAGIC) + 12
    page = struct.pack(">I", 5) + bytes(good[5 * 4096 : 6 * 4096])
    assert body == body[:header] + page
    pages_total = -(-made.size // 4096)
    first = struct.pack(">I", 0) + base[:4096]
    cases = {
        "larger than its base and all its pages together": body[: len(pages.MAGIC)] + struct.pack(">IQ", 4096, 1 << 26),
        "leaves out page": body[: len(pages.MAGIC)] + struct.pack(">IQ", 4096, len(base) + 4096) + first,
        "not a page patch": b"GIF89a" + body[6:],
        "does not say what the manifest says": body[: len(pages.MAGIC)] + struct.pack(">IQ", 4096, made.size + 1),
        "ends inside a page": body[:-1],
        "out of order": body[:header] + page + page,
        "past the database's end": body[:header] + struct.pack(">I", pages_total) + bytes(4096),
    }
    for sentence, crafted in cases.items():
        patch.write_bytes(crafted)
        size = struct.unpack(">Q", crafted[len(pages.MAGIC) + 4 : len(pages.MAGIC) + 12])[0] if len(crafted) > 31 else 0
        with pytest.raises(pages.PatchError, match=sentence):
            _rebuild(tmp_path, base, patch, size if sentence.startswith(("larger", "leaves")) else made.size, 4096)
        assert (tmp_path / "out").stat().st_size <= len(base), "a hostile patch made a file larger than its base"
        (tmp_path / "out").unlink()
    assert pages.record_problem(made.record("0" * 64)) == ""
    assert "page size" in pages.record_problem({**made.record("0" * 64), "page_size": 3000})
    assert "sha256" in pages.record_problem({**made.record("0" * 64), "base_sha256": "../x"})
