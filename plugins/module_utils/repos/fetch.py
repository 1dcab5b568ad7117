# Copyright: selfhost.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Taking an application's snapshot out of a restic repository as hostile input, the way a set is taken.

Standard library only. Three checks, in this order:

1. :func:`choose` finds the snapshot (``latest`` or an id) among the ones selfhost-dr made of the application, by
   default this host's; :func:`read` reads the manifest the snapshot holds (``restic dump``, beside the listing,
   bounded) and keeps its sha256, which :func:`check_manifest_copy` compares with the manifest restic restores.
2. :func:`check_listing` reads the snapshot's whole tree (``restic ls --json``: metadata only, nothing written yet)
   and refuses, in one sentence, what restic must never be asked to write: a name that is not one name (``..``,
   ``/``), a path twice (a link and a directory of one name, which would make restic write through the link), a
   node below anything but a directory, a device, FIFO or socket, anything outside the application's paths and the
   stage, and any difference from the manifest in type, size, mode or owner. Check mode stops here.
3. After ``restic restore`` wrote the chosen paths into a private directory (0700, made by the restore beside the
   targets, reached by restic through ``/proc/self/fd``), :func:`check_tree` walks what it wrote without following
   a link and checks every file, directory and link against the manifest (type, mode, owner, size, sha256, link
   target, nothing missing and nothing more) and every database with ``PRAGMA integrity_check``; extended
   attributes (which a set never restores: file capabilities, ACLs) are removed.

A file the manifest lists in ``changed_during_backup`` may hold other bytes than the manifest says (it changed while
restic read it, three times): a warning, not a refusal.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import posixpath
import re
import stat
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from .. import safe_fs
from .._common import RestoreError, VerificationError
from ..sets.manifest import MANIFEST_MEMBER, MAX_MANIFEST, MAX_MEMBERS, name_problem, parse_manifest
from ..sets.names import default_host, token
from ..sqlite_snapshot import check_copy
from .restic import Dump, RepoError, Restic
from .stage import STAGE_DIR

SNAPSHOT_TAG = "selfhost-dr"
_CHUNK = 1024 * 1024
# Go's os.FileMode bits restic lists (``mode``): the type bits and the special permission bits.
_GO_DIR, _GO_SYMLINK, _GO_SETUID, _GO_SETGID, _GO_STICKY = 1 << 31, 1 << 27, 1 << 23, 1 << 22, 1 << 20


@dataclass
class Snapshot:
    """A snapshot chosen to restore: its id, when and where it was made, its stage (where the manifest and the
    database copies are inside it) and its manifest."""

    id: str
    time: str
    host: str
    tags: list[str]
    stage: str
    manifest: dict[str, object] = field(default_factory=dict)
    nodes: dict[str, dict[str, Any]] = field(default_factory=dict)  # path -> ls node
    manifest_sha256: str = ""  # of the manifest as it was read

    @property
    def short(self) -> str:
        return self.id[:8]

    @property
    def manifest_member(self) -> str:
        """The manifest's path in the snapshot."""
        return f"{self.stage}/{MANIFEST_MEMBER}"

    @property
    def database_copies(self) -> dict[str, str]:
        """Manifest path (``var/lib/...``) of every database -> where its consistent copy is in the snapshot: in the
        stage, or (``in_place``: its file was held still by a read transaction while restic read it) at its own
        path."""
        files = self.manifest.get("files", [])
        return {
            str(f["path"]): f"/{f['path']}" if f.get("in_place") is True else f"{self.stage}/db/{f['path']}"
            for f in files  # type: ignore[attr-defined]
            if isinstance(f, dict) and f.get("sqlite")
        }


