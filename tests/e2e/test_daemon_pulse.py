"""The whole daemon through a private PulseAudio at real time: button, vad, barge-in, loss.

It must not assert wall-clock durations: it waits on events with generous timeouts and
judges audio and the client events the sim received. A reply is judged piece by piece
(``coverage``): a speaker stream starved of CPU underruns, and PulseAudio plays silence
in the gap, which shifts the rest of the reply.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hark.audio.pcm import resample
from hark.testing import read_pcm, speech_wav, until

from tests.audio_rig import (
    PulseRig,
    audible_extent,
    best_alignment,
    coverage,
    pieces,
    place,
    read_wav_samples,
)
from tests.e2e.conftest import (
    LED_PIN,
    as_int16,
    committed_audio,
    match,
    needs_pulse,
    running_daemon,
    sent_of,
    write_config,
)

pytestmark = [pytest.mark.slow, needs_pulse, pytest.mark.timeout(120)]

QUESTION = "what is the weather like in paris today"
UNDERRUN = 48
"""Exact zeros (1 ms at 48 kHz) that split a recording: PulseAudio's fill after an underrun."""
LONG = (
    "please tell me a long story about a small dog who walks across the whole town "
    "looking for his friend the cat and finds her at the baker's shop"
)


def session_with_commits(sim: Any) -> Any:
    """The sim session that received the latest commit."""
    for session in reversed(list(sim.sessions)):
        if sent_of(session, "input_audio_buffer.commit"):
            return session
    raise AssertionError("no session received a commit")


async def speak(rig: PulseRig, wav: Path, volume_db: float = 0.0) -> None:
    """Play ``wav`` into the microphone and wait until it has finished."""
    player = rig.play_into_mic(wav, volume_db=volume_db)
    await asyncio.to_thread(player.wait, 60)


async def test_hold_to_talk_reply_matches_speech(
    rig: PulseRig, sim: Any, factory: Any, tmp_path: Path
) -> None:
    """Press, speak, release: the reply heard from the speaker correlates ≥ 0.9 with the speech."""
    spoken = speech_wav(QUESTION, tmp_path / "q.wav", 48_000)
    spoken48 = as_int16(read_pcm(spoken, 48_000))
    path = write_config(sim, tmp_path, f"[gpio]\nled_pin = {LED_PIN}\n")
    async with running_daemon(path, factory) as d:
        recording = rig.record_speaker(tmp_path / "out.wav")
        d.press()
        await until(lambda: bool(d.of("ButtonPressed")))
        await asyncio.sleep(0.3)
        await speak(rig, spoken)
        await asyncio.sleep(0.3)
        d.release()
        await until(lambda: any(not e.interrupted for e in d.of("PlaybackStopped")))
        await asyncio.sleep(0.3)
        recording.stop()
    session = session_with_commits(sim)
    turn = as_int16(committed_audio(session)[-1])
    spoken24 = as_int16(resample(spoken48.tobytes(), 48_000, 24_000))
    assert match(turn, spoken24) >= 0.9
    assert missing_onset_ms(turn, spoken24) <= 30  # everything after the press was sent
    recorded, rate = read_wav_samples(recording.path)
    assert rate == 48_000
    assert coverage(recorded, spoken48, gap=UNDERRUN) >= 0.9


async def test_vad_turn_opens_by_itself_with_preroll(
    rig: PulseRig, sim: Any, factory: Any, tmp_path: Path
) -> None:
    """vad mode: silence, speech, silence opens and ends a turn; the commit holds the onset."""
    spoken = speech_wav(QUESTION, tmp_path / "q.wav", 48_000)
    spoken24 = as_int16(resample(read_pcm(spoken, 48_000), 48_000, 24_000))
    path = write_config(sim, tmp_path, "[trigger]\nmode = 'vad'\n")
    async with running_daemon(path, factory) as d:
        recording = rig.record_speaker(tmp_path / "out.wav")
        await asyncio.sleep(1.0)  # silence first
        await speak(rig, spoken)
        await until(lambda: any(not e.interrupted for e in d.of("PlaybackStopped")), 60)
        await asyncio.sleep(0.3)
        recording.stop()
        assert not d.of("ButtonPressed")
    session = session_with_commits(sim)
    turns = committed_audio(session)
    assert len(turns) == 1
    turn = as_int16(turns[0])
    # Pre-roll: the committed turn starts no later than 30 ms into the speech's onset.
    assert missing_onset_ms(turn, spoken24) <= 30
    recorded, _ = read_wav_samples(recording.path)
    assert coverage(recorded, as_int16(read_pcm(spoken, 48_000)), gap=UNDERRUN) >= 0.9


