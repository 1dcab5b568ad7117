# Copyright: selfhost.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The per-instance procedure: stop the instance, copy its data dir, spawn it again, then archive the copy.

Standard library only. The instance is down only while its data dir is copied
(``cp -a``, with reflinks where the file system has them); compression,
hashing and the manifest come after it runs again. It is spawned again
whatever happens to the copy, and the downtime (stop requested until the
instance answers its health check again) is measured and returned.

An instance of a service with ``storage_persist = false`` is never stopped here:
tenement 0.2.2 deletes its data dir on ``ten stop``. It is archived hot
(databases as consistent snapshots, other files as they are) and the result
says so.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass

from .. import safe_fs
from .._common import BackupError
from ..sets.create import Created, create
from .base import nothing_to_archive
from .tenement_client import TenementClient, TenementError, parse_instance

Log = Callable[[str], None]
ELSEWHERE = "if its data is elsewhere, name where in tenement_instance_data for service {service}"


def _no_log(_line: str) -> None:
    return None


@dataclass
class InstanceBackup:
    created: Created
    instance: str
    stopped: bool
    downtime: float  # seconds from the stop request until the instance was healthy again
    copy_seconds: float  # of which copying the data dir
    hot_reason: str


def backup_instance(
    client: TenementClient,
    instance: str,
    data_dir: str,
    dest_dir: str,
    *,
    storage_persist: bool,
    trees: list[str] | None = None,
    stop: Callable[[], None] | None = None,
    start: Callable[[], None] | None = None,
    health_timeout: float = 60.0,
    log: Log = _no_log,
    **create_args: object,
) -> InstanceBackup:
    """One instance's own set: its data dir ``{data_dir}/{service}/{id}``, or ``trees`` (where its service keeps
    its data). ``stop`` and ``start`` stop and spawn it (by default ``ten stop`` and ``ten spawn``, then its health
    check). A set that would hold nothing (every tree missing or empty) is refused."""
    service, ident = parse_instance(instance)
    trees = list(trees or [os.path.join(data_dir, service, ident)])
    present = [t for t in trees if os.path.isdir(t) and not os.path.islink(t)]
    empty = nothing_to_archive("instance", instance, trees)
    if empty:
        raise BackupError(f"{empty}; {ELSEWHERE.format(service=service)}")
    label = str(create_args.pop("label", "") or f"instance-{service}-{ident}")
    metadata = dict(create_args.pop("metadata", {}) or {})  # type: ignore[call-overload]
    metadata["instance"] = instance
    running = instance in client.instances()
    if not storage_persist or not running:
        reason = (
            f"service {service} sets storage_persist = false, and ten stop would delete the data"
            if not storage_persist
            else "the instance was not running"
        )
        log(f"instance {instance}: archived without stopping it ({reason})")
        metadata.update(running=[instance] if running else [], stopped=False)
        made = create(present, dest_dir, label=label, metadata=metadata, log=log, **create_args)  # type: ignore[arg-type]
        return InstanceBackup(made, instance, False, 0.0, 0.0, reason)

    if not os.path.isdir(dest_dir):
        raise BackupError(f"backup directory {dest_dir} does not exist")

    def stop_default() -> None:
        client.stop(instance)

    def start_default() -> None:
        client.spawn(instance)
        client.wait_healthy(instance, timeout=health_timeout, interval=0.1)

    # The copy lives in a directory locked while this process runs: the next run's sweep removes it only once
    # nothing holds it (this run was killed), never while it is being archived.
    holder = os.path.join(dest_dir, f".{service}-{ident}.copy-{os.getpid()}")
    safe_fs.remove_path(holder)
    os.mkdir(holder, 0o700)
    holder_fd = safe_fs.open_dir(holder)
    safe_fs.lock(holder_fd)
    try:
        return _stop_copy_spawn(
            instance,
            present,
            holder,
            dest_dir,
            stop or stop_default,
            start or start_default,
            label,
            metadata,
            log,
            create_args,
        )
    finally:
        safe_fs.remove_path(holder)
        os.close(holder_fd)


def _stop_copy_spawn(
    instance: str,
    trees: list[str],
    holder: str,
    dest_dir: str,
    stop: Callable[[], None],
    start: Callable[[], None],
    label: str,
    metadata: dict[str, object],
    log: Log,
    create_args: dict[str, object],
) -> InstanceBackup:
    copies = [os.path.join(holder, "data" + (f"-{n}" if n else "")) for n in range(len(trees))]
    started = time.monotonic()
    copy_seconds = 0.0
    failure: BaseException | None = None
    stop()
    try:
        t_copy = time.monotonic()
        for tree, copy in zip(trees, copies):
            done = subprocess.run(
                ["cp", "-a", "--reflink=auto", "--", tree, copy], capture_output=True, text=True, check=False
            )
            if done.returncode != 0:
                failure = BackupError(
                    f"copying {tree} failed: {done.stderr.strip() or 'cp exited ' + str(done.returncode)}"
                )
                break
        copy_seconds = time.monotonic() - t_copy
    except OSError as exc:
        failure = BackupError(f"copying {trees[0]} failed: {exc.strerror}")
    finally:
        # Whatever happened to the copy, the instance runs again.
        try:
            start()
        except TenementError as exc:
            raise BackupError(f"instance {instance} did not come back after its backup: {exc}") from exc
    downtime = time.monotonic() - started
    log(f"instance {instance}: down {downtime:.2f} s, of which {copy_seconds:.2f} s copying")
    if failure is not None:
        raise failure
    metadata.update(running=[instance], stopped=True, downtime_seconds=round(downtime, 3))
    made = create(
        copies,
        dest_dir,
        label=label,
        metadata=metadata,
        log=log,
        stored_as=dict(zip(copies, trees)),
        **create_args,  # type: ignore[arg-type]
    )
    return InstanceBackup(made, instance, True, round(downtime, 3), round(copy_seconds, 3), "")
