#!/usr/bin/python
# Copyright: selfhost.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
---
module: repo_restore
short_description: Restore an application (tenement or Tomo) from a restic repository's snapshot
version_added: 0.3.0
description:
  - The snapshot (the newest this host made, the newest O(from_host) made, or O(snapshot)) is hostile input, as a
    set is. Its manifest and its whole listing are read first, and the listing must be exactly what the manifest
    says (one name per entry, no path twice, nothing but directories, files and links, nothing outside the
    application's paths, every type, size, mode and owner as listed) before restic writes anything (check mode
    stops here).
  - restic then restores the application's paths into a private directory beside each target, every file, link,
    directory and database is checked against the manifest (sha256, owner, mode, link target, integrity_check), and
    only then is the application stopped and the checked trees swapped in with safety copies, as
    M(selfhost.dr.app_restore) does; the instances the snapshot recorded as running are started and their health
    awaited. A refused snapshot, an unreachable store or a full disk stop nothing and change nothing.
  - A restore that passed tags the snapshot C(verified=restore); retention never forgets the newest so tagged.
  - The same procedure runs as C(selfhost-dr restore --repo NAME) on the host (docs/repositories.md).
author:
  - selfhost.dr developers
attributes:
  check_mode:
    support: full
    details: Chooses the snapshot, reads its manifest and listing and plans the restore, refusing what the run would
      refuse, before anything is fetched or stopped.
  diff_mode:
    support: none
  idempotent:
    support: none
    details: Every run puts the snapshot's content in place again.
options:
  repository:
    description: The repository to restore from, by the name of its C([repositories.NAME]) table in O(config_path).
    type: str
    required: true
  snapshot:
    description: A snapshot id (8 to 64 hex digits, from M(selfhost.dr.repo_snapshots)), or V(latest).
    type: str
    default: latest
  from_host:
    description: With V(latest), the host whose newest snapshot is restored (a new server restoring the old one's);
      empty takes this host's.
    type: str
    default: ""
  config_path:
    description:
      - The host command's configuration, whose C([repositories]) and C([restic] binary) are read.
      - When it sets up replication (a C([replicate]) table), Litestream is stopped for the restore and started again
        after it, as C(selfhost-dr restore) does.
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
  - module: selfhost.dr.repo_backup
  - module: selfhost.dr.repo_snapshots
  - module: selfhost.dr.app_restore
"""

EXAMPLES = r"""
- name: A new server restores the old one's newest snapshot from the off-site repository
  selfhost.dr.repo_restore:
    app: tenement
    repository: offsite
    from_host: web1
"""

RETURN = r"""
repository:
  description: The repository restored from.
  returned: always
  type: str
snapshot:
  description: The snapshot restored (id, short_id, host, time, repository).
  returned: always
  type: dict
snapshot_tagged:
  description: The id restic gave the snapshot once tagged C(verified=restore) (empty when tagging failed).
  returned: not in check mode
  type: str
restore_id:
  description: The journal's name for the restore.
  returned: not in check mode
  type: str
paths:
  description: The snapshot's paths put back.
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
actions:
  description: What the application did beyond the plain procedure, in sentences.
  returned: not in check mode
  type: list
  elements: str
warnings_restored:
  description: Files that changed while they were backed up and differ from the manifest (restored as held).
  returned: not in check mode
  type: list
  elements: str
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.selfhost.dr.plugins.module_utils._common import Error
from ansible_collections.selfhost.dr.plugins.module_utils.apps.registry import APP_SPEC, application
from ansible_collections.selfhost.dr.plugins.module_utils.engine import replica_restore, repo_restore, restore
from ansible_collections.selfhost.dr.plugins.module_utils.engine.journal import STATE_DIR_SPEC, state_dir
from ansible_collections.selfhost.dr.plugins.module_utils.engine.recorded import LOCK_SPEC, recorded
from ansible_collections.selfhost.dr.plugins.module_utils.repos import config as repo_config
from ansible_collections.selfhost.dr.plugins.module_utils.repos.stage import DEFAULT_BACKUP_DIR


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            repository=dict(type="str", required=True),
            snapshot=dict(type="str", default="latest"),
            from_host=dict(type="str", default=""),
            config_path=dict(type="path", default=repo_config.DEFAULT_CONFIG),
            keep_safety=dict(type="bool", default=False),
            dest_root=dict(type="path", default="/"),
            **APP_SPEC,
            **STATE_DIR_SPEC,
            **LOCK_SPEC,
        ),
        supports_check_mode=True,
    )
    p = module.params
    options = restore.Options(p["keep_safety"], p["health_timeout"], p["state_dir"], p["dest_root"])
    try:
        (restic,) = repo_config.from_params(
            {"repositories": [p["repository"]], "config_path": p["config_path"]}, state_dir(p["state_dir"])
        )
        app = application(p["app"], p)
        config = repo_config.load(p["config_path"])  # (read by from_params already: it exists)
        replicas = replica_restore.stoppable(config.get("replicate"))
        # Where this host's backups put their stage: the newest snapshot's manifest is read there from the start.
        backup_dir = str(config.get("backup_dir") or DEFAULT_BACKUP_DIR)

        def described(planned: restore.Plan) -> dict[str, object]:
            return dict(
                changed=True,
                repository=p["repository"],
                snapshot=planned.snapshot,
                paths=planned.paths,
                targets=planned.targets,
                started=planned.start,
            )

        if module.check_mode:  # reads only: no lock, nothing fetched
            planned = repo_restore.plan(
                app, restic, options, p["snapshot"], p["from_host"], module.log, True, backup_dir
            )
            module.exit_json(**described(planned))
        with recorded(p["state_dir"], "restore", p["app"], p["lock_wait"], module.log) as run:
            planned = repo_restore.plan(
                app, restic, options, p["snapshot"], p["from_host"], module.log, False, backup_dir
            )
            run.set_path, run.sets = planned.archive, 1
            done = replica_restore.paused(replicas, p["state_dir"], lambda: restore.run(app, planned, options, module.log),
                                          module.log)  # fmt: skip
        tagged = repo_restore.mark_verified(restic, planned.snapshot["id"], module.log)
    except Error as exc:
        module.fail_json(msg=str(exc))
    except OSError as exc:
        module.fail_json(msg=f"the restore failed: {exc.filename + ': ' if exc.filename else ''}{exc.strerror or exc}")
    for warning in [*planned.warnings, *([done.warning] if done.warning else [])]:
        module.warn(warning)
    module.exit_json(
        restore_id=done.restore_id,
        files=done.files,
        actions=done.actions,
        snapshot_tagged=tagged,
        warnings_restored=planned.warnings,
        **described(planned),
    )


if __name__ == "__main__":
    main()
