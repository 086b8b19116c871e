"""WebSocket vs WebRTC, side by side on loopback against hark_sim (parrot, real-time pacing).

Each transport runs in a child process of its own (``python -m bench.bench_transports
child <transport> <port>``), the sim in another, so the child's CPU time and RSS are
the device's alone: ``WebSocketLink`` or ``WebRTCLink`` as the daemon builds them,
without the app (the audio path is the same for both; ``bench_audio`` measures it).

- bytes per audio-second each way: what the link writes to / reads from its socket(s)
  (WebSocket frames with their framing; UDP payloads: SRTP, SCTP/DTLS, STUN), IP and
  TCP/UDP headers not included; up while 4 s of speech streams, down while the
  parrot's 4 s reply arrives (the reply's JSON events included);
- device CPU per audio-second (``time.process_time``, every thread: Opus runs in
  aiortc's worker threads), and the ratio WebRTC/WebSocket;
- first reply audio: ``response.create`` handed to the link → first ``AudioDelta`` posted;
- barge-in: ``response.cancel`` handed to the link → the last reply audio posted after it
  (0 when none came) and → ``response.done``;
- RSS idle with a session open.

Figures are printed, never asserted. Skips WebRTC (says so) without the webrtc extra.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import os
import socket
import subprocess
import sys
import time
from typing import Any

API_KEY = "sk-bench-transports"
SPEECH_S = 4
TRANSPORTS = ("websocket", "webrtc")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


class Counter:
    def __init__(self) -> None:
        self.out = 0
        self.into = 0


def _count_websocket(counter: Counter) -> type[Any]:
    from hark.net.link import Channel, WebSocketLink

    class CountingLink(WebSocketLink):
        async def _dial(self, key: str) -> Channel:
            ws: Any = await super()._dial(key)
            transport, received = ws.transport, ws.data_received
            write = transport.write

            def counted_write(data: bytes) -> None:
                counter.out += len(data)
                write(data)

            def counted_received(data: bytes) -> None:
                counter.into += len(data)
                received(data)

            transport.write = counted_write
            ws.data_received = counted_received
            channel: Channel = ws
            return channel

    return CountingLink


def _count_webrtc(counter: Counter) -> type[Any]:
    import aioice.ice
    from hark.net.webrtc import WebRTCLink

    proto = aioice.ice.StunProtocol
    send_data, send_stun, received = proto.send_data, proto.send_stun, proto.datagram_received

    async def counted_send(self: Any, data: bytes, addr: tuple[str, int]) -> None:
        counter.out += len(data)
        await send_data(self, data, addr)

    def counted_stun(self: Any, message: Any, addr: tuple[str, int]) -> None:
        counter.out += len(bytes(message))
        send_stun(self, message, addr)

    def counted_received(self: Any, data: bytes | str, addr: tuple[Any, ...]) -> None:
        counter.into += len(data)
        received(self, data, addr)

    proto.send_data = counted_send  # type: ignore[method-assign]
    proto.send_stun = counted_stun  # type: ignore[method-assign]
    proto.datagram_received = counted_received  # type: ignore[method-assign]
    return WebRTCLink


async def _child(transport: str, port: int) -> dict[str, float]:
    from hark import events as ev
    from hark.testing import synthetic_speech, until

    counter = Counter()
    cls = _count_webrtc(counter) if transport == "webrtc" else _count_websocket(counter)
    link = cls(
        backend_url=f"http://127.0.0.1:{port}/v1/realtime/client_secrets",
        device_token=API_KEY,
        realtime_url=f"ws://127.0.0.1:{port}/v1/realtime",
    )
    posted: list[tuple[float, ev.Event]] = []
    task = asyncio.create_task(link.run(lambda e: posted.append((time.monotonic(), e))))

    def seen(cls: type, since: float = 0.0) -> list[Any]:
        return [e for t, e in posted if isinstance(e, cls) and t >= since]

    link.send(ev.UpdateSession(ev.SessionConfig(instructions="Repeat.", turn_detection=None)))
    link.connect()
    await until(lambda: bool(seen(ev.LinkUp)), 30)
    idle_cpu0 = time.process_time()
    await asyncio.sleep(1.0)
    idle_cpu_s = time.process_time() - idle_cpu0
    rss_idle = _rss_mb()

    async def stream(seconds: float) -> None:
        pcm = synthetic_speech(int(seconds * 1000)).tobytes()
        start = time.monotonic()
        for i, offset in enumerate(range(0, len(pcm), 960)):
            link.send(ev.SendAudio(pcm[offset : offset + 960]))
            await asyncio.sleep(max(0.0, start + (i + 1) * 0.02 - time.monotonic()))

    # Up: SPEECH_S seconds of speech at real time.
    out0, cpu0 = counter.out, time.process_time()
    await stream(SPEECH_S)
    await asyncio.sleep(0.1)
    up_bytes, up_cpu = counter.out - out0, time.process_time() - cpu0

    # Down: the parrot's reply.
    link.send(ev.CommitAudio())
    in0, cpu0, asked = counter.into, time.process_time(), time.monotonic()
    link.send(ev.CreateResponse())
    await until(lambda: bool(seen(ev.AudioDone, asked)), 30)
    down_bytes, down_cpu = counter.into - in0, time.process_time() - cpu0
    deltas = [(t, e) for t, e in posted if isinstance(e, ev.AudioDelta) and t >= asked]
    reply_s = sum(len(e.pcm) for _, e in deltas) / 48_000
    first_audio_ms = (deltas[0][0] - asked) * 1000

    # Barge-in: a second reply, cancelled 0.5 s into its audio.
    await stream(2.5)
    link.send(ev.CommitAudio())
    asked = time.monotonic()
    link.send(ev.CreateResponse())
    await until(lambda: bool(seen(ev.AudioDelta, asked)), 30)
    await asyncio.sleep(0.5)
    rid = seen(ev.AudioDelta, asked)[0].response_id
    cancelled = time.monotonic()
    link.send(ev.CancelResponse(rid))
    await until(lambda: any(e.response_id == rid for e in seen(ev.ResponseDone, cancelled)), 30)
    await asyncio.sleep(0.5)  # anything still on its way
    done_at = next(t for t, e in posted if isinstance(e, ev.ResponseDone) and t >= cancelled)
    late = [t for t, e in posted if isinstance(e, ev.AudioDelta) and t >= cancelled]
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return {
        "up_bytes_per_s": up_bytes / SPEECH_S,
        "down_bytes_per_s": down_bytes / max(reply_s, 1e-9),
        "up_cpu_ms_per_s": up_cpu * 1000 / SPEECH_S,
        "down_cpu_ms_per_s": down_cpu * 1000 / max(reply_s, 1e-9),
        "idle_cpu_ms_per_s": idle_cpu_s * 1000,
        "first_audio_ms": first_audio_ms,
        "barge_audio_stops_ms": (max(late) - cancelled) * 1000 if late else 0.0,
        "barge_done_ms": (done_at - cancelled) * 1000,
        "rss_idle_mb": rss_idle,
        "reply_s": reply_s,
    }


def _wait_up(port: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("hark-sim exited")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
            return
        time.sleep(0.1)
    raise RuntimeError("hark-sim did not start")


def main() -> None:
    port = _free_port()
    sim = subprocess.Popen(
        [sys.executable, "-m", "hark_sim", "--port", str(port), "--api-key", API_KEY,
         "--realtime-factor", "1.0", "--log-level", "WARNING"],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    results: dict[str, dict[str, float]] = {}
    try:
        _wait_up(port, sim)
        for transport in TRANSPORTS:
            if transport == "webrtc" and importlib.util.find_spec("aiortc") is None:
                print("   webrtc: skipped (the webrtc extra, aiortc, is not installed)")
                continue
            child = subprocess.run(
                [sys.executable, "-m", "bench.bench_transports", "child", transport, str(port)],
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
                env={**os.environ, "PYTHONWARNINGS": "ignore"},
            )
            lines = [ln for ln in child.stdout.splitlines() if ln.startswith("{")]
            if child.returncode != 0 or not lines:
                print(f"   {transport}: FAILED ({child.stderr.strip().splitlines()[-1:]})")
                continue
            results[transport] = json.loads(lines[-1])
    finally:
        sim.terminate()
        sim.wait(10)
    for transport, r in results.items():
        print(
            f"   {transport}: up {r['up_bytes_per_s'] / 1000:.1f} KB/audio-s, "
            f"down {r['down_bytes_per_s'] / 1000:.1f} KB/audio-s; CPU up "
            f"{r['up_cpu_ms_per_s']:.1f} ms/audio-s, down {r['down_cpu_ms_per_s']:.1f} "
            f"ms/audio-s (idle {r['idle_cpu_ms_per_s']:.1f} ms/s); first reply audio "
            f"{r['first_audio_ms']:.0f} ms; barge-in: audio stops {r['barge_audio_stops_ms']:.0f}"
            f" ms, response.done {r['barge_done_ms']:.0f} ms; idle RSS {r['rss_idle_mb']:.0f} MB"
        )
    if len(results) == 2:
        ws, rtc = results["websocket"], results["webrtc"]
        print(
            f"   webrtc/websocket: bytes up {rtc['up_bytes_per_s'] / ws['up_bytes_per_s']:.2f}, "
            f"down {rtc['down_bytes_per_s'] / ws['down_bytes_per_s']:.2f}; CPU up "
            f"{rtc['up_cpu_ms_per_s'] / ws['up_cpu_ms_per_s']:.2f}, down "
            f"{rtc['down_cpu_ms_per_s'] / ws['down_cpu_ms_per_s']:.2f}; idle RSS "
            f"+{rtc['rss_idle_mb'] - ws['rss_idle_mb']:.0f} MB"
        )


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "child":
        figures = asyncio.run(_child(sys.argv[2], int(sys.argv[3])))
        print(json.dumps(figures), flush=True)
    else:
        main()
