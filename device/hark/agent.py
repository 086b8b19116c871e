"""``hark.agent``: where owners' agent modules import agents from (kept as the README shows it).

The code lives in :mod:`hark.agents.agent`; this name stays so existing agent modules
and examples keep working.
"""

from hark.agents.agent import AgentLoadError, Handoff, RealtimeAgent, handoff

__all__ = ["AgentLoadError", "Handoff", "RealtimeAgent", "handoff"]
