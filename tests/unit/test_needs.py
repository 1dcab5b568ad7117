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


def test_a_port_this_process_listens_on_is_found_with_its_address_and_holder(listener: int) -> None:
    assert os.getpid() in needs.listening()[("127.0.0.1", listener)]
    assert {"port": listener, "address": "127.0.0.1", "what": "me"} in needs.ports_of(os.getpid(), "me")
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert listener not in needs.listening({child.pid})  # the child holds no socket of its own
        assert {os.getpid(), child.pid} <= needs.process_tree(os.getpid())
    finally:
        child.kill()
        child.wait()


@pytest.mark.parametrize("address", ["127.0.0.1", "0.0.0.0", "::"])  # noqa: S104 - compared with, never bound
def test_a_port_taken_by_another_program_is_refused_and_one_the_application_holds_is_not(
    listener: int, address: str
) -> None:
    wanted = Needs(ports=[{"port": listener, "address": address, "what": "ten serve"}])
    problems = needs.unmet(wanted, set())
    assert problems == [
        f"port {listener} (ten serve's on the old server, at {address}) is taken by "
        f"{needs.command_name(os.getpid())} (pid {os.getpid()})"
    ]
    assert needs.unmet(wanted, {os.getpid()}) == []  # its own server: the migration stops it


def test_a_free_port_or_one_taken_at_another_address_is_no_problem(listener: int) -> None:
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    free = probe.getsockname()[1]
    probe.close()
    assert needs.unmet(Needs(ports=[{"port": free, "address": "::", "what": "ten serve"}]), set()) == []
    # Bound to 127.0.0.1 here: the old server's 127.0.0.2 can be bound all the same.
    assert needs.unmet(Needs(ports=[{"port": listener, "address": "127.0.0.2", "what": "ten serve"}]), set()) == []


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
        "worker": {"command": "sh", "args": ["-c", str(code), "/nowhere/at/all"]},
        "idle": {"command": "/opt/never/started"},  # no instance runs or is started ([] starts none): not needed
    }
    found = _tenement_needs(tmp_path, services, ["web:a"], instances={"worker": ["one"], "idle": []})
    assert found.programs == [
        {"path": "/usr/bin/python3", "service": "web", "as": "command"},
        {"path": str(code), "service": "web", "as": "argument"},  # a placeholder, and what the migration carries: not
        {"path": str(tmp_path / "opt"), "service": "web", "as": "workdir"},
        {"path": str(code), "service": "worker", "as": "argument"},  # /nowhere/at/all is not here either: not needed
    ]
    assert found.commands == [{"name": "sh", "service": "worker", "path": needs.DEFAULT_PATH}]
    assert found.ports == []  # ten serve does not run here


def test_a_command_is_split_as_tenement_splits_it_a_comment_left_out(tmp_path: Path) -> None:
    script = tmp_path / "app#1.py"
    script.write_text("")
    other = tmp_path / "other.py"
    other.write_text("")
    services = {"web": {"command": f"/usr/bin/python3 '{tmp_path}/app#1.py' {tmp_path}/app#1.py # was {other}"}}
    found = _tenement_needs(tmp_path / "carried", services, ["web:a"])
    assert [p["path"] for p in found.programs] == ["/usr/bin/python3", str(script), str(script)]


def test_a_bare_command_is_looked_for_on_the_services_path_and_one_in_the_data_is_not_needed(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("mytool", "inside"):
        (bin_dir / name).write_text("#!/bin/sh\n")
        (bin_dir / name).chmod(0o755)
    data_bin = tmp_path / "data" / "venv" / "bin"
    data_bin.mkdir(parents=True)
    (data_bin / "inside").write_text("#!/bin/sh\n")
    (data_bin / "inside").chmod(0o755)
    path = f"{{data_dir}}/{{id}}/bin:{data_bin}:{bin_dir}"
    services = {
        "a": {"command": "mytool --x", "env": {"PATH": path}},
        "b": {"command": "inside", "env": {"PATH": path}},
        "c": {"command": "not-installed-anywhere"},
    }
    found = _tenement_needs(tmp_path, services, ["a:1", "b:1", "c:1"])
    assert found.commands == [{"name": "mytool", "service": "a", "path": f"{data_bin}:{bin_dir}"}]
    assert needs.unmet(found, set()) == []
    (bin_dir / "mytool").unlink()
    assert needs.unmet(found, set()) == ["command mytool (run by service a) is not on its PATH"]


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
    assert needs.unmet(wanted, set()) == [
        f"{tmp_path}/gone.py (named by the command of service web) is missing",
        f"{plain} (the program of service web) is missing or not executable",
        f"{tmp_path}/nodir (the working directory of service web) is missing",
        "command no-such-command-here (run by service worker) is not on its PATH",
    ]


@pytest.mark.parametrize(
    "hostile",
    [
        "ports",
        {"ports": "8080"},
        {"ports": [{"port": 0, "address": "::", "what": "x"}]},
        {"ports": [{"port": True, "address": "::", "what": "x"}]},
        {"ports": [{"port": "80", "address": "::", "what": "x"}]},
        {"ports": [{"port": 80, "address": "example.org", "what": "x"}]},
        {"ports": [{"port": 80, "what": "x"}]},
        {"programs": [{"path": "relative/app.py", "service": "s", "as": "argument"}]},
        {"programs": [{"path": "/x", "service": "s", "as": "library"}]},
        {"programs": [{"path": "/x\0y", "service": "s", "as": "argument"}]},
        {"programs": [{"path": "/" + "x" * 5000, "service": "s", "as": "argument"}]},
        {"programs": [{"path": "/x"}]},
        {"commands": [{"name": "../bin/sh", "service": "s", "path": ""}]},
        {"commands": [{"name": "x", "service": "s", "path": ""}] * 5000},
    ],
)
def test_needs_from_another_server_are_checked_as_data(hostile: object) -> None:
    with pytest.raises(AppError, match="the old server's needs"):
        Needs.from_dict(hostile)


def test_needs_travel_as_a_mapping_and_back() -> None:
    wanted = Needs(ports=[{"port": 443, "address": "::", "what": "ten serve"}],
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
        f"the new server cannot run what the old one runs: {tmp_path}/opt/app.py (named by the command of service "
        "demo) is missing; nothing was changed (install what is missing there and free the ports first, or set "
        "migrate_check_needs to false)"
    )
    assert sorted(os.listdir(target)) == before and app.calls == []
    (tmp_path / "opt").mkdir()
    (tmp_path / "opt" / "app.py").write_text("")
    assert migrate.preflight_target(app, "1.0", 1000, options, source_needs=wanted)["changed"] is False
