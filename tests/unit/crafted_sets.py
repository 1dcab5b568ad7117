"""Hand-made backup sets for the attack tests: any member list, valid checksums, a manifest that agrees (or not).

A set is ``NAME.tar.zst`` + ``NAME.tar.zst.sha256`` + ``NAME.tar.zst.manifest.json``; the manifest is also the last
tar member. Everything here is built with tarfile headers and the ``zstd`` command, never with the code under test,
so a crafted set is exactly what a hostile or damaged backup directory could hold.
"""

from __future__ import annotations

import hashlib
import json
import stat
import subprocess
import tarfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ansible_collections.selfhost.dr.plugins.module_utils.sets.manifest import FORMAT, FORMAT_VERSION, MANIFEST_MEMBER
from ansible_collections.selfhost.dr.plugins.module_utils.sets.names import Sidecars

BLOCK = tarfile.BLOCKSIZE
RECORD = tarfile.RECORDSIZE
MTIME = 1_700_000_000
NAME = "files-h-20261122T035100Z-crafted.tar.zst"


@dataclass
class M:
    """One tar member. ``data`` is bytes, or an int: that many zero bytes, streamed (a huge member costs nothing).

    ``kind``: file, dir, symlink, hardlink, fifo, chr, blk (devices are 1,3). ``raw_mode`` writes the header's mode
    field verbatim (file-type bits included, which tarfile would mask). ``pax`` adds pax records (values as given,
    even invalid); ``fmt`` is the tar format of the header (GNU_FORMAT for GNU long names).
    ``listed=False`` leaves it out of the manifest; ``record`` overrides fields of its manifest entry.
    """

    name: str
    kind: str = "file"
    data: bytes | int = b""
    mode: int | None = None
    uid: int = 0
    gid: int = 0
    target: str = ""
    pax: dict[str, str] = field(default_factory=dict)
    raw_mode: int | None = None
    fmt: int = tarfile.PAX_FORMAT
    listed: bool = True
    record: dict[str, object] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return self.data if isinstance(self.data, int) else len(self.data)

    def chunks(self) -> Iterator[bytes]:
        if isinstance(self.data, int):
            zero = bytes(1 << 20)
            left = self.data
            while left > 0:
                yield zero[: min(left, len(zero))]
                left -= min(left, len(zero))
        elif self.data:
            yield self.data

    def sha256(self) -> str:
        digest = hashlib.sha256()
        for chunk in self.chunks():
            digest.update(chunk)
        return digest.hexdigest()

    def effective_mode(self) -> int:
        if self.mode is not None:
            return self.mode
        return 0o755 if self.kind == "dir" else 0o777 if self.kind == "symlink" else 0o644


_TYPES = {
    "file": tarfile.REGTYPE,
    "dir": tarfile.DIRTYPE,
    "symlink": tarfile.SYMTYPE,
    "hardlink": tarfile.LNKTYPE,
    "fifo": tarfile.FIFOTYPE,
    "chr": tarfile.CHRTYPE,
    "blk": tarfile.BLKTYPE,
}


def _fix_checksum(block: bytearray) -> None:
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\0 " % sum(block)


def header(m: M) -> bytes:
    info = tarfile.TarInfo(m.name)
    info.type = _TYPES[m.kind]
    info.mode = m.effective_mode()
    info.uid, info.gid, info.mtime = m.uid, m.gid, MTIME
    info.linkname = m.target
    info.size = m.size if m.kind == "file" else 0
    info.pax_headers = dict(m.pax)
    if m.kind in ("chr", "blk"):
        info.devmajor, info.devminor = 1, 3  # /dev/null
    buf = bytearray(info.tobuf(m.fmt, "utf-8", "surrogateescape"))
    if m.raw_mode is not None:
        last = bytearray(buf[-BLOCK:])
        last[100:108] = b"%07o\0" % m.raw_mode
        _fix_checksum(last)
        buf[-BLOCK:] = last
    return bytes(buf)


def record_of(m: M) -> dict[str, object]:
    rec: dict[str, object] = {
        "path": m.name,
        "type": m.kind,
        "mode": f"{stat.S_IMODE(m.effective_mode()):04o}",
        "uid": m.uid,
        "gid": m.gid,
        "mtime": MTIME,
    }
    if m.kind == "file":
        rec["size"] = m.size
        rec["sha256"] = m.sha256()
    if m.kind == "symlink":
        rec["target"] = m.target
    rec.update(m.record)
    return rec


