# Copyright: selfhost.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""tenement as an application: what is on a host, what a backup archives, stopping and starting ``ten serve``
with its instances, and one instance at a time.

Facts about tenement 0.2.2 that shape this (see docs/tenement.md): ``ten serve`` respawns only the instances
of its ``[instances]`` table when it starts, so the instances that ran are recorded (in a set's manifest, and
before a restore) and spawned again, each waited for until its health check passes.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from .._common import Log, no_log
from .base import Application, Facts
from .service import Service
from .tenement_client import (
    DEFAULT_DATA_DIR,
    DEFAULT_SERVER,
    NAME_RE,
    Instance,
    TenementClient,
    TenementError,
    parse_instance,
    read_token,
)
from .tenement_instance import InstanceBackup, backup_instance

# -- what is on a host ------------------------------------------------------


def read_config(path: str) -> tuple[dict[str, object], str]:
    """``tenement.toml`` parsed, and the sha256 of its bytes (needs Python 3.11's tomllib on the host)."""
    try:
        import tomllib
    except ImportError as exc:  # Python < 3.11
        raise TenementError("reading tenement.toml needs Python 3.11 or newer (tomllib) on the host") from exc
    try:
        with open(path, "rb") as handle:
            data = handle.read()
        return tomllib.loads(data.decode("utf-8")), hashlib.sha256(data).hexdigest()
    except UnicodeDecodeError as exc:
        raise TenementError(f"tenement config {path} is not valid TOML: it is not UTF-8") from exc
    except FileNotFoundError as exc:
        raise TenementError(f"tenement config {path} does not exist") from exc
    except PermissionError as exc:
        raise TenementError(f"tenement config {path} cannot be read: permission denied") from exc
    except tomllib.TOMLDecodeError as exc:
        raise TenementError(f"tenement config {path} is not valid TOML: {exc}") from exc


def resolve_data_dir(config: dict[str, object], config_path: str, override: str | None = None) -> str:
    """The data dir ``ten serve`` uses: an explicit ``--data-dir``/``TENEMENT_DATA_DIR``, else the config's
    ``[settings] data_dir`` (relative to the config's directory, where ``ten serve`` runs), else
    ``./tenement-data`` there, as tenement 0.2.2 defaults."""
    if override:
        return os.path.normpath(override)
    settings = config.get("settings")
    configured = settings.get("data_dir") if isinstance(settings, dict) else None
    base = os.path.dirname(os.path.abspath(config_path))
    return os.path.normpath(os.path.join(base, str(configured) if configured else "tenement-data"))


def services_of(config: dict[str, object]) -> dict[str, dict[str, object]]:
    """Each ``[service.NAME]`` with its ``storage_persist`` (false when not set: the safe reading, since
    ``ten stop`` deletes the data of a service that does not persist)."""
    table = config.get("service")
    if not isinstance(table, dict):
        return {}
    services: dict[str, dict[str, object]] = {}
    for name, svc in sorted(table.items()):
        if not isinstance(svc, dict):
            continue
        services[name] = {
            "command": svc.get("command", ""),
            "health": svc.get("health", ""),
            "isolation": svc.get("isolation", ""),
            "storage_persist": svc.get("storage_persist") is True,
            "storage_persist_set": "storage_persist" in svc,
        }
    return services


def instances_on_disk(data_dir: str, services: Sequence[str]) -> list[str]:
    """``service:id`` for every instance directory ``{data_dir}/{service}/{id}/`` of a configured service."""
    found = []
    for service in services:
        base = os.path.join(data_dir, service)
        try:
            names = sorted(os.listdir(base))
        except (FileNotFoundError, NotADirectoryError):
            continue
        for ident in names:
            if NAME_RE.match(ident) and os.path.isdir(os.path.join(base, ident)):
                found.append(f"{service}:{ident}")
    return found


def describe_host(
    config_path: str,
    data_dir: str | None = None,
    server: str = DEFAULT_SERVER,
    ten_bin: str = "ten",
    timeout: float = 10.0,
) -> dict[str, object]:
    """What ``tenement_info`` reports: config, data dir, services, instances (running and on disk),
    version and whether the server answers. Works when the server is down."""
    config, config_sha256 = read_config(config_path)
    resolved = resolve_data_dir(config, config_path, data_dir)
    services = services_of(config)
    token = read_token(resolved)
    client = TenementClient(ten_bin, server=server, token=token, data_dir=resolved, timeout=timeout)
    running: dict[str, Instance] = {}
    answer = ""
    try:
        running = client.instances()
        reachable = True
    except TenementError as exc:
        reachable = "HTTP" in str(exc)
        answer = str(exc)
    try:
        version = client.version()
    except TenementError:
        version = None
    on_disk = instances_on_disk(resolved, list(services))
    return {
        "config_path": os.path.abspath(config_path),
        "config_dir": os.path.dirname(os.path.abspath(config_path)),
        "config_sha256": config_sha256,
        "config": config,
        "data_dir": resolved,
        "data_dir_exists": os.path.isdir(resolved),
        "token_file": os.path.join(resolved, "api_token"),
        "has_token": token is not None,
        "services": services,
        "running": sorted(running),
        "instances": {name: inst.to_dict() for name, inst in sorted(running.items())},
        "on_disk": on_disk,
        "only_on_disk": [name for name in on_disk if name not in running],
        "version": version,
        "server": server,
        "reachable": reachable,
        "server_error": answer,
    }


