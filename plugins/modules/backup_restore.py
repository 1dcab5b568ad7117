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
    any check fails or its format is newer than this collection knows. A set that verifies restores, and one that
    verify refuses is refused here in the same words.
  - Each restored tree (every path the set holds, or the O(paths) chosen inside them) is unpacked into a private staging
    directory beside its target, with modes, owners and times, then swapped in by two renames. What was at the target
    is kept as a hidden safety copy, returned in RV(swaps). A failure puts everything back as it was.
  - Nothing is ever created, written, chmodded or chowned through a symbolic link. Links in the set are restored as
    links, after every other member. A target reached through a link below a path of the set (for example one left by an
    earlier restore) is refused in one sentence; a path that was itself a link when it was backed up is followed again
    only when it still leads where it led then.
  - Every restore is recorded in the host's journal (under O(state_dir)) before it changes anything, and gets a
    RV(restore_id). O(state=committed) deletes its safety copies once the restored application has been checked;
    O(state=rolled_back) puts them back. Both act only on what the journal recorded, refuse anything else in one
    sentence, and change nothing when repeated.
  - A restore killed half-way (the controller died) is finished or undone by the next restore, commit or roll back on
    the host. A restore that finished but was never committed is kept when the same place is restored again; the new
    restore's safety copy is the live tree, the earlier safety copy stays (state C(kept)) until committed.
  - The application is not stopped or started here; the C(restore) role does that around this module.
author:
  - selfhost.dr developers
attributes:
  check_mode:
    support: full
    description: Verifies the set and plans the targets exactly as a restore does (refusing what it would refuse),
      without changing anything.
  diff_mode:
    support: none
  idempotent:
    support: partial
    description: Every O(state=restored) run puts the set's content in place again; O(state=committed) and
      O(state=rolled_back) change nothing when repeated.
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
  keep_safety:
    description:
      - With O(state=committed), accept the restore but keep its safety copies (the journal records it as C(kept));
        a later O(state=committed) without it deletes them, and O(state=rolled_back) can still put them back.
    type: bool
    default: false
  state:
    description: V(restored), V(rolled_back) or V(committed).
    type: str
    choices: [restored, rolled_back, committed]
    default: restored
  restore_id:
    description:
      - RV(restore_id) of an earlier O(state=restored) run, for V(rolled_back) and V(committed).
      - When neither this nor O(swaps) is given, V(rolled_back) and V(committed) do nothing (a restore that failed has
        already put everything back).
    type: str
  swaps:
    description:
      - RV(swaps) of an earlier O(state=restored) run, for V(rolled_back) and V(committed) when O(restore_id) is not
        given. Each swap must be one the journal recorded; anything else is refused.
      - Deprecated, use O(restore_id).
    type: list
    elements: dict
    default: []
extends_documentation_fragment:
  - selfhost.dr.state_dir
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
    restore_id: "{{ restored.restore_id }}"
"""

RETURN = r"""
restore_id:
  description: The journal's name for this restore, for O(state=committed) and O(state=rolled_back).
  returned: state=restored, not in check mode
  type: str
  sample: 20261122T040000Z-1a2b3c4d
swaps:
  description: Each restored tree and where its previous content was kept (empty when there was none).
  returned: state=restored, not in check mode
  type: list
  elements: dict
  sample: [{target: /var/lib/tenement, safety: /var/lib/.tenement.selfhost-dr-safety-20261122T040000Z}]
paths:
  description: The paths of the set restored (or that would be), as the set names them; give them back as O(paths).
  returned: state=restored
  type: list
  elements: str
  sample: [/etc/tenement, /var/lib/tenement]
targets:
  description: Where each of RV(paths) is (or would be) on this host, links above the set's paths resolved.
  returned: state=restored
  type: list
  elements: str
  sample: [/etc/tenement, /var/lib/tenement]