def manifest_for(
    members: Iterable[M], paths: list[str], links: list[dict[str, str]] | None = None, name: str = NAME
) -> dict[str, object]:
    files = [record_of(m) for m in members if m.listed]
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "name": name,
        "app": "files",
        "app_version": "",
        "host": "h",
        "label": "crafted",
        "started_at": "2026-11-22T03:51:00.000000Z",
        "finished_at": "2026-11-22T03:51:01.000000Z",
        "compression": "zstd",
        "paths": paths,
        "links": links or [],
        "excludes": [],
        "totals": {
            "files": sum(1 for f in files if f.get("type") == "file"),
            "dirs": sum(1 for f in files if f.get("type") == "dir"),
            "symlinks": sum(1 for f in files if f.get("type") == "symlink"),
            "databases": 0,
            "bytes": sum(int(f.get("size", 0) or 0) for f in files),  # type: ignore[call-overload]
        },
        "files": files,
        "snapshots": [],
        "skipped": [],
        "changed_during_backup": [],
        "notes": [],
        "metadata": {},
    }


def manifest_blob(manifest: object) -> bytes:
    return (json.dumps(manifest, indent=1) + "\n").encode()


@dataclass
class Crafted:
    path: str
    manifest: dict[str, object]

    @property
    def sidecars(self) -> Sidecars:
        return Sidecars.of(self.path)


def write_set(
    directory: Path,
    members: list[M],
    paths: list[str],
    *,
    links: list[dict[str, str]] | None = None,
    edit: Callable[[dict[str, object]], None] | None = None,
    embedded: bytes | None = None,
    sidecar: bytes | None = None,
    no_sidecar: bool = False,
    no_embedded: bool = False,
    extra_members: list[tuple[M, bytes | int]] | None = None,
    trailer: bytes = b"",
    name: str = NAME,
) -> Crafted:
    """Write the set ``name`` into ``directory``: ``members`` in order, then the manifest member.

    The manifest lists ``members`` (see :class:`M`) and is then passed to ``edit``. ``embedded`` / ``sidecar``
    replace the manifest bytes inside the archive / beside it. ``extra_members`` are (header spec, data) pairs
    written after the manifest member (a second manifest, say). The .sha256 always matches the archive written.
    """
    manifest = manifest_for(members, paths, links, name)
    if edit is not None:
        edit(manifest)
    blob = manifest_blob(manifest)
    inside = blob if embedded is None else embedded
    archive = directory / name
    with open(archive, "wb") as out:
        proc = subprocess.Popen(["zstd", "-q", "-1", "-c"], stdin=subprocess.PIPE, stdout=out)
        assert proc.stdin is not None
        written = 0

        def put(data: bytes) -> None:
            nonlocal written
            proc.stdin.write(data)  # type: ignore[union-attr]
            written += len(data)

        def put_member(m: M) -> None:
            put(header(m))
            if m.kind == "file":
                for chunk in m.chunks():
                    put(chunk)
                put(b"\0" * (-m.size % BLOCK))

        for m in members:
            put_member(m)
        if not no_embedded:
            put_member(M(MANIFEST_MEMBER, data=inside, mode=0o600))
        for m, data in extra_members or []:
            m.data = data
            put_member(m)
        end = 2 * BLOCK
        put(b"\0" * (end + (-(written + end) % RECORD)))
        if trailer:
            put(trailer)
        proc.stdin.close()
        assert proc.wait() == 0
    digest = hashlib.sha256()
    with open(archive, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    sidecars = Sidecars.of(str(archive))
    Path(sidecars.checksum).write_text(f"{digest.hexdigest()}  {name}\n")
    if not no_sidecar:
        Path(sidecars.manifest).write_bytes(blob if sidecar is None else sidecar)
    return Crafted(str(archive), manifest)


def tree(top: str, *rest: M, mode: int = 0o755) -> list[M]:
    """The members of a small ordinary tree at ``top`` (a member name, no leading /), then ``rest``."""
    return [
        M(top, "dir", mode=mode),
        M(f"{top}/one", "dir", mode=0o750),
        M(f"{top}/one/notes.txt", data=b"notes\n", mode=0o640),
        M(f"{top}/two", "dir"),
        M(f"{top}/two/x.txt", data=b"x\n"),
        *rest,
    ]
