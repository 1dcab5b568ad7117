# Copyright: selfhost.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The compressor and decompressor (``zstd``, else ``gzip``) as child processes, and the pump that feeds one
while hashing and writing what it compresses.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import hashlib
import os
import shutil
import subprocess
import threading
import time

from .._common import MIB, BackupError, dying_with_parent, write_all
from .names import EXTENSIONS

MAGIC = {b"\x28\xb5\x2f\xfd": "zstd", b"\x1f\x8b": "gzip"}


CHUNK = MIB


SYNC_EVERY = 64 * MIB


def compressor_for(compression: str) -> str:
    """The compression to use: ``zstd`` or ``gzip`` (``auto``: zstd when its command is installed)."""
    if compression == "auto":
        return "zstd" if shutil.which("zstd") else "gzip"
    if compression not in EXTENSIONS:
        raise BackupError(f"compression must be auto, zstd or gzip, got {compression!r}")
    if not shutil.which(compression):
        other = "gzip" if compression == "zstd" else "zstd"
        raise BackupError(f"the {compression} command is not installed on this host; install it or use {other}")
    return compression


def _grow_pipe(fd: int) -> None:
    # Fewer, larger transfers between this process and the compressor.
    with contextlib.suppress(OSError, AttributeError):
        fcntl.fcntl(fd, getattr(fcntl, "F_SETPIPE_SZ", 1031), MIB)


class Pump:
    """Runs the compressor with its output going straight to ``out_path``.

    The tar stream is written to the compressor's stdin; a thread reads the
    output file right behind the compressor and hashes it, so the whole-file
    sha256 is ready when the compressor exits, without piping the compressed
    bytes through this process.
    """

    def __init__(self, argv: list[str], out_path: str, out_fd: int) -> None:
        argv, preexec = dying_with_parent(argv)
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=out_fd,
            stderr=subprocess.PIPE,
            bufsize=0,
            close_fds=True,
            preexec_fn=preexec,
        )
        assert self.proc.stdin is not None  # noqa: S101 - Popen contract
        self._in = self.proc.stdin.fileno()
        _grow_pipe(self._in)
        self.digest = hashlib.sha256()
        self.size = 0
        self.written = 0
        self._pending = memoryview(bytearray(CHUNK))
        self._fill = 0
        self._exited = threading.Event()
        self._path = out_path
        self._thread = threading.Thread(target=self._follow, daemon=True)
        self._thread.start()

    def _follow(self) -> None:
        synced = 0
        view = memoryview(bytearray(CHUNK))  # read into one buffer: no allocation per read
        with open(self._path, "rb", buffering=0) as handle:
            while True:
                exited = self._exited.is_set()
                got = handle.readinto(view)
                if got:
                    self.digest.update(view[:got])
                    self.size += got
                    if self.size - synced >= SYNC_EVERY:
                        # Flushing as it goes keeps the final fsync short and the page cache clean.
                        os.fdatasync(handle.fileno())
                        synced = self.size
                elif exited:
                    return  # the compressor is gone and everything it wrote has been read
                else:
                    time.sleep(0.005)

    def write(self, data: bytes | memoryview) -> None:
        """Send ``data`` to the compressor; small pieces are gathered first. ``data`` is not kept: a caller may
        reuse its buffer once this returns."""
        n = len(data)
        self.written += n
        if n >= 256 * 1024:
            self.flush()
            self._send(data)
            return
        if self._fill + n > CHUNK:
            self.flush()
        self._pending[self._fill : self._fill + n] = data
        self._fill += n

    def flush(self) -> None:
        if self._fill:
            self._send(self._pending[: self._fill])
            self._fill = 0

    def _send(self, data: bytes | memoryview) -> None:
        try:
            write_all(self._in, data)
        except BrokenPipeError as exc:
            raise self.failure() from exc

    def _stop(self) -> None:
        self.proc.wait()
        self._exited.set()
        self._thread.join()

    def failure(self) -> BackupError:
        self._stop()
        stderr = self.proc.stderr.read().decode(errors="replace").strip() if self.proc.stderr else ""
        if "No space left" in stderr or "Disk quota" in stderr:
            return _space_error(self.size)
        return BackupError(f"{self.proc.args[0]} failed (exit {self.proc.returncode}): {stderr or 'no message'}")

    def finish(self) -> None:
        self.flush()
        assert self.proc.stdin is not None  # noqa: S101
        self.proc.stdin.close()
        self._stop()
        if self.proc.returncode != 0:
            raise self.failure()

    def abort(self) -> None:
        with contextlib.suppress(OSError):
            self.proc.kill()
        with contextlib.suppress(OSError, ValueError):
            assert self.proc.stdin is not None  # noqa: S101
            self.proc.stdin.close()
        self._stop()
        if self.proc.stderr:
            self.proc.stderr.close()


def _space_error(written: int) -> BackupError:
    return BackupError(f"the backup directory ran out of space after {written / MIB:.1f} MiB of archive")


def write_error(exc: OSError, written: int) -> BackupError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return _space_error(written)
    return BackupError(f"could not write the backup set: {exc.strerror or exc}")


def compression_of(path: str) -> str:
    with open(path, "rb") as handle:
        head = handle.read(4)
    for magic, kind in MAGIC.items():
        if head.startswith(magic):
            return kind
    raise BackupError(f"{path} is neither zstd nor gzip compressed")


def decompressor(archive: str) -> subprocess.Popen[bytes]:
    """``zstd -d`` (or ``gzip -d``) reading ``archive``, its output on a pipe."""
    kind = compression_of(archive)
    argv = ["zstd", "-d", "-q", "-c", "--", archive] if kind == "zstd" else ["gzip", "-d", "-c", "--", archive]
    if not shutil.which(argv[0]):
        raise BackupError(f"the {argv[0]} command is needed to read {archive} and is not installed")
    argv, preexec = dying_with_parent(argv)
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        preexec_fn=preexec,
    )
    assert proc.stdout is not None  # noqa: S101 - Popen contract
    _grow_pipe(proc.stdout.fileno())
    return proc


# zstd's multithreaded jobs at the fast levels (window 2 MiB) are 8 MiB by default, and it holds several per worker:
# 4 MiB jobs take about 25 MiB less (66 -> 41 MiB on benchmarks/backup_speed.py's tree, 2 workers) for the same CPU
# time and size. Only there: the higher levels' larger windows want their larger jobs.
ZSTD_JOB_SIZE = "4MiB"


def zstd_options(level: int) -> list[str]:
    """Options for ``zstd`` at ``level`` besides the level and threads: smaller jobs at the fast levels, no
    I/O thread where zstd has the option."""
    return [f"-B{ZSTD_JOB_SIZE}", *_zstd_no_asyncio()] if level <= 5 else [*_zstd_no_asyncio()]


@functools.lru_cache(maxsize=1)
def _zstd_no_asyncio() -> tuple[str, ...]:
    """``--no-asyncio`` when this zstd has it (1.5.3+): its I/O thread only adds CPU time and buffers when reading
    a pipe and writing a file (about 0.2 s and 2 MiB less on benchmarks/backup_speed.py's tree)."""
    try:
        help_text = subprocess.run(
            ["zstd", "-H"], stdin=subprocess.DEVNULL, capture_output=True, timeout=10, check=False
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return ()
    return ("--no-asyncio",) if b"--[no-]asyncio" in help_text else ()
