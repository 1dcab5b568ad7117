#!/usr/bin/python
# Copyright: selfhost.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
---
module: app_restore
short_description: Restore an application (tenement or Tomo) from a set, whole or one instance at a time
version_added: 0.2.0
description:
  - One sequence for every application. First, before anything stops, the set is read, verified and planned exactly
    as the restore will do it, and refused in one sentence when the restore would refuse it (check mode stops here).
  - Then the application (or, with O(instances), each chosen instance) is stopped, the set's trees are swapped in
    with a safety copy of what they replace (as M(selfhost.dr.backup_restore) does), the application is started
    with the instances the set recorded as running and their health checks are waited for, and the safety copies
    are dropped (O(keep_safety) keeps them).
  - When anything fails after the stop, what was started is stopped, the previous data is put back, what ran before
    is started again, and the module fails with one sentence saying so.
  - For Tomo a full restore puts back the database, the environment file and known_hosts, not the copy of the JSON
    document the set holds (import that with M(selfhost.dr.tomo_backup)).
  - The same procedure runs as C(selfhost-dr restore) on the host.
author:
  - selfhost.dr developers
attributes:
  check_mode:
    support: full
    description: Verifies and plans the restore, refusing what the run would refuse, before anything stops.
  diff_mode:
    support: none
  idempotent:
    support: none
    description: Every run puts the set's content in place again.
options:
  app:
    description: The application.
    type: str
    choices: [tenement, tomo]
    required: true
  path:
    description: The set to restore. Empty takes the newest set of O(app) in O(dir) (for O(instances), the newest that
      holds them).
    type: path
  dir:
    description: Where to look for the newest set when O(path) is not given.
    type: path
    default: /var/backups/selfhost-dr
  instances:
    description: tenement instances (C(service:id)) to restore alone, the others keep running; empty restores all.
    type: list
    elements: str
    default: []
  config_path:
    description:
      - The host command's configuration. When it sets up replication (a C([replicate]) table, role
        R(selfhost.dr.replicate,ansible_collections.selfhost.dr.replicate_role)), Litestream is stopped for the restore
        (it would replicate the staged trees and the WAL of a database being replaced) and started again after it,
        as C(selfhost-dr restore) does.
      - Empty reads C(/etc/selfhost-dr/config.toml) when it exists.
    type: path
  keep_safety:
    description: Keep the safety copies of what was replaced (the journal records the restore as C(kept)).
    type: bool
    default: false
  health_timeout:
    description: Seconds each instance (or Tomo) may take to be healthy after its start.
    type: float
    default: 60
  dest_root:
    description: Restore under this directory instead of C(/).
    type: path
    default: /
extends_documentation_fragment:
  - selfhost.dr.tenement
  - selfhost.dr.tenement.service
  - selfhost.dr.tomo
  - selfhost.dr.state_dir
  - selfhost.dr.state_dir.lock
seealso:
  - module: selfhost.dr.app_backup
  - module: selfhost.dr.backup_restore
"""

EXAMPLES = r"""
- name: Restore the newest tenement set, start tenement and respawn its instances
  selfhost.dr.app_restore:
    app: tenement

- name: One instance from its newest set, the others keep running
  selfhost.dr.app_restore:
    app: tenement
    instances: [demo:alpha]
"""

RETURN = r"""
path:
  description: The set restored.
  returned: always
  type: str
restore_id:
  description: The journal's name for the restore.
  returned: not in check mode
  type: str
paths:
  description: The set's paths put back.
  returned: always
  type: list
  elements: str
targets:
  description: Where each of them is now.
  returned: always
  type: list
  elements: str
started:
  description: What runs afterwards (tenement instances).
  returned: always
  type: list
  elements: str
files:
  description: Files restored.
  returned: not in check mode
  type: int
metadata:
  description: The application's facts recorded in the set.
  returned: always
  type: dict
actions:
  description:
    - What the application did beyond the plain procedure, in sentences (tenement - C(instance_state) emptied in
      the restored C(tenement.db); the data of instances with C(storage_persist = false) kept aside while
      C(ten serve) stopped).
  returned: not in check mode
  type: list
  elements: str
warning:
  description: Set when the restore stands but dropping its safety copies did not finish (the next run does).
  returned: not in check mode
  type: str
recovered:
  description: Restores of this host that were interrupted and are now finished or undone.
  returned: not in check mode
  type: list
  elements: dict
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.selfhost.dr.plugins.module_utils._common import Error
from ansible_collections.selfhost.dr.plugins.module_utils.apps.registry import APP_SPEC, application
from ansible_collections.selfhost.dr.plugins.module_utils.engine import replica_restore, restore
from ansible_collections.selfhost.dr.plugins.module_utils.engine.journal import STATE_DIR_SPEC
from ansible_collections.selfhost.dr.plugins.module_utils.engine.recorded import LOCK_SPEC, recorded


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            path=dict(type="path"),
            dir=dict(type="path", default="/var/backups/selfhost-dr"),
            instances=dict(type="list", elements="str", default=[]),
            keep_safety=dict(type="bool", default=False),
            config_path=dict(type="path"),
            dest_root=dict(type="path", default="/"),
            **APP_SPEC,
            **STATE_DIR_SPEC,
            **LOCK_SPEC,
        ),
        supports_check_mode=True,
    )
    p = module.params
    options = restore.Options(p["keep_safety"], p["health_timeout"], p["state_dir"], p["dest_root"])
    units = p["instances"]
    try:
        app = application(p["app"], p)
        archive = p["path"] or restore.newest(p["dir"], p["app"], units)
        replicas = replica_restore.host_replication(p["config_path"])

        def described(planned: restore.Plan) -> dict[str, object]:
            return dict(
                changed=True,
                path=archive,
                paths=planned.paths,
                targets=planned.targets,
                started=planned.start,
                metadata=planned.manifest.get("metadata", {}),
            )

        if module.check_mode:  # reads only: no lock
            module.exit_json(**described(restore.plan(app, archive, options, units, module.log, check=True)))
        # Planned under the host lock: what runs before the restore is read after any other run let go of the host.
        with recorded(p["state_dir"], "restore", p["app"], p["lock_wait"], module.log) as run:
            run.set_path, run.sets = archive, 1
            planned = restore.plan(app, archive, options, units, module.log)
            done = replica_restore.paused(replicas, p["state_dir"], lambda: restore.run(app, planned, options, module.log),
                                          module.log)  # fmt: skip
        common = described(planned)
    except Error as exc:
        module.fail_json(msg=str(exc))
    except OSError as exc:
        module.fail_json(msg=f"the restore failed: {exc.filename + ': ' if exc.filename else ''}{exc.strerror or exc}")
    if done.warning:
        module.warn(done.warning)
    module.exit_json(
        restore_id=done.restore_id,
        files=done.files,
        recovered=done.recovered,
        actions=done.actions,
        warning=done.warning,
        **common,
    )


if __name__ == "__main__":
    main()
