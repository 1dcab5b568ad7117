"""The streaming tar reader against archives that tarfile and GNU tar write."""

from __future__ import annotations

import hashlib
import io
import subprocess
import tarfile
from pathlib import Path

import pytest

from ansible_collections.selfhost.dr.plugins.module_utils.sets.tar_stream import TarReader, TarStreamError

LONG = "deep/" + "d" * 120 + "/" + "name-" * 30 + "end.txt"


def build(fmt: int) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        for name, data in (("a.txt", b"alpha\n"), (LONG, b"x" * 70_000), ("empty", b"")):
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o640
            tar.addfile(info, io.BytesIO(data))
        folder = tarfile.TarInfo("dir")
        folder.type = tarfile.DIRTYPE
        tar.addfile(folder)
        link = tarfile.TarInfo("link")
        link.type, link.linkname = tarfile.SYMTYPE, "a/" + "t" * 150
        tar.addfile(link)
    return buf.getvalue()


def read_all(data: bytes) -> dict[str, tuple[str, int, str, str]]:
    reader = TarReader(io.BufferedReader(io.BytesIO(data)))  # type: ignore[arg-type]
    seen = {}
    for member in reader.members():
        digest = hashlib.sha256()
        for chunk in reader.chunks():
            digest.update(chunk)
        seen[member.name] = (member.kind, member.mode, member.linkname, digest.hexdigest())
    return seen


@pytest.mark.parametrize("fmt", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT], ids=["pax", "gnu"])
def test_long_names_links_and_data(fmt: int) -> None:
    seen = read_all(build(fmt))
    assert list(seen) == ["a.txt", LONG, "empty", "dir", "link"]
    assert seen[LONG][3] == hashlib.sha256(b"x" * 70_000).hexdigest()
    assert seen["a.txt"][:2] == ("file", 0o640)
    assert seen["dir"][0] == "dir" and seen["link"][:3] == ("symlink", 0o644, "a/" + "t" * 150)


def test_members_skipped_without_reading_their_data() -> None:
    reader = TarReader(io.BufferedReader(io.BytesIO(build(tarfile.PAX_FORMAT))))  # type: ignore[arg-type]
    assert [m.name for m in reader.members()] == ["a.txt", LONG, "empty", "dir", "link"]


def test_gnu_tar_output(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "f.bin").write_bytes(bytes(range(256)) * 100)
    data = subprocess.run(["tar", "-c", "-C", str(tmp_path), "src"], capture_output=True, check=True).stdout
    seen = read_all(data)
    assert seen["src/f.bin"][3] == hashlib.sha256(bytes(range(256)) * 100).hexdigest()


@pytest.mark.parametrize("cut", [100, 512 + 3, 2048, "end-marker"])
def test_a_truncated_stream_is_an_error(cut: int | str) -> None:
    data = build(tarfile.PAX_FORMAT)
    if cut == "end-marker":  # every member complete, the zero blocks gone
        end = len(data.rstrip(b"\0"))
        cut = end + (-end % 512)
    with pytest.raises(TarStreamError, match=r"truncated"):
        read_all(data[: int(cut)])


def test_a_damaged_header_is_an_error() -> None:
    data = bytearray(build(tarfile.PAX_FORMAT))
    data[1100:1108] = b"garbage!"  # inside the second header block
    with pytest.raises(TarStreamError, match=r"damaged"):
        read_all(bytes(data))
