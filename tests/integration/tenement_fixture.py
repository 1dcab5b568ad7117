"""A real `ten serve` (PyPI tenement in the test virtualenv) in a temporary directory."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DEMO_APP = ROOT / "roles" / "demo_app" / "files" / "demo_app.py"


@dataclass
class LiveTenement:
    ten_bin: str
    workdir: Path
    data_dir: Path
    server: str
    token: str
    process: subprocess.Popen[bytes]


def write_config(workdir: Path, data_dir: Path, python: str, storage_persist: bool = True) -> None:
    (workdir / "tenement.toml").write_text(
        f"""[settings]
data_dir = "{data_dir}"

[service.demo]
command = "{python} {DEMO_APP}"
health = "/health"
storage_persist = {str(storage_persist).lower()}
isolation = "process"

[service.demo.env]
DEMO_DB = "{{data_dir}}/{{name}}/{{id}}/app.db"
DEMO_INSTANCE = "{{name}}:{{id}}"
DEMO_SEED_ROWS = "10"
"""
    )


def _instance_ports_free() -> None:
    # tenement 0.2.2 gives instances ports from 30000 up without checking that
    # they are free: a second tenement on this machine would answer for ours.
    import socket

    with socket.socket() as sock:
        if sock.connect_ex(("127.0.0.1", 30000)) == 0:
            raise RuntimeError(
                "port 30000 is in use (another tenement, such as a demo left running with demo_keep=true?): "
                "tenement 0.2.2 hands out instance ports from 30000 without checking, so these tests cannot run"
            )


def start(ten_bin: str, workdir: Path, port: int, python: str, storage_persist: bool = True) -> LiveTenement:
    _instance_ports_free()
    data_dir = workdir / "data"
    write_config(workdir, data_dir, python, storage_persist)
    subprocess.run([ten_bin, "token-gen", "--data-dir", str(data_dir)], cwd=workdir, check=True, capture_output=True)
    token = (data_dir / "api_token").read_text().strip()
    log = open(workdir / "serve.log", "wb")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen(
        [ten_bin, "serve", "--port", str(port), "--data-dir", str(data_dir)],
        cwd=workdir,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    server = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(server + "/api/instances", timeout=1)
        except urllib.error.HTTPError:
            break  # answers (401 without token): up
        except OSError:
            time.sleep(0.1)
    else:
        proc.kill()
        raise RuntimeError(f"ten serve did not listen on {port}: {(workdir / 'serve.log').read_text()}")
    return LiveTenement(ten_bin, workdir, data_dir, server, token, proc)


def stop(live: LiveTenement) -> None:
    # ten serve and the instances it spawned share its session: end them all.
    try:
        os.killpg(live.process.pid, signal.SIGTERM)
        live.process.wait(timeout=10)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        os.killpg(live.process.pid, signal.SIGKILL)


def running(
    ten_bin: str, workdir: Path, port: int, python: str, storage_persist: bool = True
) -> Iterator[LiveTenement]:
    live = start(ten_bin, workdir, port, python, storage_persist)
    try:
        yield live
    finally:
        stop(live)
