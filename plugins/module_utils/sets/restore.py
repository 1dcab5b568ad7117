# Copyright: selfhost.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Where a set's trees go (:func:`plan`) and how they are unpacked into private staging places beside their
targets, never writing, chmodding or chowning through a link (:class:`StagingUnpacker`).

Swapping the staged trees in, under the host's journal, is :mod:`..engine.swap`.
"""

from __future__ import annotations

import contextlib
import errno
import os
import posixpath
import stat
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from .. import safe_fs
from .._common import RestoreError, write_all
from .tar_stream import Member

_FLUSH_EVERY = 128 * 1024 * 1024


_CLASHES = (errno.EEXIST, errno.ENOTDIR, errno.EISDIR, errno.ELOOP)


@dataclass
class Unit:
    """One tree to restore: ``path`` in the set.

    It is swapped in at ``name`` in the directory reached from ``anchor`` (the host's own directory, resolved as
    usual) through ``below`` (existing directories, opened without following links). ``prefix`` is the way from
    the swap point down to ``path`` when directories above ``path`` are missing: they are staged with it, so a
    refused restore creates nothing.
    """

    path: str
    kind: str  # dir, file or symlink: what is staged at the swap point
    anchor: str
    below: list[str]
    name: str
    prefix: tuple[str, ...] = ()
    via_link: str = ""  # a path that was a link when backed up, followed to the place the set recorded

    @property
    def parent(self) -> str:
        return os.path.join(self.anchor, *self.below)

    @property
    def target(self) -> str:
        """Where the set's ``path`` ends up."""
        return os.path.join(self.parent, self.name, *self.prefix)

    @property
    def swap_point(self) -> str:
        return os.path.join(self.parent, self.name)


def is_under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def units_for(manifest: dict[str, object], only: Iterable[str] | None) -> list[str]:
    """The absolute paths to restore: the set's paths, or the chosen ones (each inside one of them)."""
    recorded = [str(p) for p in manifest.get("paths", [])]  # type: ignore[attr-defined]
    if not only:
        return sorted(recorded)
    units = []
    for raw in only:
        path = posixpath.normpath(raw)
        if not posixpath.isabs(path) or path == "/":
            raise RestoreError(f"paths to restore must be absolute paths below /, got {raw!r}")
        if not any(is_under(path, r) for r in recorded):
            raise RestoreError(f"{path} is not in this backup set (it holds {', '.join(recorded)})")
        units.append(path)
    units = sorted(set(units))
    return [u for u in units if not any(u != o and is_under(u, o) for o in units)]


def plan(
    manifest: dict[str, object],
    dest_root: str = "/",
    only: Iterable[str] | None = None,
    restored: Iterable[str] = (),
) -> list[Unit]:
    """Where each tree of the set (or of ``only``) goes under ``dest_root``; the same for check mode and a run.

    Refuses in one sentence a target reached through a symbolic link below a path of the set, or through a
    link that an earlier restore put in place (``restored``: the trees earlier restores wrote; a link there is
    data, not this host's layout), a recorded link that now leads elsewhere, a component that is not a
    directory, and trees that would land in one another with different content.
    """
    root = os.path.abspath(dest_root)
    restored = list(restored)
    links = {str(link["path"]): str(link["target"]) for link in manifest.get("links", [])}  # type: ignore[attr-defined,index]
    kinds = {"/" + str(f["path"]): str(f["type"]) for f in manifest.get("files", [])}  # type: ignore[attr-defined,index]
    recorded = [str(p) for p in manifest.get("paths", [])]  # type: ignore[attr-defined]
    units: list[Unit] = []
    for path in units_for(manifest, only):
        if not any(is_under(k, path) for k in kinds):
            if not only:
                continue  # a path that was excluded or empty when backed up: nothing to put back
            raise RestoreError(f"nothing in this backup set lies under {path}")
        top = next(r for r in recorded if is_under(path, r))
        _refuse_restored_links(root, top, path, restored)
        units.append(_locate(path, top, kinds.get(path, "dir"), links, root))
    files = {"/" + str(f["path"]): f for f in manifest.get("files", [])}  # type: ignore[attr-defined,index]
    kept: list[Unit] = []
    for unit in sorted(units, key=lambda u: len(u.swap_point)):
        outer = next((k for k in kept if is_under(unit.swap_point, k.swap_point)), None)
        if outer is None:
            kept.append(unit)
        elif not ((outer.via_link or unit.via_link) and _same_content(unit, outer, files)):
            raise RestoreError(
                f"two trees of this set would be restored into one another ({outer.target} and {unit.target}) "
                "with different content; restore them one at a time with paths"
            )
        # else: a path backed up through a link into another path of the set, holding the same: restored once
    return sorted(kept, key=lambda u: u.path)


