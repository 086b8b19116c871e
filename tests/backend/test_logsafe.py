"""Request-derived text in the backend's log: one request, one line, no forged fields."""

from __future__ import annotations

import logging

import httpx2
import openai
import pytest
from hark_backend.upstream import classify


def test_an_upstream_message_is_logged_on_one_line(caplog: pytest.LogCaptureFixture) -> None:
    """OpenAI's 400 message echoes what the device sent (a field name); it cannot add a line."""
    response = httpx2.Response(400, request=httpx2.Request("POST", "https://api.example/v1"))
    exc = openai.BadRequestError(
        "Unknown parameter: 'session.audio.x\nFORGED request outcome=minted'.",
        response=response,
        body=None,
    )
    with caplog.at_level(logging.INFO):
        mapped = classify(exc)
    assert mapped.code == "upstream_rejected_session"
    assert caplog.records
    for record in caplog.records:
        assert "\n" not in record.getMessage()


def test_fields_stay_one_token_and_decode_back() -> None:
    """Plain text is unchanged; anything else is percent-encoded, ``%`` included."""
    from urllib.parse import unquote

    from hark_backend.logsafe import field

    assert field("/v1/realtime/client_secrets") == "/v1/realtime/client_secrets"
    assert field("kitchen.1_a-b") == "kitchen.1_a-b"
    for text in ("/x\nFORGED a=b", "/x%0a", "tab\there", "ä", "\r", "a b", '"q"', "\\"):
        escaped = field(text)
        assert escaped.isascii() and escaped.isprintable()
        assert " " not in escaped and "\\" not in escaped and '"' not in escaped
        assert unquote(escaped) == text
