"""The S3 requests of replicas/s3.py: AWS Signature Version 4 as AWS documents it, checked against AWS's own worked
example (the S3 API reference, "Signature Calculations for the Authorization Header: Transferring Payload in a
Single Chunk", example "GET Object")."""

from __future__ import annotations

from datetime import UTC, datetime

from ansible_collections.selfhost.dr.plugins.module_utils.replicas import s3

ACCESS = "AKIAIOSFODNN7EXAMPLE"
SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"


def test_a_get_with_a_range_is_signed_as_awss_worked_example() -> None:
    headers = s3.signature_headers(
        "GET", "examplebucket.s3.amazonaws.com", "/test.txt", {}, {"Range": "bytes=0-9"}, s3.EMPTY_SHA256,
        ACCESS, SECRET, "us-east-1", datetime(2013, 5, 24, tzinfo=UTC),
    )  # fmt: skip
    assert headers["authorization"] == (
        "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, "
        "SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, "
        "Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
    )
    assert headers["x-amz-date"] == "20130524T000000Z" and SECRET not in str(headers)


def test_a_listing_is_signed_with_its_query_as_awss_worked_example() -> None:
    # The same reference, example "GET Bucket (List Objects)": ?max-keys=2&prefix=J
    headers = s3.signature_headers(
        "GET", "examplebucket.s3.amazonaws.com", "/", {"max-keys": "2", "prefix": "J"}, {}, s3.EMPTY_SHA256,
        ACCESS, SECRET, "us-east-1", datetime(2013, 5, 24, tzinfo=UTC),
    )  # fmt: skip
    assert headers["authorization"].endswith(
        "Signature=34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7"
    )


def test_the_secret_is_not_in_the_stores_repr() -> None:
    store = s3.Store("http://127.0.0.1:1", "b", ACCESS, SECRET)
    assert SECRET not in repr(store) and ACCESS not in repr(store)
