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
"""

import os

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.selfhost.dr.plugins.module_utils._common import Error
from ansible_collections.selfhost.dr.plugins.module_utils.host_install import (
    config_mode,
    package_files,
    toml,
    write_if_changed,
    zipapp,
)


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            path=dict(type="path", default="/usr/local/bin/selfhost-dr"),
            config_path=dict(type="path", default="/etc/selfhost-dr/config.toml"),
            config=dict(type="dict", default={}),
            heartbeat=dict(type="dict", default={}, no_log=True),
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
            module.exit_json(changed=there, path=p["path"], command_changed=there, config_changed=False)
        command = zipapp(package_files(), p["interpreter"])
        settings = dict(p["config"])
        beats = {k: v for k, v in (p["heartbeat"] or {}).items() if v}
        if beats:
            settings["heartbeat"] = {**dict(settings.get("heartbeat") or {}), **beats}
        config = toml(settings).encode()
        command_changed = write_if_changed(p["path"], command, 0o755, module.check_mode)
        config_changed = write_if_changed(p["config_path"], config, config_mode(settings), module.check_mode)
    except Error as exc:
        module.fail_json(msg=str(exc))
    except OSError as exc:
        module.fail_json(msg=f"cannot install selfhost-dr: {exc.filename + ': ' if exc.filename else ''}{exc.strerror}")
    module.exit_json(
        changed=command_changed or config_changed,
        path=p["path"],
        command_changed=command_changed,
        config_changed=config_changed,
    )


if __name__ == "__main__":
    main()
