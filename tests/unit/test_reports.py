"""Drill and migration reports: JUnit that CI reporters parse with the right counts and failures per host, Markdown
tables that a hostile message cannot break or turn into HTML, JSON that round-trips and refuses whatever a host
could send back wrong, a fleet combined one row per host, and the three files written for CI to read."""

from __future__ import annotations

import html
import json
import os
import re
import stat
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path

import pytest

from ansible_collections.selfhost.dr.plugins.module_utils import reports
from ansible_collections.selfhost.dr.plugins.module_utils.reports import Case, Report, ReportError, Suite

T0 = "2026-03-01T02:00:00.000000Z"
T1 = "2026-03-01T02:10:00.000000Z"
COLUMNS = [("rto_seconds", "RTO (s)"), ("rpo_seconds", "RPO (s)"), ("set", "set")]
# What a host could put in a message: table pipes, line breaks, HTML, a code span, a link, NUL, an ANSI escape, a
# lone surrogate, an escaped pipe and a bidi override.
HOSTILE = (
    "disk | full\nsee <script>alert(1)</script> `rm -rf` [x](javascript:1) \x00\x1b[31m red\ud800 \\| \u202eend\r\tok"
)


def hostile_shown() -> str:
    """HOSTILE as a reader should see it: breaks as spaces, the characters that cannot be shown removed."""
    return re.sub("[\x00\x1b\ud800\u202e]", "", re.sub("[\n\r\t]", " ", HOSTILE)).strip()


def host(name: str, failed: str | None = None, started: str = T0, finished: str = T1, **properties: object) -> Suite:
    """A drilled host: fetch, verify and restore steps, one check; ``failed`` names the step that failed."""
    cases = [
        Case(step, "step", "failed" if step == failed else "passed", 10.25, f"{step} broke" if step == failed else "")
        for step in ("fetch", "verify", "restore")
    ]
    cases.append(Case("instance web:prod running", "check", "passed", None, detail={"pid": 42}))
    props: dict[str, str | int | float | bool | None] = {"rto_seconds": 612.5, "rpo_seconds": 3600, "set": None}
    props.update(properties)  # type: ignore[arg-type]
    return Suite(name, started, finished, cases, props)


def drill(*suites: Suite, started: str = T0, finished: str = T1, kind: str = "drill") -> Report:
    return Report(kind, "DR drill", started, finished, list(suites), list(COLUMNS))


def tables(markdown: str) -> list[list[list[str]]]:
    """The GFM tables of ``markdown``: rows of cells, split at the pipes no backslash escapes."""
    found: list[list[list[str]]] = []
    previous = ""
    for line in markdown.splitlines():
        if line.startswith("|"):
            if not previous.startswith("|"):
                found.append([])
            found[-1].append(cells(line))
        previous = line
    return found


def cells(line: str) -> list[str]:
    assert line.startswith("| ") or line.startswith("|-"), line
    assert line.endswith("|") and not line.endswith("\\|"), line
    parts: list[str] = []
    current: list[str] = []
    chars = iter(line[1:-1])
    for char in chars:
        if char == "\\":
            current += [char, next(chars, "")]
        elif char == "|":
            parts.append("".join(current).strip())
            current = []
        else:
            current.append(char)
    parts.append("".join(current).strip())
    return parts


def unescape(cell: str) -> str:
    """The text a Markdown renderer shows for a cell: backslash escapes and entities resolved."""
    return html.unescape(re.sub(r"\\(.)", r"\1", cell))


def check_tables(markdown: str, rows: list[int]) -> list[list[list[str]]]:
    """The tables, each of ``rows`` data rows, its delimiter row second and every row as wide as its header."""
    found = tables(markdown)
    assert [len(table) - 2 for table in found] == rows
    for table in found:
        assert all(re.fullmatch("-+", cell) for cell in table[1])
        assert {len(row) for row in table} == {len(table[0])}
    return found


