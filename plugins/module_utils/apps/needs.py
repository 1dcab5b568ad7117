# Copyright: selfhost.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What an application's configuration needs of the server that runs it, beyond its data: the TCP ports its own
server process listens on, and the programs its configuration runs (a tenement service's command, the script its
arguments name, its working directory). A migration reads them on the old server and checks them on the new one
before anything changes (the preflight), so a new server that could not run what it receives is refused before the
old one is frozen, not rolled back after it.

Read from ``/proc`` only (``net/tcp``, ``net/tcp6``, each process's ``fd`` links, ``stat``), never by following a
link into a file; the lists that travel from the old server are checked as data (types, bounds) before use."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field

from .._common import AppError
from .service import Service

# systemd's default PATH for services: where a service's bare command name is looked for, unless its env sets PATH.
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_LISTEN = "0A"
_MAX_ITEMS = 4096


@dataclass
class Needs:
    """``ports``: each port the application's server process listens on, with what listens (``{"port", "what"}``).
    ``programs``: absolute paths the configuration runs or names (``{"path", "service", "as"}``, ``as`` one of
    ``command``, ``argument``, ``workdir``). ``commands``: bare command names looked for on a PATH
    (``{"name", "service", "path"}``)."""

    ports: list[dict[str, object]] = field(default_factory=list)
    programs: list[dict[str, str]] = field(default_factory=list)
    commands: list[dict[str, str]] = field(default_factory=list)

    def to_dict(self) -> dict[str, object]:
        return {"ports": self.ports, "programs": self.programs, "commands": self.commands}

    @classmethod
    def from_dict(cls, data: object) -> Needs:
        """The needs another server reported, checked as data: a malformed entry is an error, not skipped."""
        if data in (None, {}):
            return cls()
        if not isinstance(data, dict):
            raise AppError("the old server's needs are not a mapping")
        found = cls()
        for key, want in (("ports", ("port", "what")), ("programs", ("path", "service", "as")),
                          ("commands", ("name", "service", "path"))):  # fmt: skip
            items = data.get(key) or []
            if not isinstance(items, list) or len(items) > _MAX_ITEMS:
                raise AppError(f"the old server's needs have a malformed {key} list")
            for item in items:
                if not isinstance(item, dict) or any(k not in item for k in want):
                    raise AppError(f"the old server's needs have a malformed entry in {key}: {item!r:.200}")
                if key == "ports":
                    port = item["port"]
                    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
                        raise AppError(f"the old server's needs name port {port!r:.40}, which is no TCP port")
                    found.ports.append({"port": port, "what": str(item["what"])})
                else:
                    entry = {k: str(item[k]) for k in want}
                    if key == "programs" and not os.path.isabs(entry["path"]):
                        raise AppError(f"the old server's needs name {entry['path']!r:.200}, which is not absolute")
                    getattr(found, key).append(entry)
        return found


def listening(pids: set[int] | None = None) -> dict[int, set[int]]:
    """Each TCP port with a listening socket (IPv4 or IPv6) on this host, and the processes holding one: all of
    them, or those of ``pids`` only (a port none of ``pids`` holds is left out)."""
    inodes: dict[str, int] = {}  # socket inode -> port
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table, encoding="ascii") as handle:
                lines = handle.read().splitlines()[1:]
        except FileNotFoundError:
            continue
        for line in lines:
            cols = line.split()
            if len(cols) > 9 and cols[3] == _LISTEN:
                inodes[cols[9]] = int(cols[1].rsplit(":", 1)[1], 16)
    held: dict[int, set[int]] = {}
    for pid in sorted(pids) if pids is not None else _all_pids():
        fd_dir = f"/proc/{pid}/fd"
        try:
            names = os.listdir(fd_dir)
        except OSError:  # gone, or not ours to look at
            continue
        for name in names:
            try:
                target = os.readlink(os.path.join(fd_dir, name))
            except OSError:
                continue
            if target.startswith("socket:[") and target[8:-1] in inodes:
                held.setdefault(inodes[target[8:-1]], set()).add(pid)
    return held


def _all_pids() -> list[int]:
    return sorted(int(n) for n in os.listdir("/proc") if n.isdigit())


def process_tree(pid: int) -> set[int]:
    """``pid`` and every process descended from it (none when ``pid`` is 0 or gone)."""
    if pid <= 0 or not os.path.isdir(f"/proc/{pid}"):
        return set()
    children: dict[int, list[int]] = {}
    for each in _all_pids():
        try:
            with open(f"/proc/{each}/stat", encoding="utf-8", errors="replace") as handle:
                stat = handle.read()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(parent, []).append(each)
    tree, todo = set(), [pid]
    while todo:
        one = todo.pop()
        if one not in tree:
            tree.add(one)
            todo.extend(children.get(one, ()))
    return tree


def command_name(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm", encoding="utf-8", errors="replace") as handle:
            return handle.read().strip()
    except OSError:
        return "?"


def main_pid(service: Service) -> int:
    """The service's main pid, 0 when it does not run or cannot be asked."""
    try:
        return service.main_pid()
    except AppError:
        return 0


def ports_of(pid: int, what: str) -> list[dict[str, object]]:
    """The ports the process ``pid`` listens on itself (not its children: tenement's instances take ports it picks
    anew on every spawn)."""
    if pid <= 0:
        return []
    return [{"port": port, "what": what} for port in sorted(listening({pid}))]


def unmet(needs: Needs, own: set[int], app: str) -> list[str]:
    """One sentence for each need this server does not meet. ``own``: the processes of the application here (a
    port they hold is freed when the migration stops it)."""
    problems: list[str] = []
    ports = listening() if needs.ports else {}
    for need in needs.ports:
        port = int(need["port"])  # type: ignore[call-overload]
        others = sorted(ports.get(port, set()) - own)
        if others:
            holders = ", ".join(f"{command_name(p)} (pid {p})" for p in others[:3])
            problems.append(
                f"port {port}, which {need['what']} listens on at the old server, is taken on the new server by "
                f"{holders}; free it first"
            )
    for program in needs.programs:
        path = program["path"]
        service, role = program["service"], program["as"]
        if role == "workdir":
            if not os.path.isdir(path):
                problems.append(f"the new server has no directory {path}, the working directory of {service}")
        elif role == "command" and not (os.path.isfile(path) and os.access(path, os.X_OK)):
            problems.append(f"the new server has no program {path}, which {service} runs; install it first")
        elif role == "argument" and not os.path.exists(path):
            problems.append(f"the new server lacks {path}, which the command of {app}'s {service} names; install "
                            "it there first")  # fmt: skip
    for command in needs.commands:
        if shutil.which(command["name"], path=command["path"] or DEFAULT_PATH) is None:
            problems.append(
                f"the new server has no command {command['name']} on {service_path(command)}, which "
                f"{command['service']} runs; install it first"
            )
    return problems


def service_path(command: dict[str, str]) -> str:
    return "its PATH" if command["path"] else "the default PATH"
