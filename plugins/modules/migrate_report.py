#!/usr/bin/python
# Copyright: selfhost.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
---
module: migrate_report
short_description: Write a migration's report - JSON, Markdown and JUnit XML, a row per old-to-new pair
version_added: 0.4.0
description:
  - Runs on the controller after role M(selfhost.dr.migrate) - each pair's phases (preflight, seed, freeze, sync,
    verify, cutover, post-verify, and the rollback when one ran) with their seconds and, for a failed one, why; the
    downtime (from the freeze to the new server serving, or to the old one serving again); the bytes of the seed
    and of the delta; and what became of the pair - C(migrated), C(rolled back), C(not migrated) (it failed before
    the freeze, the old server never stopped) or C(rollback failed).
  - Phases a failure kept from running are reported as skipped; a pair that ended without saying why fails at the
    first phase it did not reach.
author:
  - selfhost.dr developers
attributes:
  check_mode:
    support: full
    description: Builds the report and returns its status; writes nothing.
  diff_mode:
    support: none
  idempotent:
    support: none
    description: Writes the report again.
options:
  results:
    description: Each pair's record, as the role sets it in C(_migrate_result) on the old server.
    type: list
    elements: dict
    required: true
  dir:
    description: Where the report files are written (made when missing).
    type: path
    required: true
  not_started:
    description:
      - The pairs a fleet migration never started because its failure budget was spent, each C(old) and C(new);
        reported with every phase skipped and the outcome C(not started).
    type: list
    elements: dict
    default: []
  basename:
    description: The report files' name, without the extension.
    type: str
    default: migration
  title:
    description: The report's title.
    type: str
    default: Migration
seealso:
  - module: selfhost.dr.migrate_source
  - module: selfhost.dr.migrate_target
"""

EXAMPLES = r"""
- name: Write the migration's report
  selfhost.dr.migrate_report:
    results: "{{ ansible_play_hosts_all | map('extract', hostvars, '_migrate_result') | select('defined') | list }}"
    dir: "{{ playbook_dir }}/migration-report"
  delegate_to: localhost
  run_once: true
"""

RETURN = r"""
status:
  description: C(passed) when every pair migrated, else C(failed).
  returned: always
  type: str
pairs:
  description: Each pair's C(pair), C(result), C(failed_phase), C(message) and C(downtime_seconds).
  returned: always
  type: list
  elements: dict
paths:
  description: The files written - C(json), C(markdown), C(junit).
  returned: when not in check mode
  type: dict
"""

import os

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.selfhost.dr.plugins.module_utils import reports
from ansible_collections.selfhost.dr.plugins.module_utils._common import Error
from ansible_collections.selfhost.dr.plugins.module_utils.engine import migrate


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            results=dict(type="list", elements="dict", required=True),
            not_started=dict(type="list", elements="dict", default=[]),
            dir=dict(type="path", required=True),
            basename=dict(type="str", default="migration"),
            title=dict(type="str", default="Migration"),
        ),
        supports_check_mode=True,
    )
    p = module.params
    report = migrate.report_of(p["results"], p["title"], p["not_started"])
    pairs = [
        {
            "pair": s.name,
            "result": s.properties.get("result"),
            "failed_phase": s.properties.get("failed_phase"),
            "message": s.failed_case.message if s.failed_case is not None else "",
            "downtime_seconds": s.properties.get("downtime_seconds"),
        }
        for s in report.suites
    ]
    if module.check_mode:
        module.exit_json(changed=False, status=report.status, pairs=pairs)
    try:
        os.makedirs(p["dir"], mode=0o755, exist_ok=True)
        paths = reports.write(report, p["dir"], p["basename"])
    except (Error, OSError) as exc:
        module.fail_json(msg=f"the migration report could not be written into {p['dir']}: {exc}", pairs=pairs)
    module.exit_json(changed=True, status=report.status, pairs=pairs, paths=paths)


if __name__ == "__main__":
    main()
