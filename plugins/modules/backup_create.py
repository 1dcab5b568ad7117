#!/usr/bin/python
# Copyright: selfhost.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
---
module: backup_create
short_description: Write one backup set (tar + zstd archive, manifest, checksum) of files and live SQLite databases
version_added: 0.1.0
description:
  - Archives O(paths) into one file in O(dest), named C({app}-{host}-{UTC timestamp}-{label}.tar.zst), so that the sets
    of one application and host sort by time.
  - Every SQLite database found under O(paths), recognised by its header rather than its name, is archived as a
    consistent online snapshot (the SQLite backup API in one step) instead of the live file; its C(-wal), C(-shm) and
    C(-journal) files are left out.
  - The archive is a plain pax tar stream compressed by C(zstd) (C(gzip) where zstd is missing), so
    C(zstd -d < SET.tar.zst | tar -x) restores it by hand. Members are the paths without their leading C(/).
  - The manifest (format version, application and version, host, times, every file with size, mode and sha256, the
    snapshots, O(metadata)) is the last member of the archive and is also written beside it as
    C(SET.tar.zst.manifest.json). C(SET.tar.zst.sha256) holds the checksum of the whole file in C(sha256sum -c) format.
  - Everything is written under hidden temporary names, fsynced, and renamed into place with mode C(0600), the archive
    last. A failure (a missing path, an unreadable directory, a full disk, a database locked too long) leaves no partial
    file and no file that looks like a backup, and earlier sets are never touched.
  - Each stage is logged on the managed host (syslog or the journal); the result reports files, bytes and seconds.
author:
  - selfhost.dr developers
attributes:
  check_mode:
    support: full
    description: Checks the paths, the backup directory and the compressor, and reports what would be archived.
  diff_mode:
    support: none
  idempotent:
    support: none
    description: Every run writes a new set.
options:
  paths:
    description:
      - Absolute paths of the files and directories to archive. Directories are archived whole, recursively.
      - Symbolic links are archived as links, not followed. Sockets, fifos and devices are left out and reported in RV(left_out).
      - Required unless O(instance) is set.
    type: list
    elements: path
  instance:
    description:
      - Per-instance mode. Archives the data dir of this tenement instance (C(service:id)) by the per-instance
        procedure, which stops the instance, copies its data dir (C(cp -a)), spawns it again and waits for its health
        check, and only then compresses the copy. The instance is spawned again whatever happens to the copy;
        RV(downtime) is measured.
      - An instance whose service does not persist its storage (O(storage_persist=false)) is never stopped, because
        tenement deletes its data on C(ten stop); it is archived hot instead and RV(hot_reason) says why.
      - Deprecated (removed in 1.0.0), with O(storage_persist), O(tenement_server), O(tenement_data_dir),
        O(tenement_ten_bin) and O(health_timeout); use M(selfhost.dr.app_backup) with C(mode=instances),
        which reads the service's C(storage_persist) from C(tenement.toml) itself.
    type: str
  storage_persist:
    description: Whether the instance's service sets C(storage_persist = true) (see M(selfhost.dr.tenement_info)).
    type: bool
    default: false
  tenement_server:
    description: URL of the tenement server, for O(instance).
    type: str
    default: http://127.0.0.1:8080
  tenement_data_dir:
    description: tenement's data dir, for O(instance); the API token is read from it.
    type: path
    default: /var/lib/tenement
  tenement_ten_bin:
    description: The C(ten) command, for O(instance).
    type: path
    default: /usr/local/bin/ten
  health_timeout:
    description: Seconds to wait for the instance's health check after it is spawned again.
    type: float
    default: 60
  dest:
    description: Directory the set is written to. Created, with its missing parents, with mode C(0700) whatever the
      umask when it does not exist.
    type: path
    required: true
  app:
    description: The application the set belongs to; the first part of the name and recorded in the manifest.
    type: str
    default: files
  app_version:
    description: The application's version, recorded in the manifest.
    type: str
    default: ""
  host:
    description: The host name used in the set's name and manifest. Defaults to the managed host's short name.
    type: str
  label:
    description:
      - The last part of the set's name, for example the backup mode (V(hot), V(cold)).
      - With O(instance) and the default, C(instance-SERVICE-ID).
    type: str
    default: manual
  metadata:
    description: Free-form data recorded in the manifest, such as the instances that were running.
    type: dict
    default: {}
  exclude:
    description:
      - Shell patterns (C(fnmatch)) of paths to leave out. A pattern matches the absolute path or the base name;
        C(*) also matches C(/). An excluded directory is left out with everything under it.
    type: list
    elements: str
    default: []
  compression:
    description: V(auto) uses zstd when its command is installed and gzip otherwise.
    type: str
    choices: [auto, zstd, gzip]
    default: auto
  compression_level:
    description: The compressor's level (zstd 1-19, gzip 1-9).
    type: int
    default: 3
  threads:
    description: zstd worker threads; V(0) means one per core.
    type: int
    default: 0
  lock_timeout:
    description:
      - Seconds a writer holding an exclusive lock on a database may keep its snapshot waiting before the backup fails.
    type: float
    default: 30
  integrity_check:
    description:
      - Run C(PRAGMA integrity_check) on every snapshot while the set is written.
      - Off by default because M(selfhost.dr.backup_verify) checks every database of the set, and the C(backup) role
        runs it right after this module.
    type: bool
    default: false
  memory_limit:
    description:
      - Databases up to this many bytes are snapshotted in memory (those waiting to be written and the one being made
        count together); larger ones go through a temporary file in O(dest).
    type: int
    default: 8388608
