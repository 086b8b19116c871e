"""Function tools: the ``@function_tool`` decorator, JSON schemas from type hints, safe invocation.

A tool is a plain Python function; its parameters (type hints, defaults, the Google-style
``Args:`` section of its docstring) become the JSON schema the model sees, built with
pydantic.  Invocation validates the model's arguments, runs sync functions in a worker
thread and async ones on the loop, and times out slow ones; every failure becomes an
error *output* for the model.  This module must not import adapters or the conversation
core, and must never let a tool's exception escape ``FunctionTool.invoke``.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, Generic, TypeVar, cast, get_type_hints, overload

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from hark.events import ToolSpec

log = logging.getLogger(__name__)

TContext = TypeVar("TContext")
F = TypeVar("F", bound=Callable[..., Any])

DEFAULT_TIMEOUT_S = 10.0


@dataclass
class RunContext(Generic[TContext]):
    """What dynamic instructions and tools may see: the owner's own ``context`` object.

    Mirrors the Agents SDK's ``RunContextWrapper``: hark never reads ``context``.
    """

    context: TContext | None = None


@dataclass
class ToolContext(RunContext[TContext]):
    """The run context plus the call being served (SDK: ``ToolContext``)."""

    tool_name: str = ""
    tool_call_id: str = ""


@dataclass(frozen=True)
class EndConversation:
    """Return this from a tool to end the conversation after the model's last words.

    ``output`` is what the model is told (it usually says goodbye next); the tool
    runner reports the end to whoever drives the session (``on_end_conversation``).
    """

    output: str = '{"ok": true, "conversation": "ending"}'


@dataclass
class ToolResult:
    """The outcome of one invocation: the output string and whether to end afterwards."""

    output: str
    end_conversation: bool = False
    error: bool = False


def error_output(message: str) -> str:
    """The JSON shape every tool failure takes, so the model can read and recover."""
    return json.dumps({"error": message})


# --------------------------------------------------------------------------- docstrings

_SECTION = re.compile(
    r"^\s*(Args|Arguments|Parameters|Returns|Yields|Raises|Example|Examples|Note|Notes):\s*$"
)
_ARG_LINE = re.compile(r"^\s*(\*{0,2}\w+)\s*(?:\([^)]*\))?\s*:\s*(.*)$")


def parse_docstring(doc: str | None) -> tuple[str, dict[str, str]]:
    """Split a Google-style docstring into (description, {parameter: description})."""
    if not doc:
        return "", {}
    lines = inspect.cleandoc(doc).splitlines()
    description: list[str] = []
    params: dict[str, str] = {}
    section: str | None = None
    current: str | None = None
    arg_indent = -1
    for line in lines:
        header = _SECTION.match(line)
        if header:
            section = header.group(1)
            current = None
            arg_indent = -1
            continue
        if section is None:
            description.append(line)
            continue
        if section not in ("Args", "Arguments", "Parameters") or not line.strip():
            continue
        indent = len(line) - len(line.lstrip())
        match = _ARG_LINE.match(line)
        if match and (arg_indent < 0 or indent <= arg_indent):
            arg_indent = indent
            current = match.group(1).lstrip("*")
            params[current] = match.group(2).strip()
        elif current is not None:
            params[current] = f"{params[current]} {line.strip()}".strip()
    text = " ".join(" ".join(description).split())
    return text, params


# --------------------------------------------------------------------------- schema


def _strip_titles(node: Any) -> Any:
    """Drop pydantic's auto ``title`` keys: they cost tokens and tell the model nothing."""
    if isinstance(node, dict):
        return {
            k: _strip_titles(v)
            for k, v in node.items()
            if not (k == "title" and isinstance(v, str))
        }
    if isinstance(node, list):
        return [_strip_titles(v) for v in node]
    return node


def _is_context_param(annotation: Any) -> bool:
    origin = getattr(annotation, "__origin__", annotation)
    return inspect.isclass(origin) and issubclass(origin, RunContext)


