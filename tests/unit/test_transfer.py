"""A migration's direct transfer (engine/transfer.py) between two directories of this machine, over real TLS on
127.0.0.1: the files arrive whole and checked; a wrong token, another certificate, a file asked twice, a server
nobody can reach and a link where a file goes are each refused in one sentence, and nothing partial stays."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import pytest

from ansible_collections.selfhost.dr.plugins.module_utils.engine import transfer


@pytest.fixture
def served(tmp_path: Path) -> tuple[Path, list[str]]:
    src = tmp_path / "old"
    src.mkdir()
    data = os.urandom(3 * 1024 * 1024 + 17)
    (src / "app-seed.tar.zst").write_bytes(data)
    (src / "app-seed.tar.zst.sha256").write_text(f"{hashlib.sha256(data).hexdigest()}  app-seed.tar.zst\n")
    (src / "app-seed.tar.zst.manifest.json").write_text('{"format": "x"}\n')
    return src, ["app-seed.tar.zst", "app-seed.tar.zst.sha256", "app-seed.tar.zst.manifest.json"]


def _gone(pid: int, within: float = 10.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return True
        if done:
            return True
        time.sleep(0.05)
    return False


def test_files_go_straight_to_the_other_directory_whole_and_the_server_ends(
    tmp_path: Path, served: tuple[Path, list[str]]
) -> None:
    src, names = served
    keys = transfer.credentials()
    up = transfer.serve([str(src / n) for n in names], keys["cert"], keys["key"], keys["token"], str(tmp_path / "st"))
    got = transfer.fetch(["192.0.2.1", "127.0.0.1"], int(up["port"]), keys["cert"], keys["token"], names,  # type: ignore[call-overload]
                         str(tmp_path / "new"), timeout=1)  # fmt: skip
    assert got["host"] == "127.0.0.1" and got["files"] == 3
    for name in names:
        assert (tmp_path / "new" / name).read_bytes() == (src / name).read_bytes()
    assert sorted(os.listdir(tmp_path / "new")) == sorted(names), "a partial file was left"
    assert _gone(int(up["pid"])), "the server still runs after every file was sent"  # type: ignore[call-overload]
    assert not transfer.stop(str(tmp_path / "st"), int(up["port"]))  # type: ignore[call-overload]


def test_a_wrong_token_or_certificate_gets_nothing_and_stop_ends_the_server(
    tmp_path: Path, served: tuple[Path, list[str]]
) -> None:
    src, names = served
    keys, other = transfer.credentials(), transfer.credentials()
    up = transfer.serve([str(src / n) for n in names], keys["cert"], keys["key"], keys["token"], str(tmp_path / "st"))
    port = int(up["port"])  # type: ignore[call-overload]
    with pytest.raises(transfer.TransferError, match="closed the connection"):
        transfer.fetch(["127.0.0.1"], port, keys["cert"], other["token"], names, str(tmp_path / "new"))
    with pytest.raises(transfer.TransferError, match="certificate is not this transfer's"):
        transfer.fetch(["127.0.0.1"], port, other["cert"], keys["token"], names, str(tmp_path / "new"))
    assert os.listdir(tmp_path / "new") == [], "something of a refused transfer was written"
    transfer.fetch(["127.0.0.1"], port, keys["cert"], keys["token"], names[:1], str(tmp_path / "new"))
    with pytest.raises(transfer.TransferError, match="closed the connection"):  # each file is sent once
        transfer.fetch(["127.0.0.1"], port, keys["cert"], keys["token"], names[:1], str(tmp_path / "again"))
    assert transfer.stop(str(tmp_path / "st"), port)
    assert _gone(int(up["pid"]))  # type: ignore[call-overload]


def test_a_server_nobody_reaches_a_bad_checksum_and_a_link_in_the_way_are_refused(
    tmp_path: Path, served: tuple[Path, list[str]]
) -> None:
    src, names = served
    keys = transfer.credentials()
    with pytest.raises(transfer.TransferError, match="cannot be reached from here on port 9"):
        transfer.fetch(["127.0.0.1"], 9, keys["cert"], keys["token"], names, str(tmp_path / "new"), timeout=1)
    (src / names[1]).write_text("0" * 64 + "  app-seed.tar.zst\n")
    up = transfer.serve([str(src / n) for n in names], keys["cert"], keys["key"], keys["token"], str(tmp_path / "st"))
    with pytest.raises(transfer.TransferError, match="its sha256 is not the one"):
        transfer.fetch(["127.0.0.1"], int(up["port"]), keys["cert"], keys["token"], names, str(tmp_path / "new"))  # type: ignore[call-overload]
    transfer.stop(str(tmp_path / "st"), int(up["port"]))  # type: ignore[call-overload]
    (tmp_path / "elsewhere").mkdir()
    os.symlink(tmp_path / "elsewhere", tmp_path / "linked")
    with pytest.raises(transfer.TransferError, match="cannot take the files"):
        transfer.fetch(["127.0.0.1"], 9, keys["cert"], keys["token"], names, str(tmp_path / "linked"), timeout=1)
    os.symlink(tmp_path / "secret", src / "link.tar.zst")
    with pytest.raises(transfer.TransferError, match="cannot be served"):
        transfer.serve([str(src / "link.tar.zst")], keys["cert"], keys["key"], keys["token"], str(tmp_path / "st"))
    assert os.listdir(tmp_path / "elsewhere") == []


def test_a_peer_that_connects_and_says_nothing_holds_up_neither_the_transfer_nor_the_servers_end(
    tmp_path: Path, served: tuple[Path, list[str]]
) -> None:
    import socket

    src, names = served
    keys = transfer.credentials()
    up = transfer.serve([str(src / n) for n in names], keys["cert"], keys["key"], keys["token"], str(tmp_path / "st"))
    port = int(up["port"])  # type: ignore[call-overload]
    idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(3)]  # (no TLS, no token: silence)
    try:
        started = time.monotonic()
        transfer.fetch(["127.0.0.1"], port, keys["cert"], keys["token"], names, str(tmp_path / "new"))
        assert time.monotonic() - started < 5, "silent connections held up the real client"
        assert _gone(int(up["pid"])), "silent connections kept the server running after every file was sent"  # type: ignore[call-overload]
    finally:
        for sock in idle:
            sock.close()


def test_a_file_larger_than_the_room_left_is_refused_before_a_byte_is_written(
    tmp_path: Path, served: tuple[Path, list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    src, names = served
    keys = transfer.credentials()
    up = transfer.serve([str(src / n) for n in names], keys["cert"], keys["key"], keys["token"], str(tmp_path / "st"))
    real = os.fstatvfs

    def little(fd: int) -> os.statvfs_result:
        st = real(fd)
        return os.statvfs_result((st.f_bsize, 4096, st.f_blocks, 1000, 17000, *tuple(st)[5:]))  # ~64 MiB free

    monkeypatch.setattr(os, "fstatvfs", little)
    try:
        with pytest.raises(transfer.TransferError, match="bytes free where it goes"):
            transfer.fetch(["127.0.0.1"], int(up["port"]), keys["cert"], keys["token"], names, str(tmp_path / "new"))  # type: ignore[call-overload]
        assert os.listdir(tmp_path / "new") == []
    finally:
        transfer.stop(str(tmp_path / "st"), int(up["port"]))  # type: ignore[call-overload]


def test_check_mode_refuses_what_the_run_refuses_and_serves_nothing(
    tmp_path: Path, served: tuple[Path, list[str]]
) -> None:
    src, names = served
    said = transfer.check("serve", [str(src / n) for n in names], "", str(tmp_path / "st"), 0)
    assert said["port"] == 0 and said["files"] == 3 and not (tmp_path / "st").exists()
    os.symlink(tmp_path / "secret", src / "link.tar.zst")
    with pytest.raises(transfer.TransferError, match="cannot be served"):
        transfer.check("serve", [str(src / "link.tar.zst")], "", str(tmp_path / "st"), 0)
    os.symlink(src, tmp_path / "linked")
    with pytest.raises(transfer.TransferError, match="cannot take the files"):
        transfer.check("fetch", [], str(tmp_path / "linked"), str(tmp_path / "st"), 0)
    assert transfer.check("fetch", [], str(tmp_path / "new"), str(tmp_path / "st"), 0)["bytes"] == 0
    assert not (tmp_path / "new").exists()
    assert transfer.check("stop", [], "", str(tmp_path / "st"), 1234) == {"changed": False}
