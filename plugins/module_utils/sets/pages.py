# Copyright: selfhost.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Page deltas of SQLite databases: a database a delta set carries as only the pages that changed since its base.

A migration's seed reads each database's snapshot page by page as it archives it and keeps a digest of every page
(BLAKE2b, 16 bytes) in the seed's index (:class:`PageMap`). SQLite's backup API copies a database page for page, so
a page no write touched since is the same bytes in the delta's snapshot. The delta then carries, for each changed
database, a *patch*: the pages whose digest differs and every page past the base's end. Its format::

    magic    b"selfhost.dr pages 1\\n" (20 bytes)
    header   the page size (unsigned 32-bit) and the size of the result in bytes (unsigned 64-bit), big-endian
    pages    for each page carried, in increasing order: its number (0-based, unsigned 32-bit big-endian), then its
             bytes (a page size of them; fewer for the last page when the result's size is not a whole number of
             pages)

The result is the base with the carried pages written over it, cut to its size (a page past the base's end is
always carried: a patch that leaves one out, or claims a size larger than its base and its pages together, is
refused before it is written, so a small patch never makes a large file). The delta's manifest
gives the result's size and sha256, and a rebuilt database is checked against them: a digest that missed a change
makes the rebuild fail, never a wrong database (docs/migrate.md shows how to rebuild one by hand).
"""

from __future__ import annotations

import base64
import hashlib
import os
import struct
from dataclasses import dataclass

from .._common import write_all

MAGIC = b"selfhost.dr pages 1\n"
_HEADER = struct.Struct(">IQ")
_NUMBER = struct.Struct(">I")
DIGEST = 16  # bytes of BLAKE2b per page
PAGE_SIZES = tuple(1 << n for n in range(9, 17))  # 512 to 65536: what SQLite allows
_SQLITE_HEADER = b"SQLite format 3\0"
_RUN = 256  # base pages read at a time while rebuilding


class PatchError(ValueError):
    """A patch that is not one this module writes, or that does not fit its base: one sentence."""


def page_size_of(head: bytes | memoryview) -> int:
    """The page size a SQLite database header gives (its first 18 bytes), or 0 when it is not one."""
    if len(head) < 18 or bytes(head[:16]) != _SQLITE_HEADER:
        return 0
    size = int.from_bytes(head[16:18], "big")
    size = 65536 if size == 1 else size
    return size if size in PAGE_SIZES else 0


def _digest(page: bytes | memoryview) -> bytes:
    return hashlib.blake2b(page, digest_size=DIGEST).digest()


@dataclass
class PageMap:
    """A database's page size, size in bytes and the digest of each of its pages, in order."""

    page_size: int
    size: int
    digests: bytes

    @property
    def pages(self) -> int:
        return len(self.digests) // DIGEST

    def to_json(self) -> dict[str, object]:
        return {"page_size": self.page_size, "size": self.size, "digests": base64.b64encode(self.digests).decode()}

    @classmethod
    def from_json(cls, doc: object) -> PageMap | None:
        """A map as :meth:`to_json` wrote it, or None when it is not one."""
        if not isinstance(doc, dict):
            return None
        page_size, size, digests = doc.get("page_size"), doc.get("size"), doc.get("digests")
        if page_size not in PAGE_SIZES or not isinstance(size, int) or isinstance(size, bool) or size < 0:
            return None
        if not isinstance(digests, str):
            return None
        try:
            raw = base64.b64decode(digests, validate=True)
        except ValueError:
            return None
        if len(raw) != -(-size // page_size) * DIGEST:  # type: ignore[operator]
            return None
        return cls(int(page_size), size, raw)  # type: ignore[arg-type]


class _Pager:
    """Cuts a stream of chunks into pages of the page size its first bytes give (``fallback`` when they are not a
    database header) and hands each to :meth:`page`."""

    def __init__(self, fallback: int = 4096) -> None:
        self.page_size = 0
        self.size = 0
        self._fallback = fallback
        self._buf = bytearray()
        self._index = 0

    def page(self, index: int, page: memoryview) -> None:
        raise NotImplementedError

    def update(self, chunk: bytes | memoryview) -> None:
        self.size += len(chunk)
        if not self.page_size:
            self._buf += chunk
            if len(self._buf) < 18:
                return
            self.page_size = page_size_of(self._buf) or self._fallback
            chunk, self._buf = bytes(self._buf), bytearray()
        view = memoryview(chunk)
        ps = self.page_size
        if self._buf:
            need = ps - len(self._buf)
            self._buf += view[:need]
            view = view[need:]
            if len(self._buf) < ps:
                return
            self.page(self._index, memoryview(bytes(self._buf)))
            self._index += 1
            self._buf = bytearray()
        whole = len(view) - len(view) % ps
        for offset in range(0, whole, ps):
            self.page(self._index, view[offset : offset + ps])
            self._index += 1
        self._buf += view[whole:]

    def finish(self) -> None:
        if not self.page_size:  # shorter than a header: one short page
            self.page_size = self._fallback
        if self._buf:
            self.page(self._index, memoryview(bytes(self._buf)))
            self._index += 1
            self._buf = bytearray()


class PageHasher(_Pager):
    """The :class:`PageMap` of a stream (a seed's snapshot as it is archived)."""

    def __init__(self) -> None:
        super().__init__()
        self._digests = bytearray()

    def page(self, index: int, page: memoryview) -> None:
        self._digests += _digest(page)

    def result(self) -> PageMap:
        self.finish()
        return PageMap(self.page_size, self.size, bytes(self._digests))


@dataclass
class Patch:
    """What :class:`PatchWriter` wrote: the patch's size, and the result's size, sha256, page size and the pages
    carried."""

    patch_size: int
    size: int
    sha256: str
    page_size: int
    pages: int

    def record(self, base_sha256: str) -> dict[str, object]:
        """The ``patch`` field of the database's record in a delta's manifest."""
        return {
            "base_sha256": base_sha256,
            "size": self.size,
            "sha256": self.sha256,
            "page_size": self.page_size,
            "pages": self.pages,
        }


class PatchWriter(_Pager):
    """Writes to ``fd`` (a new, empty file) the patch that turns the database ``base`` mapped into the stream it is
    fed: the pages whose digest differs, and those past the base's end (all of them when the page size changed)."""

    def __init__(self, base: PageMap, fd: int) -> None:
        super().__init__(base.page_size)
        self._base, self._fd = base, fd
        self.carried = 0
        self.sha256 = hashlib.sha256()  # (of the database: the member archived is the patch)
        write_all(fd, MAGIC + _HEADER.pack(0, 0))

    def update(self, chunk: bytes | memoryview) -> None:
        self.sha256.update(chunk)
        super().update(chunk)

    def page(self, index: int, page: memoryview) -> None:
        base = self._base
        same_place = self.page_size == base.page_size and index < base.pages
        if same_place and base.digests[index * DIGEST : (index + 1) * DIGEST] == _digest(page):
            return  # (a last page shorter in one than in the other hashes differently)
        write_all(self._fd, _NUMBER.pack(index) + bytes(page))
        self.carried += 1

    def result(self) -> Patch:
        self.finish()
        os.pwrite(self._fd, _HEADER.pack(self.page_size, self.size), len(MAGIC))
        size = os.fstat(self._fd).st_size
        return Patch(size, self.size, self.sha256.hexdigest(), self.page_size, self.carried)


def record_problem(patch: object) -> str:
    """Why ``patch`` (a record's ``patch`` field in a delta's manifest, hostile input) is not one :meth:`Patch.record`
    writes, or ""."""
    if not isinstance(patch, dict):
        return "its patch is not a mapping"
    for key in ("size", "pages", "page_size"):
        value = patch.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            return f"its patch's {key} is not a number"
    if patch["page_size"] not in PAGE_SIZES:
        return "its patch's page size is not one SQLite has"
    for key in ("sha256", "base_sha256"):
        value = patch.get(key)
        if not isinstance(value, str) or len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
            return f"its patch's {key} is not a sha256"
    return ""


def rebuild(base_fd: int, patch_fd: int, out_fd: int, size: int, page_size: int) -> str:
    """Write to ``out_fd`` (a new, empty file) the database the patch on ``patch_fd`` makes of the one on
    ``base_fd``; return its sha256. ``size`` and ``page_size`` are what the manifest says of the result: a patch that
    says otherwise, carries a page out of order or past the end, or holds anything more is refused (PatchError)."""
    patch_size = os.fstat(patch_fd).st_size
    head = os.pread(patch_fd, len(MAGIC) + _HEADER.size, 0)
    if len(head) < len(MAGIC) + _HEADER.size or head[: len(MAGIC)] != MAGIC:
        raise PatchError("it is not a page patch of selfhost.dr")
    got_ps, got_size = _HEADER.unpack(head[len(MAGIC) :])
    if (got_ps, got_size) != (page_size, size):
        raise PatchError("its header does not say what the manifest says of the database")
    base_size = os.fstat(base_fd).st_size
    if size > base_size + patch_size:
        raise PatchError("it would make a database larger than its base and all its pages together")
    pages = -(-size // page_size)
    digest = hashlib.sha256()
    offset = len(head)  # in the patch
    index = 0  # the next page of the result

    def emit(data: bytes) -> None:
        digest.update(data)
        write_all(out_fd, data)

    def from_base(first: int, last: int) -> None:  # pages [first, last) of the result, from the base
        if first < last and min(last * page_size, size) > base_size:
            raise PatchError(f"it leaves out page {last - 1}, which its base does not hold whole")
        for start in range(first, last, _RUN):
            begin, end = start * page_size, min(min(start + _RUN, last) * page_size, size)
            data = os.pread(base_fd, end - begin, begin)
            if len(data) != end - begin:
                raise PatchError("its base changed while the database was rebuilt")
            emit(data)

    while offset < patch_size:
        number = os.pread(patch_fd, _NUMBER.size, offset)
        if len(number) < _NUMBER.size:
            raise PatchError("it ends inside a page")
        (page,) = _NUMBER.unpack(number)
        if page < index or page >= pages:
            raise PatchError(f"it carries page {page} out of order or past the database's end")
        from_base(index, page)
        length = min(page_size, size - page * page_size)
        data = os.pread(patch_fd, length, offset + _NUMBER.size)
        if len(data) < length:
            raise PatchError("it ends inside a page")
        emit(data)
        offset += _NUMBER.size + length
        index = page + 1
    from_base(index, pages)
    return digest.hexdigest()
