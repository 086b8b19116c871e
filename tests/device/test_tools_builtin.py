"""Built-in device tools: time, volume, GPIO relay outputs (MockFactory pins) and ending."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, tzinfo
from typing import Any

import pytest
from gpiozero.pins.mock import MockFactory
from hark.agents.agent import ToolRunner, agent_from_config
from hark.agents.builtin import (
    device_tools,
    end_conversation_tool,
    output_tool_name,
    time_tool,
    volume_tool,
)
from hark.agents.tools import ToolContext
from hark.gpio import GpioError, GpioOutput
from hark.testing import NullSpeaker, mock_pins


@pytest.fixture
def pins() -> Iterator[MockFactory]:
    """gpiozero's MockFactory as the pin factory, the previous one restored after."""
    with mock_pins(pwm=False) as factory:
        yield factory


def ctx() -> ToolContext[None]:
    return ToolContext()


async def test_time_tool_uses_the_configured_zone() -> None:
    """The time tool reports date, time and weekday in the configured time zone."""
    fixed = datetime(2026, 11, 23, 21, 30, tzinfo=UTC)

    def clock(zone: tzinfo | None) -> datetime:
        return fixed.astimezone(zone) if zone else fixed

    tool = time_tool("Asia/Tokyo", now=clock)
    assert tool.name == "get_current_time" and tool.params_json_schema["properties"] == {}
    out = json.loads((await tool.invoke(ctx(), "{}")).output)
    assert out == {
        "date": "Tuesday 24 November 2026",
        "time": "06:30",
        "timezone": "Asia/Tokyo",
        "iso": "2026-11-24T06:30:00+09:00",
    }
    local = json.loads((await time_tool(now=clock).invoke(ctx(), "{}")).output)
    assert set(local) == {"date", "time", "timezone", "iso"}


async def test_volume_tool_sets_absolute_and_relative_levels() -> None:
    """set_volume takes a percent or a step, clamps to 0..100 and reports the level."""
    speaker = NullSpeaker(volume=0.5)
    tool = volume_tool(speaker)
    assert json.loads((await tool.invoke(ctx(), '{"percent": 30}')).output) == {
        "volume_percent": 30
    }
    assert speaker.volume == pytest.approx(0.3)
    assert json.loads((await tool.invoke(ctx(), '{"step": -50}')).output) == {"volume_percent": 0}
    assert json.loads((await tool.invoke(ctx(), "{}")).output) == {"volume_percent": 0}
    bad = await tool.invoke(ctx(), '{"percent": 150}')
    assert bad.error and speaker.volume == 0.0


async def test_relay_tool_switches_a_mock_pin(pins: MockFactory) -> None:
    """A relay named 'kitchen light' on pin 22 becomes set_kitchen_light(on) driving the pin."""
    agent = agent_from_config(
        {
            "name": "k",
            "tools": [],
            "outputs": [{"name": "kitchen light", "pin": 22, "active_high": True}],
        }
    )
    runner = ToolRunner(agent)
    pin = pins.pin(22)
    assert pin.state is False  # initial off
    schema = agent.tools[0].params_json_schema
    assert schema["properties"]["on"]["type"] == "boolean" and schema["required"] == ["on"]
    out = json.loads(await runner.run("c1", "set_kitchen_light", '{"on": true}'))
    assert out == {"name": "kitchen light", "on": True}
    assert pin.state is True
    out = json.loads(await runner.run("c2", "set_kitchen_light", '{"on": false}'))
    assert out == {"name": "kitchen light", "on": False} and pin.state is False
    bad = json.loads(await runner.run("c3", "set_kitchen_light", '{"on": "maybe"}'))
    assert "invalid arguments" in bad["error"] and pin.state is False


def test_active_low_relay_and_initial_state(pins: MockFactory) -> None:
    """active_high=False inverts the pin; initial=True starts the output on."""
    relay = GpioOutput("fan", 5, active_high=False, initial=True)
    assert relay.is_active and pins.pin(5).state is False
    relay.off()
    assert pins.pin(5).state is True
    relay.close()


def test_missing_gpio_names_the_pin(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a pin factory (not a Pi) opening an output raises GpioError naming pin and name."""
    from gpiozero.exc import BadPinFactory

    def no_factory(*args: Any, **kwargs: Any) -> Any:
        raise BadPinFactory("Unable to load any default pin factory!")

    monkeypatch.setattr("hark.gpio.DigitalOutputDevice", no_factory)
    with pytest.raises(GpioError, match=r"output 'kitchen light' on GPIO 22: .*not a Raspberry Pi"):
        GpioOutput("kitchen light", 22)


def test_tool_names_for_outputs() -> None:
    """Output names become safe tool names."""
    assert output_tool_name("kitchen light") == "set_kitchen_light"
    assert output_tool_name("Hall-Lamp #2") == "set_hall_lamp_2"


async def test_end_conversation_tool_and_device_tools() -> None:
    """end_conversation returns the end marker; device_tools builds the named set."""
    result = await end_conversation_tool().invoke(ctx(), "{}")
    assert result.end_conversation
    names = [t.name for t in device_tools(("time", "end_conversation"))]
    assert names == ["get_current_time", "end_conversation"]
    with pytest.raises(ValueError, match="unknown built-in tool 'radio'"):
        device_tools(["radio"])
