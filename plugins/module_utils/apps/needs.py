# Copyright: selfhost.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What an application's configuration needs of the server that runs it, beyond its data: the TCP ports its own
server process listens on, and the programs its configuration runs (a tenement service's command, the script its
arguments name, its working directory). A migration reads them on the old server and checks them on the new one
before anything changes (the preflight), so a new server that could not run what it receives is refused before the
old one is frozen, not rolled back after it.

Read from ``/proc`` only (``net/tcp``, ``net/tcp6``, each process's ``fd`` links, ``stat``, ``comm``, and the server's
``environ`` for its PATH), never by following a link into a file; the lists that travel from the old server are
checked as data (types, bounds) before use."""

from __future__ import annotations

import os
import shutil
import socket
from dataclasses import dataclass, field

from .._common import AppError
from .service import Service

# systemd's default PATH for services: where a service's bare command name is looked for, unless its env sets PATH.
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_LISTEN = "0A"
_MAX_ITEMS = 4096
_MAX_TEXT = 4096
ROLES = ("command", "argument", "workdir")  # what a program is to the service that runs it
WILDCARDS = ("0.0.0.0", "::")  # noqa: S104 - compared with, never bound


@dataclass
class Needs:
    """``ports``: each address and port the application's server process listens on, with what listens
    (``{"port", "address", "what"}``). ``programs``: absolute paths the configuration runs or names (``{"path",
    "service", "as"}``, ``as`` one of :data:`ROLES`). ``commands``: bare command names, looked for on the PATH the old
    server found them on (``{"name", "service", "path"}``)."""

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
        for key, want in (("ports", ("port", "address", "what")), ("programs", ("path", "service", "as")),
                          ("commands", ("name", "service", "path"))):  # fmt: skip
            items = data.get(key) or []
            if not isinstance(items, list) or len(items) > _MAX_ITEMS:
                raise AppError(f"the old server's needs have a malformed {key} list")
            for item in items:
                if not isinstance(item, dict) or any(k not in item for k in want):
                    raise AppError(f"the old server's needs have a malformed entry in {key}: {item!r:.200}")
                entry = {k: item[k] if key == "ports" and k == "port" else str(item[k]) for k in want}
                problem = _malformed(key, entry)
                if problem:
                    raise AppError(f"the old server's needs {problem}")
                getattr(found, key).append(entry)
        return found


def _malformed(key: str, entry: dict[str, object]) -> str:
    texts = [str(v) for k, v in entry.items() if not (key == "ports" and k == "port")]
    if any(len(t) > _MAX_TEXT or "\0" in t for t in texts):
        return f"have an entry in {key} that is too long or holds a NUL byte"
    if key == "ports":
        port = entry["port"]
        if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
            return f"name port {port!r:.40}, which is no TCP port"
        try:
            socket.inet_pton(socket.AF_INET6 if ":" in str(entry["address"]) else socket.AF_INET, str(entry["address"]))
        except OSError:
            return f"name the address {str(entry['address'])!r:.60}, which is no IP address"
    elif key == "programs":
        if not os.path.isabs(str(entry["path"])):
            return f"name {str(entry['path'])!r:.200}, which is not an absolute path"
        if entry["as"] not in ROLES:
            return f"name a program as {str(entry['as'])!r:.40}, not one of {', '.join(ROLES)}"
    elif not entry["name"] or "/" in str(entry["name"]):
        return f"name the command {str(entry['name'])!r:.200}, which is not a bare command name"
    return ""


def _address(hex_address: str) -> str:
    """An address of /proc/net/tcp or tcp6 (each 32-bit word in the host's byte order, little-endian here) as text;
    an IPv4-mapped IPv6 address as its IPv4 address."""
    raw = bytes.fromhex(hex_address)
    if len(raw) == 4:
        return socket.inet_ntop(socket.AF_INET, raw[::-1])
    text = socket.inet_ntop(socket.AF_INET6, b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4)))
    return text.removeprefix("::ffff:") if text.startswith("::ffff:") and "." in text else text


def listening(pids: set[int] | None = None) -> dict[tuple[str, int], set[int]]:
    """Each TCP address and port with a listening socket (IPv4 or IPv6) on this host, and the processes holding
    one: all of them, or those of ``pids`` only (what none of ``pids`` holds is left out)."""
    inodes: dict[str, tuple[str, int]] = {}  # socket inode -> (address, port)
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table, encoding="ascii") as handle:
                lines = handle.read().splitlines()[1:]
        except FileNotFoundError:
            continue
        for line in lines:
            cols = line.split()
            if len(cols) > 9 and cols[3] == _LISTEN:
                address, port = cols[1].rsplit(":", 1)
                inodes[cols[9]] = (_address(address), int(port, 16))
    held: dict[tuple[str, int], set[int]] = {}
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
                parent = int(handle.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):  # gone since the listing
            continue
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


def environment_path(pid: int) -> str:
    """The PATH in the environment of process ``pid`` ("" when it has none or cannot be read)."""
    if pid <= 0:
        return ""
    try:
        with open(f"/proc/{pid}/environ", "rb") as handle:
            data = handle.read(1 << 20)
    except OSError:
        return ""
    for item in data.split(b"\0"):
        if item.startswith(b"PATH="):
            return item[5:].decode("utf-8", "replace")
    return ""


def main_pid(service: Service) -> int:
    """The service's main pid, 0 when it does not run or cannot be asked."""
    try:
        return service.main_pid()
    except AppError:
        return 0


def ports_of(pid: int, what: str) -> list[dict[str, object]]:
    """The addresses and ports the process ``pid`` listens on itself (not its children: tenement's instances take
    ports it picks anew on every spawn)."""
    if pid <= 0:
        return []
    return [{"port": port, "address": address, "what": what} for address, port in sorted(listening({pid}))]


def _clash(wanted: str, held: str) -> bool:
    """Whether a socket bound to ``held`` keeps one from binding ``wanted`` on the same port."""
    return wanted in WILDCARDS or held in WILDCARDS or wanted == held


def _holders(pids: list[int]) -> str:
    named = ", ".join(f"{command_name(p)} (pid {p})" for p in pids[:3])
    return named + (f" and {len(pids) - 3} more" if len(pids) > 3 else "")


def unmet(needs: Needs, own: set[int]) -> list[str]:
    """What of ``needs`` this server lacks, each as a clause. ``own``: the processes of the application here (a port
    they hold is freed when the migration stops it)."""
    problems: list[str] = []
    held = listening() if needs.ports else {}
    for need in needs.ports:
        port, address = int(need["port"]), str(need["address"])  # type: ignore[call-overload]
        others = sorted({p for (a, n), pids in held.items() if n == port and _clash(address, a) for p in pids} - own)
        if others:
            problems.append(
                f"port {port} ({need['what']}'s on the old server, at {address}) is taken by {_holders(others)}"
            )
    for program in needs.programs:
        path, service, role = program["path"], program["service"], program["as"]
        if role == "workdir" and not os.path.isdir(path):
            problems.append(f"{path} (the working directory of service {service}) is missing")
        elif role == "command" and not (os.path.isfile(path) and os.access(path, os.X_OK)):
            problems.append(f"{path} (the program of service {service}) is missing or not executable")
        elif role == "argument" and not os.path.exists(path):
            problems.append(f"{path} (named by the command of service {service}) is missing")
    for command in needs.commands:
        if shutil.which(command["name"], path=command["path"] or DEFAULT_PATH) is None:
            problems.append(f"command {command['name']} (run by service {command['service']}) is not on its PATH")
    return problems
