"""selfhost.dr.to_toml and module_utils/toml_writer: what is written reads back with tomllib as exactly what was
given; what TOML cannot say is refused in one sentence.

The filter itself is run in a child Python: importing Ansible's controller side (``ansible.errors``) here would
switch module_utils to controller mode for every later test in this process (module warnings go to the display)."""

from __future__ import annotations

import datetime
import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from ansible_collections.selfhost.dr.plugins.module_utils.toml_writer import TomlError, dumps

COLLECTIONS = Path(__file__).resolve().parents[2] / ".cache" / "collections"  # as tests/conftest.py


def to_toml(data: object, document: str = "a TOML document") -> str:
    return dumps(data, document)  # type: ignore[arg-type]


HOSTILE = [
    "plain",
    'quote " and \\ backslash',
    "'single' and '''triple'''",
    '"""triple double"""',
    "new\nline\r\ncrlf\ttab",
    "\x00\x01\x08\x0b\x0c\x1f\x7f",
    "emoji \U0001f600, é, 中文, \u2028\u2029, \ufeff",
    "",
    "] [x] = 1\n[settings]\ndata_dir = '/'",
    "#not a comment",
    "{data_dir}/{name}/{id}/app.db",
    "\\u0041 \\n not an escape",
]


def tenement_like() -> dict[str, object]:
    return {
        "settings": {
            "data_dir": "/var/lib/tenement",
            "health_check_interval": 5,
            "tls": {"enabled": False, "acme_email": "ops@example.com", "https_port": 8443},
        },
        "service": {
            "web": {
                "command": "/usr/bin/python3 app.py",
                "args": ["--port", "{port}"],
                "health": "/health",
                "storage_persist": True,
                "memory_limit_mb": 256,
                "env": {"DATA": "{data_dir}/{id}", "WITH SPACE": "x", "": "empty key"},
            },
            "worker-2": {"command": "w", "idle_timeout": 0},
        },
        "routing": {"default": "web", "subdomain": {"*.example.com": "web"}, "path": {"/api": "web"}},
        "instances": {"web": ["prod", "staging"], "worker-2": []},
    }


def test_a_tenement_config_reads_back_exactly() -> None:
    config = tenement_like()
    text = to_toml(config)
    assert tomllib.loads(text) == config
    assert "[settings.tls]" in text and "[service.web.env]" in text and '"*.example.com" = "web"' in text


@pytest.mark.parametrize("value", HOSTILE)
def test_hostile_strings_read_back_as_values_keys_and_table_names(value: str) -> None:
    config = {
        "top": value,
        "table": {"s": value, "list": [value, value], "inline": [{"k": value}], value: value},
        value: {value: {"deeper": value}},
    }
    assert tomllib.loads(to_toml(config)) == config


@pytest.mark.parametrize(
    "value",
    [
        0,
        -1,
        2**63 - 1,
        -(2**63),
        1.5,
        -0.0,
        1e300,
        5e-324,
        True,
        False,
        [],
        [1, "a", [True, 2.5]],
        datetime.date(2026, 11, 28),
        datetime.datetime(2026, 11, 28, 9, 1, 2, 345678),
        datetime.datetime(2026, 11, 28, 9, 1, 2, tzinfo=datetime.timezone(datetime.timedelta(hours=5, minutes=30))),
        datetime.time(23, 59, 1),
    ],
)
def test_scalars_and_arrays_read_back(value: object) -> None:
    config = {"v": value, "t": {"v": value}}
    assert tomllib.loads(to_toml(config)) == config


def test_empty_tables_and_an_empty_document() -> None:
    assert to_toml({}) == ""
    config = {"a": {}, "b": {"c": {}}, "d": [{}]}
    assert tomllib.loads(to_toml(config)) == config


def test_tuples_are_arrays() -> None:
    assert tomllib.loads(to_toml({"x": ("a", "b")})) == {"x": ["a", "b"]}


