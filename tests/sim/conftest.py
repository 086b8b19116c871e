"""Fixtures for the simulator tests: a fresh simulator per test, audited on teardown."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hark_sim import SimConfig, SimHandle, start_sim
from hark_sim.outbox import UNKNOWN_EVENT_TYPE

from tests.sim.helpers import check_server_event


@pytest.fixture
def sim_config() -> SimConfig:
    return SimConfig(api_key="sk-sim-test", brain="parrot", realtime_factor=0.0)


@pytest.fixture
def sim(sim_config: SimConfig) -> Iterator[SimHandle]:
    """A running simulator; afterwards every event it sent is checked against openai's models."""
    with start_sim(sim_config) as handle:
        yield handle
    for record in handle.sessions:
        for event in record.sent:
            if event["type"] != UNKNOWN_EVENT_TYPE:
                check_server_event(event)