recovered:
  description: Earlier restores of this host that this run finished or undid (interrupted), or recorded as kept
    (never committed, and superseded by this one).
  returned: state=restored, not in check mode
  type: list
  elements: dict
  sample: [{restore_id: 20261121T040000Z-0a1b2c3d, state: rolled_back, swaps: [{target: /var/lib/tenement, safety: ""}]}]
files: {description: Files written., returned: state=restored, not in check mode, type: int, sample: 1004}
bytes: {description: Bytes written., returned: state=restored, not in check mode, type: int, sample: 1079981582}
seconds: {description: Seconds taken, verification included., returned: state=restored, not in check mode, type: float, sample: 7.5}
metadata: {description: What the set recorded (for tenement, the running instances)., returned: state=restored, type: dict, sample: {running: [demo:alpha]}}
app_version: {description: The application version the set was made from., returned: state=restored, type: str, sample: 0.2.2}
"""


from ansible.module_utils.basic import AnsibleModule

from ansible_collections.selfhost.dr.plugins.module_utils._common import BackupError, JournalError, RestoreError
from ansible_collections.selfhost.dr.plugins.module_utils.engine.journal import STATE_DIR_SPEC, Journal
from ansible_collections.selfhost.dr.plugins.module_utils.engine.swap import check, commit, restore, rollback


def _ids(p: dict) -> list[str]:
    if p["restore_id"]:
        return [p["restore_id"]]
    ids: list[str] = []
    journal = Journal(p["state_dir"])
    for swap in p["swaps"]:
        record = journal.find(str(swap.get("target", "")), str(swap.get("safety", "")))
        if record.id not in ids:
            ids.append(record.id)
    return ids


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            path=dict(type="path"),
            paths=dict(type="list", elements="path", default=[]),
            dest_root=dict(type="path", default="/"),
            state=dict(type="str", default="restored", choices=["restored", "rolled_back", "committed"]),
            restore_id=dict(type="str"),
            swaps=dict(type="list", elements="dict", default=[]),
            keep_safety=dict(type="bool", default=False),
            **STATE_DIR_SPEC,
        ),
        required_if=[("state", "restored", ["path"])],
        supports_check_mode=True,
    )
    p = module.params
    try:
        if p["state"] != "restored":
            if not p["restore_id"] and not p["swaps"]:
                # A failed restore already put everything back itself: a rescue step has nothing to name.
                module.exit_json(changed=False, msg="no restore_id given; nothing to do")
            if p["swaps"] and not p["restore_id"]:
                module.deprecate("swaps is deprecated; pass restore_id", version="2.0.0", collection_name="selfhost.dr")
            ids = _ids(p)
            if p["state"] == "committed":
                changed = [commit(i, p["state_dir"], module.check_mode, p["keep_safety"]) for i in ids]
            else:
                changed = [rollback(i, p["state_dir"], check=module.check_mode) for i in ids]
            module.exit_json(changed=any(changed), restore_ids=ids)
        if module.check_mode:
            manifest, units = check(p["path"], p["dest_root"], p["paths"], p["state_dir"], module.log)
            module.exit_json(
                changed=True,
                paths=[u.path for u in units],
                targets=[u.target for u in units],
                metadata=manifest.get("metadata", {}),
                app_version=manifest.get("app_version", ""),
            )
        done = restore(p["path"], dest_root=p["dest_root"], only=p["paths"], log=module.log, state_dir=p["state_dir"])
    except (BackupError, RestoreError, JournalError) as exc:
        module.fail_json(msg=str(exc))
    module.exit_json(
        changed=True,
        restore_id=done.restore_id,
        swaps=[s.to_dict() for s in done.swaps],
        paths=done.paths,
        targets=done.targets,
        recovered=done.recovered,
        files=done.files,
        bytes=done.bytes,
        seconds=done.seconds,
        metadata=done.manifest.get("metadata", {}),
        app_version=done.manifest.get("app_version", ""),
    )


if __name__ == "__main__":
    main()
