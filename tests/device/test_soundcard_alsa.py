"""hark.audio.soundcard via real PyAudio and ALSA file PCMs: selection, formats, bytes in and out.

PortAudio reads the ALSA configuration when it initialises, so each probe runs in a
fresh subprocess with ``ALSA_CONFIG_PATH`` from ``tests.audio_rig.alsa_file_env``.  The
file PCMs are not paced; nothing here depends on time.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.audio_rig import alsa_file_env

PROBE = r"""
import asyncio, json, sys
import numpy as np
from hark.audio import portaudio, soundcard
from hark.backoff import Backoff
from hark.events import MicFrame, PlaybackStopped

out = {}
listing = portaudio.list_devices()
out["inputs"] = [d.name for d in listing.inputs]
out["outputs"] = [d.name for d in listing.outputs]
out["listing"] = str(listing)
pa = portaudio._open_portaudio()
out["by_name"] = portaudio.find_device(pa, "filein", "input").name
idx = portaudio.find_device(pa, "fileout", "output").index
out["by_index"] = portaudio.find_device(pa, idx, "output").name
out["by_index_str"] = portaudio.find_device(pa, str(idx), "output").name
out["default_in"] = portaudio.find_device(pa, None, "input").name
try:
    portaudio.find_device(pa, "ReSpeaker", "input")
except portaudio.DeviceNotFound as exc:
    out["not_found"] = str(exc)
dev = portaudio.find_device(pa, "filein", "input")
out["format_auto"] = portaudio.choose_format(pa, dev, "input")
out["default_rate"] = dev.default_rate_hz
pa.terminate()

MODE = sys.argv[1]

async def capture(rate_hz, want):
    frames = []
    done = asyncio.Event()
    def post(e):
        if isinstance(e, MicFrame):
            frames.append(e)
            if len(frames) >= want:
                done.set()
        else:
            out.setdefault("mic_events", []).append(repr(e))
    mic = soundcard.SoundcardMicrophone("filein", rate_hz=rate_hz)
    mic.set_demand("every")  # as in a turn: nothing held back at the file's end
    task = asyncio.create_task(mic.run(post))
    await asyncio.wait_for(done.wait(), 20)
    # The unpaced file PCM can deliver every frame before the loop has taken the
    # open's result: wait for it, or the cancel below discards the stream unreported.
    for _ in range(2000):
        if mic.opened_rate_hz is not None:
            break
        await asyncio.sleep(0.01)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    out["mic_rate"] = mic.opened_rate_hz
    return b"".join(f.pcm for f in frames[:want])

async def playback(rate_hz, pcm):
    events = []
    got = asyncio.Event()
    def post(e):
        events.append(e)
        if isinstance(e, PlaybackStopped):
            got.set()
    speaker = soundcard.SoundcardSpeaker("fileout", rate_hz=rate_hz)
    task = asyncio.create_task(speaker.run(post))
    speaker.play("item1", pcm)
    speaker.finish("item1")
    await asyncio.wait_for(got.wait(), 20)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    out["speaker_rate"] = speaker.opened_rate_hz
    out["stopped"] = [repr(e) for e in events]

async def missing():
    events = []
    reopen = Backoff(initial_s=0.1, max_s=0.2, jitter=0.0)
    mic = soundcard.SoundcardMicrophone("ReSpeaker", reopen_backoff=reopen)
    speaker = soundcard.SoundcardSpeaker("ReSpeaker", reopen_backoff=reopen)
    tasks = [asyncio.create_task(mic.run(events.append)),
             asyncio.create_task(speaker.run(events.append))]
    speaker.play("early", bytes(960))
    speaker.finish("early")
    await asyncio.sleep(1.0)
    speaker.play("late", bytes(960))
    speaker.finish("late")
    await asyncio.sleep(0.2)
    out["missing_running"] = [not t.done() for t in tasks]
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    out["missing_events"] = [repr(e) for e in events]

if MODE == "capture24":
    asyncio.run(missing())
    data = asyncio.run(capture(24000, int(sys.argv[2])))
    out["captured_hex"] = data.hex()
elif MODE == "capture48":
    data = asyncio.run(capture(48000, 50))
    out["captured_len"] = len(data)
    x = np.frombuffer(data, np.int16)[4800:]
    spectrum = np.abs(np.fft.rfft(x))
    out["peak_hz"] = float(np.argmax(spectrum) * 24000 / len(x))
elif MODE == "play":
    pcm = bytes.fromhex(sys.argv[3])
    asyncio.run(playback(int(sys.argv[2]), pcm))
