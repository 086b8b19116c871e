"""One model response: the GA event lifecycle, paced audio, transcripts and function calls.

It must not read client events or own the conversation; the session starts it with what
the brain said and cancels it, and it reports the items it produced back to the session.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hark_sim import audio, protocol
from hark_sim.brains import Call, ConvItem, Reply, Speech
from hark_sim.config import SimConfig
from hark_sim.outbox import Outbox
from hark_sim.protocol import JSON, new_id

log = logging.getLogger(__name__)


@dataclass
class ResponseSetup:
    """Everything a response needs to know, fixed when it is created."""

    response_id: str
    conversation_id: str | None  # None: out-of-band (conversation "none")
    output_modalities: list[str]
    audio_output: JSON
    max_output_tokens: Any
    metadata: JSON | None
    voice: str  # the espeak-ng voice synthesised speech uses
    input_audio_ms: int
    input_text_chars: int
    speed: float = 1.0  # session.audio.output.speed: synthesised and given audio is stretched


class ResponseRun:
    """Emits one response; ``cancel(reason)`` ends it early with status cancelled."""

    def __init__(
        self,
        setup: ResponseSetup,
        out: Outbox,
        sim: SimConfig,
        add_item: Callable[[ConvItem], str | None],
    ) -> None:
        self.setup = setup
        self.out = out
        self.sim = sim
        self._add_item = add_item
        self.cancel_reason: str | None = None
        self._cancelled = asyncio.Event()
        self.output: list[JSON] = []
        self.audio_ms = 0
        self.output_chars = 0
        self.limit_hit = False  # max_output_tokens reached: the response ends incomplete

    @property
    def id(self) -> str:
        return self.setup.response_id

    def cancel(self, reason: str) -> None:
        if self.cancel_reason is None:
            self.cancel_reason = reason
            self._cancelled.set()

    def _response(self, status: str) -> JSON:
        s = self.setup
        details: JSON | None = None
        if status == "cancelled":
            details = {"type": "cancelled", "reason": self.cancel_reason}
        elif status == "incomplete":
            details = {"type": "incomplete", "reason": "max_output_tokens"}
        usage = None
        if status != "in_progress":
            usage = protocol.usage(
                s.input_audio_ms, s.input_text_chars, self.audio_ms, self.output_chars
            )
        return {
            "object": "realtime.response",
            "id": s.response_id,
            "status": status,
            "status_details": details,
            "output": [protocol.public_item(i) for i in self.output]
            if status != "in_progress"
            else [],
            "conversation_id": s.conversation_id,
            "output_modalities": s.output_modalities,
            "max_output_tokens": s.max_output_tokens,
            "audio": {"output": s.audio_output},
            "usage": usage,
            "metadata": s.metadata,
        }

    async def run(self, reply: Reply) -> JSON:
        """Emit the whole response; returns the final ``response`` object."""
        self.out.inject_faults()
        self.out.put({"type": "response.created", "response": self._response("in_progress")})
        for index, part in enumerate(reply):
            if self.cancel_reason is not None or self.limit_hit:
                break
            if isinstance(part, Speech):
                await self._speech(index, part)
            else:
                await self._call(index, part)
        status = "completed"
        if self.cancel_reason is not None:
            status = "cancelled"
        elif self.limit_hit:
            status = "incomplete"
        final = self._response(status)
        self.out.put({"type": "response.done", "response": final})
        tokens = int(final["usage"]["total_tokens"]) if final["usage"] else 0
        self.out.put(protocol.rate_limits_event(tokens))
        return final

    def _ids(self, item_id: str, index: int) -> JSON:
        return {"response_id": self.id, "item_id": item_id, "output_index": index}

    def _begin_item(self, index: int, conv: ConvItem) -> str | None:
        item = conv.data
        self.out.put(
            {
                "type": "response.output_item.added",
                "response_id": self.id,
                "output_index": index,
                "item": protocol.public_item(item),
            }
        )
        previous = self._add_item(conv) if self.setup.conversation_id else None
        if self.setup.conversation_id:
            self.out.put(
                {
                    "type": "conversation.item.added",
                    "previous_item_id": previous,
                    "item": protocol.public_item(item),
                }
            )
        return previous

    def _end_item(self, index: int, item: JSON, previous: str | None) -> None:
        self.output.append(item)
        if self.setup.conversation_id:
            self.out.put(
                {
                    "type": "conversation.item.done",
                    "previous_item_id": previous,
                    "item": protocol.public_item(item),
                }
            )
        self.out.put(
            {
                "type": "response.output_item.done",
                "response_id": self.id,
                "output_index": index,
                "item": protocol.public_item(item),
            }
        )

    async def _speech(self, index: int, speech: Speech) -> None:
        text_only = self.setup.output_modalities == ["text"]
        pcm = b"" if text_only else speech.pcm
        if pcm is None:
            pcm = await asyncio.to_thread(audio.speak, speech.text, self.setup.voice)
        if self.setup.speed != 1.0 and pcm:
            pcm = audio.stretch(pcm, self.setup.speed)
        item_id = new_id("item")
        item: JSON = {
            "id": item_id,
            "type": "message",
            "status": "in_progress",
            "role": "assistant",
            "content": [],
        }
        conv = ConvItem(item)
        previous = self._begin_item(index, conv)
        ids = {**self._ids(item_id, index), "content_index": 0}
        key = "text" if text_only else "transcript"
        empty_part = {"type": "text" if text_only else "audio", key: ""}
        self.out.put({"type": "response.content_part.added", **ids, "part": empty_part})
        # The item holds its content part from here on and the text as it streams, so a
        # client may truncate it mid-reply (the Agents SDK's interrupt() does).
        content: JSON = {"type": "output_text" if text_only else "output_audio", key: ""}
        item["content"] = [content]
        said = await self._stream(ids, speech.text, pcm, text_only, content, conv)
        self.output_chars += len(said)
        if text_only:
            self.out.put({"type": "response.output_text.done", **ids, "text": said})
        else:
            self.out.put({"type": "response.output_audio.done", **ids})
            self.out.put(
                {"type": "response.output_audio_transcript.done", **ids, "transcript": said}
            )
        part = {**empty_part, key: said}
        self.out.put({"type": "response.content_part.done", **ids, "part": part})
        if not conv.cut:
            content[key] = said
        ended = self.cancel_reason is None and not self.limit_hit
        item["status"] = "completed" if ended else "incomplete"
        self._end_item(index, item, previous)

    def _over_limit(self, extra_audio_ms: int, extra_chars: int) -> bool:
        """Would this much more output pass ``max_output_tokens``? (Counted like ``usage``.)"""
        limit = self.setup.max_output_tokens
        if not isinstance(limit, int) or isinstance(limit, bool):
            return False  # "inf"
        tokens = (self.audio_ms + extra_audio_ms) // 100 + (self.output_chars + extra_chars) // 4
        return tokens > limit

    async def _stream(
        self, ids: JSON, text: str, pcm: bytes, text_only: bool, content: JSON, conv: ConvItem
    ) -> str:
        """Interleave transcript (or text) deltas with paced audio deltas; returns text sent.

        ``content`` (the item's part) follows the text until the client cuts ``conv``.
        """
        chunk_bytes = max(2, self.sim.audio_chunk_ms * audio.BYTES_PER_MS)
        words = [w + " " for w in text.split(" ")]
        words[-1] = words[-1][:-1]
        # Audio sets the rhythm (one chunk per step); text alone goes a word per step.
        n_chunks = max(1, -(-len(pcm) // chunk_bytes) if pcm else len(words))
        sent_words = 0
        said = ""
        loop = asyncio.get_running_loop()
        start = loop.time()
        delta_type = "response.output_text.delta"
        if not text_only:
            delta_type = "response.output_audio_transcript.delta"
        for i in range(n_chunks):
            target = start + i * self.sim.audio_chunk_ms / 1000 * self.sim.realtime_factor
            wait_s = target - loop.time()
            if wait_s > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._cancelled.wait(), timeout=wait_s)
            else:
                await asyncio.sleep(0)
            if self.cancel_reason is not None:
                break
            upto = len(words) if i == n_chunks - 1 else (len(words) * (i + 1)) // n_chunks
            delta = "".join(words[sent_words:upto])
            chunk_ms = len(pcm[i * chunk_bytes : (i + 1) * chunk_bytes]) // audio.BYTES_PER_MS
            if self._over_limit(chunk_ms, len(said) + len(delta)):
                self.limit_hit = True
                break
            sent_words = upto
            if delta:
                said += delta
                if not conv.cut:
                    content["text" if text_only else "transcript"] = said
                self.out.put({"type": delta_type, **ids, "delta": delta})
            chunk = pcm[i * chunk_bytes : (i + 1) * chunk_bytes]
            if chunk:
                self.audio_ms += len(chunk) // audio.BYTES_PER_MS
                self.out.put(
                    {
                        "type": "response.output_audio.delta",
                        **ids,
                        "delta": base64.b64encode(chunk).decode("ascii"),
                    },
                    audio=chunk,
                )
        return said

    async def _call(self, index: int, call: Call) -> None:
        if self._over_limit(0, len(call.arguments)):
            self.limit_hit = True  # a call is all or nothing: it is not started
            return
        item_id, call_id = new_id("item"), new_id("call")
        item: JSON = {
            "id": item_id,
            "type": "function_call",
            "status": "in_progress",
            "name": call.name,
            "call_id": call_id,
            "arguments": "",
        }
        previous = self._begin_item(index, ConvItem(item))
        ids = {**self._ids(item_id, index), "call_id": call_id}
        step = max(1, len(call.arguments) // 3)
        for i in range(0, len(call.arguments), step):
            self.out.put(
                {
                    "type": "response.function_call_arguments.delta",
                    **ids,
                    "delta": call.arguments[i : i + step],
                }
            )
            await asyncio.sleep(0)
        self.out.put(
            {
                "type": "response.function_call_arguments.done",
                **ids,
                "name": call.name,
                "arguments": call.arguments,
            }
        )
        item["arguments"] = call.arguments
        item["status"] = "completed"
        self.output_chars += len(call.arguments)
        self._end_item(index, item, previous)
