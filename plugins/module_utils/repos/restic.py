# Copyright: selfhost.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""restic, run as a command: one repository, its password and the store's credentials, and what its answers mean.

Standard library only. restic is run with an argv list, never a shell; its password reaches it through
``RESTIC_PASSWORD_FILE`` (a file the user names) or ``RESTIC_PASSWORD`` in the child's environment only, and the
store's credentials (``AWS_ACCESS_KEY_ID``, ...) the same way: never on a command line, where any user of the host
could read them, never in a message. stdin is always closed, so restic never waits for a password on a terminal.
A location may carry credentials too (``rest:https://user:secret@host/``): messages show it by :func:`public`.

Every failure is one sentence naming the repository: a wrong password, no repository at the location, a
repository locked by a live run, a repository format newer than this restic reads, an unreachable store.
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import signal
import subprocess
import threading
import urllib.parse
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .._common import Error

Runner = Callable[..., subprocess.CompletedProcess[str]]
MIN_VERSION = (0, 14, 0)  # repository format 2 (compression) and restore --verify: Debian 12's restic
_VERSION_RE = re.compile(r"^restic (\d+)\.(\d+)\.(\d+)")
_LOCATION_RE = re.compile(r"^(?:(?P<scheme>sftp|s3|rest|rclone|swift|b2|azure|gs):)?(?P<rest>.+)$")
# The environment a repository's store may need (its credentials): passed through, never shown.
STORE_ENV = re.compile(
    r"^(AWS_[A-Z_]+|RESTIC_REST_[A-Z_]+|B2_[A-Z_]+|AZURE_[A-Z_]+|GOOGLE_[A-Z_]+|OS_[A-Z_]+|ST_[A-Z_]+|"
    r"RCLONE_[A-Z_]+|RESTIC_COMPRESSION|RESTIC_PACK_SIZE|SSH_AUTH_SOCK)$"
)
# The tag a snapshot gets once a restore from it passed every check; retention never forgets the newest so tagged.
VERIFIED_TAG = "verified=restore"
_DEFAULT_TIMEOUT = 6 * 3600.0
_UNREACHABLE_RE = re.compile(
    r"connection refused|no such host|i/o timeout|network is unreachable|context deadline exceeded|"
    r"TLS handshake|certificate|connection reset|no route to host|ssh: |exit status 255",
    re.IGNORECASE,
)
_USERINFO_RE = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://)[^/@]*@")  # (a password may hold spaces)
_REFUSED_RE = re.compile(
    r"Access Denied|InvalidAccessKeyId|SignatureDoesNotMatch|signature we calculated does not match|"
    r"403 Forbidden|401 Unauthorized|permission denied \(",
    re.IGNORECASE,
)


class RepoError(Error):
    """A repository that cannot be used, in one sentence."""


class WrongPasswordError(RepoError):
    """No key of the repository opens with the password."""


class NoRepositoryError(RepoError):
    """There is no repository at the location (yet)."""


class LockedError(RepoError):
    """A live run holds the repository's lock."""


def public(location: str) -> str:
    """A location as it may be shown: without a password or user in an URL (``rest:https://u:p@h/x`` ->
    ``rest:https://h/x``), an ``s3:`` endpoint's query left out, and an ``rclone:`` connection string's parameters
    (``rclone::s3,secret_access_key=...:bucket`` -> ``rclone::s3,…``)."""
    match = _LOCATION_RE.match(location)
    if not match:
        return location
    scheme, rest = match["scheme"], match["rest"]
    if "://" in rest:
        parts = urllib.parse.urlsplit(rest)
        host = parts.hostname or ""
        if parts.port:
            host = f"{host}:{parts.port}"
        rest = urllib.parse.urlunsplit((parts.scheme, host, parts.path, "", ""))
    elif scheme == "sftp" and "@" in rest.split(":", 1)[0]:
        rest = rest.split("@", 1)[1]
    elif scheme == "rclone" and "," in rest.removeprefix(":").split(":", 1)[0]:
        rest = rest.split(",", 1)[0] + ",…"  # a connection string (remote,key=value:path) carries credentials
    return f"{scheme}:{rest}" if scheme else rest


@dataclass(frozen=True)
class Repository:
    """A restic repository as ``dr_repositories`` names it."""

    name: str
    location: str
    password_file: str = ""  # a file whose first line is the password (RESTIC_PASSWORD_FILE)
    password: str = field(default="", repr=False)  # or the password itself (RESTIC_PASSWORD, the child's only)
    env: Mapping[str, str] = field(default_factory=dict, repr=False)  # the store's credentials and options
    required: bool = True
    init: bool = False  # create it when there is none at the location (never a second time)
    retention: Mapping[str, object] = field(default_factory=dict)  # keep_* rules; {}: the local ones

    @property
    def shown(self) -> str:
        return f"repository {self.name} ({public(self.location)})"


@dataclass
class Result:
    """What restic answered: its exit status, its JSON messages (``--json``) or text, and its stderr."""

    code: int
    out: str
    err: str

    def messages(self) -> list[dict[str, Any]]:
        """The JSON objects of ``--json`` output, one per line (other lines are left out)."""
        found = []
        for line in self.out.splitlines():
            line = line.strip()
            if line.startswith("{"):
                try:
                    value = json.loads(line)
                except ValueError:
                    continue
                if isinstance(value, dict):
                    found.append(value)
        return found


class Restic:
    """One repository and the restic that reads it."""

    def __init__(
        self,
        repo: Repository,
        binary: str = "restic",
        cache_dir: str = "",
        run: Runner = subprocess.run,
        timeout: float = _DEFAULT_TIMEOUT,
    ) -> None:
        if not repo.password and not repo.password_file:
            raise RepoError(f"{repo.shown} has no password: give password_file or password")
        if repo.password_file and not os.path.isabs(repo.password_file):
            raise RepoError(f"the password file of {repo.shown} must be an absolute path")
        for key in repo.env:
            if not STORE_ENV.match(key):
                raise RepoError(f"{key} is not a variable a repository's store takes (AWS_*, B2_*, RCLONE_*, ...)")
        self.repo = repo
        self.binary = binary
        self.cache_dir = cache_dir
        self._run = run
        self.timeout = timeout

    def environment(self) -> dict[str, str]:
        """The child's environment: a minimal one, the password and the store's credentials; nothing inherited
        that could point restic at another repository or password."""
        env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR")}
        env.setdefault("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        env["RESTIC_REPOSITORY"] = self.repo.location
        if self.repo.password_file:
            env["RESTIC_PASSWORD_FILE"] = self.repo.password_file
        else:
            env["RESTIC_PASSWORD"] = self.repo.password
        if self.cache_dir:
            env["RESTIC_CACHE_DIR"] = self.cache_dir
        env.update(self.repo.env)
        return env

    def call(
        self, args: Sequence[str], check: bool = True, timeout: float | None = None, pass_fds: Sequence[int] = ()
    ) -> Result:
        """``restic ARGS`` for this repository; with ``check``, a failure raises its one sentence. ``pass_fds``: open
        descriptors restic inherits (a directory it reaches as ``/proc/self/fd/N``); such a restic dies with this
        process (killed, it would go on writing into a directory the next run removes)."""
        argv = [self.binary, *args]
        extra: dict[str, Any] = {"pass_fds": tuple(pass_fds), "preexec_fn": _dies_with(os.getpid())} if pass_fds else {}
        try:
            done = self._run(
                argv,
                env=self.environment(),
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                errors="replace",
                timeout=timeout or self.timeout,
                check=False,
                **extra,
            )
        except FileNotFoundError:
            raise RepoError(f"restic is not installed ({self.binary}): apt-get install restic") from None
        except subprocess.TimeoutExpired:
            raise RepoError(
                f"restic {args[0]} on {self.repo.shown} did not finish in {timeout or self.timeout:g} s"
            ) from None
        result = Result(done.returncode, done.stdout or "", done.stderr or "")
        if check and result.code != 0:
            raise self.failure(args[0], result)
        return result

    def failure(self, command: str, result: Result) -> RepoError:
        """restic's failure as one sentence (its own words, last line, when nothing better is known)."""
        text = result.err
        shown = self.repo.shown
        if "wrong password or no key found" in text:
            return WrongPasswordError(f"the password of {shown} is wrong: no key of the repository opens with it")
        if _REFUSED_RE.search(text):
            return RepoError(f"{shown} refuses the store's credentials: {_last_line(text, self.repo)}")
        if _UNREACHABLE_RE.search(text):
            return RepoError(f"{shown} cannot be reached: {_last_line(text, self.repo)}")
        if "unable to open config file" in text or "Is there a repository at the following location" in text:
            return NoRepositoryError(f"{shown} does not exist: no restic repository is there (init: true creates one)")
        if "repository is already locked" in text or "unable to create lock" in text:
            return LockedError(f"{shown} is locked by another restic run: {_last_line(text, self.repo)}")
        if (
            re.search(r"repository version \d+ (is )?(not supported|unsupported)", text)
            or "unsupported repository version" in text
        ):
            return RepoError(f"{shown} has a format this restic cannot read: {_last_line(text, self.repo)}")
        why = _last_line(text, self.repo) or f"exit status {result.code}"
        return RepoError(f"restic {command} on {shown} failed: {why}")

    # -- what a repository is ------------------------------------------------------------------------------------

    def version(self) -> tuple[int, int, int]:
        """restic's version; one sentence when it is older than :data:`MIN_VERSION`."""
        result = self.call(["version"])
        match = _VERSION_RE.match(result.out.strip())
        if not match:
            raise RepoError(f"restic version said {result.out.strip()[:80]!r}, not a version")
        found = (int(match[1]), int(match[2]), int(match[3]))
        if found < MIN_VERSION:
            need = ".".join(map(str, MIN_VERSION))
            raise RepoError(f"restic {'.'.join(map(str, found))} is too old: {need} or newer is needed (format 2)")
        return found

    def config(self) -> dict[str, Any]:
        """The repository's config (its format ``version``): proves the location holds a repository and the password
        opens it."""
        result = self.call(["cat", "config", "--no-lock"])
        try:
            value = json.loads(result.out)
        except ValueError:
            raise RepoError(f"{self.repo.shown} answered `cat config` with something that is not JSON") from None
        if not isinstance(value, dict):
            raise RepoError(f"{self.repo.shown} has a config that is not an object")
        return value

    def exists(self) -> bool:
        """Whether there is a repository at the location that the password opens (a wrong password raises)."""
        try:
            self.config()
        except NoRepositoryError:
            return False
        return True

    def ensure(self) -> bool:
        """The repository, created when absent and ``init`` says so (format 2); whether it was created. An existing
        repository is never initialised again."""
        if self.exists():
            return False
        if not self.repo.init:
            raise NoRepositoryError(
                f"{self.repo.shown} does not exist: no restic repository is there (init: true creates one)"
            )
        self.init()
        return True

    def init(self) -> None:
        """Create the repository (format 2: compressed). Only where :meth:`exists` found none, or a command said so."""
        self.call(["init", "--repository-version", "2"])

    # -- snapshots -----------------------------------------------------------------------------------------------

    def snapshots(self, tags: Iterable[str] = (), host: str = "") -> list[dict[str, Any]]:
        """The snapshots (``restic snapshots --json``), oldest first, with every tag of ``tags`` and of ``host``."""
        args = ["snapshots", "--json", "--no-lock"]
        if tags:
            args += ["--tag", ",".join(tags)]
        if host:
            args += ["--host", host]
        result = self.call(args)
        try:
            value = json.loads(result.out or "[]")
        except ValueError:
            raise RepoError(f"{self.repo.shown} listed its snapshots as something that is not JSON") from None
        if not isinstance(value, list):
            raise RepoError(f"{self.repo.shown} listed its snapshots as something that is not a list")
        return [s for s in value if isinstance(s, dict) and isinstance(s.get("id"), str)]

    def latest(self, tags: Iterable[str], host: str) -> dict[str, Any] | None:
        """The newest snapshot with every tag of ``tags`` from ``host``, or None."""
        found = self.snapshots(tags, host)
        return max(found, key=lambda s: str(s.get("time", ""))) if found else None

    def backup(
        self,
        paths: Sequence[str],
        host: str,
        tags: Sequence[str],
        exclude_file: str = "",
        parent: str = "",
    ) -> dict[str, Any]:
        """``restic backup`` of ``paths``: the summary (``snapshot_id``, ``data_added``, ``files_new``, ...). With
        ``parent``, files whose size, mtime, ctime and inode are unchanged since it are not read again."""
        args = ["backup", "--json", "--host", host]  # across mounts below a path, as the scan goes
        for tag in tags:
            args += ["--tag", _tag(tag)]
        if exclude_file:
            args += ["--exclude-file", exclude_file]
        if parent:
            args += ["--parent", parent]
        result = self.call([*args, "--", *paths])
        summary = [m for m in result.messages() if m.get("message_type") == "summary"]
        if not summary or not isinstance(summary[-1].get("snapshot_id"), str):
            raise RepoError(
                f"restic backup into {self.repo.shown} saved no snapshot: {_last_line(result.err, self.repo)}"
            )
        return summary[-1]

    def forget(self, snapshot_ids: Sequence[str], prune: bool = False) -> None:
        """Forget these snapshots (chosen by the collection's own retention engine), and with ``prune`` delete the
        data no snapshot needs any more."""
        for snapshot in snapshot_ids:
            if not re.fullmatch(r"[0-9a-f]{8,64}", snapshot):
                raise RepoError(f"{snapshot!r} is not a snapshot id")
        if snapshot_ids:
            self.call(["forget", *(["--prune"] if prune else []), "--", *snapshot_ids])

    def add_tags(self, snapshot_id: str, tags: Sequence[str]) -> None:
        """Add tags to a snapshot (``restic tag --add``; restic saves it as a new snapshot id)."""
        args = ["tag"]
        for tag in tags:
            args += ["--add", _tag(tag)]
        self.call([*args, "--", snapshot_id])

    def check(self, read_data_subset: str = "") -> None:
        """``restic check`` (with ``read_data_subset``, e.g. ``5%`` or ``1/7``, also that much of the data): one
        sentence naming what is wrong."""
        args = ["check"]
        if read_data_subset:
            if not re.fullmatch(r"\d+(\.\d+)?%|\d+/\d+|\d+[KMGT]?", read_data_subset):
                raise RepoError(f"read_data_subset {read_data_subset!r} is not n%, n/t or a size")
            args += ["--read-data-subset", read_data_subset]
        result = self.call(args, check=False)
        if result.code != 0:
            problems = [
                line.strip() for line in (result.out + "\n" + result.err).splitlines() if _CHECK_PROBLEM.search(line)
            ]
            why = problems[0] if problems else _last_line(result.err, self.repo) or f"exit status {result.code}"
            raise RepoError(f"restic check of {self.repo.shown} found damage: {_scrub(why, self.repo)}")

    def ls(self, snapshot_id: str, limit: int) -> Iterator[dict[str, Any]]:
        """Every node of a snapshot (``restic ls --json``: name, type, path, uid, gid, size, mode), in tree order,
        read as restic writes them; more than ``limit`` nodes raises (a hostile snapshot cannot fill memory)."""
        _snapshot_id(snapshot_id)
        argv = [self.binary, "ls", "--json", "--no-lock", snapshot_id]
        try:
            proc = subprocess.Popen(
                argv, env=self.environment(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE
            )
        except FileNotFoundError:
            raise RepoError(f"restic is not installed ({self.binary}): apt-get install restic") from None
        assert proc.stdout is not None and proc.stderr is not None  # noqa: S101
        err: list[bytes] = []
        reader = threading.Thread(target=lambda: err.append(proc.stderr.read(1 << 20)), daemon=True)  # type: ignore[union-attr]
        reader.start()
        count = 0
        try:
            for raw in proc.stdout:
                if len(raw) > 64 * 1024:
                    raise RepoError(f"snapshot {snapshot_id[:8]} in {self.repo.shown} lists a node too long to be one")
                try:
                    node = json.loads(raw)
                except ValueError:
                    continue
                if not isinstance(node, dict) or node.get("struct_type") != "node":
                    continue
                count += 1
                if count > limit:
                    raise RepoError(f"snapshot {snapshot_id[:8]} in {self.repo.shown} holds more than {limit} entries")
                yield node
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.stdout.close()
            proc.wait()
            reader.join()
            proc.stderr.close()
        if proc.returncode != 0:
            raise self.failure("ls", Result(proc.returncode, "", b"".join(err).decode(errors="replace")))

    def dump(self, snapshot_id: str, path: str, limit: int) -> bytes:
        """The content of one file of a snapshot (``restic dump``), read up to ``limit`` bytes and one more: a node's
        size in :meth:`ls` is what the snapshot says, not what its content holds, so longer content (crafted, the
        same blob a million times) stops restic there instead of filling memory."""
        _snapshot_id(snapshot_id)
        argv = [self.binary, "dump", "--no-lock", snapshot_id, path]
        try:
            proc = subprocess.Popen(
                argv, env=self.environment(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE
            )
        except FileNotFoundError:
            raise RepoError(f"restic is not installed ({self.binary}): apt-get install restic") from None
        assert proc.stdout is not None and proc.stderr is not None  # noqa: S101
        err: list[bytes] = []
        reader = threading.Thread(target=lambda: err.append(proc.stderr.read()), daemon=True)  # type: ignore[union-attr]
        reader.start()
        out = bytearray()
        try:
            while len(out) <= limit and (chunk := proc.stdout.read(min(1 << 20, limit + 1 - len(out)))):
                out += chunk
        finally:
            if len(out) > limit and proc.poll() is None:
                proc.kill()
            proc.stdout.close()
            proc.wait()
            reader.join()
            proc.stderr.close()
        if len(out) <= limit and proc.returncode != 0:
            said = b"".join(err)[-(1 << 20) :].decode(errors="replace")
            raise self.failure("dump", Result(proc.returncode, "", said))
        return bytes(out)

    def restore(self, snapshot_id: str, target: str) -> None:
        """``restic restore`` of one snapshot into ``target`` (a new, empty directory): a hand restore, as the docs
        describe it (the collection's own restore uses :meth:`restore_into` and checks everything first)."""
        self.call(["restore", _snapshot_id(snapshot_id), "--target", target])

    def restore_into(self, snapshot_id: str, dir_fd: int, includes: Sequence[str] = ()) -> None:
        """``restic restore`` of a snapshot (or the ``includes``: exact paths, their trees with them) into the
        directory open as ``dir_fd``, which restic reaches through ``/proc/self/fd``: never by a name someone could
        swap for a link meanwhile."""
        _snapshot_id(snapshot_id)
        args = ["restore", snapshot_id, "--target", f"/proc/self/fd/{dir_fd}"]
        for path in includes:
            args += ["--include", glob_escape(path)]
        self.call(args, pass_fds=[dir_fd])

    def add_key(self, new_password_file: str) -> str:
        """A second key (``restic key add``), its password read from a file; the new key's id."""
        before = {k.get("id") for k in self.keys()}
        self.call(["key", "add", "--new-password-file", new_password_file])
        added = [k for k in self.keys() if k.get("id") not in before]
        return str(added[0].get("id")) if added else ""

    def keys(self) -> list[dict[str, Any]]:
        result = self.call(["key", "list", "--json"])
        try:
            value = json.loads(result.out or "[]")
        except ValueError:
            return []
        return [k for k in value if isinstance(k, dict)] if isinstance(value, list) else []

    def unlock(self) -> None:
        """Remove the stale locks only (a killed run's, or one older than 30 minutes); never a live run's."""
        self.call(["unlock"])


_CHECK_PROBLEM = re.compile(
    r"does not match|mismatch|damaged|not found|invalid|unreferenced|missing|error", re.IGNORECASE
)
_TAG_RE = re.compile(r"^[A-Za-z0-9_.:=@+-]{1,200}\Z")


_PR_SET_PDEATHSIG = 1
_LIBC = ctypes.CDLL(None, use_errno=True)  # loaded before any fork: a child only calls into it


def _dies_with(parent: int) -> Callable[[], None]:
    """What a child runs before restic: SIGKILL it when ``parent`` dies (``prctl(PR_SET_PDEATHSIG)``), and exit
    at once when it is dead already."""

    def child() -> None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:
            os._exit(1)

    return child


def _snapshot_id(snapshot_id: str) -> str:
    if not re.fullmatch(r"[0-9a-f]{8,64}", snapshot_id):
        raise RepoError(f"{snapshot_id!r} is not a snapshot id")
    return snapshot_id


def glob_escape(path: str) -> str:
    """A path as a restic include/exclude pattern that matches it alone (``*``, ``?``, ``[``, ``]`` and ``\\``
    escaped)."""
    return "".join(f"\\{c}" if c in "*?[]\\" else c for c in path)


def _tag(tag: str) -> str:
    """A snapshot tag (no comma: restic splits on it)."""
    if not _TAG_RE.match(tag):
        raise RepoError(f"{tag!r} cannot be a snapshot tag: letters, digits and _ . : = @ + - only")
    return tag


def _scrub(line: str, repo: Repository) -> str:
    """``line`` without the repository's password, its store's credentials and its location's credentials (an rclone
    connection string also as rclone itself says it, without ``rclone:``)."""
    shown = public(repo.location)
    if repo.location and repo.location != shown:
        line = line.replace(repo.location, shown)
        if repo.location.startswith("rclone:"):
            line = line.replace(repo.location.removeprefix("rclone:"), shown.removeprefix("rclone:"))
    for secret in (repo.password, *repo.env.values()):
        if secret and len(secret) >= 4:
            line = line.replace(secret, "***")
    return _USERINFO_RE.sub(r"\1", line)


def _last_line(text: str, repo: Repository) -> str:
    """restic's last message line, without its ``Fatal:`` and without a location's credentials."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    wanted = [line for line in lines if line.startswith("Fatal:")] or lines
    line = wanted[-1].removeprefix("Fatal:").strip() if wanted else ""
    return _scrub(line, repo)[:300]  # (an URL's user:password@ too, however restic quotes the location)
