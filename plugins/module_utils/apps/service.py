# Copyright: selfhost.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Stopping and starting an application's long-running process: a systemd unit, or a plain process kept by
``start-stop-daemon`` and its pidfile (hosts and containers without systemd)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field

from .. import safe_fs
from .._common import AppError

MANAGERS = ("auto", "systemd", "process")


def systemd_runs() -> bool:
    """Whether systemd is this host's service manager (what ``sd_booted()`` checks)."""
    return os.path.isdir("/run/systemd/system")


def _run(argv: Sequence[str], what: str, ok: Sequence[int] = (0,)) -> subprocess.CompletedProcess[str]:
    try:
        done = subprocess.run(list(argv), capture_output=True, text=True, check=False, timeout=300)
    except FileNotFoundError as exc:
        raise AppError(f"cannot {what}: {argv[0]} is not installed") from exc
    except subprocess.TimeoutExpired as exc:
        raise AppError(f"cannot {what}: {argv[0]} did not finish within 300 s") from exc
    if done.returncode not in ok:
        said = (done.stderr or done.stdout).strip().splitlines()
        raise AppError(f"cannot {what}: {said[-1] if said else argv[0] + ' exited ' + str(done.returncode)}")
    return done


@dataclass
class Service:
    """One service: ``manager`` systemd (``unit``) or process (``pidfile``, started by ``start_command``)."""

    unit: str
    manager: str = "auto"
    pidfile: str = ""
    start_command: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.manager not in MANAGERS:
            raise AppError(f"the service manager must be one of {', '.join(MANAGERS)}, got {self.manager!r}")
        if self.manager == "auto":
            self.manager = "systemd" if systemd_runs() else "process"
        if self.manager == "process" and not (self.pidfile and self.start_command):
            raise AppError(f"{self.unit} runs as a plain process here, and needs a pidfile and a start command")

    def stop(self) -> bool:
        """Stop it and wait until it is gone; whether it was running."""
        if self.manager == "systemd":
            was = self.active()
            # 5: the unit is not loaded (a new server): nothing runs.
            _run(["systemctl", "stop", self.unit], f"stop {self.unit}", ok=(0, 5))
            return was
        # start-stop-daemon exits 1 when nothing ran.
        argv = ["start-stop-daemon", "--stop", "--retry", "TERM/10/KILL/5", "--remove-pidfile"]
        done = _run([*argv, "--pidfile", self.pidfile], f"stop {self.unit}", ok=(0, 1))
        return done.returncode == 0

    def start(self) -> None:
        if self.manager == "systemd":
            _run(["systemctl", "start", self.unit], f"start {self.unit}")
        elif not self.active():
            _run(self.start_command, f"start {self.unit}")

    def active(self) -> bool:
        if self.manager == "systemd":
            argv = ["systemctl", "is-active", "--quiet", self.unit]
            done = _run(argv, f"ask systemd about {self.unit}", ok=range(256))
            return done.returncode == 0
        done = _run(["start-stop-daemon", "--status", "--pidfile", self.pidfile], "look at a pidfile", ok=range(256))
        return done.returncode == 0

    def main_pid(self) -> int:
        """The pid of its main process (0 when it does not run): systemd's MainPID, or the pidfile's pid."""
        if self.manager == "systemd":
            done = _run(["systemctl", "show", "-P", "MainPID", self.unit], f"ask systemd about {self.unit}")
            text = done.stdout.strip()
        else:
            try:
                text = safe_fs.read_regular(self.pidfile, 64).decode("ascii", "replace").strip()
            except (OSError, ValueError):  # none, not a regular file, or too large
                return 0
        return int(text) if text.isdigit() and os.path.isdir(f"/proc/{text}") else 0

    def state(self) -> str:
        """systemd's ActiveState (``active``, ``failed``, ...), or running/stopped for a plain process."""
        if self.manager == "systemd":
            done = _run(["systemctl", "show", "-P", "ActiveState", self.unit], f"ask systemd about {self.unit}")
            return done.stdout.strip() or "unknown"
        return "running" if self.active() else "stopped"