def _same_content(inner: Unit, outer: Unit, files: dict[str, dict[str, object]]) -> bool:
    """Whether the set holds the same members for ``inner`` as for the place in ``outer`` it lands on."""
    keys = ("type", "mode", "uid", "gid", "size", "sha256", "target")

    def below(unit: Unit, where: str) -> dict[str, tuple[object, ...]]:
        start = os.path.join(unit.path, os.path.relpath(where, unit.target)) if where != unit.target else unit.path
        return {
            os.path.relpath(name, start): tuple(rec.get(k) for k in keys)
            for name, rec in files.items()
            if is_under(name, start)
        }

    return below(inner, inner.target) == below(outer, inner.target)


def _refuse_restored_links(root: str, top: str, path: str, restored: list[str]) -> None:
    probe = root
    for part in os.path.dirname(top).strip("/").split("/"):
        if not part:
            continue
        probe = os.path.join(probe, part)
        if os.path.islink(probe):
            if any(is_under(probe, t) for t in restored):
                raise RestoreError(
                    f"{probe} is a symbolic link an earlier restore put there (data, not this host's layout); "
                    f"refusing to restore {path} through it"
                )
            probe = os.path.realpath(probe)


def _host(root: str, path: str) -> str:
    return os.path.join(root, path.lstrip("/"))


def _trusted(path: str, what: str) -> str:
    try:
        return safe_fs.resolve_trusted(path)
    except safe_fs.UntrustedLinkError as exc:
        raise RestoreError(
            f"the way to {what} goes through the symbolic link {exc.link}, which others could have changed "
            f"({exc.problem}); not followed"
        ) from exc


def _locate(path: str, top: str, kind: str, links: dict[str, str], root: str) -> Unit:
    # Above the set's path is the host's own layout, resolved as usual (through links only root could have made);
    # from it down, no link is followed.
    anchor = _trusted(os.path.dirname(_host(root, top)), path)
    name = os.path.basename(top)
    here = os.path.join(anchor, name)
    via = ""
    if os.path.islink(here):
        if top in links:
            want = _trusted(_host(root, links[top]), path)
            now = _trusted(here, path)
            if now != want:
                raise RestoreError(
                    f"{here} is a symbolic link to {now}, but the set was taken through it from {want}; "
                    "point it back or restore with another dest_root"
                )
            anchor, name = os.path.split(now)
            via = here
        elif path != top:
            raise RestoreError(f"{here} is a symbolic link; refusing to restore {path} through it")
    if path == top:
        return Unit(path, kind, anchor, [], name, (), via)
    chain = [name, *os.path.relpath(path, top).split("/")]
    below: list[str] = []
    current = anchor
    for n, part in enumerate(chain[:-1]):
        current = os.path.join(current, part)
        try:
            st = os.lstat(current)
        except FileNotFoundError:
            # Stage from the first missing directory down: nothing is made outside staging before the swap.
            return Unit(path, "dir", anchor, below, part, tuple(chain[n + 1 :]), via)
        if stat.S_ISLNK(st.st_mode):
            raise RestoreError(f"{current} is a symbolic link; refusing to restore {path} through it")
        if not stat.S_ISDIR(st.st_mode):
            raise RestoreError(f"{current} is not a directory; cannot restore {path} below it")
        below.append(part)
    return Unit(path, kind, anchor, below, chain[-1], (), via)


