"""The wire codec's CPU cost per second of 24 kHz audio, each way (target: < 2000 µs).

Up: ``input_audio_buffer.append`` for 20 ms mic frames. Down: decoding
``response.output_audio.delta`` events of ~100 ms. Prints figures; never fails on time.
"""

from __future__ import annotations

import base64
import json
import os
import time
from collections.abc import Callable
from typing import Any

from hark import events as ev
from hark import realtime

RATE_HZ = 24_000
BYTES_PER_S = RATE_HZ * 2  # PCM16 mono
AUDIO_S = 60.0
REPEATS = 3
TARGET_US = 2000.0


def cpu_us_per_audio_s(work: Callable[[], Any], calls: int) -> float:
    """Best of a few runs of ``calls`` calls covering ``AUDIO_S`` seconds of audio."""
    best = float("inf")
    for _ in range(REPEATS):
        started = time.process_time()
        for _ in range(calls):
            work()
        best = min(best, time.process_time() - started)
    return best / AUDIO_S * 1e6


def delta_frame(pcm: bytes) -> str:
    """A delta shaped like OpenAI's (ids of realistic length, obfuscation-free)."""
    return json.dumps(
        {
            "type": "response.output_audio.delta",
            "event_id": "event_Ct1OZ8a2tc2AnrBDDda9w",
            "response_id": "resp_Ct1OZ5ukpGEZNeUWx1iOH",
            "item_id": "item_Ct1OZd4ZkrcbhoRueeC2O",
            "output_index": 0,
            "content_index": 0,
            "delta": base64.b64encode(pcm).decode(),
        }
    )


def main() -> None:
    up_frame_ms, down_delta_ms = 20, 100
    up = ev.SendAudio(os.urandom(BYTES_PER_S * up_frame_ms // 1000))
    up_calls = int(AUDIO_S * 1000 / up_frame_ms)
    down_text = delta_frame(os.urandom(BYTES_PER_S * down_delta_ms // 1000))
    down_calls = int(AUDIO_S * 1000 / down_delta_ms)
    decoder = realtime.Decoder()
    assert isinstance(decoder.decode(down_text), ev.AudioDelta)

    encode_us = cpu_us_per_audio_s(lambda: realtime.encode(up), up_calls)
    generic_us = cpu_us_per_audio_s(
        lambda: json.dumps(realtime.command_json(up), separators=(",", ":")), up_calls
    )
    decode_us = cpu_us_per_audio_s(lambda: decoder.decode(down_text), down_calls)

    def verdict(us: float) -> str:
        return "ok" if us < TARGET_US else "OVER TARGET"

    print(
        f"   encode input_audio_buffer.append ({up_frame_ms} ms frames): "
        f"{encode_us:7.0f} µs CPU per audio-second ({verdict(encode_us)}, target < {TARGET_US:.0f})"
    )
    print(f"     (json.dumps of the same event instead: {generic_us:7.0f} µs per audio-second)")
    print(
        f"   decode response.output_audio.delta ({down_delta_ms} ms deltas): "
        f"{decode_us:7.0f} µs CPU per audio-second ({verdict(decode_us)}, target < {TARGET_US:.0f})"
    )


if __name__ == "__main__":
    main()
