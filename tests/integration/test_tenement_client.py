"""TenementClient against a real tenement 0.2.2 server running the demo application."""

from __future__ import annotations

import json
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from ansible_collections.selfhost.dr.plugins.module_utils.apps.tenement_client import TenementClient, TenementError

from .tenement_fixture import LiveTenement, running


@pytest.fixture
def live(tmp_path: Path, free_port: int, ten_bin: str) -> Iterator[LiveTenement]:
    yield from running(ten_bin, tmp_path, free_port, sys.executable)


def client_for(live: LiveTenement, token: str | None = None) -> TenementClient:
    return TenementClient(live.ten_bin, server=live.server, token=token or live.token, data_dir=str(live.data_dir))


def test_spawn_health_list_stop(live: LiveTenement) -> None:
    client = client_for(live)
    assert client.version() == "0.2.2"
    assert client.instances() == {}

    client.spawn("demo:alpha")
    inst = client.wait_healthy("demo:alpha", timeout=20)
    assert inst.name == "demo:alpha" and inst.health == "healthy"
    assert set(client.instances()) == {"demo:alpha"}

    # The instance really serves its SQLite data on the address tenement reports.
    with urllib.request.urlopen(f"http://{inst.listen}/stats", timeout=5) as resp:
        stats = json.load(resp)
    assert stats["instance"] == "demo:alpha"
    assert stats["rows"] == 10
    assert stats["journal_mode"] == "wal"
    assert (live.data_dir / "demo" / "alpha" / "app.db").exists()

    client.stop("demo:alpha")
    assert client.instances() == {}
    # storage_persist = true: the data stays.
    assert (live.data_dir / "demo" / "alpha" / "app.db").exists()


def test_wrong_token_is_one_clear_sentence(live: LiveTenement) -> None:
    with pytest.raises(TenementError, match=r"refused the API token \(HTTP 401\)"):
        client_for(live, token="not-the-token").instances()


def test_server_down_is_reported(tmp_path: Path, ten_bin: str, free_port: int) -> None:
    client = TenementClient(ten_bin, server=f"http://127.0.0.1:{free_port}", token="x")
    assert client.reachable() is False
    with pytest.raises(TenementError, match="does not answer"):
        client.instances()


def test_unknown_service_fails_with_tenements_reason(live: LiveTenement) -> None:
    with pytest.raises(TenementError, match=r"^'ten spawn nosuch:one' failed: "):
        client_for(live).spawn("nosuch:one")


def test_hostile_name_never_reaches_tenement(live: LiveTenement) -> None:
    with pytest.raises(TenementError, match="not a valid tenement name"):
        client_for(live).spawn("demo:../../etc")
    assert not (live.workdir / "etc").exists()
    assert not (live.data_dir / "etc").exists()


def test_health_timeout_says_which_instance(live: LiveTenement) -> None:
    with pytest.raises(
        TenementError, match=r"instance demo:never is not healthy after 0.5 s \(last state: not running\)"
    ):
        client_for(live).wait_healthy("demo:never", timeout=0.5, interval=0.1)
