"""backup_prune: the file name decides which app, host and label a set is of; the manifest beside it only confirms.

The catalog entries are written by hand (as catalog() returns them) for the selection rules, and as files on disk,
with a minimal sidecar manifest, for the module run in-process.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from ansible_collections.selfhost.dr.plugins.module_utils._common import BackupError
from ansible_collections.selfhost.dr.plugins.module_utils.engine import prune as prune_module
from ansible_collections.selfhost.dr.plugins.module_utils.engine.prune import as_in_name, read_catalog, select
from ansible_collections.selfhost.dr.plugins.module_utils.sets.names import Sidecars, parse_name, set_name
from ansible_collections.selfhost.dr.plugins.module_utils.sets.retention import FUTURE, Policy, plan
from ansible_collections.selfhost.dr.plugins.modules import backup_prune

T0 = datetime(2026, 11, 1, 2, 0, tzinfo=UTC)
NOW = T0 + timedelta(days=30)
EVERYTHING: dict[str, str | None] = {"app": None, "host": None, "label": None}
GROUP_BY = ["app", "host", "label"]


def stamp(when: datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def entry(app: str, host: str, when: datetime, label: str = "hot", **says: object) -> dict[str, object]:
    """A catalog entry for a set named after ``app``, ``host`` and ``label``; ``says_app=...``, ``time=...`` override
    what its manifest claims."""
    name = set_name(app, host, when, label, "zstd")
    claims: dict[str, object] = {"app": app, "host": host, "label": label, "time": stamp(when)}
    claims.update({key.removeprefix("says_"): value for key, value in says.items()})
    return {"name": name, "path": f"/backups/{name}", "size": 100, "verification": {"state": "unverified"}, **claims}


def wanting(**filters: str) -> dict[str, str | None]:
    return {**EVERYTHING, **filters}


def planned(selection: prune_module.Selection) -> list[str]:
    return sorted(item.name for item in selection.items)


def refused(selection: prune_module.Selection) -> dict[str, list[str]]:
    return {str(r["name"]): list(r["reasons"]) for r in selection.refused}  # type: ignore[call-overload]


# -- which sets a filter selects ---------------------------------------------------------------------------------------


def test_a_manifest_cannot_put_another_apps_set_under_an_app_filter() -> None:
    ours = [entry("tenement", "web1", T0 + timedelta(days=n)) for n in range(1, 4)]
    theirs = entry("tomo", "web1", T0, says_app="tenement")  # the oldest: keep_last 1 would have deleted it
    selection = select([*ours, theirs], wanting(app="tenement", host="web1"), GROUP_BY)
    assert theirs["name"] == "tomo-web1-20261101T020000Z-hot.tar.zst"
    assert planned(selection) == sorted(str(e["name"]) for e in ours)
    assert refused(selection) == {str(theirs["name"]): ["the manifest says app 'tenement', the file name says 'tomo'"]}
    doomed = [d.item.name for d in plan(selection.items, Policy(last=1), now=NOW) if not d.keep]
    assert doomed == [str(ours[1]["name"]), str(ours[0]["name"])]
    assert str(theirs["name"]) in selection.sets  # listed (kept) by the module, never in `doomed`


def test_a_name_under_the_filter_with_a_manifest_that_disagrees_is_kept() -> None:
    ours = entry("tenement", "web1", T0 + timedelta(days=1))
    odd = entry("tenement", "web1", T0, says_app="tomo")
    for app in ("tenement", "tomo"):  # whichever of the two the filter names, the set is kept
        selection = select([ours, odd], wanting(app=app), GROUP_BY)
        assert refused(selection) == {str(odd["name"]): ["the manifest says app 'tomo', the file name says 'tenement'"]}
    assert planned(select([ours, odd], wanting(app="tenement"), GROUP_BY)) == [ours["name"]]
    assert planned(select([ours, odd], wanting(app="tomo"), GROUP_BY)) == []
    nothing = select([ours, odd], wanting(app="nextcloud"), GROUP_BY)
    assert (nothing.items, nothing.refused, nothing.sets) == ([], [], {})


def test_a_host_or_app_disagreement_is_kept_even_without_a_filter() -> None:
    good = entry("tenement", "web1", T0 + timedelta(days=2))
    moved = entry("tenement", "web1", T0 + timedelta(days=1), says_host="web2")
    both = entry("tenement", "web1", T0, says_app="tomo", says_host="web2")
    selection = select([good, moved, both], EVERYTHING, GROUP_BY)
    assert planned(selection) == [good["name"]]
    assert refused(selection) == {
        str(moved["name"]): ["the manifest says host 'web2', the file name says 'web1'"],
        str(both["name"]): [
            "the manifest says app 'tomo', the file name says 'tenement'",
            "the manifest says host 'web2', the file name says 'web1'",
        ],
    }


def test_a_file_name_that_is_not_a_set_name_is_never_planned() -> None:
    def odd(name: str, app: str = "tenement") -> dict[str, object]:
        return {"name": name, "path": f"/b/{name}", "size": 1, "app": app, "host": "web1", "label": "hot"}

    entries = [odd("tenement-web1-hot.tar.zst"), odd("backup.tar.zst"), odd("x-y-20261101T0200Z-hot.tar.zst", "tomo")]
    reason = "the file name is not a set name (app-host-time-label), so it is never deleted"
    assert refused(select(entries, EVERYTHING, GROUP_BY)) == {str(e["name"]): [reason] for e in entries}
    assert refused(select(entries, wanting(app="tenement"), GROUP_BY)) == {
        "tenement-web1-hot.tar.zst": [reason],
        "backup.tar.zst": [reason],
    }
    assert select(entries, wanting(app="tenement"), GROUP_BY).items == []


def test_a_label_filter_needs_both_labels_and_groups_follow_the_name() -> None:
    newer = entry("tenement", "web1", T0 + timedelta(days=1))
    relabelled = entry("tenement", "web1", T0, says_label="cold")
    hot = select([newer, relabelled], wanting(label="hot"), GROUP_BY)
    assert planned(hot) == [newer["name"]]
    assert refused(hot) == {str(relabelled["name"]): ["the manifest says label 'cold', the file name says 'hot'"]}
    assert refused(select([newer, relabelled], wanting(label="cold"), GROUP_BY)) == refused(hot)
    # Without a label filter the label of the name groups them: one group, so keep_last 1 keeps only the newer.
    anyhow = select([newer, relabelled], EVERYTHING, GROUP_BY)
    assert {item.group for item in anyhow.items} == {("tenement", "web1", "hot")}
    decisions = {d.item.name: d.keep for d in plan(anyhow.items, Policy(last=1), now=NOW)}
    assert decisions == {newer["name"]: True, relabelled["name"]: False}


def test_values_are_compared_as_set_name_writes_them() -> None:
    # set_name() makes "my-app" "my_app" and "instance demo:alpha" "instance_demo_alpha"; the manifest keeps them.
    made = entry("my-app", "web-01.example", T0, label="instance demo:alpha")
    assert made["name"] == "my_app-web-01.example-20261101T020000Z-instance_demo_alpha.tar.zst"
    for filters in (
        wanting(app="my-app", host="web-01.example", label="instance demo:alpha"),
        wanting(app="my_app", label="instance_demo_alpha"),
    ):
        selection = select([made], filters, GROUP_BY)
        assert planned(selection) == [made["name"]] and selection.refused == []
        assert selection.items[0].group == ("my_app", "web-01.example", "instance_demo_alpha")
    assert select([made], wanting(app="my-app"), ["host"]).items[0].group == ("web-01.example",)
    assert select([made], wanting(app="other-app"), GROUP_BY).sets == {}


@pytest.mark.parametrize(
    ("app", "host", "label"),
    [
        ("my-app", "web-01.example", "instance demo:alpha"),
        ("-a b/c-", "h.", "x--y"),
        ("", "", ""),
        ("tenement", "db 2", "hot/2026"),
    ],
)
def test_as_in_name_agrees_with_set_name(app: str, host: str, label: str) -> None:
    parts = parse_name(set_name(app, host, T0, label, "zstd"))
    assert parts is not None
    assert (as_in_name("app", app), as_in_name("host", host), as_in_name("label", label)) == (
        parts["app"],
        parts["host"],
        parts["label"],
    )


def test_wrong_types_in_catalog_entries_never_raise() -> None:
    base = T0 + timedelta(days=5)
    entries = [
        entry("tenement", "web1", base, time=12345),
        entry("tenement", "web1", base - timedelta(days=1), time=["2026-11-05T02:00:00.000000Z"]),
        entry("tenement", "web1", base - timedelta(days=2), time={"at": 1}, verification=None, size="big"),
        entry("tenement", "web1", base - timedelta(days=3), time="yesterday", verification={"state": ["verified"]}),
        entry("tenement", "web1", base - timedelta(days=4), says_app=["tenement"] * 50),
        entry("tenement", "web1", base - timedelta(days=5), says_app=5, says_host=None, says_label={"a": 1}),
    ]
    for filters in (EVERYTHING, wanting(app="tenement", host="web1", label="hot")):
        selection = select(entries, filters, GROUP_BY)
        assert len(selection.items) == 4 and len(selection.refused) == 2
        assert all(item.time is None and not item.verified for item in selection.items)
        decisions = plan(selection.items, Policy(last=1), now=NOW)
        assert all(d.reasons == ["time unknown"] for d in decisions)  # an unreadable time is never deleted
    reasons = refused(select(entries, EVERYTHING, GROUP_BY))
    long_list = reasons[str(entries[4]["name"])][0]
    assert long_list.startswith("the manifest says app ['tenement', ") and "...," in long_list
    assert len(long_list) < 120
    assert reasons[str(entries[5]["name"])] == [
        "the manifest says app 5, the file name says 'tenement'",
        "the manifest says host None, the file name says 'web1'",
    ]


def test_a_catalog_that_breaks_on_a_manifest_becomes_one_sentence(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(_directory: str) -> list[dict[str, object]]:
        raise KeyError("started_at")

    monkeypatch.setattr(prune_module, "catalog", broken)
    with pytest.raises(BackupError) as caught:
        read_catalog("/backups")
    assert str(caught.value) == (
        "a sidecar manifest in /backups is malformed (KeyError: 'started_at'); nothing was deleted"
    )


# -- the module, in-process, on files ----------------------------------------------------------------------------------


def write_set(directory: Path, app: str, host: str, when: datetime, label: str = "hot", **says: object) -> str:
    """A set file (zstd magic, no real archive) and the smallest sidecar manifest catalog() reads as one."""
    name = set_name(app, host, when, label, "zstd")
    (directory / name).write_bytes(b"\x28\xb5\x2f\xfd" + bytes(100))
    claims: dict[str, object] = {
        "format": "selfhost.dr/backup-set",
        "format_version": 1,
        "app": app,
        "host": host,
        "label": label,
        "started_at": stamp(when),
        "files": [],
        "snapshots": [],
        "paths": [],
    }
    claims.update({key.removeprefix("says_"): value for key, value in says.items()})
    Path(Sidecars.of(str(directory / name)).manifest).write_text(json.dumps(claims))
    return name


def warnings(result: dict[str, object]) -> list[str]:
    """The warnings' texts (ansible-core 2.19 returns each as a summary object, earlier versions as a string)."""
    found = result.get("warnings", [])
    assert isinstance(found, list)
    return [w["event"]["msg"] if isinstance(w, dict) else w for w in found]


