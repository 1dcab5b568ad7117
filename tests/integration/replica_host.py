"""What the tests of a host that replicates have in common (test_replica_restore.py, test_attack_replica_restore.py,
test_replica_tomo.py): a bucket of its own on the test's SeaweedFS, the real Litestream run as the replicate role's
unit runs it (its environment file read, ``AWS_CA_BUNDLE`` unset) and kept by start-stop-daemon, the host command as
installed (a zipapp), and waiting for something to hold."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from ansible_collections.selfhost.dr.plugins.module_utils.host_install import package_files, zipapp
from ansible_collections.selfhost.dr.plugins.module_utils.replicas import s3

from . import s3_store

LITESTREAM = Path(sys.executable).parent / "litestream"
STOP = ["start-stop-daemon", "--stop", "--retry", "TERM/10/KILL/5", "--remove-pidfile", "--pidfile"]
CREDENTIALS = {"AWS_ACCESS_KEY_ID": s3_store.ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": s3_store.SECRET_KEY}


def bucket(store: s3_store.Store, label: str) -> s3.Store:
    """A new bucket on ``store``, named for this test run."""
    made = s3.Store(store.endpoint, f"{label}{os.getpid()}{time.monotonic_ns() % 10**9}", s3_store.ACCESS_KEY,
                    s3_store.SECRET_KEY)  # fmt: skip
    made.create_bucket()
    return made


def service(tmp: Path, name: str, env_file: Path, script: str) -> tuple[list[str], Path]:
    """The command that starts ``script`` (shell) in the background as a systemd unit with ``EnvironmentFile=``
    would (the file's variables exported first), kept by start-stop-daemon; and its pidfile."""
    runner = tmp / f"{name}-run"
    runner.write_text(f"#!/bin/sh\nset -a\n. {env_file}\nset +a\n{script}\n")
    runner.chmod(0o700)
    pidfile = tmp / f"{name}.pid"
    start = ["start-stop-daemon", "--start", "--background", "--make-pidfile", "--pidfile", str(pidfile),
             "--output", str(tmp / f"{name}.log"), "--startas", str(runner)]  # fmt: skip
    return start, pidfile


def litestream(tmp: Path, conf: Path, env_file: Path) -> tuple[list[str], Path]:
    """The command that starts ``litestream replicate`` in the background as the role's unit does (the environment
    file read, ``AWS_CA_BUNDLE`` unset), and its pidfile."""
    return service(tmp, "litestream", env_file,
                   f"unset AWS_CA_BUNDLE\nexec {LITESTREAM} replicate -config {conf} -no-expand-env")  # fmt: skip


def host_command(tmp: Path) -> Path:
    """``selfhost-dr`` as the host_command role installs it: the collection's code as one zipapp."""
    command = tmp / "selfhost-dr"
    command.write_bytes(zipapp(package_files()))
    command.chmod(0o755)
    return command


def run(command: Path, config: Path, *args: str, check: bool = True) -> tuple[int, dict[str, object]]:
    """``selfhost-dr ARGS --json --config CONFIG``: its exit status and its JSON result (a failure asserted unless
    ``check`` is false)."""
    done = subprocess.run([str(command), *args, "--json", "--config", str(config)], capture_output=True, text=True,
                          timeout=300, check=False)  # fmt: skip
    result = json.loads(done.stdout) if done.stdout.strip() else {}
    if check:
        assert done.returncode == 0, (done.stderr[-3000:], result)
    return done.returncode, result


def runs(pidfile: Path) -> bool:
    """Whether the process start-stop-daemon's ``pidfile`` names runs."""
    return subprocess.run(["start-stop-daemon", "--status", "--pidfile", str(pidfile)], check=False).returncode == 0


def stop(*pidfiles: Path) -> None:
    """Each process stopped (TERM, then KILL), all at once."""
    stopping = [
        subprocess.Popen([*STOP, str(p)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for p in pidfiles
    ]
    for process in stopping:
        process.wait()


def wait(what: str, test: Callable[[], object], timeout: float = 60.0, every: float = 0.1) -> None:
    """Until ``test()`` holds; fails saying ``what`` did not happen within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not test():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} within {timeout:g} s")
        time.sleep(every)
