"""The daemon end to end on both transports against hark_sim: held-button, hands-free,
barge-in and a tool call, with the real wiring (``realtime.transport``), a WAV-backed
microphone and a paced speaker. WebRTC runs are skipped when aiortc is not installed
(``make install`` installs the webrtc extra)."""

from __future__ import annotations

import asyncio
import importlib.util
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hark.config import parse
from hark.conversation import Phase
from hark.demo import build_with_fake_audio
from hark.events import (
    AudioDelta,
    ButtonPressed,
    ButtonReleased,
    FunctionCallRequested,
    ItemTruncated,
    ShutdownRequested,
    TextRequested,
)
from hark.service.wiring import Daemon
from hark.testing import FakeButton, WavMicrophone, WavSpeaker, synthetic_speech, until
from hark_sim import SimConfig, SimHandle, start_sim

pytestmark = pytest.mark.slow

HAVE_AIORTC = importlib.util.find_spec("aiortc") is not None
TRANSPORTS = [
    "websocket",
    pytest.param(
        "webrtc", marks=pytest.mark.skipif(not HAVE_AIORTC, reason="the webrtc extra (aiortc)")
    ),
]
BYTES_PER_MS = 48


def speech(ms: int) -> bytes:
    return synthetic_speech(ms).tobytes()


@pytest.fixture
def parrot() -> Iterator[SimHandle]:
    with start_sim(SimConfig(api_key="sk-sim-test", brain="parrot", realtime_factor=0.5)) as sim:
        yield sim


@pytest.fixture
def scripted(tmp_path: Path) -> Iterator[SimHandle]:
    script = tmp_path / "scenario.toml"
    script.write_text(
        textwrap.dedent(
            """
            [[turns]]
            calls = [{ name = "get_current_time", arguments = {} }]
            after = "The time is {output}"
            """
        )
    )
    config = SimConfig(api_key="sk-sim-test", brain="script", script=script, realtime_factor=0.5)
    with start_sim(config) as sim:
        yield sim