def parse_junit(text: str) -> ET.Element:
    assert text.startswith('<?xml version="1.0" encoding="UTF-8"?>\n')
    return ET.fromstring(text.encode())  # noqa: S314 - our own output


def test_a_suite_fails_on_any_failed_case_passes_on_one_passed_case_and_is_skipped_with_none() -> None:
    skipped = Case("seed", "step", "skipped", message="nothing to seed")
    assert host("a").status == "passed" and host("a").failed_case is None
    broken = host("a", failed="verify")
    broken.cases.append(Case("restore again", "step", "failed", message="later"))
    assert broken.status == "failed" and broken.failed_case is broken.cases[1]
    assert Suite("b", T0, T1, [skipped, Case("sync", "step", "passed")], {}).status == "passed"
    assert Suite("b", T0, T1, [skipped], {}).status == "skipped"
    assert Suite("b", T0, T1, [], {}).status == "skipped"


def test_a_report_passes_only_when_every_suite_passed_and_an_empty_one_fails() -> None:
    assert drill(host("a"), host("b")).status == "passed"
    assert drill(host("a"), host("b", failed="restore")).status == "failed"
    assert drill(host("a"), Suite("b", T0, T1, [], {})).status == "failed"
    empty = drill()
    assert empty.status == "failed"
    assert reports.to_markdown(empty).startswith("# DR drill: FAILED\n")
    check_tables(reports.to_markdown(empty), [0])
    root = parse_junit(reports.to_junit(empty))
    assert (root.get("tests"), root.get("failures"), len(root)) == ("0", "0", 0)


def test_junit_counts_failures_and_properties_per_host() -> None:
    report = drill(host("web1"), host("web2", failed="restore", set="20260301T0200Z"), host("web3"))
    report.suites[2].cases.append(Case("RTO <= 900 s", "target", "skipped", message="no target set"))
    root = parse_junit(reports.to_junit(report))
    assert root.tag == "testsuites"
    assert (root.get("name"), root.get("tests"), root.get("failures"), root.get("skipped")) == (
        "DR drill",
        "13",
        "1",
        "1",
    )
    assert float(root.get("time", "")) == 600.0
    suites = {suite.get("name"): suite for suite in root.iter("testsuite")}
    assert list(suites) == ["web1", "web2", "web3"]
    web2 = suites["web2"]
    assert (web2.get("tests"), web2.get("failures"), web2.get("errors"), web2.get("skipped")) == ("4", "1", "0", "0")
    assert web2.get("timestamp") == T0
    properties = {prop.get("name"): prop.get("value") for prop in web2.iter("property")}
    assert properties == {"rto_seconds": "612.5", "rpo_seconds": "3600", "set": "20260301T0200Z"}
    assert {prop.get("value") for prop in suites["web1"].iter("property") if prop.get("name") == "set"} == {""}
    failures = [(case, case.find("failure")) for case in web2.iter("testcase") if case.find("failure") is not None]
    assert len(failures) == 1
    testcase, failure = failures[0]
    assert (testcase.get("classname"), testcase.get("name"), testcase.get("time")) == (
        "drill.web2.step",
        "restore",
        "10.250",
    )
    assert failure is not None
    assert (failure.get("message"), failure.get("type"), failure.text) == ("restore broke", "step", "restore broke")
    check = next(case for case in web2.iter("testcase") if case.get("name") == "instance web:prod running")
    assert check.get("classname") == "drill.web2.check" and check.get("time") == "0.000"
    assert json.loads(check.findtext("system-out", "")) == {"pid": 42}
    assert web2.find("testcase[@name='fetch']/system-out") is None
    skip = suites["web3"].find("testcase[@name='RTO <= 900 s']/skipped")
    assert skip is not None and skip.get("message") == "no target set"


