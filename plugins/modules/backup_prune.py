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

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.selfhost.dr.plugins.module_utils._common import BackupError, parse_iso
from ansible_collections.selfhost.dr.plugins.module_utils.sets.catalog import catalog, remove_set
from ansible_collections.selfhost.dr.plugins.module_utils.sets.names import parse_name, token
from ansible_collections.selfhost.dr.plugins.module_utils.sets.retention import (
    FUTURE,
    Item,
    Policy,
    RetentionError,
    parse_duration,
    plan,
    timezone_named,
)

FIELDS = ("app", "host", "label")


def as_in_name(key: str, value: object) -> str | None:
    """``value`` as set_name() writes it into a file name (an app's ``-`` becomes ``_``), or None for a non-string."""
    if not isinstance(value, str):
        return None
    written = token(value)
    return written.replace("-", "_") if key == "app" else written


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _time(entry: Mapping[str, object]) -> datetime | None:
    when = entry.get("time")
    if not isinstance(when, str):
        return None
    try:
        return parse_iso(when)
    except ValueError:
        return None


def _verified(entry: Mapping[str, object]) -> bool:
    verification = entry.get("verification")
    return isinstance(verification, dict) and verification.get("state") == "verified"


@dataclass
class Selection:
    """The catalog entries a prune looks at: those to plan, and those kept without planning (with the reason)."""

    items: list[Item] = field(default_factory=list)
    refused: list[dict[str, object]] = field(default_factory=list)
    sets: dict[str, Mapping[str, object]] = field(default_factory=dict)


def select(
    entries: Iterable[Mapping[str, object]], wanted: Mapping[str, str | None], group_by: Sequence[str]
) -> Selection:
    """The entries that the file name or the manifest puts under the ``wanted`` app, host and label.

    Only an entry whose file name parses, whose manifest agrees with it on app and host (and on label when a label
    is wanted), and whose name matches ``wanted`` is planned, grouped by the values in its name. An entry that only
    one of the two puts under ``wanted``, or whose name does not parse, is kept and listed in ``refused``; an entry
    that neither puts there is left out.
    """
    want = {key: as_in_name(key, value) for key, value in wanted.items() if value is not None}
    compared = ("app", "host", "label") if "label" in want else ("app", "host")
    selection = Selection()
    for entry in entries:
        name = str(entry.get("name", ""))
        parts = parse_name(name)
        in_name = {key: str(parts[key]) for key in FIELDS} if parts else None
        in_manifest = {key: as_in_name(key, entry.get(key)) for key in FIELDS}
        by_name = in_name is not None and all(in_name[key] == value for key, value in want.items())
        by_manifest = all(in_manifest[key] == value for key, value in want.items())
        if not (by_name or by_manifest):
            continue
        selection.sets[name] = entry
        if in_name is None:
            reason = "the file name is not a set name (app-host-time-label), so it is never deleted"
            selection.refused.append({"name": name, "reasons": [reason]})
            continue
        if entry.get("manifest", "ok") != "ok":
            reason = f"its sidecar manifest cannot be used ({entry.get('manifest')}), so it is never deleted"
            selection.refused.append({"name": name, "reasons": [reason]})
            continue
        wrong = [key for key in compared if in_manifest[key] != in_name[key]]
        if wrong:
            reasons = [
                f"the manifest says {key} {_shown(entry.get(key))}, the file name says {in_name[key]!r}"
                for key in wrong
            ]
            selection.refused.append({"name": name, "reasons": reasons})
            continue
        group = tuple(in_name[key] for key in group_by)
        selection.items.append(Item(name, _time(entry), _verified(entry), group))
    return selection


def read_catalog(directory: str) -> list[dict[str, object]]:
    """catalog(), with a malformed sidecar manifest reported as a BackupError in one sentence."""
    try:
        return catalog(directory)
    except BackupError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise BackupError(
            f"a sidecar manifest in {directory} is malformed ({type(exc).__name__}: {str(exc)[:80]}); nothing was deleted"
        ) from exc


def _size(entry: Mapping[str, object]) -> int:
    size = entry.get("size")
    return size if isinstance(size, int) else 0


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
        selection = select(read_catalog(p["path"]), {k: p[k] for k in FIELDS}, p["group_by"])
        decisions = plan(selection.items, policy)
    except (BackupError, RetentionError) as exc:
        module.fail_json(msg=str(exc))
    by_name = selection.sets
    doomed = [d.item.name for d in decisions if not d.keep]
    kept = [{"name": d.item.name, "reasons": d.reasons} for d in decisions if d.keep] + selection.refused
    future = [d.item.name for d in decisions if FUTURE in d.reasons]
    if future:
        module.warn(
            f"{len(future)} backup set(s) dated more than {policy.future_tolerance.total_seconds() / 60:.0f} minutes "
            "in the future were kept and counted by no retention rule; check the clock of the host that wrote them "
            "(see 'future')"
        )
    freed = 0
    if module.check_mode:
        freed = sum(_size(by_name[n]) for n in doomed)
    else:
        for name in doomed:
            freed += remove_set(str(by_name[name]["path"]))
    result = dict(changed=bool(doomed), deleted=doomed, kept=kept, future=future, freed_bytes=freed)
    if module._diff:
        before = sorted(by_name)
        result["diff"] = dict(
            before="\n".join(before) + "\n", after="\n".join(n for n in before if n not in doomed) + "\n"
        )
    module.exit_json(**result)


if __name__ == "__main__":
    main()