def choose(restic: Restic, app: str, snapshot: str = "latest", host: str = "") -> dict[str, Any]:
    """The snapshot to restore: ``latest`` (the newest selfhost-dr snapshot of ``app`` made by ``host``, this host
    by default) or the one whose id starts with ``snapshot``."""
    shown = restic.repo.shown
    if snapshot != "latest":
        if not (8 <= len(snapshot) <= 64 and all(c in "0123456789abcdef" for c in snapshot)):
            raise RestoreError(f"{snapshot!r} is not a snapshot id (8 to 64 hex digits, or latest)")
        matching = [s for s in restic.snapshots() if str(s["id"]).startswith(snapshot)]
        if not matching:
            raise RestoreError(f"{shown} has no snapshot {snapshot}")
        if len(matching) > 1:
            raise RestoreError(f"{snapshot} names {len(matching)} snapshots in {shown}: give more of its id")
        chosen = matching[0]
        tags = [str(t) for t in chosen.get("tags") or []]
        if SNAPSHOT_TAG not in tags:
            raise RestoreError(f"snapshot {snapshot} in {shown} was not made by selfhost-dr (it has no manifest)")
        if f"app={app}" not in tags:
            other = next((t[4:] for t in tags if t.startswith("app=")), "another application")
            raise RestoreError(f"snapshot {snapshot} in {shown} is a backup of {other}, not of {app}")
        if host and chosen.get("hostname") != host:
            raise RestoreError(f"snapshot {snapshot} in {shown} was made by {chosen.get('hostname')}, not {host}")
        return chosen
    found = restic.snapshots([SNAPSHOT_TAG, f"app={app}"])
    who = host or default_host()
    own = [s for s in found if s.get("hostname") == who]
    if not own:
        others = sorted({str(s.get("hostname")) for s in found})
        if not others:
            raise RestoreError(f"{shown} holds no {app} snapshot made by selfhost-dr")
        hint = "" if host else f"; restore one of them with --from-host ({', '.join(others[:5])})"
        raise RestoreError(f"{shown} holds no {app} snapshot of {who}, only of other hosts{hint}")
    return max(own, key=lambda s: str(s.get("time", "")))


def _latest(header: list[dict[str, Any]], app: str, host: str, shown: str) -> dict[str, Any]:
    """The snapshot ``restic ls latest`` listed, as :func:`choose` would have it (restic chose by host and tags)."""
    found = header[0] if header else {}
    tags = [str(t) for t in found.get("tags") or []]
    snap_id = found.get("id")
    if not isinstance(snap_id, str) or not re.fullmatch(r"[0-9a-f]{64}", snap_id):
        raise RestoreError(f"{shown} listed its newest {app} snapshot without an id")
    if SNAPSHOT_TAG not in tags or f"app={app}" not in tags or found.get("hostname") != host:
        raise RestoreError(f"{shown} listed snapshot {snap_id[:8]} as the newest {app} snapshot of {host}; it is not")
    return found


def stage_of(found: dict[str, Any], app: str) -> str:
    """The stage's path in a snapshot: the one of its paths that is ``.../.selfhost-dr-repo/APP``."""
    paths = [p for p in found.get("paths") or [] if isinstance(p, str)]
    stages = [
        p for p in paths if posixpath.basename(posixpath.dirname(p)) == STAGE_DIR and p.endswith("/" + token(app))
    ]
    if len(stages) != 1:
        raise RestoreError(f"snapshot {str(found['id'])[:8]} holds no selfhost-dr stage of {app}; it has no manifest")
    return stages[0]


def _go_mode(node: dict[str, Any]) -> int:
    """The Unix permission bits (setuid, setgid, sticky included) of a node restic listed."""
    mode = node.get("mode")
    if not isinstance(mode, int):
        return -1
    bits = mode & 0o777
    bits |= 0o4000 if mode & _GO_SETUID else 0
    bits |= 0o2000 if mode & _GO_SETGID else 0
    bits |= 0o1000 if mode & _GO_STICKY else 0
    return bits