def test_a_hostile_message_keeps_the_markdown_tables_whole_and_shows_no_html() -> None:
    suite = host(f"web1 {HOSTILE}", failed="verify", set=HOSTILE)
    suite.cases[1].message = HOSTILE
    suite.cases.append(Case(HOSTILE, "check", "skipped", None, HOSTILE))
    report = drill(suite, host("web2"))
    report.title = f"DR drill\n# {HOSTILE}"
    report.columns.append(("set", f"label {HOSTILE}"))
    markdown = reports.to_markdown(report)
    markdown.encode()  # no lone surrogate left to write
    assert markdown.startswith("# DR drill # disk \\| full see &lt;script&gt;")
    assert "<" not in markdown and ">" not in markdown
    assert not re.search("[\x00-\x08\x0b-\x1f\x7f\ud800-\udfff\u202e]", markdown)
    summary, cases, _web2_cases = check_tables(markdown, [2, 5, 4])
    assert len(summary[0]) == 2 + len(report.columns) + 1
    shown = hostile_shown()
    assert unescape(summary[0][-2]) == f"label {shown}"
    assert unescape(summary[2][0]) == f"web1 {shown}"
    assert unescape(summary[2][1]) == "FAILED"
    assert unescape(summary[2][-1]) == f"verify: {shown}"
    assert "\\`rm -rf\\` \\[x\\](javascript:1)" in summary[2][-1]  # no code span, no link
    assert unescape(summary[3][-1]) == ""
    assert [unescape(cell) for cell in cases[3]] == ["step", "verify", "FAILED", "10.2", shown]
    assert [unescape(cell) for cell in cases[-1]] == ["check", shown, "skipped", "—", shown]
    assert f"- set: {summary[2][-2]}" in markdown.splitlines()
    sections = [line for line in markdown.splitlines() if line.startswith("#")]
    assert len(sections) == 3 and sections[1].startswith("## web1 disk \\| full") and sections[2] == "## web2: passed"


def test_a_hostile_message_keeps_the_junit_parseable_with_its_text() -> None:
    suite = host(f"web1 {HOSTILE}", failed="verify", set=HOSTILE)
    suite.cases[1].message = HOSTILE
    suite.cases[2].detail = {"stderr": HOSTILE}
    suite.cases.append(Case(HOSTILE, "check", "skipped", None, HOSTILE))
    report = drill(suite)
    report.title = HOSTILE
    root = parse_junit(reports.to_junit(report))
    kept = re.sub("[\x00\x1b\ud800]", "", HOSTILE)
    assert root.get("name") == kept
    testsuite = root[0]
    assert testsuite.get("name") == f"web1 {kept}"
    failure = testsuite.find("testcase/failure")
    assert failure is not None and failure.get("message") == kept
    assert failure.text == kept.replace("\r", "\n")  # an XML parser reads a carriage return in text as a newline
    assert {prop.get("value") for prop in testsuite.iter("property") if prop.get("name") == "set"} == {kept}
    skipped = [case for case in testsuite.iter("testcase") if case.find("skipped") is not None]
    assert [(case.get("name"), case.get("classname")) for case in skipped] == [(kept, f"drill.web1 {kept}.check")]
    restore = next(case for case in testsuite.iter("testcase") if case.get("name") == "restore")
    # JSON escapes the control characters, so only the lone surrogate is lost
    assert json.loads(restore.findtext("system-out", "")) == {"stderr": HOSTILE.replace("\ud800", "")}


def test_markdown_cells_are_capped_and_seconds_shown_with_at_most_one_decimal() -> None:
    suite = Suite(
        "web1", T0, T1, [Case("fetch", "step", "failed", 0.04, "x" * 1000), Case("verify", "step", "passed", 59.96)], {}
    )
    suite.properties = {"rto_seconds": 61.0, "rpo_seconds": None, "note": "<b>" * 200}
    markdown = reports.to_markdown(drill(suite))
    summary, cases = check_tables(markdown, [1, 2])
    assert summary[2][2:5] == ["61", "—", "—"]
    failure = summary[2][-1]
    assert len(failure) == 300 and failure.endswith("…") and failure.startswith("fetch: xxx")
    assert [row[3] for row in cases[2:]] == ["0", "60"]
    note = next(line for line in markdown.splitlines() if line.startswith("- note: "))
    assert unescape(note.removeprefix("- note: ")) == ("<b>" * 200)[:299] + "…"
    assert "1 suite: 0 passed, 1 failed, 0 skipped." in markdown and ", 600 s in all." in markdown


