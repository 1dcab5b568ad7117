#!/usr/bin/python
# Copyright: selfhost.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
---
module: tenement_service
short_description: Stop, start or restart ten serve without losing the data of instances that do not persist
version_added: 0.2.0
description:
  - Brings C(ten serve) (under systemd or as a start-stop-daemon process) to O(state), as the backup and restore
    procedures of this collection stop and start it.
  - tenement 0.2.2 deletes the data dir of every running instance whose service sets C(storage_persist = false)
    when C(ten serve) stops (SIGTERM stops them all). Before the stop, each such data dir is renamed aside in its
    own directory, where tenement does not look, and renamed back once C(ten serve) is down, so that nothing is
    lost; a data dir that cannot be kept aside (a mount point, a symbolic link) is refused before anything stops.
  - A restart spawns again the instances that ran before it (C(ten serve) respawns only its C([instances]) table)
    and sets their routing weights back (a spawn resets them to 100).
author:
  - selfhost.dr developers
attributes:
  check_mode:
    support: full
    description: Says what would change and refuses what the real run would refuse; stops and starts nothing.
  diff_mode:
    support: none
  idempotent:
    support: partial
    description: V(started) and V(stopped) are idempotent; V(restarted) always restarts.
options:
  state:
    description: What C(ten serve) should be.
    type: str
    choices: [started, stopped, restarted]
    default: started
  instances:
    description: Instances (C(service:id)) to spawn after a start or restart, besides those that ran before.
    type: list
    elements: str
    default: []
  health_timeout:
    description: Seconds each instance may take to answer its health check after a spawn.
    type: float
    default: 60
extends_documentation_fragment:
  - selfhost.dr.tenement
  - selfhost.dr.tenement.service
seealso:
  - module: selfhost.dr.tenement_instance
  - module: selfhost.dr.app_backup
"""

EXAMPLES = r"""
- name: Restart tenement after a config change; its instances run again afterwards
  selfhost.dr.tenement_service:
    state: restarted
    tenement_service_manager: systemd

- name: Stop a ten serve kept by start-stop-daemon
  selfhost.dr.tenement_service:
    state: stopped
    tenement_service_manager: process
    tenement_pidfile: /run/tenement.pid
"""

RETURN = r"""
previous_state:
  description: V(started) or V(stopped), before the module acted.
  returned: always
  type: str
running:
  description: The instances running afterwards (for V(stopped), the ones that ran before).
  returned: always
  type: list
  elements: str
actions:
  description: What was done beyond the stop and start, in sentences (the data dirs kept aside).
  returned: always
  type: list
  elements: str
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.selfhost.dr.plugins.module_utils._common import Error
from ansible_collections.selfhost.dr.plugins.module_utils.apps.registry import TENEMENT_SPEC, application
from ansible_collections.selfhost.dr.plugins.module_utils.apps.tenement import Tenement
from ansible_collections.selfhost.dr.plugins.module_utils.apps.tenement_client import parse_instance


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            state=dict(type="str", default="started", choices=["started", "stopped", "restarted"]),
            instances=dict(type="list", elements="str", default=[]),
            health_timeout=dict(type="float", default=60.0),
            **TENEMENT_SPEC,
        ),
        supports_check_mode=True,
    )
    p = module.params
    try:
        wanted = [":".join(parse_instance(u)) for u in p["instances"]]
        app = application("tenement", p)
        assert isinstance(app, Tenement)  # noqa: S101 - application("tenement") is one
        facts = app.inspect()
        up = app.service.active()
        state = p["state"]
        changed = state == "restarted" or (state == "started") != up
        result: dict[str, object] = dict(
            changed=changed, previous_state="started" if up else "stopped", running=facts.running, actions=[]
        )
        if state != "started" and up:
            app.check_can_restart()  # what cannot be kept aside is refused here, before anything stops
        if module.check_mode or (not changed and not (state == "started" and wanted)):
            module.exit_json(**result)
        before = list(facts.running)
        if state in ("stopped", "restarted") and up:
            app.stop(module.log)
        if state in ("started", "restarted"):
            units = before + [u for u in wanted if u not in before] if state == "restarted" else wanted
            if up and state == "started":
                for unit in units:
                    app.start_unit(unit, p["health_timeout"], module.log)
            else:
                app.start(units, p["health_timeout"], module.log)
            result["running"] = sorted(app.client.instances())
            result["changed"] = changed or any(u not in before for u in wanted)
        result["actions"] = app.actions()
        module.exit_json(**result)
    except Error as exc:
        module.fail_json(msg=str(exc))


if __name__ == "__main__":
    main()