notes:
  - The set's file names never hold secrets, but its content does (for tenement, the API token); keep O(dest) private.
extends_documentation_fragment:
  - selfhost.dr.state_dir
  - selfhost.dr.databases
seealso:
  - module: selfhost.dr.backup_verify
  - module: selfhost.dr.backup_info
  - module: selfhost.dr.backup_prune
  - module: selfhost.dr.sqlite_snapshot
"""

EXAMPLES = r"""
- name: Hot backup of tenement's config and data dir
  selfhost.dr.backup_create:
    paths:
      - /etc/tenement
      - /var/lib/tenement
    dest: /var/backups/selfhost-dr
    app: tenement
    app_version: 0.2.2
    label: hot
    exclude:
      - "*.sock"
      - /var/lib/tenement/logs
    metadata:
      running: [demo:alpha, demo:beta]
  register: backup

- name: Say where it went
  ansible.builtin.debug:
    msg: "{{ backup.path }} ({{ backup.size | human_readable }}, {{ backup.files }} files)"

- name: Where zstd is not installed, or for a smaller file at the cost of time
  selfhost.dr.backup_create:
    paths: [/srv/app]
    dest: /var/backups/app
    compression: gzip
    compression_level: 9
"""

RETURN = r"""
path:
  description: The archive. In check mode, the name it would have.
  returned: always
  type: str
  sample: /var/backups/selfhost-dr/tenement-web1-20261122T035100Z-hot.tar.zst
name:
  description: The archive's file name.
  returned: always
  type: str
  sample: tenement-web1-20261122T035100Z-hot.tar.zst
sha256:
  description: Checksum of the whole archive, also in C(PATH.sha256).
  returned: success, not in check mode
  type: str
  sample: 67324f01e9a1f4df3197bf2f61b3d88a44e3f12085d9a321dffce997a068c207
size:
  description: Bytes of the archive.
  returned: success, not in check mode
  type: int
  sample: 600238142
manifest_path:
  description: The sidecar copy of the manifest.
  returned: success, not in check mode
  type: str
  sample: /var/backups/selfhost-dr/tenement-web1-20261122T035100Z-hot.tar.zst.manifest.json
files:
  description: Regular files archived (databases included).
  returned: always
  type: int
  sample: 1004
