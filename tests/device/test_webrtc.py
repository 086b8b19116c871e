"""The WebRTC link against hark_sim: loopback only, the same retries, rotation and replay.

aiortc asks a public STUN server when ``iceServers`` is left unset, and aioice leaves
127.0.0.1 out of its host candidates: ``test_every_candidate_and_datagram_is_loopback``
fails if either peer offers, or sends a datagram to, anything but loopback.
"""

from __future__ import annotations

import asyncio
import re
import sys
import urllib.request
from collections.abc import Iterator
from typing import Annotated, Any

import pydantic
import pytest

pytest.importorskip("aiortc")

import aioice.ice
import aiortc.rtcicetransport
from hark import events as ev
from hark.history import History
from hark.net.keys import LinkConfigError
from hark.net.link import _AttemptFailedError
from hark.net.webrtc import WebRTCLink, calls_url
from hark.testing import synthetic_speech, until
from hark_sim import SimConfig, SimHandle, start_sim
from openai.types.realtime import RealtimeClientEvent

from tests.device.test_link import MANUAL, of_type, running, sim_link, text_turn

CLIENT_EVENT: pydantic.TypeAdapter[Any] = pydantic.TypeAdapter(
    Annotated[RealtimeClientEvent, pydantic.Field(discriminator="type")]
)
FRAME_BYTES = 960
LOOPBACK = "127.0.0.1"


@pytest.fixture
def sim() -> Iterator[SimHandle]:
    config = SimConfig(
        api_key="sk-sim-test", brain="parrot", realtime_factor=0.0, max_session_s=3600.0
    )
    with start_sim(config) as handle:
        yield handle


def rtc_link(sim: SimHandle, **kwargs: Any) -> WebRTCLink:
    link: WebRTCLink = sim_link(sim, WebRTCLink, **kwargs)
    return link


async def spoken_turn(link: WebRTCLink, posted: list[ev.Event], pcm: bytes) -> bytes:
    """Stream ``pcm`` at real time, commit, ask for a reply; the reply audio once it is done."""
    start = len(posted)
    for offset in range(0, len(pcm), FRAME_BYTES):
        link.send(ev.SendAudio(pcm[offset : offset + FRAME_BYTES]))
        await asyncio.sleep(0.02)
    link.send(ev.CommitAudio())
    link.send(ev.CreateResponse())
    await until(lambda: bool(of_type(posted[start:], ev.ResponseDone)), 20)
    await until(lambda: bool(of_type(posted[start:], ev.AudioDone)), 20)
    return b"".join(e.pcm for e in of_type(posted[start:], ev.AudioDelta))


