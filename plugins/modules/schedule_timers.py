#!/usr/bin/python
# Copyright: selfhost.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
---
module: schedule_timers
short_description: systemd timers that run selfhost-dr on a schedule
version_added: 0.2.0
description:
  - Writes, per schedule, C(selfhost-dr-NAME.service) (runs C(selfhost-dr run NAME) once, at low priority and
    sandboxed) and C(selfhost-dr-NAME.timer) (its calendar, C(Persistent=true)), enables and starts the timers, and
    writes C(schedules.toml) (mode C(0600), as it holds the heartbeat URLs) beside the host command's configuration,
    which C(selfhost-dr run NAME) reads.
  - Every schedule is checked first, every calendar by C(systemd-analyze calendar); nothing is written when one is
    wrong, also in check mode.
  - Units of schedules no longer listed are stopped, disabled and removed, but only files that carry the marker
    comment this module writes; nothing else in O(unit_dir) is touched. Files are written only when their bytes
    change, atomically, never through a link.
  - Needs systemd as the host's service manager.
author:
  - selfhost.dr developers
attributes:
  check_mode:
    support: full
    details: Writes nothing and changes no unit, and reports the same changes and next runs.
  diff_mode:
    support: full
    details: Every unit file and C(schedules.toml), with the heartbeat URLs hidden.
  idempotent:
    support: full
