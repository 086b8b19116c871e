"""``hark.tools``: where owners' agent modules import tools from (kept as the README shows it).

The code lives in :mod:`hark.agents.tools`; this name stays so existing agent modules
and examples keep working.
"""

from hark.agents.tools import (
    EndConversation,
    FunctionTool,
    RunContext,
    ToolContext,
    ToolResult,
    function_tool,
)

__all__ = [
    "EndConversation",
    "FunctionTool",
    "RunContext",
    "ToolContext",
    "ToolResult",
    "function_tool",
]
