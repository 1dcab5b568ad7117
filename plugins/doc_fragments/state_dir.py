# Copyright: selfhost.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations


class ModuleDocFragment:
    # The host's own state: the restore journal, state.json and the host lock.
    DOCUMENTATION = r"""
options:
  state_dir:
    description:
      - Where the managed host keeps selfhost.dr's state; the restore journal is its C(journal/) directory
        (mode C(0700), root only), the status of every operation its C(state.json), the host lock its C(lock).
      - Defaults to the environment variable C(SELFHOST_DR_STATE_DIR), else C(/var/lib/selfhost-dr).
    type: path
"""

    # The host lock, for the modules that back up or restore (plugins/module_utils/engine/recorded.py LOCK_SPEC).
    LOCK = r"""
options:
  lock_wait:
    description:
      - Seconds to wait for the host lock that every backup and restore of this collection holds, from a module or
        from C(selfhost-dr) run by a timer, so that two never run at once on a host; then the module fails with a
        sentence naming the holder. V(0) does not wait.
      - The run is recorded in C(state.json) (last attempt, success or failure with its sentence), which
        C(selfhost-dr status) and M(selfhost.dr.dr_status) read.
    type: float
    default: 3600
"""
