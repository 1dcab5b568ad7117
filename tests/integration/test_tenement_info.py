"""tenement_info against a real tenement 0.2.2: up, with instances running and on disk; and down."""

from __future__ import annotations

import sys
from pathlib import Path

from ansible_collections.selfhost.dr.plugins.module_utils.apps.tenement_client import TenementClient

from .ansible_run import run_module
from .tenement_fixture import start, stop


def test_info_while_serving_and_after_the_server_stops(tmp_path: Path, free_port: int, ten_bin: str) -> None:
    live = start(ten_bin, tmp_path, free_port, sys.executable)
    try:
        args = {"config": str(tmp_path / "tenement.toml"), "server": live.server, "ten_bin": ten_bin}
        client = TenementClient(ten_bin, server=live.server, token=live.token, data_dir=str(live.data_dir))
        for name in ("demo:alpha", "demo:beta"):
            client.spawn(name)
            client.wait_healthy(name, timeout=20)
        client.stop("demo:beta")  # storage_persist = true: its data stays on disk

        info = run_module("tenement_info", args)
        assert not info.get("failed"), info
        assert info["data_dir"] == str(live.data_dir) and info["reachable"] is True
        assert info["running"] == ["demo:alpha"] and info["instances"]["demo:alpha"]["health"] == "healthy"  # type: ignore[index]
        assert info["on_disk"] == ["demo:alpha", "demo:beta"] and info["only_on_disk"] == ["demo:beta"]
        assert info["services"]["demo"]["storage_persist"] is True  # type: ignore[index]
        assert info["version"] == "0.2.2" and info["has_token"] is True
        assert live.token not in str(info), "the token leaked into the result"
    finally:
        stop(live)
    down = run_module("tenement_info", args)
    assert not down.get("failed") and down["reachable"] is False and down["running"] == []
    assert "does not answer" in str(down["server_error"])
    assert down["only_on_disk"] == ["demo:alpha", "demo:beta"]

    (tmp_path / "tenement.toml").write_text("[service.demo\n")
    broken = run_module("tenement_info", args)
    assert broken["failed"] is True and "is not valid TOML" in str(broken["msg"])
