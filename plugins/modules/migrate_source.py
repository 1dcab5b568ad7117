#!/usr/bin/python
# Copyright: selfhost.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
---
module: migrate_source
short_description: The old server's steps of a migration - seed, freeze, delta, thaw, retire
version_added: 0.4.0
description:
  - Role M(selfhost.dr.migrate) runs these steps on the old server of each pair; the new server's are
    M(selfhost.dr.migrate_target). Nothing here changes the old server's data - the steps read it, stop the
    application and start it again.
  - C(preflight) - the application's version, files, bytes and what runs, and what its configuration needs of a
    server (C(needs) - the ports its server listens on, the programs its configuration runs outside its data), read
    without changing anything; refuses what the seed would refuse.
  - C(seed) - a hot set of the running application in O(dir) (label C(seed)), verified, and beside it
    C(SET.index.json) - the stat of every file taken just before the set read it, which the delta is made against.
  - C(freeze) - what runs is recorded in the host's state directory, then the application is stopped (tenement - the
    data of instances with C(storage_persist = false) kept aside while C(ten serve) stops). Run again, it stops the
    application again and keeps the first record.
  - C(delta) - with the application frozen, a delta set against O(seed) (label C(delta)) - every directory and link,
    every file whose size, mtime, ctime or inode changed since the index, a fresh snapshot of every such database,
    the names kept from the seed and those deleted (docs/migrate.md). Not verified here - the new server verifies
    every byte, member and database of it as it applies it, before anything is swapped.
  - C(thaw) - the application started again with what ran at the freeze (a migration rolled back). Refused once the
    server is retired.
  - C(retire) - the migration stands - the application stays stopped, its data as they were, and a thaw is refused.
author:
  - selfhost.dr developers
attributes:
  check_mode:
    support: partial
    description: C(freeze), C(thaw) and C(retire) say what they would do; C(seed) and C(delta) read the application
      and refuse what the run would refuse, and write nothing.
  diff_mode:
    support: none
  idempotent:
    support: partial
    description: C(freeze), C(thaw) and C(retire) change nothing the second time; C(seed) and C(delta) write a new
      set each time.
options:
  app:
    description: The application.
    type: str
    choices: [tenement, tomo]
    required: true
  step:
    description: The step.
    type: str
    choices: [preflight, seed, freeze, delta, thaw, retire]
    required: true
  dir:
    description: The migration's directory on this server - the seed, its index and the delta are written there.
    type: path
    default: /var/backups/selfhost-dr/migrate
  seed:
    description: With C(delta) - the seed set (its index beside it).
    type: path
  new_host:
    description: With C(retire) - the server the application moved to, recorded and said by a refused thaw.
    type: str
    default: ""
  compression:
    description: C(zstd), C(gzip) or C(auto).
    type: str
    default: auto
    choices: [auto, zstd, gzip]
  level:
    description: The compression level.
    type: int
    default: 3
  lock_timeout:
    description: Seconds to wait for a database lock while snapshotting.
    type: float
    default: 30
  excludes:
    description: Glob patterns left out, beside the application's own.
    type: list
    elements: str
    default: []
  health_timeout:
    description: With C(thaw) - seconds each instance may take to be healthy after its start.
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
  - module: selfhost.dr.migrate_target
"""

EXAMPLES = r"""
- name: Seed while the old server keeps serving
  selfhost.dr.migrate_source:
    app: tenement
    step: seed
  register: seeded

- name: Freeze, then the delta against the seed
  selfhost.dr.migrate_source:
    app: tenement
    step: "{{ item }}"
    seed: "{{ seeded.path }}"
  loop: [freeze, delta]
"""

RETURN = r"""
path:
  description: With C(seed) and C(delta) - the set written.
  returned: when a set was written
  type: str
name:
  description: Its file name.
  returned: when a set was written
  type: str
size:
  description: Its size in bytes.
  returned: when a set was written
  type: int
sha256:
  description: Its sha256.
  returned: when a set was written
  type: str
bytes_in:
  description: The bytes of the files it holds.
  returned: when a set was written
  type: int
kept:
  description: With C(delta) - how many files were kept from the seed.
  returned: with delta
  type: int
deleted:
  description: With C(delta) - how many of the seed's members are gone.
  returned: with delta
  type: int
index:
  description: With C(seed) - the index beside the set.
  returned: with seed
  type: str
version:
  description: With C(preflight) - the application's version.
  returned: with preflight
  type: str
bytes:
  description: With C(preflight) - the bytes of its files.
  returned: with preflight
  type: int
