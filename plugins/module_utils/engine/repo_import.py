# Copyright: selfhost.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Importing a local set into restic repositories: the history a host kept as sets, moved off-site.

A set becomes a snapshot that a repository restore takes exactly as one :mod:`.repo_backup` made: the set is
verified (deeply, unless this very content passed a deep verification), unpacked by the set restore's own code
(never through a link) below a private directory in the backup directory, each database moved to where a stage
keeps its copy, the set's manifest written in the stage, and ``restic backup`` run there on relative paths, so the
snapshot holds the set's absolute paths. It carries the set's host and start time, the tags ``selfhost-dr``,
``app=APP``, ``kind=LABEL`` and ``imported``. The private directory is removed whatever happens.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from .. import safe_fs
from .._common import BackupError, Log, VerificationError, no_log, parse_iso
from ..repos.restic import NoRepositoryError, RepoError, Restic
from ..repos.stage import STAGE_DIR, stage_dir
from ..sets.manifest import MANIFEST_MEMBER
from ..sets.names import token
from . import swap
from .repo_backup import Outcome

IMPORTED_TAG = "imported"


class ImportFailedError(BackupError):
    """A required repository failed (the others were tried): the sentence, and every repository's outcome."""

    def __init__(self, message: str, result: Result) -> None:
        super().__init__(message)
        self.result = result


@dataclass
class Result:
    archive: str
    app: str
    host: str
    started_at: str
    outcomes: list[Outcome] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def run(
    archive: str,
    repos: Sequence[Restic],
    backup_dir: str,
    state_dir: str | None = None,
    log: Log = no_log,
) -> Result:
    """Import the set ``archive`` into each repository; one outcome each (a required one failing raises after the
    others were tried, as a backup does)."""
    if not repos:
        raise BackupError("no repository to import into")
    try:
        checked = swap._verify(archive, log, None, False)
    except VerificationError as exc:
        raise VerificationError(
            str(exc).replace("refusing to restore", f"refusing to import {os.path.basename(archive)}", 1)
        ) from exc
    manifest = checked.manifest or {}
    app = str(manifest.get("app") or "")
    label = str(manifest.get("label") or "")
    mode = str(dict(manifest.get("metadata") or {}).get("mode") or label or "set")  # type: ignore[call-overload]
    if not app or label.startswith("instance-"):
        raise BackupError(
            f"{os.path.basename(archive)} is a set of one instance; only a set of a whole application is imported"
        )
    host = str(manifest.get("host") or "")
    started = parse_iso(str(manifest.get("started_at")))
    result = Result(archive, app, host, started.strftime("%Y-%m-%dT%H:%M:%SZ"))
    where = os.path.join(backup_dir, STAGE_DIR, f".import-{token(app)}-{os.getpid()}")
    safe_fs.makedirs_private(os.path.dirname(where))
    os.mkdir(where, 0o700)
    try:
        paths = _unpack(archive, manifest, where, backup_dir, state_dir, log)
        for restic in repos:
            result.outcomes.append(
                _into(restic, where, paths, host, app, mode, started.strftime("%Y-%m-%d %H:%M:%S"), log)
            )
    finally:
        parent = os.open(os.path.dirname(where), safe_fs.DIR_FLAGS)
        try:
            safe_fs.remove_tree(os.path.basename(where), parent)
        finally:
            os.close(parent)
    failed = [o for o in result.outcomes if not o.ok]
    result.warnings = [f"{o.repository} (optional): {o.error}" for o in failed if not o.required]
    required = [o for o in failed if o.required]
    if required:
        done = [o.repository for o in result.outcomes if o.ok]
        raise ImportFailedError(required[0].error + (f"; {', '.join(done)} got the snapshot" if done else ""), result)
    return result


def _unpack(
    archive: str, manifest: dict[str, object], where: str, backup_dir: str, state_dir: str | None, log: Log
) -> list[str]:
    """The set's trees below ``where`` (through the set restore: verified, never through a link), its databases
    moved into the stage, the manifest written there; the relative paths ``restic backup`` is given."""
    log(f"import: unpacking {os.path.basename(archive)} into {where}")
    restored = swap.restore(archive, dest_root=where, log=log, state_dir=state_dir)
    swap.commit(restored.restore_id, state_dir)
    stage = stage_dir(backup_dir, str(manifest["app"]))
    stage_here = os.path.join(where, stage.lstrip("/"))
    files = [f for f in manifest.get("files", []) if isinstance(f, dict)]  # type: ignore[attr-defined]
    for entry in files:
        if not entry.get("sqlite"):
            continue
        source = os.path.join(where, str(entry["path"]))
        target = os.path.join(stage_here, "db", str(entry["path"]))
        safe_fs.makedirs_private(os.path.dirname(target))
        if os.path.islink(source) or not os.path.isfile(source):
            raise VerificationError(f"{entry['path']} of {os.path.basename(archive)} is not a file after unpacking")
        os.rename(source, target)
    staged = copy.deepcopy(manifest)
    metadata = dict(staged.get("metadata") or {})  # type: ignore[call-overload]
    metadata.update(store="restic", stage=stage, imported_from=os.path.basename(archive))
    staged["metadata"] = metadata
    with open(os.path.join(stage_here, MANIFEST_MEMBER), "x", encoding="utf-8") as handle:
        json.dump(staged, handle, indent=1)
        handle.write("\n")
    roots = sorted({str(p).lstrip("/") for p in manifest.get("paths", [])})  # type: ignore[attr-defined]
    present = [r for r in roots if os.path.lexists(os.path.join(where, r))]
    return [stage.lstrip("/"), *present]


def _into(restic: Restic, where: str, paths: list[str], host: str, app: str, mode: str, when: str, log: Log) -> Outcome:
    outcome = Outcome(restic.repo.name, restic.repo.shown, restic.repo.required)
    started = time.monotonic()
    tags = ["selfhost-dr", f"app={app}", f"kind={token(mode) or 'set'}", IMPORTED_TAG]
    try:
        try:
            summary = restic.backup(paths, host, tags, cwd=where, time=when)
        except NoRepositoryError:
            if not restic.repo.init:
                raise
            restic.init()
            outcome.created = True
            summary = restic.backup(paths, host, tags, cwd=where, time=when)
        outcome.snapshot_id = str(summary["snapshot_id"])
        for key in ("data_added", "files_new", "files_changed", "files_unmodified"):
            value = summary.get(key)
            setattr(outcome, key, value if isinstance(value, int) else 0)
        outcome.ok = True
        outcome.tries = 1
        added = outcome.data_added / 1048576
        log(f"{restic.repo.shown}: imported as snapshot {outcome.snapshot_id} ({added:.1f} MiB added)")
    except RepoError as exc:
        outcome.error = str(exc)
    outcome.seconds = round(time.monotonic() - started, 3)
    with contextlib.suppress(RepoError):
        if outcome.ok:
            outcome.snapshots = len(restic.snapshots(["selfhost-dr"], host))
    return outcome
