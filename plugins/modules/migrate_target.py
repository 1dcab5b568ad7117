#!/usr/bin/python
# Copyright: selfhost.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
---
module: migrate_target
short_description: The new server's steps of a migration - preflight, receive the seed, apply the delta, stop
version_added: 0.4.0
description:
  - Role M(selfhost.dr.migrate) runs these steps on the new server of each pair; the old server's are
    M(selfhost.dr.migrate_source).
  - C(preflight) - refuses, before anything changes on either server, a new server that runs an older version of
    the application than O(source_version), has less free space where the data go than 1.2 times O(source_bytes),
    already runs instances (unless O(replace)), or could not run what the old server runs (O(source_needs) - a port
    its server listens on taken here by another program, a program or file its configuration runs missing).
  - C(receive) - the seed set O(path) verified and restored in place as M(selfhost.dr.app_restore) restores, made
    safe to start (tenement - C(instance_state) emptied), but nothing is started. The server remembers the seed (in
    its state directory) as what it holds. Refused on a server that runs instances or serves the data of an applied
    delta, unless O(replace).
  - C(apply) - the delta set O(path) applied onto the seed - refused before anything stops when it does not follow
    the seed this server holds or its manifest is not valid; then its members and the seeded copies of the files it
    keeps are staged beside the seeded trees, every file checked against the frozen server's manifest (sha256, size,
    mode, owner - a kept file's sha256 read again unless its stat is what it was right after the seed's restore
    verified it; the delta's databases by integrity and row counts), swapped in, fixed up (tenement -
    C(instance_state) emptied, so C(ten serve) kills no process), and the application started with what ran on the
    old server, each instance's health waited for. On a failure the seeded trees are put back and the application
    is left stopped. Applying the same delta again changes nothing.
  - C(stop) - the application stopped (a migration rolled back); its data stay as they are.
author:
  - selfhost.dr developers
attributes:
  check_mode:
    support: full
    description: C(apply) refuses what the run would refuse; the other steps say what they would do.
  diff_mode:
    support: none
  idempotent:
    support: partial
    description: C(apply) of a delta already applied, C(preflight) and C(stop) of a stopped application change
      nothing; C(receive) restores the seed again.
options:
  app:
    description: The application.
    type: str
    choices: [tenement, tomo]
    required: true
  step:
    description: The step.
    type: str
    choices: [preflight, receive, apply, stop]
    required: true
  path:
    description: With C(receive) the seed set, with C(apply) the delta set, on this server.
    type: path
  source_version:
    description: With C(preflight) - the application's version on the old server.
    type: str
    default: ""
  source_bytes:
    description: With C(preflight) - the bytes of the old server's data.
    type: int
    default: 0
  source_needs:
    description:
      - With C(preflight) - what the old server's configuration needs of a server, as M(selfhost.dr.migrate_source)'s
        C(preflight) returns it (C(needs) - C(ports), C(programs), C(commands)).
    type: dict
    default: {}
  document:
    description:
      - With C(receive), Tomo only - migrate by the guide's JSON document - this server keeps its own C(tomo.db) (its
        install's identity, its version's schema; its own environment kept as a safety copy) and C(apply) imports
        the frozen server's document into it, every category in mode C(replace), before it swaps in the environment
        and C(known_hosts) - planned first on a private copy (what check mode refuses), the database copied before
        the import and put back if the swap or the start fails. C(apply) follows what C(receive) did.
    type: bool
    default: false
  replace:
    description:
      - With C(preflight) and C(receive) - allow a new server whose application already runs instances or serves data
        an earlier migration brought; C(receive) then keeps what it replaces as the restore's safety copy.
    type: bool
    default: false
  dir:
    description: With C(preflight) - the migration's directory on this server, where the seed and the delta will be.
    type: path
    default: /var/backups/selfhost-dr/migrate
  health_timeout:
    description: With C(apply) - seconds each instance may take to be healthy after its start.
    type: float
    default: 60
extends_documentation_fragment:
  - selfhost.dr.tenement
  - selfhost.dr.tenement.service
  - selfhost.dr.tomo
  - selfhost.dr.state_dir
  - selfhost.dr.state_dir.lock
seealso:
  - module: selfhost.dr.migrate_source
"""

EXAMPLES = r"""
- name: Take the seed
  selfhost.dr.migrate_target:
    app: tenement
    step: receive
    path: /var/backups/selfhost-dr/migrate/tenement-old-20261129T083000Z-seed.tar.zst

