# Copyright: selfhost.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Moving an application from an old server to a new one with little downtime: the steps each server runs.

On the old server (the *source*)::

    seed      a hot set while it keeps serving, and the index of every file's stat taken just before
    freeze    stop writes: the application stopped, what ran recorded (the data of non-persistent instances kept)
    delta     a delta set against the seed (sets/delta.py): only what changed, with the application stopped
    thaw      start it again with what ran (a migration that rolls back)
    retire    the migration stands: the old server stays stopped, and a thaw is refused from then on

On the new server (the *target*)::

    receive   the seed restored in place and left stopped, made safe to start (tenement: ``instance_state``
              emptied, in tenement.db, which every delta carries); refused over instances that run or over data an
              applied delta brought, unless told to replace them (then kept as the restore's safety copy)
    apply     the delta applied as one restore: the delta's members and the seeded copies of the kept files
              (second names, no copy) staged beside the seeded trees, every file checked against the frozen
              server's manifest (sha256 and size; each database of the delta by integrity and row counts), swapped
              in with the seeded trees as safety copies, fixed up, started with what ran on the old server; a
              failure puts the seeded trees back and leaves the application stopped, to be seeded again (the
              start may have written to the kept files, which are the seeded files themselves)

Nothing here ever changes the old server's data: freeze and thaw stop and start it, seed and delta read it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import posixpath
import stat
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone

from .. import safe_fs
from .._common import (
    MIB,
    AppError,
    BackupError,
    Error,
    Log,
    RestoreError,
    VerificationError,
    atomic_write,
    iso,
    no_log,
    utc_now,
    write_all,
)
from ..apps import needs
from ..apps.base import Application, Facts
from ..apps.tomo_schema import MAX_DOCUMENT_SIZE as DOCUMENT_LIMIT
from ..reports import Case, Report, Suite
from ..sets.create import Created, create
from ..sets.delta import Base, delta_problem, frozen, patched, read_index, stat_key, take_index, write_index
from ..sets.manifest import read_manifest
from ..sets.members import open_member
from ..sets.names import Sidecars
from ..sets.pages import PatchError, rebuild
from ..sets.restore import StagingUnpacker, Unit, is_under
from ..sets.scan import Dirs, scan
from ..sets.tar_stream import Member
from ..sets.verify import verify
from ..sqlite_snapshot import SnapshotError, check_copy, sha256_fd
from . import backup, journal, restore, swap
from .backup import Options as BackupOptions
from .backup import create_args, described
from .drill import _case, _list, _number, _text, _when, installed_version, version_key
from .restore import refuse_foreign


class MigrateError(Error):
    """A migration step that could not be done; the sentence says what state each server is in."""


STATE = "migrate"  # in the host's state directory
_KEPT_BATCH = 512  # kept files linked and checked at a time (each batch holds its staging directories open)
_CHUNK = 1024 * 1024


@dataclass
class Options:
    dest: str  # the migration directory on this host: the seed, its index, the delta
    compression: str = "auto"
    level: int = 3
    lock_timeout: float = 30.0
    host: str | None = None
    health_timeout: float = 60.0
    state_dir: str | None = None
    row_counts_max_size: int = 0
    excludes: list[str] = field(default_factory=list)
    dest_root: str = "/"


def _state_path(options: Options, app: str, what: str) -> str:
    return os.path.join(journal.state_dir(options.state_dir), STATE, f"{app}-{what}.json")


def _read_state(path: str) -> dict[str, object] | None:
    try:
        doc = json.loads(safe_fs.read_regular(path, 64 * 1024 * 1024))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise MigrateError(
            f"the migration state {path} cannot be read; remove it only if no migration is under way"
        ) from exc
    if not isinstance(doc, dict):
        raise MigrateError(f"the migration state {path} is damaged")
    return doc


def _write_state(path: str, doc: dict[str, object]) -> None:
    safe_fs.makedirs_private(os.path.dirname(path))
    atomic_write(path, (json.dumps(doc, indent=1) + "\n").encode())


def _sha256_file(path: str) -> str:
    return hashlib.sha256(safe_fs.read_regular(path, 512 * 1024 * 1024)).hexdigest()


def _backup_options(options: Options, label: str) -> BackupOptions:
    return BackupOptions(
        dest=options.dest,
        label=label,
        excludes=list(options.excludes),
        compression=options.compression,
        level=options.level,
        lock_timeout=options.lock_timeout,
        host=options.host,
        state_dir=options.state_dir,
        row_counts_max_size=options.row_counts_max_size,
    )


def _made(made: Created, log: Log, check: bool = True) -> dict[str, object]:
    """A set just written, verified when ``check``, as the steps return it (with its manifest's sha256)."""
    if check:
        checked = verify(made.path, log=log)
        if not checked.ok:
            raise BackupError(checked.summary)
    entry = described(made, verified=check)
    entry["manifest_sha256"] = _sha256_file(made.manifest_path)
    return entry


# -- the old server


def preflight_source(app: Application, options: Options) -> dict[str, object]:
    """What the old server runs and holds, read without changing anything: the application's version, its files and
    bytes (as a set of it would hold them), what runs. Refuses what the seed would refuse."""
    planned = backup.plan(app, "hot", _backup_options(options, "seed"), check=True)
    state = _read_state(_state_path(options, app.name, "frozen"))
    return {
        "changed": False,
        "version": planned.facts.version,
        "files": planned.files,
        "databases": planned.databases,
        "bytes": planned.bytes_in,
        "running": planned.facts.running,
        "frozen": state is not None,
        "retired": bool(state and state.get("retired")),
        "needs": app.needs(planned.facts).to_dict(),
    }


def seed(app: Application, options: Options, log: Log = no_log) -> dict[str, object]:
    """A hot set of the running application and the index of its files (``{set}.index.json`` beside it). Refused on
    a server a migration froze or retired: its data are no longer what serves."""
    state = _read_state(_state_path(options, app.name, "frozen"))
    if state is not None:
        what = "retired it" if state.get("retired") else f"froze it at {state.get('frozen_at')}"
        raise MigrateError(
            f"a migration {what}, so {app.name} here is not what serves; nothing was changed "
            "(a rolled-back migration thaws it first)"
        )
    facts = app.inspect()
    app.refuse_backup("hot", facts)
    missing = [p for p in facts.paths if not os.path.lexists(p)]
    if missing:
        raise BackupError(f"{missing[0]} does not exist, so {app.name} cannot be migrated")
    if not os.path.isdir(options.dest):
        safe_fs.makedirs_private(options.dest)
    swap.recover_interrupted(options.state_dir, log)
    facts = app.before_archive(facts, options.dest, False, log)
    args = create_args(app, facts, _backup_options(options, "seed"), "hot", "seed")
    index = take_index(facts.paths, list(args["excludes"]))  # type: ignore[call-overload]
    log(f"migrate: seeding {app.name} ({len(index.keys)} files indexed) while it keeps serving")
    try:
        made = create(facts.paths, options.dest, log=log, page_maps=index.pages, **args)  # type: ignore[arg-type]
    except SnapshotError as exc:
        raise BackupError(str(exc)) from exc
    entry = _made(made, log)
    index.base = {"name": made.name, "manifest_sha256": str(entry["manifest_sha256"])}
    entry["index"] = made.path + ".index.json"
    write_index(str(entry["index"]), index)
    return entry


def freeze(app: Application, options: Options, log: Log = no_log) -> dict[str, object]:
    """Stop writes: record what runs, then stop the application. Frozen already: stopped again, the record kept."""
    path = _state_path(options, app.name, "frozen")
    state = _read_state(path)
    if state is not None and state.get("retired"):
        raise MigrateError(f"{app.name} on this server was migrated already and is retired; nothing was changed")
    if state is None:
        facts = app.inspect()
        app.refuse_backup("cold", facts)
        app.check_can_restart()
        state = {
            "app": app.name,
            "frozen_at": iso(utc_now()),
            "facts": {k: v for k, v in asdict(facts).items() if k != "details"},
        }
        _write_state(path, state)
        changed = True
    else:
        changed = False
        log(f"migrate: {app.name} was frozen at {state.get('frozen_at')}; stopping it again if it runs")
    t0 = time.monotonic()
    was_running = app.stop(log)
    return {
        "changed": changed or was_running,
        "frozen_at": state["frozen_at"],
        "running": _facts(state).running,
        "stop_seconds": round(time.monotonic() - t0, 3),
    }


def _facts(state: dict[str, object]) -> Facts:
    saved = dict(state.get("facts") or {})  # type: ignore[call-overload]
    return Facts(
        app=str(saved.get("app", "")),
        version=str(saved.get("version", "")),
        paths=[str(p) for p in saved.get("paths") or []],
        excludes=[str(p) for p in saved.get("excludes") or []],
        metadata=dict(saved.get("metadata") or {}),
        running=[str(u) for u in saved.get("running") or []],
    )


def delta(app: Application, seed_set: str, options: Options, log: Log = no_log) -> dict[str, object]:
    """The delta set of the frozen application against ``seed_set`` (its index beside it)."""
    state = _read_state(_state_path(options, app.name, "frozen"))
    if state is None:
        raise MigrateError(f"{app.name} is not frozen on this server; a delta is made only after the freeze")
    sidecars = Sidecars.of(seed_set)
    base_manifest = read_manifest(sidecars.manifest)
    base_sha = _sha256_file(sidecars.manifest)
    index = read_index(seed_set + ".index.json")
    if index.base.get("manifest_sha256") != base_sha:
        raise MigrateError(f"the index beside {os.path.basename(seed_set)} was taken for another set")
    facts = app.before_archive(_facts(state), options.dest, False, log)
    args = create_args(app, facts, _backup_options(options, "delta"), "cold", "delta")
    base = Base(base_manifest, base_sha, index, app.fixed_up_paths(facts))
    log(f"migrate: writing the delta of {app.name} against {base.name}")
    try:
        made = create(facts.paths, options.dest, log=log, base=base, **args)  # type: ignore[arg-type]
    except SnapshotError as exc:
        raise BackupError(str(exc)) from exc
    _refuse_incomplete(made, base)
    # Not verified here: the new server verifies every byte, member and database of it as it unpacks it, before
    # anything is swapped. Done here as well, it would stand in the downtime twice.
    entry = _made(made, log, check=False)
    entry["kept"] = len(made.manifest["kept"])  # type: ignore[arg-type]
    entry["deleted"] = len(made.manifest["deleted"])  # type: ignore[arg-type]
    entry["base"] = base.name
    return entry


def _refuse_incomplete(made: Created, base: Base) -> None:
    """A delta that left out a file the seed holds would have the new server delete it, and one that saw files
    change while the application was stopped holds no frozen state: either is removed and refused."""
    manifest = made.manifest
    skipped = {str(s.get("path", "")).lstrip("/"): str(s.get("reason", "")) for s in manifest.get("skipped") or []}  # type: ignore[attr-defined]
    lost = sorted(set(skipped) & set(base.records))
    changed = [str(p) for p in manifest.get("changed_during_backup") or []]  # type: ignore[attr-defined]
    if not lost and not changed:
        return
    sidecars = Sidecars.of(made.path)
    for path in (made.path, sidecars.manifest, sidecars.checksum):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
    if lost:
        why = f"it left out /{lost[0]} ({skipped[lost[0]]}), which the seed holds"
    else:
        why = f"{changed[0]} changed while it was written, though the application was stopped"
    raise MigrateError(f"the delta was refused: {why}; the new server would not hold what the old one does")


def thaw(app: Application, options: Options, log: Log = no_log) -> dict[str, object]:
    """Start the application again with what ran at the freeze (a migration rolled back)."""
    path = _state_path(options, app.name, "frozen")
    state = _read_state(path)
    if state is None:
        return {"changed": False, "running": []}
    if state.get("retired"):
        raise MigrateError(
            f"{app.name} on this server was migrated to {state.get('retired_for') or 'its new server'} and retired; "
            "starting it would serve old data, so it was not started"
        )
    units = _facts(state).running
    app.start(units, options.health_timeout, log)
    os.unlink(path)
    return {"changed": True, "running": units}


def retire(app: Application, options: Options, new_host: str = "", log: Log = no_log) -> dict[str, object]:
    """The migration stands: the old server stays stopped, its data as they were, and a thaw is refused."""
    path = _state_path(options, app.name, "frozen")
    state = _read_state(path)
    if state is None:
        raise MigrateError(f"{app.name} is not frozen on this server; only a frozen server is retired")
    if state.get("retired"):
        return {"changed": False}
    state.update(retired=True, retired_at=iso(utc_now()), retired_for=new_host)
    _write_state(path, state)
    log(f"migrate: {app.name} on this server is retired (stopped, its data kept as they were)")
    return {"changed": True}


# -- the new server

SPACE_FACTOR = 1.2  # free space the new server needs where the data go, for each byte of the old server's data


def preflight_target(
    app: Application,
    source_version: str,
    source_bytes: int,
    options: Options,
    replace: bool = False,
    source_needs: object = None,
) -> dict[str, object]:
    """Refuse, before anything changes on either server, a new server that cannot take the old one's data: an older
    version of the application, less free space where the data go than 1.2 times the data, (unless ``replace``)
    an application that already runs instances there, or one that could not run what the old server runs
    (``source_needs``, :mod:`apps.needs`: a port taken by another program, a program its configuration runs
    missing)."""
    installed = installed_version(app)
    if source_version and installed and version_key(source_version) > version_key(installed):
        raise MigrateError(
            f"the new server runs {app.name} {installed}, older than the {source_version} of the old server; "
            "install the same version or a newer one first"
        )
    try:
        before: Facts | None = app.inspect()
    except AppError:
        before = None
    running = list(before.running) if before else []
    if running and not replace:
        raise MigrateError(
            f"{app.name} on the new server already runs {', '.join(running)}; a migration replaces its data "
            "(set migrate_replace_target to allow it)"
        )
    problems = needs.unmet(needs.Needs.from_dict(source_needs), app.own_processes())
    if problems:
        raise MigrateError(
            f"the new server cannot run what the old one runs: {'; '.join(problems)}; nothing was changed (install "
            "what is missing there and free the ports first, or set migrate_check_needs to false)"
        )
    need = int(source_bytes * SPACE_FACTOR)
    free: dict[str, int] = {}
    wanted: dict[int, int] = {}  # bytes needed on each file system: the data, and the sets where they go
    places = [(root, need) for root in app.restore_roots(before) or ["/"]]
    if options.dest:
        places.append((options.dest, source_bytes))  # the seed and the delta: at most the data, compressed
    for place, bytes_needed in places:
        where = os.path.join(options.dest_root, place.lstrip("/"))
        while not os.path.isdir(where) and where != os.path.dirname(where):
            where = os.path.dirname(where)
        st = os.statvfs(where)
        free[place] = st.f_bavail * st.f_frsize
        device = os.stat(where).st_dev
        wanted[device] = wanted.get(device, 0) + bytes_needed
        if free[place] < wanted[device]:
            raise MigrateError(
                f"the new server has {free[place] / MIB:.0f} MiB free for {place}, less than the "
                f"{wanted[device] / MIB:.0f} MiB it needs there ({SPACE_FACTOR:g} times the old server's data for the "
                "data, as much again for the seed and the delta)"
            )
    return {"changed": False, "version": installed, "running": running, "free": free, "need": need}


def receive(
    app: Application,
    seed_set: str,
    options: Options,
    log: Log = no_log,
    replace: bool = False,
    document: bool = False,
) -> dict[str, object]:
    """Restore the seed in place and leave the application stopped; remember it as what this server holds.

    Refused, before anything stops, on a server that runs instances or serves the data of an applied delta (a
    migration that stood, or one rolled back after its cutover: writes taken since would be lost), unless
    ``replace``: then what it replaces is kept as the restore's safety copy. The restored data are fixed up (tenement:
    ``instance_state`` emptied), so a start of the application before the delta (a reboot) kills no process; nothing
    is started."""
    held_path = _state_path(options, app.name, "held")
    held = _read_state(held_path)
    try:
        running = list(app.inspect().running)
    except AppError:
        running = []
    if not replace and held is not None and held.get("applied"):
        raise MigrateError(
            f"this server holds {app.name}'s data migrated with {held.get('name')} at {held.get('at')}: a seed would "
            "replace them and whatever was written since; nothing was changed (set migrate_replace_target to replace "
            "them, kept as a safety copy)"
        )
    if not replace and running:
        raise MigrateError(
            f"{app.name} on this server runs {', '.join(running)}; a seed would replace its data; nothing was changed "
            "(set migrate_replace_target to replace them, kept as a safety copy)"
        )
    if document:
        app.migrate_by_document()  # this server keeps its own database; the delta's document is imported into it
    r_options = restore.Options(health_timeout=options.health_timeout, state_dir=options.state_dir,
                                dest_root=options.dest_root, start=False,
                                # By document, the new server keeps its database: and what goes with it (the
                                # environment, whose master password encrypts its credentials) as a safety copy.
                                keep_safety=replace or document)  # fmt: skip
    planned = restore.plan(app, seed_set, r_options, log=log)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(held_path)  # (whatever it held is being replaced: no delta may follow it any more)
    done = restore.run(app, planned, r_options, log)
    bases = _keep_bases(app, planned.manifest, planned.paths, planned.targets, _bases_dir(options, app), log)
    app.fix_up(planned.manifest, list(planned.targets), log)
    sidecars = Sidecars.of(seed_set)
    held = {
        "name": os.path.basename(seed_set),
        "manifest_sha256": _sha256_file(sidecars.manifest),
        "manifest": read_manifest(sidecars.manifest),
        "restore_id": done.restore_id,
        "at": iso(utc_now()),
        "keys": _seeded_keys(planned.paths, planned.targets),
        "bases": bases,
        "document": document,
    }
    _write_state(held_path, held)
    return {
        "changed": True,
        "restore_id": done.restore_id,
        "files": done.files,
        "bytes": done.bytes,
        "actions": app.actions(),
        "warning": done.warning,
    }


def _seeded_keys(paths: list[str], targets: list[str]) -> dict[str, list[int]]:
    """The stat key of every file of the seed as it was just restored, verified and fixed up here, with the
    application stopped: a kept file whose key is the same at the delta was not written since, and holds what the
    restore verified (its sha256 need not be read again inside the downtime)."""
    found = scan(targets, [], dict(zip(targets, paths)))
    return {e.member: stat_key(e.st) for e in found.entries if e.kind in ("file", "sqlite")}


def _bases_dir(options: Options, app: Application) -> str:
    """Where the new server keeps the seed's copies of the databases the fix-up changes (in the migration
    directory, beside the seed)."""
    return os.path.join(options.dest, f".{app.name}-seed-bases")


def _keep_bases(
    app: Application, manifest: dict[str, object], paths: list[str], targets: list[str], where: str, log: Log
) -> dict[str, dict[str, object]]:
    """A copy, as the seed holds it, of each seeded database the fix-up is about to change (tenement.db): the base a
    delta's page patch of it applies to. Each is checked against the seed's sha256 as it is copied. By that sha256:
    the copy's path and stat key."""
    facts = Facts(app=app.name, metadata=dict(manifest.get("metadata") or {}))  # type: ignore[call-overload]
    wanted = {os.path.normpath(p) for p in app.fixed_up_paths(facts)}
    records = {str(f["path"]): f for f in manifest["files"] if isinstance(f, dict) and f.get("sqlite")}  # type: ignore[attr-defined]
    safe_fs.remove_path(where)
    found = scan(targets, [], dict(zip(targets, paths)))
    entries = [e for e in found.entries if "/" + e.member in wanted and e.member in records and e.kind == "sqlite"]
    if not entries:
        return {}
    safe_fs.makedirs_private(where)
    bases: dict[str, dict[str, object]] = {}
    dirs = Dirs(found.roots, found.dirs)
    try:
        for entry in entries:
            want = str(records[entry.member].get("sha256"))
            opened = open_member(entry, dirs)
            if isinstance(opened, str):
                raise MigrateError(f"the seeded {entry.path} {opened}; seed this server again")
            src, _ = opened
            path = os.path.join(where, want + ".db")
            try:
                out = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
                try:
                    digest = hashlib.sha256()
                    while chunk := os.read(src, _CHUNK):
                        digest.update(chunk)
                        write_all(out, chunk)
                    os.fsync(out)
                    key = stat_key(os.fstat(out))
                finally:
                    os.close(out)
            finally:
                os.close(src)
            if digest.hexdigest() != want:
                raise MigrateError(f"the seeded {entry.path} is not what the seed holds; seed this server again")
            bases[want] = {"key": key}
            log(f"migrate: kept the seed's {entry.path} as the base of the delta's pages")
    finally:
        dirs.close()
    return bases


class _DeltaFiller:
    """A delta set's members unpacked (verified in the same pass) and the seeded copies of the files it keeps
    linked beside them, every kept file then checked against the frozen server's manifest."""

    def __init__(
        self,
        archive: str,
        delta: dict[str, object],
        whole: dict[str, object],
        keys: dict[str, object],
        log: Log,
        bases: dict[str, object] | None = None,
        bases_dir: str = "",
    ) -> None:
        self.archive, self.delta, self.whole, self.keys, self.log = archive, delta, whole, keys, log
        self.bases, self.bases_dir = bases or {}, bases_dir
        self.unpacker: StagingUnpacker | None = None
        self.files = self.bytes = 0
        self.checked: dict[str, int] = {}

    def fill(
        self, units: list[Unit], fds: list[int], record: swap.Record, staged: list[int], journal_: object
    ) -> dict[str, object]:
        dirs = {
            "/" + str(f["path"]): (int(str(f["mode"]), 8), int(f["uid"]), int(f["gid"]), int(f.get("mtime", 0) or 0))
            for f in self.delta["files"]  # type: ignore[attr-defined]
            if f.get("type") == "dir"
        }
        unpacker = StagingUnpacker(units, fds, [s.staging for s in record.swaps], staged, dirs)
        self.unpacker = unpacker
        under = lambda name: any(is_under("/" + name, u.path) for u in units)  # noqa: E731
        carried = {"/" + str(f["path"]) for f in self.delta["files"] if under(str(f["path"]))}  # type: ignore[attr-defined]
        self.log(f"migrate: verifying {os.path.basename(self.archive)} and unpacking it beside the seeded trees")
        checked = verify(self.archive, record=False, log=self.log, unpack=unpacker, delta=True)
        if not checked.ok or checked.manifest is None:
            raise VerificationError(f"refusing to apply: {checked.summary}")
        if checked.manifest != self.delta:
            raise VerificationError("refusing to apply: the delta's manifest changed while it was applied")
        missing = sorted(carried - unpacker.written)
        if missing:
            raise RestoreError(f"{len(missing)} member(s) of the delta were not unpacked, first {missing[0]}")
        records = {"/" + str(f["path"]): f for f in self.whole["files"]}  # type: ignore[attr-defined]
        kept = sorted("/" + str(n) for n in self.delta["kept"] if under(str(n)))  # type: ignore[attr-defined]
        live = []
        for unit, fd in zip(units, fds):
            try:
                live.append(safe_fs.open_dir(unit.name, fd) if unit.kind == "dir" else -1)
            except FileNotFoundError:
                live.append(-1)
        cache: dict[tuple[int, tuple[str, ...]], int] = {}
        self.checked = {"kept": 0, "bytes": 0, "hashed": 0, "rebuilt": 0}
        try:
            rows = {str(s_["path"]): s_.get("rows") for s_ in self.delta["snapshots"]}  # type: ignore[attr-defined]
            for record in patched(self.delta):
                if under(str(record["path"])):
                    self._rebuild(unpacker, record, live, cache, rows.get(str(record["path"])))
                    self.checked["rebuilt"] += 1
            self.log(f"migrate: taking {len(kept)} kept file(s) from the seeded trees")
            with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
                for first in range(0, len(kept), _KEPT_BATCH):  # a bounded number of directories open at a time
                    dirs: dict[tuple[int, tuple[str, ...]], int] = {}
                    jobs: list[tuple[str, int, str, list[int] | None]] = []  # (path, dir, name, key if seeded)
                    try:
                        for path in kept[first : first + _KEPT_BATCH]:
                            index, before = unpacker.link_kept(path, live, cache)
                            unit = units[index]
                            rel = unit.prefix + tuple(os.path.relpath(path, unit.path).split("/"))
                            if (index, rel[:-1]) not in dirs:
                                dirs[(index, rel[:-1])] = os.dup(unpacker.staged_dir(index, rel[:-1]))
                            # As the seed's restore left it (its stat key then), the file is what that restore
                            # verified; the link just made changed its ctime, so it is compared before.
                            key = stat_key(before)
                            seeded = key if self.keys.get(path[1:]) == key else None
                            jobs.append((path, dirs[(index, rel[:-1])], rel[-1], seeded))
                        done = _check_kept(pool, jobs, records)
                    finally:
                        for fd in dirs.values():
                            os.close(fd)
                    for key in ("kept", "bytes", "hashed"):
                        self.checked[key] += done[key]
        finally:
            for fd in [*live, *cache.values()]:
                if fd >= 0:
                    os.close(fd)
        unpacker.finish()
        self.files, self.bytes = unpacker.files, unpacker.bytes + self.checked["bytes"]
        self.checked.update(
            databases=int(checked.stats.get("databases", 0)), tables=int(checked.stats.get("tables_counted", 0))
        )  # type: ignore[call-overload]
        return self.whole

    def close(self) -> None:
        if self.unpacker is not None:
            self.unpacker.close()

    def _rebuild(
        self,
        unpacker: StagingUnpacker,
        record: dict[str, object],
        live: list[int],
        cache: dict[tuple[int, tuple[str, ...]], int],
        rows: object,
    ) -> None:
        """Put in place of a database's staged page patch the database it makes of the seeded copy (sets/pages.py),
        checked: its sha256 against the frozen server's, its integrity and its rows against the delta's snapshot."""
        path = "/" + str(record["path"])
        patch: dict[str, object] = record["patch"]  # type: ignore[assignment]
        refuse = f"refusing to apply the delta: the database {path}"
        index, rel = unpacker.place(path, live)
        kept = self.bases.get(str(patch["base_sha256"]))
        if isinstance(kept, dict):  # the seed's copy, from before the fix-up changed the seeded one
            name = f"{patch['base_sha256']}.db"
            try:
                where = safe_fs.open_dir(self.bases_dir)
                try:
                    base, st = safe_fs.open_file(name, where)
                finally:
                    os.close(where)
            except OSError as exc:
                gone = f"{refuse} applies to the seed's copy {name}, gone from {self.bases_dir}"
                raise VerificationError(gone) from exc
            trusted = stat_key(st) == kept.get("key")
        else:
            base, st = unpacker.open_seeded(path, live, cache)
            trusted = self.keys.get(path[1:]) == stat_key(st)
        try:
            if not trusted and sha256_fd(base)[0] != patch["base_sha256"]:
                raise VerificationError(f"{refuse} applies to the seeded one, which changed here; seed it again")
            staged = unpacker.staged_dir(index, rel[:-1])
            pfd, _ = safe_fs.open_file(rel[-1], staged)
            try:
                os.unlink(rel[-1], dir_fd=staged)
                out = os.open(rel[-1], os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                              dir_fd=staged)  # fmt: skip
                try:
                    made = rebuild(base, pfd, out, int(patch["size"]), int(patch["page_size"]))  # type: ignore[call-overload]
                    if made != patch["sha256"]:
                        raise VerificationError(
                            f"{refuse} rebuilt from the seeded copy and the delta's pages is not the old server's "
                            "(the seeded copy is not what the patch was made against); seed this server again"
                        )
                    unpacker.seal(out, int(str(record["mode"]), 8), int(record["uid"]), int(record["gid"]),  # type: ignore[call-overload]
                                  float(record.get("mtime", 0) or 0))  # type: ignore[arg-type]  # fmt: skip
                finally:
                    os.close(out)
            finally:
                os.close(pfd)
        except PatchError as exc:
            raise VerificationError(f"{refuse} comes as a page patch that {exc}") from exc
        finally:
            os.close(base)
        integrity, counted = check_copy(unpacker.staged_path(index, rel))
        if integrity != "ok":
            self.log(f"migrate: warning: {path} was already damaged on the old server: {integrity}")
        elif isinstance(rows, dict) and counted != rows:
            raise VerificationError(f"{refuse}, rebuilt, holds other rows than the old server's snapshot")


_SEEDED = "seeded"  # (what _hash_kept says of a file whose stat is as the seed's restore left it)


def _hash_kept(job: tuple[str, int, str, list[int] | None]) -> tuple[str, os.stat_result | None, str]:
    """The kept file's stat and sha256; or :data:`_SEEDED` for its sha256 when it is the file whose stat key before
    it was linked is the one recorded when the seed was restored (and verified) here, unchanged since: not read
    again."""
    path, dir_fd, name, seeded = job
    try:
        fd, st = safe_fs.open_file(name, dir_fd)
    except OSError:
        return path, None, ""
    try:
        if not stat.S_ISREG(st.st_mode):
            return path, st, ""
        if seeded is not None and seeded[:4] == stat_key(st)[:4]:  # (the same file, not written since the link)
            return path, st, _SEEDED
        digest = hashlib.sha256()
        while chunk := os.read(fd, _CHUNK):
            digest.update(chunk)
        return path, st, digest.hexdigest()
    finally:
        os.close(fd)


def _check_kept(
    pool: ThreadPoolExecutor,
    jobs: list[tuple[str, int, str, list[int] | None]],
    records: dict[str, dict[str, object]],
) -> dict[str, int]:
    """Every kept file as the frozen server's manifest records it: a regular file of that size, sha256 (read again
    unless its stat is as the seed's restore left it), mode and owner. Raises VerificationError naming the first that
    is not."""
    done = {"kept": 0, "bytes": 0, "hashed": 0}
    for path, st, digest in pool.map(_hash_kept, jobs):
        want = records[path]
        if st is None or not stat.S_ISREG(st.st_mode):
            problem = "is not a regular file"
        elif st.st_size != want.get("size") or digest not in (want.get("sha256"), _SEEDED):
            problem = "does not hold what the seed holds (it changed on this server since it was seeded)"
        elif f"{stat.S_IMODE(st.st_mode):04o}" != want.get("mode") or (st.st_uid, st.st_gid) != (
            want.get("uid"),
            want.get("gid"),
        ):
            problem = "has another mode or owner than the seed gave it"
        else:
            done["kept"] += 1
            done["bytes"] += st.st_size
            done["hashed"] += digest != _SEEDED
            continue
        raise VerificationError(f"refusing to apply the delta: the seeded {path} {problem}; seed this server again")
    return done


def apply(
    app: Application, delta_set: str, options: Options, log: Log = no_log, check: bool = False
) -> dict[str, object]:
    """Apply a delta set onto the seed this server holds, then start what ran on the old server.

    Refused before anything is stopped or changed (check mode stops there): a delta that does not follow what this
    server holds, one whose manifest is not valid, one that would put a tree anywhere the application does not keep
    its data. On a failure after the swap the seeded trees are put back and the application is left stopped."""
    held_path = _state_path(options, app.name, "held")
    held = _read_state(held_path)
    name = os.path.basename(delta_set)
    if held is not None and held.get("applied") and held.get("name") == name:
        log(f"migrate: {name} was applied on this server at {held.get('at')}")
        return {"changed": False, "delta": name, "started": app.units_to_start(dict(held["manifest"]))}  # type: ignore[call-overload]
    if held is None or not isinstance(held.get("manifest"), dict):
        raise MigrateError(f"this server holds no seed of {app.name}; it is seeded before a delta is applied")
    sidecars = Sidecars.of(delta_set)
    name = os.path.basename(delta_set)
    try:
        delta_manifest = read_manifest(sidecars.manifest, delta=True)
    except BackupError as exc:
        raise MigrateError(f"the delta {name} cannot be applied: {exc}") from exc
    base = held["manifest"]  # type: ignore[assignment]
    problem = delta_problem(delta_manifest, base, str(held.get("manifest_sha256")))  # type: ignore[arg-type]
    if problem:
        raise MigrateError(
            f"the delta {name} cannot be applied to what this server holds ({held.get('name')}): {problem}"
        )
    whole = frozen(delta_manifest, base)  # type: ignore[arg-type]
    if held.get("document"):
        app.migrate_by_document()
    try:
        before = app.inspect()
    except AppError:
        before = None
    paths = app.restore_paths(whole)
    units = swap.check_manifest(whole, options.dest_root, paths, options.state_dir)
    refuse_foreign(app, before, whole, paths, options.state_dir, name, units=units, dest_root=options.dest_root)
    start = app.units_to_start(whole)
    plan = {"delta": name, "base": held.get("name"), "start": start, "files": len(whole["files"])}  # type: ignore[arg-type]
    importing = _Import.read(app, delta_set, delta_manifest, whole, options, log) if held.get("document") else None
    try:
        if importing is not None:
            plan["import"] = importing.plan()  # on a private copy: an import this Tomo refuses stops nothing
        if check:
            return {"changed": True, **plan}
        return _apply_onto_seed(
            app, delta_set, delta_manifest, whole, held, paths, start, plan, importing, options, log
        )
    finally:
        if importing is not None:
            importing.close()


def _apply_onto_seed(
    app: Application,
    delta_set: str,
    delta_manifest: dict[str, object],
    whole: dict[str, object],
    held: dict[str, object],
    paths: list[str] | None,
    start: list[str],
    plan: dict[str, object],
    importing: _Import | None,
    options: Options,
    log: Log,
) -> dict[str, object]:
    """What :func:`apply` does once nothing refuses the delta: the swap, the fix-up and the start."""
    held_path = _state_path(options, app.name, "held")
    name = os.path.basename(delta_set)
    t0 = time.monotonic()
    resumed = _resume(app, name, whole, start, options, log) if held.get("applying") == name else None
    if resumed is not None:
        _applied(held_path, name, whole, resumed.id, options, app)
        return {**plan, "changed": True, "restore_id": resumed.id, "started": start, "resumed": True,
                "seconds": round(time.monotonic() - t0, 3), "actions": app.actions()}  # fmt: skip
    # Written down before anything is swapped: a run killed from here on is finished by the next (_resume), and only
    # then (a restore of this delta in the journal from before the seed this server holds is no such run).
    _write_state(held_path, {**held, "applying": name})
    # Stopped before anything is staged (it should be, since the seed): a kept file is staged as a second name of
    # the seeded one, so nothing may write to the seeded files from their check to the swap.
    app.stop(log)
    imported = importing.run(fresh=held.get("applying") != name) if importing is not None else None
    keys = held.get("keys")
    bases = held.get("bases")
    filler = _DeltaFiller(
        delta_set, delta_manifest, whole, dict(keys) if isinstance(keys, dict) else {}, log,
        dict(bases) if isinstance(bases, dict) else {}, _bases_dir(options, app),
    )  # fmt: skip
    try:
        restored = swap.restore_from(name, whole, filler, dest_root=options.dest_root, only=paths, log=log,
                                     state_dir=options.state_dir)  # fmt: skip
    except Error as exc:
        reason = swap.sentence(exc)
        own = importing.undo(log) if importing is not None else ""
        if "putting things back failed too" in reason:
            _forget(held_path, _bases_dir(options, app))
            raise MigrateError(
                f"applying {name} failed ({reason}); {app.name} is stopped on this server, whose seeded data may be "
                f"incomplete{own}: seed it again (selfhost-dr status shows the restore)"
            ) from exc
        raise MigrateError(
            f"applying {name} failed ({reason}); the seeded data are as they were{own}, {app.name} stopped"
        ) from exc
    applied = round(time.monotonic() - t0, 3)
    try:
        app.fix_up(whole, restored.targets, log)
        app.start(start, options.health_timeout, log)
    except BaseException as exc:
        reason = swap.sentence(exc)
        # The kept files are the seeded files themselves (second names): what the start wrote to them stays.
        _forget(held_path, _bases_dir(options, app))
        try:
            app.stop(log)
        except Error as again:
            raise MigrateError(
                f"{app.name} did not start on the migrated data ({reason}), and stopping it failed too ({again}); the "
                f"migrated data stay in place (restore {restored.restore_id}) and {app.name} may still run here"
            ) from exc
        try:
            swap.rollback(restored.restore_id, options.state_dir)
        except Error as again:
            raise MigrateError(
                f"{app.name} did not start on the migrated data ({reason}), and putting the seeded data back failed "
                f"too ({again}); {app.name} is stopped on this server"
            ) from exc
        own = importing.undo(log) if importing is not None else ""
        if isinstance(exc, KeyboardInterrupt):
            raise
        raise MigrateError(
            f"{app.name} did not start on the migrated data ({reason}); it is stopped on this server, the seeded data "
            f"back in place{own} (the start may have written to them: seed this server again before another delta)"
        ) from exc
    warning = ""
    try:
        swap.commit(restored.restore_id, options.state_dir)
    except (Error, OSError) as exc:
        warning = f"dropping the seeded trees did not finish ({swap.sentence(exc)}); the next restore finishes it"
    _applied(held_path, name, whole, restored.restore_id, options, app)
    return {
        **plan,
        "changed": True,
        "restore_id": restored.restore_id,
        "files": restored.files,
        "bytes": restored.bytes,
        "checked": filler.checked,
        "apply_seconds": applied,
        "seconds": round(time.monotonic() - t0, 3),
        "started": start,
        "warning": warning,
        "actions": app.actions(),
        **({"imported": imported} if imported is not None else {}),
    }


class _Document:
    """Catches the one member ``name`` (the document's path in the set) as a set streams by, at most ``limit``
    bytes."""

    current_path = ""

    def __init__(self, name: str, limit: int) -> None:
        self.name, self.limit = name, limit
        self.data: bytearray | None = None
        self.problem = ""

    def begin(self, member: Member) -> Callable[[memoryview], None] | None:
        if member.kind != "file" or member.name != self.name:
            return None
        if self.data is not None:
            self.problem = f"it holds {self.name} twice"
            return None
        if member.size > self.limit:
            self.problem = f"its {self.name} is larger than {self.limit >> 20} MiB"
            return None
        self.data = bytearray()
        return self.data.extend

    def end(self, member: Member) -> None:
        return None


@dataclass
class _Import:
    """A migration by document (Tomo): the frozen server's document, read from the delta set as it is verified once
    more, written privately in the host's state directory, and imported into this server's own database (which the
    swap leaves alone) after a copy of it is kept; put back when the apply fails after the import. The import is one
    transaction, and in mode replace doing it again changes nothing, so a run killed after it is finished by the
    next."""

    app: Application
    document: str  # the private copy of the document
    keep: str  # this server's own database as it was before the import
    done: dict[str, object] | None = None

    @classmethod
    def read(
        cls, app: Application, delta_set: str, delta_manifest: dict[str, object], whole: dict[str, object],
        options: Options, log: Log,
    ) -> _Import:  # fmt: skip
        set_name = os.path.basename(delta_set)
        name = str(dict(whole.get("metadata") or {}).get("document") or "")  # type: ignore[call-overload]
        paths = [str(p) for p in whole.get("paths") or [] if posixpath.basename(str(p)) == name]  # type: ignore[attr-defined]
        if not name or "/" in name or name in (".", "..") or len(paths) != 1:
            raise MigrateError(f"the delta {set_name} names no document of {app.name} to import")
        caught = _Document(paths[0].lstrip("/"), DOCUMENT_LIMIT)
        checked = verify(delta_set, unpack=caught, record=False, delta=True, log=log)
        if checked.ok and checked.manifest != delta_manifest:
            caught.problem = "its manifest changed while it was read"
        if not checked.ok or caught.problem or caught.data is None:
            why = checked.problems[0] if not checked.ok else caught.problem or f"it holds no {name}"
            raise MigrateError(f"the document in the delta {set_name} cannot be imported: {why}")
        where = os.path.dirname(_state_path(options, app.name, "held"))
        safe_fs.makedirs_private(where)
        # Fixed names (never the set's): the document is read as JSON whatever the old server called it.
        document = os.path.join(where, f"{app.name}-migrated-document.json")
        atomic_write(document, bytes(caught.data), 0o600)
        return cls(app, document, os.path.join(where, f"{app.name}-own-before-import.db"))

    def plan(self) -> dict[str, object]:
        try:
            planned = self.app.import_migrated(self.document, self.keep, False, check=True)
        except Error as exc:
            raise MigrateError(
                f"the old server's document cannot be imported into this {self.app.name}: {exc}"
            ) from exc
        return {k: planned[k] for k in ("changed", "changes") if k in planned}

    def run(self, fresh: bool) -> dict[str, object]:
        self.done = self.app.import_migrated(self.document, self.keep, fresh)
        return self.done

    def undo(self, log: Log) -> str:
        """Put this server's own database back if the document was imported; what became of it, as a clause."""
        if self.done is None:
            return ""
        try:
            self.app.put_back_own(self.keep, log)
        except Error as exc:
            return f", and putting its own database back failed ({exc}; it is kept as {self.keep})"
        return ", its own database put back as it was before the import"

    def close(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.document)


def _applied(
    held_path: str, name: str, whole: dict[str, object], restore_id: str, options: Options, app: Application
) -> None:
    """Written down: this server serves the frozen server's data (no delta follows, and a seed would replace them
    only when told to); then the seed's copies of its databases are dropped."""
    _write_state(
        held_path,
        {
            "name": name,
            "manifest_sha256": hashlib.sha256(json.dumps(whole, sort_keys=True).encode()).hexdigest(),
            "manifest": whole,
            "restore_id": restore_id,
            "at": iso(utc_now()),
            "applied": True,
        },
    )
    safe_fs.remove_path(_bases_dir(options, app))


def _resume(
    app: Application, name: str, whole: dict[str, object], start: list[str], options: Options, log: Log
) -> journal.Record | None:
    """The restore of the delta ``name`` that a killed run swapped in (every file of it staged and checked before the
    swap) but did not write down: finished now, as that run would have (fixed up, started, committed). None when
    there is none. Asked only when this server's state says that run began applying ``name`` onto the seed it
    holds."""
    swap.recover_interrupted(options.state_dir, log)
    with journal.Journal(options.state_dir) as jour:
        done = [r for r in jour.records() if r.archive == name and r.state in ("swapped", "committed")]
    if not done:
        return None
    record = max(done, key=lambda r: r.id)
    log(f"migrate: {name} was swapped in by a run that did not finish (restore {record.id}); finishing it")
    app.stop(log)  # (the killed run may have started it: the fix-up is made with it stopped)
    app.fix_up(whole, [s.target for s in record.swaps], log)
    app.start(start, options.health_timeout, log)
    if record.state == "swapped":
        swap.commit(record.id, options.state_dir)
    return record


def _forget(held_path: str, bases: str = "") -> None:
    """This server no longer holds a seed a delta can follow (nor the seed's copies of its databases)."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(held_path)
    if bases:
        safe_fs.remove_path(bases)


def stop_target(app: Application, log: Log = no_log) -> dict[str, object]:
    """Stop the application on the new server (a migration rolled back): its data stay as they are."""
    return {"changed": app.stop(log)}


__all__ = ["MigrateError", "Options", "apply", "delta", "freeze", "receive", "retire", "seed", "stop_target", "thaw"]


# -- the report (the role's record of each pair, on the controller)

PHASES = ("preflight", "seed", "freeze", "sync", "verify", "cutover", "post-verify")
COLUMNS = [
    ("result", "outcome"),
    ("downtime_seconds", "downtime (s)"),
    ("failed_phase", "failed phase"),
    ("delta_percent", "delta / seed (%)"),
    ("transfer", "transfer"),
]


def suite_of(result: dict[str, object]) -> Suite:
    """One pair's suite: its phases as steps (those never reached after a failure as skipped), the rollback when
    one ran, the downtime (freeze to the new server serving, or to the old one serving again) and what became of
    the pair: ``migrated``, ``rolled back``, ``not migrated`` (it failed before the freeze: the old server never
    stopped), ``rollback failed`` or ``stopped (no rollback)`` (``migrate_rollback`` false); a run of some phases
    only (``--tags``): ``checked`` (preflight) or ``in progress``."""
    old, new = _text(result.get("old"), "?"), _text(result.get("new"), "?")
    started = _when(result.get("started")) or datetime.now(timezone.utc).timestamp()
    finished = max(_when(result.get("finished")) or started, started)
    cases = [c for c in (_case(p, "step") for p in _list(result.get("phases"))) if c is not None]
    reached = {c.name for c in cases}
    asked = [p for p in _list(result.get("planned")) if p in PHASES] or list(PHASES)  # (--tags: only some phases)
    failed = next((c for c in cases if c.status == "failed" and c.name != "rollback"), None)
    missing = [p for p in asked if p not in reached]
    if failed is None and missing:
        failed = Case(missing[0], "step", "failed", None, "the migration ended before this phase, saying nothing")
        cases.append(failed)
        reached.add(failed.name)
    for name in PHASES:
        if name not in reached:
            why = f"not run: {failed.name} failed" if failed is not None else "not asked for (--tags)"
            cases.append(Case(name, "step", "skipped", None, why))
    order = {name: n for n, name in enumerate((*PHASES, "rollback"))}
    cases.sort(key=lambda c: order.get(c.name, len(order)))
    rollback = next((c for c in cases if c.name == "rollback"), None)
    froze = any(c.name == "freeze" and c.status != "skipped" for c in cases)
    if failed is None:
        outcome = "migrated" if "post-verify" in asked else "checked" if asked == ["preflight"] else "in progress"
    elif rollback is not None and rollback.status == "failed":
        outcome = "rollback failed"
    elif not froze:
        outcome = "not migrated"
    elif rollback is None and result.get("rollback") is False:
        outcome = "stopped (no rollback)"
    else:
        outcome = "rolled back" if rollback is not None else "rollback failed"
    seed_bytes, delta_bytes = _number(result.get("seed_bytes")), _number(result.get("delta_bytes"))
    properties: dict[str, str | int | float | bool | None] = {
        "old": old,
        "new": new,
        "result": outcome,
        "failed_phase": failed.name if failed is not None else None,
        "downtime_seconds": _number(result.get("downtime_seconds")),
        "seed_bytes": seed_bytes,
        "delta_bytes": delta_bytes,
        "delta_percent": round(100 * delta_bytes / seed_bytes, 1) if seed_bytes and delta_bytes is not None else None,
        "transfer": _text(result.get("transfer"), "") or None,  # direct, or through the controller
        "kept": _number(result.get("kept")),
        "deleted": _number(result.get("deleted")),
    }
    return Suite(f"{old} → {new}", iso_of(started), iso_of(finished), cases, properties)


def iso_of(when: float) -> str:
    return iso(datetime.fromtimestamp(when, timezone.utc))


def not_started(pair: dict[str, object]) -> Suite:
    """A pair a fleet migration never started: its failure budget was spent before its batch."""
    old, new = _text(pair.get("old"), "?"), _text(pair.get("new"), "?")
    now = iso(utc_now())
    why = "not started: the fleet's failure budget was spent before its batch"
    cases = [Case(name, "step", "skipped", None, why) for name in PHASES]
    return Suite(f"{old} → {new}", now, now, cases, {"old": old, "new": new, "result": "not started"})


def report_of(
    results: list[dict[str, object]], title: str = "Migration", never: list[dict[str, object]] | None = None
) -> Report:
    """One report of every pair: those that ran (``results``, the role's records) and those a fleet's failure budget
    kept from starting (``never``)."""
    ran = [suite_of(r) for r in results]
    suites = sorted([*ran, *(not_started(p) for p in never or [])], key=lambda s: s.name)
    # (from the first pair's start to the last pair's end: a pair never started has no time of its own)
    started = min((s.started for s in ran or suites), default=iso(utc_now()))
    finished = max((s.finished for s in ran or suites), default=started)
    return Report("migration", title, started, finished, suites, list(COLUMNS))
