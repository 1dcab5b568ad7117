# Copyright: selfhost.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The repositories of a host: config.toml's ``[repositories.NAME]`` tables, checked, as :class:`Repository`.

```toml
[repositories.offsite]
location = "s3:https://s3.example.com/backups-web1"
password_file = "/etc/selfhost-dr/repositories/offsite.password"  # 0600; or password = "..." (config.toml is 0600)
env_file = "/etc/selfhost-dr/repositories/offsite.env"            # AWS_ACCESS_KEY_ID=... lines, 0600
required = false                                                   # a failure is a warning, not a failed run
init = true                                                        # create it when there is none
keep_daily = 7                                                     # its retention; none: [retention]
```

An ``env_file`` is read as ``KEY=VALUE`` lines (``#`` comments, optional quotes); only the variables a store takes
(``AWS_*``, ``B2_*``, ``RCLONE_*``, ...). Neither it nor the password file may be readable by other users.

:func:`from_entries` turns the roles' ``dr_repositories`` (a list of repositories, each with its password and the
store's credentials as values or as files on the host) into these tables and the secret files that go beside
``config.toml`` (``repositories/NAME.password``, ``repositories/NAME.env``, mode 0600), checked by the same rules as
a table read back: one set of rules for the role, the modules and the host command.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .. import safe_fs
from .._common import Error
from ..sets.retention import RetentionError, parse_duration, timezone_named
from .restic import STORE_ENV, Repository, Restic, public

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")
RETENTION = ("keep_last", "keep_hourly", "keep_daily", "keep_weekly", "keep_monthly", "keep_yearly", "keep_within")
_KNOWN = {"location", "password_file", "password", "env_file", "required", "init", "keep_all", "timezone", *RETENTION}
_LIMIT = 64 * 1024


class RepoConfigError(Error):
    """A ``[repositories.NAME]`` table that cannot be used, in one sentence (never quoting a secret)."""


def _private_file(path: object, what: str, pending: Mapping[str, bytes] | None = None) -> str:
    if not isinstance(path, str) or not os.path.isabs(path):
        raise RepoConfigError(f"{what} must be an absolute path")
    if pending is not None and path in pending:  # about to be written, mode 0600, by the caller
        return path
    try:
        st = os.stat(path)
    except OSError as exc:
        raise RepoConfigError(f"{what} {path} cannot be read: {exc.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise RepoConfigError(f"{what} {path} is not a regular file")
    if st.st_mode & 0o077:
        raise RepoConfigError(
            f"{what} {path} can be read by other users (mode {stat.S_IMODE(st.st_mode):04o}): chmod 600 it"
        )
    return path


def read_env_file(path: str, what: str, pending: Mapping[str, bytes] | None = None) -> dict[str, str]:
    """``KEY=VALUE`` lines (``export`` and quotes allowed, ``#`` comments); only a store's variables."""
    try:
        blob = pending[path] if pending is not None and path in pending else safe_fs.read_regular(path, _LIMIT)
        text = blob.decode("utf-8")
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise RepoConfigError(f"{what} {path} cannot be read: {getattr(exc, 'strerror', None) or exc}") from None
    env: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.removeprefix("export ").partition("=")
        key = key.strip()
        if not sep or not STORE_ENV.match(key):
            raise RepoConfigError(f"{what} {path} line {number} is not a store's variable (AWS_*, B2_*, RCLONE_*, ...)")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        env[key] = value
    return env


def _retention(table: Mapping[str, Any], where: str) -> dict[str, Any]:
    """The table's keep_* rules, checked as the prune of sets checks its own."""
    found: dict[str, Any] = {}
    for key in (*RETENTION, "keep_all", "timezone"):
        if key not in table:
            continue
        value = table[key]
        if key == "keep_all":
            ok = isinstance(value, bool)
            want = "true or false"
        elif key in ("keep_within", "timezone"):
            ok = isinstance(value, str) and bool(value.strip())
            want = "a duration such as 7d, 2w, 6m or 1y" if key == "keep_within" else "a time zone such as UTC"
        else:
            ok = isinstance(value, int) and not isinstance(value, bool) and value >= 0
            want = "a whole number, 0 or more"
        if not ok:
            raise RepoConfigError(f"{where}: {key} must be {want}, not {value!r}")
        try:
            if key == "keep_within":
                parse_duration(value)
            elif key == "timezone":
                timezone_named(value)
        except RetentionError as exc:
            raise RepoConfigError(f"{where}: {exc}") from None
        found[key] = value
    return found


def repository(name: str, table: object, pending: Mapping[str, bytes] | None = None) -> Repository:
    """One ``[repositories.NAME]`` table, checked. ``pending`` holds the secret files about to be written (by
    :func:`from_entries`' caller): they count as there, private, with that content."""
    where = f"[repositories.{name}]"
    if not NAME_RE.match(name):
        raise RepoConfigError(f"{where}: a repository's name is letters, digits, '.', '_' and '-'")
    if not isinstance(table, Mapping):
        raise RepoConfigError(f"{where} must be a table")
    for key in table:
        if key not in _KNOWN:
            raise RepoConfigError(f"{where}: {key} is not a repository setting ({', '.join(sorted(_KNOWN))})")
    location = table.get("location")
    if not isinstance(location, str) or not location.strip() or "\n" in location:
        raise RepoConfigError(f"{where} needs location: a path, sftp:, s3:, rest: or rclone: location")
    password = table.get("password", "")
    if not isinstance(password, str):
        raise RepoConfigError(f"{where}: password must be a string")
    password_file = ""
    if "password_file" in table:
        password_file = _private_file(table["password_file"], f"{where} password_file", pending)
    if not password and not password_file:
        raise RepoConfigError(f"{where} needs password_file (or password)")
    env = (
        read_env_file(_private_file(table["env_file"], f"{where} env_file", pending), f"{where} env_file", pending)
        if "env_file" in table
        else {}
    )
    flags = {}
    for key, default in (("required", True), ("init", False)):
        value = table.get(key, default)
        if not isinstance(value, bool):
            raise RepoConfigError(f"{where}: {key} must be true or false")
        flags[key] = value
    retention = _retention(table, where)
    return Repository(name, location.strip(), password_file, password, env, flags["required"], flags["init"], retention)


def repositories(config: Mapping[str, Any]) -> dict[str, Repository]:
    """Every repository of config.toml's ``[repositories]``."""
    tables = config.get("repositories") or {}
    if not isinstance(tables, Mapping):
        raise RepoConfigError("[repositories] must be a table of repositories")
    return {name: repository(str(name), table) for name, table in tables.items()}


# -- dr_repositories: the roles' list, as tables of config.toml and the secret files beside it -------------------

ENTRY_KEYS = (
    "name",
    "location",
    "password",
    "password_file",
    "credentials",
    "env_file",
    "required",
    "init",
    "retention",
)
PASSWORD_SUFFIX = ".password"  # noqa: S105 - a file name's end, not a password
ENV_SUFFIX = ".env"


@dataclass
class Planned:
    """What ``dr_repositories`` puts on a host: config.toml's ``[repositories]`` tables, and the secret files (path:
    bytes, each written mode 0600) that hold the passwords and the stores' credentials given as values."""

    tables: dict[str, dict[str, Any]] = field(default_factory=dict)
    files: dict[str, bytes] = field(default_factory=dict, repr=False)
    repositories: dict[str, Repository] = field(default_factory=dict, repr=False)

    def secret_in_config(self) -> bool:
        """Whether config.toml itself holds a secret (credentials in a location), so must be 0600."""
        return any(public(str(t["location"])) != str(t["location"]).strip() for t in self.tables.values())


def _secret_value(value: object, where: str, what: str) -> str:
    """A password or a credential's value as it can go into a file read back line by line (never quoted)."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not value:
        raise RepoConfigError(f"{where}: {what} must be a non-empty string")
    if any(c in value for c in "\r\n\x00"):
        raise RepoConfigError(f"{where}: {what} holds a line break, which its file cannot keep")
    return value


def _entry(index: int, entry: object, directory: str, files: dict[str, bytes]) -> tuple[str, dict[str, Any]]:
    """One item of ``dr_repositories`` as its table; its secret files are added to ``files``."""
    if not isinstance(entry, Mapping):
        raise RepoConfigError(f"dr_repositories[{index}] must be a mapping with a name and a location")
    given = {k: v for k, v in entry.items() if v is not None}
    name = given.get("name")
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise RepoConfigError(
            f"dr_repositories[{index}]: a repository's name is 1 to 64 letters, digits, '.', '_' and '-' "
            "(starting with a letter or digit)"
        )
    where = f"repository {name}"
    unknown = sorted(str(k) for k in given if k not in ENTRY_KEYS)
    if unknown:
        raise RepoConfigError(f"{where}: {unknown[0]} is not a repository setting ({', '.join(ENTRY_KEYS)})")
    table: dict[str, Any] = {"location": given.get("location")}
    if not isinstance(table["location"], str):
        raise RepoConfigError(f"{where} needs location: a path, sftp:, s3:, rest: or rclone: location")
    table["location"] = table["location"].strip()
    if "password" in given and "password_file" in given:
        raise RepoConfigError(f"{where}: give password or password_file, not both")
    if "password" in given:
        password = _secret_value(given["password"], where, "password")
        if password != password.strip():
            raise RepoConfigError(f"{where}: password begins or ends with blanks, which restic drops from its file")
        table["password_file"] = os.path.join(directory, name + PASSWORD_SUFFIX)
        files[table["password_file"]] = (password + "\n").encode()
    elif "password_file" in given:
        table["password_file"] = given["password_file"]
    if "credentials" in given and "env_file" in given:
        raise RepoConfigError(f"{where}: give credentials or env_file, not both")
    credentials = given.get("credentials")
    if credentials:
        if not isinstance(credentials, Mapping):
            raise RepoConfigError(f"{where}: credentials must be a mapping of the store's variables")
        lines = ["# Written by selfhost.dr (dr_repositories); read by selfhost-dr. Edits are overwritten."]
        for key, value in credentials.items():
            if not isinstance(key, str) or not STORE_ENV.match(key):
                raise RepoConfigError(
                    f"{where}: credentials {key} is not a variable a store takes (AWS_*, B2_*, RCLONE_*, ...)"
                )
            lines.append(f'{key}="{_secret_value(value, where, f"credentials {key}")}"')
        table["env_file"] = os.path.join(directory, name + ENV_SUFFIX)
        files[table["env_file"]] = ("\n".join(lines) + "\n").encode()
    elif "env_file" in given:
        table["env_file"] = given["env_file"]
    for key in ("required", "init"):
        if key in given:
            table[key] = given[key]
    retention = given.get("retention") or {}
    if not isinstance(retention, Mapping):
        raise RepoConfigError(f"{where}: retention must be a mapping of keep_* rules")
    for key, value in retention.items():
        if key not in (*RETENTION, "keep_all", "timezone"):
            raise RepoConfigError(
                f"{where}: retention {key} is not a rule ({', '.join((*RETENTION, 'keep_all', 'timezone'))})"
            )
        if value is not None:
            table[key] = value
    return name, table


def from_entries(entries: object, directory: str) -> Planned:
    """``dr_repositories`` checked, every entry before anything is written: the tables and the secret files
    (``DIRECTORY/NAME.password`` for a ``password``, ``DIRECTORY/NAME.env`` for ``credentials``). A password or an
    env file given as a path is the host's own file, used where it is (it must be there, mode 0600)."""
    if entries is None:
        entries = []
    if not isinstance(entries, (list, tuple)):
        raise RepoConfigError("dr_repositories must be a list of repositories")
    if not os.path.isabs(directory):
        raise RepoConfigError(f"the directory of the repositories' secret files must be absolute, not {directory!r}")
    planned = Planned()
    for index, entry in enumerate(entries):
        name, table = _entry(index, entry, directory, planned.files)
        if name in planned.tables:
            raise RepoConfigError(f"two repositories are named {name}")
        planned.tables[name] = table
    for name, table in planned.tables.items():
        planned.repositories[name] = repository(name, table, planned.files)
    return planned


def secret_files(directory: str) -> list[str]:
    """The secret files in ``directory`` (``*.password``, ``*.env``; what :func:`from_entries` writes there)."""
    try:
        names = sorted(os.listdir(directory))
    except FileNotFoundError:
        return []
    return [os.path.join(directory, n) for n in names if n.endswith((PASSWORD_SUFFIX, ENV_SUFFIX))]


def open_repositories(
    config: Mapping[str, Any], names: list[str], config_path: str, binary: str = "", cache_dir: str = ""
) -> list[Restic]:
    """The repositories ``names`` of config.toml (every one when ``names`` is empty), ready for restic. Refused: an
    unknown name, no repository at all, and a config.toml that others can read while it holds a secret of one."""
    known = repositories(config)
    chosen = list(dict.fromkeys(names)) or list(known)
    if not chosen:
        raise RepoConfigError(f"{config_path} has no [repositories] (dr_repositories is empty)")
    unknown = [n for n in chosen if n not in known]
    if unknown:
        raise RepoConfigError(f"there is no repository {unknown[0]!r} in {config_path} ({', '.join(known) or 'none'})")
    secret = [n for n in chosen if known[n].password or public(known[n].location) != known[n].location]
    try:
        readable = bool(os.stat(config_path).st_mode & 0o077)
    except OSError:
        readable = False
    if secret and readable:
        raise RepoConfigError(
            f"{config_path} holds a secret of repository {secret[0]} (its password, or credentials in its location) "
            "and can be read by other users: chmod 600 it"
        )
    restic = config.get("restic") or {}
    if not isinstance(restic, Mapping):
        raise RepoConfigError("[restic] must be a table")
    binary = binary or str(restic.get("binary") or "restic")
    return [Restic(known[n], binary=binary, cache_dir=cache_dir) for n in chosen]


# -- the modules' view: repositories named in the host command's configuration -------------------------------------

DEFAULT_CONFIG = "/etc/selfhost-dr/config.toml"
# What the modules that use repositories add to their argument spec (doc fragment selfhost.dr.repository).
MODULE_SPEC: dict[str, dict[str, object]] = {
    "repositories": {"type": "list", "elements": "str", "default": []},
    "config_path": {"type": "path", "default": DEFAULT_CONFIG},
}


def load(path: str) -> dict[str, Any]:
    """The host command's configuration (config.toml), for the repositories in it."""
    try:
        import tomllib
    except ImportError:  # Python < 3.11
        raise RepoConfigError("repositories need Python 3.11 or newer (tomllib) on the host") from None
    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise RepoConfigError(
            f"{path} does not exist: the host_command role writes it, with dr_repositories as [repositories]"
        ) from None
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise RepoConfigError(f"{path} cannot be read: {getattr(exc, 'strerror', None) or exc}") from None


def from_params(params: Mapping[str, Any], state_dir: str) -> list[Restic]:
    """The repositories a module's ``repositories`` and ``config_path`` name, restic's cache in ``state_dir``."""
    path = str(params.get("config_path") or DEFAULT_CONFIG)
    names = [str(n) for n in params.get("repositories") or []]
    return open_repositories(load(path), names, path, cache_dir=os.path.join(state_dir, "restic-cache"))
