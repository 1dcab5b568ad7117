# Copyright: selfhost.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The manifest: the last member of a set and its sidecar copy.

A set is hostile input until it verified: the manifest is parsed with caps (size, members, name lengths,
numbers) and checked deeply, so that verify and restore refuse the same sets in the same sentence.
"""

from __future__ import annotations

import json
import os
import re

from .. import safe_fs
from .._common import MIB, BackupError

FORMAT = "selfhost.dr/backup-set"


FORMAT_VERSION = 1


# A delta set's manifest (sets/delta.py): never read as a whole set's.
DELTA_FORMAT = "selfhost.dr/delta-set"


MANIFEST_MEMBER = "selfhost-dr-manifest.json"


# A manifest lists every member in about 250 bytes: 256 MiB is a million files with room to spare, and a bound
# on what a hostile set can make this process read into memory.
MAX_MANIFEST = 256 * MIB


# What such a manifest can list: verify keeps one small record per member, and stops reading past this many.
MAX_MEMBERS = 4_000_000


# Linux: a name is at most 255 bytes (a whole path may be longer: restores create members relative to their
# directory). A member that cannot be created is refused by verify, as by restore.
MAX_NAME_BYTES = 255


class NewerFormatError(BackupError):
    """A set written by a newer selfhost.dr: never read as if it were understood."""


def parse_manifest(blob: bytes, where: str, delta: bool = False) -> dict[str, object]:
    """Manifest bytes parsed and checked in every field; raises BackupError with one sentence, never more."""
    if len(blob) > MAX_MANIFEST:
        raise BackupError(
            f"{where} is larger than {MAX_MANIFEST // MIB} MiB; it is not a manifest this collection wrote"
        )
    try:
        data = json.loads(blob, parse_constant=_no_constant)
    except RecursionError as exc:
        raise BackupError(f"{where} is nested too deeply to be a manifest") from exc
    except ValueError as exc:
        raise BackupError(f"{where} cannot be read as JSON") from exc
    check_format(data, where, delta)
    return data  # type: ignore[return-value]


def _no_constant(name: str) -> object:
    raise ValueError(f"{name} is not JSON")


def read_manifest(path: str, delta: bool = False) -> dict[str, object]:
    """A manifest (sidecar) file, checked in every field; raises BackupError with one sentence."""
    try:
        blob = safe_fs.read_regular(path, MAX_MANIFEST)
    except FileNotFoundError as exc:
        raise BackupError(f"manifest {path} does not exist") from exc
    except ValueError as exc:
        raise BackupError(f"manifest {path} is larger than {MAX_MANIFEST // MIB} MiB") from exc
    except OSError as exc:
        raise BackupError(f"manifest {path} cannot be read ({exc.strerror or 'not a regular file'})") from exc
    return parse_manifest(blob, f"manifest {path}", delta)


def check_format(data: object, where: str, delta: bool = False) -> None:
    """Raise BackupError (NewerFormatError for a newer format) unless ``data`` is a manifest this collection reads,
    with the right type in every field it uses. ``delta``: a delta set's manifest is read too (and only then)."""
    if isinstance(data, dict) and data.get("format") == DELTA_FORMAT and not delta:
        base = data.get("base")
        name = base.get("name") if isinstance(base, dict) else None
        raise BackupError(
            f"{where} is of a delta set, which holds only what changed since {name or 'its base set'}: "
            "the migration that made it applies it, or restore its base first and then it by hand (docs/migrate.md)"
        )
    if not isinstance(data, dict) or data.get("format") not in ((FORMAT, DELTA_FORMAT) if delta else (FORMAT,)):
        raise BackupError(f"{where} is not a selfhost.dr backup manifest")
    version = data.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise BackupError(f"{where} has no format version")
    if version > FORMAT_VERSION:
        raise NewerFormatError(
            f"{where} has format version {version}, newer than the {FORMAT_VERSION} this collection reads; "
            "upgrade selfhost.dr"
        )
    problem = _manifest_problem(data)
    if problem:
        raise BackupError(f"{where} is not a valid manifest: {problem}")


MAX_ID = 2**32 - 2  # uid and gid: 2**32 - 1 is (uid_t)-1, which chown reads as "leave unchanged"


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def path_problem(path: object) -> str:
    """Why ``path`` is not an absolute, normalised path other than ``/``, or ""."""
    if not isinstance(path, str) or not path.startswith("/") or path == "/":
        return "is not an absolute path below /"
    if "\0" in path or os.path.normpath(path) != path or path.startswith("//"):
        return "is not a normalised path"
    return ""