def read(restic: Restic, found: dict[str, Any] | None, app: str, host: str = "", stage_hint: str = "") -> Snapshot:
    """The snapshot's listing and its manifest, the listing checked for shape first (:func:`_node_problem`).

    ``found`` None: the newest snapshot of ``app`` made by ``host`` (this host by default), chosen by the listing
    itself (one restic command fewer than :func:`choose`, each costing half a second of key derivation); where
    there is none, :func:`choose` says why.

    The manifest is read (bounded, into memory only) while the listing is: where ``found`` says the stage is, or,
    for the newest snapshot, at ``stage_hint`` (where this host's backups put their stage) from the start. It is
    used only if the listing then says that is the manifest, and its sha256 is kept: the restore checks that the
    manifest restic writes is this one (:func:`check_manifest_copy`), so a snapshot made between the two commands
    cannot slip in. (Those paths are the snapshot's word, or a guess: only an absolute, normal one is read early.)"""
    who = host or default_host()
    tags = [SNAPSHOT_TAG, f"app={app}"]
    header: list[dict[str, Any]] = []
    nodes: dict[str, dict[str, Any]] = {}
    problems: list[str] = []
    early: Dump | None = None
    guess = stage = ""
    by_id = False  # the early read names the snapshot by its id (not "the newest", which may change meanwhile)
    try:
        if found is not None:
            guess, by_id = f"{stage_of(found, app)}/{MANIFEST_MEMBER}", True
            if _plain(guess):
                early = restic.dumping(str(found["id"]), guess, MAX_MANIFEST)
        elif stage_hint and _plain(f"{stage_hint}/{MANIFEST_MEMBER}"):
            guess = f"{stage_hint}/{MANIFEST_MEMBER}"
            early = restic.dumping("latest", guess, MAX_MANIFEST, who, tags)
        listing = (
            restic.ls("latest", MAX_MEMBERS + 4096, who, tags, header=header)
            if found is None
            else restic.ls(str(found["id"]), MAX_MEMBERS + 4096)
        )
        with contextlib.closing(listing):
            try:
                for node in listing:
                    if not stage:
                        if found is None:
                            found = _latest(header, app, who, restic.repo.shown)
                        stage = stage_of(found, app)
                        if f"{stage}/{MANIFEST_MEMBER}" != guess:  # the guess was wrong: read it where it is
                            if early is not None:
                                early.stop()
                            guess, by_id, early = f"{stage}/{MANIFEST_MEMBER}", True, None
                            if _plain(guess):
                                early = restic.dumping(str(found["id"]), guess, MAX_MANIFEST)
                    problem = _node_problem(node, nodes)
                    if problem:
                        problems.append(problem)
                        break
                    nodes[str(node["path"])] = node
            except RepoError as exc:
                if found is not None:
                    raise RestoreError(str(exc)) from exc
                # (nothing listed: restic 0.16 and later fail where no snapshot matched; choose says why below)
        if found is None:  # nothing listed: no snapshot of that host (or a race with one being made)
            if early is not None:
                early.stop()
                early = None
            try:
                chosen = choose(restic, app, "latest", host)
            except RepoError as exc:
                raise RestoreError(str(exc)) from exc
            return read(restic, chosen, app)
        snap_id = str(found["id"])
        short = snap_id[:8]
        if problems:
            raise VerificationError(f"refusing to restore snapshot {short}: {problems[0]}")
        if stage not in nodes:
            # A snapshot restic made from relative paths (an imported set): its tree holds them from its root, while
            # its paths say where they were read. The stage is the node those paths end with.
            within = [p for p in nodes if stage.endswith(p) and p.endswith(f"/{STAGE_DIR}/{token(app)}")]
            if len(within) != 1:
                raise VerificationError(f"refusing to restore snapshot {short}: it holds no stage at {stage}")
            stage = within[0]
        manifest_path = f"{stage}/{MANIFEST_MEMBER}"
        node = nodes.get(manifest_path)
        if node is None or node.get("type") != "file":
            raise VerificationError(f"refusing to restore snapshot {short}: it holds no manifest at {manifest_path}")
        if not isinstance(node.get("size"), int) or node["size"] > MAX_MANIFEST:
            raise VerificationError(
                f"refusing to restore snapshot {short}: its manifest is larger than a manifest can be"
            )
        blob: bytes | None = None
        if early is not None and manifest_path == guess:
            try:
                blob = early.result()
            except RepoError as exc:
                if by_id:
                    raise RestoreError(str(exc)) from exc
            early = None
            if blob is not None and not by_id and len(blob) != node["size"]:
                blob = None  # the newest snapshot's manifest is not this one: read by its id below
        if blob is None:
            try:
                blob = restic.dump(snap_id, manifest_path, MAX_MANIFEST)
            except RepoError as exc:
                raise RestoreError(str(exc)) from exc
    finally:
        if early is not None:
            early.stop()  # not needed (the guess was wrong) or not waited for (a refusal): ended, not left running
    if len(blob) > MAX_MANIFEST:  # its content is longer than its node says
        raise VerificationError(f"refusing to restore snapshot {short}: its manifest is larger than a manifest can be")
    manifest = parse_manifest(blob, f"the manifest of snapshot {short}")
    if manifest.get("app") != app:
        raise RestoreError(f"snapshot {short} is a backup of {manifest.get('app')}, not of {app}")
    return Snapshot(
        snap_id,
        str(found.get("time", "")),
        str(found.get("hostname", "")),
        [str(t) for t in found.get("tags") or []],
        stage,
        manifest,
        nodes,
        hashlib.sha256(blob).hexdigest(),
    )


