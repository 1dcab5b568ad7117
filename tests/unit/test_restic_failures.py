"""What restic's failures are taken to mean, from its own words (restic 0.14's messages, as seen in the tests and
the offsite scenario): a missing repository is never mistaken for an unreachable store, nor the reverse, whatever
the SFTP backend prints about ssh on the way."""

from __future__ import annotations

import subprocess
from typing import Any

import pytest

from ansible_collections.selfhost.dr.plugins.module_utils.repos.restic import (
    NoRepositoryError,
    RepoError,
    Repository,
    Restic,
    WrongPasswordError,
)

SFTP_FIRST_CONTACT_NO_REPO = (
    "subprocess ssh: Warning: Permanently added '10.88.0.206' (ED25519) to the list of known hosts.\n"
    "Fatal: unable to open config file: Lstat: file does not exist\n"
    "Is there a repository at the following location?\nsftp:root@10.88.0.206:/srv/restic/history\n"
)
SFTP_UNREACHABLE = (
    "subprocess ssh: ssh: connect to host 10.88.0.206 port 22: Connection refused\n"
    "Fatal: unable to open repository at sftp:root@10.88.0.206:/srv/restic/history: unable to start the sftp "
    "session, error: EOF\n"
)
S3_UNREACHABLE = (
    'Fatal: unable to open config file: Stat: Get "http://127.0.0.1:9/bucket/?location=": dial tcp '
    "127.0.0.1:9: connect: connection refused\nIs there a repository at the following location?\n"
)
S3_NO_BUCKET = (
    "Fatal: unable to open config file: Stat: The specified bucket does not exist.\n"
    "Is there a repository at the following location?\n"
)


def _restic(stderr: str) -> Restic:
    def run(argv: list[str], **_kw: Any) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess(argv, 1, "", stderr)

    return Restic(Repository("offsite", "sftp:root@10.88.0.206:/srv/restic/history", password="a password"), run=run)


@pytest.mark.parametrize(
    ("stderr", "kind", "words"),
    [
        (SFTP_FIRST_CONTACT_NO_REPO, NoRepositoryError, "does not exist: no restic repository is there"),
        (S3_NO_BUCKET, NoRepositoryError, "does not exist: no restic repository is there"),
        (SFTP_UNREACHABLE, RepoError, "cannot be reached: unable to open repository"),
        (S3_UNREACHABLE, RepoError, "cannot be reached: unable to open config file"),
        (
            "Fatal: wrong password or no key found\n",
            WrongPasswordError,
            "is wrong: no key of the repository opens with it",
        ),
    ],
)
def test_restic_failures_mean_what_they_say(stderr: str, kind: type[RepoError], words: str) -> None:
    with pytest.raises(RepoError) as failed:
        _restic(stderr).config()
    assert type(failed.value) is kind and words in str(failed.value)
    assert "a password" not in str(failed.value)


def test_an_unreachable_store_is_never_created_with_init() -> None:
    calls: list[list[str]] = []

    def run(argv: list[str], **_kw: Any) -> subprocess.CompletedProcess[str]:
        calls.append(argv)
        return subprocess.CompletedProcess(argv, 1, "", SFTP_UNREACHABLE)

    repo = Repository("offsite", "sftp:root@10.88.0.206:/srv/restic/history", password="a password", init=True)
    with pytest.raises(RepoError, match="cannot be reached"):
        Restic(repo, run=run).ensure()
    assert not any("init" in argv for argv in calls)