def test_odd_but_typed_content_renders_in_every_format() -> None:
    odd = Suite(
        "ünïcødé 🚀 host", "not a time", "", [Case("", "", "bogus")], {"inf": float("inf"), "nan": float("nan")}
    )
    report = Report("drill", "", "", "", [odd, Suite("empty", T0, T0, [], {})], [])
    markdown = reports.to_markdown(report)
    check_tables(markdown, [2, 1])
    assert "No cases." in markdown and "## ünïcødé 🚀 host: skipped" in markdown
    root = parse_junit(reports.to_junit(report))
    assert [suite.get("name") for suite in root] == ["ünïcødé 🚀 host", "empty"]
    assert root[0].get("time") == "0.000"
    document = json.loads(reports.to_json(report), parse_constant=pytest.fail)  # strict JSON: no NaN, no Infinity
    assert document["suites"][0]["properties"] == {"inf": None, "nan": None}


def round_trip_report() -> Report:
    migration = Suite("old.example → new.example", T0, T1, [], {"downtime_seconds": 41.5, "dry_run": False, "n": 3})
    migration.cases = [
        Case("preflight", "step", "passed", 1.5, detail={"checks": [1, 2.5, None, {"deep": "ü"}]}),
        Case("freeze", "step", "failed", None, HOSTILE),
        Case("cutover", "step", "skipped", 0.0, "freeze failed"),
    ]
    return Report(
        "migration", "Migration 🚚", T0, T1, [migration, Suite("b", T0, T0, [], {})], [("downtime_seconds", "down")]
    )


def test_json_round_trips_to_an_equal_report_with_its_computed_statuses() -> None:
    report = round_trip_report()
    text = reports.to_json(report)
    document = json.loads(text)
    assert (document["format"], document["version"], document["status"]) == ("selfhost-dr-report", 1, "failed")
    assert [suite["status"] for suite in document["suites"]] == ["failed", "skipped"]
    again = reports.from_json(text)
    assert again == report
    assert isinstance(again.columns[0], tuple)
    assert reports.to_json(again) == text
    assert reports.from_json(text.encode()) == report


def _set(path: str, value: object) -> Callable[[dict[str, object]], None]:
    """A change to a report document: ``path`` (keys and indexes separated by '/') set to ``value``, or removed when
    ``value`` is ``_DROP``."""

    def change(document: dict[str, object]) -> None:
        *parents, last = [int(part) if part.isdigit() else part for part in path.split("/")]
        target: object = document
        for part in parents:
            target = target[part]  # type: ignore[index]
        if value is _DROP:
            del target[last]  # type: ignore[attr-defined]
        else:
            target[last] = value  # type: ignore[index]

    return change


_DROP = object()


