"""replicas/s3.py against a real S3 store (SeaweedFS): a bucket made, objects written, a prefix listed page after
page, an LTX file's header read from its first bytes, and a wrong secret refused in one sentence that holds no
secret."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from ansible_collections.selfhost.dr.plugins.module_utils.replicas import ltx, s3

from . import s3_store

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "litestream" / "single" / "ltx"


def _store(store: s3_store.Store, bucket: str, secret: str = s3_store.SECRET_KEY) -> s3.Store:
    return s3.Store(store.endpoint, bucket, s3_store.ACCESS_KEY, secret)


def test_a_replica_is_listed_and_its_headers_read(store: s3_store.Store) -> None:
    client = _store(store, "replica-list")
    client.create_bucket()
    client.create_bucket()  # ours already: no error
    written = {}
    for path in sorted(FIXTURE.glob("*/*.ltx")):
        key = f"dr/web1/tenement/app.db/{int(path.parent.name):04x}/{path.name}"
        client.put(key, path.read_bytes())
        written[key] = path.stat().st_size
    client.put("dr/web1/tenement/app.dbx/0000/0000000000000001-0000000000000001.ltx", b"elsewhere")
    listed = {o.key: o.size for o in client.list("dr/web1/tenement/app.db/")}
    assert listed == written
    key = next(k for k in written if k.endswith("0009/0000000000000001-0000000000000025.ltx"))
    header = ltx.read_header(client.read(key, ltx.HEADER_SIZE), key.rsplit("/", 1)[1])
    assert (header.min_txid, header.max_txid) == (1, 0x25)


def test_a_listing_of_more_than_a_page_is_read_whole(store: s3_store.Store) -> None:
    client = _store(store, "replica-pages")
    client.create_bucket()
    for n in range(1, 1204):
        client.put(f"db/0000/{n:016x}-{n:016x}.ltx", struct.pack(">Q", n))
    assert [o.key for o in client.list("db/0000/")] == [f"db/0000/{n:016x}-{n:016x}.ltx" for n in range(1, 1204)]


def test_a_wrong_secret_is_refused_in_one_sentence_without_it(store: s3_store.Store) -> None:
    secret = "not-the-secret-at-all"
    with pytest.raises(s3.S3Error) as refused:
        list(_store(store, "replica-list", secret).list("dr/"))
    said = str(refused.value)
    assert said.startswith("the S3 store refused to list replica-list/dr/ (HTTP 403") and secret not in said


def test_a_store_that_does_not_answer_says_so() -> None:
    with pytest.raises(s3.S3Error, match="did not answer"):
        list(s3.Store("http://127.0.0.1:9", "b", "a", "s", timeout=2).list(""))
