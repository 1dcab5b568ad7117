# Copyright: selfhost.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations


class ModuleDocFragment:
    # The host's own state: the restore journal (and, later, schedules' status).
    DOCUMENTATION = r"""
options:
  state_dir:
    description:
      - Where the managed host keeps selfhost.dr's state; the restore journal is its C(journal/) directory
        (mode C(0700), root only).
      - Defaults to the environment variable C(SELFHOST_DR_STATE_DIR), else C(/var/lib/selfhost-dr).
    type: path
"""
