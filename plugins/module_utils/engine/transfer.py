# Copyright: selfhost.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Sets sent from one server straight to another (a migration's direct transfer), over TLS, with a certificate and
a token made for this one transfer.

The controller makes a self-signed certificate, its key and a random token (:func:`credentials`, with the
``cryptography`` package Ansible itself depends on: the servers need nothing but Python's standard library). The
old server serves the files (:func:`serve`): it opens each first, never through a link, listens on a port the
kernel gives it and leaves a server process behind that answers only a client that sends the token, over TLS 1.2
or newer with that certificate. Each file is sent once; the server exits when every file was sent, or after its
``timeout``, or when :func:`stop` ends it. The new server fetches them (:func:`fetch`): it trusts only that
certificate, writes each file under a temporary name in a directory it opened without following a link, renames it
when whole, and checks the set against its ``.sha256``. Nothing passes through the controller.

The protocol, over TLS: the client sends ``selfhost.dr transfer 1 TOKEN INDEX\\n``; the server answers with the
file's size (8 bytes, big-endian) and its bytes, or closes the connection.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import secrets
import select
import signal
import socket
import ssl
import stat
import struct
import tempfile
import threading
import time
from datetime import datetime, timedelta, timezone

from .. import safe_fs
from .._common import Error, write_all

_HELLO = b"selfhost.dr transfer 1 "
_SIZE = struct.Struct(">Q")
_CHUNK = 1024 * 1024
CONNECT_TIMEOUT = 5.0
_RESERVE = 64 * 1024 * 1024  # bytes a fetch leaves free where it writes
_SLOWEST = 256 * 1024  # bytes a second a file must arrive at, on average, after its first ten minutes


class TransferError(Error):
    """A direct transfer that could not be made: one sentence."""


def credentials() -> dict[str, str]:
    """A self-signed certificate (PEM), its key (PEM) and a token, for one transfer (run on the controller)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "selfhost.dr migration transfer")])
    now = datetime.now(timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("selfhost-dr-transfer")]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return {
        "cert": cert.public_bytes(serialization.Encoding.PEM).decode(),
        "key": key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ).decode(),
        "token": secrets.token_hex(32),
    }


def _server_context(cert: str, key: str, where: str) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    # (0700, in the private state directory, removed as soon as the context holds them)
    with tempfile.TemporaryDirectory(prefix=".transfer-", dir=where) as private:
        for name, pem in (("cert.pem", cert), ("key.pem", key)):
            fd = os.open(os.path.join(private, name), os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(pem)
        context.load_cert_chain(os.path.join(private, "cert.pem"), os.path.join(private, "key.pem"))
    return context


def _client_context(cert: str) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = False  # (the one certificate trusted is this transfer's own)
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_verify_locations(cadata=cert)
    return context


def addresses() -> list[str]:
    """This host's addresses another host may reach it at: the source address of its default routes, then those
    its name resolves to (loopback left out)."""
    found: list[str] = []
    for family, probe in ((socket.AF_INET, "192.0.2.1"), (socket.AF_INET6, "2001:db8::1")):
        with contextlib.suppress(OSError), socket.socket(family, socket.SOCK_DGRAM) as probe_sock:
            probe_sock.connect((probe, 9))  # (UDP: nothing is sent)
            found.append(probe_sock.getsockname()[0])
    with contextlib.suppress(OSError):
        for info in socket.getaddrinfo(socket.gethostname(), None, proto=socket.IPPROTO_TCP):
            found.append(str(info[4][0]))
    return [a for a in dict.fromkeys(found) if not a.startswith(("127.", "::1")) and a != "::"]


def _start_time(pid: int) -> str:
    """The process's start time (in clock ticks since boot, from /proc): with the pid, who it is."""
    with open(f"/proc/{pid}/stat", "rb") as handle:
        return handle.read().rsplit(b")", 1)[1].split()[19].decode()


def serve(
    files: list[str], cert: str, key: str, token: str, state_dir: str, port: int = 0, timeout: float = 3600.0
) -> dict[str, object]:
    """Serve ``files`` from a process left running (each file once, then it exits); return its port, pid and this
    host's addresses. The pid and its start time are written to ``state_dir`` for :func:`stop`."""
    safe_fs.makedirs_private(state_dir)
    context = _server_context(cert, key, state_dir)
    opened: list[tuple[int, int]] = []
    try:
        for path in files:
            parent = _open_parent(path)
            try:
                fd, st = safe_fs.open_file(os.path.basename(path), parent)
            finally:
                os.close(parent)
            if not stat.S_ISREG(st.st_mode):
                os.close(fd)
                raise TransferError(f"{path} is not a regular file; nothing was sent")
            opened.append((fd, st.st_size))
        if socket.has_dualstack_ipv6():
            listener = socket.create_server(("", port), family=socket.AF_INET6, dualstack_ipv6=True)
        else:
            listener = socket.create_server(("", port))
    except OSError as exc:
        for fd, _ in opened:
            os.close(fd)
        if isinstance(exc, TransferError):
            raise
        raise TransferError(f"the files cannot be served: {exc.strerror or exc}") from exc
    bound = listener.getsockname()[1]
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the server, measured by the tests through its effects
        code = 1
        try:
            os.setsid()
            null = os.open(os.devnull, os.O_RDWR)
            for std in (0, 1, 2):
                os.dup2(null, std)
            keep = sorted({listener.fileno(), *(fd for fd, _ in opened)})
            low = 3
            for fd in keep:  # every other descriptor closed: nothing of the module's process is held
                os.closerange(low, fd)
                low = fd + 1
            os.closerange(low, os.sysconf("SC_OPEN_MAX") if os.sysconf("SC_OPEN_MAX") > 0 else 65536)
            code = _serve_loop(listener, context, opened, token, time.monotonic() + timeout)
        finally:
            os._exit(code)
    listener.close()
    for fd, _ in opened:
        os.close(fd)
    record = {"pid": pid, "start": _start_time(pid), "port": bound}
    path = os.path.join(state_dir, f"transfer-{bound}.json")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(record, handle)
    return {"port": bound, "pid": pid, "addresses": addresses(), "files": len(files)}


def check(step: str, files: list[str], dest: str, state_dir: str, port: int) -> dict[str, object]:
    """What check mode says of a step, refusing what the real run would refuse without serving or fetching: the
    files to serve opened as :func:`serve` opens them, where fetched files go opened as :func:`fetch` opens it,
    whether a server of ``port`` is recorded for :func:`stop`."""
    if step == "serve":
        for path in files:
            try:
                parent = _open_parent(path)
                try:
                    fd, st = safe_fs.open_file(os.path.basename(path), parent)
                finally:
                    os.close(parent)
                os.close(fd)
            except OSError as exc:
                raise TransferError(f"the files cannot be served: {exc.strerror or exc}") from exc
            if not stat.S_ISREG(st.st_mode):
                raise TransferError(f"{path} is not a regular file; nothing was sent")
        return {"port": 0, "addresses": addresses(), "files": len(files)}
    if step == "fetch":
        try:
            if os.path.lexists(dest):
                os.close(safe_fs.open_dir(dest))
        except OSError as exc:
            raise TransferError(f"{dest} cannot take the files: {exc.strerror or exc}; nothing was fetched") from exc
        return {"host": "", "bytes": 0, "files": 0}
    return {"changed": os.path.lexists(os.path.join(state_dir, f"transfer-{int(port)}.json"))}


def _open_parent(path: str) -> int:
    """The directory of ``path``, its last step not followed (a migration's own directory)."""
    parent = os.path.dirname(os.path.abspath(path))
    above = os.open(os.path.dirname(parent) or "/", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        return safe_fs.open_dir(os.path.basename(parent) or ".", above)
    finally:
        os.close(above)


_GREETING_SECONDS = 10.0  # a client has this long for its TLS handshake and its request, or it is dropped
_MAX_CLIENTS = 16  # connections answered at once; more are closed at once


class _Files:
    """What the serving process sends: each file once (``sent``), one connection at a time for each."""

    def __init__(self, opened: list[tuple[int, int]], token: str) -> None:
        self.opened, self.want = opened, _HELLO + token.encode()
        self.sent: set[int] = set()
        self.busy: set[int] = set()
        self.lock = threading.Lock()
        self.slots = threading.BoundedSemaphore(_MAX_CLIENTS)

    def done(self) -> bool:
        with self.lock:
            return len(self.sent) == len(self.opened)

    def answer(self, raw: socket.socket, context: ssl.SSLContext) -> None:
        n = -1
        try:
            raw.settimeout(_GREETING_SECONDS)
            until = time.monotonic() + _GREETING_SECONDS
            with context.wrap_socket(raw, server_side=True) as conn:
                line = _read_line(conn, len(self.want) + 16, until)
                head, _, index = line.rpartition(b" ")
                if not hmac.compare_digest(head, self.want) or not index.isdigit() or int(index) >= len(self.opened):
                    return
                with self.lock:
                    if int(index) in self.sent or int(index) in self.busy:
                        return  # (sent whole once already, or being sent: never twice)
                    n = int(index)
                    self.busy.add(n)
                conn.settimeout(60.0)
                fd, size = self.opened[n]
                conn.sendall(_SIZE.pack(size))
                offset = 0
                while offset < size:
                    chunk = os.pread(fd, min(_CHUNK, size - offset), offset)
                    if not chunk:
                        break
                    conn.sendall(chunk)
                    offset += len(chunk)
                if offset == size:
                    with self.lock:
                        self.sent.add(n)
        except (OSError, ssl.SSLError, ValueError):
            pass
        finally:
            with self.lock:
                self.busy.discard(n)
            with contextlib.suppress(OSError):
                raw.close()
            self.slots.release()


def _serve_loop(
    listener: socket.socket, context: ssl.SSLContext, opened: list[tuple[int, int]], token: str, deadline: float
) -> int:
    files = _Files(opened, token)
    while not files.done():
        left = deadline - time.monotonic()
        if left <= 0:
            return 1
        ready, _, _ = select.select([listener], [], [], min(left, 0.5))
        if not ready:
            continue
        try:
            raw, _ = listener.accept()
        except OSError:
            continue
        if not files.slots.acquire(blocking=False):
            raw.close()  # (a flood of connections: the token's holder connects again)
            continue
        threading.Thread(target=files.answer, args=(raw, context), daemon=True).start()
    return 0


def _read_line(conn: ssl.SSLSocket, limit: int, until: float) -> bytes:
    line = b""
    while not line.endswith(b"\n"):
        if time.monotonic() > until:
            raise ValueError("too slow")
        got = conn.recv(1)
        if not got or len(line) > limit:
            raise ValueError("no request")
        line += got
    return line[:-1]


def stop(state_dir: str, port: int) -> bool:
    """End the server :func:`serve` left on ``port`` if it still runs (it is that process: pid and start time);
    True when it did."""
    path = os.path.join(state_dir, f"transfer-{int(port)}.json")
    try:
        record = json.loads(safe_fs.read_regular(path, 4096))
    except (OSError, ValueError):
        return False
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    pid = int(record.get("pid", 0))
    try:
        if pid <= 1 or _start_time(pid) != record.get("start"):
            return False
        os.kill(pid, signal.SIGTERM)
    except (OSError, IndexError):
        return False
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)
    return True


def fetch(
    hosts: list[str], port: int, cert: str, token: str, names: list[str], dest: str, timeout: float = CONNECT_TIMEOUT
) -> dict[str, object]:
    """Fetch the served files (in their order) into the directory ``dest`` under ``names``, from the first of
    ``hosts`` that answers; the first whose name ends in ``.sha256`` is the checksum of the first file, checked."""
    context = _client_context(cert)
    try:
        safe_fs.makedirs_private(dest)
        dir_fd = safe_fs.open_dir(dest)  # (a link there is refused before anything is asked)
    except OSError as exc:
        raise TransferError(f"{dest} cannot take the files: {exc.strerror or exc}; nothing was fetched") from exc
    try:
        return _fetch_into(hosts, port, context, token, names, dest, dir_fd, timeout)
    finally:
        os.close(dir_fd)


def _fetch_into(
    hosts: list[str],
    port: int,
    context: ssl.SSLContext,
    token: str,
    names: list[str],
    dest: str,
    dir_fd: int,
    timeout: float,
) -> dict[str, object]:
    reached = ""
    problems: list[str] = []
    for host in hosts:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                reached = host
                break
        except OSError as exc:
            problems.append(f"{host}: {exc.strerror or exc}")
    if not reached:
        raise TransferError(
            f"the old server cannot be reached from here on port {port} ({'; '.join(problems) or 'no address'})"
        )
    started = time.monotonic()
    total = 0
    digests: dict[str, str] = {}
    for index, name in enumerate(names):
        if "/" in name or name in ("", ".", ".."):
            raise TransferError(f"{name!r} is not a file name")
        size, digest = _fetch_one(reached, port, context, token, index, name, dir_fd)
        digests[name] = digest
        total += size
    checksum = next((n for n in names if n.endswith(".sha256")), "")
    if checksum and names:
        fd, _ = safe_fs.open_file(checksum, dir_fd)
        with os.fdopen(fd, "rb") as handle:
            want = handle.read(4096).split(b" ", 1)[0].decode(errors="replace").strip()
        if want != digests[names[0]]:
            raise TransferError(f"{names[0]} arrived, but its sha256 is not the one {checksum} gives")
    seconds = time.monotonic() - started
    return {"host": reached, "bytes": total, "seconds": round(seconds, 3), "files": len(names)}


def _fetch_one(
    host: str, port: int, context: ssl.SSLContext, token: str, index: int, name: str, dir_fd: int
) -> tuple[int, str]:
    partial = f".{name}.partial-{os.getpid()}"
    digest = hashlib.sha256()
    try:
        with socket.create_connection((host, port), timeout=60.0) as raw, context.wrap_socket(raw) as conn:
            conn.sendall(_HELLO + token.encode() + f" {index}\n".encode())
            head = _recv_exactly(conn, _SIZE.size)
            (size,) = _SIZE.unpack(head)
            room = os.fstatvfs(dir_fd)
            free = room.f_bavail * room.f_frsize
            if size + _RESERVE > free:
                raise TransferError(
                    f"{name} is {size} bytes, and this server has {free} bytes free where it goes (keeping "
                    f"{_RESERVE // (1024 * 1024)} MiB free); nothing was written"
                )
            until = time.monotonic() + 600 + size / _SLOWEST
            fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                         dir_fd=dir_fd)  # fmt: skip
            try:
                left = size
                while left:
                    if time.monotonic() > until:
                        raise TransferError(f"{name} arrived too slowly (under {_SLOWEST // 1024} KiB/s); stopped")
                    chunk = conn.recv(min(_CHUNK, left))
                    if not chunk:
                        raise TransferError(f"{name} stopped arriving after {size - left} of {size} bytes")
                    digest.update(chunk)
                    write_all(fd, chunk)
                    left -= len(chunk)
                os.fsync(fd)
            finally:
                os.close(fd)
        os.rename(partial, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(partial, dir_fd=dir_fd)
        if isinstance(exc, TransferError):
            raise
        if isinstance(exc, (OSError, ssl.SSLError, ValueError)):
            raise TransferError(f"{name} could not be fetched from {host}: {_said(exc)}") from exc
        raise
    return size, digest.hexdigest()


def _recv_exactly(conn: ssl.SSLSocket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        got = conn.recv(n - len(data))
        if not got:
            raise ValueError("the server closed the connection (a wrong token, or the file was sent already)")
        data += got
    return data


def _said(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return "the server's certificate is not this transfer's"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__
