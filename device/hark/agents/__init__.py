"""The agent an owner writes: agents, tools, guardrails, and the built-in tools."""
