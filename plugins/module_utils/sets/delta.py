# Copyright: selfhost.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Delta sets: what changed on a server since a set of it (its *base*) was made, as a set of its own.

A migration seeds the new server with a hot set while the old one keeps serving, then freezes the old one and
moves only what changed since. That second set is a delta set: the same pax tar and compression as any set, and
beside it the same sidecars, but its manifest says ``format: selfhost.dr/delta-set`` and holds:

``base``
    the set it follows: its ``name`` and the sha256 of its manifest sidecar (``manifest_sha256``);
``files``, ``snapshots``
    as in a set, for the members the archive holds: every directory and link, every file that is new or whose
    size, mtime, ctime or inode changed since the base read it, and a fresh snapshot of every such database. A
    database whose pages the index mapped is carried as a page patch (sets/pages.py): its record's ``size`` and
    ``sha256`` are the patch's, and its ``patch`` field gives the database's own, its page size, the pages carried
    and the sha256 of the base's snapshot it applies to;
``kept``
    the names of the files that did not change: the base holds them, the delta does not;
``deleted``
    the names of the base's members that are gone.

The base's records of ``kept`` with the delta's ``files`` are the manifest of the frozen server (:func:`frozen`),
which the new server is checked against. By hand, in order: unpack the base, unpack the delta over it (each patch
beside the base's database), rebuild each patched database, delete every name ``deleted`` lists
(docs/migrate.md).

A full restore never takes a delta set for a set: the format differs, and the manifest check says what it is.

Which files did not change is known from an :class:`Index` taken just before the base was made: each file's
inode, size, mtime and ctime (and its database's ``-wal`` and ``-journal``). A file whose stat is the same at the
delta was not written since the index, so the base read what it holds now. A file changed within
:data:`RACY_NS` of the index is carried anyway: the clock that stamps files is coarse, and a write in the same tick
as the index would leave its stat unchanged, and so would a write through a shared memory map to a page already
dirty then.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field

from .. import safe_fs
from .._common import BackupError, atomic_write
from .manifest import DELTA_FORMAT, FORMAT, MAX_MEMBERS, name_problem
from .pages import PageMap, record_problem
from .scan import Entry, scan

INDEX_FORMAT = "selfhost.dr/migrate-index"
# A file written through a shared memory map gets a new mtime only when a clean page is first dirtied: writes to a
# page already dirty (until its writeback, 30 s and more later) leave its stat as it was. Changed within a minute
# before the index, a file is carried whatever its stat says.
RACY_NS = 60_000_000_000
_SIDES = ("-wal", "-journal")
_MAX_INDEX = 512 * 1024 * 1024


def stat_key(st: os.stat_result) -> list[int]:
    """What says a file was not written since: its device, inode, size, mtime and ctime (ns)."""
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def entry_key(entry: Entry) -> list[list[int]]:
    """What says that ``entry`` did not change: its stat, and for a database its ``-wal``'s and ``-journal``'s (an
    empty list for one that does not exist)."""
    keys = [stat_key(entry.st)]
    if entry.kind == "sqlite":
        for side in _SIDES:
            try:
                keys.append(stat_key(os.lstat(entry.path + side)))
            except FileNotFoundError:
                keys.append([])
    return keys


def _newest(keys: list[list[int]]) -> int:
    """The latest mtime or ctime in stat keys (ns)."""
    return max((max(k[3], k[4]) for k in keys if k), default=0)


@dataclass
class Index:
    """Each file's stat key by member name, taken just before a set is made (``started_ns``: wall clock, ns)."""

    started_ns: int
    keys: dict[str, list[list[int]]] = field(default_factory=dict)
    base: dict[str, str] = field(default_factory=dict)  # the set it was taken for: name, manifest_sha256
    pages: dict[str, PageMap] = field(default_factory=dict)  # each database's snapshot in the set, page by page

    def to_json(self) -> bytes:
        doc = {
            "format": INDEX_FORMAT,
            "started_ns": self.started_ns,
            "base": self.base,
            "keys": self.keys,
            "pages": {name: m.to_json() for name, m in self.pages.items()},
        }
        return json.dumps(doc, separators=(",", ":")).encode()


def take_index(paths: list[str], excludes: list[str], stored_as: dict[str, str] | None = None) -> Index:
    """The stat key of every file a set of ``paths`` would hold, now."""
    started = time.time_ns()
    found = scan(paths, excludes, stored_as)
    return Index(started, {e.member: entry_key(e) for e in found.entries if e.kind in ("file", "sqlite")})


def write_index(path: str, index: Index) -> None:
    atomic_write(path, index.to_json())


def read_index(path: str) -> Index:
    """An index written by :func:`write_index`; raises BackupError in one sentence."""
    try:
        doc = json.loads(safe_fs.read_regular(path, _MAX_INDEX))
    except FileNotFoundError as exc:
        raise BackupError(f"the seed's index {path} does not exist") from exc
    except (OSError, ValueError) as exc:
        raise BackupError(f"the seed's index {path} cannot be read") from exc
    if not isinstance(doc, dict) or doc.get("format") != INDEX_FORMAT:
        raise BackupError(f"{path} is not a seed index of selfhost.dr")
    keys, started, base = doc.get("keys"), doc.get("started_ns"), doc.get("base")
    if (
        not isinstance(keys, dict)
        or not isinstance(started, int)
        or not isinstance(base, dict)
        or not all(
            isinstance(v, list) and all(isinstance(k, list) and all(isinstance(n, int) for n in k) for k in v)
            for v in keys.values()
        )
    ):
        raise BackupError(f"the seed index {path} is damaged")
    pages: dict[str, PageMap] = {}
    for name, doc_map in dict(doc.get("pages") or {}).items():  # (an index without maps: databases carried whole)
        mapped = PageMap.from_json(doc_map)
        if mapped is None:
            raise BackupError(f"the seed index {path} is damaged")
        pages[str(name)] = mapped
    return Index(started, keys, {str(k): str(v) for k, v in base.items()}, pages)


class Base:
    """What a delta is made against: the base set's manifest and the index taken before it. ``always``: paths
    (as the host names them) carried whatever their stat says, the files a restore's fix-up changes."""

    def __init__(self, manifest: dict[str, object], manifest_sha256: str, index: Index, always: list[str]) -> None:
        self.manifest = manifest
        self.manifest_sha256 = manifest_sha256
        self.index = index
        self.always = {os.path.normpath(p) for p in always}
        self.records: dict[str, dict[str, object]] = {
            str(f["path"]): f
            for f in manifest.get("files") or []  # type: ignore[attr-defined]
            if isinstance(f, dict)
        }

    @property
    def name(self) -> str:
        return str(self.manifest.get("name", ""))

    def unchanged(self, entry: Entry) -> bool:
        """Whether the base holds ``entry`` as it is now: same stat as the index, not racy, recorded alike."""
        if entry.kind not in ("file", "sqlite") or os.path.normpath(entry.path) in self.always or not entry.rel[1:]:
            return False  # (a root that is itself a file is always carried: a delta replaces whole roots' trees)
        key = self.index.keys.get(entry.member)
        record = self.records.get(entry.member)
        if key is None or record is None or record.get("type") != "file":
            return False
        if bool(record.get("sqlite")) != (entry.kind == "sqlite"):
            return False
        if entry.kind == "file" and record.get("size") != entry.st.st_size:
            return False  # (a database's record is of its snapshot, whose size may differ from the file's)
        now = entry_key(entry)
        return now == key and _newest(now) < self.index.started_ns - RACY_NS

    def page_base(self, member: str) -> tuple[PageMap, str] | None:
        """The page map of the base's snapshot of the database ``member`` and that snapshot's sha256, when the base
        holds one and its pages were mapped (a patch is made against it); else None (carried whole)."""
        record = self.records.get(member)
        pages = self.index.pages.get(member)
        if pages is None or record is None or not record.get("sqlite") or record.get("size") != pages.size:
            return None
        return pages, str(record.get("sha256"))


def delta_fields(base: Base, archived: list[dict[str, object]], kept: list[str]) -> dict[str, object]:
    """What a delta's manifest holds beside a set's: its base, the names kept from it and those deleted."""
    now = {str(f["path"]) for f in archived} | set(kept)
    return {
        "format": DELTA_FORMAT,
        "base": {"name": base.name, "manifest_sha256": base.manifest_sha256},
        "kept": sorted(kept),
        "deleted": sorted(set(base.records) - now),
    }


def delta_problem(delta: dict[str, object], base: dict[str, object], base_sha256: str) -> str:
    """Why ``delta`` (a manifest already checked as a set's) cannot follow the set whose manifest is ``base``
    (sidecar sha256 ``base_sha256``), or "". Both are hostile input: every name is checked."""
    want = delta.get("base")
    if not isinstance(want, dict) or not isinstance(want.get("manifest_sha256"), str):
        return "it names no base set"
    if want.get("manifest_sha256") != base_sha256:
        return f"it follows {want.get('name')!s}, not {base.get('name')!s}"
    if delta.get("app") != base.get("app"):
        return f"it is of {delta.get('app')!s} and its base of {base.get('app')!s}"
    kept, deleted = delta.get("kept"), delta.get("deleted")
    if not isinstance(kept, list) or not isinstance(deleted, list):
        return "its lists of kept and deleted names are missing"
    if len(kept) + len(deleted) > MAX_MEMBERS:
        return f"it lists more than {MAX_MEMBERS} kept and deleted names"
    records = {str(f["path"]): f for f in base.get("files") or [] if isinstance(f, dict)}  # type: ignore[attr-defined]
    carried_records = {str(f["path"]): f for f in delta.get("files") or [] if isinstance(f, dict)}  # type: ignore[attr-defined]
    carried = set(carried_records)
    paths = [str(p) for p in delta.get("paths") or []]  # type: ignore[attr-defined]
    if len(set(map(str, kept))) != len(kept):
        return "it keeps a name twice"
    for name in kept:
        if not isinstance(name, str) or name_problem(name):
            return "it keeps a name that is not a member name"
        record = records.get(name)
        if record is None or record.get("type") != "file":
            return f"it keeps {name}, which its base holds no file of"
        if name in carried:
            return f"it both keeps and carries {name}"
        root = next((p for p in paths if ("/" + name + "/").startswith(p + "/")), None)
        if root is None:
            return f"it keeps {name}, outside its paths"
        parent = "/" + name.rsplit("/", 1)[0]
        while len(parent) >= len(root) and parent != "/":  # every directory from the root down to it: carried
            if dict(carried_records.get(parent.lstrip("/")) or {}).get("type") != "dir":
                return f"it keeps {name}, but does not carry its directory {parent} as one"
            parent = parent.rsplit("/", 1)[0] or "/"
    for name, record in carried_records.items():
        if "patch" not in record:
            continue
        patch = record["patch"]
        problem = record_problem(patch)
        if problem:
            return f"{name}: {problem}"
        seeded = records.get(name)
        if record.get("type") != "file" or not record.get("sqlite"):
            return f"it carries {name} as a patch, which is not a database"
        if seeded is None or not seeded.get("sqlite") or seeded.get("sha256") != patch["base_sha256"]:  # type: ignore[index]
            return f"it carries {name} as a patch of a database its base does not hold"
    gone = set(records) - carried - set(kept)
    if any(not isinstance(n, str) for n in deleted) or set(deleted) != gone:
        return "its list of deleted names is not what its base holds and it does not"
    return ""


def frozen(delta: dict[str, object], base: dict[str, object]) -> dict[str, object]:
    """The manifest of the server the delta was made on, as a set of it would be: the delta's records and the
    base's records of what it kept (the delta checked by :func:`delta_problem` first)."""
    kept = set(delta["kept"])  # type: ignore[arg-type]
    base_files = [f for f in base["files"] if isinstance(f, dict) and f.get("path") in kept]  # type: ignore[attr-defined]
    base_snaps = [s for s in base.get("snapshots") or [] if isinstance(s, dict) and s.get("path") in kept]  # type: ignore[attr-defined]
    carried = [_whole(f) for f in delta["files"]]  # type: ignore[attr-defined]
    files = sorted([*carried, *base_files], key=lambda f: str(f["path"]))
    manifest = {k: v for k, v in delta.items() if k not in ("base", "kept", "deleted")}
    manifest.update(
        format=FORMAT,
        files=files,
        snapshots=[*delta["snapshots"], *base_snaps],  # type: ignore[misc]
        totals={
            "files": sum(1 for f in files if f["type"] == "file"),
            "dirs": sum(1 for f in files if f["type"] == "dir"),
            "symlinks": sum(1 for f in files if f["type"] == "symlink"),
            "databases": len(delta["snapshots"]) + len(base_snaps),  # type: ignore[arg-type]
            "bytes": sum(int(f.get("size", 0) or 0) for f in files),  # type: ignore[call-overload]
        },
    )
    return manifest


def _whole(record: dict[str, object]) -> dict[str, object]:
    """A delta's record as the frozen server's manifest has it: a patched database's size and sha256 are its own."""
    patch = record.get("patch")
    if not isinstance(patch, dict):
        return record
    whole = {k: v for k, v in record.items() if k != "patch"}
    whole.update(size=patch["size"], sha256=patch["sha256"])
    return whole


def patched(delta: dict[str, object]) -> list[dict[str, object]]:
    """The records of the databases a delta carries as page patches (checked by :func:`delta_problem` first)."""
    return [f for f in delta["files"] if isinstance(f, dict) and isinstance(f.get("patch"), dict)]  # type: ignore[attr-defined]
