# Copyright: selfhost.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The report of a DR drill or a migration, written as JSON, Markdown and JUnit XML.

Standard library only. One format for both: a suite per host (drill) or per old→new pair (migration), each with
its cases (steps, checks, targets) and figures (RTO, RPO, downtime) as properties. The JSON comes back from hosts
and is what :func:`combine` reads for a fleet, so :func:`from_json` trusts none of it. The Markdown goes into a CI
job summary and the XML into the test reporters of GitHub, GitLab and Jenkins: every text a host wrote is made
safe for them on the way out (no broken table, no HTML, no character XML 1.0 refuses), never trusted.
"""

from __future__ import annotations

import json
import math
import os
import re
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass, field

from ._common import Error, atomic_write, fsync_dir, parse_iso

FORMAT = "selfhost-dr-report"
VERSION = 1
STATUSES = ("passed", "failed", "skipped")
CASE_KINDS = ("step", "check", "target")
REPORT_KINDS = ("drill", "migration")
MAX_TEXT = 4096  # characters of any one text read back (a name, a message, a property)
MAX_DETAIL = 16384  # characters of one case's detail, as JSON
MAX_DOCUMENT = 16 * 1024 * 1024
MAX_INT = 2**63
CELL = 300  # characters of a Markdown cell, "…" included


class ReportError(Error):
    """A report cannot be read back, combined or written."""


@dataclass
class Case:
    """One step, check or target of a suite; ``message`` says why when it failed or was skipped."""

    name: str
    kind: str
    status: str
    seconds: float | None = None
    message: str = ""
    detail: dict[str, object] = field(default_factory=dict)


@dataclass
class Suite:
    """One host of a drill, or one old→new pair of a migration."""

    name: str
    started: str
    finished: str
    cases: list[Case] = field(default_factory=list)
    properties: dict[str, str | int | float | bool | None] = field(default_factory=dict)

    @property
    def status(self) -> str:
        statuses = {case.status for case in self.cases}
        if "failed" in statuses:
            return "failed"
        return "passed" if "passed" in statuses else "skipped"

    @property
    def failed_case(self) -> Case | None:
        return next((case for case in self.cases if case.status == "failed"), None)


@dataclass
class Report:
    """A whole drill or migration; ``columns`` are the properties the Markdown summary shows, with their labels."""

    kind: str
    title: str
    started: str
    finished: str
    suites: list[Suite] = field(default_factory=list)
    columns: list[tuple[str, str]] = field(default_factory=list)

    @property
    def status(self) -> str:
        """Passed only when every suite passed: a report of no suite, or of a skipped one, drilled nothing there."""
        passed = bool(self.suites) and all(suite.status == "passed" for suite in self.suites)
        return "passed" if passed else "failed"


def _plain(value: object) -> object:
    """``value`` as strict JSON holds it: a non-finite float as null, anything else unknown as its text."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, (str, int)):
        return value
    if isinstance(value, dict):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return str(value)


def to_json(report: Report) -> str:
    """Strict JSON (a non-finite figure as null), with the statuses computed for readers that only want those."""
    document = {"format": FORMAT, "version": VERSION, "status": report.status, **asdict(report)}
    document["suites"] = [{"name": suite.name, "status": suite.status, **asdict(suite)} for suite in report.suites]
    return json.dumps(_plain(document), indent=2, allow_nan=False) + "\n"


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _bad(path: str, wanted: str, value: object) -> ReportError:
    return ReportError(f"the report's {path} must be {wanted}, not {_shown(value)}")


def _get(obj: dict[str, object], key: str, where: str) -> object:
    if key not in obj:
        raise ReportError(f"the report has no {where}{key}")
    return obj[key]


def _object(value: object, path: str) -> dict[str, object]:
    if not isinstance(value, dict):
        raise _bad(path or "top level", "an object", value)
    return value


def _array(value: object, path: str) -> list[object]:
    if not isinstance(value, list):
        raise _bad(path, "a list", value)
    return value


