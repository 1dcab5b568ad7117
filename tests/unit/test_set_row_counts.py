"""Row counts in a set: every table's rows recorded when its database is snapshotted, compared by a deep verify.

What a restore or a drill relies on to say the data is complete without knowing the application: the counts are
those of the very copy archived (one read transaction), and a set whose counts disagree with its databases is
refused even though every checksum in it is valid.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
from pathlib import Path

import pytest

from ansible_collections.selfhost.dr.plugins.module_utils.sets.create import create
from ansible_collections.selfhost.dr.plugins.module_utils.sets.verify import verify

from .crafted_sets import M, tree, write_set
from .sqlite_helpers import make_db, writer_running


def _extract(archive: str, into: Path) -> None:
    into.mkdir()
    subprocess.run(f"zstd -d -c '{archive}' | tar -x -C '{into}'", shell=True, check=True)  # noqa: S602


def _counts(path: Path) -> dict[str, int]:
    with sqlite3.connect(path) as conn:
        names = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        return {n: conn.execute(f'SELECT count(*) FROM "{n}"').fetchone()[0] for n in names}  # noqa: S608


def _snapshots(archive: str) -> dict[str, dict[str, object]]:
    manifest = json.loads(Path(archive + ".manifest.json").read_text())
    return {str(s["path"]): s for s in manifest["snapshots"]}


# in memory; larger than memory: read from the file (WAL, quiet) or staged (rollback journal)
@pytest.mark.parametrize(("mode", "memory_limit"), [("wal", 8 << 20), ("wal", 1), ("delete", 8 << 20), ("delete", 1)])
def test_the_counts_recorded_are_those_of_the_copy_archived_while_a_writer_commits(
    tmp_path: Path, mode: str, memory_limit: int
) -> None:
    app = tmp_path / "app"
    app.mkdir()
    make_db(app / "live.db", mode=mode, rows=3000)
    with writer_running(app / "live.db") as run:
        made = create([str(app)], str(tmp_path), lock_timeout=10, memory_limit=memory_limit)
    _extract(made.path, tmp_path / "out")
    member = f"{str(app).lstrip('/')}/live.db"
    archived = _counts(tmp_path / "out" / member)
    assert run.before <= archived["ledger"] <= run.after
    assert _snapshots(made.path)[member]["rows"] == archived == {"ledger": archived["ledger"], "totals": 1}


def test_odd_table_names_are_counted_and_virtual_tables_left_to_their_shadow_tables(tmp_path: Path) -> None:
    app = tmp_path / "app"
    app.mkdir()
    with sqlite3.connect(app / "odd.db") as conn:
        conn.execute('CREATE TABLE "we""ird name" (x)')
        conn.executemany('INSERT INTO "we""ird name" VALUES (?)', [(i,) for i in range(7)])
        conn.execute("CREATE VIRTUAL TABLE search USING fts5(body)")
        conn.executemany("INSERT INTO search VALUES (?)", [("a",), ("b",)])
    made = create([str(app)], str(tmp_path))
    rows = _snapshots(made.path)[f"{str(app).lstrip('/')}/odd.db"]["rows"]
    assert isinstance(rows, dict)
    assert rows['we"ird name'] == 7 and "search" not in rows and rows["search_content"] == 2
    result = verify(made.path)
    assert result.ok, result.problems
    assert any(c["check"] == "rows" and c["ok"] for c in result.checks)


def _database_bytes(path: Path, rows: int) -> bytes:
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE t (n INTEGER)")
        conn.executemany("INSERT INTO t VALUES (?)", [(i,) for i in range(rows)])
    return path.read_bytes()


def _crafted(tmp_path: Path, rows: object) -> str:
    data = _database_bytes(tmp_path / "source.db", 10)
    member = M("srv/app/data.db", data=data, mode=0o600, record={"sqlite": True})

    def edit(manifest: dict[str, object]) -> None:
        manifest["snapshots"] = [{"path": member.name, "sha256": member.sha256(), "size": member.size, "rows": rows}]

    backups = tmp_path / "backups"
    backups.mkdir()
    return write_set(backups, [*tree("srv/app"), member], ["/srv/app"], edit=edit).path


def test_a_set_whose_row_counts_disagree_with_its_database_is_refused_though_every_checksum_is_valid(
    tmp_path: Path,
) -> None:
    archive = _crafted(tmp_path, {"t": 11})
    result = verify(archive)
    assert not result.ok
    assert "checksum" not in " ".join(result.problems)  # (every checksum is valid)
    assert result.problems == ["database srv/app/data.db holds 10 rows in table 't', its manifest says 11"]


def test_a_table_the_manifest_names_but_the_database_lacks_is_refused(tmp_path: Path) -> None:
    result = verify(_crafted(tmp_path, {"t": 10, "users": 3}))
    assert result.problems == ["database srv/app/data.db holds no rows in table 'users', its manifest says 3"]


@pytest.mark.parametrize("rows", [[1, 2], {"t": -1}, {"t": "10"}, {"t": True}, "all"])
def test_row_counts_that_are_not_table_names_and_numbers_make_the_manifest_invalid(
    tmp_path: Path, rows: object
) -> None:
    result = verify(_crafted(tmp_path, rows))
    assert not result.ok
    assert any("row counts that are not table names and numbers" in p for p in result.problems)


def test_a_set_made_before_counts_were_recorded_still_verifies(tmp_path: Path) -> None:
    data = _database_bytes(tmp_path / "source.db", 10)
    member = M("srv/app/data.db", data=data, mode=0o600, record={"sqlite": True})
    backups = tmp_path / "backups"
    backups.mkdir()
    result = verify(write_set(backups, [*tree("srv/app"), member], ["/srv/app"]).path)
    assert result.ok, result.problems
    assert "rows" not in [c["check"] for c in result.checks]


# in memory, read from the file, staged (rollback journal)
@pytest.mark.parametrize(("mode", "memory_limit"), [("wal", 8 << 20), ("wal", 1), ("delete", 1)])
def test_databases_above_row_counts_max_size_are_not_counted_and_said_so(
    tmp_path: Path, mode: str, memory_limit: int
) -> None:
    app = tmp_path / "app"
    app.mkdir()
    make_db(app / "large.db", mode, rows=2000)  # about 600 KiB
    make_db(app / "small.db", mode, rows=10)
    said: list[str] = []
    made = create([str(app)], str(tmp_path), memory_limit=memory_limit, row_counts_max_size=100_000, log=said.append)
    snaps = {Path(p).name: s for p, s in _snapshots(made.path).items()}
    assert "rows" not in snaps["large.db"] and snaps["small.db"]["rows"] == {"ledger": 10, "totals": 1}
    assert [line for line in said if "large.db" in line and "not counted" in line]
    assert not [line for line in said if "small.db" in line and "not counted" in line]
    result = verify(made.path, deep=True)
    assert result.ok, result.problems  # the rows check compares the small one's counts, and only those
    assert result.stats["tables_counted"] == 2
