#!/usr/bin/python
# Copyright: selfhost.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
---
module: repo_backup
short_description: Back up an application (tenement or Tomo) into restic repositories
version_added: 0.3.0
description:
  - Takes the same consistent snapshot as a set (every SQLite database by SQLite's backup API, the application's stop
    and start rules, the running instances and a manifest of every file recorded) into a stage that never moves, and
    hands it to C(restic backup) once per repository, so that a day costs what changed. See docs/repositories.md.
  - Each repository gets its own snapshot (tagged C(selfhost-dr), C(app=APP), C(kind=MODE), C(schedule=NAME)) and its
    own outcome. A failed required repository fails the module after the others were tried; a failed optional one is
    a warning, and the next run tries it again. A repository with C(init) is created when there is none.
  - V(cold) stops the application until every repository has read the files, and starts it again with the instances
    that ran, whatever happened.
  - Runs under the host lock and is recorded in C(state.json) as a backup, as C(selfhost-dr backup --repo NAME) on
    the host is (the same procedure, plugins/module_utils/engine/repo_backup.py).
author:
  - selfhost.dr developers
attributes:
  check_mode:
    support: full
    details: Reads the application and every repository (there, opened by its password, or created by C(init)) and
      refuses what the run would refuse; writes nothing.
  diff_mode:
    support: none
  idempotent:
    support: none
    details: Every run makes a new snapshot in each repository (restic stores only what changed).
options:
  mode:
    description: V(hot) (the application keeps running) or V(cold) (stopped while restic reads the files).
    type: str
    choices: [hot, cold]
    default: hot
  dest:
    description: The backup directory; the stage is C(.selfhost-dr-repo/APP) in it (its path never changes, so
      restic finds its parent snapshot).
    type: path
    default: /var/backups/selfhost-dr
  label:
    description: The label recorded in the manifest; defaults to O(mode).
    type: str
    default: ""
  exclude:
    description: Patterns left out (fnmatch, against the path or the base name).
    type: list
    elements: str
    default: []
  lock_timeout:
    description: Seconds a locked database may keep a snapshot waiting.
    type: float
    default: 30
  host:
    description: The host name of the snapshots; defaults to this host's.
    type: str
  schedule:
    description: The schedule to tag the snapshots with (C(schedule=NAME)); empty tags none.
    type: str
    default: ""
extends_documentation_fragment:
  - selfhost.dr.repository
  - selfhost.dr.tenement
  - selfhost.dr.tenement.service
  - selfhost.dr.tomo
  - selfhost.dr.state_dir
  - selfhost.dr.state_dir.lock
  - selfhost.dr.databases
seealso:
  - module: selfhost.dr.repo_snapshots
  - module: selfhost.dr.app_backup
  - module: selfhost.dr.host_command
"""

EXAMPLES = r"""
- name: Back tenement up, hot, into every repository of dr_repositories
  selfhost.dr.repo_backup:
    app: tenement
  register: pushed

- name: Say what each repository got
  ansible.builtin.debug:
    msg: "{{ item.repository }}: {{ item.snapshot_id if item.ok else item.error }}"
  loop: "{{ pushed.repositories }}"

- name: Cold, into the off-site repository only
  selfhost.dr.repo_backup:
    app: tenement
    mode: cold
    repositories: [offsite]
"""

RETURN = r"""
repositories:
  description: Each repository's outcome, in the order of O(repositories) (or of the configuration).
  returned: always
  type: list
  elements: dict
  contains:
    repository: {description: Its name., type: str, sample: offsite}
    location: {description: The repository as it may be shown (no credentials)., type: str, sample: "repository offsite (s3:https://s3.example.com/backups-web1)"}
    required: {description: Whether its failure fails the run., type: bool}
    ok: {description: Whether it got its snapshot (in check mode, whether it would)., type: bool}
    snapshot_id: {description: The snapshot made; empty in check mode or on failure., type: str}
    created: {description: Whether the repository was (or would be) created by this run (C(init))., type: bool}
    data_added: {description: Bytes the snapshot added to the repository (after deduplication)., type: int}
    files_new: {description: New files., type: int}
    files_changed: {description: Changed files., type: int}
    files_unmodified: {description: Files restic did not read again., type: int}
    seconds: {description: How long it took., type: float}
    error: {description: Why it failed, one sentence; empty when it did not., type: str}
  sample: [{repository: offsite, ok: true, snapshot_id: 4bba301f6e1c0c41b2e2e2b1a1f0e5bd6cc2e8b0d1f27d9e1f0a1b2c3d4e5f60, data_added: 9437184, created: false}]