@pytest.fixture
def run(run_module: Callable[..., dict[str, Any]]) -> Callable[..., dict[str, Any]]:
    return lambda args, check=False: run_module(backup_prune, args, check)


def test_the_module_never_deletes_a_set_named_for_another_app(tmp_path: Path, run: Callable[..., dict]) -> None:
    ours = [write_set(tmp_path, "tenement", "web1", T0 + timedelta(days=n)) for n in range(1, 4)]
    theirs = write_set(tmp_path, "tomo", "web1", T0, says_app="tenement")
    assert theirs == "tomo-web1-20261101T020000Z-hot.tar.zst"
    result = run({"path": str(tmp_path), "app": "tenement", "host": "web1", "keep_last": 1})
    assert not result.get("failed"), result
    assert result["deleted"] == [ours[1], ours[0]] and result["future"] == [] and warnings(result) == []
    assert result["kept"] == [
        {"name": ours[2], "reasons": ["last 1"]},
        {"name": theirs, "reasons": ["the manifest says app 'tenement', the file name says 'tomo'"]},
    ]
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.endswith(".zst")) == sorted([ours[2], theirs])
    assert (tmp_path / f"{theirs}.manifest.json").exists()


def test_the_module_keeps_and_reports_a_set_dated_a_year_ahead(tmp_path: Path, run: Callable[..., dict]) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    real = [write_set(tmp_path, "tenement", "web1", now - timedelta(days=n)) for n in range(1, 11)]
    skewed = write_set(tmp_path, "tenement", "web1", now + timedelta(days=365))
    result = run({"path": str(tmp_path), "keep_within": "7d"}, check=True)
    assert not result.get("failed"), result
    # 7 days before the newest real set (now - 1d) is now - 8d: the sets 1 to 7 days old stay.
    assert sorted(result["deleted"]) == sorted(real[7:])
    assert result["future"] == [skewed]
    assert [k["name"] for k in result["kept"]] == [skewed, *real[:7]]
    assert result["kept"][0]["reasons"] == [FUTURE]
    assert warnings(result) == [
        "1 backup set(s) dated more than 60 minutes in the future were kept and counted by no retention rule; "
        "check the clock of the host that wrote them (see 'future')"
    ]
    assert result["freed_bytes"] == 3 * 104 and len(list(tmp_path.glob("*.zst"))) == 11


