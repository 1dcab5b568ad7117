#!/usr/bin/python
# Copyright: selfhost.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
---
module: tomo_backup
short_description: Export or import Tomo's JSON backup document, by category, with a conflict mode
version_added: 0.1.0
description:
  - The backup guide of Tomo, as a module. O(state=exported) reads a live C(tomo.db) and writes the guide's document
    C(tomo-backup-YYYY-MM-DDTHH-MM-SS.json) (C(version), C(created_at), C(application_version) and C(data) with one
    entry per category). O(state=imported) puts a document's categories back into a Tomo database.
  - "The categories and their tables: C(servers) (C(servers), C(server_credentials), C(agents)), C(applications)
    (C(installed_apps)), C(settings) (C(system_settings), C(retention_settings), C(system_info)), C(users) (C(users),
    with their password hashes), C(preferences) (C(user_settings)), C(repositories) (C(marketplace_repos), each with
    its C(marketplace_apps))."
  - "Tomo's own encrypted backup (a C(.enc) file made by Tomo's backup feature: a 16-byte salt and a Fernet token whose
    key is PBKDF2-SHA256, 480000 iterations, of a password) is imported too, given O(password): a way from Tomo's
    backup to the guide's. It holds users (without password hashes), servers (without credentials) and settings
    only; a user new to this Tomo cannot be added from it and is reported. Decrypting it needs the Python package
    C(cryptography) on the host (C(python3-cryptography) on Debian); only this path needs it."
  - Sessions, CSRF tokens, account locks, rate limits, logs, metrics, notifications, the settings audit and agent
    registration codes are never exported.
  - Server credentials stay encrypted as Tomo stored them. They can only be decrypted with the C(TOMO_MASTER_PASSWORD)
    of C(/etc/tomo/environment), which the document does not hold. Keep that file with the document (the
    M(selfhost.dr.backup_create) set made by the C(selfhost.dr.backup) role holds both).
  - The export reads a consistent snapshot of the database (SQLite's online backup), never rows that change while
    they are read, so Tomo can keep running.
  - The document is written under a temporary name, fsynced and linked into place with mode C(0600); an existing
    document is never replaced. An export that would be larger than 16 MiB (the most an import reads) fails instead
    of writing a document that could not be read back.
  - Rows are matched by their natural keys, never by their ids, which differ between two installs. Servers by
    C(host), C(port) and C(username); applications by server and C(app_id); settings by C(setting_key) (or C(id));
    users by C(username); preferences by user name and C(setting_key); repositories by C(id). References
    (C(installed_apps.server_id), C(server_credentials.server_id), C(user_settings.user_id)) are written as the natural
    key of the row they point to and mapped to this install's ids on import.
  - Users named outside foreign keys (C(system_info.setup_by_user_id), C(retention_settings.updated_by_user_id),
    C(system_settings.updated_by)) are written with the user's name too and pointed at this install's user of that
    name; when there is none, an existing row keeps its own value and a new one gets null. A user removed by
    V(replace) is named nowhere any more. An install's identity (C(system_info.installation_id) and the license) is
    never changed by an import; only a restore of the whole set carries it.
  - Tomo's audit triggers on C(system_settings) and C(user_settings) (whose DELETE variant fails on a NOT NULL column)
    are set aside during the import, which records each change in C(settings_audit) itself, as made by
    C(selfhost.dr) and by no person; Tomo's triggers are back when the import commits.
  - An import is one SQLite transaction with Tomo's foreign keys enforced; it is applied whole or not at all.
  - A document is hostile input until checked, and all of it is checked before the database is opened. O(src) must be
    a regular file (not a symbolic link, which is never followed, nor a FIFO or a device) of at most 16 MiB, read with
    that bound. It must be UTF-8 JSON without NaN or Infinity, without a key twice in one object, without numbers
    beyond 64 bits and nested no deeper than a document is, and every category, row and value must have its type.
    Whatever is wrong, the task fails with one sentence saying what and where, and the database is not touched.
  - A document whose format is newer than this module knows, or that comes from a newer Tomo than the one imported
    into, is refused. Older documents are migrated forward; columns an older Tomo did not have take this Tomo's
    defaults, and columns this Tomo no longer has are left out (and reported).
  - Tables that one of the two Tomo versions does not have are reported, not an error. A Tomo with only its start-up
    tables (no settings tables, no marketplace) is a Tomo too.
  - Removing a repository (V(replace)) removes its apps and their ratings first, as Tomo does.
author:
  - selfhost.dr developers
attributes:
  check_mode:
    support: full
    details:
      - An import in check mode runs the very same import on a private in-memory copy of the database and reports
        what it would add, update, remove and skip. The database is not touched.
  diff_mode:
    support: full
    details:
      - Lists the rows (by natural key) that are added, updated, removed or skipped, per table.
  idempotent:
    support: partial
    details:
      - An import is idempotent. Every export writes a new document.
options:
  state:
    description:
      - V(exported) writes a new document into O(dest).
      - V(imported) imports O(src) into the database.
    type: str
    required: true
    choices: [exported, imported]
  database:
    description:
      - Tomo's database.
      - When not set, the first that exists of C(/var/lib/tomo/tomo.db) (packaged installs), C(~tomo/.tomo/tomo.db) and
        C(~/.tomo/tomo.db) (older docs).
    type: path
  dest:
    description: Directory the document is written into (O(state=exported)); it must exist.
    type: path
  src:
    description:
      - The document to import (O(state=imported)).
      - A regular file of at most 16 MiB; a symbolic link is refused, not followed.
      - A name ending in C(.enc) is Tomo's own encrypted backup, read with O(password).
    type: path
  password:
    description:
      - The password of Tomo's encrypted backup, when O(src) is a C(.enc) file.
      - A wrong one fails with one sentence, and nothing is changed.
    type: str
  stop_service:
    description:
      - With O(state=imported), stop O(service) while the import changes the database (after planning it on a
        private copy, so a bad document stops nothing), settle the database's journal, and start it again
        afterwards if it ran, whatever the import did. Nothing is stopped when the import changes nothing.
      - Without it the import runs while Tomo runs (it waits for Tomo's locks).
    type: bool
    default: false
  service:
    description: Tomo's systemd unit, for O(stop_service).
    type: str
    default: tomo.service
  settle:
    description: Seconds Tomo must keep running after it is started again, for O(stop_service).
    type: float
    default: 2
  categories:
    description:
      - The categories to export or import. All of them by default; a list of some is a selective restore.
    type: list
    elements: str
    choices: [servers, applications, settings, users, preferences, repositories]
    default: [servers, applications, settings, users, preferences, repositories]
  mode:
    description:
      - How an import treats rows that already exist (matched by natural key).
      - V(merge) adds the backup's rows and updates matching rows from the backup; rows the backup lacks stay.
      - V(skip_duplicates) adds only the backup's rows that match nothing; matching rows stay as they are.
      - V(replace) makes each chosen category exactly the backup's. Matching rows are updated in place (they keep their
        ids, so rows elsewhere that refer to them stay valid), the rest are added, and rows the backup lacks are
        removed. Rows that Tomo's own foreign keys remove with them (an application on a removed server) are reported
        in RV(cascaded).
      - A full restore is all categories with V(replace).
    type: str
    choices: [merge, replace, skip_duplicates]
    default: merge
  application_version:
    description:
      - The version of the Tomo the database belongs to.
      - When not set, the version of the installed C(tomo) package (dpkg). Never the database's C(component_versions),
        which holds placeholders. An import refuses a document from a newer Tomo; when the version is unknown, it must
        be set.
    type: str
  lock_timeout:
    description: Seconds to wait for a lock that Tomo holds on the database before giving up.
    type: float
    default: 30
extends_documentation_fragment:
  - selfhost.dr.state_dir
  - selfhost.dr.state_dir.lock
notes:
  - Stop C(tomo.service) around an import (the C(selfhost.dr.restore) role does), so that Tomo does not keep
    stale rows in memory. The import itself waits for Tomo's locks and is safe while Tomo runs.
  - The document holds password hashes and encrypted credentials. It is written with mode C(0600); keep it as you
    keep the database.
seealso:
  - module: selfhost.dr.tomo_backup_info
  - module: selfhost.dr.backup_create
  - module: selfhost.dr.sqlite_snapshot
"""

EXAMPLES = r"""
- name: Export everything (tomo backup export)
  selfhost.dr.tomo_backup:
    state: exported
    dest: /var/backups/tomo
  register: export

- name: Export only the servers and the users, from a database in an older place
  selfhost.dr.tomo_backup:
    state: exported
    database: /home/tomo/.tomo/tomo.db
    dest: /var/backups/tomo
    categories: [servers, users]

- name: What would a selective restore of the servers change?
  selfhost.dr.tomo_backup:
    state: imported
    src: /var/backups/tomo/tomo-backup-2026-11-22T03-51-00.json
    categories: [servers]
    mode: skip_duplicates
  check_mode: true
  diff: true

- name: Full restore (every category replaced by the backup's)
  selfhost.dr.tomo_backup:
    state: imported
    src: "{{ export.path }}"
    mode: replace

- name: Move from Tomo's own encrypted backup to this collection's (users, servers, settings)
  selfhost.dr.tomo_backup:
    state: imported
    src: /var/lib/tomo/backups/tomo-2026-11-01.enc
    password: "{{ vault_tomo_backup_password }}"
    mode: merge

- name: Merge the preferences of another install; users are matched by name
  selfhost.dr.tomo_backup:
    state: imported
    src: /srv/from-old-server/tomo-backup-2026-11-01T02-00-00.json
    categories: [users, preferences]
    mode: merge
"""

RETURN = r"""
path:
  description: The document written (in check mode, the name it would have).
  returned: when O(state=exported)
  type: str
  sample: /var/backups/tomo/tomo-backup-2026-11-22T03-51-00.json
src:
  description: The document imported.
  returned: when O(state=imported)
  type: str
  sample: /var/backups/tomo/tomo-backup-2026-11-22T03-51-00.json
mode:
  description: The mode of the import.
  returned: when O(state=imported)
  type: str
  sample: merge
categories:
  description: The categories imported.
  returned: when O(state=imported)
  type: list
  elements: str
  sample: [servers, preferences]
created_at:
  description: When the document was made (UTC).
  returned: always
  type: str
  sample: "2026-11-22T03:51:00Z"
version:
  description: The document's format version.
  returned: always
  type: str
  sample: "1.0"
application_version:
  description: The version of the Tomo the document comes from.
  returned: always
  type: str
  sample: 1.2.0
database:
  description: The database exported or imported into.
  returned: always
  type: str
  sample: /var/lib/tomo/tomo.db
counts:
  description: Rows per category in the document written.
  returned: when O(state=exported)
  type: dict
  sample: {servers: 3, applications: 3, settings: 5, users: 3, preferences: 4, repositories: 2}
absent_tables:
  description: Tables of the chosen categories that this Tomo does not have.
  returned: when O(state=exported)
  type: list
  elements: str
  sample: []
size:
  description: Bytes of the document (0 in check mode).
  returned: when O(state=exported)
  type: int
  sample: 7317
changes:
  description:
    - Per category and table, how many rows were added, updated, removed, skipped (matched in V(skip_duplicates),
      or belonging to a server or user this Tomo does not have) and unchanged, with their natural keys.
    - A C(note) says why a table was left as it is (not in the backup, or not in this Tomo) or which columns were left
      out.
  returned: when O(state=imported)
  type: dict
  sample:
    servers:
      servers: {added: 1, updated: 1, removed: 0, skipped: 0, unchanged: 1, keys: {added: ["10.0.0.11, 22, root"], updated: ["10.0.0.12, 22, admin"]}}
cascaded:
  description: Rows that Tomo's foreign keys removed along with removed rows, per table.
  returned: when O(state=imported)
  type: dict
  sample: {installed_apps: 1}
migrated_from:
  description: The document's format version when it was older and migrated, else null.
  returned: when O(state=imported)
  type: str
  sample: null
target_application_version:
  description: The version of the Tomo imported into.
  returned: when O(state=imported)
  type: str
  sample: 1.2.1
source_format:
  description: V(document) for the guide's JSON document, V(tomo-enc) for Tomo's own encrypted backup.
  returned: when O(state=imported)
  type: str
  sample: document
note:
  description: What the import left out of the backup as a whole (Tomo's C(app_configs) of a C(.enc) file).
  returned: when there is something to say
  type: str
rows_before:
  description: Rows per table before the import.
  returned: when O(state=imported)
  type: dict
rows_after:
  description: Rows per table after the import (what it would be, in check mode).
  returned: when O(state=imported)
  type: dict
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.selfhost.dr.plugins.module_utils._common import Error
from ansible_collections.selfhost.dr.plugins.module_utils.apps.tomo import Settings, Tomo
from ansible_collections.selfhost.dr.plugins.module_utils.apps.tomo_export import export
from ansible_collections.selfhost.dr.plugins.module_utils.apps.tomo_schema import (
    CATEGORIES,
    MODES,
    locate_database,
)
from ansible_collections.selfhost.dr.plugins.module_utils.engine.journal import STATE_DIR_SPEC
from ansible_collections.selfhost.dr.plugins.module_utils.engine.recorded import LOCK_SPEC, recorded

SIGNS = (("added", "+"), ("updated", "~"), ("removed", "-"), ("skipped", "="), ("orphaned", "="), ("incomplete", "="))
WHY = {
    "orphaned": " (its server or user is not in this Tomo)",
    "skipped": " (kept as it is)",
    "incomplete": " (new here, and the backup lacks a column it needs)",
}


def _diff(changes: dict) -> str:
    lines = []
    for category, tables in changes.items():
        for table, change in tables.items():
            for kind, sign in SIGNS:
                for key in change.get("keys", {}).get(kind, []):
                    lines.append(f"{sign} {category}/{table}: {key}{WHY.get(kind, '')}")
            if change.get("note"):
                lines.append(f"! {category}/{table}: {change['note']}")
    return "\n".join(lines) + ("\n" if lines else "")


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            state=dict(type="str", required=True, choices=["exported", "imported"]),
            database=dict(type="path"),
            dest=dict(type="path"),
            src=dict(type="path"),
            categories=dict(type="list", elements="str", choices=list(CATEGORIES), default=list(CATEGORIES)),
            mode=dict(type="str", choices=list(MODES), default="merge"),
            application_version=dict(type="str"),
            lock_timeout=dict(type="float", default=30),
            password=dict(type="str", no_log=True),
            stop_service=dict(type="bool", default=False),
            service=dict(type="str", default="tomo.service"),
            settle=dict(type="float", default=2.0),
            **STATE_DIR_SPEC,
            **LOCK_SPEC,
        ),
        required_if=[("state", "exported", ["dest"]), ("state", "imported", ["src"])],
        supports_check_mode=True,
    )
    p = module.params
    try:
        database = locate_database(p["database"])
        if p["state"] == "exported":
            result = export(
                database,
                p["dest"],
                categories=p["categories"],
                application_version=p["application_version"],
                lock_timeout=p["lock_timeout"],
                write=not module.check_mode,
            )
            module.exit_json(changed=True, database=database, **result)
        tomo = Tomo(
            Settings(
                database=database,
                service=p["service"],
                version=p["application_version"] or "",
                settle=p["settle"],
                lock_timeout=p["lock_timeout"],
            )
        )

        def imported() -> dict[str, object]:
            return tomo.import_document(
                p["src"],
                p["categories"],
                p["mode"],
                password=p["password"],
                check=module.check_mode,
                stop=p["stop_service"],
                log=module.log,
            )

        if module.check_mode:
            result = imported()
        else:  # under the host lock, recorded as a restore: never while a timer backs Tomo up or restores it
            with recorded(p["state_dir"], "restore", "tomo", p["lock_wait"], module.log):
                result = imported()
    except Error as exc:
        module.fail_json(msg=str(exc))
    result["changed"] = result.pop("changed")
    if module._diff:
        result["diff"] = {"prepared": _diff(result["changes"])}
    module.exit_json(database=database, **result)


if __name__ == "__main__":
    main()
