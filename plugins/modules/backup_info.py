#!/usr/bin/python
# Copyright: selfhost.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
---
module: backup_info
short_description: List the backup sets in a directory, newest first
version_added: 0.1.0
description:
  - Lists the sets written by M(selfhost.dr.backup_create) in O(path), newest first, with their application, host,
    time, label, size and verification state.
  - Reads only the small sidecar manifests (C(SET.manifest.json)), never the archives, so it is fast however large the
    sets are. A set whose sidecar manifest is missing or damaged is still listed, from its file name, and says so.
  - Hidden files (sets being written) and sidecars whose archive is gone are not listed.
author:
  - selfhost.dr developers
attributes:
  check_mode:
    support: full
  diff_mode:
    support: none
  idempotent:
    support: full
options:
  path:
    description: The backup directory.
    type: path
    required: true
  app:
    description: Only sets of this application.
    type: str
  host:
    description: Only sets of this host.
    type: str
  label:
    description: Only sets with this label.
    type: str
extends_documentation_fragment:
  - selfhost.dr.state_dir
seealso:
  - module: selfhost.dr.backup_create
  - module: selfhost.dr.backup_verify
  - module: selfhost.dr.backup_prune
"""

EXAMPLES = r"""
- name: What backups does this host have?
  selfhost.dr.backup_info:
    path: /var/backups/selfhost-dr
    app: tenement
  register: catalog

- name: Restore the newest one
  ansible.builtin.debug:
    msg: "newest: {{ catalog.latest.name }} ({{ catalog.latest.verification.state }})"
  when: catalog.count > 0
"""

RETURN = r"""
sets:
  description: The sets, newest first.
  returned: always
  type: list
  elements: dict
  contains:
    name: {description: The archive's file name., type: str, sample: tenement-web1-20261122T035100Z-hot.tar.zst}
    path: {description: The archive., type: str, sample: /var/backups/dr/tenement-web1-20261122T035100Z-hot.tar.zst}
    size: {description: Bytes of the archive., type: int, sample: 600238142}
    app: {description: Application., type: str, sample: tenement}
    app_version: {description: Application version recorded at backup time., type: str, sample: 0.2.2}
    host: {description: Host the set was made on., type: str, sample: web1}
    label: {description: Label., type: str, sample: hot}
    time: {description: When the backup started (UTC, ISO 8601)., type: str, sample: "2026-11-22T03:51:00.123456Z"}
    files: {description: Files in the set., type: int, sample: 1004}
    databases: {description: SQLite snapshots in the set., type: int, sample: 201}
    bytes: {description: Bytes of file content before compression., type: int, sample: 1079981582}
    metadata: {description: What the caller recorded (for tenement, the running instances)., type: dict, sample: {}}
    manifest: {description: V(ok), or why the sidecar manifest could not be read., type: str, sample: ok}
    verification:
      description:
        - V(verified), V(failed), V(changed) (the file changed since it was verified) or V(unverified).
        - With the time of the verification and the whole-file sha256 it saw.
      type: dict
      sample: {state: verified, verified_at: "2026-11-22T03:52:00.000000Z", sha256: 67324f01e9a1f4df3197bf2f61b3d88a44e3f12085d9a321dffce997a068c207}
latest:
  description: The newest set, or an empty dict when there is none.
  returned: always
  type: dict
count:
  description: How many sets were listed.
  returned: always
  type: int
  sample: 7
leftovers:
  description:
    - What killed runs left in the directory (partial archives and sidecars, snapshot staging directories, per-instance
      copies, verify's temporary files, sidecars whose archive is gone). The next M(selfhost.dr.backup_create) into
      the directory removes those no live process holds (C(in_use) false).
  returned: always
  type: list
  elements: dict
  sample: [{path: /var/backups/dr/.tenement-web1-20261122T035100Z-hot.tar.zst.partial-4242, kind: partial archive, size: 52428800, mtime: 1795320660, in_use: false}]
pending_restores:
  description:
    - Restores of this host recorded in its journal that wait for a commit or a roll back (C(swapped)), were
      interrupted (C(staging), C(swapping)) and will be undone by the next restore, commit or roll back, or were
      committed with their safety copies kept (C(kept)).
  returned: always
  type: list
  elements: dict
  sample: [{restore_id: 20261122T040000Z-1a2b3c4d, state: swapped, archive: /var/backups/dr/tenement-web1-20261122T035100Z-hot.tar.zst, started_at: "2026-11-22T04:00:00Z", swaps: [{target: /var/lib/tenement, safety: /var/lib/.tenement.selfhost-dr-safety-20261122T040000Z}]}]
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.selfhost.dr.plugins.module_utils._common import BackupError
from ansible_collections.selfhost.dr.plugins.module_utils.engine.journal import STATE_DIR_SPEC
from ansible_collections.selfhost.dr.plugins.module_utils.engine.swap import pending
from ansible_collections.selfhost.dr.plugins.module_utils.sets.catalog import catalog, leftovers


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            path=dict(type="path", required=True),
            app=dict(type="str"),
            host=dict(type="str"),
            label=dict(type="str"),
            **STATE_DIR_SPEC,
        ),
        supports_check_mode=True,
    )
    p = module.params
    try:
        sets = catalog(p["path"], app=p["app"], host=p["host"], label=p["label"])
    except BackupError as exc:
        module.fail_json(msg=str(exc))
    module.exit_json(
        changed=False,
        sets=sets,
        latest=sets[0] if sets else {},
        count=len(sets),
        leftovers=leftovers(p["path"]),
        pending_restores=pending(p["state_dir"]),
    )


if __name__ == "__main__":
    main()
