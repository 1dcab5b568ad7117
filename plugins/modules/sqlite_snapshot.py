#!/usr/bin/python
# Copyright: selfhost.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
---
module: sqlite_snapshot
short_description: Consistent online copy of a live SQLite database
version_added: 0.1.0
description:
  - Copies the SQLite database O(src), which other processes may keep writing, to O(dest) as one point in time,
    with SQLite's online backup API in one step (or C(VACUUM INTO)), never a plain file copy.
  - A one-step copy finishes under a writer that commits continuously; a stepped copy such as C(sqlite3 db .backup)
    restarts on every commit and may never finish.
  - The copy passes C(PRAGMA integrity_check), keeps the source's journal mode (a WAL database stays WAL, with no
    C(-wal) file beside it), is fsynced, and only then appears at O(dest). A failure leaves no file at O(dest).
author:
  - selfhost.dr developers
attributes:
  check_mode:
    support: full
    description: Checks that O(src) is a readable SQLite database and reports that a copy would be made.
  diff_mode:
    support: none
  idempotent:
    support: none
    description: Every run takes a new snapshot of a database that may have changed.
options:
  src:
    description: The live database. Recognised by its header, whatever its name.
    type: path
    required: true
  dest:
    description: Where the copy goes. Its directory must exist. An existing file is replaced.
    type: path
    required: true
  method:
    description:
      - V(backup) copies pages with the online backup API in one step.
      - V(vacuum) writes a compacted copy with C(VACUUM INTO).
    type: str
    choices: [backup, vacuum]
    default: backup
  lock_timeout:
    description:
      - Seconds a writer holding an exclusive lock (rollback journal mode) may keep the copy waiting before it fails.
    type: float
    default: 30
  integrity_check:
    description: Run C(PRAGMA integrity_check) on the copy and fail when it does not answer C(ok).
    type: bool
    default: true
  mode:
    description: File mode of the copy.
    type: raw
    default: "0600"
"""

EXAMPLES = r"""
- name: Snapshot tenement's database while it runs
  selfhost.dr.sqlite_snapshot:
    src: /var/lib/tenement/tenement.db
    dest: /var/backups/tenement.db

- name: Compacted copy, waiting at most 5 s for a writer's lock
  selfhost.dr.sqlite_snapshot:
    src: /var/lib/tomo/tomo.db
    dest: /var/backups/tomo.db
    method: vacuum
    lock_timeout: 5
"""

RETURN = r"""
snapshot:
  description: What was copied.
  returned: success, not in check mode
  type: dict
  contains:
    path: {description: The copy., type: str, sample: /var/backups/tenement.db}
    size: {description: Bytes., type: int, sample: 209715200}
    pages: {description: Pages in the copy., type: int, sample: 51200}
    page_size: {description: Bytes per page., type: int, sample: 4096}
    sha256:
      description: Checksum of the copy.
      type: str
      sample: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
    journal_mode: {description: V(wal) or V(rollback), as the source., type: str, sample: wal}
    method: {description: V(backup) or V(vacuum)., type: str, sample: backup}
    duration: {description: Seconds taken., type: float, sample: 0.31}
    attempts: {description: Tries needed because the source was locked., type: int, sample: 1}
    integrity: {description: What C(integrity_check) answered., type: str, sample: ok}
"""

import os

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.selfhost.dr.plugins.module_utils.sqlite_snapshot import (
    SnapshotError,
    check_source,
    snapshot,
)


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            src=dict(type="path", required=True),
            dest=dict(type="path", required=True),
            method=dict(type="str", default="backup", choices=["backup", "vacuum"]),
            lock_timeout=dict(type="float", default=30.0),
            integrity_check=dict(type="bool", default=True),
            mode=dict(type="raw", default="0600"),
        ),
        supports_check_mode=True,
    )
    p = module.params
    if not os.path.isdir(os.path.dirname(os.path.abspath(p["dest"]))):
        module.fail_json(msg=f"the directory of dest {p['dest']} does not exist")
    old_umask = os.umask(0o077)
    try:
        if module.check_mode:
            check_source(p["src"])
            module.exit_json(changed=True)
        snap = snapshot(
            p["src"],
            p["dest"],
            method=p["method"],
            lock_timeout=p["lock_timeout"],
            check_integrity=p["integrity_check"],
        )
    except SnapshotError as exc:
        module.fail_json(msg=str(exc))
    finally:
        os.umask(old_umask)
    module.set_mode_if_different(p["dest"], p["mode"], False)
    module.exit_json(changed=True, snapshot=snap.to_dict())


if __name__ == "__main__":
    main()
