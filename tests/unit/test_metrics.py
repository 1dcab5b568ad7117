"""The node_exporter textfile: parsed back with exact values, timestamps rather than ages, written atomically into
the directory and never through a link at its name, skipped quietly when the directory is absent or disabled."""

from __future__ import annotations

import json
import os
import re
from datetime import timedelta
from pathlib import Path

import pytest

from ansible_collections.selfhost.dr.plugins.module_utils._common import parse_iso
from ansible_collections.selfhost.dr.plugins.module_utils.engine import metrics, state

from . import test_heartbeat as hb
from .test_engine import Recorder
from .test_heartbeat import config_of, run_json

# The fixtures of test_heartbeat: tenement as a Recorder over its data, the signal handlers kept.
app, data, _keep_signal_handlers = hb.app, hb.data, hb._keep_signal_handlers

_SAMPLE = re.compile(r'^(selfhost_dr_[a-z_]+)\{([a-z]+)="([^"\\]*)"\} (-?[0-9.e+]+)$')


def parse(text: str) -> dict[tuple[str, str], float]:
    """The samples of a textfile, keyed by metric name and its one label value; every line checked against the
    exposition format, and each metric's HELP and TYPE before its samples."""
    samples: dict[tuple[str, str], float] = {}
    announced: set[str] = set()
    assert text.endswith("\n") or not text
    for line in text.splitlines():
        if line.startswith("# HELP "):
            continue
        if line.startswith("# TYPE "):
            name, kind = line.split()[2:]
            assert kind == "gauge"
            announced.add(name)
            continue
        match = _SAMPLE.match(line)
        assert match, line
        assert match[1] in announced, f"{match[1]} has no TYPE line before it"
        samples[(match[1], match[3])] = float(match[4])
    return samples


def _run(operation: str, start: str, seconds: float, code: int, **facts: object) -> dict[str, object]:
    run = state.Run(run_id="r", operation=operation, started_at=start, **facts)  # type: ignore[arg-type]
    run.finish(code, "boom", when=parse_iso(start) + timedelta(seconds=seconds))
    return run.__dict__


def test_the_textfile_holds_exact_timestamps_outcomes_durations_sizes_and_set_counts() -> None:
    success = _run("backup", "2026-11-20T03:00:00.000000Z", 90.5, 0, set_bytes=4096)
    failure = _run("backup", "2026-11-21T03:00:00.000000Z", 12.25, 1)
    unfinished = state.Run(run_id="k", operation="prune", started_at="2026-11-21T04:00:00.000000Z").__dict__
    data = {
        "format": 1,
        "operations": {
            "backup": {"last_attempt": failure, "last_success": success, "last_failure": failure},
            "prune": {"last_attempt": unfinished},
        },
    }
    sets = [
        {"app": "tenement", "verification": {"state": "verified", "verified_at": "2026-11-20T03:05:00.000000Z"}},
        {"app": "tenement", "verification": {"state": "verified", "verified_at": "2026-11-19T03:05:00.000000Z"}},
        {"app": "tomo", "verification": {"state": "failed", "verified_at": "2026-11-19T03:05:00.000000Z"}},
        {"app": "tenement", "verification": {"state": "unverified"}},
        {"app": "tenement", "verification": {"state": "changed"}},
    ]
    got = parse(metrics.render(data, sets))
    assert got == {
        ("selfhost_dr_last_success_timestamp_seconds", "backup"): 1795143690.5,  # 2026-11-20T03:01:30.5Z
        ("selfhost_dr_last_attempt_timestamp_seconds", "backup"): 1795230000.0,  # 2026-11-21T03:00:00Z
        ("selfhost_dr_last_attempt_timestamp_seconds", "prune"): 1795233600.0,
        ("selfhost_dr_last_attempt_success", "backup"): 0.0,
        ("selfhost_dr_last_attempt_success", "prune"): 0.0,  # never finished
        ("selfhost_dr_last_duration_seconds", "backup"): 12.25,
        ("selfhost_dr_last_set_bytes", "backup"): 4096.0,
        ("selfhost_dr_last_verified_timestamp_seconds", "tenement"): 1795143900.0,
        ("selfhost_dr_sets", "verified"): 2.0,
        ("selfhost_dr_sets", "unverified"): 1.0,
        ("selfhost_dr_sets", "failed"): 1.0,
        ("selfhost_dr_sets", "changed"): 1.0,
    }


