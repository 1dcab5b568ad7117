# Copyright: selfhost.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Tomo as an application: its database, the files that go with it, ``tomo.service``, and the guide's JSON
document written beside every set (``apps/tomo_document.py``).

A set of Tomo holds a consistent snapshot of ``tomo.db``, ``/etc/tomo/environment`` (``TOMO_MASTER_PASSWORD``:
without it the restored server credentials cannot be decrypted; archived, never printed), the service user's
SSH ``known_hosts``, and a copy of the JSON document. A full restore puts back all but the document.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import stat
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .._common import AppError, Log, no_log
from ..sqlite_snapshot import SnapshotError, open_checked, snapshot
from . import tomo_import
from .base import Application, Facts
from .needs import Needs, main_pid, ports_of, process_tree
from .service import Service
from .tomo_export import export
from .tomo_schema import CATEGORIES, database_candidates, installed_version, locate_database


def settle(given: str, log: Log = no_log) -> None:
    """Finish what a stopped Tomo left beside its database: a hot ``-journal`` (a crash mid-transaction) rolled back
    and a ``-wal`` checkpointed into the file, by SQLite itself, as Tomo's next start would. A restore swaps only
    ``tomo.db``: a journal left beside the restored file would be played into it."""
    try:
        database = locate_database(given or None)
        st = os.lstat(database)
    except (AppError, OSError):
        return
    if not stat.S_ISREG(st.st_mode) or not any(os.path.lexists(database + x) for x in ("-journal", "-wal")):
        return
    try:
        conn = open_checked(database, 30.0, (st.st_dev, st.st_ino))
        try:
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()  # rolls a hot journal back
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            conn.close()
    except (SnapshotError, sqlite3.Error) as exc:
        raise AppError(f"cannot settle {database} after stopping Tomo: {exc}") from exc
    log(f"tomo: settled {database} (its journal finished by SQLite) before anything replaces it")


@dataclass
class Settings:
    database: str = ""  # empty: /var/lib/tomo/tomo.db, then ~tomo/.tomo and ~/.tomo
    service: str = "tomo.service"
    service_manager: str = "systemd"  # or process: a plain process kept by start-stop-daemon (no systemd: Docker)
    pidfile: str = "/run/tomo.pid"
    start_command: list[str] = field(default_factory=list)
    environment: str = "/etc/tomo/environment"
    known_hosts: str = "/var/lib/tomo/.ssh/known_hosts"
    categories: list[str] = field(default_factory=lambda: list(CATEGORIES))
    version: str = ""  # Tomo's version; empty: the installed package's (component_versions holds placeholders)
    settle: float = 2.0  # seconds Tomo must keep running after a start
    lock_timeout: float = 30.0