options:
  schedules:
    description:
      - The schedules, as the C(schedule) role's C(schedule_list) holds them (see its documentation for each key).
      - An empty list removes every schedule's units.
    type: list
    elements: dict
    default: []
    suboptions:
      name: {description: "The schedule's name (letters, digits, C(.), C(_), C(-)): unit C(selfhost-dr-NAME).", type: str, required: true}
      every: {description: "V(daily), V(weekly), V(monthly) or a systemd calendar expression.", type: str}
      at: {description: "C(HH:MM) for V(daily), V(weekly) and V(monthly).", type: str}
      weekday: {description: "For V(weekly): Mon to Sun.", type: str}
      day: {description: "For V(monthly): 1 to 28 or V(last).", type: raw}
      randomized_delay: {description: "Up to this long later than the calendar (seconds, or C(30m), C(1h)).", type: raw}
      operations: {description: "Of V(backup), V(verify), V(prune).", type: list, elements: str}
      app: {description: "V(tenement) or V(tomo); default O(default_app).", type: str}
      mode: {description: "The backup mode; default O(default_mode).", type: str}
      label: {description: "Label of the sets.", type: str}
      retention: {description: "keep_* rules of the sets this schedule made.", type: dict}
      share_within: {description: "Another schedule's set this recent is shared, not made again.", type: raw}
      timeout: {description: "A run is stopped after this long.", type: raw}
      heartbeat: {description: "A URL pinged for the whole run (a secret: never shown).", type: str}
      every_hours: {description: "Hours between runs; computed from the calendar when not given.", type: float}
      repositories:
        description:
          - The restic repositories (names of C(config.toml)'s C([repositories]), or V(all)) its backup goes into,
            instead of writing a set; its operations are then V([backup]) only.
        type: raw
  drills:
    description:
      - DR drills on a calendar, as the C(schedule) role's C(schedule_drills) holds them - for the host Ansible and
        the inventory are on (the controller, a CI runner). Each gets C(selfhost-dr-drill-NAME.service) (runs
        C(ansible-playbook -i INVENTORY PLAYBOOK -e @VARS) once, in its report directory) and its timer; its
        C(extra_vars) go into C(drills/NAME.json) (mode C(0600)) beside the host command's configuration.
      - An empty list removes every drill's units and variables.
    type: list
    elements: dict
    default: []
    suboptions:
      name: {description: The drill's name; its units are C(selfhost-dr-drill-NAME)., type: str, required: true}
      every: {description: "As in O(schedules); V(monthly) by default.", type: str}
      at: {description: "C(HH:MM), C(03:00) by default.", type: str}
      weekday: {description: With V(weekly)., type: str}
      day: {description: With V(monthly) - 1 to 28 or V(last); 1 by default., type: raw}
      randomized_delay: {description: A random delay before each run., type: raw}
      timeout: {description: "A drill still running after this is stopped; 6h by default.", type: raw}
      inventory: {description: The inventory, an absolute path., type: str, required: true}
      playbook: {description: "C(selfhost.dr.drill) (the collection's) by default, or an absolute path.", type: str}
      limit: {description: An Ansible host pattern (C(--limit))., type: str}
      extra_vars:
        description:
          - The drill role's variables (written to a C(0600) file). Keep secrets (a repository's password) in the
            inventory's vault, not here - Ansible shows a module's arguments at C(-vvv).
        type: dict
      args: {description: "More arguments, one word each (C([--vault-password-file, /root/.vault]))", type: list,
             elements: str}
      ansible_playbook: {description: "C(/usr/bin/ansible-playbook) by default.", type: str}
      report_dir: {description: "Where the report goes; C(/var/lib/selfhost-dr/drills) by default.", type: str}
  default_app:
    description: The application of a schedule that names none.
    type: str
    choices: [tenement, tomo]
    default: tenement
  default_mode:
    description: The backup mode of a schedule that names none (when the app has that mode).
    type: str
    default: hot
  default_retention:
    description: The C([retention]) rules of the configuration; a schedule that prunes needs its own or these.
    type: dict
    default: {}
  command_path:
    description: The host command.
    type: path
    default: /usr/local/bin/selfhost-dr
  config_path:
    description: Its configuration; C(schedules.toml) is written into the same directory.
    type: path
    default: /etc/selfhost-dr/config.toml
  unit_dir:
    description: Where the units go.
    type: path
    default: /etc/systemd/system
  on_failure:
    description: A unit (or several, space-separated) started when a run fails (C(OnFailure=)), for example
      C(notify-failure@%n.service).
    type: str
    default: ""
  hardening:
    description: Sandbox the runs (C(ProtectSystem=strict) and the paths a run writes, C(PrivateTmp), ...). Turn it
      off where namespacing fails (some containers).
    type: bool
    default: true
  read_write_paths:
    description: More paths the sandboxed runs may write, for example instance data that lives outside tenement's data
      dir (a hot snapshot of a WAL database writes its C(-shm)).
    type: list
    elements: path
    default: []
  backup_dir: {description: Where the sets are (writable by the runs)., type: path, default: /var/backups/selfhost-dr}
  state_dir: {description: selfhost.dr's state on the host., type: path, default: /var/lib/selfhost-dr}
  textfile_dir: {description: "node_exporter's textfile directory; empty: none.", type: str, default: /var/lib/node_exporter}
  tenement_data_dir: {description: tenement's data dir., type: path, default: /var/lib/tenement}
  tenement_config_dir: {description: The directory of tenement.toml., type: path, default: /etc/tenement}
  tenement_service_manager:
    description: How ten serve is kept running; with V(process) the units are not sandboxed (a cold backup starts
      ten serve again from the run, which it would inherit) and use C(KillMode=process).
    type: str
    choices: [auto, systemd, process]
    default: auto
  tomo_database: {description: "Tomo's database; empty: C(/var/lib/tomo/tomo.db).", type: str, default: ""}
  tenement_unit:
    description: tenement's systemd unit; a tenement schedule's run starts after it (a run made up at boot finds
      tenement up).
    type: str
    default: tenement.service
  tomo_service: {description: "Tomo's unit; a Tomo schedule's run starts after it.", type: str, default: tomo.service}
  tomo_service_manager:
    description: How Tomo is kept running; with V(process) a Tomo schedule's units are not sandboxed (a cold backup
      starts Tomo again from the run, which it would inherit) and use C(KillMode=process).
    type: str
    choices: [auto, systemd, process]
    default: systemd
seealso:
  - module: selfhost.dr.host_command
  - module: selfhost.dr.dr_status
"""

EXAMPLES = r"""
- name: Back up every night, keep a week, and verify on Sundays
  selfhost.dr.schedule_timers:
    schedules:
      - {name: nightly, every: daily, at: "03:00", retention: {keep_daily: 7, keep_weekly: 4}}
      - {name: verify, every: weekly, weekday: Sun, at: "05:00", operations: [verify]}
      - {name: offsite, every: daily, at: "04:00", repositories: [offsite]}
"""

RETURN = r"""
next_runs:
  description: Per schedule (a drill's as C(drill-NAME)), its next three runs (UTC, ISO 8601) as systemd computes them.
  returned: always
  type: dict
  sample: {nightly: ["2026-11-29T03:00:00Z", "2026-11-30T03:00:00Z", "2026-12-01T03:00:00Z"]}
schedules:
  description: The schedules as written (C(heartbeat) only says whether there is one).
  returned: always
  type: list
  elements: dict
drills:
  description: The drill schedules as written - C(name), C(calendar), C(timer), C(report_dir).
  returned: always
  type: list
  elements: dict
written:
  description: The files written (or that would be).
  returned: always
  type: list
  elements: str
removed:
  description: The unit files of schedules no longer listed, removed (or that would be).
  returned: always
  type: list
  elements: str
enabled:
  description: The timers enabled and started (or that would be).
  returned: always
  type: list
  elements: str
directories:
  description: The backup and state directories created (the sandbox makes only existing ones writable).
  returned: always
  type: list
  elements: str
schedules_file:
  description: The C(schedules.toml) that C(selfhost-dr run) reads.
  returned: always
  type: str
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.selfhost.dr.plugins.module_utils._common import Error
from ansible_collections.selfhost.dr.plugins.module_utils.apps.registry import MODES
from ansible_collections.selfhost.dr.plugins.module_utils.apps.service import systemd_runs
from ansible_collections.selfhost.dr.plugins.module_utils.engine import timers
from ansible_collections.selfhost.dr.plugins.module_utils.engine.schedule import (
    parse_all,
    parse_drills,
    prunable,
    table,
)

_RAW = ("day", "randomized_delay", "share_within", "timeout")
_STR = ("every", "at", "weekday", "app", "mode", "label")


DRILL = dict(
    name=dict(type="str", required=True),
    every=dict(type="str"),
    at=dict(type="str"),
    weekday=dict(type="str"),
    day=dict(type="raw"),
    randomized_delay=dict(type="raw"),
    timeout=dict(type="raw"),
    inventory=dict(type="str", required=True),
    playbook=dict(type="str"),
    limit=dict(type="str"),
    extra_vars=dict(type="dict"),
    args=dict(type="list", elements="str"),
    ansible_playbook=dict(type="str"),
    report_dir=dict(type="str"),
)


def main() -> None:
    entry = {key: dict(type="raw") for key in _RAW}
    entry.update({key: dict(type="str") for key in _STR})
    entry.update(
        name=dict(type="str", required=True),
        operations=dict(type="list", elements="str"),
        retention=dict(type="dict"),
        heartbeat=dict(type="str", no_log=True),
        every_hours=dict(type="float"),
        repositories=dict(type="raw"),
    )
    module = AnsibleModule(
        argument_spec=dict(
            schedules=dict(type="list", elements="dict", default=[], options=entry),
            drills=dict(type="list", elements="dict", default=[], options=DRILL),
            default_app=dict(type="str", default="tenement", choices=list(MODES)),
            default_mode=dict(type="str", default="hot"),
            default_retention=dict(type="dict", default={}),
            command_path=dict(type="path", default="/usr/local/bin/selfhost-dr"),
            config_path=dict(type="path", default=timers.DEFAULT_CONFIG),
            unit_dir=dict(type="path", default=timers.DEFAULT_UNIT_DIR),
            on_failure=dict(type="str", default=""),
            hardening=dict(type="bool", default=True),
            read_write_paths=dict(type="list", elements="path", default=[]),
            backup_dir=dict(type="path", default="/var/backups/selfhost-dr"),
            state_dir=dict(type="path", default="/var/lib/selfhost-dr"),
            textfile_dir=dict(type="str", default="/var/lib/node_exporter"),
            tenement_data_dir=dict(type="path", default="/var/lib/tenement"),
            tenement_config_dir=dict(type="path", default="/etc/tenement"),
            tenement_service_manager=dict(type="str", default="auto", choices=["auto", "systemd", "process"]),
            tomo_database=dict(type="str", default=""),
            tenement_unit=dict(type="str", default="tenement.service"),
            tomo_service=dict(type="str", default="tomo.service"),
            tomo_service_manager=dict(type="str", default="systemd", choices=["auto", "systemd", "process"]),
        ),
        supports_check_mode=True,
    )
    p = module.params
    entries = [{k: v for k, v in e.items() if v is not None} for e in p["schedules"]]
    settings = timers.UnitSettings(
        command=p["command_path"],
        config_path=p["config_path"],
        backup_dir=p["backup_dir"],
        state_dir=p["state_dir"],
        textfile_dir=p["textfile_dir"],
        tenement_data_dir=p["tenement_data_dir"],
        tenement_config_dir=p["tenement_config_dir"],
        tenement_service_manager=p["tenement_service_manager"],
        tomo_database=p["tomo_database"],
        tenement_unit=p["tenement_unit"],
        tomo_service=p["tomo_service"],
        tomo_service_manager=p["tomo_service_manager"],
        on_failure=p["on_failure"],
        hardening=p["hardening"],
        read_write_paths=tuple(p["read_write_paths"]),
    )
    try:
        schedules = parse_all(entries, MODES, p["default_app"], p["default_mode"])
        prunable(schedules, p["default_retention"])
        drills = parse_drills([{k: v for k, v in d.items() if v is not None} for d in p["drills"]], schedules)
        runs = timers.schedule_runs([*schedules, *drills])  # every calendar, before anything is written
        if not systemd_runs():
            raise timers.TimerError(
                "systemd is not this host's service manager (no /run/systemd/system): timers need it"
            )
        result = timers.converge(schedules, settings, p["unit_dir"], check=module.check_mode, runs=runs, drills=drills)
    except Error as exc:
        module.fail_json(msg=str(exc))
    except OSError as exc:
        module.fail_json(msg=f"cannot write the timers: {exc.filename + ': ' if exc.filename else ''}{exc.strerror}")
    written = timers.with_every_hours(schedules, runs)
    extra = {"diff": result.diff} if module._diff else {}
    module.exit_json(
        changed=result.changed,
        next_runs=result.next_runs,
        schedules=[
            {**table(s), "name": s.name, "heartbeat": bool(s.heartbeat), "timer": f"{s.unit}.timer"} for s in written
        ],
        drills=[
            {"name": d.name, "calendar": d.calendar, "timer": f"{d.unit}.timer", "report_dir": d.report_dir}
            for d in drills
        ],
        written=result.written,
        removed=result.removed,
        enabled=result.enabled,
        directories=result.directories,
        schedules_file=result.schedules_file,
        **extra,
    )


if __name__ == "__main__":
    main()
