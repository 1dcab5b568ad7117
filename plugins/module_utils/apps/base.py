# Copyright: selfhost.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What ``engine/`` asks of an application: its facts, the paths to archive, stop and start, the per-unit
procedure, post-restore fix-ups and the health check. One subclass per application."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .._common import AppError, Log, no_log

if TYPE_CHECKING:
    from .needs import Needs
    from .tenement_instance import InstanceBackup


@dataclass
class Facts:
    """An application as it is now, read without changing anything."""

    app: str
    version: str = ""
    # What a backup archives, what it leaves out, and what its manifest records about the application.
    paths: list[str] = field(default_factory=list)
    excludes: list[str] = field(default_factory=list)
    metadata: dict[str, object] = field(default_factory=dict)
    # The units (tenement instances) running now: what a cold backup or a failed restore starts again.
    running: list[str] = field(default_factory=list)
    # Why the application cannot be stopped and started again safely now ("" when it can).
    unreachable: str = ""
    details: dict[str, object] = field(default_factory=dict)


def nothing_to_archive(word: str, unit: str, trees: list[str]) -> str:
    """Why a backup of one unit would hold nothing ("" when one of its ``trees`` holds something)."""
    for tree in trees:
        if os.path.isdir(tree) and not os.path.islink(tree):
            with contextlib.suppress(OSError), os.scandir(tree) as entries:
                if any(True for _ in entries):
                    return ""
    return (
        f"a backup of {word} {unit} would hold nothing: {', '.join(trees)} "
        f"{'is' if len(trees) == 1 else 'are'} missing or empty"
    )


class Application:
    """The procedures' view of one application. Methods raise :class:`AppError` with one sentence."""

    name = "app"
    modes: tuple[str, ...] = ("hot", "cold")
    unit_word = "unit"
    data_words = "data"  # what a full restore puts back, in words: "the previous {data_words} are back"

    def inspect(self) -> Facts:
        raise NotImplementedError

    def did(self, sentence: str) -> None:
        """Say in the operation's result something the application did beyond the plain procedure."""
        self.__dict__.setdefault("_done", []).append(sentence)

    def actions(self) -> list[str]:
        """What :meth:`did` said, in order, since the application was built."""
        return list(self.__dict__.get("_done", []))

    def refuse_backup(self, mode: str, facts: Facts) -> None:
        """Raise for a backup this mode cannot make now (before anything is stopped)."""
        if mode not in self.modes:
            raise AppError(f"{self.name} backups are {', '.join(self.modes)}, not {mode!r}")
        if mode == "cold" and facts.unreachable:
            raise AppError(
                f"a cold backup stops {self.name} and starts it again, but {facts.unreachable}; "
                "start it first or make a hot backup"
            )

    def check_can_restart(self) -> None:
        """Raise now if stopping and starting the application again could not work (before anything stops)."""
        return None

    def stop(self, log: Log = no_log) -> bool:
        """Stop the application (and its units); whether it was running."""
        raise NotImplementedError

    def start(self, units: list[str], timeout: float, log: Log = no_log) -> None:
        """Start the application and the ``units`` that ran, and check that they are healthy."""
        raise NotImplementedError

    def before_archive(self, facts: Facts, dest: str, check: bool, log: Log = no_log) -> Facts:
        """Work that goes into the set besides the paths (Tomo: its JSON document); the facts to archive."""
        return facts

    def restore_paths(self, manifest: dict[str, object]) -> list[str] | None:
        """The set's paths a full restore puts back (None: all of them)."""
        return None

    def trusted_roots(self) -> list[str]:
        """The application's paths as the operator's own settings give them (not read from a file a restore writes
        back): a restore may put its trees there even in a system directory (``/etc/tenement``)."""
        return []

    def restore_roots(self, before: Facts | None) -> list[str]:
        """Where a whole restore may put a set's trees on this host: the application's own paths as this host
        configures them, never as the set says (a set is hostile input; it could name ``/etc`` or ``/root``)."""
        return list(before.paths) if before else []

    def units_to_start(self, manifest: dict[str, object]) -> list[str]:
        """What ran when the set was made, to start after a full restore."""
        running = dict(manifest.get("metadata") or {}).get("running")  # type: ignore[call-overload]
        return [str(u) for u in running] if isinstance(running, list) else []

    def fix_up(self, manifest: dict[str, object], targets: list[str], log: Log = no_log) -> None:
        """Make restored files safe to start on (before anything starts)."""
        return None

    def fixed_up_paths(self, facts: Facts) -> list[str]:
        """The files :meth:`fix_up` may change after a restore (a migration's delta always carries them)."""
        return []

    # -- migrated by its document (Tomo): the new server keeps its own database and imports the old one's document
    def migrate_by_document(self) -> None:
        """From now on a restore leaves the database out (the new server's own stays); raise when there is none."""
        raise AppError(f"{self.name} has no document to migrate by; only Tomo has")

    def import_migrated(
        self, document: str, keep: str, fresh: bool, check: bool = False, log: Log = no_log
    ) -> dict[str, object]:
        """Import the old server's ``document`` into this server's own database, the application stopped, after a
        copy of that database to ``keep`` (a copy already there is kept unless ``fresh``); ``check``: plan only."""
        raise AppError(f"{self.name} has no document to migrate by; only Tomo has")

    def put_back_own(self, keep: str, log: Log = no_log) -> None:
        """This server's own database as :meth:`import_migrated` copied it to ``keep``, put back."""
        raise AppError(f"{self.name} has no document to migrate by; only Tomo has")

    # -- what its configuration needs of a server (a migration's preflight, apps/needs.py)
    def needs(self, facts: Facts) -> Needs:
        """The ports its server listens on and the programs its configuration runs, beyond the data it archives."""
        from .needs import Needs

        return Needs()

    def own_processes(self) -> set[int]:
        """Its processes on this host (the ports they hold are freed when it is stopped)."""
        return set()

    # -- units (tenement instances): restored and backed up one at a time, the others keep running
    def unit_paths(self, unit: str, facts: Facts) -> list[str]:
        raise AppError(f"{self.name} has no {self.unit_word}s to restore one at a time")

    def elsewhere(self, unit: str) -> str:
        """How to name where a unit's data is, when it was not found ("; ..." or "")."""
        return ""

    def stop_unit(self, unit: str, log: Log = no_log) -> None:
        raise AppError(f"{self.name} has no {self.unit_word}s")

    def start_unit(self, unit: str, timeout: float, log: Log = no_log) -> None:
        raise AppError(f"{self.name} has no {self.unit_word}s")

    def backup_unit(
        self, unit: str, facts: Facts, dest: str, health_timeout: float, log: Log, create_args: dict[str, object]
    ) -> InstanceBackup:
        """One unit's own set (tenement: stop, copy, spawn, compress)."""
        raise AppError(f"{self.name} has no {self.unit_word}s to back up one at a time")
