"""selfhost-dr, the host command, as installed (one executable zip run by the host's python3), against a real
tenement 0.2.2 kept running by start-stop-daemon: the host of a person with no controller left."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ansible_collections.selfhost.dr.plugins.module_utils.apps.tenement_client import TenementClient
from ansible_collections.selfhost.dr.plugins.module_utils.host_install import package_files, toml, zipapp

from .tenement_fixture import _instance_ports_free, write_config


@dataclass
class Host:
    command: Path
    config: Path
    backups: Path
    data_dir: Path
    client: TenementClient
    start: list[str]
    pidfile: Path

    def run(self, *args: str, check: bool = True) -> tuple[int, dict[str, object]]:
        done = subprocess.run(
            [str(self.command), *args, "--json", "--config", str(self.config)],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        result = json.loads(done.stdout)
        if check:
            assert done.returncode == 0, (done.stderr, result)
        return done.returncode, result


def _stats(client: TenementClient, name: str) -> dict[str, object]:
    listen = client.instances()[name].listen
    with urllib.request.urlopen(f"http://{listen}/stats", timeout=5) as resp:
        return json.load(resp)


@pytest.fixture
def host(tmp_path: Path, free_port: int, ten_bin: str) -> Iterator[Host]:
    _instance_ports_free()
    workdir = tmp_path / "etc"
    workdir.mkdir()
    data_dir = tmp_path / "data"
    write_config(workdir, data_dir, sys.executable)
    subprocess.run([ten_bin, "token-gen", "--data-dir", str(data_dir)], cwd=workdir, check=True, capture_output=True)
    pidfile = tmp_path / "ten.pid"
    start = [
        "start-stop-daemon", "--start", "--background", "--make-pidfile", "--pidfile", str(pidfile),
        "--chdir", str(workdir), "--output", str(tmp_path / "serve.log"), "--exec", ten_bin,
        "--", "serve", "--port", str(free_port), "--data-dir", str(data_dir),
    ]  # fmt: skip
    command = tmp_path / "selfhost-dr"
    command.write_bytes(zipapp(package_files()))
    command.chmod(0o755)
    config = tmp_path / "config.toml"
    backups = tmp_path / "backups"
    server = f"http://127.0.0.1:{free_port}"
    settings = {
        "app": "tenement",
        "backup_dir": str(backups),
        "backup": {"exclude": ["*.log"]},
        "retention": {"keep_last": 2},
        "tenement": {
            "config_dir": str(workdir),
            "server": server,
            "ten_bin": ten_bin,
            "service_manager": "process",
            "pidfile": str(pidfile),
            "start_command": start,
        },
    }
    config.write_text(toml(settings))
    subprocess.run(start, check=True)
    token = (data_dir / "api_token").read_text().strip()
    client = TenementClient(ten_bin, server=server, token=token, data_dir=str(data_dir))
    deadline = time.monotonic() + 15
    while not client.reachable() and time.monotonic() < deadline:
        time.sleep(0.1)
    for name in ("demo:alpha", "demo:beta"):
        client.spawn(name)
        client.wait_healthy(name, timeout=20)
    try:
        yield Host(command, config, backups, data_dir, client, start, pidfile)
    finally:
        subprocess.run(
            ["start-stop-daemon", "--stop", "--retry", "TERM/10/KILL/5", "--remove-pidfile", "--pidfile", str(pidfile)],
            check=False,
        )


def test_a_host_with_no_controller_backs_up_and_restores_itself(host: Host) -> None:
    rows = {name: _stats(host.client, name)["rows"] for name in ("demo:alpha", "demo:beta")}
    _, made = host.run("backup", "--mode", "cold")
    (entry,) = made["sets"]  # type: ignore[misc]
    assert entry["verified"] is True and entry["metadata"]["running"] == ["demo:alpha", "demo:beta"]
    assert sorted(host.client.instances()) == ["demo:alpha", "demo:beta"], "the cold backup started them again"

    # A disaster: the data dir is gone and tenement is down.
    subprocess.run(["start-stop-daemon", "--stop", "--retry", "TERM/10/KILL/5", "--pidfile", str(host.pidfile)])
    subprocess.run(["rm", "-rf", str(host.data_dir)], check=True)

    _, checked = host.run("restore", "--check")
    assert checked["paths"] and not host.data_dir.exists(), "check mode changed something"
    _, restored = host.run("restore")
    assert restored["path"] == entry["path"] and restored["started"] == ["demo:alpha", "demo:beta"]
    assert sorted(host.client.instances()) == ["demo:alpha", "demo:beta"]
    for name, count in rows.items():
        assert _stats(host.client, name)["rows"] == count

    _, status = host.run("status")
    assert status["apps"]["tenement"]["sets"] == 1  # type: ignore[index]
    assert status["pending_restores"] == [] and status["leftovers"] == []


def test_one_instance_restores_while_the_other_keeps_running(host: Host) -> None:
    _, made = host.run("backup", "--mode", "instances", "--instance", "demo:alpha")
    (entry,) = made["sets"]  # type: ignore[misc]
    assert entry["name"].endswith("-instance-demo-alpha.tar.zst")  # type: ignore[union-attr]
    beta_pid = _stats(host.client, "demo:beta")["pid"]
    db = host.data_dir / "demo" / "alpha" / "app.db"
    rows = _stats(host.client, "demo:alpha")["rows"]
    with urllib.request.urlopen(
        urllib.request.Request(f"http://{host.client.instances()['demo:alpha'].listen}/rows?n=7", method="POST"),
        timeout=5,
    ):
        pass
    assert _stats(host.client, "demo:alpha")["rows"] == rows + 7

    _, restored = host.run("restore", "--instance", "demo:alpha")
    assert restored["path"] == entry["path"] and restored["targets"] == [str(db.parent)]
    assert _stats(host.client, "demo:alpha")["rows"] == rows
    assert _stats(host.client, "demo:beta")["pid"] == beta_pid, "the other instance was touched"


def test_list_verify_prune_and_the_exit_codes(host: Host) -> None:
    for _ in range(3):
        host.run("backup", "--no-verify")
        time.sleep(1.1)  # a second set in the same second gets another label ("hot-2"), so another group
    _, listed = host.run("list")
    assert len(listed["sets"]) == 3  # type: ignore[arg-type]
    newest = listed["sets"][0]["path"]  # type: ignore[index]
    code, verified = host.run("verify")
    assert code == 0 and verified["path"] == newest and verified["ok"] is True
    _, pruned = host.run("prune")
    assert len(pruned["deleted"]) == 1, json.dumps(pruned)  # type: ignore[arg-type]

    with open(newest, "r+b") as handle:  # type: ignore[arg-type]
        handle.seek(os.path.getsize(newest) // 2)  # type: ignore[arg-type]
        handle.write(b"\0" * 64)
    code, failed = host.run("verify", os.path.basename(newest), check=False)  # type: ignore[arg-type]
    assert code == 3 and failed["ok"] is False and "failed verification" in failed["error"]  # type: ignore[operator]
    instances = sorted(host.client.instances())
    code, failed = host.run("restore", check=False)
    assert code == 3 and str(failed["error"]).startswith("refusing to restore: ")
    assert sorted(host.client.instances()) == instances, "a set that fails verification stopped something"
    code, failed = host.run("restore", "--app", "tomo", check=False)
    assert code == 1 and failed["error"] == f"there is no tomo backup set of the whole tomo in {host.backups}"
    code, failed = host.run("backup", "--instance", "demo:alpha", check=False)
    assert code == 2 and "use it with --mode instances" in str(failed["error"])
    done = subprocess.run(
        [str(host.command), "--json", "backup", "--mode", "sideways"], capture_output=True, text=True, check=False
    )
    assert done.returncode == 2 and json.loads(done.stdout)["ok"] is False
