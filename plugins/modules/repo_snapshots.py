#!/usr/bin/python
# Copyright: selfhost.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
---
module: repo_snapshots
short_description: List the snapshots selfhost.dr made in restic repositories, newest first
version_added: 0.3.0
description:
  - Per repository, the snapshots tagged C(selfhost-dr) (C(restic snapshots --json), without taking a lock), newest
    first, with the application, kind and schedule their tags name; the repositories' counterpart of
    M(selfhost.dr.backup_info).
  - A repository with C(init) that does not exist yet has no snapshots. A required repository that cannot be read (wrong password, no repository, refused credentials, unreachable store)
    fails the module with its sentence; an optional one is a warning, and its C(error) says why.
  - C(selfhost-dr list --repo NAME) shows the same on the host.
author:
  - selfhost.dr developers
attributes:
  check_mode:
    support: full
  diff_mode:
    support: none
  idempotent:
    support: full
options:
  app:
    description: Only snapshots of this application.
    type: str
    choices: [tenement, tomo]
  host:
    description: Only snapshots made on this host.
    type: str
extends_documentation_fragment:
  - selfhost.dr.repository
  - selfhost.dr.state_dir
seealso:
  - module: selfhost.dr.repo_backup
  - module: selfhost.dr.backup_info
"""

EXAMPLES = r"""
- name: What history does the off-site repository hold?
  selfhost.dr.repo_snapshots:
    repositories: [offsite]
    app: tenement
  register: history

- name: The newest snapshot
  ansible.builtin.debug:
    msg: "{{ history.repositories.offsite.latest.short_id }} of {{ history.repositories.offsite.latest.time }}"
  when: history.repositories.offsite.count > 0
"""

RETURN = r"""
repositories:
  description: Per repository name, its snapshots.
  returned: always
  type: dict
  contains:
    location: {description: The repository as it may be shown (no credentials)., type: str, sample: "s3:https://s3.example.com/backups-web1"}
    required: {description: Whether the repository is required., type: bool}
    count: {description: How many snapshots were listed., type: int, sample: 30}
    latest: {description: The newest snapshot, or an empty dict., type: dict}
    error: {description: Why an optional repository could not be read; empty when it could., type: str}
    snapshots:
      description: The snapshots, newest first.
      type: list
      elements: dict
      contains:
        id: {description: The snapshot id., type: str}
        short_id: {description: Its first 8 characters., type: str, sample: 4bba301f}
        time: {description: When the backup started (restic's time)., type: str, sample: "2026-11-28T03:00:04.123456789Z"}
        host: {description: The host it was made on., type: str, sample: web1}
        tags: {description: Its tags., type: list, elements: str, sample: [selfhost-dr, app=tenement, kind=hot, schedule=nightly]}
        paths: {description: The paths it holds., type: list, elements: str}
        app: {description: The application (tag C(app=))., type: str, sample: tenement}
        kind: {description: V(hot) or V(cold) (tag C(kind=))., type: str, sample: hot}
        schedule: {description: The schedule that made it (tag C(schedule=)); empty by hand., type: str, sample: nightly}
  sample: {offsite: {location: "s3:https://s3.example.com/backups-web1", count: 1, latest: {short_id: 4bba301f}, snapshots: [{short_id: 4bba301f}], error: ""}}
count:
  description: Snapshots listed in every repository together.
  returned: always
  type: int
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.selfhost.dr.plugins.module_utils._common import Error
from ansible_collections.selfhost.dr.plugins.module_utils.engine.journal import STATE_DIR_SPEC, state_dir
from ansible_collections.selfhost.dr.plugins.module_utils.repos import config as repo_config
from ansible_collections.selfhost.dr.plugins.module_utils.repos.restic import NoRepositoryError, RepoError, public
from ansible_collections.selfhost.dr.plugins.module_utils.repos.snapshots import catalog


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            app=dict(type="str", choices=["tenement", "tomo"]),
            host=dict(type="str"),
            **repo_config.MODULE_SPEC,
            **STATE_DIR_SPEC,
        ),
        supports_check_mode=True,
    )
    p = module.params
    found: dict[str, dict[str, object]] = {}
    try:
        for restic in repo_config.from_params(p, state_dir(p["state_dir"])):
            repo = restic.repo
            about: dict[str, object] = {"location": public(repo.location), "required": repo.required, "error": ""}
            try:
                snapshots = catalog(restic, p["app"] or "", p["host"] or "")
            except NoRepositoryError:
                if not repo.init:
                    raise
                snapshots = []  # the first backup creates it
            except RepoError as exc:
                if repo.required:
                    raise
                module.warn(f"{repo.name} (optional): {exc}")
                snapshots = []
                about["error"] = str(exc)
            about.update(snapshots=snapshots, count=len(snapshots), latest=snapshots[0] if snapshots else {})
            found[repo.name] = about
    except Error as exc:
        module.fail_json(msg=str(exc))
    module.exit_json(changed=False, repositories=found, count=sum(int(str(a["count"])) for a in found.values()))


if __name__ == "__main__":
    main()
