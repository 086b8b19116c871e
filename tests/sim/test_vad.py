"""Server-side turn detection: speech_started/stopped positions, auto responses, barge-in."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import webrtcvad
from hark_sim import SimHandle, audio

from tests.sim.helpers import Client, audio_of, b64, connect, types_of

SILENCE_MS = 500


def _utterance() -> bytes:
    """Speech from espeak-ng (a tone if it is missing), 24 kHz PCM16."""
    return audio.speak("Hello there, what is the weather like today?")


def _loud_span_ms(pcm: bytes) -> tuple[float, float]:
    samples = np.abs(np.frombuffer(pcm, dtype="<i2").astype(np.int32))
    loud = np.nonzero(samples > 500)[0]
    return loud[0] / 24.0, loud[-1] / 24.0


def test_test_speech_is_voiced_for_webrtcvad() -> None:
    """The utterance the tests use really is speech to webrtcvad (16 kHz, independent path)."""
    pcm16k = audio.resample(_utterance(), 24000, 16000)
    frame = 16000 * 2 * 30 // 1000
    vad = webrtcvad.Vad(2)
    frames = [pcm16k[i : i + frame] for i in range(0, len(pcm16k) - frame, frame)]
    voiced = sum(vad.is_speech(f, 16000) for f in frames)
    assert voiced > len(frames) // 2


async def _stream(c: Client, pcm: bytes, chunk_ms: int = 40) -> None:
    step = chunk_ms * audio.BYTES_PER_MS
    for i in range(0, len(pcm), step):
        await c.send({"type": "input_audio_buffer.append", "audio": b64(pcm[i : i + step])})


async def _configure(c: Client, turn_detection: dict[str, Any]) -> None:
    await c.send(
        {
            "type": "session.update",
            "session": {"type": "realtime", "audio": {"input": {"turn_detection": turn_detection}}},
        }
    )
    await c.until("session.updated")


async def test_server_vad_turn(sim: SimHandle) -> None:
    """speech_started includes prefix padding, speech_stopped includes the silence wait,
    and the auto response parrots exactly the audio between them."""
    speech = _utterance()
    signal = audio.silence(SILENCE_MS) + speech + audio.silence(1200)
    onset_ms, last_ms = _loud_span_ms(speech)
    async with connect(sim) as c:
        td = {"type": "server_vad", "prefix_padding_ms": 300, "silence_duration_ms": 500}
        await _configure(c, td)
        await _stream(c, signal)
        events = await c.until("response.done")
    started = next(e for e in events if e["type"] == "input_audio_buffer.speech_started")
    stopped = next(e for e in events if e["type"] == "input_audio_buffer.speech_stopped")
    committed = next(e for e in events if e["type"] == "input_audio_buffer.committed")
    assert started["item_id"] == stopped["item_id"] == committed["item_id"]
    assert abs(started["audio_start_ms"] - (SILENCE_MS + onset_ms - 300)) <= 60
    expected_end = SILENCE_MS + last_ms + 500
    assert -30 <= stopped["audio_end_ms"] - expected_end <= 250
    start_b = started["audio_start_ms"] * audio.BYTES_PER_MS
    end_b = stopped["audio_end_ms"] * audio.BYTES_PER_MS
    assert audio_of(events) == signal[start_b:end_b]
    kinds = types_of(events)
    assert kinds.index("input_audio_buffer.speech_stopped") < kinds.index("response.created")


async def test_padding_is_clamped_to_the_session_start(sim: SimHandle) -> None:
    """Speech at the very start cannot have a negative audio_start_ms."""
    async with connect(sim) as c:
        await _configure(c, {"type": "server_vad", "create_response": False})
        await _stream(c, audio.silence(100) + _utterance() + audio.silence(600))
        events = await c.until("input_audio_buffer.committed")
    assert events[0]["type"] == "input_audio_buffer.speech_started"
    assert events[0]["audio_start_ms"] == 0


async def test_create_response_false_only_commits(sim: SimHandle) -> None:
    """With create_response false the turn is committed but no response starts."""
    async with connect(sim) as c:
        await _configure(c, {"type": "server_vad", "create_response": False})
        await _stream(c, audio.silence(400) + _utterance() + audio.silence(600))
        await c.until("conversation.item.done")
        await c.send({"type": "input_audio_buffer.clear"})
        after = await c.until("input_audio_buffer.cleared")
    assert "response.created" not in types_of(after)


async def test_semantic_vad_turn(sim: SimHandle) -> None:
    """semantic_vad (approximated) also detects the turn and answers it."""
    async with connect(sim) as c:
        await _configure(c, {"type": "semantic_vad", "eagerness": "high"})
        await _stream(c, audio.silence(400) + _utterance() + audio.silence(800))
        events = await c.until("response.done")
    kinds = types_of(events)
    assert kinds.index("input_audio_buffer.speech_started") < kinds.index(
        "input_audio_buffer.speech_stopped"
    )
    assert events[-1]["response"]["status"] == "completed"


async def test_barge_in_cancels_with_turn_detected(sim: SimHandle) -> None:
    """New speech during a response cancels it (interrupt_response), reason turn_detected."""
    sim.config.realtime_factor = 1.0
    speech = _utterance()
    async with connect(sim) as c:
        await _configure(c, {"type": "server_vad", "silence_duration_ms": 300})
        await _stream(c, audio.silence(300) + speech + audio.silence(500))
        await c.until("response.output_audio.delta")
        await _stream(c, speech[: 500 * audio.BYTES_PER_MS])
        events = await c.until("response.done")
    kinds = types_of(events)
    assert kinds.index("input_audio_buffer.speech_started") < kinds.index("response.done")
    assert "response.output_audio.done" in kinds
    done = events[-1]["response"]
    assert done["status"] == "cancelled"
    assert done["status_details"]["reason"] == "turn_detected"


async def test_interrupt_response_false_keeps_talking(sim: SimHandle) -> None:
    """With interrupt_response false, speech during a response does not cancel it."""
    sim.config.realtime_factor = 0.2
    speech = _utterance()
    async with connect(sim) as c:
        await _configure(c, {"type": "server_vad", "interrupt_response": False})
        await _stream(c, audio.silence(300) + speech + audio.silence(500))
        await c.until("response.output_audio.delta")
        await _stream(c, speech[: 500 * audio.BYTES_PER_MS])
        events = await c.until("response.done")
    assert "input_audio_buffer.speech_started" in types_of(events)
    assert events[-1]["response"]["status"] == "completed"


@pytest.mark.slow
async def test_idle_timeout_triggers(sim: SimHandle) -> None:
    """idle_timeout_ms fires timeout_triggered after a response when nobody speaks."""
    async with connect(sim) as c:
        await _configure(
            c, {"type": "server_vad", "idle_timeout_ms": 5000, "silence_duration_ms": 300}
        )
        await _stream(c, audio.silence(300) + _utterance()[:24000] + audio.silence(400))
        await c.until("response.done")
        await _stream(c, audio.silence(200))
        events = await c.until("input_audio_buffer.timeout_triggered", timeout_s=30)
        trig = events[-1]
        assert trig["audio_end_ms"] >= trig["audio_start_ms"]
        after = await c.until("response.done")
    assert "input_audio_buffer.committed" in types_of(after)


def test_detector_is_independent_of_chunking() -> None:
    """The detector gives the same positions whether audio arrives whole or in odd chunks."""
    from hark_sim.vad import TurnDetector

    td = {"type": "server_vad", "prefix_padding_ms": 300, "silence_duration_ms": 500}
    signal = audio.silence(500) + audio.tone(1000) + audio.silence(1000)
    whole = TurnDetector(td).feed(signal, 0)
    pieces = TurnDetector(td)
    chunked = []
    step = 7 * audio.BYTES_PER_MS + 2
    for i in range(0, len(signal), step):
        chunked += pieces.feed(signal[i : i + step], 0)
    assert whole == chunked
    assert [e.kind for e in whole] == ["started", "stopped"]
    assert whole[0].ms == 200  # onset at 500 ms minus 300 ms of padding
    assert 2000 <= whole[1].ms <= 2150  # tone end (1500) + 500 ms silence (+ vad hangover)


def test_hum_is_one_long_utterance() -> None:
    """The espeak-free stand-in for speech is one unbroken utterance to the detector."""
    from hark_sim.vad import TurnDetector

    td = {"type": "server_vad", "prefix_padding_ms": 300, "silence_duration_ms": 500}
    signal = audio.silence(500) + audio.hum(3000) + audio.silence(1000)
    events = TurnDetector(td).feed(signal, 0)
    assert [e.kind for e in events] == ["started", "stopped"]
    assert events[0].ms == 200