databases:
  description: SQLite databases archived as snapshots.
  returned: always
  type: int
  sample: 201
bytes_in:
  description: Bytes of file content archived, before compression.
  returned: always
  type: int
  sample: 1079981582
snapshots:
  description: One entry per database snapshot.
  returned: success, not in check mode
  type: list
  elements: dict
  sample:
    - {path: var/lib/tenement/tenement.db, size: 220319744, pages: 53789, journal_mode: wal, duration: 0.49}
left_out:
  description: Paths left out, each with the reason (excluded, socket, SQLite -wal file, ...).
  returned: always
  type: list
  elements: dict
  sample: [{path: /var/lib/tenement/tenement.db-wal, reason: SQLite -wal file (the snapshot holds its data)}]
changed_during_backup:
  description:
    - Files whose size changed while they were read (their archived copy may be torn), and paths replaced between the
      scan and the read. A path replaced by a link, a directory or a special file is left out (see RV(left_out)) and
      never followed; a file replaced by another regular file (a rename) is archived as it was when opened.
  returned: success, not in check mode
  type: list
  elements: str
  sample: []
notes:
  description: Files archived differently than their kind suggests, each with the reason (a file that starts like a
    SQLite database but that SQLite cannot read is archived as a plain file).
  returned: success, not in check mode
  type: list
  elements: dict
  sample: [{path: /var/lib/app/cache.db, reason: "starts like a SQLite database but is not one (...); archived as a plain file"}]
links:
  description: Paths given in O(paths) that were symbolic links; what they lead to was archived under the path's name,
    and the set records the link so a restore follows it again only to the same place.
  returned: success, not in check mode
  type: list
  elements: dict
  sample: [{path: /var/lib/app, target: /data/app}]
downtime:
  description: With O(instance), seconds from the stop request until the instance answered its health check again.
  returned: success, with O(instance)
  type: float
  sample: 0.9
copy_seconds:
  description: With O(instance), the part of RV(downtime) spent copying the data dir.
  returned: success, with O(instance)
  type: float
  sample: 0.05
hot_reason:
  description: With O(instance), why the instance was archived without stopping it, or empty.
  returned: success, with O(instance)
  type: str
  sample: ""
stats:
  description: Bytes and seconds, for measuring.
  returned: success, not in check mode
  type: dict
  sample: {bytes_in: 1079981582, bytes_out: 600238142, seconds: 5.6, seconds_snapshots: 2.7, seconds_finish: 0.3}
