"""dr_repositories from Ansible to restic, with real parts: ansible-playbook runs the host_command role (which writes
the repositories into config.toml and their secrets into 0600 files) and the backup role (which backs a real tenement
0.2.2 up into a local repository and a SeaweedFS S3 one); ``selfhost-dr list --repo`` on the host shows the
snapshots. The password and the S3 secret key never appear in ansible-playbook's output, even with -vvv, nor in any
file other users can read."""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from . import s3_store
from .ansible_run import ROOT, local_tenement, run_playbook

SERVE = ROOT / "tests" / "integration" / "playbooks" / "repositories_serve.yml"
BACKUP = ROOT / "tests" / "integration" / "playbooks" / "repositories_backup.yml"
PASSWORD = "pw-of-the-repositories-8d1e5a"

pytestmark = pytest.mark.skipif(shutil.which("restic") is None, reason="restic is not installed (scripts/bootstrap)")


@pytest.fixture
def served(tmp_path: Path, free_port: int) -> Iterator[dict[str, object]]:
    """A tenement with demo:alpha running, and the variables that name it."""
    wheel = os.environ.get("SELFHOST_DR_TENEMENT_WHEEL", "")
    if not wheel:
        pytest.skip("needs the tenement wheel that scripts/test downloads (SELFHOST_DR_TENEMENT_WHEEL)")
    with socket.socket() as sock:
        if sock.connect_ex(("127.0.0.1", 30000)) == 0:
            pytest.fail("port 30000 is in use: tenement 0.2.2 hands out instance ports from there without checking")
    variables: dict[str, object] = {
        **local_tenement(tmp_path),
        "work": str(tmp_path),
        "tenement_server_wheel": wheel,
        "tenement_server_port": free_port,
    }
    try:
        done = run_playbook(SERVE, variables)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
        yield {
            **variables,
            "dr_backup_dir": str(tmp_path / "backups"),
            "host_command_path": str(tmp_path / "host" / "selfhost-dr"),
            "host_command_config": str(tmp_path / "host" / "etc" / "config.toml"),
            "dr_metrics_textfile_dir": "",
        }
    finally:
        pidfile = str(variables["tenement_server_pidfile"])
        stop = ["start-stop-daemon", "--stop", "--retry", "TERM/10/KILL/5", "--remove-pidfile", "--pidfile", pidfile]
        subprocess.run(stop, check=False, capture_output=True)


def _repositories(tmp_path: Path, store: s3_store.Store) -> list[dict[str, object]]:
    bucket = "dr-role-" + tmp_path.name[-14:].lower().replace("_", "-")
    return [
        {"name": "local", "location": str(tmp_path / "restic"), "password": PASSWORD, "init": True},
        {
            "name": "offsite",
            "location": store.location(bucket),
            "password": PASSWORD,
            "credentials": store.env,
            "init": True,
            "required": False,
            "retention": {"keep_daily": 7},
        },
    ]


def _play(tmp_path: Path, variables: dict[str, object], *options: str) -> subprocess.CompletedProcess[str]:
    """The backup playbook, its secrets in a 0600 vars file (never on ansible-playbook's command line)."""
    secrets = tmp_path / "vars.json"
    secrets.write_text(json.dumps(variables))
    secrets.chmod(0o600)
    return run_playbook(BACKUP, {"work": str(tmp_path)}, options=("-e", f"@{secrets}", *options))


