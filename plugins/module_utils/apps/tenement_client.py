# Copyright: selfhost.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Talk to a tenement host: names, the API, the ``ten`` CLI.

Standard library only: this file runs on managed hosts, in unit tests and as a
plain command when no controller is left.

Facts about tenement 0.2.2 that shape this code (see docs/tenement.md):

* ``ten`` accepts any service or instance name, including ``x:../../etc``,
  and then creates directories outside its data dir. Names are checked here
  before anything reaches tenement: lowercase DNS labels, because tenement
  also routes ``ID.SERVICE.DOMAIN`` by them.
* The API token goes to ``ten`` in the environment (``TENEMENT_TOKEN``),
  never on argv, where every user of the host could read it.
* ``GET /api/instances`` lists the running instances; ``ten health`` checks
  one at once (the server's own checks run only every 10 s).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

from .._common import AppError

NAME_PATTERN = r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$"
NAME_RE = re.compile(NAME_PATTERN)
DEFAULT_SERVER = "http://127.0.0.1:8080"
DEFAULT_DATA_DIR = "/var/lib/tenement"


class TenementError(AppError):
    """A failure with one sentence that says what went wrong."""


def check_name(kind: str, value: object) -> str:
    """Return ``value`` if tenement can safely use it as a service or instance name."""
    if not isinstance(value, str) or not NAME_RE.match(value):
        raise TenementError(
            f"{kind} {value!r} is not a valid tenement name: use 1 to 63 lowercase letters, "
            "digits and '-', starting and ending with a letter or digit"
        )
    return value


def parse_instance(spec: object) -> tuple[str, str]:
    """Split ``"service:id"`` into its two checked names."""
    if not isinstance(spec, str) or spec.count(":") != 1:
        raise TenementError(f"instance {spec!r} must be written as 'service:id'")
    service, ident = spec.split(":")
    return check_name("service", service), check_name("instance id", ident)


@dataclass(frozen=True)
class Instance:
    """One running instance as the server reports it."""

    name: str
    listen: str
    uptime_secs: int
    health: str
    restarts: int
    weight: int = 100  # routing weight, 0-100: kept in memory by tenement only, reset to 100 by every spawn

    @property
    def service(self) -> str:
        return self.name.split(":", 1)[0]

    @property
    def ident(self) -> str:
        return self.name.split(":", 1)[1]

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def read_token(data_dir: str) -> str | None:
    """The admin token tenement keeps in ``{data_dir}/api_token``, if readable."""
    path = os.path.join(data_dir, "api_token")
    try:
        with open(path, encoding="utf-8") as handle:
            token = handle.read().strip()
    except FileNotFoundError:
        return None
    except PermissionError as exc:
        raise TenementError(f"cannot read the tenement API token {path}: permission denied") from exc
    except (UnicodeDecodeError, IsADirectoryError) as exc:
        raise TenementError(f"the tenement API token {path} is not a token (not text)") from exc
    return token or None


Runner = Callable[..., "subprocess.CompletedProcess[str]"]


def _weight(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 100 else 100


class TenementClient:
    """The tenement server of one host, through its HTTP API and the ``ten`` CLI."""

    def __init__(
        self,
        ten_bin: str,
        server: str = DEFAULT_SERVER,
        token: str | None = None,
        data_dir: str | None = None,
        timeout: float = 10.0,
        runner: Runner = subprocess.run,
    ) -> None:
        if not re.match(r"^https?://[^/]", server):
            raise TenementError(f"the tenement server must be an http:// or https:// URL, got {server!r}")
        self.ten_bin = ten_bin
        self.server = server.rstrip("/")
        self.token = token
        self.data_dir = data_dir
        self.timeout = timeout
        self._run = runner

    # -- HTTP API ---------------------------------------------------------
    def _get(self, path: str, method: str = "GET", body: bytes | None = None) -> object:
        request = urllib.request.Request(self.server + path, data=body, method=method)  # noqa: S310 - scheme checked
        if body is not None:
            request.add_header("Content-Type", "application/json")
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:  # noqa: S310 - scheme checked
                return json.loads(response.read().decode("utf-8"))
        except urllib.error.HTTPError as exc:
            if exc.code == 401:
                raise TenementError(f"the tenement server {self.server} refused the API token (HTTP 401)") from exc
            raise TenementError(f"the tenement server {self.server} answered {path} with HTTP {exc.code}") from exc
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise TenementError(f"the tenement server {self.server} does not answer: {reason}") from exc
        except ValueError as exc:
            raise TenementError(
                f"the tenement server {self.server} sent something that is not JSON for {path}"
            ) from exc

    def set_weight(self, name: str, weight: int) -> None:
        """Set an instance's routing weight (``PUT /api/instances/{service:id}/weight``)."""
        service, ident = parse_instance(name)
        if not 0 <= weight <= 100:
            raise TenementError(f"the routing weight of {name} must be 0 to 100, not {weight}")
        body = json.dumps({"weight": weight}).encode()
        self._get(f"/api/instances/{service}:{ident}/weight", method="PUT", body=body)

    def reachable(self) -> bool:
        """True when the server answers HTTP at all (any status)."""
        try:
            self._get("/api/instances")
        except TenementError as exc:
            return "HTTP" in str(exc)
        return True

    def instances(self) -> dict[str, Instance]:
        """The running instances, by ``service:id``."""
        data = self._get("/api/instances")
        if not isinstance(data, list):
            raise TenementError(f"the tenement server {self.server} sent an unexpected instance list")
        found: dict[str, Instance] = {}
        for item in data:
            if not isinstance(item, dict) or "id" not in item:
                continue
            inst = Instance(
                name=str(item["id"]),
                listen=str(item.get("socket", "")),
                uptime_secs=int(item.get("uptime_secs") or 0),
                health=str(item.get("health", "unknown")),
                restarts=int(item.get("restarts") or 0),
                weight=_weight(item.get("weight")),
            )
            found[inst.name] = inst
        return found

    # -- CLI ----------------------------------------------------------------
    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["TENEMENT_SERVER"] = self.server
        if self.token:
            env["TENEMENT_TOKEN"] = self.token
        if self.data_dir:
            env["TENEMENT_DATA_DIR"] = self.data_dir
        return env

    def _ten(self, args: Sequence[str], timeout: float | None = None) -> subprocess.CompletedProcess[str]:
        try:
            return self._run(
                [self.ten_bin, *args],
                capture_output=True,
                text=True,
                env=self._env(),
                timeout=timeout or max(self.timeout, 30.0),
                check=False,
            )
        except FileNotFoundError as exc:
            raise TenementError(f"the tenement command {self.ten_bin} is not installed") from exc
        except subprocess.TimeoutExpired as exc:
            raise TenementError(f"'ten {' '.join(args)}' did not finish within {exc.timeout:.0f} s") from exc

    def _instance_args(self, verb: str, name: str) -> list[str]:
        service, ident = parse_instance(name)
        return [verb, f"{service}:{ident}"]

    def _act(self, verb: str, name: str) -> str:
        result = self._ten(self._instance_args(verb, name))
        if result.returncode != 0:
            detail = (result.stderr or result.stdout).strip().splitlines()
            reason = detail[-1] if detail else f"exit code {result.returncode}"
            raise TenementError(f"'ten {verb} {name}' failed: {reason}")
        return result.stdout

    def spawn(self, name: str) -> str:
        return self._act("spawn", name)

    def stop(self, name: str) -> str:
        return self._act("stop", name)

    def restart(self, name: str) -> str:
        return self._act("restart", name)

    def health(self, name: str) -> str:
        """``healthy``, ``unhealthy`` or what ``ten health`` said, checked now."""
        result = self._ten(["health", *self._instance_args("health", name)[1:]])
        text = (result.stdout + result.stderr).strip()
        match = re.search(r":\s*(\w+)\s*$", text.splitlines()[-1] if text else "")
        if result.returncode == 0 and match:
            return match.group(1).lower()
        return "unhealthy"

    def wait_healthy(
        self, name: str, timeout: float, interval: float = 0.5, clock: Callable[[], float] = time.monotonic
    ) -> Instance:
        """Wait until ``name`` runs and answers its health check, or fail after ``timeout`` s."""
        deadline = clock() + timeout
        last = "not running"
        while True:
            running = self.instances().get(name)
            if running is not None:
                last = self.health(name)
                if last == "healthy":
                    return Instance(running.name, running.listen, running.uptime_secs, "healthy", running.restarts)
            if clock() >= deadline:
                raise TenementError(f"instance {name} is not healthy after {timeout:g} s (last state: {last})")
            time.sleep(interval)

    def version(self) -> str | None:
        result = self._ten(["--version"])
        match = re.search(r"(\d+\.\d+\.\d+\S*)", result.stdout)
        return match.group(1) if match else None
