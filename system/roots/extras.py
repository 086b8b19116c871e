"""The optional extras on an arm64 root: do they import and work, with no network?

``python extras.py WAKE_WAV``: hark's word spotter hears "okay nabu" in WAKE_WAV (16 kHz
mono, made on the host by espeak-ng), the speex canceller (libspeexdsp1 from apt)
removes an echo, and so does AEC3 through livekit, aiortc makes an Opus WebRTC offer with no ICE
server and encodes and decodes Opus, webrtc-noise-gain cleans 10 ms frames.  One
"ok"/"FAIL" line each, then the seconds each took under qemu-user; exit 1 if any failed.
"""

from __future__ import annotations

import asyncio
import sys
import time
import wave
from collections.abc import Callable
from typing import Any

FAILS = 0


def check(what: str, fn: Callable[[], str]) -> None:
    global FAILS
    t0 = time.monotonic()
    try:
        detail = fn()
    except Exception as exc:  # the line names what broke; the others still run
        FAILS += 1
        print(f"FAIL {what}: {type(exc).__name__}: {exc}")
        return
    print(f"ok   {what}: {detail} ({time.monotonic() - t0:.1f} s)")


def wake(path: str) -> str:
    from hark.audio.wake import MicroWordSpotter

    with wave.open(path) as w:
        assert (w.getframerate(), w.getnchannels()) == (16000, 1), "want 16 kHz mono"
        pcm = w.readframes(w.getnframes())
    spotter = MicroWordSpotter("okay_nabu", stop=True)
    spotter.arm(frozenset({"wake"}))
    heard = spotter.process(b"\0" * 16000 + pcm + b"\0" * 32000)
    assert [type(e).__name__ for _, e in heard] == ["WakeWordHeard"], heard
    return f"okay nabu heard (peak {spotter.peak['wake']:.2f}), the stop model loads"


def webrtc() -> str:
    import av
    import numpy as np
    from aiortc import RTCConfiguration, RTCPeerConnection

    async def offer() -> str:
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        pc.createDataChannel("oai-events")
        pc.addTransceiver("audio", direction="sendrecv")
        await pc.setLocalDescription(await pc.createOffer())
        sdp = pc.localDescription.sdp
        await pc.close()
        return sdp

    sdp = asyncio.run(offer())
    assert "opus/48000" in sdp and "webrtc-datachannel" in sdp, sdp
    enc = av.CodecContext.create("libopus", "w")
    enc.sample_rate, enc.layout, enc.format = 48000, "mono", "s16"
    dec = av.CodecContext.create("opus", "r")
    dec.sample_rate, dec.layout = 48000, "mono"
    tone = (np.sin(np.arange(48000) * 2 * np.pi * 440 / 48000) * 8000).astype(np.int16)
    out = 0
    for i in range(0, 48000, 960):
        frame = av.AudioFrame.from_ndarray(tone[None, i : i + 960], format="s16", layout="mono")
        frame.sample_rate = 48000
        for packet in enc.encode(frame):
            out += sum(f.samples for f in dec.decode(packet))
    assert out >= 40000, out
    return f"an offer with Opus and the data channel; 1 s of Opus round trip ({out} samples)"


def noise_gain() -> str:
    from webrtc_noise_gain import AudioProcessor

    proc = AudioProcessor(0, 2)
    cleaned = [proc.Process10ms(bytes(320)).audio for _ in range(100)]
    assert all(len(c) == 320 for c in cleaned)
    return "1 s of 10 ms frames suppressed"


def _cancelled_db(aec: Any, seconds: int) -> float:
    """How much weaker ``aec`` makes an echo (noise, 5 ms late, 6 dB down) in its last second."""
    import numpy as np
    from hark.audio.frontend import FRAME_SAMPLES

    rng = np.random.default_rng(0)
    played = (rng.standard_normal(16000 * seconds) * 3000).astype(np.int16)
    mic = np.zeros_like(played)
    mic[80:] = played[:-80] // 2
    out = np.concatenate(
        [
            aec.process(mic[i : i + FRAME_SAMPLES], played[i : i + FRAME_SAMPLES])
            for i in range(0, len(mic), FRAME_SAMPLES)
        ]
    )
    last = slice(16000 * (seconds - 1), None)
    before = np.sum(mic[last].astype(np.float64) ** 2)
    return float(10 * np.log10(before / (np.sum(out[last].astype(np.float64) ** 2) + 1)))


def speex() -> str:
    from hark.audio.frontend import SpeexEchoCanceller

    erle = _cancelled_db(SpeexEchoCanceller(), 4)
    assert erle > 15, erle
    return f"libspeexdsp by ctypes: an echo {erle:.0f} dB weaker after 3 s"


def aec3() -> str:
    from hark.audio.frontend import WebRtcEchoCanceller

    erle = _cancelled_db(WebRtcEchoCanceller(), 3)
    assert erle > 15, erle
    return f"livekit's AudioProcessingModule: an echo {erle:.0f} dB weaker after 2 s"


check("wake: hark's word spotter (pymicro-wakeword)", lambda: wake(sys.argv[1]))
check("frontend: speex echo canceller (libspeexdsp1)", speex)
check("frontend: WebRTC AEC3 (livekit)", aec3)
check("webrtc: aiortc and av", webrtc)
check("frontend: webrtc-noise-gain", noise_gain)
sys.exit(1 if FAILS else 0)
