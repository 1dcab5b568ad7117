#!/usr/bin/python
# Copyright: selfhost.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
---
module: tomo_backup_info
short_description: List the Tomo backup documents in a directory, newest first
version_added: 0.1.0
description:
  - The guide's C(tomo backup list). Lists the documents written by M(selfhost.dr.tomo_backup) (and by Tomo itself)
    in O(path), that is the files named C(tomo-backup-YYYY-MM-DDTHH-MM-SS.json), newest first.
  - For each, its time, format version, Tomo version and the rows per category. Each document is read and checked
    as an import would check it; one that cannot be read is listed with RV(documents[].valid=false) and the reason
    in RV(documents[].error), and the others are still listed. That covers malformed JSON, a wrong type anywhere,
    NaN or Infinity, a key twice in one object, nesting too deep to parse, a file larger than 16 MiB (the most a
    document may be, and the most that is read of one), a FIFO or a directory, and a symbolic link, which is
    reported as not a document and never followed.
  - The module fails only when O(path) itself cannot be read.
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
    description: The directory holding the documents.
    type: path
    required: true
seealso:
  - module: selfhost.dr.tomo_backup
  - module: selfhost.dr.backup_info
"""

EXAMPLES = r"""
- name: Which Tomo backups are there?
  selfhost.dr.tomo_backup_info:
    path: /var/backups/tomo
  register: tomo_backups

- name: Show them
  ansible.builtin.debug:
    msg: "{{ item.name }}: Tomo {{ item.application_version }}, {{ item.counts }}"
  loop: "{{ tomo_backups.documents | selectattr('valid') }}"
"""

RETURN = r"""
documents:
  description: The documents, newest first.
  returned: always
  type: list
  elements: dict
  contains:
    name: {description: File name., type: str, sample: tomo-backup-2026-11-22T03-51-00.json}
    path: {description: The document., type: str, sample: /var/backups/tomo/tomo-backup-2026-11-22T03-51-00.json}
    size:
      description: Bytes; null when it is not a regular file (a symbolic link is not followed).
      type: int
      sample: 7317
    valid: {description: Whether it reads as a Tomo backup this collection can import., type: bool, sample: true}
    error:
      description: "Why not, in one sentence, when RV(documents[].valid) is false."
      type: str
      sample: "/var/backups/tomo/tomo-backup-2026-11-22T03-51-00.json is not a backup document: it is a symbolic link,
        and a document is never read through one"
    created_at: {description: When it was made (UTC)., type: str, sample: "2026-11-22T03:51:00Z"}
    version: {description: Its format version (after migration)., type: str, sample: "1.0"}
    migrated_from: {description: Its own format version when older than the current one., type: str, sample: null}
    application_version: {description: Tomo version it comes from., type: str, sample: 1.2.0}
    counts: {description: Rows per category., type: dict, sample: {servers: 3, applications: 3, settings: 5, users: 3, preferences: 4, repositories: 2}}
    absent_tables: {description: Tables the Tomo it comes from did not have., type: list, elements: str, sample: []}
latest:
  description: The newest valid document, or an empty dict when there is none.
  returned: always
  type: dict
count:
  description: How many documents were listed.
  returned: always
  type: int
  sample: 4
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.selfhost.dr.plugins.module_utils.apps.tomo_document import catalog
from ansible_collections.selfhost.dr.plugins.module_utils.apps.tomo_schema import TomoError


def main() -> None:
    module = AnsibleModule(argument_spec=dict(path=dict(type="path", required=True)), supports_check_mode=True)
    try:
        documents = catalog(module.params["path"])
    except TomoError as exc:
        module.fail_json(msg=str(exc))
    latest = next((d for d in documents if d["valid"]), {})
    module.exit_json(changed=False, documents=documents, latest=latest, count=len(documents))


if __name__ == "__main__":
    main()
