"""The per-instance procedure against a real tenement 0.2.2: stop, copy, spawn, compress."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from ansible_collections.selfhost.dr.plugins.module_utils._common import BackupError
from ansible_collections.selfhost.dr.plugins.module_utils.apps.tenement_client import TenementClient
from ansible_collections.selfhost.dr.plugins.module_utils.apps.tenement_instance import backup_instance
from ansible_collections.selfhost.dr.plugins.module_utils.sets.verify import verify

from .tenement_fixture import LiveTenement, running

Served = tuple[LiveTenement, TenementClient]


def stats(client: TenementClient, name: str) -> dict[str, object]:
    listen = client.instances()[name].listen
    with urllib.request.urlopen(f"http://{listen}/stats", timeout=5) as resp:
        return json.load(resp)


def serving(tmp_path: Path, free_port: int, ten_bin: str, persist: bool) -> Iterator[Served]:
    for live in running(ten_bin, tmp_path, free_port, sys.executable, storage_persist=persist):
        client = TenementClient(ten_bin, server=live.server, token=live.token, data_dir=str(live.data_dir))
        for name in ("demo:alpha", "demo:beta"):
            client.spawn(name)
            client.wait_healthy(name, timeout=20)
        yield live, client


@pytest.fixture
def persisting(tmp_path: Path, free_port: int, ten_bin: str) -> Iterator[Served]:
    yield from serving(tmp_path, free_port, ten_bin, True)


@pytest.fixture
def not_persisting(tmp_path: Path, free_port: int, ten_bin: str) -> Iterator[Served]:
    yield from serving(tmp_path, free_port, ten_bin, False)


def test_stop_copy_spawn_then_compress(persisting: Served, tmp_path: Path) -> None:
    live, client = persisting
    dest = tmp_path / "sets"
    dest.mkdir()
    (live.data_dir / "demo" / "alpha" / "upload.bin").write_bytes(os.urandom(500_000))
    alpha_pid, beta_pid = stats(client, "demo:alpha")["pid"], stats(client, "demo:beta")["pid"]
    rows = stats(client, "demo:alpha")["rows"]

    done = backup_instance(client, "demo:alpha", str(live.data_dir), str(dest), storage_persist=True)

    assert done.stopped and 0 < done.copy_seconds <= done.downtime < 10
    assert stats(client, "demo:alpha")["pid"] != alpha_pid, "alpha was not stopped and spawned again"
    assert stats(client, "demo:beta")["pid"] == beta_pid, "another instance was touched"
    assert done.created.name.endswith("-instance-demo-alpha.tar.zst")
    manifest = done.created.manifest
    tree = str(live.data_dir / "demo" / "alpha")
    assert manifest["paths"] == [tree]
    assert manifest["metadata"]["instance"] == "demo:alpha" and manifest["metadata"]["running"] == ["demo:alpha"]  # type: ignore[index]
    assert {f["path"] for f in manifest["files"]} >= {tree.lstrip("/") + "/app.db", tree.lstrip("/") + "/upload.bin"}  # type: ignore[union-attr]
    assert verify(done.created.path).ok
    assert stats(client, "demo:alpha")["rows"] == rows
    assert not [p for p in dest.iterdir() if ".copy-" in p.name], "the copy was left behind"


def test_a_failed_copy_still_spawns_the_instance(persisting: Served, tmp_path: Path) -> None:
    live, client = persisting
    (live.data_dir / "demo" / "alpha" / "big.bin").write_bytes(os.urandom(3 * 1024 * 1024))
    small = tmp_path / "small"
    small.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(small)], check=False).returncode:
        pytest.skip("mounting a tmpfs needs root (CI runs as root)")
    try:
        with pytest.raises(BackupError, match=r"copying .*/demo/alpha failed: .*No space left on device"):
            backup_instance(client, "demo:alpha", str(live.data_dir), str(small), storage_persist=True)
        assert "demo:alpha" in client.instances()
        assert client.health("demo:alpha") == "healthy"
        assert not list(small.iterdir()), "a partial copy or set was left"
    finally:
        subprocess.run(["umount", str(small)], check=False)


def test_an_instance_that_does_not_persist_is_never_stopped(not_persisting: Served, tmp_path: Path) -> None:
    live, client = not_persisting
    pid = stats(client, "demo:alpha")["pid"]
    done = backup_instance(client, "demo:alpha", str(live.data_dir), str(tmp_path), storage_persist=False)
    assert not done.stopped and done.downtime == 0
    assert "sets storage_persist = false" in done.hot_reason
    assert stats(client, "demo:alpha")["pid"] == pid
    assert (live.data_dir / "demo" / "alpha" / "app.db").exists()
    assert verify(done.created.path).ok