@pytest.mark.parametrize(
    ("change", "words"),
    [
        (_set("format", "something-else"), "not a selfhost-dr-report document of version 1"),
        (_set("version", 2), "not a selfhost-dr-report document of version 1"),
        (_set("kind", "backup"), "report's kind must be one of drill, migration, not 'backup'"),
        (_set("title", 7), "report's title must be a text"),
        (_set("started", "yesterday"), "report's started must be a UTC time like"),
        (_set("suites", _DROP), "report has no suites"),
        (_set("suites", {"a": 1}), "report's suites must be a list"),
        (_set("suites/0", "web1"), "report's suites[0] must be an object"),
        (_set("suites/0/name", ""), "suites[0].name must be a non-empty text"),
        (
            _set("suites/1/name", "x" * 100_000),
            "suites[1].name must be a non-empty text of at most 4096 characters, not 'xxx",
        ),
        (_set("suites/0/finished", None), "suites[0].finished must be a text"),
        (_set("suites/0/cases/1/status", "bogus"), "suites[0].cases[1].status must be one of passed, failed, skipped"),
        (_set("suites/0/cases/1/status", _DROP), "report has no suites[0].cases[1].status"),
        (_set("suites/0/cases/0/kind", "phase"), "suites[0].cases[0].kind must be one of step, check, target"),
        (_set("suites/0/cases/0/seconds", "12"), "suites[0].cases[0].seconds must be a number of seconds"),
        (_set("suites/0/cases/0/seconds", -1), "suites[0].cases[0].seconds must be a number of seconds, 0 or more"),
        (_set("suites/0/cases/0/seconds", True), "suites[0].cases[0].seconds must be a number of seconds"),
        (_set("suites/0/cases/1/message", " "), "suites[0].cases[1].message must say why the case failed"),
        (_set("suites/0/cases/2/message", ""), "suites[0].cases[2].message must say why the case skipped"),
        (_set("suites/0/cases/0/detail", [1]), "suites[0].cases[0].detail must be an object"),
        (_set("suites/0/cases/0/detail", {"log": "x" * 20_000}), "suites[0].cases[0].detail is more than 16384"),
        (_set("suites/0/cases", None), "suites[0].cases must be a list"),
        (
            _set("suites/0/properties/n", [1, 2]),
            "suites[0].properties['n'] must be a text of at most 4096 characters, a",
        ),
        (_set("suites/0/properties/n", 10**30), "suites[0].properties['n'] must be"),
        (_set("suites/0/properties/n", "x" * 5000), "suites[0].properties['n'] must be"),
        (_set("columns/0", ["only a key"]), "report's columns[0] must be a pair of texts [key, label]"),
        (_set("columns", "rto"), "report's columns must be a list"),
    ],
)
def test_from_json_refuses_a_wrong_document_with_a_sentence_naming_the_field(
    change: Callable[[dict[str, object]], None], words: str
) -> None:
    document = json.loads(reports.to_json(round_trip_report()))
    change(document)
    with pytest.raises(ReportError) as caught:
        reports.from_json(json.dumps(document))
    message = str(caught.value)
    assert words in message
    assert "\n" not in message and len(message) < 300


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("{", "the report is not JSON"),
        ("", "the report is not JSON"),
        (b"\xff\xfe{}", "the report is not JSON"),
        ("[]", "report's top level must be an object"),
        ("null", "report's top level must be an object"),
        ('{"format": NaN}', "holds NaN, which is not a number JSON allows"),
        ('{"format": -Infinity}', "holds -Infinity"),
        ('{"format": 1e999}', "holds the number 1e999, too large for a float"),
        ("[" * 200_000 + "]" * 200_000, "nested too deeply"),
        (" " * (16 * 1024 * 1024 + 1), "more than the 16777216 a report may be"),
    ],
)
def test_from_json_refuses_text_that_is_no_strict_json(text: str | bytes, words: str) -> None:
    with pytest.raises(ReportError, match=re.escape(words)):
        reports.from_json(text)