def _text(obj: dict[str, object], key: str, where: str, choices: tuple[str, ...] = (), empty: bool = True) -> str:
    value = _get(obj, key, where)
    if not isinstance(value, str) or len(value) > MAX_TEXT or (not empty and not value):
        wanted = "a text" if empty else "a non-empty text"
        raise _bad(where + key, f"{wanted} of at most {MAX_TEXT} characters", value)
    if choices and value not in choices:
        raise _bad(where + key, "one of " + ", ".join(choices), value)
    return value


def _time(obj: dict[str, object], key: str, where: str) -> str:
    value = _text(obj, key, where)
    try:
        parse_iso(value)
    except ValueError:
        raise _bad(where + key, "a UTC time like 2026-01-31T03:00:00.000000Z", value) from None
    return value


def _scalar(value: object, path: str) -> str | int | float | bool | None:
    if value is None or isinstance(value, (bool, float)):  # floats are finite: _finite refused the others
        return value
    if isinstance(value, int) and abs(value) <= MAX_INT:
        return value
    if isinstance(value, str) and len(value) <= MAX_TEXT:
        return value
    raise _bad(path, f"a text of at most {MAX_TEXT} characters, a number, true, false or null", value)


def _seconds(value: object, path: str) -> float | None:
    if value is None:
        return None
    try:
        seconds = float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else -1.0
    except OverflowError:
        seconds = -1.0
    if not 0 <= seconds < math.inf:
        raise _bad(path, "a number of seconds, 0 or more, or null", value)
    return seconds


def _case(value: object, where: str) -> Case:
    obj = _object(value, where[:-1])
    status = _text(obj, "status", where, STATUSES)
    message = _text(obj, "message", where)
    if status != "passed" and not message.strip():
        raise ReportError(f"the report's {where}message must say why the case {status}, and is empty")
    detail = _object(_get(obj, "detail", where), where + "detail")
    if len(json.dumps(detail)) > MAX_DETAIL:
        raise ReportError(f"the report's {where}detail is more than {MAX_DETAIL} characters as JSON")
    return Case(
        name=_text(obj, "name", where, empty=False),
        kind=_text(obj, "kind", where, CASE_KINDS),
        status=status,
        seconds=_seconds(_get(obj, "seconds", where), where + "seconds"),
        message=message,
        detail=detail,
    )


def _suite(value: object, where: str) -> Suite:
    obj = _object(value, where[:-1])
    properties = _object(_get(obj, "properties", where), where + "properties")
    for key in properties:
        if len(key) > MAX_TEXT:
            raise _bad(where + "properties", f"keyed by texts of at most {MAX_TEXT} characters", key)
    cases = _array(_get(obj, "cases", where), where + "cases")
    return Suite(
        name=_text(obj, "name", where, empty=False),
        started=_time(obj, "started", where),
        finished=_time(obj, "finished", where),
        cases=[_case(case, f"{where}cases[{i}].") for i, case in enumerate(cases)],
        properties={key: _scalar(item, f"{where}properties[{_shown(key)}]") for key, item in properties.items()},
    )


def _no_constant(name: str) -> object:
    raise ReportError(f"the report holds {name}, which is not a number JSON allows")


