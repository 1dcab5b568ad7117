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

import contextlib
import ctypes
import json
import os
import re
import signal
import socket
import stat
import subprocess
import threading
import urllib.parse
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from .._common import Error

Runner = Callable[..., subprocess.CompletedProcess[str]]
SNAPSHOT_TAG = "selfhost-dr"  # every snapshot selfhost-dr makes carries it; retention looks at no other
# A restore from the snapshot passed every check (the restore engine adds it): retention never forgets the newest one.
VERIFIED_TAG = "verified=restore"
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
    r"TLS handshake|certificate|connection reset|no route to host|ssh: connect to host|ssh: Could not resolve|"
    r"Connection closed by|Host key verification failed|exit status 255",
    re.IGNORECASE,
)
_ABSENT_RE = re.compile(r"file does not exist|no such file or directory|NoSuchKey|NoSuchBucket|404 Not Found", re.I)
_USERINFO_RE = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://)[^/@]*@")  # (a password may hold spaces)
_REFUSED_RE = re.compile(
    r"Access Denied|InvalidAccessKeyId|SignatureDoesNotMatch|signature we calculated does not match|"
    r"403 Forbidden|401 Unauthorized|permission denied \(|access key ID you provided does not exist",
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
        self,
        args: Sequence[str],
        check: bool = True,
        timeout: float | None = None,
        pass_fds: Sequence[int] = (),
        cwd: str = "",
        utc: bool = False,
    ) -> Result:
        """``restic ARGS`` for this repository; with ``check``, a failure raises its one sentence. ``pass_fds``: open
        descriptors restic inherits (a directory it reaches as ``/proc/self/fd/N``); such a restic dies with this
        process (killed, it would go on writing into a directory the next run removes). ``cwd``: where it runs;
        ``utc``: with ``TZ=UTC`` (times on its command line are UTC).

        A command that finds the repository locked runs ``restic unlock`` (which removes only stale locks: a killed
        run's on this host, or one older than 30 minutes) and is tried once more; a lock still there belongs to a live
        run, and is reported as "locked by PID ... since ...", never removed."""
        result = self._call(args, timeout, pass_fds, cwd, utc)
        if result.code != 0 and args[0] != "unlock" and "--no-lock" not in args and _is_locked(result.err):
            self._call(["unlock"], timeout, ())  # only the stale ones; its failure shows in the retry's
            result = self._call(args, timeout, pass_fds, cwd, utc)
        if check and result.code != 0:
            raise self.failure(args[0], result)
        return result

    def _call(
        self, args: Sequence[str], timeout: float | None, pass_fds: Sequence[int], cwd: str = "", utc: bool = False
    ) -> Result:
        argv = [self.binary, *args]
        extra: dict[str, Any] = {"pass_fds": tuple(pass_fds), "preexec_fn": _dies_with(os.getpid())} if pass_fds else {}
        if cwd:
            extra["cwd"] = cwd
        try:
            done = self._run(
                argv,
                env={**self.environment(), **({"TZ": "UTC"} if utc else {})},
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
        return Result(done.returncode, done.stdout or "", done.stderr or "")

    def failure(self, command: str, result: Result) -> RepoError:
        """restic's failure as one sentence (its own words, last line, when nothing better is known)."""
        text = result.err
        shown = self.repo.shown
        if "wrong password or no key found" in text:
            return WrongPasswordError(f"the password of {shown} is wrong: no key of the repository opens with it")
        if _REFUSED_RE.search(text):
            return RepoError(f"{shown} refuses the store's credentials: {_last_line(text, self.repo)}")
        if "unable to open config file" in text and _ABSENT_RE.search(text):
            # Reached, and nothing there (restic's SFTP backend also says "subprocess ssh: ..." on the way).
            return NoRepositoryError(f"{shown} does not exist: no restic repository is there (init: true creates one)")
        if _UNREACHABLE_RE.search(text):
            return RepoError(f"{shown} cannot be reached: {_last_line(text, self.repo)}")
        if "unable to open config file" in text or "Is there a repository at the following location" in text:
            return NoRepositoryError(f"{shown} does not exist: no restic repository is there (init: true creates one)")
        if _is_locked(text) or "unable to create lock" in text:
            return LockedError(_locked_sentence(shown, text, self.repo))
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
        cwd: str = "",
        time: str = "",
    ) -> dict[str, Any]:
        """``restic backup`` of ``paths``: the summary (``snapshot_id``, ``data_added``, ``files_new``, ...). With
        ``parent``, files whose size, mtime, ctime and inode are unchanged since it are not read again. Relative
        ``paths`` (with ``cwd``) are stored as those paths from the snapshot's root; ``time`` (``YYYY-MM-DD
        HH:MM:SS``, UTC) dates the snapshot."""
        args = self._backup_args(host, tags, exclude_file, parent, time)
        return self.summary(self.call([*args, "--", *paths], cwd=cwd, utc=bool(time)))

    def start_backup(self, paths: Sequence[str], host: str, tags: Sequence[str]) -> Started | None:
        """``restic backup`` of ``paths`` started before what is below them is ready (each of them must exist: restic
        leaves out one that does not): restic opens the repository (half a second of key derivation) and locks it,
        then waits to read its exclude file from a pipe, which :meth:`Started.finish` writes once they are. None
        where it cannot be started so (a stand-in runner, no restic): the plain :meth:`backup` then."""
        if self._run is not subprocess.run:
            return None
        read, write = os.pipe()  # (neither inherited but the read end, passed)
        args = [*self._backup_args(host, tags, f"/dev/fd/{read}"), "--", *paths]
        try:
            process = subprocess.Popen(
                [self.binary, *args],
                env=self.environment(),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                errors="replace",
                pass_fds=(read,),
                preexec_fn=_dies_with(os.getpid()),  # killed, this process leaves no restic waiting (or reading)
            )
        except OSError:
            os.close(write)
            return None
        finally:
            os.close(read)
        return Started(self, process, write)

    def summary(self, result: Result) -> dict[str, Any]:
        """The summary message of a ``restic backup --json`` that succeeded."""
        summary = [m for m in result.messages() if m.get("message_type") == "summary"]
        if not summary or not isinstance(summary[-1].get("snapshot_id"), str):
            raise RepoError(
                f"restic backup into {self.repo.shown} saved no snapshot: {_last_line(result.err, self.repo)}"
            )
        return summary[-1]

    def _backup_args(
        self, host: str, tags: Sequence[str], exclude_file: str = "", parent: str = "", time: str = ""
    ) -> list[str]:
        args = ["backup", "--json", "--host", host]  # across mounts below a path, as the scan goes
        if time:
            if not re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", time):
                raise RepoError(f"{time!r} is not a snapshot time (YYYY-MM-DD HH:MM:SS)")
            args += ["--time", time]
        for tag in tags:
            args += ["--tag", _tag(tag)]
        if exclude_file:
            args += ["--exclude-file", exclude_file]
        if parent:
            args += ["--parent", parent]
        return args

    def forget(self, snapshot_ids: Sequence[str], prune: bool = False) -> None:
        """Forget these snapshots (chosen by the collection's own retention engine), and with ``prune`` delete the
        data no snapshot needs any more."""
        for snapshot in snapshot_ids:
            if not re.fullmatch(r"[0-9a-f]{8,64}", snapshot):
                raise RepoError(f"{snapshot!r} is not a snapshot id")
        if snapshot_ids:
            self.call(["forget", *(["--prune"] if prune else []), "--", *snapshot_ids])

    def prune(self) -> int | None:
        """``restic prune``: delete the data no snapshot needs any more; the bytes it frees as restic counts them
        ("total prune"), None when it does not say."""
        result = self.call(["prune"])
        match = _FREED_RE.search(result.out)
        return _bytes(match["size"], match["unit"]) if match else None

    def add_tags(self, snapshot_id: str, tags: Sequence[str]) -> None:
        """Add tags to a snapshot (``restic tag --add``; restic saves it as a new snapshot id)."""
        args = ["tag"]
        for tag in tags:
            args += ["--add", _tag(tag)]
        self.call([*args, "--", snapshot_id])

    def check(self, read_data_subset: str = "", read_data: bool = False) -> None:
        """``restic check`` (with ``read_data``, also every pack's data; with ``read_data_subset``, e.g. ``5%`` or
        ``1/7``, that much of it): one sentence naming what is wrong, and the damaged packs by id."""
        args = ["check"]
        if read_data:
            args += ["--read-data"]
        elif read_data_subset:
            if not SUBSET_RE.fullmatch(read_data_subset):
                raise RepoError(f"read_data_subset {read_data_subset!r} is not n%, n/t or a size")
            args += ["--read-data-subset", read_data_subset]
        result = self.call(args, check=False)
        if result.code == 0:
            return
        unread = (
            _is_locked(result.err)
            or _UNREACHABLE_RE.search(result.err)
            or _REFUSED_RE.search(result.err)
            or "wrong password" in result.err
            or "unable to open config file" in result.err
        )
        if unread:
            raise self.failure("check", result)  # not damage: the repository could not be read at all
        lines = [line.strip() for line in (result.out + "\n" + result.err).splitlines()]
        problems = [line for line in lines if _CHECK_PROBLEM.search(line) and not line.startswith("Fatal:")]
        packs = list(dict.fromkeys(m["id"] for line in problems for m in _PACK_RE.finditer(line)))
        why = problems[0] if problems else _last_line(result.err, self.repo) or f"exit status {result.code}"
        if packs:
            named = ", ".join(packs[:5]) + (f" and {len(packs) - 5} more" if len(packs) > 5 else "")
            what = f"pack {named} is damaged" if len(packs) == 1 else f"packs {named} are damaged"
            raise RepoError(f"restic check of {self.repo.shown} found damage: {what} ({_scrub(why, self.repo)[:200]})")
        raise RepoError(f"restic check of {self.repo.shown} found damage: {_scrub(why, self.repo)[:300]}")

    def ls(
        self,
        snapshot_id: str,
        limit: int,
        host: str = "",
        tags: Sequence[str] = (),
        header: list[dict[str, Any]] | None = None,
    ) -> Iterator[dict[str, Any]]:
        """Every node of a snapshot (``restic ls --json``: name, type, path, uid, gid, size, mode), in tree order,
        read as restic writes them; more than ``limit`` nodes raises (a hostile snapshot cannot fill memory).

        ``latest`` with ``host`` and ``tags`` lists the newest snapshot of that host holding all the tags (nothing
        when there is none); the snapshot itself (id, time, paths, hostname, tags) is put in ``header`` before the
        first node is given."""
        argv = [self.binary, "ls", "--json", "--no-lock", *_chosen(snapshot_id, host, tags)]
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
                if isinstance(node, dict) and node.get("struct_type") == "snapshot" and header is not None:
                    header.append(node)
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

    def dump(self, snapshot_id: str, path: str, limit: int, host: str = "", tags: Sequence[str] = ()) -> bytes:
        """The content of one file of a snapshot (``restic dump``), read up to ``limit`` bytes and one more: a node's
        size in :meth:`ls` is what the snapshot says, not what its content holds, so longer content (crafted, the
        same blob a million times) stops restic there instead of filling memory. ``latest`` with ``host`` and
        ``tags`` as in :meth:`ls`."""
        return self.dumping(snapshot_id, path, limit, host, tags).result()

    def dumping(self, snapshot_id: str, path: str, limit: int, host: str = "", tags: Sequence[str] = ()) -> Dump:
        """:meth:`dump` started, read in the background: its :meth:`Dump.result`, or :meth:`Dump.stop` unread."""
        chosen = _chosen(snapshot_id, host, tags)
        if not path.startswith("/"):  # (after "--" all the same: never an option)
            raise RepoError(f"{path!r} is not a path in a snapshot")
        return Dump(self, [self.binary, "dump", "--no-lock", *chosen, path], limit)

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
        """A second key (``restic key add``), its password read from a file that only its owner can read; the new
        key's id. restic reads the file through a descriptor this process opened (``/dev/fd/N``): the file checked is
        the file read, and neither the password nor a secret path is on the command line."""
        fd = open_private(new_password_file, "the new key's password file")
        try:
            if not os.read(fd, 4096).strip():
                raise RepoError(f"the new key's password file {new_password_file} is empty")
            os.lseek(fd, 0, os.SEEK_SET)
            before = {k.get("id") for k in self.keys()}
            self.call(["key", "add", "--new-password-file", f"/dev/fd/{fd}"], pass_fds=(fd,))
        finally:
            os.close(fd)
        added = [k for k in self.keys() if k.get("id") not in before]
        return str(added[0].get("id")) if added else ""

    def keys(self) -> list[dict[str, Any]]:
        """The repository's keys (``restic key list --json``): id, user, host, created, and which one opened it."""
        result = self.call(["key", "list", "--json"])
        try:
            value = json.loads(result.out or "[]")
        except ValueError:
            raise RepoError(f"{self.repo.shown} listed its keys as something that is not JSON") from None
        return [k for k in value if isinstance(k, dict)] if isinstance(value, list) else []

    def live_locks(self, exclusive_only: bool = False) -> list[dict[str, Any]]:
        """The locks of live runs, read without a lock (``restic list locks``, ``restic cat lock``): not the ones
        ``restic unlock`` would remove (made on this host by a process that is gone, or older than 30 minutes). With
        ``exclusive_only``, only the exclusive ones (those that keep a backup out)."""
        ids = [line.strip() for line in self.call(["list", "locks", "--no-lock"]).out.splitlines() if line.strip()]
        live = []
        for ident in ids:
            if not re.fullmatch(r"[0-9a-f]{64}", ident):
                continue
            result = self.call(["cat", "lock", ident, "--no-lock"], check=False)
            try:
                lock = json.loads(result.out) if result.code == 0 else None
            except ValueError:
                lock = None
            if not isinstance(lock, dict) or (exclusive_only and not lock.get("exclusive")):
                continue  # gone meanwhile, or unreadable: restic ignores those too
            if not _stale(lock):
                live.append({"id": ident, **lock})
        return live

    def refuse_live_lock(self, exclusive_only: bool = False) -> None:
        """Check mode's view of a lock: the sentence a run would meet, for the first live lock."""
        for lock in self.live_locks(exclusive_only):
            when = _lock_time(lock.get("time"))
            text = (
                f"repository is already locked {'exclusively ' if lock.get('exclusive') else ''}by PID "
                f"{lock.get('pid')} on {lock.get('hostname')} by {lock.get('username')} (UID"
                + (f"\nlock was created at {when.astimezone().strftime('%Y-%m-%d %H:%M:%S')} (" if when else "")
            )
            raise LockedError(_locked_sentence(self.repo.shown, text, self.repo))

    def unlock(self) -> None:
        """Remove the stale locks only (a killed run's, or one older than 30 minutes); never a live run's."""
        self.call(["unlock"])