def test_combine_makes_one_row_per_host_sorted_with_the_earliest_start_and_latest_end() -> None:
    third = Report("drill", "web3", "2026-03-01T01:59:00.000000Z", T1, [host("web3")], [("rto_seconds", "RTO")])
    first = Report("drill", "web1", T0, "2026-03-01T02:30:00.000000Z", [host("web1", failed="fetch")], [])
    second = Report("drill", "web2", T0, T1, [host("web2")], [("downtime", "down"), ("rto_seconds", "other")])
    parts = [third, first, second]
    # Read back as a controller would, from each host's JSON.
    fleet = reports.combine([reports.from_json(reports.to_json(part)) for part in parts], title="Fleet drill")
    assert [suite.name for suite in fleet.suites] == ["web1", "web2", "web3"]
    assert (fleet.title, fleet.kind, fleet.status) == ("Fleet drill", "drill", "failed")
    assert (fleet.started, fleet.finished) == ("2026-03-01T01:59:00.000000Z", "2026-03-01T02:30:00.000000Z")
    assert fleet.columns == [("rto_seconds", "RTO"), ("downtime", "down")]
    summary = check_tables(reports.to_markdown(fleet), [3, 4, 4, 4])[0]
    assert summary[0] == ["name", "result", "RTO", "down", "first failure"]
    assert [row[:3] for row in summary[2:]] == [
        ["web1", "FAILED", "612.5"],
        ["web2", "passed", "612.5"],
        ["web3", "passed", "612.5"],
    ]
    assert [row[-1] for row in summary[2:]] == ["fetch: fetch broke", "", ""]
    root = parse_junit(reports.to_junit(fleet))
    assert [suite.get("name") for suite in root] == ["web1", "web2", "web3"] and root.get("failures") == "1"
    assert reports.combine(parts).title == "web3"


def test_combine_refuses_a_host_twice_mixed_kinds_and_nothing() -> None:
    with pytest.raises(ReportError, match="two suites are named 'web1'"):
        reports.combine([drill(host("web1")), drill(host("web2"), host("web1"))])
    with pytest.raises(ReportError, match=r"reports of different kinds \(drill, migration\) cannot be combined"):
        reports.combine([drill(host("web1")), drill(host("a → b"), kind="migration")])
    with pytest.raises(ReportError, match="no report to combine"):
        reports.combine([])


def test_write_puts_the_three_formats_in_the_directory_readable_by_ci(tmp_path: Path) -> None:
    report = drill(host("web1"), host("web2", failed="verify"))
    report.suites[1].cases[1].message = HOSTILE
    paths = reports.write(report, str(tmp_path), "drill-20260301")
    assert paths == {
        "json": str(tmp_path / "drill-20260301.json"),
        "markdown": str(tmp_path / "drill-20260301.md"),
        "junit": str(tmp_path / "drill-20260301.xml"),
    }
    assert sorted(os.listdir(tmp_path)) == ["drill-20260301.json", "drill-20260301.md", "drill-20260301.xml"]
    assert {stat.S_IMODE(os.stat(path).st_mode) for path in paths.values()} == {0o644}
    assert reports.from_json(Path(paths["json"]).read_text()) == report
    assert Path(paths["markdown"]).read_text(encoding="utf-8") == reports.to_markdown(report)
    assert parse_junit(Path(paths["junit"]).read_text(encoding="utf-8")).get("failures") == "1"
    report.suites[1].cases[1].status = "passed"
    reports.write(report, str(tmp_path), "drill-20260301")  # replaced in place
    assert reports.from_json(Path(paths["json"]).read_text()).status == "passed"
    assert len(os.listdir(tmp_path)) == 3


@pytest.mark.parametrize("basename", ["", "a/b", "/abs", ".hidden", "..", "../up", "nul\x00"])
def test_write_refuses_a_basename_that_is_not_a_plain_name(tmp_path: Path, basename: str) -> None:
    (tmp_path / "a").mkdir()
    with pytest.raises(ReportError, match="file name must be a plain name"):
        reports.write(drill(host("web1")), str(tmp_path), basename)
    assert [path.name for path in tmp_path.rglob("*")] == ["a"]


def test_write_into_a_missing_directory_is_a_report_error(tmp_path: Path) -> None:
    with pytest.raises(ReportError, match=r"cannot write the report drill into .*missing: No such file"):
        reports.write(drill(host("web1")), str(tmp_path / "missing"), "drill")
