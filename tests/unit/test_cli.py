"""selfhost-dr's command line and configuration: one sentence and exit status 2 for every wrong setting, one JSON
object on stdout with --json, and a config.toml writer whose output tomllib reads back unchanged."""

from __future__ import annotations

import json
import signal
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from ansible_collections.selfhost.dr.plugins.module_utils import cli
from ansible_collections.selfhost.dr.plugins.module_utils._common import Error
from ansible_collections.selfhost.dr.plugins.module_utils.host_install import toml, write_if_changed


@pytest.fixture(autouse=True)
def _keep_signal_handlers() -> Iterator[None]:
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGHUP)}
    yield
    for signum, handler in saved.items():
        signal.signal(signum, handler)


def run(tmp_path: Path, config: str, *args: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, dict[str, object]]:
    path = tmp_path / "config.toml"
    path.write_text(config)
    code = cli.main([*args, "--config", str(path), "--json"])
    out = capsys.readouterr().out
    assert out.count("\n") == 1, out  # one object, nothing else
    return code, json.loads(out)


@pytest.mark.parametrize(
    ("config", "args", "sentence"),
    [
        (
            '[tenement]\nstart_command = "ten serve"\n',
            ["restore"],
            "[tenement] start_command must be a list of strings",
        ),
        ('[tenement]\nacme = "false"\n', ["restore"], "[tenement] acme must be true or false, not 'false'"),
        ('[tenement]\nservice_manager = "upstart"\n', ["restore"], "service_manager must be one of auto, systemd"),
        ("[tenement]\nport = 8080\n", ["restore"], "[tenement] port is not a setting selfhost-dr knows"),
        ('[restore]\nhealth_timeout = "soon"\n', ["restore"], "[restore] health_timeout must be a number, not 'soon'"),
        ('[retention]\nkeep_daily = "seven"\n', ["prune"], "the [retention] rules of the configuration are not valid"),
        ("[retention]\n", ["prune"], "the configuration has no [retention] rules"),
        ("tenement = 3\n", ["restore"], "[tenement] of the configuration must be a table"),
        ('[tenement]\ninstance_data = "x"\n', ["restore"], "[tenement] instance_data must be a table, not 'x'"),
        ("app = [\n", ["status"], "cannot be read"),
        ("", ["backup", "--instance", "a:b"], "use it with --mode instances"),
        ("", ["restore", "--mode", "x"], "unrecognized arguments: --mode"),
        ("", ["check"], "check needs --repo NAME (repeat) or --all-repos"),
        ("", ["check", "--all-repos"], "--all-repos: the configuration has no [repositories]"),
        ("", ["check", "--repo", "x", "--read-data-subset", "half"], "--read-data-subset must be n% (5%), n/t (1/7)"),
        ("", ["check", "--repo", "x", "--read-data", "--read-data-subset", "1/7"], "give it or --read-data-subset"),
        ("", ["prune", "--repo", "offsite"], "there is no repository 'offsite' in the configuration (none)"),
        ("[retention]\nkeep_last = 1\n", ["prune", "--all-hosts"], "--all-hosts and --no-prune go with --repo"),
        ("", ["key", "list"], "the following arguments are required: --repo"),
        ("", ["key", "list", "--repo", "a", "--repo", "b"], "key list takes one repository: --repo NAME"),
    ],
)
def test_a_wrong_setting_is_one_sentence_and_exit_status_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], config: str, args: list[str], sentence: str
) -> None:
    code, result = run(tmp_path, config, *args, capsys=capsys)
    assert code == 2 and result["ok"] is False
    assert sentence in str(result["error"]) and "\n" not in str(result["error"])


def test_restore_from_an_empty_directory_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "sets").mkdir()
    code, result = run(tmp_path, f'backup_dir = "{tmp_path}/sets"\n', "restore", "--check", capsys=capsys)
    assert code == 1
    assert result["error"] == f"there is no tenement backup set of the whole tenement in {tmp_path}/sets"


def test_status_of_a_host_with_nothing_yet(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, result = run(tmp_path, f'backup_dir = "{tmp_path}/none"\n', "status", capsys=capsys)
    assert code == 0 and result["apps"] == {} and result["leftovers"] == []


@pytest.mark.parametrize(
    "value", ["plain", 'quote " and \\ backslash', "new\nline\ttab", "\x01\x7f", "emoji \U0001f600", "é", ""]
)
def test_config_toml_reads_back_what_was_written(value: str) -> None:
    config = {
        "app": value,
        "tenement": {"start_command": [value, "x"], "acme": False, "n": 1.5, "instance_data": {"api": [value]}},
        "empty": {},
    }
    assert tomllib.loads(toml(config)) == config


@pytest.mark.parametrize("key", ['mode = "cold"\nx', "a b", "", "[t]"])
def test_config_toml_refuses_a_key_that_would_inject(key: str) -> None:
    with pytest.raises(Error, match=r"cannot be a key of config\.toml"):
        toml({"backup": {key: 1}})


def test_config_is_replaced_never_written_through_a_link(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("keep")
    link = tmp_path / "config.toml"
    link.symlink_to(victim)
    assert write_if_changed(str(link), b"new\n", 0o644) is True
    assert victim.read_text() == "keep" and not link.is_symlink() and link.read_bytes() == b"new\n"
    assert write_if_changed(str(link), b"new\n", 0o644) is False  # the same bytes and mode: nothing to do
