#!/usr/bin/python
# Copyright: selfhost.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
---
module: tenement_instance
short_description: Keep a tenement instance running, stopped or restarted
version_added: 0.1.0
description:
  - Brings the instance O(name) of a tenement server to O(state), and waits until it answers its health check.
  - Asks the server which instances run (C(GET /api/instances)) and acts with the C(ten) CLI only when the
    state differs, so running it twice changes nothing the second time.
  - For an instance whose service sets C(storage_persist = false), tenement 0.2.2 deletes the data dir when it stops
    the instance; V(stopped) and V(restarted) rename the data dir aside while tenement stops it and back afterwards,
    so that nothing is lost (C(tenement.toml) in O(tenement_config_dir) says which services do not persist).
  - A restart sets the instance's routing weight back (a spawn resets it to 100).
  - The API token reaches C(ten) in its environment, never on its command line.
author:
  - selfhost.dr developers
attributes:
  check_mode:
    support: full
    description: Reports what would change; spawns, stops and restarts nothing.
  diff_mode:
    support: none
  idempotent:
    support: partial
    description: V(running) and V(stopped) are idempotent; V(restarted) always restarts.
options:
  name:
    description:
      - The instance, written C(service:id).
      - Both parts are lowercase DNS labels (letters, digits, C(-)); tenement 0.2.2 itself accepts names
        such as C(x:../../etc) and then writes outside its data dir, so they are refused here.
    type: str
    required: true
  state:
    description:
      - V(running) spawns the instance when it does not run.
      - V(stopped) stops it when it runs; its data stays, also when its service does not persist it.
      - V(restarted) stops and spawns it again when it runs, and spawns it when it does not.
    type: str
    choices: [running, stopped, restarted]
    default: running
  token:
    description: The admin API token. Defaults to the content of C({data_dir}/api_token).
    type: str
  wait:
    description: Wait until a running instance answers its health check.
    type: bool
    default: true
  timeout:
    description: Seconds to wait for health before failing.
    type: int
    default: 60
  tenement_config_dir:
    description: The directory holding C(tenement.toml), read for the services' C(storage_persist).
    type: path
    default: /etc/tenement
extends_documentation_fragment:
  - selfhost.dr.tenement
notes:
  - Tenement does not respawn instances when its server restarts; the roles of this collection record
    and respawn them with this module.
"""

EXAMPLES = r"""
- name: Spawn the demo instance and wait for its health check
  selfhost.dr.tenement_instance:
    name: demo:alpha
    state: running

- name: Stop an instance on a server that listens elsewhere
  selfhost.dr.tenement_instance:
    name: api:prod
    state: stopped
    server: http://127.0.0.1:9090
    data_dir: /srv/tenement
"""

RETURN = r"""
instance:
  description: The instance as the server reports it after the change (empty when stopped).
  returned: always
  type: dict
  sample: {"name": "demo:alpha", "listen": "127.0.0.1:30000", "uptime_secs": 3, "health": "healthy", "restarts": 0}
previous_state:
  description: V(running) or V(stopped), before the module acted.
  returned: always
  type: str
  sample: stopped
health:
  description: The health the instance answered, when it runs and O(wait) is set.
  returned: when the instance runs
  type: str
  sample: healthy
"""

import os

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.selfhost.dr.plugins.module_utils._common import Error
from ansible_collections.selfhost.dr.plugins.module_utils.apps.registry import (
    TENEMENT_CLIENT_SPEC,
    TENEMENT_SERVICE_SPEC,
    application,
    ten_command,
)
from ansible_collections.selfhost.dr.plugins.module_utils.apps.tenement import Tenement
from ansible_collections.selfhost.dr.plugins.module_utils.apps.tenement_client import (
    DEFAULT_DATA_DIR,
    TenementError,
    parse_instance,
)


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            name=dict(type="str", required=True),
            state=dict(type="str", default="running", choices=["running", "stopped", "restarted"]),
            token=dict(type="str", no_log=True),
            **TENEMENT_CLIENT_SPEC,
            tenement_config_dir=TENEMENT_SERVICE_SPEC["tenement_config_dir"],
            wait=dict(type="bool", default=True),
            timeout=dict(type="int", default=60),
        ),
        supports_check_mode=True,
    )
    p = module.params
    try:
        name = ":".join(parse_instance(p["name"]))
        ten_bin = ten_command(p["tenement_ten_bin"])
        if not os.path.exists(ten_bin):
            raise TenementError("the tenement command 'ten' is not installed on this host (set tenement_ten_bin)")
        data_dir = p["tenement_data_dir"] or DEFAULT_DATA_DIR
        app = application("tenement", {**p, "tenement_ten_bin": ten_bin, "tenement_data_dir": data_dir})
        assert isinstance(app, Tenement)  # noqa: S101 - application("tenement") is one
        client = app.client
        if p["token"]:
            client.token = p["token"]
        before = client.instances().get(name)
        previous = "running" if before else "stopped"
        want = p["state"]
        changed = (want == "running" and not before) or (want == "stopped" and before) or want == "restarted"
        result: dict[str, object] = dict(changed=bool(changed), previous_state=previous, instance={}, actions=[])
        if module.check_mode:
            result["instance"] = before.to_dict() if before else {}
            module.exit_json(**result)
        if want in ("stopped", "restarted") and before:
            app.stop_unit(name, module.log)  # the data of an instance that does not persist is kept
        if want == "stopped":
            result["actions"] = app.actions()
            module.exit_json(**result)
        if p["wait"]:
            app.start_unit(name, p["timeout"], module.log)
            now = client.instances().get(name)
            result["health"] = "healthy"
        else:
            if name not in client.instances():
                client.spawn(name)
            now = client.instances().get(name) or before
        result["instance"] = now.to_dict() if now else {}
        result["actions"] = app.actions()
        module.exit_json(**result)
    except Error as exc:
        module.fail_json(msg=str(exc))


if __name__ == "__main__":
    main()
