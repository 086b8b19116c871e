"""Function tools: schemas from hints and docstrings, validation, sync/async, timeouts, errors."""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Annotated, Literal

import pytest
from hark.agents.tools import (
    EndConversation,
    FunctionTool,
    RunContext,
    ToolContext,
    function_tool,
    parse_docstring,
)
from pydantic import BaseModel, Field


def ctx() -> ToolContext[None]:
    return ToolContext(None, tool_name="t", tool_call_id="call_1")


@function_tool
def set_timer(
    minutes: Annotated[int, Field(ge=1, le=120)],
    label: str = "timer",
    unit: Literal["min", "s"] = "min",
) -> dict[str, object]:
    """Start a kitchen timer.

    Args:
        minutes: How long it runs.
        label (str): What the timer is for,
            e.g. pasta.

    Returns:
        The timer.
    """
    return {"minutes": minutes, "label": label, "unit": unit}


def test_schema_from_hints_and_docstring() -> None:
    """Types, constraints, defaults and Args descriptions become a closed JSON schema."""
    assert isinstance(set_timer, FunctionTool)
    assert set_timer.name == "set_timer"
    assert set_timer.description == "Start a kitchen timer."
    schema = set_timer.params_json_schema
    assert schema["type"] == "object"
    assert schema["additionalProperties"] is False
    assert schema["required"] == ["minutes"]
    props = schema["properties"]
    assert props["minutes"] == {
        "type": "integer",
        "minimum": 1,
        "maximum": 120,
        "description": "How long it runs.",
    }
    assert props["label"]["description"] == "What the timer is for, e.g. pasta."
    assert props["label"]["default"] == "timer"
    assert props["unit"]["enum"] == ["min", "s"]
    assert "title" not in json.dumps(schema)
    spec = set_timer.spec()
    assert (spec.name, spec.description, spec.parameters) == (
        "set_timer",
        set_timer.description,
        schema,
    )


def test_decorator_options() -> None:
    """name_override, description, timeout_s and needs_approval are kept on the tool."""

    @function_tool(name_override="lights", description="Lights on or off.", timeout_s=2.0)
    def switch(on: bool) -> str:
        return "ok"

    @function_tool(needs_approval=True)
    def unlock_door() -> str:
        """Unlock the front door."""
        return "unlocked"

    assert (switch.name, switch.description, switch.timeout_s) == (
        "lights",
        "Lights on or off.",
        2.0,
    )
    assert unlock_door.needs_approval and not switch.needs_approval
    assert unlock_door.params_json_schema["properties"] == {}
    assert switch("x") == "ok"  # still callable as the function


def test_context_parameter_is_hidden_from_the_model() -> None:
    """A first parameter typed ToolContext receives the call and is not in the schema."""
    seen: list[str] = []

    @function_tool
    def whoami(context: ToolContext[str], loud: bool = False) -> str:
        seen.append(f"{context.context}/{context.tool_call_id}")
        return "me"

    assert whoami.takes_context
    assert list(whoami.params_json_schema["properties"]) == ["loud"]
    result = asyncio.run(whoami.invoke(ToolContext("owner", tool_call_id="c9"), "{}"))
    assert result.output == "me"
    assert seen == ["owner/c9"]


def test_parse_docstring_sections() -> None:
    """Description stops at the first section; wrapped arg lines join; other sections ignored."""
    text, args = parse_docstring(
        """Do a thing.

        More detail.

        Args:
            a: First one.
            b (int): Second,
                continued.
        Raises:
            ValueError: never.
        """
    )
    assert text == "Do a thing. More detail."
    assert args == {"a": "First one.", "b": "Second, continued."}
    assert parse_docstring(None) == ("", {})


