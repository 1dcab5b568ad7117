"""Litestream's configuration for tenement and Tomo (replicas/config.py, issue 17): what it replicates, where, and
what it refuses before anything is written."""

from __future__ import annotations

import json

import pytest
import yaml

from ansible_collections.selfhost.dr.plugins.module_utils.replicas import config
from ansible_collections.selfhost.dr.plugins.module_utils.replicas.config import (
    Destination,
    ReplicaConfigError,
    Settings,
)

STORE = Destination(bucket="backups", path="dr", endpoint="http://127.0.0.1:8333")


def test_tenement_replicates_every_database_below_its_data_dir_and_those_made_later() -> None:
    made = config.tenement("/var/lib/tenement", STORE, Settings(), "web1")
    text = config.render(made)
    assert yaml.safe_load(text) == json.loads(text.split("\n", 1)[1]) == made  # JSON, read as YAML
    (entry,) = made["dbs"]  # type: ignore[misc]
    assert entry["dir"] == "/var/lib/tenement" and entry["pattern"] == "[^.]*"
    assert entry["recursive"] is True and entry["watch"] is True
    assert entry["meta-dir"] == "/var/lib/selfhost-dr/litestream/tenement", "its state would land in the backups"
    assert entry["replica"] == {
        "type": "s3", "bucket": "backups", "path": "dr/web1/tenement", "endpoint": "http://127.0.0.1:8333",
        "force-path-style": True, "sync-interval": "1s",
    }  # fmt: skip
    assert made["addr"] == "127.0.0.1:9091"
    assert "access" not in text.lower() and "secret" not in text.lower()


def test_tomo_is_replicated_only_once_the_switch_to_wal_is_accepted() -> None:
    with pytest.raises(ReplicaConfigError, match=r"switches tomo\.db from its rollback journal to WAL"):
        config.tomo("/var/lib/tomo/tomo.db", STORE, Settings(), "tomo1")
    made = config.tomo("/var/lib/tomo/tomo.db", STORE, Settings(accept_wal=True), "tomo1")
    (entry,) = made["dbs"]  # type: ignore[misc]
    assert entry["path"] == "/var/lib/tomo/tomo.db"
    assert entry["replica"]["path"] == "dr/tomo1/tomo/tomo.db"  # type: ignore[index]


def test_asked_to_encrypt_it_refuses_plaintext_and_takes_the_stores_encryption() -> None:
    with pytest.raises(ReplicaConfigError, match=r"Litestream 0\.5 cannot encrypt what it uploads"):
        config.tenement("/var/lib/tenement", STORE, Settings(encrypt=True), "web1")
    with pytest.raises(ReplicaConfigError, match="needs an https endpoint"):
        clear = Destination("backups", endpoint="http://s3:8333", encryption="sse-kms", sse_kms_key_id="k")
        config.tenement("/var/lib/tenement", clear, Settings(encrypt=True), "web1")
    secure = Destination("backups", endpoint="https://s3.example.org", encryption="sse-kms", sse_kms_key_id="alias/dr")
    made = config.tenement("/var/lib/tenement", secure, Settings(encrypt=True), "web1")
    assert made["dbs"][0]["replica"]["sse-kms-key-id"] == "alias/dr"  # type: ignore[index]
    with pytest.raises(ReplicaConfigError, match="sse-c is not supported: the collection reads the replicas itself"):
        customer = Destination("backups", endpoint="https://s3.example.org", encryption="sse-c",
                               sse_customer_key_path="/etc/selfhost-dr/sse.key")  # fmt: skip
        config.tenement("/var/lib/tenement", customer, Settings(encrypt=True), "web1")


@pytest.mark.parametrize(
    ("dest", "settings", "said"),
    [
        (STORE, Settings(addr="0.0.0.0:9091"), "must be a loopback address"),
        (STORE, Settings(addr="127.0.0.1"), "must be a loopback address"),
        (STORE, Settings(sync_interval="1 second"), "sync_interval must be a duration"),
        (STORE, Settings(levels=[]), "at least one compaction level"),
        (STORE, Settings(heartbeat_url="https://hc.example/x", heartbeat_interval="30s"), "under a minute"),
        (STORE, Settings(heartbeat_url="ftp://hc"), "http\\(s\\) URL"),
        (STORE, Settings(meta_dir="relative"), "absolute, normal path"),
        (Destination("Bad_Bucket"), Settings(), "is not an S3 bucket name"),
        (Destination("backups", path="../other"), Settings(), "may not hold the segment '..'"),
        (Destination("backups", endpoint="http://a b"), Settings(), "endpoint must be"),
        (Destination("backups", encryption="age"), Settings(), "encryption must be one of"),
        (Destination("backups", encryption="sse-kms"), Settings(), "needs the key id"),
    ],
)
def test_a_setting_litestream_would_refuse_or_misuse_is_refused_first(
    dest: Destination, settings: Settings, said: str
) -> None:
    with pytest.raises(ReplicaConfigError, match=said):
        config.tenement("/var/lib/tenement", dest, settings, "web1")


def test_a_host_name_that_is_no_path_segment_is_refused() -> None:
    with pytest.raises(ReplicaConfigError, match="segment"):
        config.tenement("/var/lib/tenement", STORE, Settings(), "web 1")