@dataclass
class FunctionTool:
    """A tool the model may call: name, description, JSON schema, and how to run it."""

    name: str
    description: str
    params_json_schema: dict[str, Any]
    func: Callable[..., Any]
    args_model: type[BaseModel]
    takes_context: bool = False
    timeout_s: float | None = None
    needs_approval: bool = False
    _is_async: bool = field(default=False, repr=False)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Call the underlying function directly (tests, reuse in code)."""
        return self.func(*args, **kwargs)

    def spec(self) -> ToolSpec:
        """The tool as the session offers it (``session.tools[]``)."""
        return ToolSpec(self.name, self.description, self.params_json_schema)

    def validate(self, arguments: str) -> dict[str, Any]:
        """Parse and validate the model's JSON arguments (raises pydantic's ``ValidationError``)."""
        raw = arguments.strip() or "{}"
        parsed = self.args_model.model_validate_json(raw)
        return {name: getattr(parsed, name) for name in type(parsed).model_fields}

    async def invoke(
        self, ctx: ToolContext[Any], arguments: str, default_timeout_s: float = DEFAULT_TIMEOUT_S
    ) -> ToolResult:
        """Validate, run and time out; every failure becomes an error output, never a raise."""
        try:
            kwargs = self.validate(arguments)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'arguments'}: {e['msg']}"
                for e in exc.errors(include_url=False)
            )
            log.info("tool %s: invalid arguments: %s", self.name, problems)
            return ToolResult(
                error_output(f"invalid arguments for {self.name}: {problems}"), error=True
            )
        args: tuple[Any, ...] = (ctx,) if self.takes_context else ()
        timeout_s = self.timeout_s if self.timeout_s is not None else default_timeout_s
        try:
            # asyncio.timeout, not wait_for: on 3.11 wait_for returns a result that lands
            # with a cancel (a barge-in as the tool finishes) and drops the cancel.
            async with asyncio.timeout(timeout_s):
                if self._is_async:
                    value = await cast(Awaitable[Any], self.func(*args, **kwargs))
                else:
                    # A sync tool may block (GPIO, files): keep it off the loop.  A timed-out
                    # thread cannot be killed; it finishes in the background, result dropped.
                    value = await asyncio.to_thread(self.func, *args, **kwargs)
        except TimeoutError:
            log.warning("tool %s timed out after %.1f s", self.name, timeout_s)
            return ToolResult(
                error_output(f"{self.name} did not finish within {timeout_s:g} s"), error=True
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("tool %s failed: %s: %s", self.name, type(exc).__name__, exc)
            return ToolResult(
                error_output(f"{self.name} failed: {type(exc).__name__}: {exc}"), error=True
            )
        if isinstance(value, EndConversation):
            return ToolResult(value.output, end_conversation=True)
        return ToolResult(_to_output(value))


def _to_output(value: Any) -> str:
    """Tool outputs travel as strings: str as is, models and data as JSON."""
    if isinstance(value, str):
        return value
    if isinstance(value, BaseModel):
        return value.model_dump_json()
    if value is None:
        return '{"ok": true}'
    try:
        return json.dumps(value, default=str)
    except (TypeError, ValueError):
        return str(value)


def _parameter_hints(func: Callable[..., Any], name: str) -> dict[str, Any]:
    """Resolve the parameters' hints only: the return annotation need not be importable."""
    annotations = {k: v for k, v in getattr(func, "__annotations__", {}).items() if k != "return"}
    holder = SimpleNamespace(
        __annotations__=annotations, __globals__=getattr(func, "__globals__", {})
    )
    try:
        return get_type_hints(holder, include_extras=True)
    except NameError as exc:
        raise TypeError(
            f"tool {name}: cannot resolve a parameter type ({exc}); "
            "define the types it uses at module level"
        ) from exc


def build_tool(
    func: Callable[..., Any],
    *,
    name_override: str | None = None,
    description_override: str | None = None,
    timeout_s: float | None = None,
    needs_approval: bool = False,
) -> FunctionTool:
    """Make a ``FunctionTool`` from a function's signature, hints and docstring."""
    name = name_override or func.__name__
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", name):
        raise ValueError(f"tool name {name!r} must be 1-64 letters, digits, '_' or '-'")
    summary, arg_docs = parse_docstring(func.__doc__)
    hints = _parameter_hints(func, name)
    fields: dict[str, Any] = {}
    takes_context = False
    for index, (pname, param) in enumerate(inspect.signature(func).parameters.items()):
        annotation = hints.get(pname, Any)
        if index == 0 and _is_context_param(annotation):
            takes_context = True
            continue
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            raise TypeError(f"tool {name}: *args/**kwargs cannot be described to the model")
        default = ... if param.default is inspect.Parameter.empty else param.default
        fields[pname] = (annotation, Field(default, description=arg_docs.get(pname)))
    model = cast(
        type[BaseModel],
        create_model(
            f"{name}_arguments",
            __config__=ConfigDict(extra="forbid"),
            **fields,
        ),
    )
    schema = _strip_titles(model.model_json_schema())
    schema.setdefault("properties", {})
    schema["additionalProperties"] = False
    return FunctionTool(
        name=name,
        description=description_override or summary or name.replace("_", " "),
        params_json_schema=schema,
        func=func,
        args_model=model,
        takes_context=takes_context,
        timeout_s=timeout_s,
        needs_approval=needs_approval,
        _is_async=inspect.iscoroutinefunction(func),
    )


@overload
def function_tool(func: Callable[..., Any], /) -> FunctionTool: ...


@overload
def function_tool(
    *,
    name_override: str | None = None,
    description_override: str | None = None,
    description: str | None = None,
    timeout_s: float | None = None,
    needs_approval: bool = False,
) -> Callable[[Callable[..., Any]], FunctionTool]: ...


def function_tool(
    func: Callable[..., Any] | None = None,
    /,
    *,
    name_override: str | None = None,
    description_override: str | None = None,
    description: str | None = None,
    timeout_s: float | None = None,
    needs_approval: bool = False,
) -> FunctionTool | Callable[[Callable[..., Any]], FunctionTool]:
    """Turn a function into a tool, bare (``@function_tool``) or with options.

    ``timeout_s`` overrides the runner's default; ``needs_approval`` makes the runner
    wait for the owner (a button press) before running it.  A first parameter typed
    ``RunContext``/``ToolContext`` receives the context and is hidden from the model.
    """

    def wrap(f: Callable[..., Any]) -> FunctionTool:
        return build_tool(
            f,
            name_override=name_override,
            description_override=description_override or description,
            timeout_s=timeout_s,
            needs_approval=needs_approval,
        )

    if func is not None:
        return wrap(func)
    return wrap