print("RESULT " + json.dumps(out))
"""


def probe(tmp_path: Path, capture: bytes, *args: str) -> dict[str, Any]:
    env = {**os.environ, **alsa_file_env(tmp_path, capture=capture)}
    script = tmp_path / "probe.py"
    script.write_text(PROBE)
    result = subprocess.run(
        [sys.executable, str(script), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = [x for x in result.stdout.splitlines() if x.startswith("RESULT ")]
    assert lines, f"probe failed:\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
    data: dict[str, Any] = json.loads(lines[-1][len("RESULT ") :])
    data["stderr"] = result.stderr
    return data


def tone(freq_hz: float, ms: int, rate_hz: int) -> np.ndarray:
    t = np.arange(rate_hz * ms // 1000) / rate_hz
    return (8000 * np.sin(2 * np.pi * freq_hz * t)).astype(np.int16)


@pytest.fixture(scope="module")
def capture24(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], bytes]:
    """One probe: listing, selection and a 24 kHz capture of known bytes."""
    tmp = tmp_path_factory.mktemp("alsa24")
    rng = np.random.default_rng(7)
    # 26 frames: the 40 ms capture buffer reads two at a time, the test wants 25
    data = rng.integers(-20000, 20000, 24_000 // 50 * 26, dtype=np.int16).tobytes()
    return probe(tmp, data, "capture24", "25"), data


def test_portaudio_lists_the_file_pcms(capture24: tuple[dict[str, Any], bytes]) -> None:
    """list_devices() shows fileout/filein/default with their rates (what `hark devices` prints)."""
    out, _ = capture24
    assert {"filein", "default"} <= set(out["inputs"])
    assert {"fileout", "default"} <= set(out["outputs"])
    assert "inputs:" in out["listing"] and "Hz" in out["listing"]


def test_portaudio_starts_without_chatter(capture24: tuple[dict[str, Any], bytes]) -> None:
    """No JACK or ALSA probe noise reaches stderr (the journal) when PortAudio starts."""
    out, _ = capture24
    assert "jack" not in out["stderr"].lower()
    assert "ALSA lib" not in out["stderr"]


def test_devices_are_selected_by_name_index_or_default(
    capture24: tuple[dict[str, Any], bytes],
) -> None:
    """A name substring, an index (int or digits) and None (the default) all select a device."""
    out, _ = capture24
    assert out["by_name"] == "filein"
    assert out["by_index"] == "fileout" and out["by_index_str"] == "fileout"
    assert out["default_in"] == "default"


def test_unknown_device_error_lists_what_exists(capture24: tuple[dict[str, Any], bytes]) -> None:
    """DeviceNotFound names the wanted device and lists inputs and outputs with rates."""
    out, _ = capture24
    message = out["not_found"]
    assert "'ReSpeaker'" in message and "filein" in message and "fileout" in message
    assert "Hz" in message


def test_missing_device_is_reported_and_retried(capture24: tuple[dict[str, Any], bytes]) -> None:
    """A device that does not exist: DeviceLost naming it, run() keeps retrying, replies
    queued meanwhile are answered as unheard (played_ms=0) instead of hanging the core."""
    out, _ = capture24
    assert out["missing_running"] == [True, True]
    events = out["missing_events"]
    lost = [e for e in events if e.startswith("DeviceLost")]
    assert len(lost) == 2 and all("ReSpeaker" in e and "fileout" in e for e in lost)
    assert "PlaybackStopped(item_id='early', played_ms=0, interrupted=True)" in events
    assert "PlaybackStopped(item_id='late', played_ms=0, interrupted=True)" in events
    assert not any("DeviceRestored" in e for e in events)


def test_capture_format_prefers_48k_mono(capture24: tuple[dict[str, Any], bytes]) -> None:
    """Auto format: mono at the device's default rate if it is a multiple of 8 kHz (one
    webrtcvad takes, or 24 kHz), else 48 kHz (ALSA plugin devices report 44.1 kHz)."""
    out, _ = capture24
    rate, channels = out["format_auto"]
    default = out["default_rate"]
    assert channels == 1 and rate == (default if default % 8_000 == 0 else 48_000)


def test_capture_at_24k_reads_the_bytes_exactly(capture24: tuple[dict[str, Any], bytes]) -> None:
    """At 24 kHz the MicFrames carry the device's bytes unchanged, in order, in 20 ms frames."""
    out, data = capture24
    assert out["mic_rate"] == 24_000
    assert bytes.fromhex(out["captured_hex"]) == data[: 25 * 960]


def test_capture_at_48k_resamples_to_24k(tmp_path: Path) -> None:
    """A 48 kHz device is resampled: 20 ms frames of 960 bytes, the tone's pitch kept."""
    out = probe(tmp_path, tone(1000, 1200, 48_000).tobytes(), "capture48")
    assert out["mic_rate"] == 48_000
    assert out["captured_len"] == 50 * 960
    assert abs(out["peak_hz"] - 1000) < 10


@pytest.mark.parametrize("rate_hz", [24_000, 48_000])
def test_playback_lands_in_the_file(tmp_path: Path, rate_hz: int) -> None:
    """Played audio reaches the device (resampled to its rate) and the item is reported."""
    pcm = tone(440, 300, 24_000)
    out = probe(tmp_path, b"", "play", str(rate_hz), pcm.tobytes().hex())
    assert out["speaker_rate"] == rate_hz
    assert out["stopped"] == ["PlaybackStopped(item_id='item1', played_ms=300, interrupted=False)"]
    written = np.frombuffer((tmp_path / "out.raw").read_bytes(), np.int16)
    expected = tone(440, 300, rate_hz).astype(float)
    n = 1 << 20
    corr = np.fft.irfft(np.fft.rfft(written, n) * np.conj(np.fft.rfft(expected, n)), n)
    lag = int(np.argmax(corr[: len(written) - len(expected) + 1]))
    seg = written[lag : lag + len(expected)].astype(float)
    assert np.dot(seg, expected) / (np.linalg.norm(seg) * np.linalg.norm(expected)) > 0.99