async def test_valid_call_runs_and_returns_json() -> None:
    """Validated arguments reach the function; a dict result becomes JSON."""
    result = await set_timer.invoke(ctx(), '{"minutes": 5, "label": "eggs"}')
    assert not result.error
    assert json.loads(result.output) == {"minutes": 5, "label": "eggs", "unit": "min"}


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        ('{"minutes": 500}', "minutes"),
        ('{"minutes": "soon"}', "minutes"),
        ("{}", "minutes: Field required"),
        ('{"minutes": 5, "colour": "red"}', "colour"),
        ("not json", "Invalid JSON"),
    ],
)
async def test_bad_arguments_become_an_error_output(arguments: str, expected: str) -> None:
    """Out-of-range, wrong-type, missing, extra and malformed arguments never reach the function."""
    result = await set_timer.invoke(ctx(), arguments)
    assert result.error
    message = json.loads(result.output)["error"]
    assert message.startswith("invalid arguments for set_timer")
    assert expected in message


async def test_sync_tools_run_off_the_loop_and_async_on_it() -> None:
    """A sync function runs in a worker thread; a coroutine function on the loop's thread."""
    loop_thread = threading.get_ident()
    threads: dict[str, int] = {}

    @function_tool
    def blocking() -> str:
        threads["sync"] = threading.get_ident()
        return "s"

    @function_tool
    async def cooperative() -> str:
        threads["async"] = threading.get_ident()
        await asyncio.sleep(0)
        return "a"

    assert (await blocking.invoke(ctx(), "")).output == "s"
    assert (await cooperative.invoke(ctx(), "")).output == "a"
    assert threads["sync"] != loop_thread
    assert threads["async"] == loop_thread


async def test_slow_tools_time_out() -> None:
    """A tool past its timeout yields a timeout output, sync or async."""
    release = threading.Event()

    @function_tool(timeout_s=0.05)
    async def slow_async() -> str:
        await asyncio.sleep(60)
        return "late"

    @function_tool
    def slow_sync() -> str:
        release.wait(60)
        return "late"

    result = await slow_async.invoke(ctx(), "{}")
    assert result.error and "did not finish within 0.05 s" in result.output
    result = await slow_sync.invoke(ctx(), "{}", default_timeout_s=0.05)
    release.set()
    assert result.error and "slow_sync did not finish" in result.output


async def test_a_raising_tool_reports_the_error() -> None:
    """An exception in the tool becomes an error output naming it."""

    @function_tool
    def broken() -> str:
        raise RuntimeError("relay stuck")

    result = await broken.invoke(ctx(), "{}")
    assert result.error
    assert json.loads(result.output) == {"error": "broken failed: RuntimeError: relay stuck"}


async def test_result_conversions_and_end_marker() -> None:
    """None, models and EndConversation are turned into outputs; the marker is flagged."""

    class Reading(BaseModel):
        celsius: float

    @function_tool
    def nothing() -> None:
        return None

    @function_tool
    def reading() -> Reading:
        return Reading(celsius=21.5)

    @function_tool
    def bye() -> EndConversation:
        return EndConversation()

    assert (await nothing.invoke(ctx(), "")).output == '{"ok": true}'
    assert json.loads((await reading.invoke(ctx(), "")).output) == {"celsius": 21.5}
    end = await bye.invoke(ctx(), "")
    assert end.end_conversation and not end.error


def test_invalid_definitions_fail_early() -> None:
    """Bad tool names and *args are refused when the tool is defined, not when called."""
    with pytest.raises(ValueError, match="tool name"):
        function_tool(name_override="has space")(lambda: None)

    def variadic(*items: str) -> None: ...

    with pytest.raises(TypeError, match=r"\*args"):
        function_tool(variadic)


def test_run_context_is_generic_holder() -> None:
    """RunContext carries the owner's context object untouched."""
    assert RunContext({"k": 1}).context == {"k": 1}


async def test_a_cancel_that_lands_as_the_tool_finishes_is_not_lost() -> None:
    """A barge-in cancels the call in the same loop pass as the tool returns: the call
    ends cancelled and its result is not used (3.11's ``wait_for`` returned it instead)."""
    release: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    @function_tool
    async def lookup() -> str:
        """Look something up."""
        return await release

    call = asyncio.create_task(lookup.invoke(ctx(), "{}"))
    await asyncio.sleep(0)
    await asyncio.sleep(0)  # the tool is now waiting on ``release``
    release.set_result("found")
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
