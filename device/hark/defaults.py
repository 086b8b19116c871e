"""Policy defaults shared by the config file and the conversation core: one source.

``hark.config`` documents them to the owner; ``hark.conversation.Settings`` uses them
when a test or the demo builds the core without a config. Plain numbers only.
"""

from __future__ import annotations

IDLE_DISCONNECT_S = 300.0
"""on_demand: hang up after this long idle."""
ROTATE_AFTER_S = 3300.0
"""Replace a session at a quiet moment after this age (sessions are capped at 60 min)."""
ROTATE_BEFORE_EXPIRY_S = 300.0
"""...or this long before the cap the server announced, whichever comes first."""
ROTATE_QUIET_S = 5.0
"""Rotate only after this long without a turn or a reply."""
ROTATE_RETRY_S = 30.0
"""After a failed rotation the old session goes on; try again this much later."""
RESPONSE_TIMEOUT_S = 15.0
MAX_TURN_S = 30.0
NO_SPEECH_TIMEOUT_S = 5.0