async def test_barge_in_truncates_at_what_was_heard(
    rig: PulseRig, paced_sim: Any, factory: Any, tmp_path: Path
) -> None:
    """A press during a long reply cancels it; truncate's audio_end_ms is within 40 ms of heard."""
    sim = paced_sim
    spoken = speech_wav(LONG, tmp_path / "long.wav", 48_000)
    path = write_config(sim, tmp_path)
    async with running_daemon(path, factory) as d:
        d.press()
        await until(lambda: bool(d.of("ButtonPressed")))
        await asyncio.sleep(0.3)
        await speak(rig, spoken)
        await asyncio.sleep(0.2)
        recording = rig.record_speaker(tmp_path / "out.wav")
        await asyncio.sleep(0.3)
        d.release()
        await until(lambda: bool(d.of("AudioDelta")))
        # Let a couple of seconds of the reply be heard, then interrupt.
        item_id = d.of("AudioDelta")[0].item_id
        await until(lambda: d.app.speaker.played_ms_now(item_id) > 2000, 30)
        d.press()
        await until(lambda: any(e.interrupted for e in d.of("PlaybackStopped")))
        await asyncio.sleep(0.5)
        d.release()
        recording.stop()
        session = session_with_commits(sim)
        await until(lambda: bool(sent_of(session, "conversation.item.truncate")))
    truncate = sent_of(session, "conversation.item.truncate")[-1]
    assert sent_of(session, "response.cancel")
    recorded, rate = read_wav_samples(recording.path)
    reply48 = as_int16(resample(committed_audio(session)[0], 24_000, 48_000))
    # Heard = where the last sound the speaker made sits in the reply, found by its
    # content: underrun gaps in the recording are not audio the user heard.
    runs = [(a, b) for a, b in pieces(recorded, UNDERRUN) if b - a >= rate // 10]
    assert runs, "nothing was heard"
    start, end = runs[-1]
    at, corr = place(recorded[start:end], reply48)
    assert corr >= 0.9
    _, last_s = audible_extent(recorded[start:end], rate)
    heard_ms = (at + last_s * rate) * 1000 / rate
    assert abs(truncate["audio_end_ms"] - heard_ms) <= 40, (truncate["audio_end_ms"], heard_ms)


def missing_onset_ms(turn: np.ndarray, speech: np.ndarray) -> float:
    """How much of ``speech``'s audible onset lies before the start of ``turn``, in ms."""
    first_s, _ = audible_extent(turn, 24_000)
    # A 100 ms window is placed in the speech; the best of three (200, 300, 400 ms
    # after the onset) so one resampler glitch in a window does not hide the lag.
    # A dropout between the onset and the window only makes the figure larger.
    placed = []
    for after_s in (0.2, 0.3, 0.4):
        at = int((first_s + after_s) * 24_000)
        lag, corr = best_alignment(speech, turn[at : at + 2400])
        placed.append((corr, lag - at))
    corr, offset = max(placed)
    assert corr >= 0.9, f"the turn does not contain the speech (best window {corr:.3f})"
    speech_onset = int(audible_extent(speech, 24_000)[0] * 24_000)
    return max(0.0, (offset - speech_onset) / 24.0)


async def test_echo_never_barges_in_but_the_user_does(
    rig: PulseRig, sim: Any, factory: Any, tmp_path: Path
) -> None:
    """Speaker looped into the mic (-6 dB, 40 ms): our voice opens nothing; the user's does."""
    question = speech_wav(QUESTION, tmp_path / "q.wav", 48_000)
    long_question = speech_wav(LONG, tmp_path / "long.wav", 48_000)
    path = write_config(sim, tmp_path, "[trigger]\nmode = 'vad'\n")
    async with running_daemon(path, factory) as d:
        rig.loopback(latency_ms=40, volume_db=-6)
        await asyncio.sleep(1.0)
        await speak(rig, question)
        await until(lambda: any(not e.interrupted for e in d.of("PlaybackStopped")), 60)
        await asyncio.sleep(1.0)
        session = session_with_commits(sim)
        assert len(sent_of(session, "input_audio_buffer.commit")) == 1
        assert not sent_of(session, "conversation.item.truncate")
        assert not sent_of(session, "response.cancel")
        assert not any(e.interrupted for e in d.of("PlaybackStopped"))

        # Second half: a long reply, and the user talks over it at normal level.
        await speak(rig, long_question)
        await until(lambda: len(sent_of(session, "input_audio_buffer.commit")) == 2, 60)
        await until(lambda: len(d.of("AudioDelta")) > 0 and _second_reply(d) is not None, 30)
        item_id = _second_reply(d)
        await until(lambda: d.app.speaker.played_ms_now(item_id) > 1500, 30)
        await speak(rig, question)
        await until(lambda: any(e.interrupted for e in d.of("PlaybackStopped")), 30)
        await until(lambda: bool(sent_of(session, "conversation.item.truncate")), 30)


def _second_reply(d: Any) -> str | None:
    """The item id of the second reply's audio, once it arrives."""
    ids: list[str] = []
    for delta in d.of("AudioDelta"):
        if delta.item_id not in ids:
            ids.append(delta.item_id)
    return ids[1] if len(ids) > 1 else None


async def test_devices_vanish_mid_turn_and_come_back(
    rig: PulseRig, sim: Any, factory: Any, tmp_path: Path
) -> None:
    """PulseAudio dies mid-turn: DeviceLost, error LED; it returns, and the next turn works."""
    spoken = speech_wav(QUESTION, tmp_path / "q.wav", 48_000)
    path = write_config(sim, tmp_path, f"[gpio]\nled_pin = {LED_PIN}\n")
    async with running_daemon(path, factory) as d:
        d.press()
        await until(lambda: bool(d.of("ButtonPressed")))
        rig.play_into_mic(spoken)
        await asyncio.sleep(0.5)
        rig.crash()
        await until(lambda: bool(d.of("DeviceLost")))
        await until(lambda: d.app.indicator.pattern == "error")
        d.release()
        rig.start()
        await until(
            lambda: len(d.of("DeviceRestored")) >= len({e.device for e in d.of("DeviceLost")}), 60
        )
        await until(lambda: d.app.indicator.pattern != "error")
        await d.mic_flowing()
        finished = len([e for e in d.of("PlaybackStopped") if not e.interrupted])
        recording = rig.record_speaker(tmp_path / "out.wav")
        d.press()
        await asyncio.sleep(0.3)
        await speak(rig, spoken)
        await asyncio.sleep(0.3)
        d.release()
        await until(
            lambda: len([e for e in d.of("PlaybackStopped") if not e.interrupted]) > finished, 60
        )
        await asyncio.sleep(0.3)
        recording.stop()
    recorded, _ = read_wav_samples(recording.path)
    assert coverage(recorded, as_int16(read_pcm(spoken, 48_000)), gap=UNDERRUN) >= 0.9
