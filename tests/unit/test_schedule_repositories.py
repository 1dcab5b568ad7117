"""A schedule whose backup goes into restic repositories (engine/schedule.py ``repositories``, ``selfhost-dr run
NAME``): parsed and written back, refused in one sentence when it cannot run, and run with real restic into a local
repository, each repository's outcome in the run's result."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from ansible_collections.selfhost.dr.plugins.module_utils.apps.registry import MODES
from ansible_collections.selfhost.dr.plugins.module_utils.engine import schedule
from ansible_collections.selfhost.dr.plugins.module_utils.repos.restic import Repository, Restic

from . import test_heartbeat
from .test_engine import Recorder
from .test_heartbeat import run_json
from .test_schedule_runs import config_of, prom, schedules_toml, state_json

app, data = test_heartbeat.app, test_heartbeat.data
_keep_signal_handlers = test_heartbeat._keep_signal_handlers


def _parse(**entry: object) -> schedule.Schedule:
    return schedule.parse({"name": "offsite", **entry}, MODES, "tenement", "hot")


def test_repositories_are_parsed_written_and_read_back() -> None:
    named = _parse(repositories=["offsite", "nas"])
    assert named.repositories == ("offsite", "nas") and named.operations == ("backup",)  # backup only by default
    assert _parse(repositories="all").repositories == ("all",) == _parse(repositories=["all"]).repositories
    assert _parse().repositories == () and _parse().operations == ("backup", "prune")
    for parsed in (named, _parse(repositories="all"), _parse()):
        assert schedule.from_table("offsite", schedule.table(parsed)) == parsed
    assert schedule.table(_parse(repositories="all"))["repositories"] == "all"
    assert "repositories" not in schedule.table(_parse())


@pytest.mark.parametrize(
    ("entry", "sentence"),
    [
        (
            {"repositories": ["offsite"], "read_data_subset": "five percent"},
            "schedule 'offsite': read_data_subset must be n% (5%), n/t (1/7) or a size (500M)",
        ),
        ({"read_data_subset": "5%"}, "read_data_subset is what verify reads of its repositories: give repositories"),
        ({"repositories": ["offsite"], "mode": "instances"}, "a backup into repositories is hot or cold"),
        ({"repositories": ["off site"]}, "repositories must be all or a list of repository names"),
        ({"repositories": ["all", "nas"]}, "repositories is either all or a list of names, not both"),
        ({"repositories": ["nas", "nas"]}, "a repository is listed twice"),
        ({"repositories": {"nas": True}}, "repositories must be all or a list of repository names"),
    ],
)
def test_a_schedule_that_cannot_go_into_repositories_is_refused_in_one_sentence(
    entry: dict[str, object], sentence: str
) -> None:
    with pytest.raises(schedule.ScheduleError) as refused:
        _parse(**entry)
    assert sentence in str(refused.value) and "\n" not in str(refused.value)


@pytest.mark.skipif(shutil.which("restic") is None, reason="restic is not installed (scripts/bootstrap)")
def test_a_run_backs_up_into_its_repositories_and_writes_no_set(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], app: Recorder, state_dir: Path
) -> None:
    password = tmp_path / "local.password"
    password.write_text("a repository password\n")
    password.chmod(0o600)
    repos = "".join(
        f'\n[repositories.{name}]\nlocation = "{tmp_path / name}"\npassword_file = "{password}"\ninit = true\n'
        for name in ("local", "second")
    )
    config = config_of(tmp_path, repos)
    config.chmod(0o600)
    row = {"calendar": "*-*-* 04:00:00", "every_hours": 24, "operations": ["backup"], "mode": "hot"}
    schedules_toml(tmp_path, offsite={**row, "repositories": ["local"]}, everywhere={**row, "repositories": "all"})

    code, result = run_json(capsys, config, "run", "offsite")
    assert code == 0, result
    step = result["operations"]["backup"]  # type: ignore[index]
    assert [(o["repository"], o["ok"], o["created"]) for o in step["repositories"]] == [("local", True, True)]
    assert step["sets"] == []
    assert not list((tmp_path / "sets").glob("*.tar.*")), "a repository schedule wrote a set"
    (snapshot,) = Restic(Repository("local", str(tmp_path / "local"), str(password))).snapshots(["selfhost-dr"])
    assert "schedule=offsite" in snapshot["tags"]
    recorded = state_json(state_dir)
    assert recorded["schedules"]["offsite"]["last_success"]["operation"] == "backup"  # type: ignore[index]
    local = recorded["repositories"]["local"]["backup"]["last_success"]  # type: ignore[index]
    assert local["snapshot_id"] == step["repositories"][0]["snapshot_id"] and local["schedule"] == "offsite"
    assert local["data_added"] > 0 and local["ok"] is True
    text = prom(tmp_path)
    assert 'selfhost_dr_repository_last_attempt_success{repository="local",operation="backup"} 1' in text
    assert f'selfhost_dr_repository_last_bytes_added{{repository="local"}} {local["data_added"]}' in text
    assert 'selfhost_dr_repository_last_success_timestamp_seconds{repository="local",operation="backup"}' in text

    code, result = run_json(capsys, config, "run", "everywhere")
    assert code == 0, result
    outcomes = result["operations"]["backup"]["repositories"]  # type: ignore[index]
    assert [(o["repository"], o["ok"]) for o in outcomes] == [("local", True), ("second", True)]

    code, status = run_json(capsys, config, "status")
    assert code == 0 and sorted(status["repositories"]) == ["local", "second"], status  # type: ignore[arg-type]

    schedules_toml(tmp_path, gone={**row, "repositories": ["nas"]})
    code, result = run_json(capsys, config, "run", "gone")
    assert code == 2 and "there is no repository 'nas'" in str(result["error"]), result
    assert "a repository password" not in json.dumps(result)


@pytest.mark.skipif(shutil.which("restic") is None, reason="restic is not installed (scripts/bootstrap)")
def test_a_repository_schedule_verifies_with_restic_check_and_prunes_by_the_repositorys_retention(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], app: Recorder, state_dir: Path
) -> None:
    password = tmp_path / "local.password"
    password.write_text("a repository password\n")
    password.chmod(0o600)
    repos = f'\n[repositories.local]\nlocation = "{tmp_path / "local"}"\npassword_file = "{password}"\ninit = true\n'
    config = config_of(tmp_path, repos + "keep_last = 2\n")
    config.chmod(0o600)
    row = {"calendar": "*-*-* 04:00:00", "every_hours": 24, "mode": "hot", "repositories": ["local"]}
    schedules_toml(tmp_path, nightly={**row, "operations": ["backup", "verify", "prune"], "read_data_subset": "50%"})
    assert schedule.from_table("nightly", {**row, "operations": ["verify"], "read_data_subset": "50%"}).read_data_subset
    for _night in range(3):
        code, result = run_json(capsys, config, "run", "nightly")
        assert code == 0, result
    steps = result["operations"]  # type: ignore[index]
    assert [(o["repository"], o["ok"]) for o in steps["verify"]["repositories"]] == [("local", True)]
    (pruned,) = steps["prune"]["repositories"]
    assert pruned["ok"] and len(pruned["forgotten"]) == 1 and len(pruned["kept"]) == 2, pruned
    left = Restic(Repository("local", str(tmp_path / "local"), str(password))).snapshots(["selfhost-dr"])
    assert len(left) == 2
    recorded = state_json(state_dir)["repositories"]["local"]  # type: ignore[index]
    assert recorded["check"]["last_success"]["schedule"] == "nightly"  # type: ignore[index]
    assert recorded["prune"]["last_success"]["ok"] is True  # type: ignore[index]
    text = prom(tmp_path)
    assert 'selfhost_dr_repository_last_attempt_success{repository="local",operation="check"} 1' in text