mode:
  description: The mode.
  returned: always
  type: str
stops:
  description: What stops during the backup, in words.
  returned: always
  type: str
  sample: nothing stops
files:
  description: Files the snapshot holds (in check mode, would hold).
  returned: always
  type: int
changed_during_backup:
  description: Files that kept changing while restic read them (their last state is in the snapshot).
  returned: success
  type: list
  elements: str
actions:
  description: What the application did beyond the plain procedure, in sentences.
  returned: success
  type: list
  elements: str
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.selfhost.dr.plugins.module_utils._common import Error
from ansible_collections.selfhost.dr.plugins.module_utils.apps.registry import APP_SPEC, application
from ansible_collections.selfhost.dr.plugins.module_utils.engine import backup, repo_backup
from ansible_collections.selfhost.dr.plugins.module_utils.engine.journal import STATE_DIR_SPEC, state_dir
from ansible_collections.selfhost.dr.plugins.module_utils.engine.recorded import LOCK_SPEC, recorded
from ansible_collections.selfhost.dr.plugins.module_utils.repos import config as repo_config


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            mode=dict(type="str", default="hot", choices=["hot", "cold"]),
            dest=dict(type="path", default="/var/backups/selfhost-dr"),
            label=dict(type="str", default=""),
            exclude=dict(type="list", elements="str", default=[]),
            lock_timeout=dict(type="float", default=30.0),
            row_counts_max_size=dict(type="int", default=0),
            host=dict(type="str"),
            schedule=dict(type="str", default=""),
            **repo_config.MODULE_SPEC,
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
        lock_timeout=p["lock_timeout"],
        row_counts_max_size=p["row_counts_max_size"],
        host=p["host"],
        verify=False,
        health_timeout=p["health_timeout"],
        state_dir=p["state_dir"],
    )
    result: repo_backup.Result | None = None
    try:
        repos = repo_config.from_params(p, state_dir(p["state_dir"]))
        app = application(p["app"], p)
        if module.check_mode:  # reads only: no lock, nothing written
            planned = repo_backup.plan(app, p["mode"], options, check=True)
            result = repo_backup.preflight(p["app"], planned.mode, repos)
        else:
            with recorded(p["state_dir"], "backup", p["app"], p["lock_wait"], module.log) as run:
                planned = repo_backup.plan(app, p["mode"], options)
                try:
                    result = repo_backup.run(app, planned, repos, options, module.log, p["schedule"])
                except repo_backup.RepositoryFailedError as exc:  # each outcome in state.json, also then
                    repo_backup.record(
                        exc.result.outcomes, p["state_dir"], run.started_at, p["schedule"], module.log, p["app"]
                    )
                    raise
                repo_backup.record(result.outcomes, p["state_dir"], run.started_at, p["schedule"], module.log, p["app"])
    except repo_backup.RepositoryFailedError as exc:
        module.fail_json(msg=str(exc), repositories=[o.as_dict() for o in exc.result.outcomes])
    except Error as exc:
        module.fail_json(msg=str(exc))
    except OSError as exc:
        module.fail_json(msg=f"the backup failed: {exc.filename + ': ' if exc.filename else ''}{exc.strerror or exc}")
    for warning in result.warnings:
        module.warn(warning)
    outcomes = [o.as_dict() for o in result.outcomes]
    module.exit_json(
        changed=any(o.ok for o in result.outcomes),  # a snapshot was (or would be) made
        repositories=outcomes,
        mode=planned.mode,
        stops=planned.stops,
        files=planned.files if module.check_mode else len(list(result.manifest.get("files") or [])),  # type: ignore[call-overload]
        changed_during_backup=result.changed_during_backup,
        actions=result.actions,
    )


if __name__ == "__main__":
    main()