def test_the_module_survives_manifests_with_wrong_types(tmp_path: Path, run: Callable[..., dict]) -> None:
    good = write_set(tmp_path, "tenement", "web1", T0 + timedelta(days=2))
    odd_host = write_set(tmp_path, "tenement", "web1", T0 + timedelta(days=1), says_host=["web1"], says_label=5)
    odd_time = write_set(tmp_path, "tenement", "web1", T0, started_at="yesterday")
    result = run({"path": str(tmp_path), "app": "tenement", "keep_last": 1})
    assert not result.get("failed"), result
    assert result["deleted"] == []
    kept = {k["name"]: k["reasons"] for k in result["kept"]}
    assert kept.keys() == {good, odd_time, odd_host}
    assert kept[good] == ["last 1"]
    # A manifest with wrong types is not a manifest: the set is never deleted, and the reason says why.
    assert kept[odd_time] == ["time unknown"]
    assert len(kept[odd_host]) == 1 and kept[odd_host][0].startswith("its sidecar manifest cannot be used (")
    assert "is not a valid manifest" in kept[odd_host][0]


def test_the_module_fails_in_one_sentence_when_the_catalog_breaks(
    tmp_path: Path, run: Callable[..., dict], monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(_directory: str) -> list[dict[str, object]]:
        raise TypeError("'int' object is not subscriptable")

    write_set(tmp_path, "tenement", "web1", T0)
    monkeypatch.setattr(prune_module, "catalog", broken)
    result = run({"path": str(tmp_path), "keep_last": 1})
    assert result["failed"] is True
    assert result["msg"] == (
        f"a sidecar manifest in {tmp_path} is malformed (TypeError: 'int' object is not subscriptable); "
        "nothing was deleted"
    )
    assert len(list(tmp_path.glob("*.zst"))) == 1