def _list(variables: dict[str, object], repository: str) -> dict[str, object]:
    done = subprocess.run(
        [str(variables["host_command_path"]), "list", "--repo", repository, "--json"],
        env={**os.environ, "SELFHOST_DR_CONFIG": str(variables["host_command_config"])},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def _readable_by_others(*tops: Path) -> Iterator[Path]:
    for top in tops:
        for base, _dirs, names in os.walk(top):
            for name in names:
                path = Path(base) / name
                st = path.lstat()
                if stat.S_ISREG(st.st_mode) and st.st_mode & 0o004:
                    yield path


def test_the_roles_write_the_repositories_and_back_up_into_them_keeping_the_secrets(
    tmp_path: Path, store: s3_store.Store, served: dict[str, object], state_dir: Path
) -> None:
    variables = {**served, "dr_repositories": _repositories(tmp_path, store), "backup_into": ["set", "repositories"]}
    done = _play(tmp_path, variables, "-vvv")
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    for secret in (PASSWORD, s3_store.SECRET_KEY):
        assert secret not in output, "a secret is in ansible-playbook's output"

    secrets_dir = tmp_path / "host" / "etc" / "repositories"
    assert sorted(p.name for p in secrets_dir.iterdir()) == ["local.password", "offsite.env", "offsite.password"]
    assert stat.S_IMODE(secrets_dir.stat().st_mode) == 0o700
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in secrets_dir.iterdir())
    config = (tmp_path / "host" / "etc" / "config.toml").read_text()
    assert "[repositories.local]" in config and "[repositories.offsite]" in config and "keep_daily = 7" in config

    result = json.loads((tmp_path / "result.json").read_text())
    assert len(result["sets"]) == 1, result
    assert [(s["repository"], s["ok"], s["created"]) for s in result["snapshots"]] == [
        ("local", True, True),
        ("offsite", True, True),
    ]
    for outcome in result["snapshots"]:
        listed = _list(served, str(outcome["repository"]))
        (snapshot,) = listed["snapshots"]  # type: ignore[misc]
        assert snapshot["id"].startswith(outcome["snapshot_id"])  # type: ignore[index]
        assert {"selfhost-dr", "app=tenement", "kind=hot"} <= set(snapshot["tags"])  # type: ignore[index]

    # Check mode now opens both repositories with their passwords, and a second converge changes no configuration.
    checked = _play(tmp_path, {**variables, "backup_into": ["repositories"]}, "--check")
    assert checked.returncode == 0, checked.stdout[-4000:]
    assert "would get a snapshot" in checked.stdout and "would be created" not in checked.stdout
    assert "changed=0" not in checked.stdout  # a snapshot would be made
    assert _list(served, "local")["snapshots"] and len(_list(served, "local")["snapshots"]) == 1  # type: ignore[arg-type]
    before = {p: p.stat().st_mtime_ns for p in (secrets_dir.parent / "config.toml", *secrets_dir.iterdir())}

    # The repositories only; offsite taken off the list loses its table and secret files.
    kept = variables["dr_repositories"][:1]  # type: ignore[index]
    variables = {**variables, "dr_repositories": kept, "backup_into": ["repositories"]}
    done = _play(tmp_path, variables)
    assert done.returncode == 0, done.stdout[-4000:]
    assert sorted(p.name for p in secrets_dir.iterdir()) == ["local.password"]
    assert "offsite" not in (secrets_dir.parent / "config.toml").read_text()
    assert (secrets_dir / "local.password").stat().st_mtime_ns == before[secrets_dir / "local.password"]
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["sets"] == [] and [s["repository"] for s in result["snapshots"]] == ["local"]
    assert len(_list(served, "local")["snapshots"]) == 2  # type: ignore[arg-type]

    for path in _readable_by_others(tmp_path, state_dir):
        data = path.read_bytes()
        for secret in (PASSWORD, s3_store.SECRET_KEY):
            assert secret.encode() not in data, f"{path} can be read by other users and holds a secret"


def test_a_wrong_entry_is_refused_before_anything_is_written(
    tmp_path: Path, store: s3_store.Store, served: dict[str, object]
) -> None:
    entries = _repositories(tmp_path, store)
    entries[1]["credentials"] = {**store.env, "HOME": "/root"}
    for options in (("--check",), ()):
        done = _play(tmp_path, {**served, "dr_repositories": entries, "backup_into": ["repositories"]}, *options)
        assert done.returncode != 0
        refused = "repository offsite: credentials HOME is not a variable a store takes"
        assert refused in done.stdout, done.stdout[-3000:]
        assert PASSWORD not in done.stdout + done.stderr and s3_store.SECRET_KEY not in done.stdout + done.stderr
        assert not (tmp_path / "host").exists() and not (tmp_path / "restic").exists()

    unknown = {**served, "dr_repositories": entries[:1], "backup_into": ["repositories"]}
    done = _play(tmp_path, {**unknown, "backup_repositories": ["nas"]})
    assert done.returncode != 0 and "backup_repositories names nas, which dr_repositories does not have (local)" in (
        done.stdout
    ), done.stdout[-3000:]
