# Copyright: selfhost.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Litestream's configuration for an application's databases (issue 17): what the ``replicate`` role writes to
``/etc/litestream.yml`` and the host command checks, built from the application's own paths and one S3-compatible
destination. Written as JSON, which Litestream's YAML reader takes as it is (no YAML writer needed).

- tenement: one ``dir`` entry over its data dir, every file with SQLite's header below it whose name does not
  begin with a dot (``pattern: "[^.]*"``: a restore's staged files and safety copies are hidden ones),
  ``recursive``, watched, so ``tenement.db`` and every instance's databases are replicated, those of instances
  spawned later too. Each database's replica path is the destination's path, the application and the database's
  path below the data dir.
- Tomo: one ``path`` entry for ``tomo.db``. Litestream switches a database to WAL mode and adds two tables of its
  own (docs/litestream.md); Tomo's database uses a rollback journal, so this is refused unless the operator accepts
  it (``accept_wal``).

Litestream keeps its per-database state (``-litestream`` directories) in ``meta_dir``, never beside the databases,
where a backup set would archive it. Credentials are never written here: the service reads them from an environment
file (``LITESTREAM_ACCESS_KEY_ID``, ``LITESTREAM_SECRET_ACCESS_KEY``), and runs ``litestream replicate -config FILE
-no-expand-env`` so that no ``$`` in a path is taken for a variable. Litestream 0.5 cannot encrypt what it uploads:
asked for encryption, the configuration must use the store's server-side encryption, or it is refused."""

from __future__ import annotations

import ipaddress
import json
import posixpath
import re
from dataclasses import dataclass, field

from .._common import Error

_DURATION = re.compile(r"^(?:[0-9]+(?:\.[0-9]+)?(?:ns|us|µs|ms|s|m|h))+$")
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_SEGMENT = re.compile(r"^[A-Za-z0-9._-]+$")
ENCRYPTIONS = ("none", "sse-kms", "sse-c")


class ReplicaConfigError(Error):
    """A replication setting Litestream would refuse, or that would not do what was asked."""


@dataclass
class Destination:
    """An S3-compatible store: ``endpoint`` (empty: AWS), ``bucket``, and ``path``, the prefix below it."""

    bucket: str
    path: str = ""
    endpoint: str = ""
    region: str = ""
    skip_verify: bool = False
    encryption: str = "none"  # none, sse-kms (key id) or sse-c (a key file on the host)
    sse_kms_key_id: str = ""
    sse_customer_key_path: str = ""


@dataclass
class Settings:
    """How often Litestream syncs, compacts, snapshots and forgets, and where it answers (Litestream's defaults but
    ``snapshot_retention``, which keeps three days)."""

    sync_interval: str = "1s"
    monitor_interval: str = "1s"
    levels: list[str] = field(default_factory=lambda: ["30s", "5m", "1h"])
    snapshot_interval: str = "24h"
    snapshot_retention: str = "72h"
    l0_retention: str = "5m"
    addr: str = "127.0.0.1:9091"  # metrics (and Go's pprof): loopback unless allowed
    heartbeat_url: str = ""
    heartbeat_interval: str = "5m"
    meta_dir: str = "/var/lib/selfhost-dr/litestream"
    encrypt: bool = False  # the operator asked that nothing leaves the host unencrypted
    accept_wal: bool = False  # Tomo: let Litestream switch tomo.db to WAL mode


def _duration(name: str, value: str) -> str:
    if not _DURATION.match(value):
        raise ReplicaConfigError(f"{name} must be a duration such as 1s, 5m or 24h, not {value!r:.40}")
    return value


def _seconds(value: str) -> float:
    units = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600}
    return sum(float(n) * units[u] for n, u in re.findall(r"([0-9.]+)(ns|us|µs|ms|s|m|h)", value))


def _absolute(name: str, value: str) -> str:
    if not value.startswith("/") or posixpath.normpath(value) != value or "\n" in value:
        raise ReplicaConfigError(f"{name} must be an absolute, normal path, not {value!r:.200}")
    return value


def _prefix(*parts: str) -> str:
    """A replica path: segments of letters, digits, dots, dashes and underscores (no ``..``), joined by ``/``."""
    segments = [s for part in parts for s in part.strip("/").split("/") if s]
    for segment in segments:
        if not _SEGMENT.match(segment) or segment in (".", ".."):
            raise ReplicaConfigError(f"a replica path may not hold the segment {segment!r:.80}")
    return "/".join(segments)


