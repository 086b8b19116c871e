"""User turns of one session: the input audio buffer, VAD-driven commits and idle timeouts.

It must not build responses or parse client events; it is the buffer half of
``RealtimeSession`` (a mixin), turning appended audio into committed user items.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from hark_sim import audio, protocol
from hark_sim.brains import ConvItem
from hark_sim.outbox import Outbox, SessionRecord
from hark_sim.protocol import JSON, new_id
from hark_sim.vad import TurnDetector

log = logging.getLogger(__name__)

# With VAD on and nobody speaking, keep at most this much buffered audio.
MAX_IDLE_BUFFER_MS = 30_000


class TurnsMixin:
    """Input buffer and turn detection; expects the attributes declared below."""

    out: Outbox
    record: SessionRecord
    config: JSON
    items: list[ConvItem]

    def init_turns(self) -> None:
        self.buffer = bytearray()
        self.total_bytes = 0  # every byte appended this session
        self.detector: TurnDetector | None = None
        self.speech_item_id: str | None = None
        self.speech_start_ms = 0
        self._idle_task: asyncio.Task[None] | None = None
        self.reconfigure_turns()

    # hooks the session provides
    def add_item(
        self, item: ConvItem, previous_id: str | None = None, at_root: bool = False
    ) -> str | None:
        raise NotImplementedError

    def effective_turn_detection(self) -> JSON | None:
        raise NotImplementedError

    def start_response(self, params: JSON) -> None:
        raise NotImplementedError

    async def cancel_response(self, reason: str) -> None:
        raise NotImplementedError

    @property
    def responding(self) -> bool:
        return getattr(self, "response", None) is not None

    # ---- configuration --------------------------------------------------------------

    def input_format(self) -> str:
        return str(self.config["audio"]["input"]["format"].get("type", "audio/pcm"))

    def reconfigure_turns(self) -> None:
        td = self.effective_turn_detection()
        if td is None or self.input_format() != "audio/pcm":
            self.detector = None
            self.speech_item_id = None
            self._cancel_idle()
            return
        if self.detector is None:
            self.detector = TurnDetector(td)
            self.detector.skip(self.total_bytes)
        else:
            self.detector.configure(td)

    @property
    def buffer_start_ms(self) -> int:
        return (self.total_bytes - len(self.buffer)) // audio.BYTES_PER_MS

    # ---- buffer ---------------------------------------------------------------------

    async def append_audio(self, pcm: bytes) -> None:
        self.buffer += pcm
        self.total_bytes += len(pcm)
        if self.detector is None:
            return
        for event in self.detector.feed(pcm, self.buffer_start_ms):
            if event.kind == "started":
                await self._speech_started(event.ms)
            else:
                self._speech_stopped(event.ms)
        if not self.detector.in_speech:
            excess = len(self.buffer) - MAX_IDLE_BUFFER_MS * audio.BYTES_PER_MS
            if excess > 0:
                del self.buffer[:excess]

    def clear_buffer(self) -> None:
        self.buffer.clear()
        self.speech_item_id = None
        if self.detector is not None:
            self.detector.reset_turn()

    def commit_buffer(self, nbytes: int) -> None:
        """Manual commit of the whole buffer (``input_audio_buffer.commit``)."""
        item_id = self.speech_item_id or new_id("item")
        if self.detector is not None:
            self.detector.reset_turn()
        self._commit_segment(0, nbytes, item_id)

    def _offset(self, ms: int) -> int:
        start_bytes = self.total_bytes - len(self.buffer)
        return max(0, min(len(self.buffer), ms * audio.BYTES_PER_MS - start_bytes))

    def _commit_segment(self, start: int, end: int, item_id: str) -> None:
        pcm = bytes(self.buffer[start:end])
        del self.buffer[:end]
        self.speech_item_id = None
        item: JSON = {
            "id": item_id,
            "type": "message",
            "status": "completed",
            "role": "user",
            "content": [{"type": "input_audio", "transcript": None}],
        }
        previous = self.add_item(ConvItem(item, pcm))
        self.out.put(
            {
                "type": "input_audio_buffer.committed",
                "previous_item_id": previous,
                "item_id": item_id,
            }
        )
        self.out.put(
            {"type": "conversation.item.added", "previous_item_id": previous, "item": item}
        )
        self.out.put({"type": "conversation.item.done", "previous_item_id": previous, "item": item})
        seconds = len(pcm) / audio.BYTES_PER_MS / 1000
        log.info("session %s: user turn committed (%.2f s)", self.record.id, seconds)
        transcription = self.config["audio"]["input"].get("transcription")
        if transcription:
            text = f"({seconds:.2f} seconds of audio)"
            ids: dict[str, Any] = {"item_id": item_id, "content_index": 0}
            self.out.put(
                {"type": "conversation.item.input_audio_transcription.delta", **ids, "delta": text}
            )
            self.out.put(
                {
                    "type": "conversation.item.input_audio_transcription.completed",
                    **ids,
                    "transcript": text,
                    "usage": protocol.transcription_usage(
                        str(transcription.get("model") or ""), len(pcm) // audio.BYTES_PER_MS, text
                    ),
                }
            )

    # ---- VAD ------------------------------------------------------------------------

    async def _speech_started(self, start_ms: int) -> None:
        self._cancel_idle()
        self.speech_item_id = new_id("item")
        self.speech_start_ms = start_ms
        self.out.put(
            {
                "type": "input_audio_buffer.speech_started",
                "audio_start_ms": start_ms,
                "item_id": self.speech_item_id,
            }
        )
        td = self.effective_turn_detection() or {}
        if td.get("interrupt_response", True) and self.responding:
            await self.cancel_response("turn_detected")

    def _speech_stopped(self, end_ms: int) -> None:
        item_id = self.speech_item_id or new_id("item")
        self.out.put(
            {
                "type": "input_audio_buffer.speech_stopped",
                "audio_end_ms": end_ms,
                "item_id": item_id,
            }
        )
        self._commit_segment(self._offset(self.speech_start_ms), self._offset(end_ms), item_id)
        td = self.effective_turn_detection() or {}
        if td.get("create_response", True) and not self.responding:
            self.start_response({})

    # ---- idle timeout ---------------------------------------------------------------

    def response_finished(self, audio_ms: int) -> None:
        """Arm ``idle_timeout_ms`` (server_vad): it counts from the end of playback."""
        td = self.effective_turn_detection() or {}
        idle_ms = td.get("idle_timeout_ms")
        if td.get("type") != "server_vad" or not idle_ms:
            return
        self._cancel_idle()
        self._idle_task = asyncio.create_task(self._idle((audio_ms + int(idle_ms)) / 1000))

    async def _idle(self, delay_s: float) -> None:
        await asyncio.sleep(delay_s)
        self._idle_task = None
        if self.responding or (self.detector is not None and self.detector.in_speech):
            return
        item_id = new_id("item")
        self.out.put(
            {
                "type": "input_audio_buffer.timeout_triggered",
                "audio_start_ms": self.buffer_start_ms,
                "audio_end_ms": self.total_bytes // audio.BYTES_PER_MS,
                "item_id": item_id,
            }
        )
        if self.detector is not None:
            self.detector.reset_turn()
        self._commit_segment(0, len(self.buffer), item_id)
        td = self.effective_turn_detection() or {}
        if td.get("create_response", True):
            self.start_response({})

    def _cancel_idle(self) -> None:
        task = getattr(self, "_idle_task", None)
        if task is not None and not task.done():
            task.cancel()
        self._idle_task = None

    def stop_turns(self) -> None:
        self._cancel_idle()
        with contextlib.suppress(Exception):
            self.buffer.clear()
