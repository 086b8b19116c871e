"""Many devices minting at once: no errors, no lost writes to last_seen or the rate windows."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
from hark_backend.registry import RateLimit, Registry

from tests.backend.servers import backend_settings, run_backend

DEVICES = 50
REQUESTS_PER_DEVICE = 3
LIMIT = RateLimit(2, 3600.0)


async def _burst(base_url: str, tokens: list[str]) -> list[int]:
    limits = httpx.Limits(max_connections=DEVICES, max_keepalive_connections=DEVICES)
    async with httpx.AsyncClient(base_url=base_url, timeout=30, limits=limits) as http:

        async def one(token: str) -> int:
            headers = {"Authorization": f"Bearer {token}"}
            response = await http.post("/v1/realtime/client_secrets", json={}, headers=headers)
            assert response.status_code in (200, 429), response.text
            return response.status_code

        calls = [one(t) for t in tokens for _ in range(REQUESTS_PER_DEVICE)]
        return await asyncio.gather(*calls)


def test_fifty_devices_at_once(db_url: str, upstream: Any) -> None:
    """50 devices x 3 requests at once, limit 2: exactly 100 keys and 50 refusals, all counted."""
    registry = Registry(db_url)
    registry.init_schema()
    try:
        started_s = time.time()
        tokens = [registry.add(f"dev{i:02d}", group=None, now_s=started_s) for i in range(DEVICES)]
        settings = backend_settings(db_url, upstream, rate_limit=LIMIT)
        with run_backend(settings) as server:
            statuses = asyncio.run(_burst(server.url, tokens))
        assert statuses.count(200) == DEVICES * LIMIT.count
        assert statuses.count(429) == DEVICES * (REQUESTS_PER_DEVICE - LIMIT.count)
        devices = registry.devices()
        assert len(devices) == DEVICES
        for device in devices:
            assert device.request_count == REQUESTS_PER_DEVICE
            assert device.window_count == REQUESTS_PER_DEVICE
            assert device.last_seen_at_s is not None and device.last_seen_at_s >= started_s
    finally:
        registry.close()