def _plain(path: str) -> bool:
    """An absolute, normal path (nothing a snapshot's word can turn into another place)."""
    return path.startswith("/") and posixpath.normpath(path) == path


def check_manifest_copy(snap: Snapshot, top_fd: int) -> None:
    """The manifest ``restic restore`` wrote below ``top_fd`` is, byte for byte, the one the restore was planned
    from: the plan did not read the newest snapshot's manifest from one snapshot and the listing from another."""
    digest, _size = _hash(top_fd, snap.manifest_member.lstrip("/"))
    if digest != snap.manifest_sha256:
        raise VerificationError(
            f"refusing to restore snapshot {snap.short}: its manifest is not the one this restore was planned from "
            "(a newer snapshot was saved meanwhile?); run the restore again"
        )


def _node_problem(node: dict[str, Any], seen: dict[str, dict[str, Any]]) -> str:
    """Why restic must not be asked to write this node (it is one name, once, below a directory), or ""."""
    name, path = node.get("name"), node.get("path")
    if not isinstance(name, str) or not isinstance(path, str):
        return "it lists a node without a name"
    problem = name_problem(name)
    if problem or "/" in name:
        return f"it holds {json.dumps(name)}, which is not a file name ({problem or 'a slash in it'})"
    parent = posixpath.dirname(path)
    if path != posixpath.join(parent, name) or not path.startswith("/"):
        return f"it lists {json.dumps(path)} for the name {json.dumps(name)}"
    if path in seen:
        return f"it holds {path} twice (restic would write through the first)"
    if parent != "/" and seen.get(parent, {}).get("type") != "dir":
        return f"it holds {path} below {parent}, which is not a directory"
    if node.get("type") not in ("dir", "file", "symlink"):
        return f"{path} is a {node.get('type')}, which a backup never holds"
    return ""


