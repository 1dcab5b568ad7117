#!/usr/bin/python
# Copyright: selfhost.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
---
module: replica_restore
short_description: Restore an application's databases (tenement or Tomo) from their Litestream replicas, to a moment
version_added: 0.5.0
description:
  - Every database of the application (or O(databases)) is planned at one moment O(at) from its replica's files (the
    newest snapshot and the files continuing it, each stamped at or before O(at)), restored with C(litestream restore
    -txid) into the state dir, retried when Litestream's retention deletes a planned file meanwhile, and checked
    (SQLite's header, C(integrity_check)). The replica is hostile input - its keys and file headers are checked
    before they are used (check mode stops after the plan, refusing what the run would refuse).
  - Litestream is stopped for the whole restore. The application is stopped only once every database is staged;
    each live database's WAL is finished into it, then the restored database is swapped in with a safety copy, as
    M(selfhost.dr.app_restore) does (tenement's C(instance_state) emptied), what ran before is started and its health
    awaited, and Litestream is started again. Any failure puts the previous databases back and running.
  - The store is the host command's C([replicate]) table in O(config_path) (the C(host_command) role writes it from
    C(dr_replicate)). The same procedure runs as C(selfhost-dr restore --at TIME) on the host (docs/replicate.md).
author:
  - selfhost.dr developers
attributes:
  check_mode:
    support: full
    details: Lists the replicas, reads their files' headers and plans every database, refusing what the run would
      refuse, before anything is fetched or stopped.
  diff_mode:
    support: none
  idempotent:
    support: none
    details: Every run puts the replicas' content in place again.
options:
  at:
    description: The moment, ISO 8601 with its time zone (V(2026-11-29T14:05:00Z)), or V(latest) (each database's
      newest state once Litestream stopped).
    type: str
    default: latest
  databases:
    description: Only these databases, by their paths below the data dir (V(tenement.db), V(demo/alpha/app.db));
      empty - every database the replicas hold.
    type: list
    elements: str
    default: []
  config_path:
    description: The host command's configuration, whose C([replicate]) table is read.
    type: path
    default: /etc/selfhost-dr/config.toml
  keep_safety:
    description: Keep the safety copies of what was replaced (the journal records the restore as C(kept)).
    type: bool
    default: false
  health_timeout:
    description: Seconds each instance (or Tomo) may take to be healthy after its start.
    type: float
    default: 60
extends_documentation_fragment:
  - selfhost.dr.tenement
  - selfhost.dr.tenement.service
  - selfhost.dr.tomo
  - selfhost.dr.state_dir
  - selfhost.dr.state_dir.lock
seealso:
  - module: selfhost.dr.replicate_config
  - module: selfhost.dr.app_restore
"""

EXAMPLES = r"""
- name: Every database of tenement as it was before the bad migration at 14:07
  selfhost.dr.replica_restore:
    app: tenement
    at: "2026-11-29T14:06:00Z"
"""

RETURN = r"""
databases:
  description: Per database - its C(path) below the data dir, its C(target), the C(txid) restored, the moment it
    C(reached) (every commit restored was made by then), the replica C(files) applied and the C(attempts) made.
  returned: always
  type: list
  elements: dict
restore_id:
  description: The journal's name for the restore.
  returned: not in check mode
  type: str
targets:
  description: Where the restored databases (or the directories staged whole) are now.
  returned: always
  type: list
  elements: str
started:
  description: What runs afterwards (tenement instances).
  returned: always
  type: list
  elements: str
actions:
  description: What the application did beyond the plain procedure, in sentences.
  returned: not in check mode
  type: list
  elements: str
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.selfhost.dr.plugins.module_utils._common import Error
from ansible_collections.selfhost.dr.plugins.module_utils.apps.registry import APP_SPEC, application
from ansible_collections.selfhost.dr.plugins.module_utils.engine import replica_restore, restore
from ansible_collections.selfhost.dr.plugins.module_utils.engine.journal import STATE_DIR_SPEC
from ansible_collections.selfhost.dr.plugins.module_utils.engine.recorded import LOCK_SPEC, recorded
from ansible_collections.selfhost.dr.plugins.module_utils.replicas import litestream
from ansible_collections.selfhost.dr.plugins.module_utils.repos import config as repo_config


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            at=dict(type="str", default="latest"),
            databases=dict(type="list", elements="str", default=[]),
            config_path=dict(type="path", default=repo_config.DEFAULT_CONFIG),
            keep_safety=dict(type="bool", default=False),
            **APP_SPEC,
            **STATE_DIR_SPEC,
            **LOCK_SPEC,
        ),
        supports_check_mode=True,
    )
    p = module.params
    options = restore.Options(p["keep_safety"], p["health_timeout"], p["state_dir"])
    try:
        moment = replica_restore.parse_moment(p["at"])
        replicas = litestream.from_config(repo_config.load(p["config_path"]).get("replicate"))
        app = application(p["app"], p)
        chosen = p["databases"] or None

        def described(planned: restore.Plan) -> dict[str, object]:
            return dict(
                changed=True,
                databases=[d.to_dict() for d in planned.databases],
                targets=planned.targets,
                started=planned.start,
            )

        if module.check_mode:  # reads only: no lock, nothing fetched, Litestream left running
            planned = replica_restore.plan(app, replicas, options, moment, chosen, module.log, check=True)
            module.exit_json(**described(planned))
        with recorded(p["state_dir"], "restore", p["app"], p["lock_wait"], module.log) as run:
            planned = replica_restore.plan(app, replicas, options, moment, chosen, module.log)
            run.set_path, run.sets = planned.archive, 1
            done = replica_restore.run(app, planned, options, replicas, module.log)
    except Error as exc:
        module.fail_json(msg=str(exc))
    except OSError as exc:
        module.fail_json(msg=f"the restore failed: {exc.filename + ': ' if exc.filename else ''}{exc.strerror or exc}")
    if done.warning:
        module.warn(done.warning)
    module.exit_json(restore_id=done.restore_id, actions=done.actions, **described(planned))


if __name__ == "__main__":
    main()
