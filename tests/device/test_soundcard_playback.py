"""hark.audio.playback: jitter buffer, fades, volume and played-audio counts, without a device."""

from __future__ import annotations

import numpy as np
from hark.audio.echo import EchoReference
from hark.audio.playback import PlaybackBuffer, Volume
from hark.events import PlaybackStopped

RATE = 48_000
CHUNK = 960  # 20 ms


def loud(ms: int, value: int = 10_000) -> np.ndarray:
    return np.full(RATE * ms // 1000, value, dtype=np.int16)


def render_all(buf: PlaybackBuffer, chunks: int) -> tuple[np.ndarray, list[PlaybackStopped]]:
    out, events = [], []
    for i in range(chunks):
        data, ev = buf.render(CHUNK, i * 0.02)
        out.append(np.frombuffer(data, np.int16))
        events += ev
    return np.concatenate(out), events


def test_finished_item_is_reported_after_drain_and_latency() -> None:
    """finish() reports once the item was handed over and the device latency has passed."""
    buf = PlaybackBuffer(RATE, latency_frames=2 * CHUNK)
    buf.enqueue("a", loud(100))
    buf.finish("a")
    _, events = render_all(buf, 5)
    assert events == []  # drained at chunk 5, latency not yet out
    _, events = render_all(buf, 3)
    assert events == [PlaybackStopped("a", 100, interrupted=False)]
    assert not buf.busy


def test_stop_fades_within_one_chunk_and_reports_what_was_handed() -> None:
    """stop() ramps to silence over fade_ms of the next chunk and reports what was handed."""
    buf = PlaybackBuffer(RATE, fade_ms=5)
    buf.enqueue("a", loud(1000))
    _out, _ = render_all(buf, 10)  # 200 ms played
    buf.stop()
    data, events = buf.render(CHUNK, 0.2)
    fade = np.frombuffer(data, np.int16)
    assert events == [PlaybackStopped("a", 205, interrupted=True)]  # 200 ms + the 5 ms fade
    assert fade[0] > 9_000 and abs(int(fade[RATE * 5 // 1000 - 1])) < 100
    assert not fade[RATE * 5 // 1000 :].any()  # silent from 5 ms into the chunk
    assert np.max(np.abs(np.diff(fade.astype(int)))) < 100  # no click
    after, events = render_all(buf, 3)
    assert not after.any() and events == []


def test_stop_with_nothing_playing_still_answers() -> None:
    """stop() while idle posts PlaybackStopped(None, 0) so the core never waits."""
    buf = PlaybackBuffer(RATE)
    buf.stop()
    _, events = buf.render(CHUNK, 0.0)
    assert events == [PlaybackStopped(None, 0, interrupted=True)]


def test_late_audio_for_a_stopped_item_is_dropped() -> None:
    """Deltas and finish() that arrive after a stop for that item are ignored."""
    buf = PlaybackBuffer(RATE)
    buf.enqueue("a", loud(100))
    render_all(buf, 1)
    buf.stop()
    render_all(buf, 1)
    buf.enqueue("a", loud(100))
    buf.finish("a")
    out, events = render_all(buf, 10)
    assert not out.any() and events == []


def test_cue_queued_after_stop_still_plays() -> None:
    """A cue queued right after stop() is not swallowed by the stop."""
    buf = PlaybackBuffer(RATE)
    buf.enqueue("a", loud(500))
    render_all(buf, 2)
    buf.stop()
    buf.enqueue(None, loud(40, 5_000))
    out, events = render_all(buf, 4)
    assert [e.item_id for e in events] == ["a"]
    assert np.count_nonzero(out[CHUNK:] == 5_000) > CHUNK // 2


def test_audio_starts_and_ends_with_fades() -> None:
    """Audio after silence fades in; audio ending mid-chunk fades out (no clicks)."""
    buf = PlaybackBuffer(RATE, fade_ms=5)
    buf.enqueue("a", loud(30))
    out, _ = render_all(buf, 3)
    assert out[0] == 0 and out[240] == 10_000
    end = RATE * 30 // 1000
    assert abs(int(out[end - 1])) < 100 and out[end - 241] == 10_000
    assert np.max(np.abs(np.diff(out.astype(int)))) < 100


def test_underrun_mid_item_dips_instead_of_clicking() -> None:
    """When the network is late the buffer plays silence, faded, and resumes with a fade-in."""
    buf = PlaybackBuffer(RATE)
    buf.enqueue("a", loud(30))
    out1, _ = render_all(buf, 2)
    buf.enqueue("a", loud(40))
    out2, _ = render_all(buf, 3)
    assert np.max(np.abs(np.diff(np.concatenate([out1, out2]).astype(int)))) < 100


def test_volume_change_ramps_over_one_chunk() -> None:
    """Setting volume at run time slides to the new gain over one chunk."""
    volume = Volume(1.0)
    buf = PlaybackBuffer(RATE, volume=volume)
    buf.enqueue("a", loud(200))
    render_all(buf, 1)
    volume.set(0.5)
    data, _ = buf.render(CHUNK, 0.02)
    chunk = np.frombuffer(data, np.int16)
    assert chunk[0] > 9_900 and 5_000 <= chunk[-1] < 5_100
    data, _ = buf.render(CHUNK, 0.04)
    assert np.all(np.frombuffer(data, np.int16) == 5_000)


def test_played_ms_now_subtracts_latency() -> None:
    """Heard-so-far is frames handed minus the device's latency, never negative."""
    buf = PlaybackBuffer(RATE, latency_frames=RATE * 40 // 1000)
    buf.enqueue("a", loud(500))
    assert buf.played_ms_now("a") == 0
    render_all(buf, 5)
    assert buf.played_ms_now("a") == 60


def test_stereo_device_gets_interleaved_copies() -> None:
    """A stereo-only speaker gets the mono signal on both channels."""
    buf = PlaybackBuffer(RATE, channels=2)
    buf.enqueue("a", loud(40))
    data, _ = buf.render(CHUNK, 0.0)
    frames = np.frombuffer(data, np.int16).reshape(-1, 2)
    assert len(frames) == CHUNK and np.array_equal(frames[:, 0], frames[:, 1])


def test_playback_feeds_the_echo_reference() -> None:
    """What is rendered lands in the echo reference, stamped with its DAC time."""
    ref = EchoReference()
    buf = PlaybackBuffer(RATE, echo_reference=ref)
    buf.enqueue(None, loud(40))
    buf.render(CHUNK, 7.0)
    buf.render(CHUNK, 7.02)
    window = ref.window(7.01, 7.03)
    assert window is not None and window.max() > 9_000
    assert ref.active(7.1, 0.2)


def test_two_items_back_to_back_are_reported_in_order() -> None:
    """Consecutive items each get their own PlaybackStopped with their own duration."""
    buf = PlaybackBuffer(RATE)
    buf.enqueue("a", loud(50))
    buf.finish("a")
    buf.enqueue("b", loud(70))
    buf.finish("b")
    _, events = render_all(buf, 8)
    assert events == [
        PlaybackStopped("a", 50, interrupted=False),
        PlaybackStopped("b", 70, interrupted=False),
    ]


def test_idle_render_is_silent_and_still_feeds_the_echo_reference() -> None:
    """An idle speaker hands out silence, keeps counting frames and tells the echo reference."""
    ref = EchoReference()
    buf = PlaybackBuffer(RATE, echo_reference=ref)
    data, events = buf.render(CHUNK, 1.0)
    assert data == bytes(CHUNK * 2) and events == []
    assert buf.rendered_frames == CHUNK
    assert ref.window(1.0, 1.02) is not None  # the ring's anchor moved to this chunk
    assert not ref.active(1.1, 0.5)  # silence is not loud
    buf.enqueue("a", loud(40))
    out, _ = render_all(buf, 2)
    assert out[0] == 0 and out[CHUNK // 2] == 10_000  # audio after idle fades in


def test_reply_queued_between_stop_and_render_plays() -> None:
    """A new item (a guardrail's fallback) queued right after stop() plays and is reported;
    a late delta for the stopped item, queued in the same gap, is dropped."""
    buf = PlaybackBuffer(RATE)
    buf.enqueue("a", loud(500))
    render_all(buf, 2)
    buf.stop()
    buf.enqueue("a", loud(100, 7_000))  # late delta of the stopped item
    buf.enqueue("b", loud(60, 5_000))
    buf.finish("b")
    out, events = render_all(buf, 6)
    assert events == [
        PlaybackStopped("a", 45, interrupted=True),
        PlaybackStopped("b", 60, interrupted=False),
    ]
    assert np.count_nonzero(out == 7_000) <= 1  # (the fade passes through it once)
    assert np.count_nonzero(out == 5_000) > CHUNK
