"""Fixtures of the integration tests: one real S3 store (SeaweedFS) for the whole session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from . import s3_store


@pytest.fixture(scope="session")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[s3_store.Store]:
    """SeaweedFS with S3 on a free loopback port; each test names a bucket of its own."""
    with s3_store.running(tmp_path_factory.mktemp("seaweedfs")) as running:
        yield running
