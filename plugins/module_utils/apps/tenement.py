# Copyright: selfhost.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""tenement as an application: what is on a host, what a backup archives, stopping and starting ``ten serve``
with its instances, and one instance at a time.

Facts about tenement 0.2.2 that shape this (see docs/tenement.md): ``ten serve`` respawns only the instances
of its ``[instances]`` table when it starts, so the instances that ran are recorded (in a set's manifest, and
before a restore) and spawned again, each waited for until its health check passes.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shlex
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from .._common import AppError, Log, no_log
from . import tenement_hazards as hazards
from .base import Application, Facts
from .needs import DEFAULT_PATH, Needs, environment_path, main_pid, ports_of, process_tree
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
from .tenement_instance import ELSEWHERE, InstanceBackup, backup_instance

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
    """Each ``[service.NAME]`` as tenement 0.2.2 reads it: ``storage_persist`` true and ``isolation``
    ``namespace`` when not set (``config.rs`` defaults), and its ``env`` (for where an instance's data is)."""
    table = config.get("service")
    if not isinstance(table, dict):
        return {}
    services: dict[str, dict[str, object]] = {}
    for name, svc in sorted(table.items()):
        if not isinstance(svc, dict):
            continue
        env = svc.get("env")
        services[name] = {
            "command": svc.get("command", ""),
            "health": svc.get("health", ""),
            "isolation": svc.get("isolation", "namespace"),
            "storage_persist": svc.get("storage_persist", True) is not False,
            "storage_persist_set": "storage_persist" in svc,
            "env": {str(k): str(v) for k, v in env.items()} if isinstance(env, dict) else {},
        }
    return services


def data_templates(service: dict[str, object]) -> list[str]:
    """Where an instance of ``service`` keeps data, as tenement path templates: ``{data_dir}/{name}/{id}`` (the dir
    tenement makes) and every path in its ``env`` built from ``{id}`` (upstream examples set
    ``DATA_DIR = "{data_dir}/{id}"``), cut after the part that names the instance."""
    found = ["{data_dir}/{name}/{id}"]
    env = service.get("env")
    for value in (env or {}).values() if isinstance(env, dict) else ():
        text = str(value)
        start = text.find("{data_dir}")
        if start < 0:
            start = 0 if text.startswith("/") else -1
        if start < 0 or "{id}" not in text[start:]:
            continue
        parts = text[start:].split("/")
        cut = next(i for i, part in enumerate(parts) if "{id}" in part)
        template = "/".join(parts[: cut + 1])
        if template not in found:
            found.append(template)
    return found


def expand(template: str, data_dir: str, unit: str) -> str:
    """A path template with tenement's placeholders ``{data_dir}``, ``{name}`` and ``{id}`` filled in."""
    service, ident = parse_instance(unit)
    path = template.replace("{data_dir}", data_dir).replace("{name}", service).replace("{id}", ident)
    if "{" in path or not os.path.isabs(path):
        raise TenementError(
            f"the data path {template!r} of service {service} must be absolute and use only "
            "{data_dir}, {name} and {id}"
        )
    return os.path.normpath(path)


def tls_cache_dir(config: dict[str, object], config_path: str, data_dir: str) -> str:
    """Where tenement keeps its TLS certificates: ``[settings.tls] cache_dir`` (relative to the config's
    directory), else ``{data_dir}/acme``."""
    settings = config.get("settings")
    tls = settings.get("tls") if isinstance(settings, dict) else None
    cache = tls.get("cache_dir") if isinstance(tls, dict) else None
    if not cache:
        return os.path.join(data_dir, "acme")
    return os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(config_path)), str(cache)))


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
        "tls_cache_dir": tls_cache_dir(config, config_path, resolved),
        "weights": {name: inst.weight for name, inst in sorted(running.items())},
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


