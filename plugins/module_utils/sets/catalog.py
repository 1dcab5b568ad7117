# Copyright: selfhost.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The sets in a directory: describe and list them, find and sweep what interrupted writes left, delete one."""

from __future__ import annotations

import contextlib
import os
import re
from datetime import datetime

from .. import safe_fs
from .._common import BackupError, iso
from .manifest import read_manifest
from .names import Sidecars, is_set_file, parse_name
from .tags import read_tags
from .verify import verification_state


def describe(archive: str) -> dict[str, object]:
    """One set as the catalog lists it, from its sidecar manifest (or its name when that is missing)."""
    name = os.path.basename(archive)
    st = os.stat(archive)
    info: dict[str, object] = {"name": name, "path": archive, "size": st.st_size}
    try:
        manifest = read_manifest(Sidecars.of(archive).manifest)
    except BackupError as exc:
        parts = parse_name(name) or {}
        when = parts.get("time")
        info.update(
            {
                "app": parts.get("app", ""),
                "host": parts.get("host", ""),
                "label": parts.get("label", ""),
                "time": iso(when) if isinstance(when, datetime) else "",
                "manifest": str(exc),
            }
        )
    else:
        totals = manifest.get("totals") if isinstance(manifest.get("totals"), dict) else {}
        info.update(
            {
                "app": manifest["app"],
                "app_version": manifest.get("app_version", ""),
                "host": manifest.get("host", ""),
                "label": manifest.get("label", ""),
                "time": manifest["started_at"],
                "finished_at": manifest.get("finished_at", ""),
                "format_version": manifest["format_version"],
                "files": totals.get("files", 0),  # type: ignore[union-attr]
                "databases": totals.get("databases", 0),  # type: ignore[union-attr]
                "bytes": totals.get("bytes", 0),  # type: ignore[union-attr]
                "metadata": manifest.get("metadata", {}),
                "manifest": "ok",
            }
        )
    info["verification"] = verification_state(archive)
    info["schedules"] = read_tags(archive)
    return info


def catalog(directory: str, **match: str | None) -> list[dict[str, object]]:
    """Every set in ``directory``, newest first, whose fields equal ``match`` (None matches anything).

    Reads only the sidecar manifests.
    """
    if not os.path.isdir(directory):
        raise BackupError(f"backup directory {directory} does not exist")
    sets = []
    with os.scandir(directory) as it:
        for entry in it:
            if is_set_file(entry.name) and entry.is_file(follow_symlinks=False):
                sets.append(describe(entry.path))
    sets = [s for s in sets if all(value is None or s.get(key) == value for key, value in match.items())]
    sets.sort(key=lambda s: (str(s.get("time", "")), str(s["name"])), reverse=True)
    return sets


_SIDECARS = r"(?:sha256|manifest\.json|verified\.json|schedules\.json|drilled\.json)"
_LEFTOVERS = (
    (re.compile(r"^\..+\.partial-\d+$"), "partial archive"),
    (re.compile(r"^\..+\.staging-\d+$"), "snapshot staging directory"),
    (re.compile(r"^\..+\.copy-\d+$"), "per-instance copy"),
    (re.compile(r"^\.selfhost-dr-verify-.+$"), "verify temporary directory"),
    (re.compile(rf"^[^.].*\.tar\.(?:zst|gz)\.{_SIDECARS}\.partial$"), "partial sidecar"),
)


_SIDECAR_RE = re.compile(rf"^([^.].*\.tar\.(?:zst|gz))\.{_SIDECARS}$")


def leftovers(directory: str) -> list[dict[str, object]]:
    """What killed runs left in a backup directory: partial archives and sidecars, staging directories,
    per-instance copies, verify's temporary files, and sidecars whose archive is gone.

    ``in_use`` is true while a live process still holds the item (its lock); :func:`sweep` leaves those.
    """
    found: list[dict[str, object]] = []
    try:
        names = sorted(os.listdir(directory))
    except FileNotFoundError:
        return found
    present = set(names)
    for name in names:
        kind = next((k for pattern, k in _LEFTOVERS if pattern.match(name)), "")
        if not kind:
            match = _SIDECAR_RE.match(name)
            if not match or match[1] in present:
                continue
            partials = [n for n in present if n.startswith(f".{match[1]}.partial-")]
            if any(safe_fs.in_use(os.path.join(directory, n)) for n in partials):
                continue  # its archive is being written
            kind = "sidecar without its archive"
        path = os.path.join(directory, name)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            continue
        found.append(
            {"path": path, "kind": kind, "size": st.st_size, "mtime": int(st.st_mtime), "in_use": safe_fs.in_use(path)}
        )
    return found


def _archive_of_sidecar_lives(sidecar: str) -> bool:
    # Partials first, then the archive: a writer always holds one of the two, and renames the first into the second.
    directory, name = os.path.split(sidecar)
    archive = _SIDECAR_RE.match(name)[1]  # type: ignore[index]
    partials = [n for n in os.listdir(directory) if n.startswith(f".{archive}.partial-")]
    if any(safe_fs.in_use(os.path.join(directory, n)) for n in partials):
        return True
    return os.path.lexists(os.path.join(directory, archive))


def sweep(directory: str) -> list[dict[str, object]]:
    """Remove what killed runs left in ``directory`` (see :func:`leftovers`) and return what was removed.

    Only names this collection writes are touched, never through a link, and never while a live process
    holds them.
    """
    removed = []
    for item in leftovers(directory):
        if item["in_use"]:
            continue
        if item["kind"] == "sidecar without its archive" and _archive_of_sidecar_lives(str(item["path"])):
            continue  # its archive was being written, and got its name since the listing
        if safe_fs.in_use(str(item["path"])):
            continue  # taken by a run that started since the listing
        with contextlib.suppress(FileNotFoundError):
            safe_fs.remove_path(str(item["path"]))
            removed.append(item)
    return removed


def remove_set(archive: str) -> int:
    """Delete a set and its sidecars; returns the bytes freed."""
    freed = 0
    sidecars = Sidecars.of(archive)
    # The archive goes first: an interrupted removal leaves sidecars, never a set without its checksum.
    kept = (sidecars.verified, sidecars.drilled, sidecars.schedules, sidecars.checksum, sidecars.manifest)
    for path in (archive, *kept):
        try:
            freed += os.stat(path).st_size
            os.unlink(path)
        except FileNotFoundError:
            continue
    return freed
