"""The collection as a user gets it: the built artifact and the module docs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
MODULES = sorted(p.stem for p in (ROOT / "plugins" / "modules").glob("*.py") if not p.name.startswith("_"))


def ansible_env() -> dict[str, str]:
    env = dict(os.environ)
    env["ANSIBLE_CONFIG"] = str(ROOT / "ansible.cfg")
    env["ANSIBLE_COLLECTIONS_PATH"] = str(ROOT / ".cache" / "collections")
    return env


def test_build_leaves_out_tests_and_molecule(tmp_path: Path) -> None:
    subprocess.run(
        [str(BIN / "ansible-galaxy"), "collection", "build", "--output-path", str(tmp_path), str(ROOT)],
        check=True,
        capture_output=True,
        env=ansible_env(),
    )
    (artifact,) = tmp_path.glob("selfhost-dr-*.tar.gz")
    with tarfile.open(artifact) as tar:
        names = tar.getnames()
    tops = {n.split("/")[0] for n in names}
    assert {"tests", "molecule", "benchmarks", ".venv", ".cache", "scripts", ".ci"}.isdisjoint(tops), tops
    for wanted in (
        "MANIFEST.json",
        "meta/runtime.yml",
        "README.md",
        "plugins/module_utils/apps/tenement.py",
        "plugins/module_utils/sets/create.py",
        "plugins/modules/tenement_instance.py",
        "roles/tenement_server/meta/argument_specs.yml",
        "playbooks/demo.yml",
    ):
        assert wanted in names, f"{wanted} is missing from the built collection"


@pytest.mark.parametrize("module", MODULES)
def test_module_documentation_is_complete(module: str) -> None:
    out = subprocess.run(
        [str(BIN / "ansible-doc"), "--json", f"selfhost.dr.{module}"],
        check=True,
        capture_output=True,
        text=True,
        env=ansible_env(),
    )
    doc = json.loads(out.stdout)[f"selfhost.dr.{module}"]
    assert doc["doc"]["options"], "no options documented"
    assert all(opt.get("description") for opt in doc["doc"]["options"].values())
    assert doc["examples"].strip(), "no examples"
    assert doc["return"], "no return values"
    assert doc["doc"]["attributes"]["check_mode"]["support"] in {"full", "partial"}


ROLES = sorted(p.parent.parent.name for p in (ROOT / "roles").glob("*/meta/argument_specs.yml"))


@pytest.mark.parametrize("role", ROLES)
def test_role_documentation_is_complete(role: str) -> None:
    out = subprocess.run(
        [str(BIN / "ansible-doc"), "--json", "-t", "role", f"selfhost.dr.{role}"],
        check=True,
        capture_output=True,
        text=True,
        env=ansible_env(),
    )
    entry_points = json.loads(out.stdout)[f"selfhost.dr.{role}"]["entry_points"]
    assert "main" in entry_points
    for name, spec in entry_points.items():
        assert spec.get("short_description"), f"{name} has no short description"
        for option, doc in (spec.get("options") or {}).items():
            assert doc.get("description"), f"{name}: {option} has no description"