SUBSET_RE = re.compile(r"\d+(\.\d+)?%|[1-9]\d*/[1-9]\d*|\d+[KMGTkmgt]?")  # check --read-data-subset
_CHECK_PROBLEM = re.compile(
    r"does not match|mismatch|damaged|not found|invalid|unreferenced|missing|error|does not exist", re.IGNORECASE
)
# A pack named in check's problems: "Pack ID does not match, want ID, got ...", "pack ID: ...", "<data/ID>".
_PACK_RE = re.compile(r"(?:want |[Pp]ack |<data/)(?P<id>[0-9a-f]{64}|[0-9a-f]{8}\b)")
_FREED_RE = re.compile(r"total prune:\s+\d+ blobs / (?P<size>[\d.]+) (?P<unit>B|KiB|MiB|GiB|TiB)")
_UNITS = {"B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "TiB": 1 << 40}
_LOCKED_RE = re.compile(
    r"repository is already locked (?P<how>exclusively )?by PID (?P<pid>\d+) on (?P<host>\S+) by (?P<user>[^\n(]+?) \("
)
_LOCK_TIME_RE = re.compile(r"lock was created at (?P<when>[^()\n]+?) \(")


def _bytes(size: str, unit: str) -> int:
    return round(float(size) * _UNITS[unit])


def _is_locked(text: str) -> bool:
    return "repository is already locked" in text


def _locked_sentence(shown: str, text: str, repo: Repository) -> str:
    """A lock that ``restic unlock`` left in place, as one sentence: who holds it and since when."""
    match = _LOCKED_RE.search(text)
    if not match:
        return f"{shown} is locked by another restic run: {_last_line(text, repo)}"
    when = _LOCK_TIME_RE.search(text)
    since = f" since {when['when'].strip()}" if when else ""
    how = "exclusively " if match["how"] else ""
    return (
        f"{shown} is locked {how}by PID {match['pid']} on {match['host']} ({match['user'].strip()}){since}, a run "
        "restic does not consider stale (its process still runs, and the lock is younger than 30 minutes), so it "
        "was left in place"
    )


_STALE_AFTER = 30 * 60  # seconds: restic's own staleTimeout


def _lock_time(text: object) -> datetime | None:
    match = re.match(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d)$", str(text))
    if not match:
        return None
    zone = "+00:00" if match[3] == "Z" else match[3]
    try:
        return datetime.fromisoformat(f"{match[1]}{(match[2] or '.0')[:7]}{zone}")
    except ValueError:
        return None


def _stale(lock: Mapping[str, Any]) -> bool:
    """restic's rule (``Lock.Stale``): older than 30 minutes, or made on this host by a process that is gone."""
    when = _lock_time(lock.get("time"))
    if when is None:
        return False
    if (datetime.now(timezone.utc) - when).total_seconds() > _STALE_AFTER:
        return True
    if lock.get("hostname") != socket.gethostname():
        return False  # another host's process cannot be seen from here
    pid = lock.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # it runs, as another user
    return False


def open_private(path: str, what: str) -> int:
    """A descriptor of ``path``, a regular file that no other user can read (mode 0600 or stricter), never through a
    link; one sentence otherwise."""
    if not os.path.isabs(path):
        raise RepoError(f"{what} must be an absolute path, not {path!r}")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as exc:
        raise RepoError(f"{what} {path} cannot be read: {exc.strerror}") from None
    st = os.fstat(fd)
    problem = ""
    if not stat.S_ISREG(st.st_mode):
        problem = f"{what} {path} is not a regular file"
    elif st.st_mode & 0o077:
        problem = f"{what} {path} can be read by other users (mode {stat.S_IMODE(st.st_mode):04o}): chmod 600 it"
    if problem:
        os.close(fd)
        raise RepoError(problem)
    os.set_inheritable(fd, False)
    return fd


_TAG_RE = re.compile(r"^[A-Za-z0-9_.:=@+-]{1,200}\Z")


_PR_SET_PDEATHSIG = 1
_LIBC = ctypes.CDLL(None, use_errno=True)  # loaded before any fork: a child only calls into it


class Dump:
    """One ``restic dump`` running, its output read by a thread up to a limit and one byte more (then killed)."""

    def __init__(self, restic: Restic, argv: list[str], limit: int) -> None:
        self.restic, self.limit = restic, limit
        try:
            self.proc = subprocess.Popen(
                argv, env=restic.environment(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE
            )
        except FileNotFoundError:
            raise RepoError(f"restic is not installed ({restic.binary}): apt-get install restic") from None
        self.out = bytearray()
        self.err = b""
        self._error: BaseException | None = None
        self._lock = threading.Lock()
        self._ended = False  # the reading ended: from then on only the reader signals and reaps restic
        self._stopped = self._taken = False
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _drain_errors(self) -> None:
        assert self.proc.stderr is not None  # noqa: S101
        self.err = self.proc.stderr.read(1 << 20)  # what restic says, bounded; the rest read and dropped
        while self.proc.stderr.read(1 << 16):
            pass

    def _read(self) -> None:
        assert self.proc.stdout is not None  # noqa: S101
        errors = threading.Thread(target=self._drain_errors, daemon=True)
        errors.start()
        at_end = False
        try:
            while len(self.out) <= self.limit:
                chunk = self.proc.stdout.read(min(1 << 20, self.limit + 1 - len(self.out)))
                if not chunk:
                    at_end = True
                    break
                self.out += chunk
        except Exception as exc:  # (said by result)
            self._error = exc
        with self._lock:
            self._ended = True
            if not at_end:  # too long, or unreadable: restic would wait on a pipe no one reads
                self.proc.kill()
        self.proc.wait()
        errors.join()

    def _close(self) -> None:
        self._reader.join()
        for pipe in (self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()

    def result(self) -> bytes:
        """The content read (``limit`` bytes and one more at most); raises as :meth:`Restic.failure` says."""
        self._close()
        if self._stopped or self._taken:
            raise RepoError("the dump was stopped" if self._stopped else "the dump was read already")
        self._taken = True
        if self._error is not None:
            raise RepoError(f"reading what restic dump wrote on {self.restic.repo.shown} failed: {self._error}")
        if len(self.out) <= self.limit and self.proc.returncode != 0:
            said = self.err.decode(errors="replace")
            raise self.restic.failure("dump", Result(self.proc.returncode, "", said))
        content, self.out = bytes(self.out), bytearray()
        return content

    def stop(self) -> None:
        """End it unread (its memory freed), at once."""
        self._stopped = True
        with self._lock:
            if not self._ended:  # (restic not reaped yet: the signal cannot reach another process)
                self.proc.kill()
        self._close()
        self.out = bytearray()


class Started:
    """A ``restic backup`` waiting for its exclude file (:meth:`Restic.start_backup`): :meth:`finish` hands it over
    and waits for the snapshot, :meth:`abandon` stops restic first (were the pipe closed first, restic would read
    an empty exclude file and back up what it must leave out)."""

    def __init__(self, restic: Restic, process: subprocess.Popen[str], excludes: int) -> None:
        self.restic = restic
        self.process = process
        self._excludes = excludes  # the pipe's write end; -1 once closed
        self._lock = threading.Lock()

    def _close(self) -> None:
        with self._lock:
            fd, self._excludes = self._excludes, -1
        if fd >= 0:
            os.close(fd)

    def finish(self, excludes: bytes) -> dict[str, Any]:
        """The exclude file's lines handed to restic, then its summary; RepoError in one sentence."""
        with self._lock:
            fd = self._excludes
        if fd < 0:
            raise RepoError(f"restic backup into {self.restic.repo.shown} was abandoned")

        def hand_over() -> None:  # (beside the wait: restic reads a long exclude file as it is written)
            try:
                view = memoryview(excludes)
                while view:
                    view = view[os.write(fd, view) :]
            except OSError:
                pass  # (restic ended before reading it: its failure is what is reported)
            finally:
                self._close()

        writer = threading.Thread(target=hand_over, daemon=True)
        writer.start()
        try:
            out, err = self.process.communicate(timeout=self.restic.timeout)
        except subprocess.TimeoutExpired:
            self.abandon()
            raise RepoError(
                f"restic backup on {self.restic.repo.shown} did not finish in {self.restic.timeout:g} s"
            ) from None
        finally:
            if self.process.returncode is None:  # (interrupted: restic never goes on alone)
                self.abandon()
            writer.join()
        result = Result(self.process.returncode, out or "", err or "")
        if result.code != 0:
            raise self.restic.failure("backup", result)
        return self.restic.summary(result)

    def abandon(self) -> None:
        """Stop restic, then close the pipe: SIGINT first (restic removes its lock and saves nothing), SIGKILL when it
        has not ended within five seconds; then ``restic unlock``, which removes a lock of this host's that no live
        process holds (restic takes a fifth of a second to count a new lock as its own: stopped meanwhile, it leaves
        the lock behind). Does nothing to a restic that has ended."""
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGINT)
            try:
                self.process.communicate(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.communicate()
            self._close()
            with contextlib.suppress(RepoError):
                self.restic._call(["unlock"], 60, ())
        self._close()


def _dies_with(parent: int) -> Callable[[], None]:
    """What a child runs before restic: SIGKILL it when ``parent`` dies (``prctl(PR_SET_PDEATHSIG)``), and exit
    at once when it is dead already."""

    def child() -> None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:
            os._exit(1)

    return child


def _chosen(snapshot_id: str, host: str, tags: Sequence[str]) -> list[str]:
    """The arguments that name a snapshot: its id, or ``latest`` of ``host`` among those holding all ``tags``."""
    if snapshot_id == "latest" and host and tags:
        return ["--host", host, "--tag", ",".join(_tag(t) for t in tags), "--", "latest"]
    return ["--", _snapshot_id(snapshot_id)]


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
