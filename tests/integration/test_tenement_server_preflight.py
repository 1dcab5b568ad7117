"""Bad input to the tenement_server role fails naming the variable, before the host changes."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from .ansible_run import ROOT, local_tenement, run_playbook

PLAYBOOK = ROOT / "tests" / "integration" / "playbooks" / "tenement_server.yml"


def run_role(tmp_path: Path, **overrides: object) -> subprocess.CompletedProcess[str]:
    variables: dict[str, object] = {
        **local_tenement(tmp_path),
        "tenement_server_services": {"web": {"command": "/bin/true"}},
        "tenement_server_instances": ["web:one"],
    }
    variables.update(overrides)
    return run_playbook(PLAYBOOK, variables, timeout=300)


def assert_untouched(tmp_path: Path) -> None:
    for name in ("venv", "bin", "etc", "data", "ten.pid", "ten.log"):
        assert not (tmp_path / name).exists(), f"{name} was created although the input was refused"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"tenement_server_data_dir": "var/lib/tenement"}, "tenement_server_data_dir must be an absolute path"),
        ({"tenement_server_data_dir": "/"}, "tenement_server_data_dir must be an absolute path other than '/'"),
        ({"tenement_server_data_dir": "/var/lib/../etc"}, "tenement_server_data_dir must be an absolute path"),
        (
            {"tenement_server_services": {"My_Svc": {"command": "/bin/true"}}, "tenement_server_instances": []},
            'tenement_server_services: service "My_Svc" needs a lowercase DNS-label name',
        ),
        ({"tenement_server_services": {"web": {}}}, 'tenement_server_services: service "web" needs'),
        ({"tenement_server_instances": ["web:../../etc"]}, 'tenement_server_instances: "web:../../etc" must be'),
        ({"tenement_server_instances": ["api:one"]}, 'tenement_server_instances: "api:one" must be'),
        ({"tenement_server_wheel": "/nonexistent/tenement-0.2.2-py3-none-any.whl"}, "tenement_server_wheel"),
        ({"tenement_server_version": "latest"}, "tenement_server_version must be a version"),
        ({"tenement_server_settings": {"data_dir": "/srv"}}, "tenement_server_settings must be a dict"),
        ({"tenement_server_settings": {"tls": "on"}}, "tenement_server_settings must be a dict"),
        ({"tenement_server_routing": ["demo"]}, "argument 'tenement_server_routing' is of type list"),
    ],
)
def test_bad_input_fails_before_anything_changes(tmp_path: Path, overrides: dict[str, object], message: str) -> None:
    result = run_role(tmp_path, **overrides)
    assert result.returncode != 0, result.stdout
    assert message in " ".join(result.stdout.split()), result.stdout[-3000:]
    assert_untouched(tmp_path)


def test_data_dir_that_is_a_file_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "afile"
    target.write_text("not a directory")
    result = run_role(tmp_path, tenement_server_data_dir=str(target))
    assert result.returncode != 0
    assert f"tenement_server_data_dir {target} exists on the host and is not a directory" in " ".join(
        result.stdout.split()
    )
    assert_untouched(tmp_path)
