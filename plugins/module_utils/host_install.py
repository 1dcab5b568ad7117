# Copyright: selfhost.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Installing the host command: ``selfhost-dr`` as one executable zip (this directory as the package
``selfhost_dr``, standard library only) and ``/etc/selfhost-dr/config.toml`` written from the roles' variables.

Both are written only when their bytes change (the zip is built deterministically), atomically, never through a
link."""

from __future__ import annotations

import io
import os
import stat
import zipfile
from collections.abc import Mapping

from . import cli, safe_fs, toml_writer
from ._common import Error, atomic_write, fsync_dir
from .repos import config as repo_config

PACKAGE = "selfhost_dr"
_EPOCH = (2020, 1, 1, 0, 0, 0)
_MAIN = f"import sys\nfrom {PACKAGE}.cli import main\n\nsys.exit(main())\n"


def package_files() -> dict[str, bytes]:
    """Every ``.py`` of the core, by its path below ``module_utils``: read from the directory, or from the zip
    Ansible runs a module from (which holds every file the host command imports)."""
    origin = str(cli.__spec__.origin if cli.__spec__ else cli.__file__)
    base = os.path.dirname(origin)
    files: dict[str, bytes] = {}
    if ".zip" + os.sep in base or not os.path.isdir(base):
        archive, _, inner = base.partition(".zip" + os.sep)
        with zipfile.ZipFile(archive + ".zip") as source:
            prefix = inner.rstrip("/") + "/"
            for name in source.namelist():
                if name.startswith(prefix) and name.endswith(".py"):
                    files[name[len(prefix) :]] = source.read(name)
        return files
    for top, dirs, names in os.walk(base):
        dirs[:] = sorted(d for d in dirs if not d.startswith((".", "__")))
        for name in sorted(names):
            if name.endswith(".py"):
                path = os.path.join(top, name)
                with open(path, "rb") as handle:
                    files[os.path.relpath(path, base)] = handle.read()
    return files


def zipapp(files: Mapping[str, bytes], interpreter: str = "/usr/bin/python3") -> bytes:
    """An executable zip of ``files`` as the package ``selfhost_dr``; the same files give the same bytes."""
    members = {f"{PACKAGE}/{name}": data for name, data in files.items()}
    for name in list(members):
        parts = name.split("/")[:-1]
        for depth in range(1, len(parts) + 1):
            members.setdefault("/".join(parts[:depth]) + "/__init__.py", b"")
    members["__main__.py"] = _MAIN.encode()
    buffer = io.BytesIO()
    buffer.write(f"#!{interpreter}\n".encode())
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as out:
        for name in sorted(members):
            info = zipfile.ZipInfo(name, _EPOCH)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            out.writestr(info, members[name])
    return buffer.getvalue()


def _toml_value(value: object, where: str) -> str:
    if isinstance(value, Mapping):  # config.toml's tables are two levels deep at most: no inline tables
        raise Error(f"{where} cannot be written to config.toml: {type(value).__name__} is not a TOML value")
    return toml_writer.value(value, where, "config.toml")


def _key(key: object, where: str) -> str:
    if not isinstance(key, str) or not toml_writer.BARE_KEY.match(key):
        raise Error(f"{where}{key!r} cannot be a key of config.toml: use letters, digits, '_' and '-'")
    return key


def toml(config: Mapping[str, object]) -> str:
    """``config`` as TOML: top-level values, then one table per mapping, and one sub-table per mapping in a table
    (``[tenement.instance_data]``; two levels deep at most; None left out)."""
    lines = ["# Written by selfhost.dr (the roles' dr_* variables); read by selfhost-dr. Edits are overwritten."]
    tables = {k: v for k, v in config.items() if isinstance(v, Mapping)}
    for key, value in config.items():
        if value is not None and key not in tables:
            lines.append(f"{_key(key, '')} = {_toml_value(value, key)}")
    for name, table in tables.items():
        lines.append(f"\n[{_key(name, '')}]")
        subtables = {k: v for k, v in table.items() if isinstance(v, Mapping)}
        for key, value in table.items():
            if value is not None and key not in subtables:
                lines.append(f"{_key(key, f'[{name}] ')} = {_toml_value(value, f'{name}.{key}')}")
        for sub, inner in subtables.items():
            lines.append(f"\n[{name}.{_key(sub, f'[{name}] ')}]")
            for key, value in inner.items():
                if value is not None:
                    where = f"{name}.{sub}.{key}"
                    lines.append(f"{_key(key, f'[{name}.{sub}] ')} = {_toml_value(value, where)}")
    return "\n".join(lines) + "\n"


def config_mode(config: Mapping[str, object]) -> int:
    """config.toml's mode: 0600 when it holds a heartbeat URL (they carry tokens) or a repository's secret (a
    password, or credentials in a location), else 0644."""
    beats = config.get("heartbeat")
    secret = isinstance(beats, Mapping) and any(k != "timeout" and v for k, v in beats.items())
    tables = config.get("repositories")
    for table in tables.values() if isinstance(tables, Mapping) else ():
        location = str(table.get("location", "")) if isinstance(table, Mapping) else ""
        secret = secret or bool(table.get("password")) or repo_config.public(location) != location
    return 0o600 if secret else 0o644


def repository_files(planned: repo_config.Planned, directory: str, check: bool = False) -> tuple[list[str], list[str]]:
    """Put the repositories' secret files in ``directory`` (0700; each file 0600, written only when its bytes change,
    never through a link) and remove the secret files there that no repository uses any more (a repository no
    longer listed, or one whose password is now a file of its own). Returns (written, removed), or what would be."""
    written = [path for path, data in planned.files.items() if _differs(path, data)]
    used = {str(t.get(k)) for t in planned.tables.values() for k in ("password_file", "env_file") if t.get(k)}
    removed = [path for path in repo_config.secret_files(directory) if path not in used]
    if check:
        return written, removed
    if planned.files:
        parent = os.path.dirname(os.path.abspath(directory))
        if not os.path.isdir(parent):
            safe_fs.makedirs_private(parent, mode=0o755)
        safe_fs.makedirs_private(directory, mode=0o700)
    for path in written:
        write_if_changed(path, planned.files[path], 0o600)
    for path in removed:
        os.unlink(path)
    if removed:
        fsync_dir(directory)
    return written, removed


def _differs(path: str, data: bytes) -> bool:
    return write_if_changed(path, data, 0o600, check=True)


def write_if_changed(path: str, data: bytes, mode: int, check: bool = False) -> bool:
    """Put ``data`` at ``path`` (mode ``mode``) unless it holds exactly that; whether it changed (or would).
    The file is replaced by a rename, never written through a link; a directory or a FIFO there is refused."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        st = None
    if st is not None and stat.S_ISLNK(st.st_mode):
        current = None  # replaced by the rename, never followed
    elif st is not None:
        try:
            current = safe_fs.read_regular(path, limit=len(data) + 1)
        except safe_fs.NotRegularError as exc:
            raise Error(f"cannot write {path}: something that is not a regular file is there") from exc
        except safe_fs.TooLargeError:
            current = None
        if stat.S_IMODE(st.st_mode) != mode or st.st_uid != os.geteuid():
            current = None
    else:
        current = None
    if current == data:
        return False
    if check:
        return True
    parent = os.path.dirname(path)
    if not os.path.isdir(parent):
        safe_fs.makedirs_private(parent, mode=0o755)
    atomic_write(path, data, mode)
    fsync_dir(parent)
    return True
