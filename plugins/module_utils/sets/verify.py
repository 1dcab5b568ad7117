# Copyright: selfhost.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""verify(): read a set end to end (whole-file sha256, every member against the manifest, every database's
integrity_check), and optionally hand each member to a restore's unpacker in the same pass.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from .. import safe_fs
from .._common import MIB, BackupError, Log, atomic_write, iso, no_log, utc_now
from ..sqlite_snapshot import (
    SQLITE_HEADER,
)
from .codec import CHUNK, decompressor
from .databases import Checked, _Checker, _Spill
from .manifest import (
    MANIFEST_MEMBER,
    MAX_MANIFEST,
    MAX_MEMBERS,
    NewerFormatError,
    name_problem,
    parse_manifest,
    read_checksum,
    read_manifest,
    shown,
)
from .members import DEFAULT_MEMORY_LIMIT, IN_MEMORY
from .names import Sidecars
from .tar_stream import Member, TarReader, TarStreamError


def _unsafe_member(member: Member) -> str:
    """Why a member could not have been written by create(), or ""."""
    problem = name_problem(member.name)
    if problem:
        return problem
    if member.kind == "hardlink":
        return "a hard link"
    if member.kind == "special":
        return "a device, fifo or other special type"
    if member.kind == "symlink" and (not member.linkname or "\0" in member.linkname):
        return "an empty link target, or one with a NUL byte"
    return ""


@dataclass
class Verification:
    path: str
    ok: bool
    checks: list[dict[str, object]]
    problems: list[str]
    stats: dict[str, object]
    manifest: dict[str, object] | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def summary(self) -> str:
        if self.ok:
            return f"backup set {os.path.basename(self.path)} is intact"
        return f"backup set {os.path.basename(self.path)} failed verification: {self.problems[0]}"


class Unpacker(Protocol):
    """Receives each member while verify() streams the archive."""

    current_path: str  # where the file member given by the last begin() is written

    def begin(self, member: Member) -> Callable[[memoryview], None] | None:
        """Make a directory or link, or return where a file member's data goes (None: nowhere)."""

    def end(self, member: Member) -> None:
        """The member's data is complete."""


class _Hasher(threading.Thread):
    """Hashes the archive file while the decompressor reads it (the second read comes from the page cache)."""

    def __init__(self, path: str) -> None:
        super().__init__(daemon=True)
        self.path = path
        self.digest = hashlib.sha256()
        self.size = 0
        self.error: str = ""

    def run(self) -> None:
        try:
            with open(self.path, "rb", buffering=0) as handle:
                while chunk := handle.read(CHUNK):
                    self.digest.update(chunk)
                    self.size += len(chunk)
        except OSError as exc:
            self.error = f"cannot read {self.path}: {exc.strerror}"


