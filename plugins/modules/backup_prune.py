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
  - A set dated more than one hour after the current UTC time (a clock that was wrong when it was written) is never
    deleted and counts for no rule, so it cannot push the real sets out of O(keep_within) or the calendar rules. It is
    listed in RV(future) and in RV(kept), and the module warns about it.
  - A set's application, host and label are read from its file name and from its sidecar manifest, and both must
    agree; the manifest is a file beside the archive and is not trusted on its own. Values are compared as they are
    written in file names (characters other than letters, digits, C(_ . -) become C(_); in an application name C(-)
    becomes C(_) as well). A set whose file name is not a set name, or whose manifest names another application or
    host than its file name (or another label, when O(label) is set), is never deleted; it is listed in RV(kept) with
    the reason. Groups (O(group_by)) use the values in the file names.
  - At least one rule must be set; a policy with none is refused rather than deleting everything.
  - If listing the sets breaks on a malformed sidecar manifest, the module fails with one sentence saying so before
    it deletes anything.
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
      - Measured from the newest set, not from now, so a host that stopped backing up keeps its history. A set dated
        more than an hour in the future is not the newest set (see above).
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
    description:
      - Only prune sets of this application; others are left alone.
      - A set is of this application only when both its file name and its manifest say so.
    type: str
  host:
    description: Only prune sets of this host (by file name and manifest, as for O(app)).
    type: str
  label:
    description: Only prune sets with this label (by file name and manifest, as for O(app)).
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
  sample:
    - {name: tenement-web1-20261122T020000Z-hot.tar.zst, reasons: [last 3, daily 1]}
    - {name: tenement-web1-20271122T020000Z-hot.tar.zst, reasons: ["dated in the future (clock skew?)"]}
    - {name: tomo-web1-20261120T020000Z-hot.tar.zst, reasons: ["the manifest says app 'tenement', the file name says 'tomo'"]}
future:
  description:
    - Names of the sets dated more than one hour after the current UTC time; they are kept and counted by no rule.
    - Check the clock of the host that wrote them, then remove or rename them by hand.
  returned: always
  type: list
  elements: str
  sample: [tenement-web1-20271122T020000Z-hot.tar.zst]
freed_bytes:
  description: Bytes freed (in check mode, that would be freed).
  returned: always
  type: int
  sample: 1200476284
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.selfhost.dr.plugins.module_utils._common import BackupError
from ansible_collections.selfhost.dr.plugins.module_utils.engine.prune import FIELDS, RULES, policy_of, prune
from ansible_collections.selfhost.dr.plugins.module_utils.sets.retention import RetentionError


def main() -> None:
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
            **{f"keep_{rule}": dict(type="int", default=0) for rule in RULES},
        ),
        supports_check_mode=True,
    )
    p = module.params
    try:
        done = prune(p["path"], policy_of(p), {k: p[k] for k in FIELDS}, p["group_by"], module.check_mode)
    except (BackupError, RetentionError) as exc:
        module.fail_json(msg=str(exc))
    if done.future:
        module.warn(
            f"{len(done.future)} backup set(s) dated more than "
            f"{done.policy.future_tolerance.total_seconds() / 60:.0f} minutes in the future were kept and counted by "
            "no retention rule; check the clock of the host that wrote them (see 'future')"
        )
    result = dict(
        changed=bool(done.deleted),
        deleted=done.deleted,
        kept=done.kept,
        future=done.future,
        freed_bytes=done.freed_bytes,
    )
    if module._diff:
        after = [n for n in done.before if n not in done.deleted]
        result["diff"] = dict(before="\n".join(done.before) + "\n", after="\n".join(after) + "\n")
    module.exit_json(**result)


if __name__ == "__main__":
    main()