"""

import os

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.selfhost.dr.plugins.module_utils import safe_fs
from ansible_collections.selfhost.dr.plugins.module_utils._common import BackupError, utc_now
from ansible_collections.selfhost.dr.plugins.module_utils.apps.tenement_client import (
    TenementClient,
    TenementError,
    parse_instance,
    read_token,
)
from ansible_collections.selfhost.dr.plugins.module_utils.apps.tenement_instance import backup_instance
from ansible_collections.selfhost.dr.plugins.module_utils.engine.backup import described
from ansible_collections.selfhost.dr.plugins.module_utils.engine.journal import STATE_DIR_SPEC
from ansible_collections.selfhost.dr.plugins.module_utils.engine.swap import recover_interrupted
from ansible_collections.selfhost.dr.plugins.module_utils.sets.codec import compressor_for
from ansible_collections.selfhost.dr.plugins.module_utils.sets.create import create
from ansible_collections.selfhost.dr.plugins.module_utils.sets.members import DEFAULT_MEMORY_LIMIT
from ansible_collections.selfhost.dr.plugins.module_utils.sets.names import default_host, set_name
from ansible_collections.selfhost.dr.plugins.module_utils.sets.scan import scan


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            paths=dict(type="list", elements="path"),
            instance=dict(type="str"),
            storage_persist=dict(type="bool", default=False),
            tenement_server=dict(type="str", default="http://127.0.0.1:8080"),
            tenement_data_dir=dict(type="path", default="/var/lib/tenement"),
            tenement_ten_bin=dict(type="path", default="/usr/local/bin/ten"),
            health_timeout=dict(type="float", default=60.0),
            dest=dict(type="path", required=True),
            app=dict(type="str", default="files"),
            app_version=dict(type="str", default=""),
            host=dict(type="str"),
            label=dict(type="str", default="manual"),
            metadata=dict(type="dict", default={}),
            exclude=dict(type="list", elements="str", default=[]),
            compression=dict(type="str", default="auto", choices=["auto", "zstd", "gzip"]),
            compression_level=dict(type="int", default=3),
            threads=dict(type="int", default=0),
            lock_timeout=dict(type="float", default=30.0),
            row_counts_max_size=dict(type="int", default=0),
            integrity_check=dict(type="bool", default=False),
            memory_limit=dict(type="int", default=DEFAULT_MEMORY_LIMIT),
            **STATE_DIR_SPEC,
        ),
        required_one_of=[("paths", "instance")],
        mutually_exclusive=[("paths", "instance")],
        supports_check_mode=True,
    )
    p = module.params
    extra: dict[str, object] = {}
    if p["instance"]:
        module.deprecate(
            "backup_create's instance option (and storage_persist, tenement_*, health_timeout) is replaced by "
            "selfhost.dr.app_backup with mode=instances",
            version="1.0.0",
            collection_name="selfhost.dr",
        )
    try:
        if p["instance"]:
            service, ident = parse_instance(p["instance"])
            p["paths"] = [os.path.join(p["tenement_data_dir"], service, ident)]
            if p["label"] == "manual":
                p["label"] = f"instance-{service}-{ident}"
        if module.check_mode:
            found = scan(p["paths"], p["exclude"])
            kind = compressor_for(p["compression"])
            name = set_name(p["app"], p["host"] or default_host(), utc_now(), p["label"], kind)
            module.exit_json(
                changed=True,
                path=os.path.join(p["dest"], name),
                name=name,
                files=found.count("file") + found.count("sqlite"),
                databases=found.count("sqlite"),
                bytes_in=found.bytes,
                left_out=found.skipped,
            )
        if not os.path.exists(p["dest"]):
            try:
                safe_fs.makedirs_private(p["dest"])
            except OSError as exc:
                module.fail_json(msg=f"could not create backup directory {p['dest']}: {exc.strerror}")
        recover_interrupted(p["state_dir"], module.log)
        args: dict[str, object] = dict(
            app=p["app"],
            app_version=p["app_version"],
            host=p["host"],
            label=p["label"],
            metadata=p["metadata"],
            excludes=p["exclude"],
            compression=p["compression"],
            level=p["compression_level"],
            threads=p["threads"],
            lock_timeout=p["lock_timeout"],
            row_counts_max_size=p["row_counts_max_size"],
            integrity_check=p["integrity_check"],
            memory_limit=p["memory_limit"],
        )
        if p["instance"]:
            client = TenementClient(
                p["tenement_ten_bin"],
                server=p["tenement_server"],
                token=read_token(p["tenement_data_dir"]),
                data_dir=p["tenement_data_dir"],
            )
            done = backup_instance(
                client,
                p["instance"],
                p["tenement_data_dir"],
                p["dest"],
                storage_persist=p["storage_persist"],
                health_timeout=p["health_timeout"],
                log=module.log,
                **args,
            )
            made = done.created
            extra = dict(downtime=done.downtime, copy_seconds=done.copy_seconds, hot_reason=done.hot_reason)
        else:
            made = create(p["paths"], p["dest"], log=module.log, **args)  # type: ignore[arg-type]
    except (BackupError, TenementError) as exc:
        module.fail_json(msg=str(exc))
    except OSError as exc:
        module.fail_json(msg=f"the backup failed: {exc.filename + ': ' if exc.filename else ''}{exc.strerror or exc}")
    module.exit_json(changed=True, **described(made, **extra))


if __name__ == "__main__":
    main()