def verify(
    archive: str,
    *,
    check_sqlite: bool = True,
    memory_limit: int = DEFAULT_MEMORY_LIMIT,
    record: bool = True,
    log: Log = no_log,
    now: Callable[[], datetime] = utc_now,
    unpack: Unpacker | None = None,
    deep: bool = True,
    tmpdir: str | None = None,
    delta: bool = False,
) -> Verification:
    """Check a set: whole-file sha256, every member against the manifest, integrity_check of every database.

    Decompression, member checks and integrity checks run alongside the whole-file hash. With
    ``unpack``, every member is also handed to it as it streams by (a restore unpacks into staging
    in the same pass, and uses the result only when the verification passed). ``deep=False`` checks
    the whole-file sha256 and the member list but not each member's sha256 nor the databases: enough
    when this very content (same sha256) already passed a deep verification.

    Databases too large to check in memory are copied to a temporary directory in ``tmpdir`` (by default the
    set's own directory, never a tmpfs ``/tmp``), one or two at a time, removed as soon as they are checked.
    Every member is checked as a restore would use it: a safe name, not a link, device or FIFO, listed once,
    not below a link or a file, and equal to its manifest entry in type, mode, owner, size, link target and
    sha256. So a set that verifies is a set that restores. ``delta``: a delta set (sets/delta.py) is verified too.
    """
    check_sqlite = check_sqlite and deep
    t0 = time.monotonic()
    if not os.path.isfile(archive):
        raise BackupError(f"backup set {archive} does not exist")
    sidecars = Sidecars.of(archive)
    checks: list[dict[str, object]] = []
    problems: list[str] = []

    def check(name: str, ok: bool, detail: str) -> None:
        checks.append({"check": name, "ok": ok, "detail": detail})
        if not ok:
            problems.append(detail)

    expected = ""
    try:
        expected = read_checksum(sidecars.checksum)
    except BackupError as exc:
        check("checksum", False, str(exc))
    sidecar_manifest: dict[str, object] | None = None
    if os.path.lexists(sidecars.manifest):
        try:
            sidecar_manifest = read_manifest(sidecars.manifest, delta)
        except NewerFormatError:
            raise
        except BackupError as exc:
            check("manifest", False, str(exc))
    spill = _Spill(tmpdir or os.path.dirname(os.path.abspath(archive)))
    proc = decompressor(archive)
    assert proc.stdout is not None  # noqa: S101
    hasher = _Hasher(archive)
    hasher.start()
    log(f"verify: reading {archive}")
    members: dict[str, dict[str, object]] = {}
    checker = _Checker()
    checker.start()
    embedded: bytes | None = None
    stream_error = ""
    drained = False
    too_many = ""
    name_bytes = 0
    try:
        with open(proc.stdout.fileno(), "rb", buffering=CHUNK, closefd=False) as stream:
            reader = TarReader(stream)
            for member in reader.members():
                unsafe = _unsafe_member(member)
                if unsafe:
                    check("members", False, f"member {shown(member.name)} is unsafe: it has {unsafe}")
                    continue
                if member.name == MANIFEST_MEMBER and member.kind == "file":
                    if embedded is not None:
                        check("manifest", False, "the archive holds more than one manifest")
                    elif member.size > MAX_MANIFEST:
                        check(
                            "manifest",
                            False,
                            f"the manifest inside the archive is larger than {MAX_MANIFEST // MIB} MiB",
                        )
                    else:
                        embedded = b"".join(bytes(c) for c in reader.chunks())
                    continue
                if member.name in members:
                    check("members", False, f"member {shown(member.name)} appears twice in the archive")
                    continue
                name_bytes += len(member.name)
                if len(members) >= MAX_MEMBERS or name_bytes > MAX_MANIFEST:
                    too_many = "the archive holds more members, or longer names, than a manifest can list"
                    break
                sink = unpack.begin(member) if unpack is not None else None
                staged = unpack.current_path if sink is not None and unpack is not None else ""
                members[member.name] = _member_record(
                    reader, member, check_sqlite, memory_limit, checker, spill, sink, staged, deep
                )
                if unpack is not None:
                    unpack.end(member)
            # Read what follows the end-of-archive marker (tar's padding), so the decompressor can finish
            # instead of dying of a closed pipe; anything but zeros there was not written by create().
            while not too_many and (rest := stream.read(CHUNK)):
                if rest.count(0) != len(rest):
                    check("archive", False, "there is data after the end of the tar archive")
                    break
            drained = not too_many
    except (TarStreamError, OSError) as exc:
        stream_error = str(exc) or type(exc).__name__
    except BaseException:
        if proc.stderr:
            proc.stderr.close()  # an exception (from the unpacker, say) is on its way out: nothing will read it
        raise
    finally:
        with contextlib.suppress(OSError):
            proc.stdout.close()
        if not drained and proc.poll() is None:
            proc.kill()  # stopped early (an error, or an exception from the unpacker): nothing more is read
        hasher.join()
        proc.wait()
        databases = checker.finish()
        spill.close()
    stderr = proc.stderr.read().decode(errors="replace").strip() if proc.stderr else ""
    if proc.stderr:
        proc.stderr.close()
    if hasher.error:
        raise BackupError(hasher.error)
    actual = hasher.digest.hexdigest()
    if expected:
        check(
            "checksum",
            actual == expected,
            "sha256 of the whole file matches"
            if actual == expected
            else "the sha256 of the file does not match its .sha256 (it was changed, truncated or damaged)",
        )
    if too_many:
        check("members", False, too_many)
    elif proc.returncode != 0 or stream_error:
        reason = stderr.splitlines()[-1] if stderr else stream_error
        check("archive", False, f"the archive cannot be read to its end ({reason})")
    manifest = _pick_manifest(embedded, sidecar_manifest, sidecars.manifest, check, delta)
    if manifest is not None:
        structure = _structure_problems(members, [str(p) for p in manifest["paths"]])  # type: ignore[attr-defined]
        if structure:
            check("members", False, structure[0] + (f" (and {len(structure) - 1} more)" if len(structure) > 1 else ""))
        _compare(manifest, members, check, deep)
    warnings: list[str] = []
    tables = 0
    if check_sqlite:
        bad: list[str] = []
        if manifest is not None:  # what create() archived as a plain file may start like a database: not one
            listed = {str(f["path"]): f for f in manifest["files"] if isinstance(f, dict) and f.get("sqlite")}  # type: ignore[attr-defined]
            databases = [(path, got) for path, got in databases if path in listed]
            for path, (result, _rows) in databases:
                if result == "ok":
                    continue
                if members.get(path, {}).get("sha256") == listed[path].get("sha256"):
                    # The very bytes create() snapshotted: the database was damaged when it was backed up. The set
                    # holds it faithfully, so it restores; the operator learns the live database is damaged.
                    warnings.append(f"database {path} was already damaged when it was backed up: {result}")
                else:
                    bad.append(f"{path}: {result}")
        else:
            bad = [f"{path}: {result}" for path, (result, _rows) in databases if result != "ok"]
        passed = len(databases) - len(bad) - len(warnings)
        detail = f"{passed} databases pass integrity_check" + (
            f"; {len(warnings)} held as they were backed up, damaged" if warnings else ""
        )
        check("sqlite", not bad, detail if not bad else f"database {bad[0]} fails integrity_check")
        if manifest is not None:
            tables = _compare_rows(manifest, databases, check)
    ok = not problems
    stats = {
        "bytes": hasher.size,
        "members": len(members),
        "databases": len(databases),
        "tables_counted": tables,
        "seconds": round(time.monotonic() - t0, 3),
    }
    result = Verification(archive, ok, checks, problems, stats, manifest, warnings)
    if record:
        st = os.stat(archive)
        marker = {
            "ok": ok,
            "databases_checked": check_sqlite,
            "verified_at": iso(now()),
            "sha256": actual,
            "size": st.st_size,
            "mtime_ns": st.st_mtime_ns,
            "problems": problems,
        }
        atomic_write(sidecars.verified, (json.dumps(marker, indent=1) + "\n").encode())
    log(result.summary)
    return result


