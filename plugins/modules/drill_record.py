#!/usr/bin/python
# Copyright: selfhost.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
---
module: drill_record
short_description: Record a DR drill of a set where the set lives - beside it, and in the host's state and metrics
version_added: 0.3.0
description:
  - Runs on the drilled host (role M(selfhost.dr.drill) after its report). Writes C(SET.drilled.json) beside the
    set - when, passed or not and why, RTO and RPO, and the set as it was drilled (its checksum file's sha256, size
    and mtime). M(selfhost.dr.backup_info) and C(selfhost-dr list) then show the set's C(verification.drilled) while
    it is still that file - a verification level above a deep one.
  - With O(state), also records the drill in the host's C(state.json) (section C(drills), per application), from
    which C(selfhost-dr status --export) writes C(selfhost_dr_drill_*) into the node_exporter textfile.
  - A set that is gone or changed since it was drilled is not marked (C(marked) false, with the reason).
  - A drill of a restic repository's snapshot has no set to mark (the drill tagged the snapshot in the repository) -
    give O(source) instead of O(path), and the drill is recorded in the host's state and metrics only.
author:
  - selfhost.dr developers
attributes:
  check_mode:
    support: full
    description: Says whether the set would be marked, writes nothing.
  diff_mode:
    support: none
  idempotent:
    support: none
    description: Every run records a drill.
options:
  path:
    description: The set that was drilled. Give this or O(source).
    type: path
  source:
    description: What was drilled, when it was not a set on this host (e.g. C(snapshot 1a2b3c4d of offsite)).
    type: str
  app:
    description: The application.
    type: str
    required: true
  ok:
    description: The drill passed and met its targets.
    type: bool
    required: true
  reason:
    description: Why it failed (one sentence).
    type: str
    default: ""
  rto_seconds:
    description: The RTO the drill measured.
    type: float
  rpo_seconds:
    description: The RPO the drill measured.
    type: float
  sha256:
    description:
      - The whole-file sha256 of the set as the drill verified it (M(selfhost.dr.drill_run)'s C(set_sha256)); the set
        is marked as passed only while its checksum file still says this (a failed drill is recorded in any case).
        Empty marks the set as its checksum file says now.
    type: str
    default: ""
  report:
    description: Where the drill's report is (on the controller), for a person who reads the marker.
    type: str
    default: ""
  state:
    description: Record the drill in the host's C(state.json) too (false for a set on the controller).
    type: bool
    default: true
extends_documentation_fragment:
  - selfhost.dr.state_dir
seealso:
  - module: selfhost.dr.drill_report
  - module: selfhost.dr.backup_info
"""

EXAMPLES = r"""
- name: Mark the set as drilled
  selfhost.dr.drill_record:
    path: /var/backups/selfhost-dr/tenement-web-1-20261129T020000Z-hot.tar.zst
    app: tenement
    ok: true
    rto_seconds: 48.2
    rpo_seconds: 3605

- name: Record a drill of a repository's snapshot in the host's state and metrics
  selfhost.dr.drill_record:
    source: snapshot 1a2b3c4d of offsite
    app: tenement
    ok: false
    reason: "fetch failed: the store could not be reached"
"""

RETURN = r"""
marked:
  description: The set was marked (it is still the file that was drilled).
  returned: always
  type: bool
reason:
  description: Why it was not marked.
  returned: when not marked
  type: str
drilled:
  description: What the marker says - C(drilled_at), C(ok), C(reason), C(rto_seconds), C(rpo_seconds), C(report).
  returned: when marked
  type: dict
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.selfhost.dr.plugins.module_utils._common import BackupError, Error, iso, utc_now
from ansible_collections.selfhost.dr.plugins.module_utils.engine.journal import STATE_DIR_SPEC
from ansible_collections.selfhost.dr.plugins.module_utils.engine.state import Store
from ansible_collections.selfhost.dr.plugins.module_utils.sets.manifest import read_checksum
from ansible_collections.selfhost.dr.plugins.module_utils.sets.names import Sidecars
from ansible_collections.selfhost.dr.plugins.module_utils.sets.verify import record_drill


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            path=dict(type="path"),
            source=dict(type="str"),
            app=dict(type="str", required=True),
            ok=dict(type="bool", required=True),
            reason=dict(type="str", default=""),
            rto_seconds=dict(type="float"),
            rpo_seconds=dict(type="float"),
            sha256=dict(type="str", default=""),
            report=dict(type="str", default=""),
            state=dict(type="bool", default=True),
            **STATE_DIR_SPEC,
        ),
        mutually_exclusive=[("path", "source")],
        required_one_of=[("path", "source")],
        supports_check_mode=True,
    )
    p = module.params
    what = p["path"] or p["source"]
    present = ""
    if p["path"]:
        try:
            now = read_checksum(Sidecars.of(p["path"]).checksum)
            if p["ok"] and p["sha256"] and now != p["sha256"]:  # (a failed drill is recorded whatever was verified)
                present = f"{p['path']} is not the file that was drilled (its checksum changed since)"
        except BackupError as exc:
            present = str(exc)
    if module.check_mode:
        module.exit_json(changed=not present, marked=False, reason=present or "check mode")
    result: dict[str, object] = {"marked": False}
    try:
        if not p["path"]:
            result["reason"] = f"{what} is not a set: the drill is recorded in the host's state only"
        elif present:
            result["reason"] = f"the set was not marked: {present}"
        else:
            try:
                result["drilled"] = record_drill(
                    p["path"], p["ok"], p["reason"], p["rto_seconds"], p["rpo_seconds"], p["report"]
                )
                result["marked"] = True
            except FileNotFoundError:  # pruned since the drill
                result["reason"] = f"the set was not marked: {p['path']} is gone"
        if p["state"]:
            entry = {
                "at": iso(utc_now()),
                "ok": p["ok"],
                "reason": "" if p["ok"] else p["reason"] or "the drill failed",
                "set": what,
                "rto_seconds": p["rto_seconds"],
                "rpo_seconds": p["rpo_seconds"],
            }
            Store(p["state_dir"]).record_drill(p["app"], entry)
    except (Error, OSError) as exc:
        module.fail_json(msg=f"the drill of {what} could not be recorded: {exc}")
    module.exit_json(changed=True, **result)


if __name__ == "__main__":
    main()
