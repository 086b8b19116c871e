"""Hands-free end to end against hark_sim: wake word -> turn -> reply -> follow-up -> stop.

The whole daemon (``build_with_fake_audio``: the real capture chain and spotter on a
WAV-backed mic at 48 kHz, real time) talks to hark_sim's parrot, which answers each turn
with the audio it received: so what left the device is what the server heard.
"""

from __future__ import annotations

import asyncio
import base64
import shutil
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hark.audio.pcm import Resampler, as_samples
from hark.audio.wake import MicroWordSpotter
from hark.config import parse
from hark.conversation import Phase
from hark.demo import build_with_fake_audio
from hark.events import SetLed, StopWordHeard, WakeWordHeard
from hark.testing import WavMicrophone, speech_wav
from hark_sim import SimConfig, SimHandle, start_sim

from tests.device.test_daemon import Running

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        shutil.which("espeak-ng") is None or shutil.which("sox") is None,
        reason="needs espeak-ng and sox (scripts/install-system-deps)",
    ),
]


@pytest.fixture
def parrot() -> Iterator[SimHandle]:
    with start_sim(SimConfig(api_key="sk-test-wake", brain="parrot", realtime_factor=0)) as sim:
        yield sim


def uploaded(sim: SimHandle, start: int = 0) -> tuple[bytes, int]:
    """The 24 kHz audio the device appended from event ``start`` on, and the event count."""
    events = sim.sessions[0].received
    pcm = b"".join(
        base64.b64decode(e["audio"])
        for e in events[start:]
        if e["type"] == "input_audio_buffer.append"
    )
    return pcm, len(events)


def wake_probability(pcm24k: bytes) -> float:
    """The wake model's highest probability over ``pcm24k``."""
    spotter = MicroWordSpotter("okay_nabu")
    spotter.arm(frozenset({"wake"}))
    samples = Resampler(24_000, 16_000, "HQ").process(as_samples(pcm24k), last=True)
    spotter.process(np.concatenate([samples, np.zeros(16_000, np.int16)]).tobytes())
    return spotter.peak["wake"]


async def test_wake_turn_reply_follow_up_and_stop(parrot: SimHandle, tmp_path: Path) -> None:
    config = parse(
        f'[backend]\nurl = "{parrot.base_url}/realtime/client_secrets"\n'
        f'[realtime]\nurl = "{parrot.ws_url}"\n[history]\nenabled = false\n'
        + textwrap.dedent(
            """
            [trigger]
            mode = "wake"
            stop_word = true
            follow_up_s = 2.5
            """
        )
    )
    daemon = build_with_fake_audio(config, parrot.api_key, None)
    mic = daemon.app.mic
    assert isinstance(mic, WavMicrophone)
    leds: list[str] = []
    words: list[Any] = []

    def listen(event: Any, commands: Any) -> None:
        leds.extend(c.pattern for c in commands if isinstance(c, SetLed))
        if isinstance(event, WakeWordHeard | StopWordHeard):
            words.append((event, daemon.app.conversation.phase))

    daemon.app.add_listener(listen)
    conv = daemon.app.conversation
    async with Running(daemon):
        # 1. "okay nabu, what time is it": the turn opens on the word, the question goes up.
        mic.silence(300)
        mic.say(speech_wav("okay nabu, what time is it", tmp_path / "q1.wav", 48_000))
        await daemon.app.wait_turn_completed(30, after=0)
        assert [w for w, _ in words] == [WakeWordHeard("Okay Nabu")]
        sent, seen = uploaded(parrot)
        assert 1.0 < len(sent) / 48_000 < 3.0  # the question and the silence that ended it
        assert wake_probability(sent) < 0.5  # the wake word itself never left
        # 2. The follow-up window: an answer without the wake word opens a turn.
        await daemon.app.wait_for(lambda: conv.phase is Phase.FOLLOW_UP, 10)
        assert leds[-1] == "follow_up"
        mic.say(speech_wav("and tomorrow", tmp_path / "q2.wav", 48_000))
        await daemon.app.wait_turn_completed(30, after=1)
        sent2, seen = uploaded(parrot, seen)
        assert len(sent2) / 48_000 > 0.5
        # 3. Silence: the window closes by itself, nothing is sent.
        await daemon.app.wait_for(lambda: conv.phase is Phase.FOLLOW_UP, 10)
        await daemon.app.wait_for(lambda: conv.phase is Phase.IDLE, 10)
        assert uploaded(parrot, seen)[0] == b""
        # 4. A long question, then "stop" while the parrot says it back.
        mic.say(
            speech_wav(
                "okay nabu, tell me a long story about a dragon and a castle",
                tmp_path / "q3.wav",
                48_000,
            )
        )
        await daemon.app.wait_for(lambda: conv.phase is Phase.SPEAKING, 30)
        await asyncio.sleep(0.3)  # a person hears the reply start, then says "stop"
        mic.say(speech_wav("stop", tmp_path / "stop.wav", 48_000))
        await daemon.app.wait_for(lambda: conv.phase is Phase.IDLE, 10)
        print("WORDS", words, daemon.app.spotter.peak, daemon.app.spotter.armed, leds)
        assert [w for w, _ in words][-1] == StopWordHeard()
        assert words[-1][1] is Phase.IDLE  # straight to rest: no follow-up after "stop"
        for _ in range(50):  # the truncate follows the speaker's report
            received = [e["type"] for e in parrot.sessions[0].received]
            if "conversation.item.truncate" in received:
                break
            await asyncio.sleep(0.05)
        # (The simulator sent the whole reply at once: no response left to cancel.)
        assert "conversation.item.truncate" in received
        await asyncio.sleep(0.5)
        assert conv.phase is Phase.IDLE  # no follow-up after "stop"
