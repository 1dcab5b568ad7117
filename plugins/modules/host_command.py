#!/usr/bin/python
# Copyright: selfhost.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
---
module: host_command
short_description: Install the host command selfhost-dr and its configuration
version_added: 0.2.0
description:
  - Writes C(selfhost-dr), one executable file (a zip of this collection's core, standard library only, run by the
    host's Python 3.11 or newer), and C(/etc/selfhost-dr/config.toml) from O(config).
  - C(selfhost-dr backup), C(verify), C(list), C(prune), C(restore), C(status) and C(tomo) run the same procedures
    as the modules, so a host backs itself up from a timer and is restored by hand when no controller is left. See
    C(selfhost-dr --help) and docs/selfhost-dr.md.
  - Each file is written only when its bytes or mode change, atomically, never through a link.
  - O(config_path) is written with mode C(0600) when it holds a secret (a heartbeat URL, credentials in a
    repository's location), else C(0644).
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
    description: Where the command goes.
    type: path
    default: /usr/local/bin/selfhost-dr
  config_path:
    description: Where its configuration goes.
    type: path
    default: /etc/selfhost-dr/config.toml
  config:
    description:
      - The configuration, as written to O(config_path) (the roles build it from the shared C(dr_*) variables).
        Top-level keys C(app), C(backup_dir), C(state_dir); tables C(backup), C(restore), C(retention), C(tenement)
        and C(tomo) (the options of M(selfhost.dr.app_backup) without their C(tenement_)/C(tomo_) prefix), and
        C(lock), C(metrics) and C(heartbeat) (C(timeout); the URLs go into O(heartbeat)).
    type: dict
    default: {}
  heartbeat:
    description:
      - "The heartbeat URLs, merged into the C([heartbeat]) table of O(config): per operation (V(backup), V(verify),
        V(prune), V(restore)) a healthchecks.io-style check, and V(push), a generic push URL (see docs/monitoring.md)."
      - They carry tokens, so they are an option of their own that is never logged or shown, and O(config_path) is
        written with mode C(0600) when one is set (C(0644) otherwise).
    type: dict
    default: {}
  repositories:
    description:
      - The restic repositories (the roles' C(dr_repositories)), written into O(config_path) as its
        C([repositories.NAME]) tables, which C(selfhost-dr backup --repo NAME), M(selfhost.dr.repo_backup) and
        M(selfhost.dr.repo_snapshots) read. See docs/repositories.md.
      - A O(repositories[].password) and O(repositories[].credentials) go into files of their own in
        O(repository_dir) (C(NAME.password), C(NAME.env), mode C(0600)); they are never logged, never on a command
        line, and never in O(config_path).
      - Every entry is checked (by the same rules as C(selfhost-dr) reading the tables back) before anything is
        written, also in check mode. The secret files of repositories no longer listed are removed from
        O(repository_dir), and so are their tables.
    type: list
    elements: dict
    default: []
    suboptions:
      name:
        description: Letters, digits, C(.), C(_) and C(-) (up to 64), starting with a letter or digit.
        type: str
        required: true
      location:
        description: The restic repository, C(/a/local/path), C(sftp:user@host:/path), C(s3:https://host/bucket),
          C(rest:https://host/), C(rclone:remote:path).
        type: str
        required: true
      password:
        description: The repository's password (written to C(NAME.password), mode C(0600)). Give this or
          O(repositories[].password_file).
        type: str
      password_file:
        description: A file on the managed host whose first line is the password, mode C(0600) (used where it is,
          never copied).
        type: path
      credentials:
        description: "The store's variables, for example C({AWS_ACCESS_KEY_ID: ..., AWS_SECRET_ACCESS_KEY: ...})
          (C(AWS_*), C(B2_*), C(AZURE_*), C(GOOGLE_*), C(OS_*), C(RCLONE_*), C(RESTIC_REST_*)), written to
          C(NAME.env), mode C(0600). Give this or O(repositories[].env_file), or neither."
        type: dict
      env_file:
        description: A file on the managed host of C(KEY=VALUE) lines of those variables, mode C(0600).
        type: path
      required:
        description: Whether a failure of this repository fails a backup; V(false) makes it a warning (the next run
          tries again).
        type: bool
        default: true
      init:
        description: Create the repository (format 2) when there is none at the location; never a second time.
        type: bool
        default: false
      retention:
        description: Its C(keep_*) rules (C(keep_last), C(keep_hourly), C(keep_daily), C(keep_weekly),
          C(keep_monthly), C(keep_yearly), C(keep_within), C(keep_all), C(timezone)); empty uses C([retention]).
        type: dict
        default: {}
  repository_dir:
    description: Where the repositories' secret files go (mode C(0700)); default C(repositories/) beside
      O(config_path). Every C(*.password) and C(*.env) in it that no repository uses is removed.
    type: path
  interpreter:
    description: The Python that runs the command.
    type: path
    default: /usr/bin/python3
  state:
    description: V(present) installs both; V(absent) removes the command (the configuration stays).
    type: str
    choices: [present, absent]
    default: present
seealso:
  - module: selfhost.dr.app_backup
  - module: selfhost.dr.app_restore
"""

EXAMPLES = r"""
- name: Install selfhost-dr for tenement
  selfhost.dr.host_command:
    config:
      app: tenement
      backup_dir: /var/backups/selfhost-dr
      tenement: {config_dir: /etc/tenement, server: "http://127.0.0.1:8080"}

- name: With an off-site S3 repository (its password and keys from a vault, in 0600 files of their own)
  selfhost.dr.host_command:
    config: {app: tenement}
    repositories:
      - name: offsite
        location: s3:https://s3.eu-central-1.example.com/backups-web1
        password: "{{ vault_offsite_password }}"
        credentials:
          AWS_ACCESS_KEY_ID: "{{ vault_offsite_key_id }}"
          AWS_SECRET_ACCESS_KEY: "{{ vault_offsite_secret }}"
        init: true
        required: false
        retention: {keep_daily: 7, keep_weekly: 4, keep_monthly: 12}
  no_log: true
"""

RETURN = r"""
path:
  description: The command.
  returned: always
  type: str
command_changed:
  description: Whether the command was (or would be) written.
  returned: always
  type: bool
config_changed:
  description: Whether the configuration was (or would be) written.
  returned: always
  type: bool
repositories:
  description: The names of the repositories written into the configuration.
  returned: always
  type: list
  elements: str
secret_files_written:
  description: The repositories' secret files written (or that would be); paths only.
  returned: always
  type: list
  elements: str
secret_files_removed:
  description: The secret files of repositories no longer listed, removed (or that would be).
  returned: always
  type: list
  elements: str
"""

import os

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.selfhost.dr.plugins.module_utils._common import Error
from ansible_collections.selfhost.dr.plugins.module_utils.host_install import (
    config_mode,
    package_files,
    repository_files,
    toml,
    write_if_changed,
    zipapp,
)
from ansible_collections.selfhost.dr.plugins.module_utils.repos import config as repo_config

REPOSITORY_SPEC = dict(
    name=dict(type="str", required=True),
    location=dict(type="str", required=True),
    password=dict(type="str", no_log=True),
    password_file=dict(type="path", no_log=False),
    credentials=dict(type="dict", no_log=True),
    env_file=dict(type="path"),
    required=dict(type="bool", default=True),
    init=dict(type="bool", default=False),
    retention=dict(type="dict", default={}),
)


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            path=dict(type="path", default="/usr/local/bin/selfhost-dr"),
            config_path=dict(type="path", default="/etc/selfhost-dr/config.toml"),
            config=dict(type="dict", default={}),
            heartbeat=dict(type="dict", default={}, no_log=True),
            repositories=dict(type="list", elements="dict", default=[], options=REPOSITORY_SPEC),
            repository_dir=dict(type="path"),
            interpreter=dict(type="path", default="/usr/bin/python3"),
            state=dict(type="str", default="present", choices=["present", "absent"]),
        ),
        supports_check_mode=True,
    )
    p = module.params
    try:
        if p["state"] == "absent":
            there = os.path.lexists(p["path"])
            if there and not module.check_mode:
                os.unlink(p["path"])
            module.exit_json(
                changed=there,
                path=p["path"],
                command_changed=there,
                config_changed=False,
                repositories=[],
                secret_files_written=[],
                secret_files_removed=[],
            )
        directory = p["repository_dir"] or os.path.join(os.path.dirname(p["config_path"]), "repositories")
        # Every entry checked, and the whole configuration built, before anything is written.
        planned = repo_config.from_entries(p["repositories"], directory)
        command = zipapp(package_files(), p["interpreter"])
        settings = dict(p["config"])
        if not settings.get("replicate", True):
            del settings["replicate"]  # (no replication: no empty table)
        beats = {k: v for k, v in (p["heartbeat"] or {}).items() if v}
        if beats:
            settings["heartbeat"] = {**dict(settings.get("heartbeat") or {}), **beats}
        if planned.tables:
            settings["repositories"] = planned.tables
        config = toml(settings).encode()
        # The secret files first: the configuration never names a file that is not there yet.
        written, removed = repository_files(planned, directory, module.check_mode)
        command_changed = write_if_changed(p["path"], command, 0o755, module.check_mode)
        config_changed = write_if_changed(p["config_path"], config, config_mode(settings), module.check_mode)
    except Error as exc:
        module.fail_json(msg=str(exc))
    except OSError as exc:
        module.fail_json(msg=f"cannot install selfhost-dr: {exc.filename + ': ' if exc.filename else ''}{exc.strerror}")
    module.exit_json(
        changed=command_changed or config_changed or bool(written or removed),
        path=p["path"],
        command_changed=command_changed,
        config_changed=config_changed,
        repositories=list(planned.tables),
        secret_files_written=written,
        secret_files_removed=removed,
    )


if __name__ == "__main__":
    main()
