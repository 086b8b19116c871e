"""hark_sim: an offline stand-in for OpenAI's Realtime API and its key endpoint.

It never imports ``hark``: it is the other side of the wire, so the two must not
share a codec whose bugs would agree.

The names below load on first use, so ``import hark_sim.__main__`` (the ``hark-sim``
script, also installed on a device without the [sim] extra) can say what is missing
instead of failing on starlette in this file.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hark_sim.config import Faults, SimConfig
    from hark_sim.outbox import SessionRecord
    from hark_sim.server import SimHandle, start_sim

__all__ = ["Faults", "SessionRecord", "SimConfig", "SimHandle", "start_sim"]
_HOME = {
    "Faults": "hark_sim.config",
    "SimConfig": "hark_sim.config",
    "SessionRecord": "hark_sim.outbox",
    "SimHandle": "hark_sim.server",
    "start_sim": "hark_sim.server",
}


def __getattr__(name: str) -> Any:
    if name in _HOME:
        return getattr(importlib.import_module(_HOME[name]), name)
    raise AttributeError(f"module 'hark_sim' has no attribute {name!r}")
