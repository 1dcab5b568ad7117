"""dr_repositories on a host (repos/config.py from_entries, host_install.repository_files, the host_command module):
the tables of config.toml, the secret files beside it, one sentence per refusal, never a secret in one."""

from __future__ import annotations

import os
import stat
import tomllib
from pathlib import Path
from typing import Any

import pytest

from ansible_collections.selfhost.dr.plugins.module_utils.host_install import config_mode, repository_files, toml
from ansible_collections.selfhost.dr.plugins.module_utils.repos import config as repo_config
from ansible_collections.selfhost.dr.plugins.modules import host_command

PASSWORD = "correct horse battery staple"
SECRET_KEY = "s3cr3t-access-key-value"


def _entries() -> list[dict[str, Any]]:
    return [
        {"name": "local", "location": "/mnt/disk/restic", "password": PASSWORD, "init": True},
        {
            "name": "offsite",
            "location": "s3:https://s3.example.com/backups-web1",
            "password": PASSWORD,
            "credentials": {"AWS_ACCESS_KEY_ID": "AKIA1234", "AWS_SECRET_ACCESS_KEY": SECRET_KEY},
            "required": False,
            "retention": {"keep_daily": 7, "keep_within": "2w", "timezone": "UTC"},
        },
    ]


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_entries_become_tables_and_0600_secret_files_that_read_back_as_the_same_repositories(tmp_path: Path) -> None:
    secrets = tmp_path / "etc" / "repositories"
    planned = repo_config.from_entries(_entries(), str(secrets))
    assert planned.tables["local"] == {
        "location": "/mnt/disk/restic",
        "password_file": str(secrets / "local.password"),
        "init": True,
    }
    offsite = planned.tables["offsite"]
    assert offsite["env_file"] == str(secrets / "offsite.env") and offsite["keep_daily"] == 7
    text = toml({"app": "tenement", "repositories": planned.tables})
    assert PASSWORD not in text and SECRET_KEY not in text and config_mode({"repositories": planned.tables}) == 0o644

    written, removed = repository_files(planned, str(secrets))
    assert sorted(written) == sorted(planned.files) and removed == []
    assert _mode(secrets) == 0o700 and all(_mode(Path(p)) == 0o600 for p in written)
    back = repo_config.repositories(tomllib.loads(text))
    assert back == planned.repositories
    assert back["offsite"].env == {"AWS_ACCESS_KEY_ID": "AKIA1234", "AWS_SECRET_ACCESS_KEY": SECRET_KEY}
    assert (secrets / "local.password").read_text() == PASSWORD + "\n"
    assert back["offsite"].retention == {"keep_daily": 7, "keep_within": "2w", "timezone": "UTC"}
    assert not back["offsite"].required and back["local"].required and back["local"].init

    assert repository_files(planned, str(secrets)) == ([], []), "a second converge changes nothing"


def test_a_repository_taken_off_the_list_loses_its_secret_files_and_a_hosts_own_file_is_kept(tmp_path: Path) -> None:
    secrets = tmp_path / "repositories"
    repository_files(repo_config.from_entries(_entries(), str(secrets)), str(secrets))
    own = secrets / "mine.password"
    own.write_text("the host's own\n")
    own.chmod(0o600)
    entries = [_entries()[0], {"name": "mine", "location": "/srv/restic", "password_file": str(own)}]
    planned = repo_config.from_entries(entries, str(secrets))
    would = repository_files(planned, str(secrets), check=True)
    assert would == ([], [str(secrets / "offsite.env"), str(secrets / "offsite.password")])
    assert (secrets / "offsite.env").exists(), "check mode removed something"
    assert repository_files(planned, str(secrets)) == would
    assert sorted(p.name for p in secrets.iterdir()) == ["local.password", "mine.password"]
    # The directory is the role's: once no repository uses a secret file in it, it goes.
    assert repository_files(repo_config.from_entries([], str(secrets)), str(secrets)) == (
        [],
        [str(secrets / "local.password"), str(own)],
    )


