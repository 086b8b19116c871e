"""A kitchen assistant for hark: a function tool, a handoff and an output guardrail.

Put this file where the daemon can import it (e.g. ``/etc/hark/agents/kitchen_agent.py``
with ``Environment=PYTHONPATH=/etc/hark/agents`` in the unit) and name it in the config:

    [agent]
    object = "kitchen_agent:agent"

``python examples/kitchen_agent.py`` prints the session the device would configure.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Annotated, Any, Literal

from hark.agent import RealtimeAgent, handoff
from hark.guardrails import GuardrailFunctionOutput, output_guardrail
from hark.tools import RunContext, function_tool
from pydantic import Field

shopping_list: list[str] = []

GRAMS_PER = {"g": 1.0, "kg": 1000.0, "oz": 28.3495, "lb": 453.592}


@function_tool
def convert_weight(
    amount: Annotated[float, Field(gt=0)],
    from_unit: Literal["g", "kg", "oz", "lb"],
    to_unit: Literal["g", "kg", "oz", "lb"],
) -> dict[str, Any]:
    """Convert a weight between grams, kilograms, ounces and pounds.

    Args:
        amount: The weight to convert.
        from_unit: The unit it is in.
        to_unit: The unit wanted.
    """
    result = amount * GRAMS_PER[from_unit] / GRAMS_PER[to_unit]
    return {"amount": round(result, 1), "unit": to_unit}


@function_tool
def add_to_shopping_list(item: str, quantity: Annotated[int, Field(ge=1, le=99)] = 1) -> str:
    """Add something to the shopping list.

    Args:
        item: What to buy, e.g. "eggs".
        quantity: How many.
    """
    shopping_list.append(f"{quantity} x {item}")
    return f"added; the list has {len(shopping_list)} entries"


@output_guardrail
def family_friendly(ctx: RunContext[Any], agent: Any, text: str) -> GuardrailFunctionOutput:
    """The speaker is in a family kitchen: no swearing, even when asked."""
    banned = [w for w in ("damn", "hell") if w in text.lower().split()]
    return GuardrailFunctionOutput(tripwire_triggered=bool(banned), output_info=banned)


recipe_agent: RealtimeAgent = RealtimeAgent(
    name="Recipe helper",
    handoff_description="Walks the cook through a recipe one step at a time.",
    instructions=(
        "You guide a cook through a recipe, one short step at a time. Wait until they say "
        "'next' before the following step. When they are done, hand back to the kitchen "
        "assistant."
    ),
    tools=[convert_weight],
    voice="cedar",
    output_guardrails=[family_friendly],
)


def kitchen_instructions(ctx: RunContext[Any], agent: RealtimeAgent) -> str:
    """Dynamic instructions: the shopping list is part of what the agent knows."""
    items = ", ".join(shopping_list) or "empty"
    return (
        "You are a friendly kitchen assistant on a small speaker. Answer in one or two short "
        f"sentences. The shopping list is currently: {items}. For a recipe, transfer to the "
        "recipe helper."
    )


agent: RealtimeAgent = RealtimeAgent(
    name="Kitchen",
    instructions=kitchen_instructions,
    tools=[convert_weight, add_to_shopping_list],
    handoffs=[handoff(recipe_agent)],
    voice="marin",
    output_guardrails=[family_friendly],
)
recipe_agent.handoffs.append(agent)  # and back again: transfer_to_kitchen


if __name__ == "__main__":
    config = agent.session_config()
    print(json.dumps(dataclasses.asdict(config), indent=2))
