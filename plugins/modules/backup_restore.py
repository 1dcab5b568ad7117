#!/usr/bin/python
# Copyright: selfhost.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
---
module: backup_restore
short_description: Restore a backup set, or chosen paths of it, with a safety copy of what it replaces
version_added: 0.1.0
description:
  - With O(state=restored), verifies the set at O(path) first (as M(selfhost.dr.backup_verify) does) and refuses it when
    any check fails or its format is newer than this collection knows. Then it checks every member against the target
    and refuses absolute paths, C(..), hard links, devices and symbolic links that point outside the restored tree.
  - Each restored tree (every path the set holds, or the O(paths) chosen inside them) is unpacked into a hidden staging
    directory beside its target, with modes, owners and times, then swapped in by two renames. What was at the target
    is kept as a hidden safety copy, returned in RV(swaps). A failure puts everything back as it was.
  - With O(state=rolled_back), puts the safety copies in O(swaps) back (the application should be stopped).
  - With O(state=committed), deletes the safety copies in O(swaps) once the restored application has been checked.
  - The application is not stopped or started here; the C(restore) role does that around this module.
author:
  - selfhost.dr developers
attributes:
  check_mode:
    support: full
    description: Verifies the set and reports the trees that would be restored, without changing anything.
  diff_mode:
    support: none
  idempotent:
    support: none
    description: Every O(state=restored) run puts the set's content in place again.
options:
  path:
    description: The set's archive. Required with O(state=restored).
    type: path
  paths:
    description:
      - Absolute paths inside the set to restore (for example one instance's data dir); each replaces only itself.
      - Empty restores every path the set holds.
    type: list
    elements: path
    default: []
  dest_root:
    description: Restore under this directory instead of C(/) (a drill, or inspecting a set).
    type: path
    default: /
  state:
    description: V(restored), V(rolled_back) or V(committed).
    type: str
    choices: [restored, rolled_back, committed]
    default: restored
  swaps:
    description: RV(swaps) of an earlier O(state=restored) run, for V(rolled_back) and V(committed).
    type: list
    elements: dict
    default: []
seealso:
  - module: selfhost.dr.backup_create
  - module: selfhost.dr.backup_verify
"""

EXAMPLES = r"""
- name: Put the whole set back (the application is stopped)
  selfhost.dr.backup_restore:
    path: /var/backups/selfhost-dr/tenement-web1-20261122T035100Z-hot.tar.zst
  register: restored

- name: Only one instance's data
  selfhost.dr.backup_restore:
    path: /var/backups/selfhost-dr/tenement-web1-20261122T035100Z-hot.tar.zst
    paths: [/var/lib/tenement/demo/alpha]

- name: Checked and healthy, so drop the safety copies
  selfhost.dr.backup_restore:
    state: committed
    swaps: "{{ restored.swaps }}"
"""

RETURN = r"""
swaps:
  description: Each restored tree and where its previous content was kept (empty when there was none).
  returned: state=restored, not in check mode
  type: list
  elements: dict
  sample: [{target: /var/lib/tenement, safety: /var/lib/.tenement.selfhost-dr-safety-20261122T040000Z}]
targets:
  description: The trees restored (or that would be).
  returned: state=restored
  type: list
  elements: str
  sample: [/etc/tenement, /var/lib/tenement]
files: {description: Files written., returned: state=restored, not in check mode, type: int, sample: 1004}
bytes: {description: Bytes written., returned: state=restored, not in check mode, type: int, sample: 1079981582}
seconds: {description: Seconds taken, verification included., returned: state=restored, not in check mode, type: float, sample: 7.5}
metadata: {description: What the set recorded (for tenement, the running instances)., returned: state=restored, type: dict, sample: {running: [demo:alpha]}}
app_version: {description: The application version the set was made from., returned: state=restored, type: str, sample: 0.2.2}
"""

import os

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.selfhost.dr.plugins.module_utils.backup_set import BackupError, verify
from ansible_collections.selfhost.dr.plugins.module_utils.restore import (
    RestoreError,
    Swap,
    commit,
    restore,
    rollback,
    units_for,
)


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            path=dict(type="path"),
            paths=dict(type="list", elements="path", default=[]),
            dest_root=dict(type="path", default="/"),
            state=dict(type="str", default="restored", choices=["restored", "rolled_back", "committed"]),
            swaps=dict(type="list", elements="dict", default=[]),
        ),
        required_if=[("state", "restored", ["path"])],
        supports_check_mode=True,
    )
    p = module.params
    if p["state"] != "restored":
        swaps = [Swap(str(s.get("target", "")), str(s.get("safety", ""))) for s in p["swaps"]]
        pending = [s for s in swaps if s.safety and os.path.lexists(s.safety)]
        if not module.check_mode:
            (rollback if p["state"] == "rolled_back" else commit)(swaps)
        module.exit_json(changed=bool(pending) or (p["state"] == "rolled_back" and bool(swaps)))
    try:
        if module.check_mode:
            checked = verify(p["path"], record=False)
            if not checked.ok or checked.manifest is None:
                module.fail_json(msg=f"refusing to restore: {checked.summary}")
            manifest = checked.manifest
            units = units_for(manifest, p["paths"])
            module.exit_json(
                changed=True,
                targets=[os.path.join(p["dest_root"], u.lstrip("/")) for u in units],
                metadata=manifest.get("metadata", {}),
                app_version=manifest.get("app_version", ""),
            )
        done = restore(p["path"], dest_root=p["dest_root"], only=p["paths"], log=module.log)
    except (BackupError, RestoreError) as exc:
        module.fail_json(msg=str(exc))
    module.exit_json(
        changed=True,
        swaps=[s.to_dict() for s in done.swaps],
        targets=[s.target for s in done.swaps],
        files=done.files,
        bytes=done.bytes,
        seconds=done.seconds,
        metadata=done.manifest.get("metadata", {}),
        app_version=done.manifest.get("app_version", ""),
    )


if __name__ == "__main__":
    main()