def _compare_rows(
    manifest: dict[str, object], databases: list[tuple[str, Checked]], check: Callable[[str, bool, str], None]
) -> int:
    """Every table's rows in the set's databases against the counts the manifest recorded when they were snapshotted
    (sets made before counts were recorded have none: nothing to compare). The number of tables compared."""
    recorded = {
        str(s["path"]): s["rows"]
        for s in manifest["snapshots"]  # type: ignore[attr-defined]
        if isinstance(s, dict) and isinstance(s.get("rows"), dict) and isinstance(s.get("path"), str)
    }
    compared = 0
    wrong: list[str] = []
    for path, (result, rows) in databases:
        want = recorded.get(path)
        if want is None or result != "ok":
            continue
        compared += len(want)
        if rows != want:
            got = rows or {}
            table = next(t for t in sorted({*want, *got}) if got.get(t) != want.get(t))
            wrong.append(
                f"database {path} holds {got.get(table, 'no')} rows in table {shown(table)}, "
                f"its manifest says {want.get(table, 'none')}"
            )
    if recorded:
        more = f" (and {len(wrong) - 1} more)" if len(wrong) > 1 else ""
        matched = f"the rows of {compared} tables in {len(recorded)} databases match the manifest"
        check("rows", not wrong, wrong[0] + more if wrong else matched)
    return compared


