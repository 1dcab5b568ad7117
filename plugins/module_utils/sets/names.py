# Copyright: selfhost.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Set names: ``{app}-{host}-{UTC stamp}-{label}.tar.zst``, and the sidecar files beside each set."""

from __future__ import annotations

import re
import socket
from dataclasses import dataclass
from datetime import datetime, timezone

EXTENSIONS = {"zstd": ".tar.zst", "gzip": ".tar.gz"}


_STAMP = "%Y%m%dT%H%M%SZ"


_TOKEN_RE = re.compile(r"[^A-Za-z0-9_.-]+")


_NAME_RE = re.compile(
    r"^(?P<app>[A-Za-z0-9_.]+)-(?P<host>.+)-(?P<stamp>\d{8}T\d{6}Z)-(?P<label>[A-Za-z0-9_.-]+)\.tar\.(?:zst|gz)$"
)


def default_host() -> str:
    """This host's short name, as set names use it."""
    return socket.gethostname().split(".")[0]


def token(value: str) -> str:
    """``value`` made safe for a file name: letters, digits, ``_ . -``."""
    cleaned = _TOKEN_RE.sub("_", value).strip("._-")
    return cleaned or "x"


def set_name(app: str, host: str, when: datetime, label: str, compression: str) -> str:
    """``{app}-{host}-{UTC timestamp}-{label}.tar.zst``: sets of one app and host sort by time."""
    stamp = when.astimezone(timezone.utc).strftime(_STAMP)
    return f"{token(app).replace('-', '_')}-{token(host)}-{stamp}-{token(label)}{EXTENSIONS[compression]}"


def parse_name(name: str) -> dict[str, object] | None:
    """The parts of a set's file name, or None when it is not one."""
    match = _NAME_RE.match(name)
    if not match:
        return None
    when = datetime.strptime(match["stamp"], _STAMP).replace(tzinfo=timezone.utc)
    return {"app": match["app"], "host": match["host"], "time": when, "label": match["label"]}


@dataclass(frozen=True)
class Sidecars:
    checksum: str
    manifest: str
    verified: str
    schedules: str  # the schedules it was made for (sets/tags.py)
    drilled: str  # its last DR drill (sets/verify.py, record_drill)

    @classmethod
    def of(cls, archive: str) -> Sidecars:
        return cls(
            archive + ".sha256",
            archive + ".manifest.json",
            archive + ".verified.json",
            archive + ".schedules.json",
            archive + ".drilled.json",
        )


def is_set_file(name: str) -> bool:
    return not name.startswith(".") and any(name.endswith(ext) for ext in EXTENSIONS.values())