# Never archived: sockets. (tenement 0.2.2 writes no log or metrics files: instance logs are rows of tenement.db,
# and whatever else is in an instance's dir is its data.)
EXCLUDES = ("*.sock",)


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
    acme: bool = True  # archive the TLS certificates ({data_dir}/acme, or [settings.tls] cache_dir)
    start_timeout: float = 30.0
    # Per service, where its instances keep data (templates with {data_dir}, {name}, {id}); else found from
    # tenement.toml (data_templates).
    instance_data: dict[str, list[str]] = field(default_factory=dict)

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
        self._given_data_dir = settings.data_dir or ""  # (inspect() fills settings.data_dir from tenement.toml)
        self._client: TenementClient | None = None
        self._service: Service | None = None
        self._facts: Facts | None = None
        # Routing weights (in tenement's memory only, reset to 100 by a spawn): read before a stop, set back after.
        self._weights: dict[str, int] = {}

    # -- facts
    def inspect(self) -> Facts:
        s = self.settings
        host = describe_host(s.config_path, s.data_dir, s.server, s.ten_bin)
        data_dir = str(host["data_dir"])
        self.settings.data_dir = data_dir
        tls = str(host["tls_cache_dir"])
        paths = [s.config_dir, data_dir]
        if s.acme and not _under(tls, paths) and os.path.isdir(tls):
            paths.append(tls)
        excludes = [*EXCLUDES, *([] if s.acme else [tls])]
        reachable = bool(host["reachable"])
        services: dict[str, dict[str, object]] = host["services"]  # type: ignore[assignment]
        running = list(host["running"])  # type: ignore[call-overload]
        facts = Facts(
            app=self.name,
            version=str(host["version"] or ""),
            paths=paths,
            excludes=excludes,
            metadata={
                "running": host["running"],
                "weights": host["weights"],
                "config_sha256": host["config_sha256"],
                "tenement_version": host["version"],
                "config_dir": s.config_dir,
                "data_dir": data_dir,
                "services": {name: {k: v for k, v in svc.items() if k != "env"} for name, svc in services.items()},
                "not_persistent": [u for u in running if not self._persists(u, services)],
            },
            running=running,
            unreachable="" if reachable else f"the tenement server {s.server} does not answer ({host['server_error']})",
            details=host,
        )
        self._facts = facts
        return facts

    def trusted_roots(self) -> list[str]:
        """The config dir, and the data dir when the operator gave it."""
        return [self.settings.config_dir, *([self._given_data_dir] if self._given_data_dir else [])]

    def restore_roots(self, before: Facts | None) -> list[str]:
        """The data dir as this host has it (the operator's ``data_dir``, else this host's tenement.toml, else
        tenement's default), and the TLS cache dir this host's tenement.toml names."""
        s = self.settings
        return list(dict.fromkeys([s.data_dir or DEFAULT_DATA_DIR, *(before.paths if before else [])]))

    @staticmethod
    def _persists(unit: str, services: dict[str, dict[str, object]]) -> bool:
        return bool(dict(services.get(unit.split(":", 1)[0]) or {}).get("storage_persist", True))

    def _not_persistent(self, units: list[str]) -> list[str]:
        """Those of ``units`` whose service does not persist their data: all of them when tenement.toml cannot be
        read (keeping a dir aside across a stop is harmless for one that persists)."""
        try:
            facts = self._facts or self.inspect()
        except TenementError:
            return list(units)
        services: dict[str, dict[str, object]] = facts.details.get("services") or {}  # type: ignore[assignment]
        return [u for u in units if not self._persists(u, services)]

    @property
    def data_dir(self) -> str:
        return self.settings.data_dir or DEFAULT_DATA_DIR

    def configured_data_dir(self) -> str:
        """The data dir as the operator's ``data_dir`` or tenement.toml sets it, without asking ``ten serve``."""
        s = self.settings
        if s.data_dir:
            return os.path.normpath(s.data_dir)
        try:
            config, _digest = read_config(s.config_path)
        except TenementError:
            return DEFAULT_DATA_DIR
        return resolve_data_dir(config, s.config_path)

    @property
    def client(self) -> TenementClient:
        if self._client is None:
            s = self.settings
            token = read_token(self.data_dir)
            self._client = TenementClient(s.ten_bin, server=s.server, token=token, data_dir=self.data_dir)
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
        facts = self._facts or self.inspect()
        hazards.refuse_unkeepable(self.data_dir, self._not_persistent(facts.running), f"stopping {self.settings.unit}")

    def stop(self, log: Log = no_log) -> bool:
        """Stop ``ten serve`` and with it every instance; the data dirs of the instances are kept aside while tenement
        stops them (it deletes those of instances spawned with ``storage_persist = false``), and are in place again
        afterwards."""
        hazards.put_back_all(self.data_dir, log)
        on_disk: list[str] = []
        with contextlib.suppress(TenementError):
            on_disk = [str(u) for u in (self._facts or self.inspect()).details.get("on_disk") or []]  # type: ignore[attr-defined]
        try:
            running: dict[str, Instance] = self.client.instances()
        except TenementError:
            running = {}  # the server does not answer: every instance dir on disk is kept aside
        self._weights.update({name: inst.weight for name, inst in running.items()})
        units = sorted(set(running) | set(on_disk))
        must = self._not_persistent(units)
        kept = hazards.keep_aside(self.data_dir, units, log, must=must)
        log(f"tenement: stopping {self.settings.unit} (and with it every instance)")
        try:
            return self.service.stop()
        finally:
            self._client = None  # the token may change with a restore
            self._said_kept(kept, must, hazards.put_back(kept, log), f"{self.settings.unit} stopped")

    def _said_kept(self, kept: list[hazards.Kept], must: list[str], problems: list[str], when: str) -> None:
        fragile = [k.unit for k in kept if k.unit in must]
        if fragile and not problems:
            self.did(
                f"kept the data of {', '.join(fragile)} (storage_persist = false) aside while {when}: "
                "tenement would have deleted it"
            )
        for problem in problems:
            self.did(problem)

    def start(self, units: list[str], timeout: float, log: Log = no_log) -> None:
        for problem in hazards.put_back_all(self.data_dir, log):
            self.did(problem)
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

    def fix_up(self, manifest: dict[str, object], targets: list[str], log: Log = no_log) -> None:
        """Empty the restored ``tenement.db``'s ``instance_state`` (or ``ten serve`` kills whatever holds the pids
        it lists); take the set's routing weights for the instances that did not run here before."""
        metadata = dict(manifest.get("metadata") or {})  # type: ignore[call-overload]
        data_dir = os.path.normpath(str(metadata.get("data_dir") or self.data_dir))
        for database in _restored_under(data_dir, targets, "tenement.db"):
            if hazards.clear_instance_state(database, log):
                self.did("emptied instance_state in the restored tenement.db, so ten serve kills no process")
        weights = metadata.get("weights")
        for unit, weight in weights.items() if isinstance(weights, dict) else ():
            if isinstance(weight, int) and not isinstance(weight, bool) and 0 <= weight <= 100:
                self._weights.setdefault(str(unit), weight)

    def fixed_up_paths(self, facts: Facts) -> list[str]:
        data_dir = str(facts.metadata.get("data_dir") or self.data_dir)
        return [os.path.join(data_dir, "tenement.db")]

    def needs(self, facts: Facts) -> Needs:
        """The addresses and ports ``ten serve`` listens on itself (its API port, and its TLS ports when it serves
        TLS), and for each service that runs or that ``[instances]`` starts, what its command needs outside the data a
        migration carries."""
        config = facts.details.get("config") or {}
        pid = self._server_pid()
        found = Needs(ports=ports_of(pid, "ten serve"))
        table = config.get("instances") if isinstance(config, dict) else None
        started = (
            [svc for svc, ids in table.items() if isinstance(ids, list) and ids] if isinstance(table, dict) else []
        )
        wanted = sorted({*(unit.split(":", 1)[0] for unit in facts.running), *started})
        services = config.get("service") if isinstance(config, dict) else None
        serve_path = environment_path(pid) or DEFAULT_PATH
        for name in wanted:
            svc = services.get(name) if isinstance(services, dict) else None
            if isinstance(svc, dict):
                _service_needs(name, svc, facts.paths, serve_path, found)
        return found

    def own_processes(self) -> set[int]:
        return process_tree(self._server_pid())

    def _server_pid(self) -> int:
        try:
            return main_pid(self.service)
        except AppError:  # neither systemd nor a pidfile to ask
            return 0

    # -- one instance at a time
    def unit_paths(self, unit: str, facts: Facts) -> list[str]:
        """Where ``unit`` keeps its data: ``{data_dir}/{service}/{id}`` and the paths its service's env builds from
        ``{id}``, or those ``instance_data`` names. A path that would take in more than this instance's own data
        (the data dir or above it, the config dir, the TLS certificates, a service's dir) is refused."""
        service, _ = parse_instance(unit)
        services: dict[str, dict[str, object]] = facts.details.get("services") or {}  # type: ignore[assignment]
        templates = self.settings.instance_data.get(service) or data_templates(dict(services.get(service) or {}))
        shared = {
            self.data_dir: "the data dir",
            self.settings.config_dir: "the config dir",
            os.path.join(self.data_dir, "acme"): "the TLS certificates",
            str(facts.details.get("tls_cache_dir") or ""): "the TLS certificates",
            **{os.path.join(self.data_dir, name): f"the dir of service {name}" for name in services},
        }
        paths: list[str] = []
        for template in templates:
            text = str(template)
            if "{id}" not in text.rstrip("/").rsplit("/", 1)[-1] or "/../" in f"{text}/" or "/./" in f"{text}/":
                raise TenementError(
                    f"the data path {text!r} of service {service} must end in a part holding {{id}}, with no '.' "
                    "or '..' parts, so that it names one instance's data"
                )
            path = expand(text, self.data_dir, unit)
            for other, what in shared.items():
                if other and _under(other, [path]):
                    raise TenementError(
                        f"the data path {path} of instance {unit} would take in {what} ({other}), not only the "
                        "instance's own data; name its data in tenement_instance_data"
                    )
            if not _under(path, paths):
                paths = [p for p in paths if not _under(p, [path])] + [path]
        return paths

    def elsewhere(self, unit: str) -> str:
        return "; " + ELSEWHERE.format(service=unit.split(":", 1)[0])

    def stop_unit(self, unit: str, log: Log = no_log) -> None:
        running = self.client.instances()
        if unit not in running:
            return
        for problem in hazards.put_back_all(self.data_dir, log):
            self.did(problem)
        self._weights[unit] = running[unit].weight
        must = self._not_persistent([unit])
        kept = hazards.keep_aside(self.data_dir, [unit], log, must=must)
        log(f"tenement: stopping instance {unit}")
        try:
            self.client.stop(unit)
        finally:
            self._said_kept(kept, must, hazards.put_back(kept, log), "it stopped")

    def start_unit(self, unit: str, timeout: float, log: Log = no_log) -> None:
        if unit not in self.client.instances():
            log(f"tenement: spawning instance {unit}")
            self.client.spawn(unit)
        self.client.wait_healthy(unit, timeout=timeout, interval=0.1)
        weight = self._weights.get(unit, 100)
        if weight != 100:
            self.client.set_weight(unit, weight)
            log(f"tenement: routing weight of {unit} set back to {weight}")

    def backup_unit(
        self, unit: str, facts: Facts, dest: str, health_timeout: float, log: Log, create_args: dict[str, object]
    ) -> InstanceBackup:
        def start() -> None:
            self.start_unit(unit, health_timeout, log)

        return backup_instance(
            self.client,
            unit,
            self.data_dir,
            dest,
            storage_persist=not self._not_persistent([unit]),
            trees=self.unit_paths(unit, facts),
            stop=lambda: self.stop_unit(unit, log),
            start=start,
            health_timeout=health_timeout,
            log=log,
            **create_args,  # type: ignore[arg-type]
        )


