"""What an application's configuration needs of a server (apps/needs.py), and the migration's preflight that refuses
a new server lacking it before anything changes on either server.

Real sockets and processes of this machine: a port this test listens on is found in /proc and named with its
holder; tenement's services are read as tenement 0.2.2 runs them (``command`` shell-split when it has no ``args``).
"""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from ansible_collections.selfhost.dr.plugins.module_utils._common import AppError, Error
from ansible_collections.selfhost.dr.plugins.module_utils.apps import needs
from ansible_collections.selfhost.dr.plugins.module_utils.apps.base import Facts
from ansible_collections.selfhost.dr.plugins.module_utils.apps.needs import Needs
from ansible_collections.selfhost.dr.plugins.module_utils.apps.tenement import Settings, Tenement
from ansible_collections.selfhost.dr.plugins.module_utils.engine import migrate

from .test_engine import Recorder


@pytest.fixture
def listener() -> Iterator[int]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(1)
    try:
        yield sock.getsockname()[1]
    finally:
        sock.close()


def test_a_port_this_process_listens_on_is_found_with_its_holder(listener: int) -> None:
    assert os.getpid() in needs.listening()[listener]
    assert {"port": listener, "what": "me"} in needs.ports_of(os.getpid(), "me")
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert listener not in needs.listening({child.pid})  # the child holds no socket of its own
        assert {os.getpid(), child.pid} <= needs.process_tree(os.getpid())
    finally:
        child.kill()
        child.wait()


def test_a_port_taken_by_another_program_is_refused_and_one_the_application_holds_is_not(listener: int) -> None:
    wanted = Needs(ports=[{"port": listener, "what": "ten serve"}])
    problems = needs.unmet(wanted, set(), "tenement")
    assert len(problems) == 1
    assert (
        f"port {listener}, which ten serve listens on at the old server, is taken on the new server by" in problems[0]
    )
    assert f"(pid {os.getpid()})" in problems[0]
    assert needs.unmet(wanted, {os.getpid()}, "tenement") == []  # its own server: the migration stops it


def test_a_free_port_is_no_problem(listener: int) -> None:
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    free = probe.getsockname()[1]
    probe.close()
    assert needs.unmet(Needs(ports=[{"port": free, "what": "ten serve"}]), set(), "tenement") == []


def _tenement_needs(tmp_path: Path, services: dict[str, object], running: list[str], **config: object) -> Needs:
    pidfile = str(tmp_path / "none.pid")
    settings = Settings(config_dir=str(tmp_path / "etc"), data_dir=str(tmp_path / "data"),
                        service_manager="process", pidfile=pidfile, start_command=["true"])  # fmt: skip
    app = Tenement(settings)
    facts = Facts("tenement", paths=[str(tmp_path / "etc"), str(tmp_path / "data")], running=running,
                  details={"config": {"service": services, **config}})  # fmt: skip
    return app.needs(facts)


def test_a_tenement_service_needs_its_program_its_script_and_its_workdir(tmp_path: Path) -> None:
    code = tmp_path / "opt" / "app.py"
    code.parent.mkdir()
    code.write_text("print('hi')\n")
    services = {
        "web": {
            "command": f"/usr/bin/python3 {code} --db {{data_dir}}/{{id}}/app.db --name x {tmp_path}/data/seed",
            "workdir": str(tmp_path / "opt"),
        },
        "worker": {"command": "uv", "args": ["run", str(code), "/nowhere/at/all"]},
        "idle": {"command": "/opt/never/started"},  # no instance runs or is started: not needed
    }
    found = _tenement_needs(tmp_path, services, ["web:a"], instances={"worker": ["one"]})
    assert found.programs == [
        {"path": "/usr/bin/python3", "service": "web", "as": "command"},
        {"path": str(code), "service": "web", "as": "argument"},  # a placeholder, and what the migration carries: not
        {"path": str(tmp_path / "opt"), "service": "web", "as": "workdir"},
        {"path": str(code), "service": "worker", "as": "argument"},  # /nowhere/at/all is not here either: not needed
    ]
    assert found.commands == [{"name": "uv", "service": "worker", "path": ""}]
    assert found.ports == []  # ten serve does not run here


