"""The drill's own procedure (engine/drill.py) on a real tenement: a set verified, restored, its instances spawned
and checked, each step and check a case with its time; a damaged set, an instance that cannot start, a probe and a
SQL check that fail each end the drill at the step that failed, with one sentence, and the later steps skipped. The
same from a real restic repository: fetched, every file and database checked, restored, the snapshot tagged; a
damaged repository fails at the fetch with the application untouched."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import pytest

from ansible_collections.selfhost.dr.plugins.module_utils.engine import backup, drill, repo_backup, restore
from ansible_collections.selfhost.dr.plugins.module_utils.reports import Case
from ansible_collections.selfhost.dr.plugins.module_utils.repos.restic import VERIFIED_TAG, Repository, Restic

from .test_tenement_hazards import Host, host  # noqa: F401 - the live tenement fixture

DEMO = "demo:alpha"


def _backup(host: Host) -> str:  # noqa: F811
    app = host.app()
    options = backup.Options(dest=str(host.backups))
    (entry,) = backup.run(app, backup.plan(app, "hot", options), options).sets
    return str(entry["path"])


def _drill(host: Host, archive: str, **checks: object) -> drill.Drilled:  # noqa: F811
    options = drill.Options(
        restore.Options(health_timeout=20),
        drill.probes_from(checks.get("probes", [])),  # type: ignore[arg-type]
        drill.sql_from(checks.get("sql", [])),  # type: ignore[arg-type]
    )
    return drill.run(host.app(), archive, options)


def _by_name(cases: list[Case]) -> dict[str, Case]:
    return {c.name: c for c in cases}


def _steps(done: drill.Drilled) -> list[tuple[str, str]]:
    return [(c.name, c.status) for c in done.cases if c.kind == "step"]


def test_a_drill_restores_the_set_spawns_its_instances_and_checks_what_they_serve(host: Host) -> None:  # noqa: F811
    host.add_rows(DEMO, 7)
    rows = host.stats(DEMO)["rows"]
    archive = _backup(host)
    host.add_rows(DEMO, 5)  # after the backup: the drill must bring back the set's rows, not these
    database = str(host.data_dir / "demo" / "alpha" / "app.db")
    done = _drill(
        host,
        archive,
        probes=[{"name": "stats", "instance": DEMO, "path": "/stats", "body": f'"rows": {rows}[,}}]'}],
        sql=[{"name": "items", "database": database, "query": "SELECT count(*) FROM items", "expect": rows}],
    )
    assert done.ok, [c for c in done.cases if c.status != "passed"]
    assert _steps(done) == [(s, "passed") for s in drill.STEPS]
    cases = _by_name(done.cases)
    assert {"checksum", "manifest", "members", "sqlite", "rows"} <= set(cases)
    assert cases["instance demo:alpha running and healthy"].status == "passed"
    assert cases["instance scratch:x running and healthy"].status == "passed"
    assert cases["probe stats"].status == cases["sql items"].status == "passed"
    assert all(c.seconds is not None and c.seconds >= 0 for c in done.cases if c.kind == "step")
    assert done.properties["instances"] == 2 and done.properties["tables_counted"]
    assert str(done.properties["set_started_at"]).endswith("Z") and done.properties["set"] == Path(archive).name
    assert host.stats(DEMO)["rows"] == rows


def test_a_set_with_one_flipped_byte_fails_at_verify_and_nothing_is_restored(host: Host) -> None:  # noqa: F811
    archive = _backup(host)
    host.add_rows(DEMO, 3)
    running = host.stats(DEMO)["rows"]
    data = bytearray(Path(archive).read_bytes())
    data[len(data) // 2] ^= 0x01
    Path(archive).write_bytes(bytes(data))
    done = _drill(host, archive)
    assert not done.ok
    assert _steps(done) == [("verify", "failed")] + [(s, "skipped") for s in drill.STEPS[1:]]
    verify_step = _by_name(done.cases)["verify"]
    assert "failed verification" in verify_step.message and "sha256" in verify_step.message
    assert host.stats(DEMO)["rows"] == running  # the application was never stopped


def test_an_instance_that_cannot_start_fails_the_spawn_step(host: Host) -> None:  # noqa: F811
    # The set records a service whose command now fails: the running instances were started before it changed.
    config = host.workdir / "tenement.toml"
    config.write_text(config.read_text().replace(f'command = "{sys.executable} ', 'command = "/bin/false ', 1))
    archive = _backup(host)
    done = _drill(host, archive)
    assert not done.ok
    assert _steps(done) == [
        ("verify", "passed"),
        ("compatibility", "passed"),
        ("restore", "passed"),
        ("spawn", "failed"),
        ("checks", "skipped"),
    ]
    assert "demo:alpha" in _by_name(done.cases)["spawn"].message


def test_a_failing_probe_and_sql_check_fail_the_checks_step_by_name(host: Host) -> None:  # noqa: F811
    archive = _backup(host)
    database = str(host.data_dir / "demo" / "alpha" / "app.db")
    done = _drill(
        host,
        archive,
        probes=[{"name": "missing page", "instance": DEMO, "path": "/nowhere", "timeout": 1}],
        sql=[
            {"name": "too many", "database": database, "query": "SELECT count(*) FROM items", "expect": 10**6},
            {"name": "writes", "database": database, "query": "DELETE FROM items"},
        ],
    )
    cases = _by_name(done.cases)
    assert _steps(done)[-1] == ("checks", "failed")
    assert cases["checks"].message.startswith("probe missing page: ")
    assert "answered HTTP 404, not 200" in cases["probe missing page"].message
    assert "not 1000000" in cases["sql too many"].message
    assert cases["sql writes"].status == "failed" and cases["sql writes"].message == "the query failed: not authorized"
    count = subprocess.run(
        ["sqlite3", database, "SELECT count(*) FROM items"], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert int(count) > 0  # the DELETE did not run


@pytest.mark.parametrize(
    ("probe", "sentence"),
    [
        ({"name": "both", "url": "http://x/", "instance": DEMO}, "needs a url or an instance"),
        ({"name": "file", "url": "file:///etc/passwd"}, "not an http:// or https:// URL"),
        ({"name": "rel", "instance": DEMO, "path": "stats"}, "does not start with /"),
        ({"name": "re", "url": "http://x/", "body": "("}, "not a regular expression"),
    ],
)
def test_malformed_probes_are_refused_before_anything_runs(probe: dict[str, object], sentence: str) -> None:
    with pytest.raises(drill.DrillError, match=sentence):
        drill.probes_from([probe])


needs_restic = pytest.mark.skipif(shutil.which("restic") is None, reason="restic is not installed (scripts/bootstrap)")


@pytest.fixture
def repository(tmp_path: Path) -> Restic:
    password = tmp_path / "restic.password"
    password.write_text("a long repository password\n")
    password.chmod(0o600)
    return Restic(Repository("offsite", str(tmp_path / "restic"), password_file=str(password), init=True))


def _repo_backup(host: Host, restic: Restic) -> str:  # noqa: F811
    app = host.app()
    options = backup.Options(dest=str(host.backups))
    done = repo_backup.run(app, repo_backup.plan(app, "hot", options), [restic], options)
    assert done.outcomes[0].ok, done.outcomes[0].error
    return done.outcomes[0].snapshot_id


def _drill_repository(host: Host, restic: Restic, from_host: str = "") -> drill.Drilled:  # noqa: F811
    options = drill.Options(restore.Options(health_timeout=20))
    return drill.run_repository(host.app(), restic, options, host=from_host)


@needs_restic
def test_a_drill_from_a_repository_fetches_checks_restores_and_tags_the_snapshot(
    host: Host,  # noqa: F811
    repository: Restic,
) -> None:
    host.add_rows(DEMO, 4)
    rows = host.stats(DEMO)["rows"]
    snapshot_id = _repo_backup(host, repository)
    host.add_rows(DEMO, 6)  # after the backup: the drill brings back the snapshot's rows
    done = _drill_repository(host, repository)
    assert done.ok, [c for c in done.cases if c.status != "passed"]
    assert _steps(done) == [(s, "passed") for s in drill.REPOSITORY_STEPS]
    fetched = _by_name(done.cases)["fetch"].detail
    assert fetched["files"] > 0 and fetched["databases"] >= 2 and fetched["tables"] >= 2  # type: ignore[operator]
    assert done.properties["tables_counted"] == fetched["tables"]
    assert str(done.properties["snapshot_id"]).startswith(snapshot_id)
    assert done.properties["set"] == f"snapshot {snapshot_id[:8]} of offsite"
    assert str(done.properties["set_started_at"]).endswith("Z")
    assert host.stats(DEMO)["rows"] == rows
    (tagged,) = repository.snapshots([VERIFIED_TAG])
    assert tagged["original"] == done.properties["snapshot_id"] and done.properties["snapshot_tagged"] == tagged["id"]
    # The report's suite expects the repository's steps: all there, so the drill passed and has an RTO.
    now = time.time()
    suite = drill.suite_of(
        {
            "host": "web-1",
            "started": now,
            "finished": now + 30,
            "steps": [{"name": s, "status": "passed", "seconds": 1} for s in drill.ROLE_STEPS],
            "cases": [asdict(c) for c in done.cases],
            "properties": done.properties,
        }
    )
    assert not [c for c in suite.cases if c.status != "passed"]
    assert suite.properties["rto_seconds"] == 30 and suite.properties["rpo_seconds"] > 0  # type: ignore[operator]


@needs_restic
def test_a_damaged_repository_fails_at_the_fetch_and_the_application_keeps_running(
    host: Host,  # noqa: F811
    repository: Restic,
) -> None:
    (host.data_dir / "demo" / "alpha" / "upload.bin").write_bytes(os.urandom(3 * 2**20))
    _repo_backup(host, repository)
    host.add_rows(DEMO, 2)
    running = host.stats(DEMO)["rows"]

    elsewhere = _drill_repository(host, repository, from_host="elsewhere")
    assert _steps(elsewhere) == [("snapshot", "failed")] + [(s, "skipped") for s in drill.REPOSITORY_STEPS[1:]]
    assert "holds no tenement snapshot of elsewhere" in _by_name(elsewhere.cases)["snapshot"].message

    packs = [
        p for p in (Path(repository.repo.location) / "data").rglob("*") if p.is_file() and p.stat().st_size > 2**20
    ]
    assert packs  # the upload's: the trees and the databases' small packs stay readable
    for pack in packs:
        with pack.open("r+b") as f:
            for offset in range(1000, pack.stat().st_size - 65536, 65536):
                f.seek(offset)
                f.write(b"damaged!")
    done = _drill_repository(host, repository)
    assert not done.ok
    assert _steps(done) == [("snapshot", "passed"), ("compatibility", "passed"), ("fetch", "failed")] + [
        (s, "skipped") for s in ("restore", "spawn", "checks")
    ]
    assert "nothing was changed" in _by_name(done.cases)["fetch"].message
    assert host.stats(DEMO)["rows"] == running  # never stopped, never replaced
    assert repository.snapshots([VERIFIED_TAG]) == []
