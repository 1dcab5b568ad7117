#!/usr/bin/python
# Copyright: selfhost.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
---
module: drill_report
short_description: Write a DR drill's report (JSON, Markdown, JUnit XML) with every host's steps, checks, RTO and RPO
version_added: 0.3.0
description:
  - Runs where the report is kept (the controller, in role M(selfhost.dr.drill)). One suite per drilled host - the
    role's steps (C(source), C(target), C(install)), the cases M(selfhost.dr.drill_run) returned, the steps never
    reached as skipped, and RTO and RPO with their targets.
  - RTO is the time from the host's drill start to its last check passing (every step included - fetching the
    set, making the target, installing, verifying, restoring, spawning, checking); RPO is the drill's start minus
    the start of the set it restored. A target missed is a failing case.
  - Writes C(BASENAME.json), C(BASENAME.md) (for a CI job summary) and C(BASENAME.xml) (JUnit - one testsuite per
    host, one testcase per step, check and target, the figures as properties) into O(dir).
  - Never fails for a failed drill - C(status) and C(failures) say it, so the role can tear the targets down first.
author:
  - selfhost.dr developers
attributes:
  check_mode:
    support: full
    description: Builds the report and writes nothing.
  diff_mode:
    support: none
  idempotent:
    support: none
    description: Every run writes the report of the results given.
options:
  results:
    description:
      - One per host - C(host), C(target) (where it was drilled), C(started) and C(finished) (seconds since the
        epoch, on the controller), C(steps) (the role's, each C(name), C(status), C(seconds), C(message)), C(cases)
        and C(properties) (what M(selfhost.dr.drill_run) returned).
    type: list
    elements: dict
    required: true
  dir:
    description: Where the three files go (made when missing, mode 0755).
    type: path
    required: true
  basename:
    description: The files' name without extension.
    type: str
    default: drill
  title:
    description: The report's title.
    type: str
    default: DR drill
  rto_target:
    description: Seconds the RTO may take; 0 sets no target.
    type: float
    default: 0
  rpo_target:
    description: Seconds the RPO may be; 0 sets no target.
    type: float
    default: 0
seealso:
  - module: selfhost.dr.drill_run
"""

EXAMPLES = r"""
- name: Write the drill's report
  selfhost.dr.drill_report:
    results: "{{ ansible_play_hosts | map('extract', hostvars, '_drill_result') | list }}"
    dir: "{{ playbook_dir }}/drill-report"
    rto_target: 900
    rpo_target: 90000
  delegate_to: localhost
  run_once: true
"""

RETURN = r"""
status:
  description: C(passed) when every host's drill passed and met its targets, else C(failed).
  returned: always
  type: str
failures:
  description: Each host whose drill failed - C(host), C(case) (the first case that failed) and C(message).
  returned: always
  type: list
  elements: dict
paths:
  description: The files written - C(json), C(markdown), C(junit).
  returned: when not in check mode
  type: dict
hosts:
  description: Each host's C(host), C(status), C(rto_seconds), C(rpo_seconds), C(set), C(target) and C(set_sha256).
  returned: always
  type: list
  elements: dict
"""

import os

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.selfhost.dr.plugins.module_utils import reports
from ansible_collections.selfhost.dr.plugins.module_utils._common import Error
from ansible_collections.selfhost.dr.plugins.module_utils.engine import drill


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            results=dict(type="list", elements="dict", required=True),
            dir=dict(type="path", required=True),
            basename=dict(type="str", default="drill"),
            title=dict(type="str", default="DR drill"),
            rto_target=dict(type="float", default=0.0),
            rpo_target=dict(type="float", default=0.0),
        ),
        supports_check_mode=True,
    )
    p = module.params
    report = drill.report_of(p["results"], p["rto_target"], p["rpo_target"], p["title"])
    failed = [
        {"host": s.name, "case": s.failed_case.name, "message": s.failed_case.message}
        for s in report.suites
        if s.failed_case is not None
    ]
    hosts = [
        {
            "host": s.name,
            "status": s.status,
            **{k: s.properties.get(k) for k in ("rto_seconds", "rpo_seconds", "set", "target", "set_sha256")},
        }
        for s in report.suites
    ]
    common = dict(status=report.status, failures=failed, hosts=hosts)
    if module.check_mode:
        module.exit_json(changed=False, **common)
    try:
        os.makedirs(p["dir"], mode=0o755, exist_ok=True)
        paths = reports.write(report, p["dir"], p["basename"])
    except (Error, OSError) as exc:
        module.fail_json(msg=f"the drill report could not be written into {p['dir']}: {exc}", **common)
    module.exit_json(changed=True, paths=paths, **common)


if __name__ == "__main__":
    main()
