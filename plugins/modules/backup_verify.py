#!/usr/bin/python
# Copyright: selfhost.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
---
module: backup_verify
short_description: Check a backup set end to end (checksum, every member, every SQLite database)
version_added: 0.1.0
description:
  - Checks the set written by M(selfhost.dr.backup_create) at O(path), and reports each check.
  - V(checksum) the sha256 of the whole file against C(PATH.sha256).
  - V(archive) the compressed stream and the tar stream can be read to their end (a truncated file fails here).
  - V(manifest) the manifest inside the archive is readable, of a format this collection knows, and equal to the
    sidecar copy C(PATH.manifest.json).
  - V(members) every member against the manifest (type, size, sha256, link target); a missing, extra or changed member
    fails, and so does an unsafe member (absolute path, C(..), hard link, device).
  - V(sqlite) C(PRAGMA integrity_check) on every SQLite database in the set.
  - The file is decompressed once, as a stream, while it is hashed; nothing is extracted to disk except databases larger
    than O(memory_limit), which are checked from a private temporary file.
  - The result is recorded beside the set as C(PATH.verified.json), which M(selfhost.dr.backup_info) reports and
    M(selfhost.dr.backup_prune) uses to keep the newest verified set.
  - A set whose manifest has a format version newer than this collection knows fails with a message saying so.
author:
  - selfhost.dr developers
attributes:
  check_mode:
    support: full
    description: Verification only reads the set, so it runs in check mode too; only the record is not written.
  diff_mode:
    support: none
  idempotent:
    support: full
    description: Never changes the set; C(changed) is always false.
options:
  path:
    description: The archive of the set (C(.tar.zst) or C(.tar.gz)).
    type: path
    required: true
  sqlite:
    description: Run C(integrity_check) on every SQLite database in the set.
    type: bool
    default: true
  record:
    description: Write the result to C(PATH.verified.json).
    type: bool
    default: true
  memory_limit:
    description: Databases up to this many bytes are checked in memory; larger ones from a temporary file.
    type: int
    default: 67108864
  tmpdir:
    description:
      - Where databases larger than O(memory_limit) are copied to be checked (a private directory made in it, removed
        at the end). It needs room for the two largest databases of the set.
      - Default is the set's own directory, which is on disk; C(/tmp) is often a small tmpfs.
    type: path
seealso:
  - module: selfhost.dr.backup_create
  - module: selfhost.dr.backup_info
"""

EXAMPLES = r"""
- name: Verify the set just made
  selfhost.dr.backup_verify:
    path: "{{ backup.path }}"

- name: Verify, and keep going to report when it fails
  selfhost.dr.backup_verify:
    path: /var/backups/selfhost-dr/tenement-web1-20261122T035100Z-hot.tar.zst
  register: verified
  failed_when: false

- name: Show every check
  ansible.builtin.debug:
    var: verified.checks
"""

RETURN = r"""
ok:
  description: Whether every check passed.
  returned: always
  type: bool
  sample: true
checks:
  description: Each check with its result, in order.
  returned: always
  type: list
  elements: dict
  sample:
    - {check: checksum, ok: true, detail: sha256 of the whole file matches}
    - {check: manifest, ok: true, detail: manifest readable}
    - {check: members, ok: true, detail: 1409 members match the manifest}
    - {check: sqlite, ok: true, detail: 201 databases pass integrity_check}
problems:
  description: One sentence per failed check.
  returned: always
  type: list
  elements: str
  sample: []
stats:
  description: Bytes read, members and databases checked, seconds taken.
  returned: always
  type: dict
  sample: {bytes: 600238142, members: 1409, databases: 201, seconds: 2.4}
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.selfhost.dr.plugins.module_utils._common import BackupError
from ansible_collections.selfhost.dr.plugins.module_utils.sets.verify import verify


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            path=dict(type="path", required=True),
            sqlite=dict(type="bool", default=True),
            record=dict(type="bool", default=True),
            memory_limit=dict(type="int", default=64 * 1024 * 1024),
            tmpdir=dict(type="path"),
        ),
        supports_check_mode=True,
    )
    p = module.params
    try:
        result = verify(
            p["path"],
            check_sqlite=p["sqlite"],
            memory_limit=p["memory_limit"],
            record=p["record"] and not module.check_mode,
            log=module.log,
            tmpdir=p["tmpdir"],
        )
    except BackupError as exc:
        module.fail_json(msg=str(exc))
    outcome = dict(changed=False, ok=result.ok, checks=result.checks, problems=result.problems, stats=result.stats)
    for warning in result.warnings:
        module.warn(warning)
    if not result.ok:
        module.fail_json(msg=result.summary, **outcome)
    module.exit_json(**outcome)


if __name__ == "__main__":
    main()
