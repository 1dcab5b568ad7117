# Copyright: selfhost.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A host's replication, as the host command and the modules use it (issue 17): where the replicas are, the
store's credentials, the Litestream binary and its service; and ``litestream restore`` of one database to one
transaction id, retried when Litestream's retention deletes a file the restore planned.

The host's configuration holds it in a ``[replicate]`` table (written by the ``replicate`` role)::

    [replicate]
    bucket = "dr"                 # the S3-compatible store: bucket, path (a prefix), endpoint, region
    path = "replicas"
    endpoint = "https://s3.example.net"
    env_file = "/etc/selfhost-dr/litestream.env"   # AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY (mode 0600)
    host = "web1"                 # the host whose replicas these are (default: this host's name)
    binary = "/opt/selfhost-dr/litestream/bin/litestream"
    service = "selfhost-dr-litestream.service"
    meta_dir = "/var/lib/selfhost-dr/litestream"
    stall_seconds = 60            # a database whose replica lags longer has stalled

Each application's databases are at ``PATH/HOST/APP/<path below its data dir>`` (replicas/config.py)."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .._common import Error, Log, no_log
from ..apps.service import Service
from ..repos.config import RepoConfigError, _private_file, read_env_file
from . import config, s3
from .config import Destination, ReplicaConfigError
from .ltx import format_txid

SERVICE = "selfhost-dr-litestream.service"
BINARY = "/opt/selfhost-dr/litestream/bin/litestream"
_KNOWN = {
    "bucket", "path", "endpoint", "region", "skip_verify", "encryption", "sse_kms_key_id", "sse_customer_key_path",
    "env_file", "host", "binary", "service", "service_manager", "pidfile", "start_command", "meta_dir",
    "stall_seconds", "metrics_addr",
}  # fmt: skip
# What a restore that lost a race with Litestream's retention says (docs/litestream.md, section 5): plan again.
_VANISHED = re.compile(r"reopen ltx file.*(file does not exist|no such file)|no matching backup files available")
ATTEMPTS = 3


class ReplicaRestoreError(Error):
    """``litestream restore`` failed, in one sentence."""


class VanishedError(ReplicaRestoreError):
    """A file the restore planned was deleted by retention meanwhile: plan again."""


@dataclass
class Replication:
    """One host's replication settings, checked."""

    dest: Destination
    host: str
    credentials: dict[str, str] = field(repr=False)
    binary: str = BINARY
    service: Service | None = None
    meta_dir: str = "/var/lib/selfhost-dr/litestream"
    stall_seconds: float = 60.0
    metrics_addr: str = "127.0.0.1:9091"

    def prefix(self, app: str, database: str = "") -> str:
        """Where ``app``'s replicas are in the bucket (one database's, given its path below the data dir)."""
        return "/".join(p for p in (config._prefix(self.dest.path, self.host, app), database) if p)

    @property
    def shown(self) -> str:
        return f"s3://{self.dest.bucket}/{config._prefix(self.dest.path, self.host)}" + (
            f" at {self.dest.endpoint}" if self.dest.endpoint else ""
        )

    def store(self) -> s3.Store:
        return s3.Store(
            self.dest.endpoint or f"https://s3.{self.dest.region or 'us-east-1'}.amazonaws.com",
            self.dest.bucket,
            self.credentials.get("AWS_ACCESS_KEY_ID", ""),
            self.credentials.get("AWS_SECRET_ACCESS_KEY", ""),
            region=self.dest.region or "us-east-1",
            skip_verify=self.dest.skip_verify,
        )

    def environment(self) -> dict[str, str]:
        """Litestream's environment: the credentials, never ``AWS_CA_BUNDLE`` (it breaks Litestream's S3 client)."""
        env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "TZ", "SSL_CERT_FILE")}
        env.update(self.credentials)
        if "AWS_ACCESS_KEY_ID" in self.credentials:
            env["LITESTREAM_ACCESS_KEY_ID"] = self.credentials["AWS_ACCESS_KEY_ID"]
        if "AWS_SECRET_ACCESS_KEY" in self.credentials:
            env["LITESTREAM_SECRET_ACCESS_KEY"] = self.credentials["AWS_SECRET_ACCESS_KEY"]
        env.pop("AWS_CA_BUNDLE", None)
        return env

    def restore(self, app: str, database: str, txid: int, out_dir_fd: int, name: str, stand_for: str) -> None:
        """``litestream restore -txid`` of one database into ``name`` in the directory open as ``out_dir_fd`` (reached
        through ``/proc/self/fd``, never a name someone could swap). ``stand_for`` is the database's path on this host,
        which the temporary configuration names (Litestream looks the database up by it; nothing is written there).
        Raises :class:`VanishedError` when retention deleted a planned file meanwhile."""
        replica = config._replica(self.dest, self.prefix(app, database), config.Settings())
        text = config.render({"dbs": [{"path": stand_for, "replica": replica}]})
        with tempfile.TemporaryDirectory(prefix="selfhost-dr-litestream-") as private:
            path = os.path.join(private, "restore.yml")
            with open(path, "x", encoding="utf-8") as handle:
                handle.write(text)
            argv = [self.binary, "restore", "-config", path, "-no-expand-env", "-txid", format_txid(txid),
                    "-o", f"/proc/self/fd/{out_dir_fd}/{name}", stand_for]  # fmt: skip
            try:
                done = subprocess.run(argv, env=self.environment(), capture_output=True, text=True, timeout=3600,
                                      pass_fds=(out_dir_fd,), check=False, cwd=private)  # fmt: skip
            except FileNotFoundError as exc:
                raise ReplicaRestoreError(f"Litestream is not installed at {self.binary}") from exc
            except subprocess.TimeoutExpired as exc:
                raise ReplicaRestoreError(f"litestream restore of {database} did not finish within an hour") from exc
        if done.returncode != 0:
            said = [line for line in (done.stderr or done.stdout).strip().splitlines() if line.strip()]
            last = said[-1].removeprefix("Error: ") if said else f"it exited {done.returncode}"
            for secret in self.credentials.values():
                if secret:
                    last = last.replace(secret, "***")
            kind = VanishedError if _VANISHED.search(last) else ReplicaRestoreError
            raise kind(f"litestream restore of {database} failed: {last[:400]}")


