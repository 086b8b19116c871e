"""``hark.guardrails``: where owners' agent modules import guardrails from (as the README shows).

The code lives in :mod:`hark.agents.guardrails`; this name stays so existing agent
modules and examples keep working.
"""

from hark.agents.guardrails import (
    GuardrailFunctionOutput,
    GuardrailTripped,
    OutputGuardrail,
    output_guardrail,
)

__all__ = ["GuardrailFunctionOutput", "GuardrailTripped", "OutputGuardrail", "output_guardrail"]