- name: Apply the delta and start what ran on the old server
  selfhost.dr.migrate_target:
    app: tenement
    step: apply
    path: /var/backups/selfhost-dr/migrate/tenement-old-20261129T090000Z-delta.tar.zst
"""

RETURN = r"""
started:
  description: With C(apply) - what runs now (tenement instances).
  returned: with apply
  type: list
  elements: str
checked:
  description: With C(apply) - what was checked against the frozen server's manifest - C(kept) files and their
    C(bytes), how many of them were C(hashed) again (the others' stat was as the seed's restore left it),
    C(databases) and C(tables) of the delta.
  returned: with apply, not in check mode
  type: dict
restore_id:
  description: With C(receive) and C(apply) - the journal's name for the restore.
  returned: with receive and apply, not in check mode
  type: str
files:
  description: With C(receive) and C(apply) - files put in place.
  returned: with receive and apply, not in check mode
  type: int
version:
  description: With C(preflight) - the application's version here.
  returned: with preflight
  type: str
free:
  description: With C(preflight) - free bytes where each of the application's trees go.
  returned: with preflight
  type: dict
actions:
  description: With C(apply) - what the application did beyond the plain procedure, in sentences.
  returned: with apply, not in check mode
  type: list
  elements: str
seconds:
  description: How long the step took.
  returned: always
  type: float
"""

import time

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.selfhost.dr.plugins.module_utils._common import Error
from ansible_collections.selfhost.dr.plugins.module_utils.apps.registry import APP_SPEC, application
from ansible_collections.selfhost.dr.plugins.module_utils.engine import migrate, restore
from ansible_collections.selfhost.dr.plugins.module_utils.engine.journal import STATE_DIR_SPEC
from ansible_collections.selfhost.dr.plugins.module_utils.engine.lock import HostLock
from ansible_collections.selfhost.dr.plugins.module_utils.engine.recorded import LOCK_SPEC

_KEEP = ("started", "checked", "restore_id", "files", "bytes", "version", "free", "need", "running", "actions",
         "warning", "delta", "base", "apply_seconds")  # fmt: skip


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            step=dict(type="str", required=True, choices=["preflight", "receive", "apply", "stop"]),
            path=dict(type="path"),
            source_version=dict(type="str", default=""),
            source_bytes=dict(type="int", default=0),
            source_needs=dict(type="dict", default={}),
            document=dict(type="bool", default=False),
            replace=dict(type="bool", default=False),
            dir=dict(type="path", default="/var/backups/selfhost-dr/migrate"),
            **APP_SPEC,
            **STATE_DIR_SPEC,
            **LOCK_SPEC,
        ),
        required_if=[("step", "receive", ["path"]), ("step", "apply", ["path"])],
        supports_check_mode=True,
    )
    p = module.params
    step = p["step"]
    options = migrate.Options(dest=p["dir"], health_timeout=p["health_timeout"], state_dir=p["state_dir"])
    t0 = time.monotonic()
    try:
        app = application(p["app"], p)
        if step == "preflight":
            done = migrate.preflight_target(
                app, p["source_version"], p["source_bytes"], options, p["replace"], p["source_needs"]
            )
        elif module.check_mode:
            if step == "apply":
                done = migrate.apply(app, p["path"], options, module.log, check=True)
            elif step == "receive":
                if p["document"]:
                    app.migrate_by_document()
                restore.plan(app, p["path"], restore.Options(state_dir=p["state_dir"], start=False), check=True)
                done = {"changed": True}
            else:
                done = {"changed": True}
        else:
            with HostLock(p["state_dir"], f"migrate {step}", p["lock_wait"], "", module.log):
                if step == "receive":
                    done = migrate.receive(app, p["path"], options, module.log, p["replace"], p["document"])
                elif step == "apply":
                    done = migrate.apply(app, p["path"], options, module.log)
                else:
                    done = migrate.stop_target(app, module.log)
    except Error as exc:
        module.fail_json(msg=str(exc), step=step)
    except OSError as exc:
        module.fail_json(msg=f"the {step} failed: {exc.filename + ': ' if exc.filename else ''}{exc.strerror or exc}")
    if done.get("warning"):
        module.warn(str(done["warning"]))
    result = {k: v for k, v in done.items() if k in _KEEP}
    module.exit_json(changed=bool(done.get("changed", True)), step=step, seconds=round(time.monotonic() - t0, 3),
                     **result)  # fmt: skip


if __name__ == "__main__":
    main()
