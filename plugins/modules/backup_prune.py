#!/usr/bin/python
# Copyright: selfhost.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
---
module: backup_prune
short_description: Delete the backup sets that no retention rule keeps
version_added: 0.1.0
description:
  - Applies a retention policy to the sets written by M(selfhost.dr.backup_create) in O(path), like restic's
    C(forget). A set survives when any rule keeps it; the others are deleted with their sidecar files.
  - The sets are grouped by O(group_by) (by default application, host and label, so hot, cold and per-instance sets
    are counted apart) and each group is pruned on its own.
  - The newest verified set of each group (see M(selfhost.dr.backup_verify)) is never deleted, whatever the rules say.
    A set whose time cannot be read is never deleted.
  - At least one rule must be set; a policy with none is refused rather than deleting everything.
author:
  - selfhost.dr developers
attributes:
  check_mode:
    support: full
    description: Lists what would be deleted, and why each kept set is kept, without deleting anything.
  diff_mode:
    support: full
    description: The set names before and after.
  idempotent:
    support: full
options:
  path:
    description: The backup directory.
    type: path
    required: true
  keep_last:
    description: Keep the N newest sets.
    type: int
    default: 0
  keep_within:
    description:
      - Keep every set newer than this duration before the newest set of its group, written as C(1y6m2w3d12h) with
        any of the parts (years, months, weeks, days, hours), for example V(7d) or V(6m).
      - Measured from the newest set, not from now, so a host that stopped backing up keeps its history.
    type: str
  keep_hourly:
    description: For the last N hours that have a set, keep the newest set of each.
    type: int
    default: 0
  keep_daily:
    description: For the last N days that have a set, keep the newest set of each.
    type: int
    default: 0
  keep_weekly:
    description: For the last N ISO weeks (Monday to Sunday) that have a set, keep the newest set of each.
    type: int
    default: 0
  keep_monthly:
    description: For the last N calendar months that have a set, keep the newest set of each.
    type: int
    default: 0
  keep_yearly:
    description: For the last N years that have a set, keep the newest set of each.
    type: int
    default: 0
  keep_all:
    description: Keep every set (nothing is deleted); useful to switch pruning off without removing the task.
    type: bool
    default: false
  group_by:
    description: The fields whose values form the groups that are pruned apart. An empty list prunes all sets together.
    type: list
    elements: str
    choices: [app, host, label]
    default: [app, host, label]
  timezone:
    description: The time zone of the calendar (days, weeks, months), as an IANA name such as V(Europe/Berlin).
    type: str
    default: UTC
  app:
    description: Only prune sets of this application; others are left alone.
    type: str
  host:
    description: Only prune sets of this host.
    type: str
  label:
    description: Only prune sets with this label.
    type: str
seealso:
  - module: selfhost.dr.backup_info
  - module: selfhost.dr.backup_verify
"""

EXAMPLES = r"""
- name: Keep 7 daily, 4 weekly and 6 monthly sets of tenement
  selfhost.dr.backup_prune:
    path: /var/backups/selfhost-dr
    app: tenement
    keep_daily: 7
    keep_weekly: 4
    keep_monthly: 6
    timezone: Europe/Berlin

- name: What would go if only the last 3 were kept?
  selfhost.dr.backup_prune:
    path: /var/backups/selfhost-dr
    keep_last: 3
  check_mode: true
  register: would
"""

RETURN = r"""
deleted:
  description: Names of the sets deleted (in check mode, that would be deleted).
  returned: always
  type: list
  elements: str
  sample: [tenement-web1-20261101T020000Z-hot.tar.zst]
kept:
  description: The sets kept, each with the rules that keep it.
  returned: always
  type: list
  elements: dict
  sample: [{name: tenement-web1-20261122T020000Z-hot.tar.zst, reasons: [last 3, daily 1]}]
freed_bytes:
  description: Bytes freed (in check mode, that would be freed).
  returned: always
  type: int
  sample: 1200476284
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.selfhost.dr.plugins.module_utils.backup_set import (
    BackupError,
    catalog,
    parse_iso,
    remove_set,
)
from ansible_collections.selfhost.dr.plugins.module_utils.retention import (
    Item,
    Policy,
    RetentionError,
    parse_duration,
    plan,
    timezone_named,
)

FIELDS = ("app", "host", "label")


def main() -> None:
    rules = ("last", "hourly", "daily", "weekly", "monthly", "yearly")
    module = AnsibleModule(
        argument_spec=dict(
            path=dict(type="path", required=True),
            keep_within=dict(type="str"),
            keep_all=dict(type="bool", default=False),
            group_by=dict(
                type="list", elements="str", choices=["app", "host", "label"], default=["app", "host", "label"]
            ),
            timezone=dict(type="str", default="UTC"),
            app=dict(type="str"),
            host=dict(type="str"),
            label=dict(type="str"),
            **{f"keep_{rule}": dict(type="int", default=0) for rule in rules},
        ),
        supports_check_mode=True,
    )
    p = module.params
    try:
        policy = Policy(
            within=parse_duration(p["keep_within"]) if p["keep_within"] else None,
            keep_all=p["keep_all"],
            tz=timezone_named(p["timezone"]),
            **{rule: p[f"keep_{rule}"] for rule in rules},
        )
        sets = [
            s for s in catalog(p["path"]) if all(p[k] is None or s.get(k) == p[k] for k in ("app", "host", "label"))
        ]
        items = []
        for s in sets:
            try:
                when = parse_iso(str(s.get("time", "")))
            except ValueError:
                when = None
            verified = s["verification"]["state"] == "verified"
            items.append(Item(str(s["name"]), when, verified, tuple(str(s.get(k, "")) for k in p["group_by"])))
        decisions = plan(items, policy)
    except (BackupError, RetentionError) as exc:
        module.fail_json(msg=str(exc))
    by_name = {str(s["name"]): s for s in sets}
    doomed = [d.item.name for d in decisions if not d.keep]
    kept = [{"name": d.item.name, "reasons": d.reasons} for d in decisions if d.keep]
    freed = 0
    if module.check_mode:
        freed = sum(int(by_name[n]["size"]) for n in doomed)
    else:
        for name in doomed:
            freed += remove_set(str(by_name[name]["path"]))
    result = dict(changed=bool(doomed), deleted=doomed, kept=kept, freed_bytes=freed)
    if module._diff:
        before = sorted(by_name)
        result["diff"] = dict(
            before="\n".join(before) + "\n", after="\n".join(n for n in before if n not in doomed) + "\n"
        )
    module.exit_json(**result)


if __name__ == "__main__":
    main()
