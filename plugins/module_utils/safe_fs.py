# Copyright: selfhost.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""File-system primitives for code that runs as root over trees other users can write.

Standard library only. The rule they enforce: below a root the caller chose,
nothing is opened, created, written, chmodded, chowned or removed through a
symbolic link. Every directory is opened relative to its already-opened parent
with ``O_NOFOLLOW`` and checked to be the directory that was seen before
(device and inode); files are opened the same way, and with ``O_NONBLOCK`` so
a FIFO put in a file's place cannot hang the process. Metadata is changed
through file descriptors (``fchmod``, ``fchown``, ``utime(fd)``), never by path.

Above the root (``/var/lib`` for ``/var/lib/tenement``) is the host's own
configuration: those components are resolved normally.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import resource
import stat
from collections.abc import Iterator

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


class UnsafePathError(OSError):
    """A path component is a link, or not the object that was seen before."""


def same(a: os.stat_result, b: os.stat_result) -> bool:
    """Same file: device, inode and type."""
    return a.st_dev == b.st_dev and a.st_ino == b.st_ino and stat.S_IFMT(a.st_mode) == stat.S_IFMT(b.st_mode)


def open_dir(name: str, dir_fd: int | None = None, expect: os.stat_result | None = None) -> int:
    """Open the directory ``name`` (relative to ``dir_fd``) without following a link; check it is ``expect``."""
    try:
        fd = os.open(name, DIR_FLAGS, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise UnsafePathError(exc.errno, f"{name} is not a directory (a link or a file)", name) from exc
        raise
    if expect is not None and not same(os.fstat(fd), expect):
        os.close(fd)
        raise UnsafePathError(errno.ESTALE, f"{name} was replaced", name)
    return fd


def open_file(name: str, dir_fd: int) -> tuple[int, os.stat_result]:
    """Open ``name`` in ``dir_fd`` for reading: never through a link, never blocking on a FIFO."""
    fd = os.open(name, FILE_FLAGS, dir_fd=dir_fd)
    try:
        st = os.fstat(fd)
        if stat.S_ISREG(st.st_mode):
            fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
    except BaseException:
        os.close(fd)
        raise
    return fd, st


class NotRegularError(OSError):
    """Not a regular file: ``kind`` says what it is (``a symbolic link``, ``a directory``, ...)."""

    def __init__(self, path: str, kind: str) -> None:
        super().__init__(errno.EINVAL, f"{path} is {kind}, not a regular file", path)
        self.kind = kind


class TooLargeError(ValueError):
    """Larger than the limit; ``size`` is what fstat said, or None when the read went past the limit."""

    def __init__(self, path: str, limit: int, size: int | None) -> None:
        super().__init__(f"{path} is larger than {limit} bytes")
        self.limit = limit
        self.size = size


_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a named pipe (FIFO)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def kind_of(mode: int) -> str:
    """What a file of this ``st_mode`` is, in words."""
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISREG(mode):
        return "a regular file"
    return next((name for test, name in _KINDS if test(mode)), "of an unknown kind")


def read_regular(path: str, limit: int) -> bytes:
    """The whole content of the regular file ``path`` (its last component never followed), at most ``limit`` bytes.

    Never blocks on a FIFO (``O_NONBLOCK``, then ``fstat`` of what was opened), and the read stops one byte past
    the limit whatever size the file claims (``/proc``). Raises ``FileNotFoundError``, ``NotRegularError`` (a link,
    a directory, a FIFO, ...), ``TooLargeError``, or another ``OSError``.
    """
    try:
        fd = os.open(path, FILE_FLAGS | os.O_NOCTTY)
    except OSError as exc:
        if exc.errno == errno.ELOOP and os.path.islink(path):
            raise NotRegularError(path, "a symbolic link") from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise NotRegularError(path, kind_of(st.st_mode))
        if st.st_size > limit:
            raise TooLargeError(path, limit, st.st_size)
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
        chunks: list[bytes] = []
        total = 0
        while chunk := os.read(fd, min(1 << 20, limit + 1 - total)):
            chunks.append(chunk)
            total += len(chunk)
            if total > limit:  # the file grew, or claims a size it does not have
                raise TooLargeError(path, limit, None)
        return b"".join(chunks)
    finally:
        os.close(fd)


def raise_fd_limit(want: int = 65536) -> None:
    """Allow more open files (one per directory level is held while walking a tree)."""
    with contextlib.suppress(ValueError, OSError):
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        target = want if hard == resource.RLIM_INFINITY else min(want, hard)
        if soft != resource.RLIM_INFINITY and soft < target:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def makedirs_private(path: str, mode: int = 0o700) -> list[str]:
    """Create ``path`` and its missing parents with ``mode`` (0700), whatever the umask; return those created."""
    path = os.path.abspath(path)
    missing: list[str] = []
    probe = path
    while not os.path.lexists(probe):
        missing.append(probe)
        probe = os.path.dirname(probe)
    for new in reversed(missing):
        parent, name = os.path.split(new)
        pfd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            with contextlib.suppress(FileExistsError):
                os.mkdir(name, 0o700, dir_fd=pfd)
            fd = open_dir(name, pfd)
            try:
                os.fchmod(fd, mode)
            finally:
                os.close(fd)
        finally:
            os.close(pfd)
    if not os.path.isdir(path):
        raise NotADirectoryError(errno.ENOTDIR, "not a directory", path)
    return list(reversed(missing))


def remove_tree(name: str, dir_fd: int) -> None:
    """Remove ``name`` in ``dir_fd`` (a file, a link, or a whole directory tree), never following a link.

    Iterative, so a hostile tree of any depth is removed; each directory is opened relative to its parent (one
    descriptor per level is held: the open-file limit is raised first).
    """
    raise_fd_limit()
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(st.st_mode):
        os.unlink(name, dir_fd=dir_fd)
        return
    # Each frame: (fd of the directory, its name, fd of its parent, iterator over its entries).
    stack: list[tuple[int, str, int, Iterator[os.DirEntry[str]]]] = []
    fd = open_dir(name, dir_fd, st)
    try:
        entries = iter(list(os.scandir(fd)))
    except BaseException:
        os.close(fd)
        raise
    stack.append((fd, name, dir_fd, entries))
    try:
        while stack:
            fd, dname, pfd, entries = stack[-1]
            entry = next(entries, None)
            if entry is None:
                stack.pop()
                os.close(fd)
                os.rmdir(dname, dir_fd=pfd)
                continue
            if entry.is_dir(follow_symlinks=False):
                child = open_dir(entry.name, fd, entry.stat(follow_symlinks=False))
                try:
                    entries = iter(list(os.scandir(child)))
                except BaseException:
                    os.close(child)
                    raise
                stack.append((child, entry.name, fd, entries))
            else:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.name, dir_fd=fd)
    finally:
        for fd, _name, _pfd, _entries in stack:
            os.close(fd)


