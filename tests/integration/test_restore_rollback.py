"""The restore role's rescue path on a real tenement: a restore that cannot bring its instances back is undone."""

from __future__ import annotations

import json
import os
import socket
import subprocess
from pathlib import Path

import pytest

from .ansible_run import ROOT, local_tenement, run_playbook

PLAYBOOK = ROOT / "tests" / "integration" / "playbooks" / "restore_rollback.yml"


def test_a_failed_restore_puts_the_previous_state_back(tmp_path: Path, free_port: int) -> None:
    wheel = os.environ.get("SELFHOST_DR_TENEMENT_WHEEL", "")
    if not wheel:
        pytest.skip("needs the tenement wheel that scripts/test downloads (SELFHOST_DR_TENEMENT_WHEEL)")
    with socket.socket() as sock:
        if sock.connect_ex(("127.0.0.1", 30000)) == 0:
            pytest.fail("port 30000 is in use: tenement 0.2.2 hands out instance ports from there without checking")
    variables = {
        **local_tenement(tmp_path),
        "work": str(tmp_path),
        "tenement_server_wheel": wheel,
        "tenement_server_port": free_port,
    }
    try:
        done = run_playbook(PLAYBOOK, variables)
    finally:
        # Whatever the playbook did, the ten serve it started (and its instances, on ports from 30000) stops here,
        # or every later tenement test of the run fails on a taken port.
        pidfile = str(variables["tenement_server_pidfile"])
        stop = ["start-stop-daemon", "--stop", "--retry", "TERM/10/KILL/5", "--remove-pidfile", "--pidfile", pidfile]
        subprocess.run(stop, check=False, capture_output=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    result = json.loads((tmp_path / "result.json").read_text())
    assert "the previous config and data are back and tenement runs them again" in result["failure"], result
    assert "did not" in result["failure"] or "not healthy" in result["failure"], result
    # The state from after the backup is back: app_b's config, the marker, both instances running.
    assert "app_b" in result["config"]["service"]["demo"]["command"]
    assert (tmp_path / "data" / "demo" / "alpha" / "marker.txt").read_text() == "after the backup\n"
    assert result["running"] == ["demo:alpha", "demo:beta"]
    leftovers = [p.name for d in (tmp_path, tmp_path / "data") for p in d.iterdir() if ".selfhost-dr-" in p.name]
    assert leftovers == []
