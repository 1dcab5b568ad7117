#!/usr/bin/python
# Copyright: selfhost.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
---
module: replicate_config
short_description: Write Litestream's configuration and credentials for an application's databases
description:
  - Builds the configuration of Litestream 0.5 (C(litestream replicate -config FILE -no-expand-env)) for every SQLite
    database of tenement (its data dir, watched, so instances spawned later are replicated too) or for Tomo's
    C(tomo.db), replicating to one S3-compatible store (docs/replicate.md).
  - Refuses in one sentence, before anything is written (check mode too), what Litestream would refuse or what would
    not do what was asked, among them plaintext uploads when O(encrypt) is set (Litestream 0.5 cannot encrypt; the
    store's server-side encryption is offered instead), a metrics address that is not loopback (it also serves Go's
    pprof), and Tomo unless O(accept_wal) (Litestream switches C(tomo.db) to WAL mode).
  - Writes the configuration and the credentials' environment file with mode 0600, replaced by a rename (never
    written through a link), and makes Litestream's state directory (O(meta_dir), outside the data) mode 0700.
author: selfhost.dr developers
version_added: "0.5.0"
attributes:
  check_mode:
    support: full
    details: Builds and checks the configuration and says what would be written, refusing what the run would refuse.
  diff_mode:
    support: none
  idempotent:
    support: full
    details: The same settings write nothing the second time.
