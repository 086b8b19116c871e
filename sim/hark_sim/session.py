"""The per-connection state machine: session config, input buffer, turns, conversation.

It must not touch the socket directly (everything leaves through the ``Outbox``) and
must not produce response content (the brain and ``ResponseRun`` do).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import copy
import logging
from typing import Any

from hark_sim import audio, protocol
from hark_sim.brains import Brain, Call, ConvItem
from hark_sim.config import SimConfig
from hark_sim.outbox import Outbox, SessionRecord
from hark_sim.protocol import JSON, new_id
from hark_sim.responder import ResponseRun, ResponseSetup
from hark_sim.schema import (
    ITEM,
    Num,
    ProtocolError,
    beta_error,
    check_model_fit,
    check_response_params,
    check_session,
)
from hark_sim.turns import TurnsMixin

log = logging.getLogger(__name__)

MIN_COMMIT_MS = 100
# Top-level fields each client event may carry besides ``type`` and ``event_id``.
EVENT_FIELDS: dict[str, frozenset[str]] = {
    "session.update": frozenset({"session"}),
    "session.close": frozenset(),
    "input_audio_buffer.append": frozenset({"audio"}),
    "input_audio_buffer.commit": frozenset(),
    "input_audio_buffer.clear": frozenset(),
    "conversation.item.create": frozenset({"item", "previous_item_id"}),
    "conversation.item.truncate": frozenset({"item_id", "content_index", "audio_end_ms"}),
    "conversation.item.delete": frozenset({"item_id"}),
    "conversation.item.retrieve": frozenset({"item_id"}),
    "response.create": frozenset({"response"}),
    "response.cancel": frozenset({"response_id"}),
}


class RealtimeSession(TurnsMixin):
    """State of one Realtime session; ``handle`` is called once per client event."""

    def __init__(
        self, sim: SimConfig, record: SessionRecord, out: Outbox, brain: Brain, config: JSON
    ) -> None:
        self.sim = sim
        self.record = record
        self.out = out
        self.brain = brain
        self.config = config
        self.conversation_id = new_id("conv")
        self.items: list[ConvItem] = []
        self.response: ResponseRun | None = None
        self._response_task: asyncio.Task[JSON] | None = None
        self._seen: set[str] = set()  # item ids the brain has already been shown
        self.closing: tuple[int, str] | None = None
        self.spoke = False  # assistant audio was written: the voice is fixed
        self.init_turns()

    # ---- plumbing -------------------------------------------------------------------

    def find(self, item_id: str) -> ConvItem | None:
        return next((i for i in self.items if i.data.get("id") == item_id), None)

    def emit_error(self, err: ProtocolError, client_event_id: str | None) -> None:
        self.out.put(
            protocol.error_event(
                err.message, err.code, param=err.param, client_event_id=client_event_id
            )
        )
        if err.close_code is not None:
            self.closing = (err.close_code, f"invalid_request_error.{err.code}")

    def add_item(
        self, item: ConvItem, previous_id: str | None = None, at_root: bool = False
    ) -> str | None:
        """Insert ``item`` after ``previous_id``, first or last; return its predecessor."""
        if at_root:
            self.items.insert(0, item)
            return None
        if previous_id is not None:
            for pos, existing in enumerate(self.items):
                if existing.data.get("id") == previous_id:
                    self.items.insert(pos + 1, item)
                    return previous_id
        last = self.items[-1].data.get("id") if self.items else None
        self.items.append(item)
        return str(last) if last is not None else None

    def on_audio_written(self, item_id: str, pcm: bytes) -> None:
        item = self.find(item_id)
        if item is not None and not item.cut:
            item.audio += pcm
        self.spoke = True

    def effective_turn_detection(self) -> JSON | None:
        td = self.config["audio"]["input"]["turn_detection"]
        return td if isinstance(td, dict) else None

    # ---- dispatch -------------------------------------------------------------------

    async def handle(self, event: Any) -> None:
        """Answer one parsed client event; errors become ``error`` events."""
        client_event_id = event.get("event_id") if isinstance(event, dict) else None
        if not isinstance(client_event_id, str):
            client_event_id = None
        try:
            await self._dispatch(event)
        except ProtocolError as err:
            self.emit_error(err, client_event_id)

    async def _dispatch(self, event: Any) -> None:
        if not isinstance(event, dict):
            raise ProtocolError("Invalid event: expected a JSON object.", "invalid_event")
        kind = event.get("type")
        if kind in protocol.BETA_EVENT_TYPES:
            raise beta_error()
        if not isinstance(kind, str):
            raise ProtocolError(
                "Missing required parameter: 'type'.", "missing_required_parameter", "type"
            )
        if kind not in EVENT_FIELDS:
            listed = ", ".join(f"'{t}'" for t in protocol.CLIENT_EVENT_TYPES)
            raise ProtocolError(
                f"Invalid value: '{kind}'. Supported values are: {listed}.", "invalid_value", "type"
            )
        for key in event:
            if key not in EVENT_FIELDS[kind] and key not in ("type", "event_id"):
                raise ProtocolError(f"Unknown parameter: '{key}'.", "unknown_parameter", key)
        handler = getattr(self, "on_" + kind.replace(".", "_"))
        await handler(event)

    # ---- session --------------------------------------------------------------------

    async def on_session_update(self, event: JSON) -> None:
        session = event.get("session")
        if session is None:
            raise ProtocolError(
                "Missing required parameter: 'session'.", "missing_required_parameter", "session"
            )
        self._refuse_unknown_fields(session)
        check_session(session)
        if "model" in session and session["model"] != self.config["model"]:
            raise ProtocolError(
                "Cannot update a session's model.", "invalid_value", "session.model"
            )
        voice = ((session.get("audio") or {}).get("output") or {}).get("voice")
        if self.spoke and voice is not None and voice != self.config["audio"]["output"]["voice"]:
            raise ProtocolError(
                "Cannot update a conversation's voice if assistant audio is present.",
                "cannot_update_voice",
                "session.audio.output.voice",
            )
        update = {k: v for k, v in session.items() if k != "type"}
        merged = protocol.deep_merge(self.config, update)
        check_model_fit(merged, str(self.config["model"]))
        self.config = merged
        self.reconfigure_turns()
        self.out.put({"type": "session.updated", "session": copy.deepcopy(self.config)})

    async def on_session_close(self, event: JSON) -> None:
        """End the session gracefully: the reply in flight finishes, then close 1000.

        openai documents ``session.close`` only for translation sessions ("flushes pending
        input audio and emits any remaining output before closing the session"), yet the
        GA realtime server lists it among the types it accepts. What it does for a realtime
        session is UNCONFIRMED; this follows the documented meaning. No ``session.closed``
        is sent: that event exists only in the translation server events.
        """
        task = self._response_task
        if task is not None and not task.done():
            await asyncio.shield(task)
        log.info("session %s: closed by session.close", self.record.id)
        self.closing = (1000, "session.close")

    def _refuse_unknown_fields(self, session: Any) -> None:
        """The ``unknown_session_fields`` fault: fields this server pretends not to know."""
        for dotted in sorted(self.sim.faults.unknown_session_fields):
            node = session
            for key in dotted.split("."):
                if not isinstance(node, dict) or key not in node:
                    break
                node = node[key]
            else:
                raise ProtocolError(
                    f"Unknown parameter: 'session.{dotted}'.",
                    "unknown_parameter",
                    f"session.{dotted}",
                )

    # ---- input audio buffer ---------------------------------------------------------

    async def on_input_audio_buffer_append(self, event: JSON) -> None:
        b64 = event.get("audio")
        if not isinstance(b64, str):
            raise ProtocolError(
                "Missing required parameter: 'audio'.", "missing_required_parameter", "audio"
            )
        try:
            pcm = base64.b64decode(b64, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ProtocolError(
                "Invalid 'audio': not valid base64.", "invalid_value", "audio"
            ) from exc
        if len(pcm) % 2 and self.input_format() == "audio/pcm":
            # UNCONFIRMED what the real server does with half a PCM16 sample (no capture
            # shows it). This is the closest documented answer: the error OpenAI gave for
            # audio it could not take ("Expected base64-encoded audio bytes (mono PCM16 at
            # 24kHz) but got an invalid value", Azure-Samples/aoai-realtime-audio-sdk#95),
            # non-fatal, and nothing of the event is appended.
            raise ProtocolError(
                "Invalid 'audio'. Expected base64-encoded audio bytes (mono PCM16 at 24kHz) "
                f"but got an invalid value: {len(pcm)} bytes is not a whole number of "
                "16-bit samples.",
                "invalid_value",
                "audio",
            )
        await self.append_audio(pcm)

    async def on_input_audio_buffer_commit(self, event: JSON) -> None:
        have_ms = audio.ms_of(len(self.buffer), self.input_format())
        if have_ms < MIN_COMMIT_MS:
            raise ProtocolError(
                "Error committing input audio buffer: buffer too small. Expected at least "
                f"{MIN_COMMIT_MS}ms of audio, but buffer only has {have_ms:.2f}ms of audio.",
                "input_audio_buffer_commit_empty",
            )
        self.commit_buffer(len(self.buffer))

    async def on_input_audio_buffer_clear(self, event: JSON) -> None:
        self.clear_buffer()
        self.out.put({"type": "input_audio_buffer.cleared"})

    # ---- conversation ---------------------------------------------------------------

    async def on_conversation_item_create(self, event: JSON) -> None:
        raw = event.get("item")
        if raw is None:
            raise ProtocolError(
                "Missing required parameter: 'item'.", "missing_required_parameter", "item"
            )
        ITEM.check(raw, "item")
        item = copy.deepcopy(raw)
        if item.get("id") is not None and self.find(str(item["id"])) is not None:
            raise ProtocolError(
                f"Item with id '{item['id']}' already exists.", "item_already_exists", "item.id"
            )
        previous = event.get("previous_item_id")
        if previous is not None and previous != "root" and self.find(str(previous)) is None:
            raise ProtocolError(
                f"Previous item with id '{previous}' not found.",
                "invalid_value",
                "previous_item_id",
            )
        item.setdefault("id", new_id("item"))
        item.pop("object", None)  # GA items come back without it (captured traffic)
        item["status"] = "completed"
        pcm = b""
        for part in item.get("content", []) or []:
            if part.get("type") == "input_audio":
                try:
                    pcm += base64.b64decode(part.get("audio") or "", validate=True)
                except (binascii.Error, ValueError) as exc:
                    raise ProtocolError(
                        "Invalid 'item.content.audio': not valid base64.",
                        "invalid_value",
                        "item.content.audio",
                    ) from exc
                part.setdefault("transcript", None)
        conv = ConvItem(item, pcm)
        before = self.add_item(
            conv, None if previous in (None, "root") else str(previous), at_root=previous == "root"
        )
        public = protocol.public_item(item)
        self.out.put(
            {"type": "conversation.item.added", "previous_item_id": before, "item": public}
        )
        self.out.put({"type": "conversation.item.done", "previous_item_id": before, "item": public})

    def _require_item(self, event: JSON) -> ConvItem:
        item_id = event.get("item_id")
        if not isinstance(item_id, str):
            raise ProtocolError(
                "Missing required parameter: 'item_id'.", "missing_required_parameter", "item_id"
            )
        item = self.find(item_id)
        if item is None:
            raise ProtocolError(
                f"Item with item_id '{item_id}' not found.", "item_not_found", "item_id"
            )
        return item

    async def on_conversation_item_retrieve(self, event: JSON) -> None:
        item = self._require_item(event)
        full = copy.deepcopy(item.data)
        for part in full.get("content", []) or []:
            if part.get("type") in ("input_audio", "output_audio"):
                part["audio"] = base64.b64encode(item.audio).decode("ascii")
        self.out.put({"type": "conversation.item.retrieved", "item": full})

    async def on_conversation_item_delete(self, event: JSON) -> None:
        item = self._require_item(event)
        self.items.remove(item)
        self.out.put({"type": "conversation.item.deleted", "item_id": item.data["id"]})

    async def on_conversation_item_truncate(self, event: JSON) -> None:
        for name in ("item_id", "content_index", "audio_end_ms"):
            if name not in event:
                raise ProtocolError(
                    f"Missing required parameter: '{name}'.", "missing_required_parameter", name
                )
        Num(0, None, integer=True).check(event["content_index"], "content_index")
        Num(0, None, integer=True).check(event["audio_end_ms"], "audio_end_ms")
        item = self._require_item(event)
        content = item.data.get("content") or []
        if item.data.get("role") != "assistant" or not any(
            p.get("type") == "output_audio" for p in content
        ):
            raise ProtocolError(
                "Only assistant messages with audio can be truncated.", "invalid_value", "item_id"
            )
        if event["content_index"] >= len(content):
            raise ProtocolError(
                f"Invalid 'content_index': item has {len(content)} content parts.",
                "invalid_value",
                "content_index",
            )
        have_ms = len(item.audio) // audio.BYTES_PER_MS
        end_ms = int(event["audio_end_ms"])
        if end_ms > have_ms:
            raise ProtocolError(
                f"Audio content of {have_ms}ms is already shorter than {end_ms}ms",
                "invalid_value",
                "audio_end_ms",
            )
        item.audio = item.audio[: end_ms * audio.BYTES_PER_MS]
        item.cut = True
        content[event["content_index"]]["transcript"] = ""
        self.out.put(
            {
                "type": "conversation.item.truncated",
                "item_id": item.data["id"],
                "content_index": event["content_index"],
                "audio_end_ms": end_ms,
            }
        )

    # ---- responses ------------------------------------------------------------------

    async def on_response_create(self, event: JSON) -> None:
        params = event.get("response") or {}
        check_response_params(params)
        if self.response is not None:
            raise ProtocolError(
                f"Conversation already has an active response in progress: {self.response.id}. "
                "Wait until the response is finished before creating a new one.",
                "conversation_already_has_active_response",
            )
        self.start_response(params)

    async def on_response_cancel(self, event: JSON) -> None:
        wanted = event.get("response_id")
        if self.response is None or (wanted is not None and wanted != self.response.id):
            raise ProtocolError(
                "Cancellation failed: no active response found", "response_cancel_not_active"
            )
        await self.cancel_response("client_cancelled")

    def start_response(self, params: JSON) -> None:
        """Ask the brain and run the response in the background."""
        cfg = self.config
        out_audio = copy.deepcopy(cfg["audio"]["output"])
        out_audio.pop("speed", None)
        out_audio.update((params.get("audio") or {}).get("output") or {})
        in_band = params.get("conversation", "auto") != "none"
        new_items = [i for i in self.items if str(i.data.get("id")) not in self._seen]
        self._seen.update(str(i.data.get("id")) for i in self.items)
        steered = self.sim.call_next.pop(0) if self.sim.call_next else None
        if steered is not None:
            reply: list[Any] = [Call(*steered)]
        else:
            reply = self.brain.reply(list(self.items), list(new_items))
        setup = ResponseSetup(
            response_id=new_id("resp"),
            conversation_id=self.conversation_id if in_band else None,
            output_modalities=list(params.get("output_modalities") or cfg["output_modalities"]),
            audio_output=out_audio,
            max_output_tokens=params.get("max_output_tokens", cfg["max_output_tokens"]),
            metadata=params.get("metadata"),
            voice=audio.espeak_voice(self.brain.voice, out_audio.get("voice")),
            speed=float(cfg["audio"]["output"].get("speed") or 1.0),
            input_audio_ms=sum(len(i.audio) for i in self.items) // audio.BYTES_PER_MS,
            input_text_chars=sum(len(str(i.data.get("content", ""))) for i in self.items),
        )
        run = ResponseRun(setup, self.out, self.sim, self._add_response_item)
        self.response = run
        self._response_task = asyncio.create_task(self._run_response(run, reply))

    def _add_response_item(self, item: ConvItem) -> str | None:
        self._seen.add(str(item.data.get("id")))
        return self.add_item(item)

    async def _run_response(self, run: ResponseRun, reply: list[Any]) -> JSON:
        try:
            final = await run.run(reply)
        finally:
            self.response = None
        log.info(
            "session %s: response %s %s (%d ms audio)",
            self.record.id,
            run.id,
            final["status"],
            run.audio_ms,
        )
        self.response_finished(run.audio_ms)
        return final

    async def cancel_response(self, reason: str) -> None:
        """Cancel the active response and wait for its ``response.done``."""
        run, task = self.response, self._response_task
        if run is None or task is None:
            return
        run.cancel(reason)
        await asyncio.shield(task)

    async def shutdown(self) -> None:
        self.stop_turns()
        if self._response_task is not None and not self._response_task.done():
            self._response_task.cancel()
