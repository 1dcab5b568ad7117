"""Shared fixtures: the repository root, free ports, and the collection on sys.path."""

from __future__ import annotations

import json
import os
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
# `ansible_collections.selfhost.dr` resolves to this checkout through the link
# that scripts/bootstrap makes under .cache/collections.
COLLECTIONS = ROOT / ".cache" / "collections"
if str(COLLECTIONS) not in sys.path:
    sys.path.insert(0, str(COLLECTIONS))


@pytest.fixture(autouse=True)
def state_dir(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test has its own selfhost.dr state (the restore journal), never the host's /var/lib/selfhost-dr."""
    path = tmp_path_factory.mktemp("state")
    monkeypatch.setenv("SELFHOST_DR_STATE_DIR", str(path))
    return path


@pytest.fixture
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def ten_bin() -> str:
    path = Path(sys.executable).parent / "ten"
    if not path.exists():
        pytest.fail(
            "tenement is not installed in the test virtualenv: run scripts/test (it installs tests/requirements.txt)"
        )
    return str(path)


def env_without(*names: str) -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in names}


@pytest.fixture
def run_module(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Callable[..., dict[str, Any]]:
    """Run a module's main() in this process, as Ansible would with ``args``; its result, with no traceback allowed."""
    from ansible.module_utils import basic

    def run(module: Any, args: dict[str, object], check: bool = False) -> dict[str, Any]:
        payload = {"ANSIBLE_MODULE_ARGS": {**args, "_ansible_check_mode": check}}
        monkeypatch.setattr(basic, "_ANSIBLE_ARGS", json.dumps(payload).encode())
        if hasattr(basic, "_ANSIBLE_PROFILE"):  # ansible-core 2.19 and later
            monkeypatch.setattr(basic, "_ANSIBLE_PROFILE", "legacy")
        with pytest.raises(SystemExit):
            module.main()
        out, err = capsys.readouterr()
        assert "Traceback" not in out + err
        return dict(json.loads(out))

    return run