def test_insertion_order_is_kept_and_output_is_stable() -> None:
    config = {"z": 1, "a": {"y": 1, "b": 2}, "m": {"n": 1}}
    text = to_toml(config)
    assert text == to_toml(tenement_like() and config)
    assert text.index("z = 1") < text.index("[a]") < text.index("[m]")
    assert text.index("y = 1") < text.index("b = 2")


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"settings": {"tls": {"domain": None}}}, r"^settings\.tls\.domain cannot be written to tenement\.toml: "),
        ({"a": [1, None]}, r"^a\[1\] cannot be written to tenement\.toml: TOML has no null"),
        ({"a": {1: "x"}}, r"^the key 1 in a cannot be written to tenement\.toml: TOML keys are strings, not int"),
        ({True: "x"}, r"^the key True cannot be written"),
        ({"n": float("nan")}, r"^n cannot be written to tenement\.toml: nan is not a number"),
        ({"n": float("inf")}, r"^n cannot be written to tenement\.toml: inf is not a number"),
        ({"n": 2**63}, r"does not fit in a 64-bit TOML integer"),
        ({"s": "\ud800"}, r"^s cannot be written to tenement\.toml: it is not valid Unicode text"),
        ({"b": b"bytes"}, r"^b cannot be written to tenement\.toml: bytes is not a TOML value"),
        ({"o": object()}, r"object is not a TOML value"),
        ({"t": datetime.time(1, 2, tzinfo=datetime.UTC)}, r"no time of day with a time zone"),
        ({"x": {"\ud800": 1}}, r"not valid Unicode text"),
    ],
)
def test_what_toml_cannot_say_is_refused_in_one_sentence(config: dict[object, object], message: str) -> None:
    with pytest.raises(TomlError, match=message) as info:
        to_toml(config, "tenement.toml")
    assert "\n" not in str(info.value)


def test_a_document_that_contains_itself_is_refused() -> None:
    loop: dict[str, object] = {}
    loop["self"] = {"again": loop}
    with pytest.raises(TomlError, match=r"contains itself"):
        dumps(loop)
    items: list[object] = []
    items.append(items)
    with pytest.raises(TomlError, match=r"contains itself"):
        dumps({"l": items})


def test_only_a_mapping_is_a_document() -> None:
    with pytest.raises(TomlError, match=r"must be written from a mapping, not list"):
        to_toml(["a"])


def test_the_same_object_twice_is_not_a_loop() -> None:
    shared = {"k": "v"}
    config = {"a": shared, "b": shared, "c": [shared, shared]}
    assert tomllib.loads(to_toml(config)) == config


_FILTER = """
import json, sys
sys.path.insert(0, sys.argv[1])
from ansible.errors import AnsibleFilterError
from ansible_collections.selfhost.dr.plugins.filter.to_toml import FilterModule
to_toml = FilterModule().filters()["to_toml"]
data = json.loads(sys.stdin.read())
try:
    print(json.dumps({"text": to_toml(data["doc"], *data["args"])}))
except AnsibleFilterError as exc:
    print(json.dumps({"error": str(exc)}))
"""


def run_filter(doc: object, *args: str) -> dict[str, str]:
    done = subprocess.run(
        [sys.executable, "-c", _FILTER, str(COLLECTIONS)],
        input=json.dumps({"doc": doc, "args": list(args)}),
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return dict(json.loads(done.stdout))


def test_the_filter_writes_what_tomllib_reads_back() -> None:
    config = tenement_like()
    assert tomllib.loads(run_filter(config)["text"]) == config


def test_the_filter_refuses_in_one_sentence_as_an_ansible_filter_error() -> None:
    result = run_filter({"settings": {"tls": {"domain": None}}}, "tenement.toml")
    assert result == {
        "error": "settings.tls.domain cannot be written to tenement.toml: TOML has no null (leave the key out instead)"
    }