def _service_needs(name: str, svc: dict[str, object], carried: Sequence[str], serve_path: str, found: Needs) -> None:
    """What ``[service.NAME]`` runs, as tenement 0.2.2 runs it (``command`` split as a shell would, a ``#`` comment
    left out, when it has no ``args``), that a migration does not carry: an absolute program, a bare command name
    (found on the service's PATH, else ``ten serve``'s), each absolute argument that names something on this server,
    the working directory. Words with placeholders, and what lies in the data the migration carries, are left out."""
    command = str(svc.get("command") or "")
    args = svc.get("args")
    try:
        words = [command, *map(str, args)] if isinstance(args, list) and args else shlex.split(_uncommented(command))
    except ValueError:  # tenement would refuse it as well; nothing to look for
        return
    env = svc.get("env")
    given = str(env.get("PATH", "")) if isinstance(env, dict) else ""
    # Entries with placeholders are the instance's own (in the data dir, carried): looked for in none of them.
    path = ":".join(p for p in (given or serve_path).split(":") if p and "{" not in p)
    workdir = str(svc.get("workdir") or "")

    def outside(where: str) -> bool:
        return "{" not in where and os.path.isabs(where) and not _under(os.path.normpath(where), carried)

    if words and "{" not in words[0]:
        program = words[0]
        if "/" not in program:
            there = shutil.which(program, path=path)
            if there and outside(there):
                found.commands.append({"name": program, "service": name, "path": path})
            program = ""  # not here at all, or in the data: nothing to compare
        elif not os.path.isabs(program) and workdir:
            program = os.path.join(workdir, program)
        if program and outside(program):
            found.programs.append({"path": os.path.normpath(program), "service": name, "as": "command"})
    for word in words[1:]:
        if outside(word) and os.path.exists(word):
            found.programs.append({"path": os.path.normpath(word), "service": name, "as": "argument"})
    if outside(workdir):
        found.programs.append({"path": os.path.normpath(workdir), "service": name, "as": "workdir"})