class Wire:
    """Every SDP and every datagram aioice sends, in this process (both peers)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.sdp: list[str] = []
        self.sent_to: set[tuple[str, int]] = set()
        self.default_ice_asked = 0
        wire = self
        send_stun, send_data = aioice.ice.StunProtocol.send_stun, aioice.ice.StunProtocol.send_data
        post_offer = WebRTCLink._post_offer

        def stun(self: Any, message: Any, addr: tuple[str, int]) -> None:
            wire.sent_to.add(addr[:2])
            send_stun(self, message, addr)

        async def data(self: Any, payload: bytes, addr: tuple[str, int]) -> None:
            wire.sent_to.add(addr[:2])
            await send_data(self, payload, addr)

        def offer(self: WebRTCLink, key: str, sdp: str) -> str:
            answer = post_offer(self, key, sdp)
            wire.sdp += [sdp, answer]
            return answer

        def default_ice() -> list[Any]:
            wire.default_ice_asked += 1
            return []

        monkeypatch.setattr(aioice.ice.StunProtocol, "send_stun", stun)
        monkeypatch.setattr(aioice.ice.StunProtocol, "send_data", data)
        monkeypatch.setattr(WebRTCLink, "_post_offer", offer)
        monkeypatch.setattr(
            aiortc.rtcicetransport.RTCIceGatherer, "getDefaultIceServers", staticmethod(default_ice)
        )

    def addresses(self) -> set[str]:
        """Every address the SDPs name: candidates and connection lines."""
        found: set[str] = set()
        for sdp in self.sdp:
            for line in sdp.splitlines():
                if line.startswith("a=candidate:"):
                    found.add(line.split()[4])
                elif line.startswith("c="):
                    found.add(line.split()[2])
        return found


async def test_every_candidate_and_datagram_is_loopback(sim, monkeypatch):
    """Both peers offer 127.0.0.1 only, ask no STUN server, and send nowhere else."""
    wire = Wire(monkeypatch)
    link = rtc_link(sim)
    async with running(link) as posted:
        link.connect()
        await until(lambda: bool(of_type(posted, ev.LinkUp)), 20)
        link.send(ev.UpdateSession(MANUAL))
        reply = await spoken_turn(link, posted, synthetic_speech(600).tobytes())
    assert reply
    assert len(wire.sdp) == 2
    assert any("a=candidate:" in sdp for sdp in wire.sdp)
    assert wire.addresses() <= {LOOPBACK, "0.0.0.0"}, wire.addresses()
    assert wire.sent_to and {host for host, _ in wire.sent_to} == {LOOPBACK}
    assert wire.default_ice_asked == 0


async def test_parrot_round_trip_over_opus(sim):
    """The reply is the parrot's copy of what was said, within what Opus and the
    resamplers keep at the end of a stream; the wire carries no base64 audio either way."""
    link = rtc_link(sim)
    pcm = synthetic_speech(1500).tobytes()
    async with running(link) as posted:
        link.connect()
        await until(lambda: bool(of_type(posted, ev.LinkUp)), 20)
        link.send(ev.UpdateSession(MANUAL))
        reply = await spoken_turn(link, posted, pcm)
        done_at = max(n for n, e in enumerate(posted) if isinstance(e, ev.AudioDone))
        last_delta = max(n for n, e in enumerate(posted) if isinstance(e, ev.AudioDelta))
    assert len(pcm) - 120 * 48 <= len(reply) <= len(pcm)
    assert last_delta < done_at  # AudioDone waited for the track to drain
    assert sim.sessions[0].key_kind == "ephemeral"
    received = sim.sessions[0].received
    assert "input_audio_buffer.append" not in {e["type"] for e in received}
    for event in received:
        CLIENT_EVENT.validate_python(event)
    assert "response.output_audio.delta" not in {e["type"] for e in sim.sessions[0].sent}
    assert not of_type(posted, ev.ServerError) and not of_type(posted, ev.ProtocolError)


async def test_rotation_replays_into_the_next_call(sim):
    """rotate(): a second call is opened with the config and the transcript, then serves."""
    history = History()
    link = rtc_link(sim, replay=history.replay)
    async with running(link, history) as posted:
        link.connect()
        await until(lambda: bool(of_type(posted, ev.LinkUp)), 20)
        link.send(ev.UpdateSession(MANUAL))
        await text_turn(link, posted, "Hello over WebRTC.")
        link.rotate()
        await until(lambda: len(of_type(posted, ev.LinkUp)) == 2, 20)
        await until(lambda: len(sim.sessions) == 2 and len(sim.sessions[1].received) >= 3)
        await until(lambda: sim.sessions[0].wait_closed(0))
    second = sim.sessions[1].received
    assert second[0]["type"] == "session.update"
    texts = [e["item"]["content"][0]["text"] for e in second[1:3]]
    assert texts[0] == "Hello over WebRTC."
    assert not of_type(posted, ev.LinkDown)


async def test_a_dropped_call_is_retried_with_a_fresh_key(sim):
    """The sim drops the call: LinkDown(retrying), a new key, a new call, LinkUp again."""
    link = rtc_link(sim)
    async with running(link) as posted:
        link.connect()
        await until(lambda: bool(of_type(posted, ev.LinkUp)), 20)
        assert sim.drop_connections() == 1
        await until(lambda: len(of_type(posted, ev.LinkUp)) == 2, 30)
    down = of_type(posted, ev.LinkDown)
    assert down and down[0].retrying
    assert link.stats.key_fetches == 2 and len(sim.sessions) == 2


async def test_an_offer_with_a_bad_key_is_an_auth_failure(sim):
    """A 401 on the offer is classified like a refused WebSocket upgrade."""
    link = rtc_link(sim)
    offer = "v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"
    with pytest.raises(_AttemptFailedError) as caught:
        await asyncio.to_thread(link._post_offer, "ek_not_minted", offer)
    assert caught.value.failure.kind == "auth"
    assert "401" in caught.value.failure.message


def test_sim_without_the_extra_answers_501(sim, monkeypatch):
    monkeypatch.setitem(sys.modules, "hark_sim.webrtc", None)
    request = urllib.request.Request(  # noqa: S310
        sim.base_url + "/realtime/calls",
        data=b"v=0\r\n",
        method="POST",
        headers={"Authorization": f"Bearer {sim.api_key}", "Content-Type": "application/sdp"},
    )
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=5)  # noqa: S310
    assert caught.value.code == 501
    assert b"webrtc extra" in caught.value.read()


def test_the_wiring_names_the_missing_extra(monkeypatch):
    from hark.config import parse
    from hark.service.wiring import make_link

    monkeypatch.setitem(sys.modules, "hark.net.webrtc", None)
    config = parse('[backend]\nurl = "http://127.0.0.1:9/keys"\n[realtime]\ntransport = "webrtc"\n')
    with pytest.raises(LinkConfigError, match=re.escape("hark-voice[webrtc]")):
        make_link(config, "token", History())


@pytest.mark.parametrize(
    ("realtime", "calls"),
    [
        ("wss://api.openai.com/v1/realtime", "https://api.openai.com/v1/realtime/calls"),
        ("ws://127.0.0.1:8765/v1/realtime/", "http://127.0.0.1:8765/v1/realtime/calls"),
        ("wss://proxy.example/rt?x=1", "https://proxy.example/rt/calls"),
    ],
)
def test_calls_url(realtime: str, calls: str) -> None:
    assert calls_url(realtime) == calls


async def test_the_sim_answers_an_offer_201_with_sdp_and_a_location(sim):
    """``POST /v1/realtime/calls`` as OpenAI documents it: SDP in, 201 + SDP + Location out."""
    from aiortc import RTCConfiguration, RTCPeerConnection

    key = await asyncio.to_thread(
        rtc_link(sim)._keys.fetch_blocking
    )  # a minted ek_ key, as the link gets one
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    try:
        pc.addTransceiver("audio")
        pc.createDataChannel("oai-events")
        await pc.setLocalDescription(await pc.createOffer())
        request = urllib.request.Request(  # noqa: S310
            sim.base_url + "/realtime/calls",
            data=pc.localDescription.sdp.encode(),
            method="POST",
            headers={"Authorization": f"Bearer {key.value}", "Content-Type": "application/sdp"},
        )
        response = await asyncio.to_thread(urllib.request.urlopen, request, timeout=10)
        with response:
            body = response.read().decode()
            assert response.status == 201
            assert response.headers["Content-Type"].startswith("application/sdp")
            assert re.fullmatch(r"/v1/realtime/calls/rtc_\w+", response.headers["Location"])
        assert body.startswith("v=0") and "webrtc-datachannel" in body
    finally:
        await pc.close()
    assert sim.sessions[-1].key_kind == "ephemeral"