def _structure_problems(members: dict[str, dict[str, object]], paths: list[str]) -> list[str]:
    """Why members cannot sit where they are: below a link or a file, or below nothing (no directory member and
    not above a path of the set). Linear: each member looks at its parent only, which must then be a directory
    member itself (or lie above the set's paths), so no chain of implicit directories can hide a link."""
    above: set[str] = set()
    for path in paths:
        parts = path.strip("/").split("/")
        above.update("/".join(parts[:n]) for n in range(1, len(parts)))
    problems = []
    for name in members:
        parent = name.rpartition("/")[0]
        if not parent:
            continue
        kind = members.get(parent, {}).get("type")
        if kind is None and parent not in above:
            problems.append(f"member {shown(name)} has no directory member above it")
        elif kind not in (None, "dir"):
            what = "a symbolic link" if kind == "symlink" else "a file"
            problems.append(f"member {shown(name)} lies below {shown(parent)}, which is {what}")
    return problems


def _member_record(
    reader: TarReader,
    member: Member,
    check_sqlite: bool,
    memory_limit: int,
    checker: _Checker,
    spill: _Spill,
    sink: Callable[[memoryview], None] | None = None,
    staged: str = "",
    deep: bool = True,
) -> dict[str, object]:
    rec: dict[str, object] = {"type": member.kind, "mode": f"{member.mode:04o}", "uid": member.uid, "gid": member.gid}
    if member.kind == "symlink":
        rec["target"] = member.linkname
    if member.kind != "file":
        return rec
    digest = hashlib.sha256()
    size = 0
    is_db: bool | None = None
    held = bytearray()
    spilled: io.BufferedWriter | None = None
    spill_path = ""
    if not deep:
        for chunk in reader.chunks():
            if sink is not None:
                sink(chunk)
            size += len(chunk)
        rec["size"] = size
        return rec
    for chunk in reader.chunks():
        digest.update(chunk)
        if sink is not None:
            sink(chunk)
        if is_db is None:
            is_db = check_sqlite and bytes(chunk[: len(SQLITE_HEADER)]) == SQLITE_HEADER
            if is_db and staged:
                pass  # checked from the copy being written
            elif is_db and (member.size > memory_limit or not IN_MEMORY):
                spill_path, spilled = spill.new_file(member.name, member.size)
            elif is_db:
                held = bytearray(member.size)
        if spilled is not None:
            try:
                spilled.write(chunk)
            except OSError as exc:
                spilled.close()
                raise spill.error(exc, member.name, member.size) from exc
        elif is_db and not staged:
            held[size : size + len(chunk)] = chunk
        size += len(chunk)
    rec["size"] = size
    rec["sha256"] = digest.hexdigest()
    if spilled is not None:
        try:
            spilled.close()
        except OSError as exc:
            raise spill.error(exc, member.name, member.size) from exc
        checker.submit(member.name, spill_path, remove=True)
    elif is_db and staged:
        checker.submit(member.name, staged)
    elif is_db:
        checker.submit(member.name, held)
    return rec


def _pick_manifest(
    embedded: bytes | None,
    sidecar: dict[str, object] | None,
    sidecar_path: str,
    check: Callable[[str, bool, str], None],
    delta: bool = False,
) -> dict[str, object] | None:
    inside: dict[str, object] | None = None
    if embedded is None:
        check("manifest", False, "the archive holds no manifest")
    else:
        try:
            inside = parse_manifest(embedded, "the manifest inside the archive", delta)
        except NewerFormatError:
            raise
        except BackupError as exc:
            check("manifest", False, str(exc))
            inside = None
    if inside is not None and sidecar is not None and inside != sidecar:
        check("manifest", False, f"{os.path.basename(sidecar_path)} differs from the manifest inside the archive")
    elif inside is not None:
        detail = "manifest readable" + ("" if sidecar is not None else "; no sidecar copy beside the archive")
        check("manifest", True, detail)
    return inside if inside is not None else sidecar


def _compare(
    manifest: dict[str, object],
    members: dict[str, dict[str, object]],
    check: Callable[[str, bool, str], None],
    deep: bool = True,
) -> None:
    listed = {str(f["path"]): f for f in manifest["files"] if isinstance(f, dict)}  # type: ignore[attr-defined]
    missing = sorted(set(listed) - set(members))
    extra = sorted(set(members) - set(listed))
    differ = []
    keys = ("type", "mode", "uid", "gid", "size", "target") + (("sha256",) if deep else ())
    for path in sorted(set(listed) & set(members)):
        want, got = listed[path], members[path]
        for key in keys:
            if want.get(key) != got.get(key):
                differ.append(f"{path} ({key})")
                break
    if missing:
        check("members", False, f"{len(missing)} member(s) listed in the manifest are missing, first {missing[0]}")
    if extra:
        check("members", False, f"{len(extra)} member(s) are not in the manifest, first {extra[0]}")
    if differ:
        check("members", False, f"{len(differ)} member(s) differ from the manifest, first {differ[0]}")
    if not (missing or extra or differ):
        what = "match the manifest" if deep else "match the manifest's list (sha256s verified earlier)"
        check("members", True, f"{len(members)} members {what}")