class Tomo(Application):
    name = "tomo"
    modes = ("hot", "cold")
    data_words = "database and files"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.service = Service(
            settings.service, settings.service_manager, settings.pidfile, list(settings.start_command)
        )
        self.by_document = False  # a migration by document: restores leave the database out

    def inspect(self) -> Facts:
        s = self.settings
        database = locate_database(s.database or None)
        extras = [p for p in (s.environment, s.known_hosts) if p and os.path.isfile(p)]
        running = self.service.active()
        return Facts(
            app=self.name,
            version=s.version or installed_version() or "",
            paths=[database, *extras],
            metadata={"database": database, "service": s.service, "service_was_running": running},
            unreachable="" if running else f"{s.service} is not running",
        )

    def needs(self, facts: Facts) -> Needs:
        """The ports ``tomo.service``'s process listens on (Tomo itself is installed on a new server beforehand,
        its version checked)."""
        return Needs(ports=ports_of(main_pid(self.service), self.settings.service))

    def own_processes(self) -> set[int]:
        return process_tree(main_pid(self.service))

    def refuse_backup(self, mode: str, facts: Facts) -> None:
        if mode not in self.modes:
            raise AppError(f"tomo backups are hot or cold, not {mode!r}")

    def before_archive(self, facts: Facts, dest: str, check: bool, log: Log = no_log) -> Facts:
        """Export the guide's JSON document into ``dest``; the set holds a copy of it."""
        s = self.settings
        database = str(facts.metadata["database"])
        made = export(database, dest, s.categories, s.version or None, s.lock_timeout, write=not check)
        log(f"tomo: exported {os.path.basename(made['path'])}")
        metadata = {**facts.metadata, "document": os.path.basename(made["path"]), "counts": made["counts"]}
        paths = facts.paths if check else [*facts.paths, made["path"]]
        version = str(made["application_version"] or facts.version)
        details = {**facts.details, "document": made}
        return Facts(self.name, version, paths, facts.excludes, metadata, facts.running, facts.unreachable, details)

    def restore_paths(self, manifest: dict[str, object]) -> list[str] | None:
        """Every path of the set but the copy of the JSON document (imported on purpose, never put back), and, in a
        migration by document, the database (this server keeps its own, into which the document is imported)."""
        metadata = dict(manifest.get("metadata") or {})  # type: ignore[call-overload]
        document = metadata.get("document")
        paths = [str(p) for p in manifest.get("paths", [])]  # type: ignore[attr-defined]
        kept = [p for p in paths if not document or os.path.basename(p) != document]
        return [p for p in kept if p != metadata.get("database")] if self.by_document else kept

    def migrate_by_document(self) -> None:
        self.by_document = True

    def import_migrated(
        self, document: str, keep: str, fresh: bool, check: bool = False, log: Log = no_log
    ) -> dict[str, object]:
        """The old server's document imported into this server's own database, every category in mode ``replace``
        (one transaction; this install's identity kept), with Tomo stopped; first that database copied to ``keep``
        (SQLite's backup API), unless a copy is there and not ``fresh`` (one an interrupted run made before its
        import). ``check``: planned on a private copy, nothing written."""
        categories = self.settings.categories
        if check:
            return dict(self.import_document(document, categories, "replace", check=True, log=log))
        if fresh or not os.path.isfile(keep):
            snapshot(locate_database(self.settings.database or None), keep, lock_timeout=self.settings.lock_timeout)
        done = self.import_document(document, categories, "replace", stop=False, log=log)
        log(f"tomo: imported the old server's document ({', '.join(categories)}); its own database was kept as {keep}")
        return {**done, "kept_as": keep}

    def put_back_own(self, keep: str, log: Log = no_log) -> None:
        database = locate_database(self.settings.database or None)
        with (
            contextlib.closing(sqlite3.connect(f"file:{keep}?mode=ro", uri=True)) as source,
            tomo_import.open_live(database, self.settings.lock_timeout) as live,
        ):
            source.backup(live)
        log(f"tomo: put back this server's own database from {keep}")

    def trusted_roots(self) -> list[str]:
        """Tomo's database (where ``database`` says, else its usual places), environment file and known_hosts."""
        s = self.settings
        places = [s.database] if s.database else database_candidates()
        return list(dict.fromkeys([*places, s.environment, s.known_hosts]))

    def stop(self, log: Log = no_log) -> bool:
        log(f"tomo: stopping {self.settings.service}")
        was = self.service.stop()
        settle(self.settings.database or "", log)
        return was

    def import_document(
        self,
        src: str,
        categories: Sequence[str] = CATEGORIES,
        mode: str = "merge",
        password: str | None = None,
        check: bool = False,
        stop: bool = True,
        log: Log = no_log,
    ) -> dict[str, Any]:
        """Import the guide's document (or Tomo's own ``.enc`` backup) into this Tomo.

        The import is planned first on a private copy (what check mode reports, and what refuses a bad document
        before anything stops). When it would change something and ``stop`` is set, Tomo is stopped while its data
        changes (its journal settled), and started again afterwards if it ran, whatever the import did."""
        s = self.settings
        database = locate_database(s.database or None)
        args = dict(application_version=s.version or None, lock_timeout=s.lock_timeout, password=password)
        planned = tomo_import.import_document(src, database, categories, mode, check=True, **args)  # type: ignore[arg-type]
        if check or not planned["changed"]:
            return planned
        if not stop:
            return tomo_import.import_document(src, database, categories, mode, **args)  # type: ignore[arg-type]
        was = self.service.active()
        try:
            self.stop(log)  # then the journal is settled, which may fail: Tomo is started again all the same
            done = tomo_import.import_document(src, database, categories, mode, **args)  # type: ignore[arg-type]
        except BaseException as exc:
            if was:
                try:
                    self.start([], 0.0, log)
                except AppError as again:
                    raise AppError(f"{exc}; and starting {s.service} again failed too: {again}") from exc
            raise
        if was:
            self.start([], 0.0, log)
        done["stopped"] = was
        return done

    def start(self, units: list[str], timeout: float, log: Log = no_log) -> None:
        s = self.settings
        log(f"tomo: starting {s.service}")
        self.service.start()
        time.sleep(s.settle)  # Tomo fails on a bad database within moments of its start, if it is going to
        state = self.service.state()
        if state not in ("active", "running"):  # systemd's ActiveState, or a plain process's (service.py)
            see = "" if state == "stopped" else f": see journalctl -u {s.service}"
            raise AppError(f"{s.service} is not running after its start (it is {state}){see}")