def _string(table: Mapping[str, Any], key: str, default: str = "") -> str:
    value = table.get(key, default)
    if not isinstance(value, str):
        raise ReplicaConfigError(f"[replicate] {key} must be a string")
    return value


def from_config(table: object) -> Replication:
    """The ``[replicate]`` table of the host's configuration, checked, its credentials read from ``env_file``."""
    if not isinstance(table, Mapping) or not table:
        raise ReplicaConfigError("the configuration has no [replicate] table: replication is not set up on this host")
    unknown = sorted(set(table) - _KNOWN)
    if unknown:
        raise ReplicaConfigError(f"[replicate] has no setting {unknown[0]!r}")
    dest = Destination(
        bucket=_string(table, "bucket"),
        path=_string(table, "path"),
        endpoint=_string(table, "endpoint"),
        region=_string(table, "region"),
        skip_verify=bool(table.get("skip_verify", False)),
        encryption=_string(table, "encryption", "none"),
        sse_kms_key_id=_string(table, "sse_kms_key_id"),
        sse_customer_key_path=_string(table, "sse_customer_key_path"),
    )
    config._replica(dest, "check", config.Settings())  # refuses what Litestream would
    host = _string(table, "host") or socket.gethostname().split(".")[0]
    config._prefix(host)
    credentials: dict[str, str] = {}
    env_file = _string(table, "env_file")
    if env_file:
        try:
            credentials = read_env_file(_private_file(env_file, "[replicate] env_file"), "[replicate] env_file")
        except RepoConfigError as exc:
            raise ReplicaConfigError(str(exc)) from None
    start = table.get("start_command", [])
    if not isinstance(start, list) or not all(isinstance(a, str) for a in start):
        raise ReplicaConfigError("[replicate] start_command must be a list of strings")
    unit = _string(table, "service", SERVICE)
    manager = _string(table, "service_manager", "auto")
    pidfile = _string(table, "pidfile")
    try:
        service = Service(unit, manager, pidfile, list(start)) if unit else None
    except Error as exc:
        raise ReplicaConfigError(f"[replicate] {exc}") from None
    stall = table.get("stall_seconds", 60)
    if isinstance(stall, bool) or not isinstance(stall, (int, float)) or stall <= 0:
        raise ReplicaConfigError("[replicate] stall_seconds must be a number of seconds above 0")
    return Replication(
        dest=dest,
        host=host,
        credentials=credentials,
        binary=config._absolute("[replicate] binary", _string(table, "binary", BINARY)),
        service=service,
        meta_dir=config._absolute("[replicate] meta_dir", _string(table, "meta_dir", config.Settings().meta_dir)),
        stall_seconds=float(stall),
        metrics_addr=_string(table, "metrics_addr", "127.0.0.1:9091"),
    )


def stop_for_restore(replication: Replication, log: Log = no_log) -> bool:
    """Stop Litestream before a restore stages anything beside the databases (it watches the data dir and would
    replicate a staged copy as a new database); whether it ran."""
    if replication.service is None:
        return False
    log(f"replicate: stopping {replication.service.unit} for the restore")
    return replication.service.stop()
