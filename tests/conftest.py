"""Shared test configuration: every test runs on loopback only."""

from __future__ import annotations

import pytest

from tests.tls import TestPki, make_pki, openssl_available


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPki:
    """A throwaway CA and a server certificate for 127.0.0.1 (see ``tests.tls``)."""
    if not openssl_available():
        pytest.skip("openssl missing")
    return make_pki(tmp_path_factory.mktemp("pki"))
