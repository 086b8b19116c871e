"""Failed authentications per client address: past N in a window, the address is refused.

Why: every request with a plausible but unknown token costs an SQLite UPDATE and a SELECT
on the registry's one writer thread, and nothing limited them, so one client could keep the
registry busy for every device.  After ``limit.count`` failures (401s) from one address
within ``limit.window_s``, further requests from it get 429 until that window ends,
without touching the database.

Why the good path pays nothing: ``blocked`` is empty unless some address is over its limit,
and the caller tests it before computing an address or looking anything up.

Why per process, not in the database like the device rate limit: the point is to spare this
process's database work, and keeping the count in the database would add a write to every
failure, the very cost being limited.  With R replicas one address gets at most R x N
failures per window through, still a small constant; and it is not what stops token
guessing (256-bit tokens cannot be guessed at any rate).

The address is the one uvicorn reports: the TCP peer, or ``X-Forwarded-For`` from a proxy in
``--forwarded-allow-ips``.  IPv6 addresses count per /64 (what one host or home usually
gets).  Clients that share an address (a NAT, a proxy that does not forward the address)
share its limit, and its block.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any

from hark_backend.registry import RateLimit

MAX_ADDRESSES = 65536  # windows (and blocks) kept; the oldest go first beyond this


def address_key(host: str | None) -> str:
    """What failures are counted by: the IPv4 address, the IPv6 /64, else the text as is."""
    if not host:
        return "-"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


@dataclass
class FailedAuthLimiter:
    """Fixed windows of failures per address, and the addresses blocked until a time.

    Times are ``time.monotonic()`` seconds.  Not thread-safe: used from the event loop only.
    """

    limit: RateLimit
    max_addresses: int = MAX_ADDRESSES
    blocked: dict[str, float] = field(default_factory=dict)  # key -> blocked until
    _windows: dict[str, tuple[float, int]] = field(default_factory=dict)  # key -> (end, count)
    _next_sweep_s: float = 0.0

    def retry_after_s(self, key: str, now_s: float) -> float:
        """Seconds until ``key`` may try again; 0.0 if it may now."""
        if now_s >= self._next_sweep_s:  # forget blocks that ended, so ``blocked`` empties
            self._next_sweep_s = now_s + 1.0
            for ended in [k for k, until in self.blocked.items() if until <= now_s]:
                del self.blocked[ended]
        until = self.blocked.get(key)
        if until is None or until <= now_s:
            return 0.0
        return until - now_s

    def failed(self, key: str, now_s: float) -> bool:
        """Count one failure; True when it puts ``key`` over the limit (blocked from now)."""
        end_s, count = self._windows.pop(key, (0.0, 0))
        if now_s >= end_s:
            end_s, count = now_s + self.limit.window_s, 0
        count += 1
        self._windows[key] = (end_s, count)  # re-inserted: the dict stays oldest-first
        _trim(self._windows, self.max_addresses)
        if count < self.limit.count:
            return False
        self.blocked[key] = end_s  # (requests already in flight may still add failures)
        _trim(self.blocked, self.max_addresses)
        return count == self.limit.count


def _trim(entries: dict[str, Any], size: int) -> None:
    while len(entries) > size:
        del entries[next(iter(entries))]
