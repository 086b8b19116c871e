"""The brains: parrot replies, and the script brain's speech and function-call round trip."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from hark_sim import SimConfig, SimHandle, start_sim
from hark_sim.brains import ConvItem, ParrotBrain, Speech, load_scenario

from tests.sim.helpers import audio_of, check_server_event, connect, types_of

SCENARIO = """
fallback = "No more lines."

[[turns]]
say = "Hello, I am the kitchen."

[[turns]]
say = "Setting a timer."
calls = [{ name = "set_timer", arguments = { seconds = 300 } }]
after = "Timer set: {output}"
"""


@pytest.fixture
def script_sim(tmp_path: Path) -> Iterator[SimHandle]:
    path = tmp_path / "scenario.toml"
    path.write_text(SCENARIO)
    cfg = SimConfig(api_key="sk-sim-test", brain="script", script=path, realtime_factor=0.0)
    with start_sim(cfg) as sim:
        yield sim
    for record in sim.sessions:
        for event in record.sent:
            check_server_event(event)


def _user_text(text: str) -> dict[str, object]:
    return {
        "type": "conversation.item.create",
        "item": {
            "type": "message",
            "role": "user",
            "content": [{"type": "input_text", "text": text}],
        },
    }


def _transcript(events: list[dict[str, object]]) -> str:
    done = [e for e in events if e["type"] == "response.output_audio_transcript.done"]
    return str(done[0]["transcript"]) if done else ""


async def test_script_function_call_round_trip(script_sim: SimHandle) -> None:
    """The script speaks, calls a function, then speaks about the tool output it gets."""
    async with connect(script_sim) as c:
        await c.send(_user_text("hi"))
        await c.send({"type": "response.create"})
        first = await c.until("response.done")
        assert _transcript(first) == "Hello, I am the kitchen."
        assert audio_of(first)  # spoken (espeak-ng or a tone)

        await c.send(_user_text("set a timer"))
        await c.send({"type": "response.create"})
        second = await c.until("response.done")
        kinds = types_of(second)
        args_done = next(e for e in second if e["type"] == "response.function_call_arguments.done")
        assert args_done["name"] == "set_timer"
        assert json.loads(str(args_done["arguments"])) == {"seconds": 300}
        deltas = "".join(
            str(e["delta"]) for e in second if e["type"] == "response.function_call_arguments.delta"
        )
        assert deltas == args_done["arguments"]
        items = [e["item"] for e in second if e["type"] == "response.output_item.done"]
        call_item = next(i for i in items if i["type"] == "function_call")  # type: ignore[index]
        assert call_item["status"] == "completed"  # type: ignore[index]
        assert kinds.index("response.function_call_arguments.done") < kinds.index("response.done")
        output = second[-1]["response"]["output"]  # type: ignore[index]
        assert [o["type"] for o in output] == ["message", "function_call"]

        await c.send(
            {
                "type": "conversation.item.create",
                "item": {
                    "type": "function_call_output",
                    "call_id": args_done["call_id"],
                    "output": "ok",
                },
            }
        )
        await c.send({"type": "response.create"})
        third = await c.until("response.done")
        assert _transcript(third) == "Timer set: ok"

        await c.send(_user_text("more"))
        await c.send({"type": "response.create"})
        assert _transcript(await c.until("response.done")) == "No more lines."


def test_scenario_arguments_may_be_json_strings(tmp_path: Path) -> None:
    """A call's arguments may be given as a JSON string; bad files raise ValueError."""
    path = tmp_path / "s.toml"
    path.write_text('[[turns]]\ncalls = [{ name = "f", arguments = "{\\"a\\": 1}" }]\n')
    assert load_scenario(path).turns[0].calls[0].arguments == '{"a": 1}'
    path.write_text("[[turns]\n")
    with pytest.raises(ValueError, match="bad scenario"):
        load_scenario(path)


def test_parrot_repeats_the_latest_user_turn() -> None:
    """Parrot answers the newest user item: its audio verbatim, with the duration said."""
    pcm = b"\x01\x00" * 36000
    items = [
        ConvItem({"type": "message", "role": "user", "content": []}, b"\x00\x00" * 100),
        ConvItem({"type": "message", "role": "user", "content": [{"type": "input_audio"}]}, pcm),
    ]
    reply = ParrotBrain().reply(items, items[1:])
    assert reply == [Speech("You spoke for 1.50 seconds.", pcm)]


def test_bundled_scenario_loads() -> None:
    """The example scenario shipped with the package is valid."""
    path = Path(__file__).resolve().parents[2] / "sim/hark_sim/scenarios/kitchen.toml"
    scenario = load_scenario(path)
    assert scenario.turns[1].calls[0].name == "set_timer"


def test_bundled_scenario_by_name() -> None:
    """A bare name finds the bundled scenario file."""
    assert load_scenario("kitchen").turns[0].say.startswith("Hello!")
