#!/usr/bin/python
# Copyright: selfhost.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
---
module: app_backup
short_description: Back up an application (tenement or Tomo) hot, cold or one instance at a time
version_added: 0.2.0
description:
  - Reads the application first and refuses, before anything is stopped, every backup the run would refuse (check
    mode stops there and reports what would be archived).
  - V(hot) archives while the application runs, every SQLite database as a consistent snapshot. V(cold) stops it
    (tenement with every instance), archives, and starts it again with the instances that ran, whatever happened to
    the archive. V(instances) (tenement) writes one set per instance (stop it, copy its data dir, spawn it and wait
    for its health check, then compress the copy).
  - For Tomo the guide's JSON document is exported into O(dest) too, and the set holds a copy of it.
  - Each set is verified right after it is written (O(verify)). Restores of this host that were interrupted are
    finished or undone first (the journal under O(state_dir)).
  - The same procedure runs as C(selfhost-dr backup) on the host.
author:
  - selfhost.dr developers
attributes:
  check_mode:
    support: full
    description: Reads the application, refuses what the run would refuse and reports what would be archived.
  diff_mode:
    support: none
  idempotent:
    support: none
    description: Every run writes new sets.
options:
  app:
    description: The application.
    type: str
    choices: [tenement, tomo]
    required: true
  mode:
    description: V(hot), V(cold) or V(instances) (tenement only).
    type: str
    choices: [hot, cold, instances]
    default: hot
  instances:
    description: With O(mode=instances), the instances (C(service:id)); empty takes every running one.
    type: list
    elements: str
    default: []
  dest:
    description: The directory the sets are written to (created mode C(0700)).
    type: path
    default: /var/backups/selfhost-dr
  label:
    description: The label in the set's name; defaults to O(mode) (C(instance-SERVICE-ID) for instances).
    type: str
    default: ""
  exclude:
    description: Patterns left out (fnmatch, against the path or the base name).
    type: list
    elements: str
    default: []
  compression:
    description: V(zstd), V(gzip), or V(auto) (zstd when installed).
    type: str
    choices: [auto, zstd, gzip]
    default: auto
  compression_level:
    description: The compressor's level.
    type: int
    default: 3
  lock_timeout:
    description: Seconds a locked database may keep a snapshot waiting.
    type: float
    default: 30
  host:
    description: The host name in the set's name; defaults to this host's.
    type: str
  verify:
    description: Verify each set right after writing it (checksum, every member, integrity_check).
    type: bool
    default: true
  health_timeout:
    description: Seconds each instance (or Tomo) may take to be healthy again after a start.
    type: float
    default: 60
extends_documentation_fragment:
  - selfhost.dr.tenement
  - selfhost.dr.tenement.service
  - selfhost.dr.tomo
  - selfhost.dr.state_dir
  - selfhost.dr.state_dir.lock
  - selfhost.dr.databases
seealso:
  - module: selfhost.dr.app_restore
  - module: selfhost.dr.backup_create
"""

EXAMPLES = r"""
- name: Cold backup of tenement (stopped, archived, started again with its instances)
  selfhost.dr.app_backup:
    app: tenement
    mode: cold

- name: One set per running instance, each down only while its data is copied
  selfhost.dr.app_backup:
    app: tenement
    mode: instances

- name: Tomo, hot
  selfhost.dr.app_backup:
    app: tomo
"""

RETURN = r"""
sets:
  description: Each set written (or, in check mode, that would be), with what backup_create returns.
  returned: always
  type: list
  elements: dict
  sample: [{path: /var/backups/selfhost-dr/tenement-web1-20261122T035100Z-hot.tar.zst, files: 42, databases: 3}]
mode:
  description: The mode.
  returned: always
  type: str
stops:
  description: What stops during the backup, in words.
  returned: always
  type: str
  sample: nothing stops
document:
  description: Tomo's JSON document written beside the set (path, counts, versions); empty for tenement.
  returned: success
  type: dict
actions:
  description:
    - What the application did beyond the plain procedure, in sentences (tenement, cold backup
      - the data of instances with C(storage_persist = false) kept aside while C(ten serve) stopped).
  returned: success
  type: list
  elements: str
running:
  description: The units (tenement instances) that ran, and run again afterwards.
  returned: always
  type: list
  elements: str
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.selfhost.dr.plugins.module_utils._common import Error
from ansible_collections.selfhost.dr.plugins.module_utils.apps.registry import APP_SPEC, application
from ansible_collections.selfhost.dr.plugins.module_utils.engine import backup
from ansible_collections.selfhost.dr.plugins.module_utils.engine.journal import STATE_DIR_SPEC
from ansible_collections.selfhost.dr.plugins.module_utils.engine.recorded import LOCK_SPEC, recorded


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            mode=dict(type="str", default="hot", choices=["hot", "cold", "instances"]),
            instances=dict(type="list", elements="str", default=[]),
            dest=dict(type="path", default="/var/backups/selfhost-dr"),
            label=dict(type="str", default=""),
            exclude=dict(type="list", elements="str", default=[]),
            compression=dict(type="str", default="auto", choices=["auto", "zstd", "gzip"]),
            compression_level=dict(type="int", default=3),
            lock_timeout=dict(type="float", default=30.0),
            row_counts_max_size=dict(type="int", default=0),
            host=dict(type="str"),
            verify=dict(type="bool", default=True),
            **APP_SPEC,
            **STATE_DIR_SPEC,
            **LOCK_SPEC,
        ),
        supports_check_mode=True,
    )
    p = module.params
    options = backup.Options(
        dest=p["dest"],
        label=p["label"],
        excludes=p["exclude"],
        compression=p["compression"],
        level=p["compression_level"],
        lock_timeout=p["lock_timeout"],
        row_counts_max_size=p["row_counts_max_size"],
        host=p["host"],
        verify=p["verify"],
        health_timeout=p["health_timeout"],
        state_dir=p["state_dir"],
    )
    try:
        app = application(p["app"], p)
        if module.check_mode:  # reads only: no lock
            planned = backup.plan(app, p["mode"], options, p["instances"], check=True)
            would = [
                dict(name=n, path=f"{options.dest}/{n}", files=planned.files, databases=planned.databases)
                for n in planned.names
            ]
            module.exit_json(
                changed=True,
                mode=planned.mode,
                stops=planned.stops,
                running=planned.facts.running,
                sets=would,
                bytes_in=planned.bytes_in,
                left_out=planned.left_out,
            )
        # Planned under the host lock: what runs and what stops is read after any other run let go of the host.
        with recorded(p["state_dir"], "backup", p["app"], p["lock_wait"], module.log) as run:
            planned = backup.plan(app, p["mode"], options, p["instances"])
            done = backup.run(app, planned, options, module.log)
            run.set_path = str(done.sets[-1]["path"]) if done.sets else ""
            run.sets = len(done.sets)
            run.set_bytes = sum(int(str(s.get("size") or 0)) for s in done.sets)
        common = dict(changed=True, mode=planned.mode, stops=planned.stops, running=planned.facts.running)
    except Error as exc:
        module.fail_json(msg=str(exc))
    except OSError as exc:
        module.fail_json(msg=f"the backup failed: {exc.filename + ': ' if exc.filename else ''}{exc.strerror or exc}")
    module.exit_json(sets=done.sets, document=done.document, actions=done.actions, **common)


if __name__ == "__main__":
    main()
