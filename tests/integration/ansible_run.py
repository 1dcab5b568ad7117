"""Run one module of this collection on localhost the way ansible does, and return its result."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run_module(module: str, args: dict[str, object], check: bool = False, diff: bool = False) -> dict[str, object]:
    env = dict(os.environ)
    env.update(
        ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"),
        ANSIBLE_COLLECTIONS_PATH=str(ROOT / ".cache" / "collections"),
        ANSIBLE_STDOUT_CALLBACK="ansible.builtin.json",
        ANSIBLE_LOAD_CALLBACK_PLUGINS="1",
    )
    cmd = [
        str(Path(sys.executable).parent / "ansible"),
        "localhost",
        "-c",
        "local",
        "-e",
        f"ansible_python_interpreter={sys.executable}",
        "-m",
        f"selfhost.dr.{module}",
        "-a",
        json.dumps(args),
    ]
    if check:
        cmd.append("--check")
    if diff:
        cmd.append("--diff")
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, check=False)
    try:
        return json.loads(out.stdout)["plays"][0]["tasks"][0]["hosts"]["localhost"]
    except (ValueError, KeyError, IndexError) as exc:
        raise AssertionError(f"ansible gave no result: {out.stdout[-2000:]} {out.stderr[-2000:]}") from exc


def local_tenement(tmp_path: Path) -> dict[str, object]:
    """tenement_server variables for a throwaway tenement under ``tmp_path``, run as a plain process."""
    return {
        "ansible_python_interpreter": sys.executable,
        "tenement_server_service_manager": "process",
        "tenement_server_venv": str(tmp_path / "venv"),
        "tenement_server_bin": str(tmp_path / "bin" / "ten"),
        "tenement_server_config_dir": str(tmp_path / "etc"),
        "tenement_server_data_dir": str(tmp_path / "data"),
        "tenement_server_pidfile": str(tmp_path / "ten.pid"),
        "tenement_server_log_file": str(tmp_path / "ten.log"),
    }


def run_playbook(
    playbook: Path, variables: dict[str, object], timeout: int = 600, options: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    """``ansible-playbook`` on localhost with this collection, ``variables`` as extra vars (and ``options``, such as
    ``--check`` or ``-vvv``)."""
    env = dict(os.environ)
    env.update(
        ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"),
        ANSIBLE_COLLECTIONS_PATH=str(ROOT / ".cache" / "collections"),
        ANSIBLE_NOCOLOR="1",
    )
    ansible = Path(sys.executable).parent / "ansible-playbook"
    return subprocess.run(
        [str(ansible), "-i", "localhost,", str(playbook), "-e", json.dumps(variables), *options],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=timeout,
        check=False,
    )