def check_listing(snap: Snapshot, paths: Iterable[str]) -> None:
    """What restic would write for ``paths`` (the manifest's paths being restored) is what the manifest lists: the
    same entries, types, sizes, modes and owners, each database's copy in the stage; nothing else in the snapshot
    but the directories above them. Raises VerificationError in one sentence; writes nothing."""
    paths = list(paths)
    files = {"/" + str(f["path"]): f for f in snap.manifest["files"] if isinstance(f, dict)}  # type: ignore[attr-defined]
    copies = {"/" + k: v for k, v in snap.database_copies.items()}
    roots = [str(p) for p in snap.manifest.get("paths", [])]  # type: ignore[attr-defined]
    above = {snap.stage, f"{snap.stage}/db"}
    for root in [*roots, snap.stage, *(c for p, c in copies.items() if c != p)]:
        parts = root.strip("/").split("/")
        above.update("/" + "/".join(parts[:n]) for n in range(1, len(parts)))
    stage_files = {f"{snap.stage}/{MANIFEST_MEMBER}", *copies.values()}
    changing = {"/" + str(p) for p in snap.manifest.get("changed_during_backup") or []}  # type: ignore[attr-defined]
    short = snap.short
    problems: list[str] = []
    for path, node in snap.nodes.items():
        if path in stage_files:
            continue
        if path in above:
            if node.get("type") != "dir":
                problems.append(f"{path} is a {node.get('type')}, where the snapshot's paths need a directory")
            continue
        if not any(path == r or path.startswith(r.rstrip("/") + "/") for r in roots):
            problems.append(f"it holds {path}, outside the paths its manifest lists")
            continue
        want = files.get(path)
        if want is None or want.get("sqlite"):
            problems.append(f"it holds {path}, which its manifest does not list")
            continue
        differs = _differs(path, node, want)
        if differs and not (path in changing and differs[0].startswith(f"{path} (size")):  # changed: forgiven
            problems += differs
            break
    for path, want in files.items():
        if not any(path == p or path.startswith(p.rstrip("/") + "/") for p in paths):
            continue
        where = copies.get(path, path)
        node = snap.nodes.get(where)
        if node is None:
            problems.append(f"{path} is missing from it" + (" (its database copy)" if path in copies else ""))
        elif path in copies and (node.get("type") != "file" or node.get("size") != want.get("size")):
            problems.append(f"the database copy of {path} is not the {want.get('size')} bytes the manifest says")
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise VerificationError(f"refusing to restore snapshot {short}: {problems[0]}{more}")


def _differs(path: str, node: dict[str, Any], want: dict[str, object]) -> list[str]:
    kind = node.get("type")
    if kind != want.get("type"):
        return [f"{path} is a {kind} where its manifest lists a {want.get('type')}"]
    mode = f"{_go_mode(node):04o}"
    if kind != "symlink" and mode != want.get("mode"):
        return [f"{path} (mode {mode}) differs from its manifest (mode {want.get('mode')})"]
    if node.get("uid") != want.get("uid") or node.get("gid") != want.get("gid"):
        return [f"{path} (owner) differs from its manifest"]
    if kind == "file" and node.get("size") != want.get("size"):
        return [f"{path} (size) differs from its manifest"]
    return []


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "dir"
    if stat.S_ISREG(mode):
        return "file"
    return "symlink" if stat.S_ISLNK(mode) else "special"


@dataclass
class Checked:
    files: int = 0
    bytes: int = 0
    databases: int = 0
    tables: int = 0  # tables whose row counts were compared with the manifest's
    warnings: list[str] = field(default_factory=list)


def _walk(top_fd: int, rel: str) -> Iterator[tuple[str, os.stat_result, int]]:
    """Every entry below the directory ``rel`` of ``top_fd`` (``rel`` itself first): its path relative to
    ``top_fd``, its lstat and a descriptor of its directory (valid until the next); directories are entered by
    descriptor, never through a link."""
    parent = _open_below(top_fd, posixpath.dirname(rel))
    try:
        start = os.stat(posixpath.basename(rel), dir_fd=parent, follow_symlinks=False)
        yield rel, start, parent
    finally:
        os.close(parent)
    if not stat.S_ISDIR(start.st_mode):
        return
    stack = [rel]
    while stack:
        here = stack.pop()
        fd = _open_below(top_fd, here)
        try:
            for name in sorted(os.listdir(fd)):
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                path = f"{here}/{name}"
                yield path, st, fd
                if stat.S_ISDIR(st.st_mode):
                    stack.append(path)
        finally:
            os.close(fd)