def _replica(dest: Destination, path: str, settings: Settings) -> dict[str, object]:
    if not _BUCKET.match(dest.bucket) or ".." in dest.bucket:
        raise ReplicaConfigError(f"{dest.bucket!r:.80} is not an S3 bucket name")
    if dest.encryption not in ENCRYPTIONS:
        raise ReplicaConfigError(f"the encryption must be one of {', '.join(ENCRYPTIONS)}, not {dest.encryption!r:.40}")
    if settings.encrypt and dest.encryption == "none":
        raise ReplicaConfigError(
            "Litestream 0.5 cannot encrypt what it uploads (it has no age support), so replication would send the "
            "databases in plaintext; ask the store to encrypt them (encryption sse-kms with a key id) or do not ask "
            "for encryption"
        )
    replica: dict[str, object] = {"type": "s3", "bucket": dest.bucket, "path": path}
    if dest.endpoint:
        if not re.match(r"^https?://[^\s/]+(:[0-9]+)?/?$", dest.endpoint):
            raise ReplicaConfigError(f"the endpoint must be http(s)://HOST[:PORT], not {dest.endpoint!r:.120}")
        if dest.encryption != "none" and dest.endpoint.startswith("http://"):
            raise ReplicaConfigError("server-side encryption needs an https endpoint (the key would travel in clear)")
        replica.update(endpoint=dest.endpoint.rstrip("/"), **{"force-path-style": True})
    if dest.region:
        replica["region"] = dest.region
    if dest.skip_verify:
        replica["skip-verify"] = True
    if dest.encryption == "sse-kms":
        if not dest.sse_kms_key_id:
            raise ReplicaConfigError("encryption sse-kms needs the key id (sse_kms_key_id)")
        replica["sse-kms-key-id"] = dest.sse_kms_key_id
    elif dest.encryption == "sse-c":
        raise ReplicaConfigError(
            "encryption sse-c is not supported: the collection reads the replicas itself (restore to a moment, lag) "
            "and does not send SSE-C keys; use sse-kms"
        )
    replica["sync-interval"] = _duration("sync_interval", settings.sync_interval)
    return replica


def _top(settings: Settings) -> dict[str, object]:
    host, _, port = settings.addr.rpartition(":")
    try:
        loopback = ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if not loopback or not port.isdigit():
        raise ReplicaConfigError(
            f"Litestream's address {settings.addr!r:.80} must be a loopback address and port: it serves Go's pprof "
            "beside its metrics"
        )
    top: dict[str, object] = {
        "addr": settings.addr,
        "levels": [{"interval": _duration("a level's interval", i)} for i in settings.levels],
        "snapshot": {
            "interval": _duration("snapshot_interval", settings.snapshot_interval),
            "retention": _duration("snapshot_retention", settings.snapshot_retention),
        },
        "l0-retention": _duration("l0_retention", settings.l0_retention),
    }
    if not settings.levels:
        raise ReplicaConfigError("Litestream needs at least one compaction level")
    if settings.heartbeat_url:
        if not re.match(r"^https?://\S+$", settings.heartbeat_url):
            raise ReplicaConfigError("the heartbeat URL must be an http(s) URL")
        if _seconds(_duration("heartbeat_interval", settings.heartbeat_interval)) < 60:
            raise ReplicaConfigError("Litestream refuses a heartbeat interval under a minute")
        top.update({"heartbeat-url": settings.heartbeat_url, "heartbeat-interval": settings.heartbeat_interval})
    return top


def tenement(data_dir: str, dest: Destination, settings: Settings, host: str) -> dict[str, object]:
    """Every SQLite database below tenement's data dir, those made later too."""
    replica = _replica(dest, _prefix(dest.path, host, "tenement"), settings)
    entry = {
        "dir": _absolute("tenement's data dir", data_dir),
        "pattern": "[^.]*",  # SQLite files (Litestream checks the header), not hidden ones: staged or safety copies
        "recursive": True,
        "watch": True,
        "meta-dir": posixpath.join(_absolute("meta_dir", settings.meta_dir), "tenement"),
        "monitor-interval": _duration("monitor_interval", settings.monitor_interval),
        "replica": replica,
    }
    return {**_top(settings), "dbs": [entry]}


def tomo(database: str, dest: Destination, settings: Settings, host: str) -> dict[str, object]:
    """Tomo's database, once the operator accepts that Litestream switches it to WAL mode."""
    if not settings.accept_wal:
        raise ReplicaConfigError(
            "Litestream switches tomo.db from its rollback journal to WAL mode and adds two tables to it; set "
            "replicate_tomo_accept_wal to true to replicate it all the same"
        )
    path = _absolute("Tomo's database", database)
    replica = _replica(dest, _prefix(dest.path, host, "tomo", posixpath.basename(path)), settings)
    entry = {
        "path": path,
        "meta-path": posixpath.join(_absolute("meta_dir", settings.meta_dir), "tomo", posixpath.basename(path)),
        "monitor-interval": _duration("monitor_interval", settings.monitor_interval),
        "replica": replica,
    }
    return {**_top(settings), "dbs": [entry]}


def render(config: dict[str, object]) -> str:
    """The configuration file's text: JSON, which Litestream's YAML reader takes as it is."""
    return "# Written by selfhost.dr (role replicate); JSON is YAML.\n" + json.dumps(config, indent=2) + "\n"
