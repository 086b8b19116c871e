"""hark.net.keys: the backoff schedule, failure classes and retry policy, URL rules (no I/O)."""

from __future__ import annotations

import pytest
from hark import events as ev
from hark.net.keys import (
    MAX_RETRY_AFTER_S,
    Backoff,
    Failure,
    KeyFetchError,
    RetryPolicy,
    classify_close,
    classify_status,
    retry_after_s,
    session_url,
    where_to,
)


def test_backoff_doubles_up_to_the_cap():
    """Without jitter the delays are initial * 2**n, capped at max_s."""
    backoff = Backoff(initial_s=0.5, max_s=4.0, jitter=0.0)
    assert [backoff.delay_s(n, 0.5) for n in range(6)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert backoff.delay_s(10_000, 0.5) == 4.0  # no overflow however long it has failed


def test_backoff_jitter_stays_within_its_band():
    """Jitter spreads each delay by ± the jitter fraction."""
    backoff = Backoff(initial_s=1.0, max_s=30.0, jitter=0.25)
    assert backoff.delay_s(0, 0.0) == pytest.approx(0.75)
    assert backoff.delay_s(0, 0.999999) == pytest.approx(1.25, abs=1e-5)
    assert backoff.delay_s(2, 0.5) == pytest.approx(4.0)


def test_backoff_draws_its_own_jitter_when_not_given_one():
    """Without ``rand`` a jittered backoff still spreads; an unjittered one is exact."""
    jittered = Backoff(initial_s=1.0, max_s=30.0, jitter=0.25)
    assert all(0.75 <= jittered.delay_s(0) <= 1.25 for _ in range(50))
    assert Backoff(initial_s=1.0, jitter=0.0).delay_s(3) == 8.0


def test_app_and_sound_card_keep_their_schedules():
    """The one Backoff carries the app's restart and the sound card's reopen delays as
    they were: doubling from 0.5 s, no jitter, capped at 30 s and 10 s."""
    from hark.audio.soundcard import REOPEN_BACKOFF
    from hark.service.loop import RESTART_BACKOFF

    assert [RESTART_BACKOFF.delay_s(n) for n in range(8)] == [0.5, 1, 2, 4, 8, 16, 30, 30]
    assert [REOPEN_BACKOFF.delay_s(n) for n in range(7)] == [0.5, 1, 2, 4, 8, 10, 10]


def make_policy() -> RetryPolicy:
    return RetryPolicy(Backoff(initial_s=1.0, max_s=8.0, jitter=0.0, slow_s=60.0), lambda: 0.0)


def test_network_failures_back_off_and_reset():
    """Network and server failures are reported and back off; a stable session resets that."""
    policy = make_policy()
    decisions = [policy.failed(Failure("network", "down")) for _ in range(5)]
    assert [d.delay_s for d in decisions] == [1.0, 2.0, 4.0, 8.0, 8.0]
    assert decisions[0].report == ev.LinkFailed("network", "down")
    assert policy.failed(Failure("server", "503")).report == ev.LinkFailed("server", "503")
    policy.reset()
    assert policy.failed(Failure("server", "503")).delay_s == 1.0


def test_auth_failure_gets_one_quick_retry_then_refused():
    """Close 3000 once: retry at once with a new key; twice: "refused" and a slow retry."""
    policy = make_policy()
    first = policy.failed(Failure("auth", "bad key"))
    assert first.report is None and first.delay_s == 0.0
    second = policy.failed(Failure("auth", "bad key"))
    assert second.report == ev.LinkFailed("refused", "bad key")
    assert second.delay_s >= 60.0
    assert policy.failed(Failure("auth", "bad key")).report is not None  # still refused
    policy.authorised()
    assert policy.failed(Failure("auth", "bad key")).report is None  # a session worked since


@pytest.mark.parametrize("kind", ["config", "unauthorised"])
def test_hopeless_failures_retry_slowly(kind):
    """A config error or a revoked device is reported and never retried in a tight loop."""
    decision = make_policy().failed(Failure(kind, "no"))
    assert decision.report == ev.LinkFailed(kind, "no")
    assert decision.delay_s >= 60.0


def test_close_codes_are_classified():
    """3000 auth, 4000 config, 1011-1014 server, anything else network; the server says why."""
    error = ev.ServerError("invalid_api_key", "Incorrect API key")
    assert classify_close(3000, "x", error) == Failure("auth", "Incorrect API key")
    assert classify_close(4000, "shape", None) == Failure("config", "shape")
    assert classify_close(1011, "", None).kind == "server"
    assert classify_close(1006, "", None) == Failure("network", "closed (1006)")
    assert classify_close(None, "", None).kind == "network"


def test_upgrade_statuses_are_classified():
    """An HTTP answer to the upgrade: 401/403 auth, 5xx/429 server, 3xx and other 4xx config."""
    assert [classify_status(s, "m").kind for s in (401, 403, 429, 500, 503, 404, 302)] == [
        "auth",
        "auth",
        "server",
        "server",
        "server",
        "config",
        "config",
    ]


def test_backend_statuses_are_classified():
    """Backend 401/403 mean a revoked device; no answer is network; 5xx server; 4xx config."""
    kinds = [KeyFetchError("m", s).kind for s in (None, 401, 403, 400, 404, 429, 500, 502, 307)]
    assert kinds == [
        "network",
        "unauthorised",
        "unauthorised",
        "config",
        "config",
        "server",
        "server",
        "server",
        "config",
    ]
    assert KeyFetchError("m", cause="bad_url").kind == "config"
    assert KeyFetchError("m", 502, cause="bad_answer").kind == "server"
    assert KeyFetchError("m", cause="tls").tls


def test_retry_after_is_honoured_within_a_cap():
    """A server's Retry-After lengthens the wait (never shortens it), up to MAX_RETRY_AFTER_S."""
    policy = make_policy()
    assert policy.failed(Failure("server", "429", retry_after_s=45.0)).delay_s == 45.0
    assert policy.failed(Failure("server", "429", retry_after_s=0.0)).delay_s == 2.0
    capped = policy.failed(Failure("server", "429", retry_after_s=1e9)).delay_s
    assert capped == MAX_RETRY_AFTER_S
    assert [retry_after_s(v) for v in ("30", " 7 ", None, "soon", "-5", "1e3")] == [
        30.0,
        7.0,
        None,
        None,
        None,
        None,
    ]
    assert retry_after_s("99999999") == MAX_RETRY_AFTER_S


def test_where_a_redirect_points_is_said_without_path_or_secrets():
    """Only scheme, host and port of a Location are named, with control characters escaped."""
    base = "https://keys.example/v1/realtime/client_secrets"
    assert where_to(base, "https://evil.example:8443/x?token=1") == "https://evil.example:8443"
    assert where_to(base, "/elsewhere") == "https://keys.example"
    assert where_to(base, "http://a\x1bb/") == "http://a\\x1bb"
    assert where_to(base, None) == "nowhere (no Location header)"
    assert where_to(base, "http://[::1/") == "an unreadable Location"


def test_session_url_adds_the_model():
    """The model goes in the query (replacing any given), other query parts are kept."""
    assert session_url("wss://api.openai.com/v1/realtime", "gpt-realtime") == (
        "wss://api.openai.com/v1/realtime?model=gpt-realtime"
    )
    assert session_url("ws://127.0.0.1:8765/v1/realtime?x=1&model=old", "m") == (
        "ws://127.0.0.1:8765/v1/realtime?x=1&model=m"
    )
