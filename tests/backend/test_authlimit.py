"""The failed-authentication limiter per client address, with made-up times."""

from __future__ import annotations

from typing import Any

import pytest
from hark_backend.authlimit import FailedAuthLimiter, address_key
from hark_backend.registry import RateLimit


def test_blocked_after_n_failures_until_the_window_ends() -> None:
    """N failures pass; then the address waits for the rest of its window, then starts over."""
    limiter = FailedAuthLimiter(RateLimit(3, 60.0))
    assert [limiter.failed("a", t) for t in (100.0, 110.0)] == [False, False]
    assert not limiter.blocked
    assert limiter.failed("a", 120.0) is True  # the third: over the limit, said once
    assert limiter.retry_after_s("a", 120.0) == pytest.approx(40.0)
    assert limiter.retry_after_s("b", 120.0) == 0.0
    assert limiter.retry_after_s("a", 159.0) == pytest.approx(1.0)
    assert limiter.retry_after_s("a", 160.0) == 0.0
    assert not limiter.blocked  # swept: the good path is back to one empty-dict test
    assert limiter.failed("a", 161.0) is False  # a fresh window


def test_failures_in_an_old_window_do_not_count() -> None:
    """Two failures a minute apart, limit 2 per 60 s: never blocked."""
    limiter = FailedAuthLimiter(RateLimit(2, 60.0))
    for t in (0.0, 61.0, 122.0, 183.0):
        assert limiter.failed("a", t) is False
    assert not limiter.blocked


def test_memory_is_bounded_by_address_count() -> None:
    """Many addresses: the oldest windows and blocks are forgotten first."""
    limiter = FailedAuthLimiter(RateLimit(1, 60.0), max_addresses=100)
    for i in range(1000):
        limiter.failed(f"10.0.{i // 256}.{i % 256}", 1.0)
    assert len(limiter._windows) == 100 and len(limiter.blocked) == 100
    assert limiter.retry_after_s("10.0.3.231", 1.0) > 0  # the newest is still blocked


@pytest.mark.parametrize(
    ("host", "key"),
    [
        ("203.0.113.7", "203.0.113.7"),
        ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:ffff::1", "2001:db8:1:2::/64"),
        ("::ffff:203.0.113.7", "203.0.113.7"),
        (None, "-"),
        ("unix-socket", "unix-socket"),
    ],
)
def test_address_keys(host: str | None, key: str) -> None:
    """IPv4 per address, IPv6 per /64 (one host or home), mapped IPv4 as IPv4."""
    assert address_key(host) == key


def test_the_good_path_looks_nothing_up(monkeypatch: pytest.MonkeyPatch) -> None:
    """With no address blocked, authenticating never consults the limiter's tables."""
    import asyncio
    from types import SimpleNamespace

    from hark_backend import app as app_module
    from hark_backend.registry import Admission

    def boom(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the good path consulted the failed-auth limiter")

    monkeypatch.setattr(FailedAuthLimiter, "retry_after_s", boom)
    monkeypatch.setattr(FailedAuthLimiter, "failed", boom)
    monkeypatch.setattr(app_module, "address_key", boom)

    class Registry:
        async def call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
            return fn(*args, **kwargs)

        def admit(self, token: str, **kwargs: Any) -> Admission:
            return Admission("ok", device="kitchen")

    state = SimpleNamespace(
        auth_limiter=FailedAuthLimiter(RateLimit(1, 60.0)),
        registry=Registry(),
        settings=SimpleNamespace(rate_limit=RateLimit(10, 60.0)),
        outage_log=app_module.OutageLog(),
    )
    request: Any = SimpleNamespace(
        app=SimpleNamespace(state=state),
        headers={"authorization": "Bearer hark_dt_" + "x" * 43},
        state=SimpleNamespace(),
        client=SimpleNamespace(host="203.0.113.7"),
    )
    admission = asyncio.run(app_module.authenticate(request))
    assert admission.outcome == "ok"