def open_unit_parent(unit: Unit) -> int:
    """Open the directory ``unit`` is swapped into: the host's directory, then down without following links."""
    if not os.path.isdir(unit.anchor):
        try:  # like mkdir -p, readable by the services that will use them; the host's part, not the set's
            safe_fs.makedirs_private(unit.anchor, mode=0o755)
        except OSError as exc:
            raise RestoreError(f"cannot create {unit.anchor}: {exc.strerror}") from exc
    fd = os.open(unit.anchor, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    current = unit.anchor
    try:
        for part in unit.below:
            current = os.path.join(current, part)
            try:
                child = safe_fs.open_dir(part, fd)
            except safe_fs.UnsafePathError as exc:
                raise RestoreError(f"{current} is not a directory (a link?); refusing to restore {unit.path}") from exc
            except FileNotFoundError as exc:
                raise RestoreError(f"{current} vanished while restoring {unit.path}") from exc
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


def make_staging(kind: str, name: str, parent_fd: int) -> tuple[list[int], int]:
    """Create the private staging place of one tree (a directory, or an empty file): its identity, and a descriptor
    of it that the unpacker works through (never the name again: the target's directory may be writable by others,
    who could swap the name)."""
    if kind == "symlink":
        return [], -1  # made at the end, when the links are made
    try:
        if kind == "file":
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            fd = os.open(name, flags, 0o600, dir_fd=parent_fd)
        else:
            os.mkdir(name, 0o700, dir_fd=parent_fd)
            fd = safe_fs.open_dir(name, parent_fd)
    except FileExistsError as exc:
        raise RestoreError(f"{name} already exists beside the target; it was not made by this restore") from exc
    st = os.fstat(fd)
    return [st.st_dev, st.st_ino], fd


class StagingUnpacker:
    """Writes the members under the restored trees into their staging places, never through a link.

    Directories are opened one level at a time relative to the level above (``O_NOFOLLOW``), kept open along
    the current path; files are created with ``O_EXCL | O_NOFOLLOW`` and given their owner, mode and times
    through their descriptor. Links wait for :meth:`finish`, which runs only after the verification passed.
    """

    def __init__(
        self,
        units: list[Unit],
        parent_fds: list[int],
        stagings: list[str],
        staging_fds: list[int],
        dirs: dict[str, tuple[int, int, int, int]],
    ) -> None:
        self._staging_fds = staging_fds  # owned by the caller
        self.units = units
        self._set_dirs = dirs
        self._parents = parent_fds
        self._stagings = stagings
        self.written: set[str] = set()
        self.files = 0
        self.bytes = 0
        self.current_path = ""
        self._links: list[tuple[int, tuple[str, ...], Member]] = []
        self._dirs: list[tuple[int, tuple[str, ...], Member]] = []
        self._stack: list[tuple[int, tuple[str, ...], int]] = []
        self._fd = -1
        self._root_file = -1  # the unit whose root file is being written (its metadata waits for finish())
        self._held: list[tuple[int, Member]] = []  # such files, open, until the set verified
        self._flushed = 0
        self._flusher: threading.Thread | None = None
        self._root = os.geteuid() == 0

    def _dir(self, unit: int, rel: tuple[str, ...], create: bool = True) -> int:
        """The staging directory ``rel`` of ``unit`` (``()``: the staging root), made when missing."""
        while self._stack and not (self._stack[-1][0] == unit and rel[: len(self._stack[-1][1])] == self._stack[-1][1]):
            os.close(self._stack.pop()[2])
        if not self._stack:
            self._stack.append((unit, (), os.dup(self._staging_fds[unit])))
        while len(self._stack[-1][1]) < len(rel):
            top = self._stack[-1]
            sub = rel[: len(top[1]) + 1]
            if create:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(sub[-1], 0o700, dir_fd=top[2])
            self._stack.append((unit, sub, safe_fs.open_dir(sub[-1], top[2])))
        return self._stack[-1][2]

    def begin(self, member: Member) -> Callable[[memoryview], None] | None:
        path = "/" + member.name
        index = next((n for n, u in enumerate(self.units) if is_under(path, u.path)), -1)
        if index < 0:
            return None
        unit = self.units[index]
        rel = unit.prefix + (tuple(os.path.relpath(path, unit.path).split("/")) if path != unit.path else ())
        if not rel and member.kind != unit.kind:
            return None  # not what the manifest says this path is: verify refuses the set, nothing is staged
        if member.kind == "symlink":
            self.written.add(path)
            self._links.append((index, rel, member))
            return None
        try:
            if member.kind == "dir":
                self._dir(index, rel)
                self._dirs.append((index, rel, member))
                self.written.add(path)
                return None
            if not rel:
                self._fd = os.dup(self._staging_fds[index])
                self._root_file = index
                self.current_path = os.path.join(unit.parent, self._stagings[index])
            else:
                parent = self._dir(index, rel[:-1])
                self._fd = os.open(
                    rel[-1], os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=parent
                )
                self.current_path = os.path.join(unit.parent, self._stagings[index], *rel)
        except OSError as exc:
            if isinstance(exc, safe_fs.UnsafePathError) or exc.errno in _CLASHES:
                # Two members of this set claim one place (a file and a directory, a name twice): the set's
                # structure is wrong, and the verification running alongside refuses it in its own words.
                return None
            raise RestoreError(f"could not unpack {member.name}: {exc.strerror}") from exc
        self.written.add(path)
        return self._write

    def _write(self, chunk: memoryview) -> None:
        try:
            write_all(self._fd, chunk)
        except OSError as exc:
            raise RestoreError(f"could not write {self.current_path}: {exc.strerror}") from exc
        self.bytes += len(chunk)
        if self.bytes - self._flushed >= _FLUSH_EVERY and not (self._flusher and self._flusher.is_alive()):
            # Write back what is staged while unpacking goes on: the sync before the swap stays short.
            self._flushed = self.bytes
            self._flusher = threading.Thread(target=os.sync, daemon=True)
            self._flusher.start()

    def end(self, member: Member) -> None:
        if self._fd < 0:
            return
        if self._root_file >= 0:
            # A tree that is one file is staged right in the target's directory, where others may look: its
            # owner and mode (setuid, say) are given only once the whole set verified, in finish().
            self._held.append((self._fd, member))
            self._fd, self._root_file = -1, -1
            self.files += 1
            return
        try:
            _set_metadata(self._fd, member.mode, member.uid, member.gid, member.mtime, self._root)
        except OSError as exc:
            raise RestoreError(f"could not give {self.current_path} its owner, mode and times: {exc.strerror}") from exc
        finally:
            os.close(self._fd)
            self._fd = -1
        self.files += 1

    def link_kept(
        self, path: str, live: list[int], cache: dict[tuple[int, tuple[str, ...]], int]
    ) -> tuple[int, os.stat_result]:
        """Stage the file ``path`` as a second name of the file at the same place in its unit's live tree (``live``:
        a descriptor of each unit's live tree, or -1): a delta set's kept file. Every directory is opened without
        following a link, and so is the file; what was linked is returned as its unit's index (its content is
        checked by the caller) with the file's stat right before it was linked (a link changes its ctime).
        ``cache``: open directories of the live trees, closed by the caller."""
        index, rel = self.place(path, live)
        try:
            src = self._live_dir(index, rel, live, cache)
            dst = self._dir(index, rel[:-1])
            before = os.stat(rel[-1], dir_fd=src, follow_symlinks=False)
            os.link(rel[-1], rel[-1], src_dir_fd=src, dst_dir_fd=dst, follow_symlinks=False)
        except OSError as exc:
            raise RestoreError(
                f"{path} is kept from the seed, but the seeded copy on this server cannot be taken "
                f"({exc.strerror or 'a link is in its way'})"
            ) from exc
        self.written.add(path)
        self.files += 1
        return index, before

    def place(self, path: str, live: list[int]) -> tuple[int, tuple[str, ...]]:
        """The unit a seeded file ``path`` lies in (its index) and its place below the unit's staging root."""
        index = next((n for n, u in enumerate(self.units) if is_under(path, u.path)), -1)
        unit = self.units[index] if index >= 0 else None
        if unit is None or path == unit.path or live[index] < 0:
            raise RestoreError(f"{path} is taken from the seed but lies in no tree being replaced")
        return index, unit.prefix + tuple(os.path.relpath(path, unit.path).split("/"))

    def _live_dir(
        self, index: int, rel: tuple[str, ...], live: list[int], cache: dict[tuple[int, tuple[str, ...]], int]
    ) -> int:
        src = cache.get((index, rel[:-1]))
        if src is None:
            src = os.dup(live[index])
            for part in rel[:-1]:
                below = safe_fs.open_dir(part, src)
                os.close(src)
                src = below
            for key in [k for k in cache if k[0] == index]:  # one directory of each tree open at a time
                os.close(cache.pop(key))
            cache[(index, rel[:-1])] = src
        return src

    def open_seeded(
        self, path: str, live: list[int], cache: dict[tuple[int, tuple[str, ...]], int]
    ) -> tuple[int, os.stat_result]:
        """The file ``path`` of its unit's live tree opened for reading, never through a link (see
        :meth:`link_kept`)."""
        index, rel = self.place(path, live)
        try:
            fd, st = safe_fs.open_file(rel[-1], self._live_dir(index, rel, live, cache))
        except OSError as exc:
            raise RestoreError(
                f"the seeded {path} cannot be read on this server ({exc.strerror or 'a link is in its way'})"
            ) from exc
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            raise RestoreError(f"the seeded {path} on this server is not a regular file")
        return fd, st

    def staged_dir(self, index: int, rel: tuple[str, ...]) -> int:
        """The staging directory ``rel`` of unit ``index`` (open while this unpacker is)."""
        return self._dir(index, rel, create=False)

    def staged_path(self, index: int, rel: tuple[str, ...]) -> str:
        """Where ``rel`` of unit ``index`` is staged, as a path (below a staging directory this restore made)."""
        return os.path.join(self.units[index].parent, self._stagings[index], *rel)

    def seal(self, fd: int, mode: int, uid: int, gid: int, mtime: float) -> None:
        """Give a file staged by the caller its owner, mode and times, as :meth:`end` gives an unpacked one."""
        _set_metadata(fd, mode, uid, gid, mtime, self._root)

    def finish(self) -> None:
        """Make the links, give the files that are whole trees their metadata, then every directory its owner,
        mode and times, deepest first."""
        while self._held:
            fd, member = self._held.pop()
            try:
                _set_metadata(fd, member.mode, member.uid, member.gid, member.mtime, self._root)
            finally:
                os.close(fd)
        for index, rel, member in self._links:
            if rel:
                parent, name = self._dir(index, rel[:-1]), rel[-1]
            else:
                parent, name = self._parents[index], self._stagings[index]
            os.symlink(member.linkname, name, dir_fd=parent)
            if self._root:
                os.chown(name, member.uid, member.gid, dir_fd=parent, follow_symlinks=False)
            os.utime(name, ns=(int(member.mtime * 1e9),) * 2, dir_fd=parent, follow_symlinks=False)
        todo = [(index, rel, member.mode, member.uid, member.gid, member.mtime) for index, rel, member in self._dirs]
        for index, unit in enumerate(self.units):  # the missing directories staged above the chosen path
            for depth in range(len(unit.prefix)):
                above = unit.path.rsplit("/", len(unit.prefix) - depth)[0]
                if above in self._set_dirs:
                    todo.append((index, unit.prefix[:depth], *self._set_dirs[above]))
        for index, rel, mode, uid, gid, mtime in sorted(todo, key=lambda d: (d[0], len(d[1])), reverse=True):
            _set_metadata(self._dir(index, rel, create=False), mode, uid, gid, mtime, self._root)
        self.close()

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        while self._held:
            os.close(self._held.pop()[0])
        while self._stack:
            os.close(self._stack.pop()[2])


def _set_metadata(fd: int, mode: int, uid: int, gid: int, mtime: float, as_root: bool) -> None:
    """Owner, then mode (chown clears setuid and setgid), then times: all through the descriptor."""
    if as_root:
        os.fchown(fd, uid, gid)
    os.fchmod(fd, mode & 0o7777)
    os.utime(fd, ns=(int(mtime * 1e9),) * 2)