def test_a_new_server_without_the_program_script_or_command_is_told_each(tmp_path: Path) -> None:
    script = tmp_path / "app.py"
    script.write_text("")
    plain = tmp_path / "not-executable"
    plain.write_text("")
    plain.chmod(stat.S_IRUSR | stat.S_IWUSR)
    wanted = Needs(
        programs=[
            {"path": str(tmp_path / "gone.py"), "service": "web", "as": "argument"},
            {"path": str(plain), "service": "web", "as": "command"},
            {"path": str(tmp_path / "nodir"), "service": "web", "as": "workdir"},
            {"path": str(script), "service": "web", "as": "argument"},
            {"path": sys.executable, "service": "web", "as": "command"},
        ],
        commands=[
            {"name": "no-such-command-here", "service": "worker", "path": ""},
            {"name": "sh", "service": "worker", "path": ""},
        ],
    )
    problems = needs.unmet(wanted, set(), "tenement")
    assert problems == [
        f"the new server lacks {tmp_path}/gone.py, which the command of tenement's web names; install it there first",
        f"the new server has no program {plain}, which web runs; install it first",
        f"the new server has no directory {tmp_path}/nodir, the working directory of web",
        "the new server has no command no-such-command-here on the default PATH, which worker runs; install it first",
    ]


@pytest.mark.parametrize(
    "hostile",
    [
        "ports",
        {"ports": "8080"},
        {"ports": [{"port": 0, "what": "x"}]},
        {"ports": [{"port": True, "what": "x"}]},
        {"ports": [{"port": "80", "what": "x"}]},
        {"programs": [{"path": "relative/app.py", "service": "s", "as": "argument"}]},
        {"programs": [{"path": "/x"}]},
        {"commands": [{"name": "x"}] * 5000},
    ],
)
def test_needs_from_another_server_are_checked_as_data(hostile: object) -> None:
    with pytest.raises(AppError, match="the old server's needs"):
        Needs.from_dict(hostile)


def test_needs_travel_as_a_mapping_and_back() -> None:
    wanted = Needs(ports=[{"port": 443, "what": "ten serve"}],
                   programs=[{"path": "/opt/a", "service": "s", "as": "argument"}],
                   commands=[{"name": "uv", "service": "s", "path": "/usr/bin"}])  # fmt: skip
    assert Needs.from_dict(wanted.to_dict()) == wanted
    assert Needs.from_dict({}) == Needs() == Needs.from_dict(None)


def test_the_preflight_refuses_a_new_server_that_could_not_run_the_old_ones_services(tmp_path: Path) -> None:
    target = tmp_path / "new"
    target.mkdir()
    before = sorted(os.listdir(target))
    app = Recorder("tomo", [str(tmp_path / "data")], running=False)
    options = migrate.Options(dest=str(target / "migrate"), state_dir=str(target / "state"), dest_root=str(target))
    wanted = {"programs": [{"path": str(tmp_path / "opt" / "app.py"), "service": "demo", "as": "argument"}]}
    with pytest.raises(Error) as refused:
        migrate.preflight_target(app, "1.0", 1000, options, source_needs=wanted)
    assert str(refused.value) == (
        f"the new server could not run what the old one does: the new server lacks {tmp_path}/opt/app.py, which the "
        "command of tomo's demo names; install it there first"
    )
    assert sorted(os.listdir(target)) == before and app.calls == []
    (tmp_path / "opt").mkdir()
    (tmp_path / "opt" / "app.py").write_text("")
    assert migrate.preflight_target(app, "1.0", 1000, options, source_needs=wanted)["changed"] is False
