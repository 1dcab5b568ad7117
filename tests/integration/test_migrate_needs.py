"""What a real tenement 0.2.2 needs of a new server, as the migration's preflight reads it on the old one: the port
``ten serve`` listens on (found from its pid in /proc) and the program and script its running service's command
names. Checked on this same machine as if it were the new server, the port is taken by that very ``ten serve`` (not
the new server's own tenement) and refused; with the program gone, so is that."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from ansible_collections.selfhost.dr.plugins.module_utils.apps import needs
from ansible_collections.selfhost.dr.plugins.module_utils.apps.tenement import Settings, Tenement
from ansible_collections.selfhost.dr.plugins.module_utils.apps.tenement_client import TenementClient
from ansible_collections.selfhost.dr.plugins.module_utils.engine import migrate

from .tenement_fixture import DEMO_APP, LiveTenement, running


@pytest.fixture
def live(tmp_path: Path, free_port: int, ten_bin: str) -> Iterator[LiveTenement]:
    for served in running(ten_bin, tmp_path, free_port, sys.executable):
        client = TenementClient(ten_bin, server=served.server, token=served.token, data_dir=str(served.data_dir))
        client.spawn("demo:alpha")
        client.wait_healthy("demo:alpha", timeout=20)
        yield served


def test_the_old_servers_port_and_programs_are_read_and_checked_on_a_new_one(
    live: LiveTenement, tmp_path: Path
) -> None:
    pidfile = tmp_path / "ten.pid"
    pidfile.write_text(f"{live.process.pid}\n")
    app = Tenement(Settings(config_dir=str(live.workdir), data_dir=str(live.data_dir), server=live.server,
                            ten_bin=live.ten_bin, service_manager="process", pidfile=str(pidfile),
                            start_command=["true"]))  # fmt: skip
    port = int(live.server.rsplit(":", 1)[1])
    found = migrate.preflight_source(app, migrate.Options(dest=str(tmp_path / "migrate")))["needs"]
    assert found == {
        "ports": [{"port": port, "address": "0.0.0.0", "what": "ten serve"}],  # noqa: S104 - not the instance's
        "programs": [
            {"path": sys.executable, "service": "demo", "as": "command"},
            {"path": str(DEMO_APP), "service": "demo", "as": "argument"},
        ],
        "commands": [],
    }
    wanted = needs.Needs.from_dict(found)
    problems = needs.unmet(wanted, set())
    assert problems == [
        f"port {port} (ten serve's on the old server, at 0.0.0.0) is taken by ten (pid {live.process.pid})"
    ]
    assert needs.unmet(wanted, app.own_processes()) == []  # the new server's own tenement: stopped
    wanted.programs[1]["path"] = str(tmp_path / "gone" / "demo_app.py")
    assert needs.unmet(wanted, app.own_processes()) == [
        f"{tmp_path}/gone/demo_app.py (named by the command of service demo) is missing"
    ]
