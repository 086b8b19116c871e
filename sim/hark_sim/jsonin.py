"""Reading client JSON at the edge: a nesting cap before parsing, and finite numbers only.

Python's ``json`` recurses once per nesting level (a few thousand ``[`` exhaust the
stack) and accepts ``NaN``/``Infinity`` (and turns ``1e999`` into ``inf``), none of
which is JSON. Both the WebSocket and ``client_secrets`` read through ``parse``, so a
hostile body is one ``invalid_json`` error, never a traceback, a 500 or a dropped
socket. It must not know any event or field; it only says what was wrong and where.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from hark_sim.schema import ProtocolError

# serde_json's default; far deeper than any session, item or JSON Schema a client sends.
MAX_DEPTH = 128
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_BRACKETS = re.compile(r"[\[\]{}]")


class _NonFinite:
    """Stands in for a non-finite number while parsing, so its path can be named."""

    def __init__(self, text: str) -> None:
        self.text = text


def _depth_exceeds(text: str, limit: int) -> bool:
    """Whether ``text`` nests arrays/objects deeper than ``limit`` (strings do not count)."""
    if text.count("[") + text.count("{") <= limit:
        return False  # the fast path: every event without much structure, audio included
    depth = 0
    for match in _BRACKETS.finditer(_STRING.sub('""', text)):
        if match.group() in "[{":
            depth += 1
            if depth > limit:
                return True
        else:
            depth -= 1
    return False


def _number(text: str) -> float | _NonFinite:
    value = float(text)
    return value if math.isfinite(value) else _NonFinite(text)


def _find(value: Any, path: str) -> tuple[str, _NonFinite] | None:
    if isinstance(value, _NonFinite):
        return path, value
    if isinstance(value, dict):
        for key, v in value.items():
            found = _find(v, f"{path}.{key}" if path else str(key))
            if found is not None:
                return found
    elif isinstance(value, list):
        for i, v in enumerate(value):
            found = _find(v, f"{path}[{i}]")
            if found is not None:
                return found
    return None


def parse(
    text: str | bytes, unparsable: str = "We could not parse the JSON body of your request."
) -> Any:
    """The JSON value of ``text``; ``ProtocolError`` (``invalid_json``) if it is not plain JSON.

    ``unparsable`` is the message for text that is not JSON at all.
    A non-finite number's error names its dotted path in ``param`` (``session.max_output_tokens``)
    and, for an object, keeps the object's ``event_id`` in ``event_id``.
    """
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            raise ProtocolError(f"{unparsable} It is not UTF-8.", "invalid_json") from None
    if _depth_exceeds(text, MAX_DEPTH):
        raise ProtocolError(
            f"Invalid JSON: nested more than {MAX_DEPTH} levels deep.", "invalid_json"
        )
    seen: list[bool] = []

    def non_finite(token: str) -> _NonFinite:
        seen.append(True)
        return _NonFinite(token)

    def number(token: str) -> float | _NonFinite:
        value = _number(token)
        if isinstance(value, _NonFinite):
            seen.append(True)
        return value

    try:
        value = json.loads(text, parse_constant=non_finite, parse_float=number)
    except (ValueError, RecursionError):
        raise ProtocolError(unparsable, "invalid_json") from None
    if seen:
        found = _find(value, "")
        assert found is not None
        path, bad = found
        err = ProtocolError(
            f"Invalid JSON: '{path}' is {bad.text}; JSON numbers must be finite.",
            "invalid_json",
            path or None,
        )
        if isinstance(value, dict) and isinstance(value.get("event_id"), str):
            err.event_id = value["event_id"]
        raise err
    return value