def _open_below(top_fd: int, rel: str) -> int:
    """The directory ``rel`` (``a/b/c``) of ``top_fd``, opened one level at a time without following links."""
    fd = os.dup(top_fd)
    try:
        for part in rel.split("/") if rel else ():
            below = safe_fs.open_dir(part, fd)
            os.close(fd)
            fd = below
    except BaseException:
        os.close(fd)
        raise
    return fd


def _hash(top_fd: int, rel: str) -> tuple[str, int]:
    parent = _open_below(top_fd, posixpath.dirname(rel))
    try:
        fd, st = safe_fs.open_file(posixpath.basename(rel), parent)
    finally:
        os.close(parent)
    digest = hashlib.sha256()
    read = 0
    try:
        if not stat.S_ISREG(st.st_mode):
            return "", -1
        while chunk := os.read(fd, _CHUNK):
            digest.update(chunk)
            read += len(chunk)
        _strip_xattrs(fd)
    finally:
        os.close(fd)
    return digest.hexdigest(), read


def _strip_xattrs(fd: int) -> None:
    """Remove what a set never restores and a snapshot may carry: file capabilities, ACLs, any extended attribute."""
    with contextlib.suppress(OSError):
        for name in os.listxattr(fd):
            os.removexattr(fd, name)


def _strip_attrs_of(dir_fd: int, name: str, kind: str) -> None:
    """:func:`_strip_xattrs` for a directory (a default ACL there is inherited by every file made in it later) or a
    link, never through a link; a file's are removed where it is hashed."""
    if kind == "dir":
        fd = safe_fs.open_dir(name, dir_fd)
        try:
            _strip_xattrs(fd)
        finally:
            os.close(fd)
    elif kind == "symlink":
        where = f"/proc/self/fd/{dir_fd}/{name}"  # the directory by its descriptor; the link itself not followed
        with contextlib.suppress(OSError):
            for attr in os.listxattr(where, follow_symlinks=False):
                os.removexattr(where, attr, follow_symlinks=False)


