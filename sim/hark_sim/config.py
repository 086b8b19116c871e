"""Configuration and runtime fault switches of one simulator instance.

It must not hold any state of a connection; sessions read these values live, so a
test can flip a fault or the pacing between turns.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

BrainName = Literal["parrot", "script"]

DEFAULT_API_KEY = "sk-sim-standard-key"
DEFAULT_MODEL = "gpt-realtime"
# Models the simulator accepts in ?model=; anything else gets invalid_model + close 4000.
KNOWN_MODELS = frozenset(
    {  # the model names openai's RealtimeSessionCreateRequest lists
        "gpt-realtime",
        "gpt-realtime-1.5",
        "gpt-realtime-2",
        "gpt-realtime-2.1",
        "gpt-realtime-2.1-mini",
        "gpt-realtime-2025-08-28",
        "gpt-4o-realtime-preview",
        "gpt-4o-realtime-preview-2024-10-01",
        "gpt-4o-realtime-preview-2024-12-17",
        "gpt-4o-realtime-preview-2025-06-03",
        "gpt-4o-mini-realtime-preview",
        "gpt-4o-mini-realtime-preview-2024-12-17",
        "gpt-realtime-mini",
        "gpt-realtime-mini-2025-10-06",
        "gpt-realtime-mini-2025-12-15",
        "gpt-audio-1.5",
        "gpt-audio-mini",
        "gpt-audio-mini-2025-10-06",
        "gpt-audio-mini-2025-12-15",
    }
)


@dataclass
class Faults:
    """Fault switches; each applies to events and sessions from the moment it is set.

    - ``refuse_keys``: client_secrets answers 401 and every WebSocket gets
      ``invalid_api_key`` then close 3000, even with a valid key.
    - ``event_delay_s``: every server event leaves this many seconds after it was
      produced (a constant added latency; order is kept).
    - ``drop_after_audio_deltas``: abort the TCP connection (no close frame; the
      client sees 1006) once this many ``response.output_audio.delta`` events of one
      response have been written.
    - ``stall_after_audio_deltas``: once this many audio deltas of one response have been
      written, the server goes silent without closing: it stops writing, stops reading
      (so client pings go unanswered) and stops its own pings, like a dead peer.
    - ``malformed_json``: write one non-JSON text frame right after ``session.created``
      and right before every ``response.created``.
    - ``unknown_events``: write one event of an unknown type (``sim.unknown_event``) at
      the same two points.
    - ``server_errors``: write one ``error`` event (``server_error``, code
      ``sim_fault``), at the same two points, as a server with a passing fault does.
    - ``unknown_session_fields``: dotted paths under ``session`` (``"tool_choice"``,
      ``"audio.input.noise_reduction"``) this server does not know, like one that has
      dropped or not yet shipped a field: a ``session.update`` carrying one is refused
      whole with ``unknown_parameter`` naming it (``session.tool_choice``), the socket
      stays open and the session keeps its previous config.

    ``SimHandle.drop_connections()`` drops every open connection at once, at any time.
    """

    refuse_keys: bool = False
    event_delay_s: float = 0.0
    drop_after_audio_deltas: int | None = None
    stall_after_audio_deltas: int | None = None
    malformed_json: bool = False
    unknown_events: bool = False
    server_errors: bool = False
    unknown_session_fields: set[str] = field(default_factory=set)


@dataclass
class SimConfig:
    """What a simulator instance is; the field names are a public, stable API.

    ``realtime_factor`` scales the pacing of audio deltas: a 100 ms chunk is followed by
    a pause of ``0.1 * realtime_factor`` seconds (1.0 = real time, 0.5 = twice as fast,
    0 = as fast as possible).

    ``call_next`` steers the model: while it holds ``(name, JSON arguments)`` pairs, the
    next response of any session makes the first pair's function call instead of asking
    the brain (a harness picks tool and handoff turns; the brain answers the output).

    ``tls_certfile`` (PEM, the key in it or in ``tls_keyfile``) serves https:// and
    wss://, for testing a client's certificate checks; the URLs follow.
    """

    api_key: str = DEFAULT_API_KEY
    brain: BrainName = "parrot"
    script: Path | str | None = None
    max_session_s: float = 3600.0
    realtime_factor: float = 0.5
    ping_interval_s: float = 20.0
    host: str = "127.0.0.1"
    port: int = 0
    audio_chunk_ms: int = 100
    faults: Faults = field(default_factory=Faults)
    call_next: list[tuple[str, str]] = field(default_factory=list)
    tls_certfile: Path | None = None
    tls_keyfile: Path | None = None
