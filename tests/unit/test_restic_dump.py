"""``restic dump`` as :class:`Dump` runs it in the background (repos/restic.py): the content is read up to its limit
and one byte more, then restic is killed (a crafted snapshot cannot fill memory); a dump no longer needed is ended at
once; restic's failure is said in its own words. A Python child plays restic: only the process handling is tested
here (the real restic: tests/integration/test_repo_restore.py)."""

from __future__ import annotations

import sys
import time

import pytest

from ansible_collections.selfhost.dr.plugins.module_utils.repos.restic import Dump, RepoError, Repository, Restic


def _dump(code: str, limit: int) -> Dump:
    restic = Restic(Repository("local", "/nonexistent/repository", password_file="/nonexistent/password"))
    return Dump(restic, [sys.executable, "-c", code], limit)


def test_the_content_is_read_whole_when_it_fits() -> None:
    assert _dump("import sys; sys.stdout.write('m' * 1000)", 1000).result() == b"m" * 1000


def test_longer_content_stops_one_byte_past_the_limit_and_restic_is_killed() -> None:
    dump = _dump("import sys\nwhile True: sys.stdout.write('m' * 65536)", 100_000)
    assert len(dump.result()) == 100_001  # (the caller refuses it: larger than a manifest can be)
    assert dump.proc.returncode == -9


def test_a_failure_is_said_with_what_restic_said_and_its_flood_of_errors_is_bounded() -> None:
    dump = _dump("import sys; sys.stderr.write('Fatal: no such file\\n' + 'x' * 5_000_000); sys.exit(1)", 100)
    with pytest.raises(RepoError, match="no such file"):
        dump.result()
    assert len(dump.err) <= 1 << 20


def test_a_dump_no_longer_needed_ends_at_once_and_cannot_be_read_after() -> None:
    dump = _dump("import time; time.sleep(60)", 100)
    started = time.monotonic()
    dump.stop()
    assert time.monotonic() - started < 5 and dump.proc.returncode is not None
    with pytest.raises(RepoError, match="stopped"):
        dump.result()


def test_content_is_given_once() -> None:
    dump = _dump("print('manifest')", 100)
    assert dump.result() == b"manifest\n"
    with pytest.raises(RepoError, match="read already"):
        dump.result()
