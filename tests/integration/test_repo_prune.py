"""Retention over a real restic repository (engine/repo_prune.py, ``selfhost-dr prune --repo``): snapshots made with
``restic backup --time`` over fourteen months, kept exactly as the local prune keeps sets of the same times; forgotten
by id and pruned; the newest snapshot verified by a restore never forgotten; other hosts' snapshots left alone; a
local and a SeaweedFS S3 repository, each outcome on its own."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from ansible_collections.selfhost.dr.plugins.module_utils.engine import prune as local_prune
from ansible_collections.selfhost.dr.plugins.module_utils.engine import repo_prune
from ansible_collections.selfhost.dr.plugins.module_utils.repos.restic import (
    SNAPSHOT_TAG,
    VERIFIED_TAG,
    Repository,
    Restic,
)
from ansible_collections.selfhost.dr.plugins.module_utils.sets.names import Sidecars, default_host, set_name

from . import s3_store
from .test_repo_backup import _cli

pytestmark = pytest.mark.skipif(shutil.which("restic") is None, reason="restic is not installed (scripts/bootstrap)")
PASSWORD = "a long repository password"
# One bucket for these tests, a prefix each: every bucket takes volumes of the session's one SeaweedFS (conftest.py).
BUCKET = "dr-maintenance"
SEVEN_FOUR_TWELVE = {"keep_daily": 7, "keep_weekly": 4, "keep_monthly": 12}


def calendar(end: datetime) -> list[datetime]:
    """Fourteen months of backups, as a host makes them: daily lately (twice on some days), weekly before, then
    every three weeks or so, with a gap of two months (tests/unit/test_repo_prune.py has the same)."""
    times = [end - timedelta(days=n) for n in range(12)]
    times += [end - timedelta(days=n, hours=9) for n in (0, 3, 4)]
    times += [end - timedelta(days=12 + 7 * n, hours=5) for n in range(8)]
    times += [end - timedelta(days=70 + 23 * n) for n in range(16) if n not in (5, 6)]
    return sorted(times)


def write_set(directory: Path, when: datetime) -> str:
    """A local set of tenement on web1 made at ``when``, as the local prune sees it: a file and its sidecar manifest
    (no real archive; tests/unit/test_prune_module_logic.py has the same)."""
    name = set_name("tenement", "web1", when, "hot", "zstd")
    (directory / name).write_bytes(b"\x28\xb5\x2f\xfd" + bytes(100))
    claims = {"format": "selfhost.dr/backup-set", "format_version": 1, "app": "tenement", "host": "web1"}
    claims.update(label="hot", started_at=when.strftime("%Y-%m-%dT%H:%M:%S.%fZ"), files=[], snapshots=[], paths=[])
    Path(Sidecars.of(str(directory / name)).manifest).write_text(json.dumps(claims))
    return name


def _password(tmp_path: Path) -> Path:
    path = tmp_path / "password"
    path.write_text(PASSWORD + "\n")
    path.chmod(0o600)
    return path


def _made_at(restic: Restic, when: datetime, host: str, *tags: str) -> None:
    """A snapshot of a small file of its own, dated ``when`` (``restic backup --time``, read as UTC)."""
    argv = ["restic", "backup", "--stdin", "--stdin-filename", "tenement.db", "--host", host, "--quiet"]
    argv += ["--time", when.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")]
    for tag in (SNAPSHOT_TAG, "kind=hot", *tags):
        argv += ["--tag", tag]
    env = {**restic.environment(), "TZ": "UTC"}
    subprocess.run(argv, input=os.urandom(30_000), env=env, check=True, capture_output=True)


def _make(restic: Restic, times: list[datetime], host: str, *tags: str) -> None:
    with ThreadPoolExecutor(4) as pool:  # restic's shared locks let backups run side by side
        list(pool.map(lambda when: _made_at(restic, when, host, *tags), times))


def _local(tmp_path: Path, name: str = "local", **over: object) -> Restic:
    repo = Repository(name, str(tmp_path / name), password_file=str(_password(tmp_path)), init=True)
    restic = Restic(Repository(**{**repo.__dict__, **over}))  # type: ignore[arg-type]
    restic.ensure()
    return restic


def test_seven_daily_four_weekly_twelve_monthly_forget_in_a_repository_what_the_local_prune_deletes(
    tmp_path: Path,
) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    times = calendar(now - timedelta(hours=1))
    restic = _local(tmp_path)
    _make(restic, times, "web1", "app=tenement")
    sets = tmp_path / "sets"
    sets.mkdir()
    written = {write_set(sets, when): when for when in times}
    policy = local_prune.policy_of(SEVEN_FOUR_TWELVE)
    local = local_prune.prune(str(sets), policy, {"app": "tenement", "host": None, "label": None}, check=True)
    locally_kept = sorted(written[str(entry["name"])] for entry in local.kept)

    planned = repo_prune.plan(restic, policy, "web1")
    assert sorted(repo_prune.snapshot_time(d.time) for d in planned.kept) == locally_kept  # type: ignore[type-var]
    assert len(planned.forget) == len(local.deleted) > 0
    assert len(restic.snapshots()) == len(times)  # the plan (check mode) changed nothing
    outcome = repo_prune.run(restic, planned)
    assert outcome.ok and outcome.pruned and outcome.freed_bytes and outcome.freed_bytes > 30_000
    left = sorted(repo_prune.snapshot_time(s["time"]) for s in restic.snapshots())  # type: ignore[type-var]
    assert left == locally_kept
    restic.check()  # forgotten and pruned, the repository is sound


def _config(tmp_path: Path, store: s3_store.Store, s3: str = "", retention: str = "keep_last = 1") -> Path:
    secrets = tmp_path / "secrets"
    secrets.mkdir(exist_ok=True)
    (secrets / "password").write_text(PASSWORD + "\n")
    (secrets / "s3.env").write_text("".join(f"{k}={v}\n" for k, v in store.env.items()))
    for path in secrets.iterdir():
        path.chmod(0o600)
    bucket = f"{BUCKET}/prune-{tmp_path.name}"
    config = tmp_path / "config.toml"
    config.write_text(
        f'backup_dir = "{tmp_path}/backups"\n[metrics]\ntextfile_dir = ""\n[retention]\n{retention}\n'
        f'[repositories.local]\nlocation = "{tmp_path}/local"\npassword_file = "{secrets}/password"\ninit = true\n'
        f'[repositories.s3]\nlocation = "{store.location(bucket)}"\npassword_file = "{secrets}/password"\n'
        f'env_file = "{secrets}/s3.env"\ninit = true\nrequired = false\nkeep_last = 2\n{s3}'
    )
    config.chmod(0o600)
    return config


def _repo(config: Path, name: str) -> Restic:
    import tomllib

    table = tomllib.loads(config.read_text())["repositories"][name]
    env = {}
    if "env_file" in table:
        env = dict(line.split("=", 1) for line in Path(table["env_file"]).read_text().splitlines())
    restic = Restic(Repository(name, table["location"], password_file=table["password_file"], env=env, init=True))
    restic.ensure()
    return restic


def test_the_host_command_prunes_each_repository_by_its_own_rules_and_never_the_newest_verified_one(
    tmp_path: Path, store: s3_store.Store, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _config(tmp_path, store)
    here = default_host()
    days = [datetime.now(UTC).replace(microsecond=0) - timedelta(days=n, hours=1) for n in range(5)]
    local, s3 = _repo(config, "local"), _repo(config, "s3")
    for restic in (local, s3):
        _make(restic, days[1:], here, "app=tenement")
        _made_at(restic, days[0], here, "app=tenement")
        _made_at(restic, days[3] + timedelta(minutes=5), here, "app=tenement", VERIFIED_TAG)
        _made_at(restic, days[4], "another-host", "app=tenement")
    before = {r.repo.name: {s["id"] for s in r.snapshots()} for r in (local, s3)}

    code, checked = _cli(capsys, "prune", "--all-repos", "--check", "--config", str(config))
    assert code == 0, checked
    assert {r.repo.name: {s["id"] for s in r.snapshots()} for r in (local, s3)} == before  # check mode: nothing gone
    code, result = _cli(capsys, "prune", "--all-repos", "--config", str(config))
    assert code == 0, result
    outcomes = {o["repository"]: o for o in result["repositories"]}  # type: ignore[union-attr]
    assert [o["forgotten"] for o in checked["repositories"]] == [  # type: ignore[union-attr]
        outcomes[name]["forgotten"] for name in ("local", "s3")
    ]
    for name, restic, rule in (("local", local, "last 1"), ("s3", s3, "last 2")):
        outcome = outcomes[name]
        assert outcome["ok"] and outcome["other_hosts"] == 1 and outcome["pruned"], outcome
        reasons = {d["time"][:16]: d["reasons"] for d in outcome["kept"]}
        assert reasons[days[0].strftime("%Y-%m-%dT%H:%M")] == [rule]
        verified = (days[3] + timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M")
        assert reasons[verified] == [repo_prune.NEWEST_VERIFIED]
        left = restic.snapshots()
        assert {s["hostname"] for s in left} == {here, "another-host"}  # another host's snapshot is its own business
        assert len(left) == len(outcome["kept"]) + 1 == (3 if name == "local" else 4)
        assert outcome["snapshots"] == len(left) - 1  # this host's, for status and the metrics
        assert {s["id"] for s in left} == {d["id"] for d in outcome["kept"]} | {
            s["id"] for s in left if s["hostname"] == "another-host"
        }
    code, status = _cli(capsys, "status", "--config", str(config))
    assert code == 0, status
    assert {n: status["repositories"][n]["snapshots"] for n in ("local", "s3")} == {"local": 2, "s3": 3}  # type: ignore[index]


def test_a_failed_optional_repository_is_a_warning_and_a_failed_required_one_fails_the_prune(
    tmp_path: Path, store: s3_store.Store, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _config(tmp_path, store)
    _repo(config, "local")
    (tmp_path / "secrets" / "s3.env").write_text(
        f"AWS_ACCESS_KEY_ID={s3_store.ACCESS_KEY}\nAWS_SECRET_ACCESS_KEY=not-the-key\n"
    )
    code, result = _cli(capsys, "prune", "--all-repos", "--config", str(config))
    assert code == 0, result
    assert [o["ok"] for o in result["repositories"]] == [True, False]  # type: ignore[union-attr]
    (warning,) = result["warnings"]  # type: ignore[misc]
    assert warning.startswith("s3 (optional): repository s3 (s3:http://127.0.0.1:") and "not-the-key" not in warning
    assert "refuses the store's credentials" in warning
    config.write_text(config.read_text().replace("required = false", "required = true"))
    for check in ([], ["--check"]):  # check mode refuses what the run refuses
        code, result = _cli(capsys, "prune", "--all-repos", *check, "--config", str(config))
        assert code == 1 and "refuses the store's credentials" in str(result["error"]), result
        done = "would prune: local" if check else "pruned: local"
        assert str(result["error"]).endswith(f"; {done}") and "not-the-key" not in json.dumps(result)
    code, result = _cli(capsys, "prune", "--repo", "local", "--all-hosts", "--no-prune", "--config", str(config))
    assert code == 0 and result["repositories"][0]["pruned"] is False  # type: ignore[index]