def name_problem(name: str) -> str:
    """Why ``name`` cannot be a member name (relative, normalised, no ``..``, creatable on Linux), or ""."""
    if not name:
        return "an empty name"
    if name.startswith("/"):
        return "an absolute path"
    parts = name.split("/")
    if ".." in parts:
        return "a '..' component"
    if "" in parts or "." in parts or "\0" in name:
        return "a name that is not normalised"
    if any(len(part.encode("utf-8", "surrogateescape")) > MAX_NAME_BYTES for part in parts):
        return f"a name component longer than {MAX_NAME_BYTES} bytes"
    return ""


def _manifest_problem(data: dict[str, object]) -> str:
    for key, kind in (("started_at", str), ("app", str), ("files", list), ("snapshots", list), ("paths", list)):
        if not isinstance(data.get(key), kind):
            return f"{key!r} is missing or not a {kind.__name__}"
    for key, kind in (
        ("name", str),
        ("host", str),
        ("label", str),
        ("app_version", str),
        ("finished_at", str),
        ("links", list),
        ("skipped", list),
        ("changed_during_backup", list),
        ("notes", list),
        ("totals", dict),
        ("metadata", dict),
        ("excludes", list),
    ):
        if key in data and not isinstance(data[key], kind):
            return f"{key!r} is not a {kind.__name__}"
    paths = data["paths"]
    for n, path in enumerate(paths):  # type: ignore[arg-type]
        bad = path_problem(path)
        if bad:
            return f"paths[{n}] {bad}"
    for a in paths:  # type: ignore[union-attr]
        for b in paths:  # type: ignore[union-attr]
            if a != b and str(b).startswith(str(a) + "/"):
                return f"paths {a} and {b} overlap"
    for n, link in enumerate(data.get("links", [])):  # type: ignore[arg-type]
        if not isinstance(link, dict) or link.get("path") not in paths or path_problem(link.get("target")):
            return f"links[{n}] is not a path of the set with an absolute target"
    seen: set[str] = set()
    for n, rec in enumerate(data["files"]):  # type: ignore[arg-type]
        if not isinstance(rec, dict):
            return f"files[{n}] is not an object"
        name = rec.get("path")
        if not isinstance(name, str) or name_problem(name):
            return f"files[{n}] has no valid path"
        if name in seen:
            return f"files lists {name} twice"
        seen.add(name)
        if not any(("/" + name + "/").startswith(str(p) + "/") for p in paths):  # type: ignore[union-attr]
            return f"{name} is outside the paths of the set"
        kind = rec.get("type")
        if kind not in ("file", "dir", "symlink"):
            return f"{name} has an unknown type"
        mode = rec.get("mode")
        if not isinstance(mode, str) or not re.fullmatch(r"[0-7]{4}", mode):
            return f"{name} has no valid mode"
        mtime = rec.get("mtime", 0)
        if not isinstance(mtime, (int, float)) or isinstance(mtime, bool) or not abs(mtime) <= 2**62 / 1e9:
            return f"{name} has no valid mtime"  # (NaN fails the comparison too)
        uid, gid = rec.get("uid"), rec.get("gid")
        if not (_is_int(uid) and _is_int(gid) and 0 <= uid <= MAX_ID and 0 <= gid <= MAX_ID):  # type: ignore[operator]
            return f"{name} has no valid owner"
        if kind == "file":
            size, digest = rec.get("size"), rec.get("sha256")
            if not _is_int(size) or size < 0:  # type: ignore[operator]
                return f"{name} has no valid size"
            if not isinstance(digest, str) or not re.fullmatch(r"[0-9a-f]{64}", digest):
                return f"{name} has no valid sha256"
        if kind == "symlink":
            target = rec.get("target")
            if not isinstance(target, str) or not target or "\0" in target:
                return f"{name} has no valid link target"
    for n, snap in enumerate(data["snapshots"]):  # type: ignore[arg-type]
        if not isinstance(snap, dict):
            return f"snapshots[{n}] is not an object"
        rows = snap.get("rows")
        if rows is not None and not isinstance(snap.get("path"), str):
            return f"snapshots[{n}] has row counts but no path"
        if rows is not None and not (
            isinstance(rows, dict) and all(isinstance(t, str) and _is_int(c) and c >= 0 for t, c in rows.items())
        ):
            return f"snapshots[{n}] has row counts that are not table names and numbers"
    return ""


def read_checksum(path: str) -> str:
    try:
        text = safe_fs.read_regular(path, 4096).decode("utf-8", "replace")
        digest = text.split()[0]
    except (OSError, ValueError, IndexError) as exc:
        raise BackupError(f"checksum file {path} is missing, empty or not a checksum file") from exc
    if not re.fullmatch(r"[0-9a-f]{64}", digest):
        raise BackupError(f"checksum file {path} does not hold a sha256")
    return digest


def shown(name: str) -> str:
    """A member name as a sentence shows it: quoted, and shortened in the middle when it is very long."""
    return repr(name if len(name) <= 160 else f"{name[:100]}...{name[-50:]}")