def remove_path(path: str) -> None:
    """Remove ``path`` (its parent resolved normally, ``path`` itself and below never followed)."""
    parent, name = os.path.split(os.path.abspath(path))
    try:
        pfd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        return
    try:
        remove_tree(name, pfd)
    finally:
        os.close(pfd)


def link_trust_problem(path: str) -> str:
    """Why the symbolic link ``path`` could have been put or changed by someone other than root (or this user), or "".

    The link and its directory must belong to root or this user, and the directory must not be writable by others
    (or be sticky, like /tmp, with the link owned by root or this user)."""
    me = {0, os.geteuid()}
    link = os.lstat(path)
    parent = os.stat(os.path.dirname(os.path.abspath(path)))
    if link.st_uid not in me:
        return f"it belongs to uid {link.st_uid}"
    if parent.st_uid not in me:
        return f"its directory belongs to uid {parent.st_uid}"
    if parent.st_mode & 0o022 and not parent.st_mode & stat.S_ISVTX:
        return f"its directory is writable by others, mode {stat.S_IMODE(parent.st_mode):04o}"
    return ""


class UntrustedLinkError(OSError):
    """A symbolic link on the way that someone other than root (or this user) could have put or changed."""

    def __init__(self, link: str, problem: str) -> None:
        super().__init__(errno.EPERM, f"{link} is a symbolic link others could have changed ({problem})", link)
        self.link = link
        self.problem = problem


def resolve_trusted(path: str) -> str:
    """``os.path.realpath(path)``, but every symbolic link met on the way must pass :func:`link_trust_problem`
    (else ``UntrustedLinkError``): the host's own layout, not a link a user could point at /etc. A missing part
    and what follows it are kept as they are, as realpath does."""
    pending = [p for p in os.path.abspath(path).split("/") if p]
    resolved = "/"
    hops = 0
    while pending:
        part = pending.pop(0)
        if part == ".":
            continue
        if part == "..":
            resolved = os.path.dirname(resolved)
            continue
        candidate = os.path.join(resolved, part)
        try:
            st = os.lstat(candidate)
        except (FileNotFoundError, NotADirectoryError):
            return os.path.normpath(os.path.join(candidate, *pending))
        if not stat.S_ISLNK(st.st_mode):
            resolved = candidate
            continue
        problem = link_trust_problem(candidate)
        if problem:
            raise UntrustedLinkError(candidate, problem)
        hops += 1
        if hops > 40:
            raise OSError(errno.ELOOP, "too many levels of symbolic links", path)
        target = os.readlink(candidate)
        if target.startswith("/"):
            resolved = "/"
        pending = [p for p in target.split("/") if p] + pending
    return resolved


def try_lock(fd: int) -> bool:
    """Take an exclusive flock on ``fd`` without waiting; False when another process holds it."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return False
        raise
    return True


def lock(fd: int) -> None:
    """Take an exclusive flock on ``fd``, waiting: another process's ``in_use`` probe holds it only for an instant."""
    fcntl.flock(fd, fcntl.LOCK_EX)


def in_use(path: str) -> bool:
    """True when a live process holds a lock on ``path`` (a file or directory, never followed)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        return not try_lock(fd)
    finally:
        os.close(fd)