def verification_state(archive: str) -> dict[str, object]:
    """``verified``, ``failed``, ``changed`` (the file changed since it was verified) or ``unverified``; with
    ``drilled`` (:func:`drill_state`) when this very file passed or failed a DR drill."""
    state = _verified_state(archive)
    drilled = drill_state(archive)
    if drilled is not None:
        state["drilled"] = drilled
    return state


def _verified_state(archive: str) -> dict[str, object]:
    path = Sidecars.of(archive).verified
    try:
        marker = json.loads(safe_fs.read_regular(path, MIB))
        st = os.stat(archive)
    except (OSError, ValueError, RecursionError):
        return {"state": "unverified"}
    if not isinstance(marker, dict):
        return {"state": "unverified"}
    if marker.get("size") != st.st_size or marker.get("mtime_ns") != st.st_mtime_ns:
        return {"state": "changed", "verified_at": marker.get("verified_at")}
    return {
        "state": "verified" if marker.get("ok") else "failed",
        "verified_at": marker.get("verified_at"),
        "sha256": marker.get("sha256"),
        "databases_checked": marker.get("databases_checked") is True,
    }


_DRILL_KEYS = ("drilled_at", "ok", "reason", "rto_seconds", "rpo_seconds", "report")


def record_drill(
    archive: str,
    ok: bool,
    reason: str = "",
    rto: float | None = None,
    rpo: float | None = None,
    report: str = "",
    now: Callable[[], datetime] = utc_now,
) -> dict[str, object]:
    """Record a DR drill of this set (``SET.drilled.json``): when, whether it passed (``reason``: why not), its RTO and
    RPO, and the set as it was drilled (its checksum file's sha256, size and mtime); :func:`drill_state` reads it
    back only while the set is still that file. A drill is a verification level above a deep one: the set was
    restored and the application served its data."""
    st = os.stat(archive)
    marker = {
        "drilled_at": iso(now()),
        "ok": bool(ok),
        "reason": "" if ok else (reason or "the drill failed"),
        "rto_seconds": rto,
        "rpo_seconds": rpo,
        "report": report,
        "sha256": read_checksum(Sidecars.of(archive).checksum),
        "size": st.st_size,
        "mtime_ns": st.st_mtime_ns,
    }
    atomic_write(Sidecars.of(archive).drilled, (json.dumps(marker, indent=1) + "\n").encode(), 0o644)
    return {k: marker[k] for k in _DRILL_KEYS}


def drill_state(archive: str) -> dict[str, object] | None:
    """The set's last drill (:func:`record_drill`) while the set is the file that was drilled, else None."""
    try:
        marker = json.loads(safe_fs.read_regular(Sidecars.of(archive).drilled, MIB))
        st = os.stat(archive)
        same = (
            isinstance(marker, dict)
            and marker.get("size") == st.st_size
            and marker.get("mtime_ns") == st.st_mtime_ns
            and marker.get("sha256") == read_checksum(Sidecars.of(archive).checksum)
        )
    except (OSError, ValueError, RecursionError, BackupError):
        return None
    if not same or not isinstance(marker.get("drilled_at"), str) or not isinstance(marker.get("ok"), bool):
        return None
    return {k: marker.get(k) for k in _DRILL_KEYS}


def verified_earlier(archive: str) -> bool:
    """True when this exact content passed a deep verification: the record's sha256 is the checksum file's
    and the file's size and mtime are unchanged since. Checking the whole-file sha256 again then covers every
    member and database."""
    state = verification_state(archive)
    if state["state"] != "verified" or not state.get("databases_checked"):
        return False  # (a verification with sqlite=false did not check the databases: it does not count)
    try:
        return state.get("sha256") == read_checksum(Sidecars.of(archive).checksum)
    except BackupError:
        return False
