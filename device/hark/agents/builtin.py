"""The device's built-in tools: time and date, volume, GPIO outputs, ending the conversation.

Each is an ordinary ``FunctionTool`` built around a small handle given at construction
(a clock and time zone, anything with a ``volume`` property, a switch), so tests pass
fakes or gpiozero's MockFactory and the daemon passes the real speaker and relays.
This module must not import the conversation core or the link; GPIO is only touched
through ``hark.gpio`` when outputs are opened.
"""

from __future__ import annotations

import logging
import re
import zoneinfo
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, tzinfo
from typing import Annotated, Any

from pydantic import Field

from hark.agents.tools import EndConversation, FunctionTool, build_tool, function_tool
from hark.ports import Switch, VolumeControl

log = logging.getLogger(__name__)

BUILTIN_NAMES = ("time", "volume", "end_conversation")


def time_tool(
    timezone: str | None = None, now: Callable[[tzinfo | None], datetime] | None = None
) -> FunctionTool:
    """``get_current_time``: the local date, time and weekday (``timezone`` or the system's)."""
    zone = zoneinfo.ZoneInfo(timezone) if timezone else None
    clock = now or (lambda tz: datetime.now(tz))

    def get_current_time() -> dict[str, str]:
        """Get the current local date and time. Use it for any question about the time,
        the date or the day of the week."""
        moment = clock(zone) if zone is not None else clock(None).astimezone()
        return {
            "date": moment.strftime("%A %d %B %Y"),
            "time": moment.strftime("%H:%M"),
            "timezone": timezone or (moment.tzname() or "local"),
            "iso": moment.isoformat(timespec="seconds"),
        }

    return function_tool(get_current_time)


def volume_tool(control: VolumeControl) -> FunctionTool:
    """``set_volume``: absolute percent or a relative step; reports the resulting level."""

    def set_volume(
        percent: Annotated[int | None, Field(ge=0, le=100)] = None,
        step: Annotated[int | None, Field(ge=-100, le=100)] = None,
    ) -> dict[str, int]:
        """Set the speaker volume, or make it louder or quieter. Reports the new level.

        Args:
            percent: New volume from 0 (silent) to 100 (full).
            step: Relative change in percentage points instead, e.g. 10 louder, -10 quieter.
        """
        current = round(control.volume * 100)
        if percent is None and step is None:
            return {"volume_percent": current}
        target = percent if percent is not None else current + (step or 0)
        control.volume = max(0, min(100, target)) / 100
        level = round(control.volume * 100)
        log.info("volume set to %d %%", level)
        return {"volume_percent": level}

    return function_tool(set_volume)


def output_tool_name(name: str) -> str:
    """'kitchen light' -> 'set_kitchen_light' (the tool name the model calls)."""
    slug = re.sub(r"[^a-z0-9]+", "_", name.casefold()).strip("_") or "output"
    return f"set_{slug}"[:64]


def output_tool(name: str, switch: Switch, description: str | None = None) -> FunctionTool:
    """``set_<name>(on)``: switch a GPIO output and report the state it is really in."""

    def set_output(on: bool) -> dict[str, Any]:
        """
        Args:
            on: true to switch it on, false to switch it off.
        """
        if on:
            switch.on()
        else:
            switch.off()
        state = bool(switch.is_active)
        log.info("output %r switched %s", name, "on" if state else "off")
        return {"name": name, "on": state}

    text = f"Switch the {name} on or off. Reports whether it is on afterwards."
    if description:
        text = f"{text} {description}"
    return build_tool(set_output, name_override=output_tool_name(name), description_override=text)


def end_conversation_tool() -> FunctionTool:
    """``end_conversation``: the device stops listening after the model's goodbye."""

    def end_conversation() -> EndConversation:
        """End the conversation when the user says goodbye, thanks you and is done, or asks
        you to stop listening. Say a short goodbye after calling it."""
        return EndConversation()

    return function_tool(end_conversation)


def device_tools(
    names: Iterable[str] = BUILTIN_NAMES,
    *,
    timezone: str | None = None,
    volume: VolumeControl | None = None,
) -> list[FunctionTool]:
    """The built-in tools named in ``[agent] tools``; 'volume' is skipped without a speaker."""
    tools: list[FunctionTool] = []
    for name in names:
        if name == "time":
            tools.append(time_tool(timezone))
        elif name == "volume":
            if volume is None:
                log.info("no speaker given: the volume tool is not offered")
            else:
                tools.append(volume_tool(volume))
        elif name == "end_conversation":
            tools.append(end_conversation_tool())
        else:
            raise ValueError(f"unknown built-in tool {name!r}; known: {', '.join(BUILTIN_NAMES)}")
    return tools


def open_outputs(outputs: Sequence[Any], pin_factory: Any = None) -> list[Switch]:
    """Open one ``GpioOutput`` per ``[[agent.outputs]]`` entry (attributes or mapping keys)."""
    if not outputs:
        return []
    from hark.gpio import GpioOutput  # late: gpiozero only when outputs exist

    def get(o: Any, key: str, default: Any = None) -> Any:
        return o.get(key, default) if isinstance(o, dict) else getattr(o, key, default)

    return [
        GpioOutput(
            get(o, "name"),
            get(o, "pin"),
            active_high=get(o, "active_high", True),
            initial=get(o, "initial", False),
            pin_factory=pin_factory,
        )
        for o in outputs
    ]
