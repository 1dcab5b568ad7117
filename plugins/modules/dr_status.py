#!/usr/bin/python
# Copyright: selfhost.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
---
module: dr_status
short_description: What selfhost-dr last did on a host, and the sets it has
version_added: 0.2.0
description:
  - Returns the host's status store (C(state.json) in the state directory), which C(selfhost-dr) writes on every
    C(backup), C(verify), C(prune) and C(restore) run and every C(run) of a schedule, and a summary of the sets in
    O(path).
  - Per operation, the last attempt, the last success and the last failure, each with its start and end (UTC, ISO
    8601), duration, exit status, the failure's one sentence, the schedule that started it, and the set it wrote,
    verified or restored with its size; and the outcome of the run's heartbeats (named by scheme and host only).
  - An attempt whose C(finished_at) is empty never finished (it runs now, see RV(running), or it was killed).
  - Reads only; never sets a damaged C(state.json) aside (the next C(selfhost-dr) run does), but says so in
    RV(state_problem).
author:
  - selfhost.dr developers
attributes:
  check_mode:
    support: full
  diff_mode:
    support: none
  idempotent:
    support: full
options:
  path:
    description: The backup directory whose sets are summarised.
    type: path
    default: /var/backups/selfhost-dr
  app:
    description: Only sets of this application.
    type: str
extends_documentation_fragment:
  - selfhost.dr.state_dir
seealso:
  - module: selfhost.dr.backup_info
  - module: selfhost.dr.host_command
"""

EXAMPLES = r"""
- name: What did the host's timers do?
  selfhost.dr.dr_status:
  register: dr

- name: Fail when the last backup failed
  ansible.builtin.assert:
    that: dr.operations.backup.last_attempt.ok | default(false)
    fail_msg: "{{ dr.operations.backup.last_failure.reason | default('no backup ran yet') }}"
"""

RETURN = r"""
operations:
  description:
    - Per operation (V(backup), V(verify), V(prune), V(restore)) that ran at least once, its C(last_attempt),
      C(last_success) and C(last_failure) (each absent until there is one) and its C(heartbeats).
  returned: always
  type: dict
  sample:
    backup:
      last_attempt:
        run_id: 0b6f3c3e-5a55-4a9c-8b1e-7cf2b1a4c0de
        operation: backup
        started_at: "2026-11-22T03:00:00.000000Z"
        finished_at: "2026-11-22T03:01:30.500000Z"
        duration_seconds: 90.5
        ok: true
        exit_code: 0
        reason: ""
        schedule: nightly
        app: tenement
        set_path: /var/backups/selfhost-dr/tenement-web1-20261122T030000Z-hot.tar.zst
        set_bytes: 600238142
        sets: 1
      heartbeats: [{kind: start, to: "https://hc-ping.com", ok: true, error: ""}]
schedules:
  description:
    - Per schedule that ran at least once (C(selfhost-dr run NAME), the role C(schedule)'s timers), the same
      records of the whole run; its C(operation) lists the operations it ran, comma-separated.
  returned: always
  type: dict
  sample:
    daily:
      last_success: {run_id: 7e0c..., operation: "backup,prune", schedule: daily, ok: true, exit_code: 0}
state_file:
  description: The status store read.
  returned: always
  type: str
  sample: /var/lib/selfhost-dr/state.json
state_problem:
  description: Why the status store could not be read (then RV(operations) is empty), or an empty string.
  returned: always
  type: str
  sample: ""
running:
  description: The run that holds the host lock now (pid, operation, schedule, since), or null.
  returned: always
  type: dict
  sample: {pid: 4242, operation: backup, schedule: nightly, since: "2026-11-22T03:00:00.000000Z"}
sets:
  description: The sets of O(path) (an empty summary when it does not exist).
  returned: always
  type: dict
  contains:
    count: {description: How many sets., type: int, sample: 7}
    states: {description: Sets per verification state., type: dict, sample: {verified: 6, unverified: 1, failed: 0, changed: 0}}
    latest: {description: The newest set as M(selfhost.dr.backup_info) lists it, or an empty dict., type: dict}
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.selfhost.dr.plugins.module_utils._common import BackupError
from ansible_collections.selfhost.dr.plugins.module_utils.engine.journal import STATE_DIR_SPEC
from ansible_collections.selfhost.dr.plugins.module_utils.engine.lock import held
from ansible_collections.selfhost.dr.plugins.module_utils.engine.metrics import SET_STATES
from ansible_collections.selfhost.dr.plugins.module_utils.engine.state import Store
from ansible_collections.selfhost.dr.plugins.module_utils.sets.catalog import catalog


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            path=dict(type="path", default="/var/backups/selfhost-dr"),
            app=dict(type="str"),
            **STATE_DIR_SPEC,
        ),
        supports_check_mode=True,
    )
    p = module.params
    store = Store(p["state_dir"])
    recorded = store.read()
    try:
        sets = catalog(p["path"], app=p["app"])
    except BackupError:
        sets = []
    states = dict.fromkeys(SET_STATES, 0)
    for entry in sets:
        name = str(dict(entry.get("verification") or {}).get("state", "unverified"))  # type: ignore[call-overload]
        states[name if name in states else "unverified"] += 1
    module.exit_json(
        changed=False,
        operations=recorded.get("operations", {}),
        schedules=recorded.get("schedules", {}),
        state_file=store.path,
        state_problem=store.problem,
        running=held(p["state_dir"]),
        sets={"count": len(sets), "states": states, "latest": sets[0] if sets else {}},
    )


if __name__ == "__main__":
    main()
