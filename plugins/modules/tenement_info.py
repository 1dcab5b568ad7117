#!/usr/bin/python
# Copyright: selfhost.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
---
module: tenement_info
short_description: What is on a tenement host (config, data dir, services, instances, version, server)
version_added: 0.1.0
description:
  - Reads C(tenement.toml), resolves the data dir, lists the services with their C(storage_persist), the instances that
    run (from the server's API, with the token in C({data_dir}/api_token)) and the instances that exist only on disk,
    the installed tenement version, and whether the server answers.
  - Works when the server is down, and says so in RV(reachable) and RV(server_error).
  - A service without C(storage_persist) is reported as not persisting (RV(services.NAME.storage_persist) false), the
    safe reading, because C(ten stop) deletes the data dir of such an instance.
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
  config:
    description: Path of C(tenement.toml).
    type: path
    default: /etc/tenement/tenement.toml
  timeout:
    description: Seconds to wait for the server's answer.
    type: float
    default: 10
extends_documentation_fragment:
  - selfhost.dr.tenement
seealso:
  - module: selfhost.dr.tenement_instance
  - role: selfhost.dr.tenement_server
"""

EXAMPLES = r"""
- name: Look at the tenement host
  selfhost.dr.tenement_info:
    config: /etc/tenement/tenement.toml
    data_dir: /var/lib/tenement
  register: tenement

- name: Instances that would be lost by stopping them
  ansible.builtin.debug:
    msg: "{{ tenement.running | select('match', item ~ ':') | list }}"
  loop: "{{ tenement.services | dict2items | rejectattr('value.storage_persist') | map(attribute='key') | list }}"
"""

RETURN = r"""
config_path: {description: The config read., returned: always, type: str, sample: /etc/tenement/tenement.toml}
config_dir: {description: Its directory (where C(ten serve) runs)., returned: always, type: str, sample: /etc/tenement}
config_sha256:
  description: Checksum of the config file.
  returned: always
  type: str
  sample: 2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae
config: {description: The parsed config., returned: always, type: dict, sample: {settings: {data_dir: /var/lib/tenement}}}
data_dir: {description: The resolved data dir., returned: always, type: str, sample: /var/lib/tenement}
data_dir_exists: {description: Whether it exists., returned: always, type: bool, sample: true}
token_file: {description: Where the admin token is kept (never its content)., returned: always, type: str, sample: /var/lib/tenement/api_token}
has_token: {description: Whether the token file exists and is not empty., returned: always, type: bool, sample: true}
services:
  description: Each service with C(command), C(health), C(isolation), C(storage_persist) and whether it was set.
  returned: always
  type: dict
  sample: {demo: {command: /usr/bin/demo, health: /health, isolation: process, storage_persist: true, storage_persist_set: true}}
running: {description: Running instances (C(service:id))., returned: always, type: list, elements: str, sample: [demo:alpha]}
instances:
  description: Running instances with their socket, uptime, health and restarts.
  returned: always
  type: dict
  sample: {"demo:alpha": {name: "demo:alpha", listen: "127.0.0.1:30000", uptime_secs: 42, health: healthy, restarts: 0}}
on_disk: {description: Instances with a data dir., returned: always, type: list, elements: str, sample: [demo:alpha, demo:old]}
only_on_disk: {description: Instances with a data dir that do not run., returned: always, type: list, elements: str, sample: [demo:old]}
version: {description: The installed tenement version, or null., returned: always, type: str, sample: 0.2.2}
server: {description: The server asked., returned: always, type: str, sample: "http://127.0.0.1:8080"}
reachable: {description: Whether the server answered., returned: always, type: bool, sample: true}
server_error: {description: Why the instance list could not be read, or empty., returned: always, type: str, sample: ""}
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.selfhost.dr.plugins.module_utils.apps.registry import TENEMENT_CLIENT_SPEC, ten_command
from ansible_collections.selfhost.dr.plugins.module_utils.apps.tenement import TenementError, describe_host


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            config=dict(type="path", default="/etc/tenement/tenement.toml"),
            timeout=dict(type="float", default=10.0),
            **TENEMENT_CLIENT_SPEC,
        ),
        supports_check_mode=True,
    )
    p = module.params
    try:
        ten_bin = ten_command(p["tenement_ten_bin"])
        info = describe_host(p["config"], p["tenement_data_dir"], p["tenement_server"], ten_bin, p["timeout"])
    except TenementError as exc:
        module.fail_json(msg=str(exc))
    module.exit_json(changed=False, **info)


if __name__ == "__main__":
    main()
