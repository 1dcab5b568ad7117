# Copyright: selfhost.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The snapshots selfhost.dr made in a repository (``restic snapshots --json``), newest first, each with what its
tags say (app, kind, schedule): the repositories' counterpart of ``sets/catalog.py``. Reads only."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .restic import Restic

TAG = "selfhost-dr"


def entry(snapshot: Mapping[str, Any]) -> dict[str, object]:
    """One snapshot as the catalog shows it."""
    tags = [str(t) for t in snapshot.get("tags") or []]
    labelled = dict(t.split("=", 1) for t in tags if "=" in t)
    return {
        "id": str(snapshot["id"]),
        "short_id": str(snapshot.get("short_id") or str(snapshot["id"])[:8]),
        "time": str(snapshot.get("time", "")),
        "host": str(snapshot.get("hostname", "")),
        "tags": tags,
        "paths": [str(p) for p in snapshot.get("paths") or []],
        "app": labelled.get("app", ""),
        "kind": labelled.get("kind", ""),
        "schedule": labelled.get("schedule", ""),
    }


def catalog(restic: Restic, app: str = "", host: str = "") -> list[dict[str, object]]:
    """The snapshots of selfhost.dr in the repository (of ``app``, from ``host`` when given), newest first."""
    wanted = [TAG, *([f"app={app}"] if app else [])]
    found = sorted(restic.snapshots(wanted, host), key=lambda s: str(s.get("time", "")), reverse=True)
    return [entry(s) for s in found]
