# Copyright: selfhost.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Pruning a directory of sets by retention rules: which sets a prune may look at (their name and manifest must
agree), the plan, and the deletion. Never the newest verified set of a group; a set dated in the future takes no
rule's slot and is kept.

Sets made by schedules (``SET.schedules.json``, see ``sets/tags.py``) are pruned by their schedules' retention
(:func:`prune_by_schedule`): a set is kept while any schedule it was made for keeps it among that schedule's sets.
:func:`prune`, which knows no schedule, keeps every set a schedule made."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from .._common import BackupError, parse_iso
from ..sets.catalog import catalog, remove_set
from ..sets.names import parse_name, token
from ..sets.retention import (
    FUTURE,
    Item,
    Policy,
    parse_duration,
    plan,
    timezone_named,
)

FIELDS = ("app", "host", "label")
_SECOND_RE = re.compile(r"-[2-9]|-[1-9][0-9]+")


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
        if (
            in_name
            and in_manifest["label"]
            and in_name["label"].startswith(in_manifest["label"])  # removeprefix() leaves a bare "-2" as it is
            and _SECOND_RE.fullmatch(in_name["label"].removeprefix(in_manifest["label"]))
        ):
            in_name["label"] = in_manifest["label"]  # a second set in the same second: "{label}-2" (create())
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
            f"a sidecar manifest in {directory} is malformed ({type(exc).__name__}: {str(exc)[:80]}); "
            "nothing was deleted"
        ) from exc


def _size(entry: Mapping[str, object]) -> int:
    size = entry.get("size")
    return size if isinstance(size, int) else 0


RULES = ("last", "hourly", "daily", "weekly", "monthly", "yearly")


@dataclass
class Pruned:
    deleted: list[str]
    kept: list[dict[str, object]]
    future: list[str]
    freed_bytes: int
    before: list[str]
    policy: Policy


def policy_of(options: Mapping[str, object]) -> Policy:
    """A Policy from ``keep_*`` options (``keep_within`` a duration, ``timezone`` a name), as the module takes them."""
    within = options.get("keep_within")
    return Policy(
        within=parse_duration(str(within)) if within else None,
        keep_all=bool(options.get("keep_all")),
        tz=timezone_named(str(options.get("timezone") or "UTC")),
        **{rule: int(options.get(f"keep_{rule}") or 0) for rule in RULES},  # type: ignore[arg-type]
    )


def _kept_for_schedules(selection: Selection) -> list[dict[str, object]]:
    """Take the sets a schedule made out of ``selection.items`` (they are kept): their schedules' retention decides."""
    kept, mine = [], []
    for item in selection.items:
        tags = _tags(selection.sets[item.name])
        if tags:
            why = f"made by schedule {', '.join(tags)}: its retention decides (selfhost-dr prune)"
            kept.append({"name": item.name, "reasons": [why]})
        else:
            mine.append(item)
    selection.items = mine
    return kept


def _tags(entry: Mapping[str, object]) -> list[str]:
    tags = entry.get("schedules")
    return [str(t) for t in tags] if isinstance(tags, list) else []


def prune(
    directory: str,
    policy: Policy,
    wanted: Mapping[str, str | None],
    group_by: Sequence[str] = FIELDS,
    check: bool = False,
) -> Pruned:
    """Delete the sets of ``directory`` under ``wanted`` (app, host, label) that ``policy`` does not keep."""
    selection = select(read_catalog(directory), wanted, group_by)
    scheduled = _kept_for_schedules(selection)
    decisions = plan(selection.items, policy)
    doomed = [d.item.name for d in decisions if not d.keep]
    kept = [{"name": d.item.name, "reasons": d.reasons} for d in decisions if d.keep] + scheduled + selection.refused
    future = [d.item.name for d in decisions if FUTURE in d.reasons]
    return _delete(selection, doomed, kept, future, policy, check)


def _delete(
    selection: Selection,
    doomed: list[str],
    kept: list[dict[str, object]],
    future: list[str],
    policy: Policy,
    check: bool,
) -> Pruned:
    by_name = selection.sets
    freed = 0
    if check:
        freed = sum(_size(by_name[n]) for n in doomed)
    else:
        for name in doomed:
            freed += remove_set(str(by_name[name]["path"]))
    return Pruned(doomed, kept, future, freed, sorted(by_name), policy)


def prune_by_schedule(
    directory: str,
    schedules: Mapping[str, Policy | None],
    default: Policy | None,
    wanted: Mapping[str, str | None],
    check: bool = False,
    now: datetime | None = None,
) -> Pruned:
    """Delete the sets under ``wanted`` that no retention keeps: each schedule's ``Policy`` (None: ``default``) over
    the sets made for it, and ``default`` over the sets made for no schedule of ``schedules`` (by hand) or also for
    one since removed (also when a remaining schedule shares them). Without a ``default`` those sets are kept. A set
    is deleted only when every plan it is in lets it go; each plan keeps its newest verified set, so the newest
    verified set of all is kept too.
    """
    selection = select(read_catalog(directory), wanted, FIELDS)
    reasons: dict[str, list[str]] = {item.name: [] for item in selection.items}
    future: set[str] = set()
    plans: list[tuple[str, Policy | None, list[Item]]] = []
    for name, policy in sorted(schedules.items()):
        mine = [i for i in selection.items if name in _tags(selection.sets[i.name])]
        plans.append((f"{name}: ", policy or default, mine))
    # Made by hand, or (also) by a schedule since removed: the plain rules decide for that part, as for the rest.
    rest = [
        i
        for i in selection.items
        if not _tags(selection.sets[i.name]) or set(_tags(selection.sets[i.name])) - set(schedules)
    ]
    plans.append(("", default, rest))
    for prefix, policy, items in plans:
        if policy is None:
            for item in items:
                why = "made by no schedule (or by one since removed)" if not prefix else f"{prefix}no retention rule"
                reasons[item.name].append(f"{why}, and no [retention] rule applies")
            continue
        for decision in plan(items, policy, now):
            reasons[decision.item.name] += [prefix + r for r in decision.reasons]
            if FUTURE in decision.reasons:
                future.add(decision.item.name)
    doomed = [item.name for item in selection.items if not reasons[item.name]]
    kept = [{"name": n, "reasons": r} for n, r in reasons.items() if r] + selection.refused
    return _delete(selection, doomed, kept, sorted(future), default or Policy(keep_all=True), check)
