"""Tomo.import_document: the import is planned on a copy first, and Tomo stopped only while a real change is made,
then started again whatever the import did; the same procedure for the restore role, the tomo_backup module and
`selfhost-dr tomo restore`."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from ansible_collections.selfhost.dr.plugins.module_utils.apps import tomo_export, tomo_import
from ansible_collections.selfhost.dr.plugins.module_utils.apps.tomo import Settings, Tomo
from ansible_collections.selfhost.dr.plugins.module_utils.apps.tomo_schema import TomoError

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "fixtures" / "tomo"))
import tomo_fixture


class Recorder:
    """tomo.service: what was asked of it, and whether it runs."""

    def __init__(self, running: bool = True) -> None:
        self.running = running
        self.calls: list[str] = []

    def stop(self) -> bool:
        self.calls.append("stop")
        was, self.running = self.running, False
        return was

    def start(self) -> None:
        self.calls.append("start")
        self.running = True

    def active(self) -> bool:
        return self.running

    def state(self) -> str:
        return "active" if self.running else "inactive"


def _tomo(tmp_path: Path, service: Recorder) -> tuple[Tomo, str, str]:
    source, target = str(tmp_path / "source.db"), str(tmp_path / "target.db")
    tomo_fixture.create(source, "source")
    tomo_fixture.create(target, "target")
    out = tmp_path / "backups"
    out.mkdir()
    document = str(tomo_export.export(source, str(out), application_version="1.2.1")["path"])
    tomo = Tomo(Settings(database=target, version="1.2.1", settle=0.0))
    tomo.service = service  # type: ignore[assignment]
    return tomo, target, document


def test_tomo_is_stopped_only_while_the_import_changes_it_and_started_again(tmp_path: Path) -> None:
    service = Recorder()
    tomo, _target, document = _tomo(tmp_path, service)
    done = tomo.import_document(document, mode="merge")
    assert done["changed"] and done["stopped"] is True
    assert service.calls == ["stop", "start"] and service.running
    # The same document again changes nothing: nothing stops.
    again = tomo.import_document(document, mode="merge")
    assert again["changed"] is False and service.calls == ["stop", "start"]


def test_check_mode_and_a_bad_document_stop_nothing(tmp_path: Path) -> None:
    service = Recorder()
    tomo, target, document = _tomo(tmp_path, service)
    before = Path(target).read_bytes()
    assert tomo.import_document(document, mode="replace", check=True)["changed"]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"version": "1.0"}))
    with pytest.raises(TomoError):
        tomo.import_document(str(bad))
    assert service.calls == [] and Path(target).read_bytes() == before


def test_tomo_runs_again_when_the_import_fails_after_the_stop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    service = Recorder()
    tomo, _target, document = _tomo(tmp_path, service)
    real = tomo_import.import_document

    def fails_for_real(*args: object, **kwargs: object) -> object:
        if not kwargs.get("check"):
            raise TomoError("the disk is full")
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(tomo_import, "import_document", fails_for_real)
    with pytest.raises(TomoError, match="the disk is full"):
        tomo.import_document(document)
    assert service.calls == ["stop", "start"] and service.running


def test_a_stopped_tomo_stays_stopped(tmp_path: Path) -> None:
    service = Recorder(running=False)
    tomo, _target, document = _tomo(tmp_path, service)
    assert tomo.import_document(document)["stopped"] is False
    assert service.calls == ["stop"] and not service.running


def test_a_live_import_stops_nothing(tmp_path: Path) -> None:
    service = Recorder()
    tomo, _target, document = _tomo(tmp_path, service)
    assert tomo.import_document(document, stop=False)["changed"] and service.calls == []


def test_tomo_runs_again_when_settling_its_journal_fails_after_the_stop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ansible_collections.selfhost.dr.plugins.module_utils.apps import tomo as tomo_module

    service = Recorder()
    tomo, _target, document = _tomo(tmp_path, service)

    def stuck(*_args: object) -> None:
        raise TomoError("cannot settle tomo.db after stopping Tomo: database is locked")

    monkeypatch.setattr(tomo_module, "settle", stuck)
    with pytest.raises(TomoError, match="database is locked"):
        tomo.import_document(document)
    assert service.calls == ["stop", "start"] and service.running
