# Copyright: selfhost.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Reading a tar stream member by member, fast and without trusting it.

Standard library only. ``tarfile``'s stream mode copies every block several
times; this reader fills one reusable buffer with ``readinto`` and hands out
views of it, which makes hashing a gigabyte of members cost little more than
the hash. Headers are parsed by ``tarfile.TarInfo.frombuf`` (checksums
included); pax extended headers and GNU long names are applied here. Nothing
is written anywhere: callers decide what a member may become.
"""

from __future__ import annotations

import grp
import pwd
import stat
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, BinaryIO

from .._common import Error

if TYPE_CHECKING:
    from .scan import Entry

BLOCK = tarfile.BLOCKSIZE
_CHUNK = 1024 * 1024
_ZERO = bytes(BLOCK)
# Extended headers and long names are read into memory: bounded, so a hostile archive cannot make this process
# allocate what its header claims. A path or link target is at most 4 KiB on Linux.
MAX_EXTENDED = 1024 * 1024
_MAX_ID = 2**32 - 2  # (uid_t)-1 means "leave unchanged" to chown: never a real owner


class TarStreamError(Error):
    """The stream is not a complete, well-formed tar archive."""


@dataclass
class Member:
    name: str
    type: bytes
    mode: int
    uid: int
    gid: int
    mtime: float
    size: int
    linkname: str

    @property
    def kind(self) -> str:
        """file, dir, symlink, hardlink or special."""
        if self.type in (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE):
            return "file"
        return {tarfile.DIRTYPE: "dir", tarfile.SYMTYPE: "symlink", tarfile.LNKTYPE: "hardlink"}.get(
            self.type, "special"
        )


class TarReader:
    """Iterate over ``members()``; for each file member, ``chunks()`` yields its data (views, valid until the next)."""

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream
        self._buf = bytearray(_CHUNK)
        self._view = memoryview(self._buf)
        self._left = 0  # data bytes of the current member not yet read
        self._pad = 0
        self.offset = 0

    def _read_exact(self, n: int) -> bytes:
        data = self._stream.read(n)
        if data is None or len(data) < n:
            raise TarStreamError("the archive ends in the middle of a member (it is truncated)")
        self.offset += n
        return data

    def _skip(self, n: int) -> None:
        while n > 0:
            got = self._stream.readinto(self._view[: min(n, _CHUNK)])
            if not got:
                raise TarStreamError("the archive ends in the middle of a member (it is truncated)")
            n -= got
            self.offset += got

    def chunks(self) -> Iterator[memoryview]:
        """The current member's data; must be consumed before the next member is asked for."""
        while self._left > 0:
            got = self._stream.readinto(self._view[: min(self._left, _CHUNK)])
            if not got:
                raise TarStreamError("the archive ends in the middle of a member (it is truncated)")
            self._left -= got
            self.offset += got
            yield self._view[:got]

    def members(self) -> Iterator[Member]:
        pax: dict[str, str] = {}
        pax_bytes = 0
        long_name = long_link = ""
        while True:
            if self._left:
                for _ in self.chunks():
                    pass
            self._skip(self._pad)
            self._pad = 0
            block = self._stream.read(BLOCK)
            if not block:
                raise TarStreamError("the archive ends without the end-of-archive marker (it is truncated)")
            if len(block) < BLOCK:
                raise TarStreamError("the archive ends in the middle of a header (it is truncated)")
            self.offset += BLOCK
            if block == _ZERO:
                return  # end of archive (a second zero block and padding may follow)
            try:
                info = tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
            except tarfile.HeaderError as exc:
                raise TarStreamError(f"a tar header at byte {self.offset - BLOCK} is damaged ({exc})") from exc
            padded = info.size + (-info.size % BLOCK)
            extended = (tarfile.XHDTYPE, tarfile.SOLARIS_XHDTYPE, tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK)
            if info.type in extended and info.size > MAX_EXTENDED:
                raise TarStreamError(f"an extended tar header at byte {self.offset - BLOCK} is larger than 1 MiB")
            if info.type in (tarfile.XHDTYPE, tarfile.SOLARIS_XHDTYPE):
                pax_bytes += info.size
                if pax_bytes > MAX_EXTENDED:  # several extended headers for one member add up
                    raise TarStreamError(
                        f"the extended tar headers before byte {self.offset} add up to more than 1 MiB"
                    )
                pax.update(_pax_records(self._read_exact(padded)[: info.size]))
                continue
            if info.type == tarfile.XGLTYPE:
                self._skip(padded)
                continue
            if info.type in (tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK):
                text = self._read_exact(padded)[: info.size].rstrip(b"\0").decode("utf-8", "surrogateescape")
                if info.type == tarfile.GNUTYPE_LONGNAME:
                    long_name = text
                else:
                    long_link = text
                continue
            name = pax.get("path") or long_name or info.name
            member = Member(
                name=name.rstrip("/") if info.type == tarfile.DIRTYPE else name,
                type=info.type,
                mode=info.mode,
                uid=_number(pax.get("uid", info.uid), int, _MAX_ID),
                gid=_number(pax.get("gid", info.gid), int, _MAX_ID),
                mtime=_number(pax.get("mtime", info.mtime), float, 2.0**62 / 1e9, low=-(2.0**62) / 1e9),
                size=_number(pax.get("size", info.size), int, 2**62),
                linkname=pax.get("linkpath") or long_link or info.linkname,
            )
            pax, long_name, long_link, pax_bytes = {}, "", "", 0
            has_data = member.kind == "file" or member.type not in (
                tarfile.DIRTYPE,
                tarfile.SYMTYPE,
                tarfile.LNKTYPE,
                tarfile.CHRTYPE,
                tarfile.BLKTYPE,
                tarfile.FIFOTYPE,
            )
            self._left = member.size if has_data else 0
            self._pad = -self._left % BLOCK
            yield member


