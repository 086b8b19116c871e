"""Request-derived text made safe for the log: one request stays one line with honest fields.

uvicorn hands the app a *decoded* path, so ``POST /x%0aFORGED ... outcome=minted`` arrives
with a real newline and spaces in it; written raw, it forges a second log line or a field.
Everything a client controls (method, path, client address, a stored device name, an
upstream message that echoes the device's input) goes through one of these two.
"""

from __future__ import annotations

import re
from urllib.parse import quote

# What may appear unescaped in a field: a URL path's own characters minus ``%``, so the
# escaped form cannot be confused with an unescaped one.
_SAFE_CHARS = "/:@!$&'()*+,;=-._~"
_PLAIN = re.compile(r"[A-Za-z0-9/:@!$&'()*+,;=._~-]*")


def field(value: str) -> str:
    """One space-free token: unchanged when plain, else percent-encoded (UTF-8) like a URL."""
    if _PLAIN.fullmatch(value):
        return value
    return quote(value.encode("utf-8", "backslashreplace"), safe=_SAFE_CHARS)


def prose(value: str) -> str:
    """Free text (an upstream's message): quoted and escaped like ``repr``, on one line."""
    return repr(value)