options:
  app:
    description: The application.
    type: str
    choices: [tenement, tomo]
    default: tenement
  data_dir:
    description: tenement's data dir (every database below it is replicated).
    type: path
    default: /var/lib/tenement
  database:
    description: Tomo's database.
    type: path
    default: /var/lib/tomo/tomo.db
  host:
    description: This host's name in the replicas' paths (C(PATH/HOST/APP/...)).
    type: str
    required: true
  destination:
    description:
      - The store - C(bucket), C(path) (a prefix), C(endpoint) (empty - AWS), C(region), C(skip_verify),
        C(encryption) (C(none), or C(sse-kms) with C(sse_kms_key_id); SSE-C is refused, the collection reads the replicas itself).
    type: dict
    required: true
  settings:
    description:
      - Litestream's timing - C(sync_interval), C(monitor_interval), C(levels) (a list of intervals),
        C(snapshot_interval), C(snapshot_retention), C(l0_retention) (how long restores to a moment stay exact to the
        second; docs/litestream.md).
    type: dict
    default: {}
  metrics_addr:
    description: Litestream's metrics address (loopback only).
    type: str
    default: 127.0.0.1:9091
  heartbeat_url:
    description: A URL Litestream gets once every database was synced within O(heartbeat_interval) (never logged).
    type: str
    default: ""
  heartbeat_interval:
    description: How often Litestream pings O(heartbeat_url) (a minute at least).
    type: str
    default: 5m
  encrypt:
    description: Refuse anything that would leave the host unencrypted.
    type: bool
    default: false
  accept_wal:
    description: Let Litestream switch Tomo's database to WAL mode.
    type: bool
    default: false
  meta_dir:
    description: Litestream's state (copies of pages), outside the data; made mode 0700.
    type: path
    default: /var/lib/selfhost-dr/litestream
  config_path:
    description: Where the configuration goes.
    type: path
    default: /etc/selfhost-dr/litestream.yml
  env_file:
    description: Where the credentials go (the service's C(EnvironmentFile)).
    type: path
    default: /etc/selfhost-dr/litestream.env
  credentials:
    description: The store's C(AWS_ACCESS_KEY_ID) and C(AWS_SECRET_ACCESS_KEY) (never logged, never in the configuration).
    type: dict
    default: {}
  check_store:
    description:
      - List the replicas' prefix with the credentials first (check mode too), so that a wrong endpoint, bucket or
        secret is said in one sentence before Litestream runs (it would only log it, again and again).
    type: bool
    default: true
  create_bucket:
    description: Create the bucket when it does not exist (check mode says it would).
    type: bool
    default: false
  adopt:
    description:
      - Let Litestream continue replicas already at this host's prefix although this host has no replication state
        of its own (a rebuilt host whose databases were restored from them first). Without it such a host is refused -
        Litestream would continue the old history with the new host's databases, and a restore to the newest state
        would then bring back those.
    type: bool
    default: false
"""

EXAMPLES = r"""
- name: Replicate tenement's databases to an S3 bucket, encrypted by the store
  selfhost.dr.replicate_config:
    host: web1
    destination: {bucket: dr-replicas, endpoint: "https://s3.example.net", encryption: sse-kms, sse_kms_key_id: alias/dr}
    encrypt: true
    credentials: {AWS_ACCESS_KEY_ID: "{{ vault_key_id }}", AWS_SECRET_ACCESS_KEY: "{{ vault_secret }}"}
"""

RETURN = r"""
bucket_created:
  description: Whether the bucket was made (O(create_bucket)).
  returned: always
  type: bool
config_changed:
  description: Whether the configuration was (or would be) written.
  returned: always
  type: bool
env_changed:
  description: Whether the credentials' file was (or would be) written.
  returned: always
  type: bool
prefix:
  description: Where the application's replicas are in the bucket.
  returned: always
  type: str
config:
  description: The configuration (it holds no secret but the heartbeat URL, which is masked).
  returned: always
  type: dict
"""

import os
import stat

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.selfhost.dr.plugins.module_utils import safe_fs
from ansible_collections.selfhost.dr.plugins.module_utils._common import Error
from ansible_collections.selfhost.dr.plugins.module_utils.host_install import write_if_changed
from ansible_collections.selfhost.dr.plugins.module_utils.replicas import config as replica_config
from ansible_collections.selfhost.dr.plugins.module_utils.replicas import s3
from ansible_collections.selfhost.dr.plugins.module_utils.replicas.litestream import Replication

_DEST = {f for f in replica_config.Destination.__dataclass_fields__}
_SETTINGS = {"sync_interval", "monitor_interval", "levels", "snapshot_interval", "snapshot_retention", "l0_retention"}
_CREDENTIALS = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}  # (no session token: the collection signs without one)


def _env_file(credentials: dict) -> bytes:
    unknown = sorted(set(credentials) - _CREDENTIALS)
    if unknown:
        raise Error(f"credentials may hold {', '.join(sorted(_CREDENTIALS))}, not {unknown[0]}")
    lines = []
    for key in sorted(credentials):
        value = str(credentials[key])
        if "\n" in value or "'" in value:
            raise Error(f"{key} holds a newline or a quote, which an environment file cannot carry")
        lines.append(f"{key}='{value}'")
    return ("# Written by selfhost.dr (role replicate): the store's credentials for Litestream.\n"
            + "\n".join(lines) + "\n").encode()  # fmt: skip


def _meta_dir(path: str, check: bool) -> bool:
    """Make Litestream's state directory, mode 0700, never through a link; whether it changed."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        if not check:
            safe_fs.makedirs_private(path)
        return True
    if not stat.S_ISDIR(st.st_mode):
        raise Error(f"{path} (meta_dir) is not a directory")
    if stat.S_IMODE(st.st_mode) == 0o700:
        return False
    if not check:
        fd = safe_fs.open_dir(path)
        try:
            os.fchmod(fd, 0o700)
        finally:
            os.close(fd)
    return True


def _reach(dest: replica_config.Destination, credentials: dict, prefix: str, create: bool, check: bool,
           fresh: bool, adopt: bool) -> bool:  # fmt: skip
    """List the prefix with the credentials (the store answers, the bucket is there, the key may list it); make the
    bucket first when ``create`` (in check mode: say it would be). Refuse a host with no replication state of its own
    (``fresh``) whose prefix already holds replicas, unless ``adopt``: Litestream would continue their history with
    this host's databases (a rebuilt host's empty ones), and the newest state would be lost. Whether a bucket was
    (or would be) made."""
    store = Replication(dest, "", {k: str(v) for k, v in credentials.items()}).store()
    try:
        found = next(iter(store.list(prefix + "/")), None)
    except s3.S3Error as exc:
        if not (create and exc.status == 404):
            raise Error(f"the store cannot be used for the replicas: {exc}") from None
        if not check:
            store.create_bucket()
        return True
    if found is not None and fresh and not adopt:
        raise Error(
            f"{dest.bucket}/{prefix} already holds replicas, and this host has no replication state of its own: "
            "Litestream would continue them with this host's databases (a rebuilt host's empty ones); restore them "
            "first (selfhost-dr restore --at latest, with replicate_run false), then set replicate_adopt to true"
        )
    return False


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            app=dict(type="str", default="tenement", choices=["tenement", "tomo"]),
            data_dir=dict(type="path", default="/var/lib/tenement"),
            database=dict(type="path", default="/var/lib/tomo/tomo.db"),
            host=dict(type="str", required=True),
            destination=dict(type="dict", required=True),
            settings=dict(type="dict", default={}),
            metrics_addr=dict(type="str", default="127.0.0.1:9091"),
            heartbeat_url=dict(type="str", default="", no_log=True),
            heartbeat_interval=dict(type="str", default="5m"),
            encrypt=dict(type="bool", default=False),
            accept_wal=dict(type="bool", default=False),
            meta_dir=dict(type="path", default="/var/lib/selfhost-dr/litestream"),
            config_path=dict(type="path", default="/etc/selfhost-dr/litestream.yml"),
            env_file=dict(type="path", default="/etc/selfhost-dr/litestream.env"),
            credentials=dict(type="dict", default={}, no_log=True),
            check_store=dict(type="bool", default=True),
            create_bucket=dict(type="bool", default=False),
            adopt=dict(type="bool", default=False),
        ),
        supports_check_mode=True,
    )
    p = module.params
    try:
        unknown = sorted(set(p["destination"]) - _DEST) or sorted(set(p["settings"]) - _SETTINGS)
        if unknown:
            raise Error(f"{unknown[0]!r} is neither a destination's setting nor a timing of Litestream's")
        dest = replica_config.Destination(**p["destination"])
        timing = {k: ([str(i) for i in v] if k == "levels" else str(v)) for k, v in p["settings"].items()}
        settings = replica_config.Settings(
            **timing, addr=p["metrics_addr"], heartbeat_url=p["heartbeat_url"],
            heartbeat_interval=p["heartbeat_interval"], meta_dir=p["meta_dir"], encrypt=p["encrypt"],
            accept_wal=p["accept_wal"],
        )  # fmt: skip
        if p["app"] == "tenement":
            built = replica_config.tenement(p["data_dir"], dest, settings, p["host"])
        else:
            built = replica_config.tomo(p["database"], dest, settings, p["host"])
        text = replica_config.render(built).encode()
        env = _env_file(p["credentials"])
        prefix = "/".join(s for s in (dest.path.strip("/"), p["host"], p["app"]) if s)
        bucket_created = False
        if p["check_store"] or p["create_bucket"]:
            state = os.path.join(p["meta_dir"], p["app"])
            fresh = not (os.path.isdir(state) and os.listdir(state))
            bucket_created = _reach(dest, p["credentials"], prefix, p["create_bucket"], module.check_mode, fresh,
                                    p["adopt"])  # fmt: skip
        meta_changed = _meta_dir(p["meta_dir"], module.check_mode)
        env_changed = write_if_changed(p["env_file"], env, 0o600, module.check_mode)
        config_changed = write_if_changed(p["config_path"], text, 0o600, module.check_mode)
    except (Error, TypeError, OSError) as exc:
        said = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        module.fail_json(msg=f"cannot configure Litestream: {said}")
    shown = dict(built)
    if shown.get("heartbeat-url"):
        shown["heartbeat-url"] = "********"
    module.exit_json(
        changed=config_changed or env_changed or meta_changed or bucket_created,
        config_changed=config_changed,
        env_changed=env_changed,
        bucket_created=bucket_created,
        prefix=prefix,
        config=shown,
    )


if __name__ == "__main__":
    main()