needs:
  description:
    - With C(preflight) - what the application's configuration needs of a server beyond its data, which
      M(selfhost.dr.migrate_target)'s C(preflight) checks on the new server
      (O(selfhost.dr.migrate_target#module:source_needs)).
    - C(ports) - each address and port its server process listens on (C(port), C(address), C(what)).
    - C(programs) - absolute paths its configuration runs (C(path), C(service), C(as) - C(command), C(argument) or
      C(workdir)).
    - C(commands) - bare command names, looked for on the PATH the old server found them on (C(name), C(service),
      C(path)).
  returned: with preflight
  type: dict
  sample: {ports: [{port: 8080, address: 0.0.0.0, what: ten serve}],
           programs: [{path: /opt/app/app.py, service: demo, as: argument}], commands: []}
frozen:
  description: With C(preflight) - whether the application is frozen by a migration on this server.
  returned: with preflight
  type: bool
running:
  description: With C(freeze), C(thaw) and C(preflight) - what ran at the freeze (tenement instances).
  returned: with freeze and thaw
  type: list
  elements: str
frozen_at:
  description: With C(freeze) - when the application was first frozen (UTC).
  returned: with freeze
  type: str
seconds:
  description: How long the step took.
  returned: always
  type: float
"""

import time

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.selfhost.dr.plugins.module_utils._common import Error
from ansible_collections.selfhost.dr.plugins.module_utils.apps.registry import APP_SPEC, application
from ansible_collections.selfhost.dr.plugins.module_utils.engine import backup, migrate
from ansible_collections.selfhost.dr.plugins.module_utils.engine.journal import STATE_DIR_SPEC
from ansible_collections.selfhost.dr.plugins.module_utils.engine.lock import HostLock
from ansible_collections.selfhost.dr.plugins.module_utils.engine.recorded import LOCK_SPEC

_KEEP = ("path", "name", "size", "sha256", "bytes_in", "files", "databases", "kept", "deleted", "index", "base",
         "running", "frozen_at", "stop_seconds", "manifest_path", "version", "bytes", "frozen", "retired",
         "needs")  # fmt: skip


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            step=dict(type="str", required=True, choices=["preflight", "seed", "freeze", "delta", "thaw", "retire"]),
            dir=dict(type="path", default="/var/backups/selfhost-dr/migrate"),
            seed=dict(type="path"),
            new_host=dict(type="str", default=""),
            compression=dict(type="str", default="auto", choices=["auto", "zstd", "gzip"]),
            level=dict(type="int", default=3),
            lock_timeout=dict(type="float", default=30.0),
            excludes=dict(type="list", elements="str", default=[]),
            row_counts_max_size=dict(type="int", default=0),
            **APP_SPEC,
            **STATE_DIR_SPEC,
            **LOCK_SPEC,
        ),
        required_if=[("step", "delta", ["seed"])],
        supports_check_mode=True,
    )
    p = module.params
    step = p["step"]
    options = migrate.Options(
        dest=p["dir"],
        compression=p["compression"],
        level=p["level"],
        lock_timeout=p["lock_timeout"],
        health_timeout=p["health_timeout"],
        state_dir=p["state_dir"],
        row_counts_max_size=p["row_counts_max_size"],
        excludes=p["excludes"],
    )
    t0 = time.monotonic()
    try:
        app = application(p["app"], p)
        if step == "preflight":
            module.exit_json(
                step=step, seconds=round(time.monotonic() - t0, 3), **migrate.preflight_source(app, options)
            )
        if module.check_mode:
            if step in ("seed", "delta"):
                mode = "hot" if step == "seed" else "cold"
                backup.plan(app, mode, backup.Options(dest=p["dir"], excludes=p["excludes"]), check=True)
            module.exit_json(changed=True, step=step, seconds=round(time.monotonic() - t0, 3))
        with HostLock(p["state_dir"], f"migrate {step}", p["lock_wait"], "", module.log):
            if step == "seed":
                done = migrate.seed(app, options, module.log)
            elif step == "freeze":
                done = migrate.freeze(app, options, module.log)
            elif step == "delta":
                done = migrate.delta(app, p["seed"], options, module.log)
            elif step == "thaw":
                done = migrate.thaw(app, options, module.log)
            else:
                done = migrate.retire(app, options, p["new_host"], module.log)
    except Error as exc:
        module.fail_json(msg=str(exc), step=step)
    except OSError as exc:
        module.fail_json(msg=f"the {step} failed: {exc.filename + ': ' if exc.filename else ''}{exc.strerror or exc}")
    result = {k: v for k, v in done.items() if k in _KEEP}
    module.exit_json(changed=bool(done.get("changed", True)), step=step, seconds=round(time.monotonic() - t0, 3),
                     **result)  # fmt: skip


if __name__ == "__main__":
    main()