def _finite(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise ReportError(f"the report holds the number {text[:40]}, too large for a float")
    return number


def from_json(text: str | bytes) -> Report:
    """The report in ``text``, checked field by field: it was read back from a host, so nothing in it is trusted.
    The statuses it states are ignored; they follow from its cases."""
    if len(text) > MAX_DOCUMENT:
        raise ReportError(f"the report is {len(text)} bytes long, more than the {MAX_DOCUMENT} a report may be")
    try:
        data = json.loads(text, parse_constant=_no_constant, parse_float=_finite)
    except RecursionError:
        raise ReportError("the report is nested too deeply to be a report") from None
    except ValueError as exc:  # json.JSONDecodeError, UnicodeDecodeError, an integer of too many digits
        raise ReportError(f"the report is not JSON: {exc}") from None
    obj = _object(data, "")
    if obj.get("format") != FORMAT or obj.get("version") != VERSION:
        raise ReportError(f"the text is not a {FORMAT} document of version {VERSION}")
    columns = []
    for i, pair in enumerate(_array(_get(obj, "columns", ""), "columns")):
        if not (
            isinstance(pair, list) and len(pair) == 2 and all(isinstance(s, str) and len(s) <= MAX_TEXT for s in pair)
        ):
            raise _bad(f"columns[{i}]", "a pair of texts [key, label]", pair)
        columns.append((pair[0], pair[1]))
    suites = _array(_get(obj, "suites", ""), "suites")
    return Report(
        kind=_text(obj, "kind", "", REPORT_KINDS),
        title=_text(obj, "title", ""),
        started=_time(obj, "started", ""),
        finished=_time(obj, "finished", ""),
        suites=[_suite(suite, f"suites[{i}].") for i, suite in enumerate(suites)],
        columns=columns,
    )


def combine(reports: list[Report], title: str | None = None) -> Report:
    """One report of all the suites of ``reports`` (a fleet: one row per host), sorted by name."""
    if not reports:
        raise ReportError("there is no report to combine")
    kinds = sorted({report.kind for report in reports})
    if len(kinds) > 1:
        raise ReportError(f"reports of different kinds ({', '.join(kinds)}) cannot be combined")
    suites: dict[str, Suite] = {}
    columns: dict[str, str] = {}
    for report in reports:
        for suite in report.suites:
            if suite.name in suites:
                raise ReportError(f"two suites are named {_shown(suite.name)}: a host or pair is reported twice")
            suites[suite.name] = suite
        for key, label in report.columns:
            columns.setdefault(key, label)
    return Report(
        kind=kinds[0],
        title=reports[0].title if title is None else title,
        started=min(report.started for report in reports),  # iso() times sort as text
        finished=max(report.finished for report in reports),
        suites=[suites[name] for name in sorted(suites)],
        columns=list(columns.items()),
    )


def _wall(started: str, finished: str) -> float | None:
    try:
        return (parse_iso(finished) - parse_iso(started)).total_seconds()
    except (TypeError, ValueError):
        return None


def _show(value: object) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        text = f"{value:.1f}"
        return text[:-2] if text.endswith(".0") else text
    return str(value)


# Line breaks become spaces; other control characters, lone surrogates, noncharacters and the bidi controls
# (which can make a cell read as something else) go.
_BREAKS = re.compile("[\t\n\r\v\f\x85\u2028\u2029]")
_INVISIBLE = re.compile("[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069\ud800-\udfff\ufffe\uffff]")
_MARKDOWN = str.maketrans(
    {"\\": "\\\\", "|": "\\|", "`": "\\`", "[": "\\[", "]": "\\]", "&": "&amp;", "<": "&lt;", ">": "&gt;"}
)


def _cell(value: object) -> str:
    """``value`` as one Markdown table cell that no text can break out of, or turn into HTML, code or a link."""
    text = _INVISIBLE.sub("", _BREAKS.sub(" ", value if isinstance(value, str) else _show(value))).strip()
    if len(text) > CELL:
        text = text[: CELL - 1] + "…"  # cut before escaping, so no escape is cut in two
    return text.translate(_MARKDOWN)


def _table(header: list[object], rows: list[list[object]]) -> list[str]:
    def row(cells: list[object]) -> str:
        return "| " + " | ".join(_cell(cell) for cell in cells) + " |"

    return [row(header), "|" + "---|" * len(header), *(row(cells) for cells in rows)]


def _result(status: str) -> str:
    return "FAILED" if status == "failed" else status


def _failure(case: Case | None) -> str:
    return "" if case is None else f"{case.name}: {case.message}"


def to_markdown(report: Report) -> str:
    """A summary table of one row per suite, then each suite's cases: for a CI job summary or a merge request."""
    suites = report.suites
    count = {status: sum(1 for suite in suites if suite.status == status) for status in STATUSES}
    lines = [
        f"# {_cell(report.title)}: {_result(report.status)}",
        "",
        f"{len(suites)} suite{'' if len(suites) == 1 else 's'}: {count['passed']} passed, {count['failed']} failed, "
        f"{count['skipped']} skipped. Started {_cell(report.started)}, finished {_cell(report.finished)}, "
        f"{_cell(_wall(report.started, report.finished))} s in all.",
        "",
    ]
    keys = [key for key, _label in report.columns]
    rows = [
        [suite.name, _result(suite.status), *(suite.properties.get(key) for key in keys), _failure(suite.failed_case)]
        for suite in suites
    ]
    lines += _table(["name", "result", *(label for _key, label in report.columns), "first failure"], rows)
    for suite in suites:
        wall = _wall(suite.started, suite.finished)
        lines += ["", f"## {_cell(suite.name)}: {_result(suite.status)}", ""]
        lines += [f"Started {_cell(suite.started)}, finished {_cell(suite.finished)}, {_cell(wall)} s.", ""]
        rows = [[case.kind, case.name, _result(case.status), case.seconds, case.message] for case in suite.cases]
        lines += _table(["kind", "name", "result", "seconds", "message"], rows) if rows else ["No cases."]
        if suite.properties:
            lines += ["", *(f"- {_cell(key)}: {_cell(value)}" for key, value in suite.properties.items())]
    return "\n".join(lines) + "\n"


_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def _x(value: object) -> str:
    """``value`` as XML 1.0 text: None as empty, and without the characters XML 1.0 cannot hold."""
    if value is None:
        return ""
    text = value if isinstance(value, str) else json.dumps(value) if isinstance(value, bool) else str(value)
    return _NOT_XML.sub("", text)


def _time_attr(seconds: float | None) -> str:
    return f"{seconds:.3f}" if seconds is not None and math.isfinite(seconds) else "0.000"


def _suite_seconds(suite: Suite) -> float:
    wall = _wall(suite.started, suite.finished)
    return wall if wall is not None else sum(case.seconds or 0.0 for case in suite.cases)


def _counts(cases: list[Case]) -> dict[str, str]:
    failed = sum(case.status == "failed" for case in cases)
    skipped = sum(case.status == "skipped" for case in cases)
    return {"tests": str(len(cases)), "failures": str(failed), "errors": "0", "skipped": str(skipped)}


def to_junit(report: Report) -> str:
    """JUnit XML, with the attributes the reporters of GitHub, GitLab and Jenkins read."""
    wall = _wall(report.started, report.finished)
    seconds = wall if wall is not None else sum(_suite_seconds(suite) for suite in report.suites)
    cases = [case for suite in report.suites for case in suite.cases]
    root = ET.Element("testsuites", {"name": _x(report.title), **_counts(cases), "time": _time_attr(seconds)})
    for suite in report.suites:
        element = ET.SubElement(root, "testsuite", {"name": _x(suite.name), **_counts(suite.cases)})
        element.attrib.update(time=_time_attr(_suite_seconds(suite)), timestamp=_x(suite.started))
        if suite.properties:
            properties = ET.SubElement(element, "properties")
            for key, value in suite.properties.items():
                ET.SubElement(properties, "property", {"name": _x(key), "value": _x(value)})
        for case in suite.cases:
            classname = _x(f"{report.kind}.{suite.name}.{case.kind}")
            attrib = {"classname": classname, "name": _x(case.name), "time": _time_attr(case.seconds)}
            testcase = ET.SubElement(element, "testcase", attrib)
            if case.status == "failed":
                failure = ET.SubElement(testcase, "failure", {"message": _x(case.message), "type": _x(case.kind)})
                failure.text = _x(case.message)
            elif case.status == "skipped":
                ET.SubElement(testcase, "skipped", {"message": _x(case.message)})
            if case.detail:
                ET.SubElement(testcase, "system-out").text = _x(json.dumps(_plain(case.detail), ensure_ascii=False))
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def write(report: Report, directory: str, basename: str) -> dict[str, str]:
    """``{basename}.json``, ``.md`` and ``.xml`` written atomically into ``directory``, mode 0644 (CI reads them);
    their paths by format."""
    if not basename or "/" in basename or "\x00" in basename or basename.startswith("."):
        raise ReportError(f"the report's file name must be a plain name not starting with '.', not {_shown(basename)}")
    texts = {"json": to_json(report), "markdown": to_markdown(report), "junit": to_junit(report)}
    suffixes = {"json": ".json", "markdown": ".md", "junit": ".xml"}
    paths = {key: os.path.join(directory, basename + suffix) for key, suffix in suffixes.items()}
    try:
        for key, path in paths.items():
            atomic_write(path, texts[key].encode(), 0o644)
        fsync_dir(directory)
    except OSError as exc:
        raise ReportError(f"cannot write the report {basename} into {directory}: {exc.strerror or exc}") from exc
    return paths