def _number(value: object, kind: type, top: float, low: float = 0) -> int | float:
    """A header's number, checked: a finite value from ``low`` to ``top``, else the header is damaged."""
    try:
        number = kind(value)
    except (TypeError, ValueError, OverflowError) as exc:
        raise TarStreamError("a tar header holds a number that is not one") from exc
    if not low <= number <= top:  # NaN fails this too
        raise TarStreamError("a tar header holds a number out of range")
    return number  # type: ignore[no-any-return]


def _pax_records(data: bytes) -> dict[str, str]:
    """``"%d %s=%s\\n"`` records of a pax extended header."""
    records: dict[str, str] = {}
    pos = 0
    while pos < len(data):
        space = data.find(b" ", pos)
        if space < 0:
            break
        try:
            length = int(data[pos:space])
        except ValueError as exc:
            raise TarStreamError("a pax extended header is damaged") from exc
        if length <= 0:
            raise TarStreamError("a pax extended header is damaged")
        record = data[space + 1 : pos + length - 1]
        key, _, value = record.partition(b"=")
        records[key.decode("utf-8", "surrogateescape")] = value.decode("utf-8", "surrogateescape")
        pos += length
    return records


# Writing: the headers of the members create() streams.

RECORD = tarfile.RECORDSIZE


class Names:
    """uid/gid to names, looked up once each."""

    def __init__(self) -> None:
        self._users: dict[int, str] = {}
        self._groups: dict[int, str] = {}

    def user(self, uid: int) -> str:
        if uid not in self._users:
            try:
                self._users[uid] = pwd.getpwuid(uid).pw_name
            except KeyError:
                self._users[uid] = ""
        return self._users[uid]

    def group(self, gid: int) -> str:
        if gid not in self._groups:
            try:
                self._groups[gid] = grp.getgrgid(gid).gr_name
            except KeyError:
                self._groups[gid] = ""
        return self._groups[gid]


def header(entry: Entry, size: int, names: Names) -> bytes:
    info = tarfile.TarInfo(entry.member)
    info.mode = stat.S_IMODE(entry.st.st_mode)
    info.uid, info.gid = entry.st.st_uid, entry.st.st_gid
    info.uname, info.gname = names.user(info.uid), names.group(info.gid)
    info.mtime = int(entry.st.st_mtime)
    if entry.kind == "dir":
        info.type = tarfile.DIRTYPE
    elif entry.kind == "symlink":
        info.type = tarfile.SYMTYPE
        info.linkname = entry.target
    else:
        info.size = size
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


def padding(size: int) -> bytes:
    return b"\0" * (-size % BLOCK)
