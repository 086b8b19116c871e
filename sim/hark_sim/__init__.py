"""hark_sim: an offline stand-in for OpenAI's Realtime API and its key endpoint.

It never imports ``hark``: it is the other side of the wire, so the two must not
share a codec whose bugs would agree.
"""

from hark_sim.config import Faults, SimConfig
from hark_sim.outbox import SessionRecord
from hark_sim.server import SimHandle, start_sim

__all__ = ["Faults", "SessionRecord", "SimConfig", "SimHandle", "start_sim"]
