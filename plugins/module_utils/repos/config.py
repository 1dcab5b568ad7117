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
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Mapping
from typing import Any

from .. import safe_fs
from .._common import Error
from .restic import STORE_ENV, Repository

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")
RETENTION = ("keep_last", "keep_hourly", "keep_daily", "keep_weekly", "keep_monthly", "keep_yearly", "keep_within")
_KNOWN = {"location", "password_file", "password", "env_file", "required", "init", "keep_all", "timezone", *RETENTION}
_LIMIT = 64 * 1024


class RepoConfigError(Error):
    """A ``[repositories.NAME]`` table that cannot be used, in one sentence (never quoting a secret)."""


def _private_file(path: object, what: str) -> str:
    if not isinstance(path, str) or not os.path.isabs(path):
        raise RepoConfigError(f"{what} must be an absolute path")
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


def read_env_file(path: str, what: str) -> dict[str, str]:
    """``KEY=VALUE`` lines (``export`` and quotes allowed, ``#`` comments); only a store's variables."""
    try:
        text = safe_fs.read_regular(path, _LIMIT).decode("utf-8")
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


def repository(name: str, table: object) -> Repository:
    """One ``[repositories.NAME]`` table, checked."""
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
        password_file = _private_file(table["password_file"], f"{where} password_file")
    if not password and not password_file:
        raise RepoConfigError(f"{where} needs password_file (or password)")
    env = (
        read_env_file(_private_file(table["env_file"], f"{where} env_file"), f"{where} env_file")
        if "env_file" in table
        else {}
    )
    flags = {}
    for key, default in (("required", True), ("init", False)):
        value = table.get(key, default)
        if not isinstance(value, bool):
            raise RepoConfigError(f"{where}: {key} must be true or false")
        flags[key] = value
    retention: dict[str, Any] = {k: v for k, v in table.items() if k in (*RETENTION, "keep_all", "timezone")}
    return Repository(name, location.strip(), password_file, password, env, flags["required"], flags["init"], retention)


def repositories(config: Mapping[str, Any]) -> dict[str, Repository]:
    """Every repository of config.toml's ``[repositories]``."""
    tables = config.get("repositories") or {}
    if not isinstance(tables, Mapping):
        raise RepoConfigError("[repositories] must be a table of repositories")
    return {name: repository(str(name), table) for name, table in tables.items()}
