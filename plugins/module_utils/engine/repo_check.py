# Copyright: selfhost.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Checking restic repositories: ``restic check`` of each, its structure always, and with ``read_data`` every pack's
data or with ``read_data_subset`` (``5%``, ``1/7``, ``500M``) part of it, as a schedule spreads the reading over its
runs. A damaged pack is named by its id in the one sentence that says what is wrong.

Each repository's outcome is reported on its own: a damaged or unreadable ``required`` repository fails the run after
the others were checked, an optional one is a warning. A stale lock of a killed run is removed first (see
``Restic.call``); a live one is reported, never removed.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from .._common import Log, no_log
from ..repos.restic import RepoError, Restic
from .repo_prune import judge


@dataclass
class Outcome:
    """What the check of one repository found."""

    repository: str
    location: str
    required: bool
    read_data: str = ""  # "all", a subset, or "" (the structure only)
    ok: bool = False
    seconds: float = 0.0
    error: str = ""

    def as_dict(self) -> dict[str, object]:
        return dict(self.__dict__)


@dataclass
class Result:
    outcomes: list[Outcome] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def check_all(
    repos: Sequence[Restic], read_data: bool = False, read_data_subset: str = "", log: Log = no_log
) -> Result:
    """``restic check`` of every repository; raises the first required repository's sentence after all were done."""
    result = Result()
    for restic in repos:
        repo = restic.repo
        outcome = Outcome(repo.name, repo.shown, repo.required, "all" if read_data else read_data_subset)
        started = time.monotonic()
        try:
            restic.check(read_data_subset, read_data)
            outcome.ok = True
            log(f"{repo.shown}: no damage found" + (f" (data read: {outcome.read_data})" if outcome.read_data else ""))
        except RepoError as exc:
            outcome.error = str(exc)
        outcome.seconds = round(time.monotonic() - started, 3)
        result.outcomes.append(outcome)
    judge(result.outcomes, result.warnings, "sound", log)
    return result