def _uncommented(command: str) -> str:
    """``command`` up to a ``#`` that begins a word outside quotes, as the ``shell_words`` crate that tenement splits
    with reads a comment (``a#b`` is a word; ``a #b`` ends at ``a``)."""
    quote = ""
    escaped = False
    for i, char in enumerate(command):
        if escaped:
            escaped = False
        elif char == "\\" and quote != "'":
            escaped = True
        elif quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (i == 0 or command[i - 1].isspace()):
            return command[:i]
    return command


def _restored_under(original: str, targets: list[str], name: str) -> list[str]:
    """Where ``original/name`` is after a restore to ``targets``: under the target that is ``original`` or one of its
    parents (the restore may have put everything under another root: a target ends with the original path)."""
    found = []
    for target in targets:
        target = os.path.normpath(target)
        if target == os.path.normpath(os.path.join(original, name)):  # the file itself (a database restored alone)
            found.append(target)
            continue
        parent = original
        while True:
            if target == parent or (parent != "/" and target.endswith(parent)):
                found.append(os.path.join(target, os.path.relpath(original, parent), name))
                break
            if parent == "/":
                break
            parent = os.path.dirname(parent)
    return [os.path.normpath(f) for f in found]


def _under(path: str, parents: Sequence[str]) -> bool:
    """Whether ``path`` is one of ``parents`` or inside one."""
    return any(path == p or path.startswith(p.rstrip("/") + "/") for p in parents)
