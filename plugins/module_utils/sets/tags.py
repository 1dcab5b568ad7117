# Copyright: selfhost.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Which schedules a set was made for: the sidecar ``SET.schedules.json``, ``{"schedules": ["daily", ...]}``.

Written by ``selfhost-dr run`` (under the host lock) when a schedule's backup wrote the set, or found one that
another schedule wrote moments before and shared it; read by the per-schedule retention, which keeps a set while any
of its schedules keeps it. The sidecar is input like any other: a link, a FIFO, an oversized or malformed file, or a
name that is not a schedule name reads as no schedules (the set then falls under the plain retention rules).
"""

from __future__ import annotations

import json
import re

from .. import safe_fs
from .._common import atomic_write
from .names import Sidecars

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")  # as state.SCHEDULE_RE
_LIMIT = 64 * 1024


def read_tags(archive: str) -> list[str]:
    """The schedules the set was made for, sorted; [] when there is no sidecar or it cannot be used."""
    try:
        data = json.loads(safe_fs.read_regular(Sidecars.of(archive).schedules, _LIMIT))
    except (OSError, ValueError, RecursionError):
        return []
    names = data.get("schedules") if isinstance(data, dict) else None
    if not isinstance(names, list):
        return []
    return sorted({n for n in names if isinstance(n, str) and NAME_RE.match(n)})


def add_tag(archive: str, schedule: str) -> list[str]:
    """Record that ``archive`` was made (or shared) for ``schedule``; the schedules it now has. Replaces the sidecar
    atomically (a link there is replaced, never followed)."""
    if not NAME_RE.match(schedule):
        raise ValueError(f"{schedule!r} is not a schedule name")
    names = sorted({*read_tags(archive), schedule})
    atomic_write(Sidecars.of(archive).schedules, (json.dumps({"schedules": names}) + "\n").encode())
    return names
