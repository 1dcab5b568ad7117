#!/usr/bin/python
# Copyright: selfhost.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
---
module: drill_run
short_description: On a throwaway target, verify a set, restore it, spawn its instances and check what they serve
version_added: 0.3.0
description:
  - The part of a DR drill that runs on its target (role M(selfhost.dr.drill) makes the target, fetches the set and
    installs the application first). Never run it on a production host - it restores over what is there.
  - C(verify) - every byte, every member and every database of the set, with each table's row count against the
    manifest (recorded when the set was made); the result is recorded beside the set, so the restore that follows
    reads it once more only to write it.
  - C(compatibility) - the set's application version must not be newer than the target's.
  - C(restore) and C(spawn) - the same engine as M(selfhost.dr.app_restore) (tenement - C(instance_state) emptied,
    the instances the set recorded as running spawned and their health checks waited for).
  - C(checks) - every recorded instance running and healthy, then O(probes) and O(sql).
  - The module never fails for what the drill finds - it returns every step and check as a case (name, kind,
    status, seconds, message) for M(selfhost.dr.drill_report); a failed step ends the drill there and the later
    steps are returned as skipped. It fails only for malformed checks.
author:
  - selfhost.dr developers
attributes:
  check_mode:
    support: full
    description: Checks the probes and SQL checks and plans the restore (reading the set's manifest), nothing more.
  diff_mode:
    support: none
  idempotent:
    support: none
    description: Every run restores the set again.
options:
  app:
    description: The application.
    type: str
    choices: [tenement, tomo]
    required: true
  path:
    description: The set on the target. Give this, O(repository) or O(replica).
    type: path
  repository:
    description:
      - Drill a restic repository's snapshot instead of a set - the name of a repository in the host command's
        configuration (O(config_path); role M(selfhost.dr.host_command) writes it from C(dr_repositories)).
      - The steps are then C(snapshot) (chosen, its manifest read, its listing checked as a restore checks it),
        C(compatibility), C(fetch) (C(restic restore) into a private directory, every file and database checked
        against the manifest - sha256, integrity, row counts), C(restore), C(spawn), C(checks).
      - A drill that passed tags the snapshot C(verified=restore), as a restore does (retention never forgets the
        newest such snapshot); a repository that refuses the tag is only said.
    type: str
  replica:
    description:
      - Drill Litestream's replicas at their newest state instead of a set - the store in the host command's
        configuration's C([replicate]) table (O(config_path); role M(selfhost.dr.host_command) writes it from
        C(dr_replicate), C(dr_replicate_host) naming the replicated host).
      - The steps are then C(replica) (every database planned from its replica's files), C(fetch) (C(litestream
        restore -txid) into a private directory, each database's integrity checked), C(restore), C(spawn) (what ran
        at that moment), C(checks). The RPO is the drill's start minus the newest transaction replicated.
    type: bool
    default: false
  snapshot:
    description: With O(repository) - a snapshot id, or C(latest).
    type: str
    default: latest
  from_host:
    description:
      - With O(repository) and C(latest) - the host whose newest snapshot is drilled (restic's host name, the
        backed-up host's short name). A target is never the backed-up host, so give it.
    type: str
    default: ""
  config_path:
    description: With O(repository) - the host command's configuration, which holds the repositories.
    type: path
    default: /etc/selfhost-dr/config.toml
  health_timeout:
    description: Seconds each instance may take to be healthy after its start.
    type: float
    default: 60
  probes:
    description:
      - HTTP GETs the restored application must answer, each retried until it passes or its C(timeout).
    type: list
    elements: dict
    default: []
    suboptions:
      name:
        description: The check's name in the report.
        type: str
        required: true
      url:
        description: An C(http://) or C(https://) URL (on the target). Give this or O(probes[].instance).
        type: str
      instance:
        description: A tenement instance (C(service:id)) - the probe goes to its own address plus O(probes[].path).
        type: str
      path:
        description: The path on the instance.
        type: str
        default: /
      status:
        description: The HTTP status expected.
        type: int
        default: 200
      body:
        description: A regular expression the answer's body must hold (searched in its first MiB).
        type: str
      host:
        description: The Host header (tenement's proxy routes by name).
        type: str
      timeout:
        description: Seconds to keep trying.
        type: float
        default: 30
  sql:
    description:
      - Read-only queries against restored databases (opened read-only, C(query_only) - a query that would write
        fails). With C(expect) a list, every row (each a list) must equal it; any other value must equal the first
        row's first column; without C(expect) the query must return a row.
    type: list
    elements: dict
    default: []
    suboptions:
      name:
        description: The check's name in the report.
        type: str
        required: true
      database:
        description: The database's absolute path on the target.
        type: path
        required: true
      query:
        description: One SQL statement.
        type: str
        required: true
      expect:
        description: What it must answer.
        type: raw
extends_documentation_fragment:
  - selfhost.dr.tenement
  - selfhost.dr.tenement.service
  - selfhost.dr.tomo
  - selfhost.dr.state_dir
  - selfhost.dr.state_dir.lock
seealso:
  - module: selfhost.dr.drill_report
  - module: selfhost.dr.app_restore
"""

EXAMPLES = r"""
- name: Drill the uploaded set on this throwaway container
  selfhost.dr.drill_run:
    app: tenement
    path: /var/backups/selfhost-dr/tenement-web-1-20261129T020000Z-hot.tar.zst
    probes:
      - name: alpha answers through the proxy
        url: http://127.0.0.1:8080/health
        host: alpha.demo.localhost
    sql:
      - name: every item is back
        database: /var/lib/tenement/demo/alpha/app.db
        query: SELECT count(*) FROM items
        expect: 60
  register: drilled

- name: Drill the newest snapshot web-1 made in the repository offsite (configured by role host_command)
  selfhost.dr.drill_run:
    app: tenement
    repository: offsite
    from_host: web-1
"""

RETURN = r"""
ok:
  description: Every step and check passed.
  returned: always
  type: bool
cases:
  description:
    - The drill's steps (C(verify), C(compatibility), C(restore), C(spawn), C(checks)) and checks in order, each
      with C(name), C(kind) (C(step) or C(check)), C(status) (C(passed), C(failed), C(skipped)), C(seconds),
      C(message) (one sentence when it failed or was skipped) and C(detail).
  returned: always
  type: list
  elements: dict
properties:
  description:
    - What the report shows about the set and the restore - C(set), C(source) (C(set) or C(repository)),
      C(set_started_at), C(app), C(app_version), C(target_version), C(databases), C(tables_counted), C(files),
      C(bytes), C(instances); from a repository also C(repository), C(snapshot_id), C(snapshot_host) and, once a
      drill passed, C(snapshot_tagged) (the snapshot's new id, tagged C(verified=restore)).
  returned: always
  type: dict
"""

from dataclasses import asdict

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.selfhost.dr.plugins.module_utils._common import Error
from ansible_collections.selfhost.dr.plugins.module_utils.apps.registry import APP_SPEC, application
from ansible_collections.selfhost.dr.plugins.module_utils.engine import drill, replica_restore, repo_restore, restore
from ansible_collections.selfhost.dr.plugins.module_utils.engine.journal import STATE_DIR_SPEC, state_dir
from ansible_collections.selfhost.dr.plugins.module_utils.engine.recorded import LOCK_SPEC, recorded
from ansible_collections.selfhost.dr.plugins.module_utils.replicas import litestream
from ansible_collections.selfhost.dr.plugins.module_utils.repos import config as repo_config

PROBE = dict(
    name=dict(type="str", required=True),
    url=dict(type="str", default=""),
    instance=dict(type="str", default=""),
    path=dict(type="str", default="/"),
    status=dict(type="int", default=200),
    body=dict(type="str", default=""),
    host=dict(type="str", default=""),
    timeout=dict(type="float", default=30.0),
)
SQL = dict(
    name=dict(type="str", required=True),
    database=dict(type="path", required=True),
    query=dict(type="str", required=True),
    expect=dict(type="raw"),
)


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            path=dict(type="path"),
            repository=dict(type="str"),
            replica=dict(type="bool", default=False),
            snapshot=dict(type="str", default="latest"),
            from_host=dict(type="str", default=""),
            config_path=dict(type="path", default=repo_config.DEFAULT_CONFIG),
            probes=dict(type="list", elements="dict", options=PROBE, default=[]),
            sql=dict(type="list", elements="dict", options=SQL, default=[]),
            **APP_SPEC,
            **STATE_DIR_SPEC,
            **LOCK_SPEC,
        ),
        mutually_exclusive=[("path", "repository")],
        supports_check_mode=True,
    )
    p = module.params
    given = [name for name in ("path", "repository") if p[name]] + (["replica"] if p["replica"] else [])
    if len(given) != 1:
        module.fail_json(msg=f"drill_run takes one of path, repository or replica, not {', '.join(given) or 'none'}")
    try:
        options = drill.Options(
            restore.Options(health_timeout=p["health_timeout"], state_dir=p["state_dir"]),
            drill.probes_from(p["probes"]),
            drill.sql_from(p["sql"]),
        )
        app = application(p["app"], p)
        restic = None
        if p["repository"]:
            (restic,) = repo_config.from_params(
                {"repositories": [p["repository"]], "config_path": p["config_path"]}, state_dir(p["state_dir"])
            )
        replicas = litestream.from_config(repo_config.load(p["config_path"]).get("replicate")) if p["replica"] else None
        if module.check_mode and replicas is not None:
            planned = replica_restore.plan(app, replicas, options.restore, None, None, module.log, check=True)
            shown = f"the replicas in {replicas.shown}"
            module.exit_json(changed=True, ok=True, cases=[], properties={"set": shown, "started": planned.start})
        if module.check_mode:
            if restic is not None:
                planned = repo_restore.plan(
                    app, restic, options.restore, p["snapshot"], p["from_host"], module.log, check=True
                )
            else:
                planned = restore.plan(app, p["path"], options.restore, log=module.log, check=True)
            shown = planned.archive if restic is not None else p["path"]
            module.exit_json(changed=True, ok=True, cases=[], properties={"set": shown, "started": planned.start})
        with recorded(p["state_dir"], "restore", p["app"], p["lock_wait"], module.log) as run:
            run.sets = 1
            if replicas is not None:
                run.set_path = f"the replicas in {replicas.shown}"
                done = drill.run_replica(app, replicas, options, module.log)
            elif restic is not None:
                run.set_path = f"repository {p['repository']}"
                done = drill.run_repository(app, restic, options, p["snapshot"], p["from_host"], module.log)
            else:
                run.set_path = p["path"]
                done = drill.run(app, p["path"], options, module.log)
    except Error as exc:
        module.fail_json(msg=str(exc))
    module.exit_json(changed=True, ok=done.ok, cases=[asdict(c) for c in done.cases], properties=done.properties)


if __name__ == "__main__":
    main()