def test_unlisted_sets_are_left_out_not_reported_as_none() -> None:
    assert not [k for k in parse(metrics.render({"operations": {}}, None)) if k[0] == "selfhost_dr_sets"]


def test_a_backup_and_a_failed_verify_are_exported_by_the_command(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], app: Recorder
) -> None:
    config = config_of(tmp_path)
    code, result = run_json(capsys, config, "backup")
    assert code == 0
    (made,) = result["sets"]  # type: ignore[misc]
    prom = tmp_path / "prom" / "selfhost_dr.prom"
    assert result["metrics"] == str(prom)
    first = parse(prom.read_text())
    recorded = json.loads((Path(os.environ["SELFHOST_DR_STATE_DIR"]) / "state.json").read_text())
    success = recorded["operations"]["backup"]["last_success"]
    assert (
        first[("selfhost_dr_last_success_timestamp_seconds", "backup")] == parse_iso(success["finished_at"]).timestamp()
    )
    assert first[("selfhost_dr_last_attempt_success", "backup")] == 1.0
    assert first[("selfhost_dr_last_set_bytes", "backup")] == os.stat(made["path"]).st_size
    assert first[("selfhost_dr_sets", "verified")] == 1.0
    code, result = run_json(capsys, config, "verify", str(tmp_path / "nothing.tar.zst"))
    assert code != 0
    second = parse(prom.read_text())
    assert second[("selfhost_dr_last_attempt_success", "verify")] == 0.0
    assert ("selfhost_dr_last_success_timestamp_seconds", "verify") not in second
    assert (
        second[("selfhost_dr_last_success_timestamp_seconds", "backup")]
        == first[("selfhost_dr_last_success_timestamp_seconds", "backup")]
    )


def test_the_textfile_is_never_written_through_a_link(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], app: Recorder
) -> None:
    config = config_of(tmp_path)
    victim = tmp_path / "victim"
    victim.write_text("keep")
    (tmp_path / "prom" / "selfhost_dr.prom").symlink_to(victim)
    (tmp_path / "prom" / "selfhost_dr.prom.partial").symlink_to(victim)
    code, _result = run_json(capsys, config, "backup")
    assert code == 0
    prom = tmp_path / "prom" / "selfhost_dr.prom"
    assert victim.read_text() == "keep"
    assert not prom.is_symlink() and "selfhost_dr_last_attempt_success" in prom.read_text()
    assert prom.stat().st_mode & 0o777 == 0o644


@pytest.mark.parametrize("setting", ['textfile_dir = ""', 'textfile_dir = "{tmp}/absent"'])
def test_no_textfile_when_disabled_or_the_directory_is_absent(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], app: Recorder, setting: str
) -> None:
    config = tmp_path / "config.toml"
    config.write_text(f'backup_dir = "{tmp_path}/sets"\n[metrics]\n{setting.format(tmp=tmp_path)}\n')
    code, result = run_json(capsys, config, "backup")
    assert code == 0 and result["metrics"] == ""
    assert not (tmp_path / "absent").exists() and not list(tmp_path.rglob("selfhost_dr.prom"))


@pytest.mark.parametrize(
    ("table", "sentence"),
    [
        ('[metrics]\ntextfile_dir = "relative/dir"', '[metrics] textfile_dir must be an absolute path or ""'),
        ("[metrics]\ntextfile_dir = 3", '[metrics] textfile_dir must be an absolute path or "", not 3'),
        ('[metrics]\ndir = "/x"', "[metrics] dir is not a setting selfhost-dr knows"),
        ("[lock]\nwait = -1", "[lock] wait must be 0 or more seconds, not -1"),
        ("[lock]\nwait = nan", "[lock] wait must be 0 or more seconds, not nan"),
        ("[schedule]\nverify_every = nan", "[schedule] verify_every must be more than 0 hours, not nan"),
        ("[lock]\ntimeout = 5", "[lock] timeout is not a setting selfhost-dr knows"),
        ("[schedule]\nbackup_every = 0", "[schedule] backup_every must be more than 0 hours, not 0"),
        ("[schedule]\nbackups_every = 24", "[schedule] backups_every is not a setting selfhost-dr knows"),
        ('[schedule]\nbackup_every = "daily"', "[schedule] backup_every must be a number, not 'daily'"),
    ],
)
def test_a_wrong_monitoring_setting_is_one_sentence_and_exit_status_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], table: str, sentence: str
) -> None:
    config = tmp_path / "config.toml"
    config.write_text(f'backup_dir = "{tmp_path}/sets"\n{table}\n')
    for command in ("prune", "status"):
        code, result = run_json(capsys, config, command)
        assert code == 2 and str(result["error"]).startswith(sentence) and "\n" not in str(result["error"])


