"""The migrate role's transfer step (roles/migrate/tasks/transfer.yml) with the real modules and ansible-playbook,
between two local hosts (old and new: two directories of this machine): a set goes straight from the old server to
the new one over TLS (migrate_transfer direct), the files arrive whole and the role says so; with no address that
answers, ``auto`` takes it through the controller and ``direct`` fails in one sentence. (Between containers: the
Molecule scenarios migrate and tomo.)"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

PLAY = """
- hosts: old
  gather_facts: false
  tasks:
    - name: Transfer
      ansible.builtin.include_role:
        name: selfhost.dr.migrate
        tasks_from: transfer
    - name: Say how
      ansible.builtin.copy:
        content: "{{ {'way': _migrate_transferred, 'pid': _migrate_serving.pid | default(0)} | to_json }}"
        dest: "{{ out }}"
        mode: "0600"
      delegate_to: localhost
"""


def _run(tmp_path: Path, way: str, addresses: list[str]) -> tuple[subprocess.CompletedProcess[str], Path]:
    old = tmp_path / "old"
    old.mkdir(exist_ok=True)
    data = os.urandom(2 * 1024 * 1024)
    set_file = old / "tenement-old-20261129T120000Z-seed.tar.zst"
    set_file.write_bytes(data)
    Path(f"{set_file}.sha256").write_text(f"{hashlib.sha256(data).hexdigest()}  {set_file.name}\n")
    Path(f"{set_file}.manifest.json").write_text("{}\n")
    inventory = tmp_path / "inventory.ini"
    inventory.write_text(
        "[all:vars]\nansible_connection=local\n"
        f"ansible_python_interpreter={sys.executable}\n[all]\nold migrate_to=new\nnew\n"
    )
    playbook = tmp_path / "play.yml"
    playbook.write_text(PLAY)
    variables = {
        "_migrate_file": str(set_file),
        "migrate_transfer": way,
        "migrate_transfer_addresses": addresses,
        "migrate_transfer_timeout": 60,
        "migrate_dir": str(tmp_path / "new"),
        "migrate_work_dir": str(tmp_path / "work"),
        "out": str(tmp_path / "way.json"),
    }
    env = {
        **os.environ,
        "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"),
        "ANSIBLE_COLLECTIONS_PATH": str(ROOT / ".cache" / "collections"),
        "SELFHOST_DR_STATE_DIR": str(tmp_path / "state"),
    }
    done = subprocess.run(
        [str(Path(sys.executable).parent / "ansible-playbook"), "-vvv", "-i", str(inventory), str(playbook),
         "-e", json.dumps(variables)],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=300, check=False,
    )  # fmt: skip
    return done, set_file


@pytest.mark.parametrize(("way", "addresses", "went"), [("direct", ["127.0.0.1"], "direct"),
                                                        ("auto", ["127.0.0.1"], "direct"),
                                                        ("auto", ["192.0.2.1"], "controller")])  # fmt: skip
def test_a_set_goes_the_way_asked_and_arrives_whole(tmp_path: Path, way: str, addresses: list[str], went: str) -> None:
    done, set_file = _run(tmp_path, way, addresses)
    assert done.returncode == 0, done.stdout[-3000:]
    said = json.loads((tmp_path / "way.json").read_text())
    assert said["way"] == went
    for suffix in ("", ".sha256", ".manifest.json"):
        arrived = tmp_path / "new" / (set_file.name + suffix)
        assert arrived.read_bytes() == Path(f"{set_file}{suffix}").read_bytes()
    # (run with -vvv: every module's arguments and results are printed, but not the key's nor the token's)
    assert "PRIVATE KEY" not in done.stdout, "the transfer's key was logged"
    assert not re.search(r"[0-9a-f]{64}", done.stdout.replace(hashlib.sha256(set_file.read_bytes()).hexdigest(), "")), (
        "the transfer's token was logged"
    )
    if said["pid"]:
        assert not Path(f"/proc/{said['pid']}").exists() or _zombie(said["pid"]), "the old server still serves"


def test_a_direct_transfer_nobody_can_reach_fails_in_one_sentence(tmp_path: Path) -> None:
    done, _ = _run(tmp_path, "direct", ["192.0.2.1"])
    assert done.returncode != 0
    assert "the old server cannot be reached from here on port" in done.stdout, done.stdout[-3000:]
    assert not (tmp_path / "new").exists() or not any((tmp_path / "new").iterdir())


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True
