"""Names and tokens: what reaches tenement is checked first (tenement 0.2.2 checks nothing)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ansible_collections.selfhost.dr.plugins.module_utils.apps.tenement_client import (
    TenementError,
    check_name,
    parse_instance,
    read_token,
)


@pytest.mark.parametrize("spec", ["demo:alpha", "api:prod-2", "a:b", "x" * 63 + ":" + "y" * 63])
def test_parse_instance_accepts_dns_labels(spec: str) -> None:
    service, ident = parse_instance(spec)
    assert f"{service}:{ident}" == spec


@pytest.mark.parametrize(
    "spec",
    [
        "x:../../etc",  # tenement 0.2.2 spawns this and creates dirs outside its data dir
        "demo:Alpha",
        "demo:a_b",
        "demo:a.b",
        "demo:-a",
        "demo:a-",
        "demo",
        "demo:a:b",
        ":a",
        "a:",
        "x" * 64 + ":a",
        "a b:c",
    ],
)
def test_parse_instance_refuses_what_tenement_should_not_see(spec: str) -> None:
    with pytest.raises(TenementError) as err:
        parse_instance(spec)
    message = str(err.value)
    assert repr(spec) in message or "is not a valid tenement name" in message


def test_check_name_says_what_a_name_may_be() -> None:
    with pytest.raises(TenementError, match=r"service 'My_Svc' is not a valid tenement name: use 1 to 63 lowercase"):
        check_name("service", "My_Svc")
    with pytest.raises(TenementError):
        check_name("service", None)


def test_read_token(tmp_path: Path) -> None:
    assert read_token(str(tmp_path)) is None
    (tmp_path / "api_token").write_text("  secret-token\n")
    assert read_token(str(tmp_path)) == "secret-token"
    (tmp_path / "api_token").write_text("\n")
    assert read_token(str(tmp_path)) is None


@pytest.mark.parametrize("server", ["file:///etc/passwd", "localhost:8080", "ftp://x"])
def test_client_only_speaks_http(server: str) -> None:
    from ansible_collections.selfhost.dr.plugins.module_utils.apps.tenement_client import TenementClient

    with pytest.raises(TenementError, match="must be an http:// or https:// URL"):
        TenementClient("ten", server=server)