def check_tree(snap: Snapshot, top_fd: int, paths: Iterable[str], workers: int = 0) -> Checked:
    """Check what ``restic restore`` wrote below the directory ``top_fd`` for ``paths`` against the manifest: every
    entry, nothing missing, nothing more, every file's sha256 and every database copy's integrity. Raises
    VerificationError in one sentence."""
    files = {"/" + str(f["path"]): f for f in snap.manifest["files"] if isinstance(f, dict)}  # type: ignore[attr-defined]
    copies = {"/" + k: v for k, v in snap.database_copies.items()}
    changing = {"/" + str(p) for p in snap.manifest.get("changed_during_backup") or []}  # type: ignore[attr-defined]
    short = snap.short
    problems: list[str] = []
    jobs: list[tuple[str, str, dict[str, object]]] = []  # (path restored, where it is below top_fd, manifest record)
    seen: set[str] = set()
    for root in paths:
        if root in copies:
            continue  # a database file: restic wrote its copy in the stage or at its path (checked below)
        for rel, st, dir_fd in _walk(top_fd, root.lstrip("/")):
            path = "/" + rel
            want = files.get(path)
            if want is None or (want.get("sqlite") and copies.get(path) != path):
                problems.append(f"restic wrote {path}, which the manifest of snapshot {short} does not list")
                break
            seen.add(path)
            got = _kind(st.st_mode)
            if got != want.get("type"):
                problems.append(
                    f"{path} is {safe_fs.kind_of(st.st_mode)} where the manifest lists a {want.get('type')}"
                )
                break
            if got != "symlink" and f"{stat.S_IMODE(st.st_mode):04o}" != want.get("mode"):
                problems.append(f"{path} was restored with mode {stat.S_IMODE(st.st_mode):04o}, not {want.get('mode')}")
                break
            if st.st_uid != want.get("uid") or st.st_gid != want.get("gid"):
                problems.append(
                    f"{path} was restored with owner {st.st_uid}:{st.st_gid}, not {want.get('uid')}:{want.get('gid')}"
                )
                break
            _strip_attrs_of(dir_fd, posixpath.basename(rel), got)
            if got == "symlink":
                target = os.readlink(posixpath.basename(rel), dir_fd=dir_fd)
                if target != want.get("target"):
                    problems.append(
                        f"the link {path} leads to {target}, not to {want.get('target')} as its manifest says"
                    )
                    break
            elif got == "file" and path not in copies:  # (a database read where it was: its job is below)
                jobs.append((path, rel, want))
        if problems:
            break
    if not problems:
        for path, want in files.items():
            if not any(path == p or path.startswith(p.rstrip("/") + "/") for p in paths):
                continue
            if path in copies:
                jobs.append((path, copies[path].lstrip("/"), want))
            elif path not in seen:
                problems.append(f"{path} was not restored from snapshot {short}")
                break
    if problems:
        raise VerificationError(f"refusing to restore snapshot {short}: {problems[0]}")
    checked = Checked()
    databases = sorted(
        ((path, rel, int(want.get("size", 0) or 0)) for (path, rel, want) in jobs if want.get("sqlite")),  # type: ignore[call-overload]
        key=lambda d: -d[2],
    )
    # The longest work first, whatever it is (SQLite and hashlib release the GIL): a database's integrity check costs
    # about what hashing as many bytes does, so checks and hashes are given out together, largest first (a check
    # before the hash of the same size), and the threads finish together instead of one hashing a large file alone.
    work = [(size, 1, i) for i, (_p, _r, size) in enumerate(databases)]
    work += [(int(want.get("size", 0) or 0), 0, i) for i, (_p, _r, want) in enumerate(jobs)]  # type: ignore[call-overload]
    work.sort(key=lambda w: (-w[0], -w[1]))
    checks: dict[int, Future[tuple[str, dict[str, int] | None]]] = {}
    hashes: dict[int, Future[tuple[str, int]]] = {}
    with ThreadPoolExecutor(max_workers=workers or min(4, os.cpu_count() or 1)) as pool:
        for _size, is_check, i in work:
            if is_check:
                checks[i] = pool.submit(check_copy, f"/proc/self/fd/{top_fd}/{databases[i][1]}")
            else:
                hashes[i] = pool.submit(_hash, top_fd, jobs[i][1])
        hashed = [hashes[i].result() for i in range(len(jobs))]
        integrity = [checks[i].result() for i in range(len(databases))]
    for (path, _rel, want), (digest, size) in zip(jobs, hashed):
        if size < 0:
            problems.append(f"{path} is not a regular file in what restic wrote")
        elif digest != want.get("sha256") or size != want.get("size"):
            if path in changing:
                checked.warnings.append(f"{path} changed while it was backed up; restored as snapshot {short} holds it")
            else:
                problems.append(f"{path} in snapshot {short} does not match its sha256 in the manifest")
        checked.files += 1
        checked.bytes += max(size, 0)
    counted = {
        "/" + str(s["path"]): s.get("rows")
        for s in snap.manifest.get("snapshots") or []  # type: ignore[attr-defined]
        if isinstance(s, dict) and isinstance(s.get("path"), str)
    }
    for (path, _rel, _size), (result, rows) in zip(databases, integrity):
        checked.databases += 1
        if result != "ok":
            problems.append(f"database {path} in snapshot {short} fails integrity_check: {result}")
            continue
        want = counted.get(path)
        checked.tables += len(want) if isinstance(want, dict) else 0
        if isinstance(want, dict) and rows != want:
            table = next((t for t in sorted({*want, *(rows or {})}) if (rows or {}).get(t) != want.get(t)), "")
            problems.append(
                f"database {path} in snapshot {short} holds {(rows or {}).get(table)} rows in table {table!r}, "
                f"its manifest says {want.get(table)}"
            )
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise VerificationError(f"refusing to restore snapshot {short}: {problems[0]}{more}")
    return checked