DOCS = Path(__file__).resolve().parents[2] / "docs"


def test_every_metric_the_dashboard_and_the_alert_rules_query_is_one_the_textfile_writes() -> None:
    """A renamed metric must not leave the documented alerts and the dashboard silently empty."""
    written = {f"selfhost_dr_{name}" for name in metrics.HELP}
    dashboard = json.loads((DOCS / "grafana-selfhost-dr.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    exprs += [v["query"] for v in dashboard["templating"]["list"] if v["type"] == "query"]
    rules = (DOCS / "monitoring.md").read_text().split("```yaml", 1)[1].split("```", 1)[0]
    queried = set(re.findall(r"selfhost_dr_[a-z_]+", "\n".join(exprs) + rules))
    assert queried - written == set()
    assert len(queried & written) >= 12  # the rules and the dashboard cover the schedules too
    labels = set(re.findall(r"\$labels\.([a-z]+)", rules)) | set(re.findall(r"\{\{([a-z]+)\}\}", json.dumps(exprs)))
    assert labels <= {"instance", "operation", "schedule", "state", "app", "repository"}


def test_the_schedule_metrics_name_each_schedule_with_its_next_run() -> None:
    recorded = {
        "format": 1,
        "operations": {},
        "schedules": {
            "daily": {
                "last_attempt": {
                    "run_id": "r",
                    "operation": "backup,prune",
                    "started_at": "2026-11-28T03:00:00.000000Z",
                    "finished_at": "2026-11-28T03:01:00.000000Z",
                    "duration_seconds": 60.0,
                    "ok": True,
                }
            }
        },
    }
    recorded["schedules"]["daily"]["last_success"] = recorded["schedules"]["daily"]["last_attempt"]
    sets = [{"schedules": ["daily", "weekly"]}, {"schedules": ["daily"]}, {}]
    text = metrics.render(recorded, sets, {"daily": 1795143600.0, "monthly": 1795748400.0})
    samples = parse(text)
    assert samples[("selfhost_dr_schedule_next_run_timestamp_seconds", "daily")] == 1795143600
    assert samples[("selfhost_dr_schedule_next_run_timestamp_seconds", "monthly")] == 1795748400
    assert (
        samples[("selfhost_dr_schedule_last_success_timestamp_seconds", "daily")]
        == parse_iso("2026-11-28T03:01:00.000000Z").timestamp()
    )
    assert samples[("selfhost_dr_schedule_last_duration_seconds", "daily")] == 60
    assert samples[("selfhost_dr_schedule_sets", "daily")] == 2
    assert samples[("selfhost_dr_schedule_sets", "weekly")] == 1
    assert samples[("selfhost_dr_schedule_sets", "monthly")] == 0
    assert ("selfhost_dr_schedule_last_attempt_success", "monthly") not in samples  # never ran


def test_a_removed_schedule_leaves_the_textfile_so_its_last_failure_does_not_alert_for_ever() -> None:
    run = {"run_id": "r", "started_at": "2026-11-28T03:00:00.000000Z", "finished_at": "2026-11-28T03:01:00.000000Z"}
    failed = {**run, "ok": False, "exit_code": 1, "reason": "disk full"}
    recorded = {"format": 1, "operations": {}, "schedules": {"old": {"last_attempt": failed, "last_failure": failed}}}
    assert 'schedule="old"' in metrics.render(recorded, [{"schedules": ["old"]}])  # nothing known of the config
    text = metrics.render(recorded, [{"schedules": ["old"]}], {"daily": 1.0}, None, ["daily"])
    assert (
        'schedule="old"' not in text and 'selfhost_dr_schedule_next_run_timestamp_seconds{schedule="daily"} 1' in text
    )