@pytest.mark.parametrize(
    ("change", "sentence"),
    [
        ({"name": "off site"}, "dr_repositories[1]: a repository's name is 1 to 64 letters"),
        ({"location": None}, "repository offsite needs location"),
        ({"password_file": "/etc/pw"}, "repository offsite: give password or password_file, not both"),
        ({"env_file": "/etc/env"}, "repository offsite: give credentials or env_file, not both"),
        ({"bucket": "x"}, "repository offsite: bucket is not a repository setting"),
        ({"credentials": {"HOME": SECRET_KEY}}, "repository offsite: credentials HOME is not a variable a store takes"),
        (
            {"credentials": {"AWS_SECRET_ACCESS_KEY": SECRET_KEY + "\nX"}},
            "repository offsite: credentials AWS_SECRET_ACCESS_KEY holds a line",
        ),
        ({"password": " " + PASSWORD}, "repository offsite: password begins or ends with blanks"),
        ({"password": ""}, "repository offsite: password must be a non-empty string"),
        ({"retention": {"keep_daily": -1}}, "[repositories.offsite]: keep_daily must be a whole number, 0 or more"),
        ({"retention": {"keep_within": "7 days"}}, "[repositories.offsite]: keep_within must look like 7d"),
        ({"retention": {"timezone": "Nowhere/Atlantis"}}, "[repositories.offsite]: unknown time zone"),
        ({"retention": {"keep_forever": True}}, "repository offsite: retention keep_forever is not a rule"),
        ({"required": "yes"}, "[repositories.offsite]: required must be true or false"),
        ({"name": "local"}, "two repositories are named local"),
    ],
)
def test_a_wrong_entry_is_refused_in_one_sentence_that_quotes_no_secret(
    tmp_path: Path, change: dict[str, Any], sentence: str
) -> None:
    entries = _entries()
    entries[1].update(change)
    with pytest.raises(repo_config.RepoConfigError) as refused:
        repo_config.from_entries(entries, str(tmp_path / "repositories"))
    message = str(refused.value)
    assert message.startswith(sentence), message
    assert "\n" not in message and PASSWORD not in message and SECRET_KEY not in message
    assert not (tmp_path / "repositories").exists()


def test_a_password_file_of_the_host_must_be_there_and_private(tmp_path: Path) -> None:
    loose = tmp_path / "loose.password"
    loose.write_text(PASSWORD + "\n")
    loose.chmod(0o644)
    entry = {"name": "disk", "location": "/mnt/restic", "password_file": str(loose)}
    with pytest.raises(repo_config.RepoConfigError, match=r"can be read by other users \(mode 0644\): chmod 600 it"):
        repo_config.from_entries([entry], str(tmp_path / "repositories"))
    with pytest.raises(repo_config.RepoConfigError, match="cannot be read: No such file or directory"):
        repo_config.from_entries([{**entry, "password_file": str(tmp_path / "gone")}], str(tmp_path / "r"))


def test_credentials_in_a_location_make_config_toml_private() -> None:
    tables = {"rest": {"location": "rest:https://user:pw@backup.example.com/web1", "password_file": "/x"}}
    assert config_mode({"repositories": tables}) == 0o600


def _module_args(tmp_path: Path, entries: list[dict[str, Any]]) -> dict[str, object]:
    return {
        "path": str(tmp_path / "bin" / "selfhost-dr"),
        "config_path": str(tmp_path / "etc" / "config.toml"),
        "config": {"app": "tenement"},
        "repositories": entries,
    }


def test_the_module_refuses_in_check_mode_what_it_refuses_for_real_and_converges_once(
    tmp_path: Path, run_module: Any
) -> None:
    bad = _entries()
    bad[1]["credentials"] = {"AWS_SECRET_ACCESS_KEY": SECRET_KEY, "PATH": "/tmp"}
    for check in (True, False):
        result = run_module(host_command, _module_args(tmp_path, bad), check=check)
        assert result["failed"] and result["msg"].startswith("repository offsite: credentials PATH is not a"), result
    assert not (tmp_path / "etc").exists() and not (tmp_path / "bin").exists(), "a refused entry wrote something"

    args = _module_args(tmp_path, _entries())
    results = [run_module(host_command, args, check=check) for check in (True, False, True, False)]
    assert [r["changed"] for r in results] == [True, True, False, False]
    assert results[1]["repositories"] == ["local", "offsite"] and len(results[1]["secret_files_written"]) == 3
    config = (tmp_path / "etc" / "config.toml").read_text()
    assert PASSWORD not in config and SECRET_KEY not in config
    for result in results:
        text = repr(result)
        assert PASSWORD not in text and SECRET_KEY not in text
    secrets = tmp_path / "etc" / "repositories"
    assert sorted(os.listdir(secrets)) == ["local.password", "offsite.env", "offsite.password"]

    dropped = run_module(host_command, _module_args(tmp_path, _entries()[:1]))
    assert dropped["changed"] and sorted(os.path.basename(p) for p in dropped["secret_files_removed"]) == [
        "offsite.env",
        "offsite.password",
    ]
    assert "offsite" not in (tmp_path / "etc" / "config.toml").read_text()
