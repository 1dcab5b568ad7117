# Copyright: selfhost.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The applications by name, built from the same options wherever they come from: a module's parameters
(``tenement_*``, ``tomo_*``, documented once in ``plugins/doc_fragments/``) or the host's
``/etc/selfhost-dr/config.toml`` that the roles write."""

from __future__ import annotations

import shutil
from collections.abc import Mapping

from .._common import AppError
from .base import Application
from .tenement import Settings as TenementSettings
from .tenement import Tenement
from .tenement_client import check_name
from .tomo import Settings as TomoSettings
from .tomo import Tomo
from .tomo_schema import CATEGORIES

APPS = ("tenement", "tomo")
MODES: dict[str, tuple[str, ...]] = {"tenement": Tenement.modes, "tomo": Tomo.modes}  # how each is backed up

# Ansible argument specs, and the keys of config.toml's [tenement] and [tomo] tables (without the prefix).
TENEMENT_CLIENT_SPEC: dict[str, dict[str, object]] = {
    "tenement_server": {"type": "str", "default": "http://127.0.0.1:8080", "aliases": ["server"]},
    "tenement_data_dir": {"type": "path", "aliases": ["data_dir"]},
    "tenement_ten_bin": {"type": "path", "aliases": ["ten_bin"]},
}
TENEMENT_SERVICE_SPEC: dict[str, dict[str, object]] = {
    "tenement_config_dir": {"type": "path", "default": "/etc/tenement"},
    "tenement_service_manager": {"type": "str", "default": "auto", "choices": ["auto", "systemd", "process"]},
    "tenement_unit": {"type": "str", "default": "tenement"},
    "tenement_pidfile": {"type": "path", "default": "/run/tenement.pid"},
    "tenement_start_command": {"type": "list", "elements": "str", "default": []},
    "tenement_acme": {"type": "bool", "default": True},
    "tenement_instance_data": {"type": "dict", "default": {}},
}
TENEMENT_SPEC = {**TENEMENT_CLIENT_SPEC, **TENEMENT_SERVICE_SPEC}
TOMO_SPEC: dict[str, dict[str, object]] = {
    "tomo_database": {"type": "path"},
    "tomo_service": {"type": "str", "default": "tomo.service"},
    "tomo_service_manager": {"type": "str", "default": "systemd", "choices": ["auto", "systemd", "process"]},
    "tomo_pidfile": {"type": "path", "default": "/run/tomo.pid"},
    "tomo_start_command": {"type": "list", "elements": "str", "default": []},
    "tomo_environment": {"type": "path", "default": "/etc/tomo/environment"},
    "tomo_known_hosts": {"type": "path", "default": "/var/lib/tomo/.ssh/known_hosts"},
    "tomo_categories": {"type": "list", "elements": "str", "default": list(CATEGORIES)},
    "tomo_version": {"type": "str"},
    "tomo_settle": {"type": "float", "default": 2.0},
}


# What every application-level module takes (app_backup, app_restore): the application and where it is.
APP_SPEC: dict[str, dict[str, object]] = {
    "app": {"type": "str", "required": True, "choices": list(APPS)},
    "health_timeout": {"type": "float", "default": 60.0},
    **TENEMENT_SPEC,
    **TOMO_SPEC,
}


def ten_command(given: object = None) -> str:
    """The ``ten`` command: the one given, else the one on PATH, else ``/usr/local/bin/ten``."""
    if given:
        return str(given)
    return shutil.which("ten") or shutil.which("ten", path="/usr/local/bin") or "/usr/local/bin/ten"


def instance_data(value: object) -> dict[str, list[str]]:
    """``tenement_instance_data``: per service, the path templates of its instances' data."""
    if not isinstance(value, Mapping):
        raise AppError(f"tenement_instance_data must map service names to lists of paths, not {value!r}")
    found: dict[str, list[str]] = {}
    for service, paths in value.items():
        if isinstance(paths, str):
            paths = [paths]
        if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths) or not paths:
            raise AppError(f"tenement_instance_data for service {service} must be a list of paths, not {paths!r}")
        found[str(check_name("service", service))] = list(paths)
    return found


def _default(spec: dict[str, dict[str, object]], key: str) -> object:
    value = spec[key].get("default")
    return list(value) if isinstance(value, list) else value


def application(name: str, options: Mapping[str, object]) -> Application:
    """The application ``name`` with ``options`` (``tenement_*`` / ``tomo_*``; missing ones take defaults)."""

    def get(spec: dict[str, dict[str, object]], key: str) -> object:
        value = options.get(key)
        return _default(spec, key) if value is None else value

    if name == "tenement":
        t = TENEMENT_SPEC
        return Tenement(
            TenementSettings(
                config_dir=str(get(t, "tenement_config_dir")),
                data_dir=str(options["tenement_data_dir"]) if options.get("tenement_data_dir") else None,
                server=str(get(t, "tenement_server")),
                ten_bin=ten_command(options.get("tenement_ten_bin")),
                service_manager=str(get(t, "tenement_service_manager")),
                unit=str(get(t, "tenement_unit")),
                pidfile=str(get(t, "tenement_pidfile")),
                start_command=[str(a) for a in get(t, "tenement_start_command")],  # type: ignore[attr-defined]
                acme=bool(get(t, "tenement_acme")),
                instance_data=instance_data(get(t, "tenement_instance_data")),
            )
        )
    if name == "tomo":
        m = TOMO_SPEC
        return Tomo(
            TomoSettings(
                database=str(options.get("tomo_database") or ""),
                service=str(get(m, "tomo_service")),
                service_manager=str(get(m, "tomo_service_manager")),
                pidfile=str(get(m, "tomo_pidfile")),
                start_command=[str(a) for a in get(m, "tomo_start_command")],  # type: ignore[attr-defined]
                environment=str(get(m, "tomo_environment") or ""),
                known_hosts=str(get(m, "tomo_known_hosts") or ""),
                categories=[str(c) for c in get(m, "tomo_categories")],  # type: ignore[attr-defined]
                version=str(options.get("tomo_version") or ""),
                settle=float(get(m, "tomo_settle")),  # type: ignore[arg-type]
            )
        )
    raise AppError(f"the application must be one of {', '.join(APPS)}, got {name!r}")
