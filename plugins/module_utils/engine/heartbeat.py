# Copyright: selfhost.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Heartbeats: a healthchecks.io-style check per operation, and a generic up/down push URL.

Standard library only. A check URL gets ``POST URL/start?rid=RUN`` when a run starts, ``POST URL?rid=RUN`` when it
succeeds and ``POST URL/EXIT?rid=RUN`` (the exit status, never 0) when it fails; the body of the last two is the
tail of the run's log, at most ``BODY_CAP`` bytes. A push URL (Uptime Kuma and the like) gets
``GET URL?status=up|down&msg=SENTENCE&ping=MILLISECONDS`` when the run ends.

A ping that fails is retried once; then it is a warning, never a failure of the run. URLs may carry tokens: they are
named by scheme and host only (``public``) in every message.
"""

from __future__ import annotations

import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass

BODY_CAP = 10_000
DEFAULT_TIMEOUT = 10.0
_RETRY_PAUSE = 1.0


def public(url: str) -> str:
    """``url`` as it may be shown: scheme and host (and port), never its path, query or credentials."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or "?"
    if ":" in host:
        host = f"[{host}]"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}"


def problem(url: object) -> str:
    """Why ``url`` cannot be a heartbeat URL ("" when it can); the sentence never holds the URL."""
    if not isinstance(url, str):
        return f"must be an http or https URL, not a {type(url).__name__}"
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        return "is not a URL"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "must be an http or https URL with a host"
    if any(c.isspace() for c in url):
        return "must not contain spaces"
    return ""


def tail(text: str, cap: int = BODY_CAP) -> bytes:
    """The last ``cap`` bytes of ``text`` as UTF-8, cut at a character boundary."""
    blob = text.encode("utf-8", "replace")
    if len(blob) <= cap:
        return blob
    cut = blob[-cap:]
    while cut and (cut[0] & 0xC0) == 0x80:
        cut = cut[1:]
    return cut


def _with_query(url: str, path: str, query: dict[str, str]) -> str:
    parts = urllib.parse.urlsplit(url)
    extra = urllib.parse.urlencode(query)
    joined = f"{parts.query}&{extra}" if parts.query and extra else (parts.query or extra)
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/") + path, joined, ""))


@dataclass
class Sent:
    """One ping: what it was, where to (``public``), and its error sentence ("" when it was received)."""

    kind: str
    to: str
    error: str = ""

    def as_dict(self) -> dict[str, str | bool]:
        return {"kind": self.kind, "to": self.to, "ok": not self.error, "error": self.error}


def send(url: str, kind: str, body: bytes | None, timeout: float = DEFAULT_TIMEOUT, tries: int = 2) -> Sent:
    """One request (POST when there is a body or for a check, GET for a push); ``tries`` attempts at most."""
    where = public(url)
    error = ""
    for attempt in range(tries):
        if attempt:
            time.sleep(_RETRY_PAUSE)
        request = urllib.request.Request(  # noqa: S310 - the scheme is checked: http or https only
            url,
            data=body,
            method="POST" if body is not None else "GET",
            headers={"User-Agent": "selfhost-dr", "Content-Type": "text/plain; charset=utf-8"},
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
                response.read(1024)
            return Sent(kind, where)
        except urllib.error.HTTPError as exc:
            error = f"{kind} ping to {where} was answered with HTTP {exc.code}"
        except urllib.error.URLError as exc:
            reason = exc.reason
            why = getattr(reason, "strerror", None) or str(reason) or type(reason).__name__
            error = f"{kind} ping to {where} failed: {why}"
        except Exception as exc:
            error = f"{kind} ping to {where} failed: {getattr(exc, 'strerror', None) or str(exc) or type(exc).__name__}"
    return Sent(kind, where, _scrub(error, url))


def _scrub(sentence: str, url: str) -> str:
    """``sentence`` with no part of ``url`` beyond its scheme and host (belt and braces: none is put there)."""
    parts = urllib.parse.urlsplit(url)
    for secret in (url, parts.path, parts.query, parts.username or "", parts.password or ""):
        if secret and secret not in ("/", public(url)):
            sentence = sentence.replace(secret, "…")
    return sentence


class Heartbeats:
    """The pings of one run of ``operation``: ``check`` a healthchecks.io-style URL, ``push`` an up/down URL (either
    may be "")."""

    def __init__(self, check: str, push: str, run_id: str, operation: str, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.check = check
        self.push = push
        self.run_id = run_id
        self.operation = operation
        self.timeout = timeout
        self.sent: list[Sent] = []
        self._started = time.monotonic()

    def start(self) -> list[Sent]:
        self._started = time.monotonic()
        if not self.check:
            return []
        done = [send(_with_query(self.check, "/start", {"rid": self.run_id}), "start", b"", self.timeout)]
        self.sent += done
        return done

    def finish(self, exit_code: int, sentence: str, log_tail: bytes) -> list[Sent]:
        done: list[Sent] = []
        if self.check:
            path = "" if exit_code == 0 else f"/{exit_code}"
            kind = "success" if exit_code == 0 else "fail"
            done.append(send(_with_query(self.check, path, {"rid": self.run_id}), kind, log_tail, self.timeout))
        if self.push:
            query = {
                "status": "up" if exit_code == 0 else "down",
                "msg": sentence[:200],
                "ping": str(int((time.monotonic() - self._started) * 1000)),
            }
            done.append(send(_with_query(self.push, "", query), "push", None, self.timeout))
        self.sent += done
        return done