# Never archived: sockets, and what tenement 0.2.2 does not write but instances may (logs, metrics).
EXCLUDES = ("*.sock", "*.log", "*/logs", "*/metrics")


@dataclass
class Settings:
    """Where tenement is on a host, and how ``ten serve`` is kept running there."""

    config_dir: str = "/etc/tenement"
    data_dir: str | None = None  # None: tenement.toml's [settings] data_dir
    server: str = DEFAULT_SERVER
    ten_bin: str = "/usr/local/bin/ten"
    service_manager: str = "auto"
    unit: str = "tenement"
    pidfile: str = "/run/tenement.pid"
    start_command: list[str] = field(default_factory=list)
    acme: bool = True  # archive {data_dir}/acme (the TLS certificates)
    start_timeout: float = 30.0

    @property
    def config_path(self) -> str:
        return os.path.join(self.config_dir, "tenement.toml")


class Tenement(Application):
    name = "tenement"
    modes = ("hot", "cold", "instances")
    unit_word = "instance"
    data_words = "config and data"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._client: TenementClient | None = None
        self._service: Service | None = None

    # -- facts
    def inspect(self) -> Facts:
        s = self.settings
        host = describe_host(s.config_path, s.data_dir, s.server, s.ten_bin)
        data_dir = str(host["data_dir"])
        self.settings.data_dir = data_dir
        excludes = [*EXCLUDES, *([] if s.acme else [os.path.join(data_dir, "acme")])]
        reachable = bool(host["reachable"])
        return Facts(
            app=self.name,
            version=str(host["version"] or ""),
            paths=[s.config_dir, data_dir],
            excludes=excludes,
            metadata={
                "running": host["running"],
                "config_sha256": host["config_sha256"],
                "tenement_version": host["version"],
                "config_dir": s.config_dir,
                "data_dir": data_dir,
                "services": host["services"],
            },
            running=list(host["running"]),  # type: ignore[call-overload]
            unreachable="" if reachable else f"the tenement server {s.server} does not answer ({host['server_error']})",
            details=host,
        )

    @property
    def client(self) -> TenementClient:
        if self._client is None:
            s = self.settings
            data_dir = s.data_dir or DEFAULT_DATA_DIR
            self._client = TenementClient(s.ten_bin, server=s.server, token=read_token(data_dir), data_dir=data_dir)
        return self._client

    @property
    def service(self) -> Service:
        if self._service is None:
            s = self.settings
            self._service = Service(s.unit, s.service_manager, s.pidfile, list(s.start_command))
        return self._service

    # -- the whole server
    def check_can_restart(self) -> None:
        _ = self.service  # a plain process with no pidfile or start command is refused here

    def stop(self, log: Log = no_log) -> bool:
        log(f"tenement: stopping {self.settings.unit} (and with it every instance)")
        try:
            return self.service.stop()
        finally:
            self._client = None  # the token may change with a restore

    def start(self, units: list[str], timeout: float, log: Log = no_log) -> None:
        log(f"tenement: starting {self.settings.unit}, then {len(units)} instance(s)")
        self.service.start()
        self._wait_listening()
        for unit in units:
            self.start_unit(unit, timeout, log)

    def _wait_listening(self) -> None:
        deadline = time.monotonic() + self.settings.start_timeout
        while not self.client.reachable():
            if time.monotonic() >= deadline:
                raise TenementError(
                    f"the tenement server {self.settings.server} does not answer "
                    f"{self.settings.start_timeout:g} s after its start"
                )
            time.sleep(0.2)

    # -- one instance at a time
    def unit_paths(self, unit: str, facts: Facts) -> list[str]:
        service, ident = parse_instance(unit)
        return [os.path.join(self.settings.data_dir or DEFAULT_DATA_DIR, service, ident)]

    def stop_unit(self, unit: str, log: Log = no_log) -> None:
        if unit in self.client.instances():
            log(f"tenement: stopping instance {unit}")
            self.client.stop(unit)

    def start_unit(self, unit: str, timeout: float, log: Log = no_log) -> None:
        if unit not in self.client.instances():
            log(f"tenement: spawning instance {unit}")
            self.client.spawn(unit)
        self.client.wait_healthy(unit, timeout=timeout, interval=0.2)

    def backup_unit(
        self, unit: str, facts: Facts, dest: str, health_timeout: float, log: Log, create_args: dict[str, object]
    ) -> InstanceBackup:
        service, _ = parse_instance(unit)
        services = facts.metadata.get("services") or {}
        persist = bool(dict(services.get(service) or {}).get("storage_persist"))  # type: ignore[union-attr]
        return backup_instance(
            self.client,
            unit,
            self.settings.data_dir or DEFAULT_DATA_DIR,
            dest,
            storage_persist=persist,
            health_timeout=health_timeout,
            log=log,
            **create_args,  # type: ignore[arg-type]
        )
