# Copyright: selfhost.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A run of an operation started by an Ansible module, under the same host lock as ``selfhost-dr`` and recorded in
the same ``state.json``: a playbook and a timer never back up or restore a host at once, and ``selfhost-dr status``
tells the truth about both. (Metrics and heartbeats are the host command's: their settings live in its
configuration; its next run exports what the modules recorded.)"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from .._common import Log, no_log
from . import state
from .lock import DEFAULT_WAIT, HostLock

# What the modules that take the lock add to their argument spec.
LOCK_SPEC: dict[str, dict[str, object]] = {"lock_wait": {"type": "float", "default": DEFAULT_WAIT}}


@contextlib.contextmanager
def recorded(
    directory: str | None, operation: str, app: str = "", wait: float | None = DEFAULT_WAIT, log: Log = no_log
) -> Iterator[state.Run]:
    """Hold the host lock (waiting up to ``wait`` seconds, else one sentence naming its holder) and record the run's
    attempt, then its success or failure with its sentence. A state.json that cannot be written never fails the run
    (the failure is logged)."""
    with HostLock(directory, operation, wait, "", log):
        store = state.Store(directory)
        run = state.Run.start(operation, "", app)
        _record(store, run, log)
        try:
            yield run
        except BaseException as exc:
            run.finish(130 if isinstance(exc, KeyboardInterrupt) else 1, str(exc) or type(exc).__name__)
            _record(store, run, log)
            raise
        run.finish(0)
        _record(store, run, log)


def _record(store: state.Store, run: state.Run, log: Log) -> None:
    try:
        store.record(run)
    except state.StateError as exc:
        log(f"the run was not recorded: {exc}")