class Rig:
    """A daemon built from config text by the real wiring, with a fake mic, speaker, button."""

    def __init__(self, sim: SimHandle, transport: str, extra: str) -> None:
        config = parse(
            f'[backend]\nurl = "{sim.base_url}/realtime/client_secrets"\n'
            f'[realtime]\nurl = "{sim.ws_url}"\ntransport = "{transport}"\n'
            "[history]\nenabled = false\n" + textwrap.dedent(extra)
        )
        self.sim = sim
        self.transport = transport
        self.mic = WavMicrophone(rate_hz=24_000, speed=1.0)
        self.speaker = WavSpeaker(None, speed=1.0)
        self.button = FakeButton()
        self.daemon: Daemon = build_with_fake_audio(
            config, sim.api_key, None, mic=self.mic, speaker=self.speaker, triggers=[self.button]
        )
        self.app = self.daemon.app
        self.conversation = self.app.conversation
        self.events: list[Any] = []
        self.app.add_listener(lambda event, commands: self.events.append(event))

    async def __aenter__(self) -> Rig:
        await self.app.start()
        await self.app.wait_for(lambda: self.conversation.connected, 30)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.app.post(ShutdownRequested())
        await asyncio.wait_for(self.app.wait_stopped(), 10)
        self.daemon.close()

    def received(self) -> list[dict[str, Any]]:
        return [e for s in self.sim.sessions for e in s.received]

    def sent_types(self) -> list[str]:
        return [e["type"] for s in self.sim.sessions for e in s.sent]

    def reply_ms(self) -> float:
        return sum(len(e.pcm) for e in self.events if isinstance(e, AudioDelta)) / BYTES_PER_MS

    async def spoken(self, ms: int) -> None:
        """Say ``ms`` of speech into the mic; return once it has all been "heard"."""
        frames = self.mic.frames_posted + ms // 20
        self.mic.say(speech(ms))
        await until(lambda: self.mic.frames_posted >= frames, 30)

    def check_wire(self) -> None:
        """Audio went where the transport carries it, and only there."""
        received = {e["type"] for e in self.received()}
        sent = set(self.sent_types())
        if self.transport == "webrtc":
            assert "input_audio_buffer.append" not in received
            assert "response.output_audio.delta" not in sent
        else:
            assert "output_audio_buffer.clear" not in received
            assert not any(t.startswith("output_audio_buffer.") for t in sent)


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_held_button_turn(parrot: SimHandle, transport: str) -> None:
    """Hold, speak 1.2 s, release: the parrot's reply (our own speech) plays back."""
    async with Rig(parrot, transport, '[trigger]\nmode = "button"\n') as rig:
        seen = rig.conversation.turns_completed
        rig.button.fire(ButtonPressed())
        await rig.spoken(1200)
        rig.button.fire(ButtonReleased(held_s=1.3))
        await rig.app.wait_turn_completed(30, after=seen)
        assert rig.conversation.phase is Phase.IDLE
        # Opus and the resamplers keep a few tens of ms at the end of a stream.
        assert rig.reply_ms() >= 1000
        rig.check_wire()
    assert "input_audio_buffer.commit" in [e["type"] for e in rig.received()]


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_hands_free_turn(parrot: SimHandle, transport: str) -> None:
    """Voice opens the turn and silence ends it (the local VAD); the reply plays."""
    async with Rig(parrot, transport, '[trigger]\nmode = "vad"\n') as rig:
        seen = rig.conversation.turns_completed
        rig.mic.say(speech(1500))
        rig.mic.silence(1500)
        await rig.app.wait_turn_completed(40, after=seen)
        assert rig.reply_ms() >= 1000
        rig.check_wire()


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_barge_in_cuts_the_reply_and_truncates_it(parrot: SimHandle, transport: str) -> None:
    """A press during a 4 s reply: playback stops, the response is cancelled (WebRTC: the
    server's output buffer cleared first), and the item is truncated to what was heard."""
    async with Rig(parrot, transport, '[trigger]\nmode = "button"\n') as rig:
        rig.button.fire(ButtonPressed())
        await rig.spoken(4000)
        rig.button.fire(ButtonReleased(held_s=4.0))
        await rig.app.wait_for(lambda: rig.conversation.phase is Phase.SPEAKING, 30)
        await asyncio.sleep(0.6)
        rig.button.fire(ButtonPressed())  # barge in (and open the next turn)
        await until(lambda: any(isinstance(e, ItemTruncated) for e in rig.events), 20)
        rig.button.fire(ButtonReleased(held_s=0.1))
        received = rig.received()
        types = [e["type"] for e in received]
        assert "response.cancel" in types
        truncate = next(e for e in received if e["type"] == "conversation.item.truncate")
        assert 0 < truncate["audio_end_ms"] < 3000
        if transport == "webrtc":
            assert types.index("output_audio_buffer.clear") < types.index("response.cancel")
            assert "output_audio_buffer.cleared" in rig.sent_types()
        rig.check_wire()
        heard = rig.reply_ms()
    assert heard < 3500  # the rest of the reply never reached the speaker


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_tool_call_and_the_spoken_answer(scripted: SimHandle, transport: str) -> None:
    """A typed turn whose reply calls get_current_time: the output goes back, the answer plays."""
    async with Rig(scripted, transport, '[trigger]\nmode = "button"\n') as rig:
        seen = rig.conversation.turns_completed
        rig.app.post(TextRequested("What time is it?"))
        await rig.app.wait_turn_completed(30, after=seen)
        assert any(isinstance(e, FunctionCallRequested) for e in rig.events)
        outputs = [
            e["item"]["output"]
            for e in rig.received()
            if e["type"] == "conversation.item.create"
            and e["item"]["type"] == "function_call_output"
        ]
        assert len(outputs) == 1 and '"time"' in outputs[0]
        assert rig.reply_ms() > 0
        rig.check_wire()
