"""The request side of tool calling: validate `tools`, resolve `tool_choice` and
`parallel_tool_calls`, and for `required` / a named function the JSON schema that the
structured-output machinery enforces, plus the parser that reads the constrained output back.

OpenAI semantics: `tool_choice` defaults to `auto` when tools are given. `none` means no call is
parsed, but the tools still go to the chat template (the model sees them, as on OpenAI).
`auto` parses the model family's own markup (`--tool-call-parser`). `required` and
`{"type": "function", "function": {"name": ...}}` constrain the output to JSON — an array of
1 (or, with `parallel_tool_calls`, 1..max) `{"name", "arguments"}` objects, or that one
function's object — so the answer is always a valid call; `ForcedParser` turns it into calls.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from minisgl.errors import InvalidRequest
from minisgl.server.tools.base import ToolCall, ToolParser, _JsonScan, _ws_end, load_call
from minisgl.server.tools.parsers import PARSERS, create_tool_parser

NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
MAX_TOOLS = 128  # OpenAI's limit; also bounds the grammar a forced call compiles to
NO_PARAMETERS = {"type": "object", "properties": {}, "additionalProperties": False}


@dataclass(frozen=True)
class ToolPlan:
    tools: tuple[dict, ...]  # the request's tools, validated, OpenAI shape
    choice: str  # "none" | "auto" | "required" | "function"
    function: str | None  # the named function when choice == "function"
    parallel: bool

    @property
    def names(self) -> frozenset[str]:
        return frozenset(t["function"]["name"] for t in self.tools)

    @property
    def forced(self) -> bool:
        return self.choice in ("required", "function")

    def schema(self, max_calls: int | None = None) -> dict | None:
        """The JSON schema a forced choice constrains the output to (None otherwise)."""
        return required_schema(self.tools, self.choice if self.choice != "function"
                               else {"type": "function", "function": {"name": self.function}},
                               self.parallel, max_calls) if self.forced else None

    def parser(self, parser_name: str | None) -> ToolParser | None:
        """The parser for this request's output; None for `none`."""
        max_calls = None if self.parallel else 1
        if self.forced:
            return ForcedParser(self.choice == "function", self.names, max_calls)
        if self.choice == "none":
            return None
        if parser_name is None:
            raise InvalidRequest(
                "tool_choice 'auto' needs a tool-call parser: this server was started without "
                f"--tool-call-parser (one of {', '.join(PARSERS)}) and its chat template does not "
                "imply one; use tool_choice 'required' or a named function", param="tool_choice")
        return create_tool_parser(parser_name, self.names, max_calls)


def plan_tools(tools, tool_choice=None, parallel_tool_calls=None) -> ToolPlan | None:
    """Validate a request's tool fields; None when it has no tools and no forcing choice."""
    if parallel_tool_calls is not None and not isinstance(parallel_tool_calls, bool):
        raise InvalidRequest("parallel_tool_calls must be a boolean", param="parallel_tool_calls")
    checked = validate_tools(tools)
    choice, function = _resolve_choice(tool_choice, checked)
    if not checked:
        return None
    return ToolPlan(tuple(checked), choice, function, parallel_tool_calls is not False)


def validate_tools(tools) -> list[dict]:
    if tools is None:
        return []
    if not isinstance(tools, list):
        raise InvalidRequest("tools must be an array of tool objects", param="tools")
    if len(tools) > MAX_TOOLS:
        raise InvalidRequest(f"at most {MAX_TOOLS} tools per request, got {len(tools)}",
                             param="tools")
    seen: set[str] = set()
    for i, tool in enumerate(tools):
        where = f"tools[{i}]"
        if not isinstance(tool, dict):
            raise InvalidRequest(f"{where} must be an object", param=where)
        if tool.get("type") != "function":
            raise InvalidRequest(f"{where}.type must be 'function', got {tool.get('type')!r}",
                                 param=f"{where}.type")
        fn = tool.get("function")
        if not isinstance(fn, dict):
            raise InvalidRequest(f"{where}.function must be an object", param=f"{where}.function")
        name = fn.get("name")
        if not isinstance(name, str) or not NAME.match(name):
            raise InvalidRequest(f"{where}.function.name must match ^[a-zA-Z0-9_-]{{1,64}}$, got "
                                 f"{name!r}", param=f"{where}.function.name")
        if name in seen:
            raise InvalidRequest(f"{where}.function.name {name!r} is given twice",
                                 param=f"{where}.function.name")
        seen.add(name)
        if fn.get("description") is not None and not isinstance(fn["description"], str):
            raise InvalidRequest(f"{where}.function.description must be a string",
                                 param=f"{where}.function.description")
        if fn.get("strict") is not None and not isinstance(fn["strict"], bool):
            raise InvalidRequest(f"{where}.function.strict must be a boolean",
                                 param=f"{where}.function.strict")
        _check_parameters(fn.get("parameters"), f"{where}.function.parameters")
    return tools


def _check_parameters(params, where: str) -> None:
    """The shape OpenAI requires: a JSON-schema object describing an object. Whether the schema
    compiles is the structured-output layer's check."""
    if params is None:
        return
    if not isinstance(params, dict):
        raise InvalidRequest(f"{where} must be a JSON schema object", param=where)
    if params.get("type", "object") != "object":
        raise InvalidRequest(f"{where}.type must be 'object' (arguments are an object), got "
                             f"{params.get('type')!r}", param=f"{where}.type")
    props = params.get("properties")
    if props is not None and (not isinstance(props, dict)
                              or not all(isinstance(v, (dict, bool)) for v in props.values())):
        raise InvalidRequest(f"{where}.properties must map names to schemas",
                             param=f"{where}.properties")
    required = params.get("required")
    if required is not None and (not isinstance(required, list)
                                 or not all(isinstance(r, str) for r in required)):
        raise InvalidRequest(f"{where}.required must be an array of strings",
                             param=f"{where}.required")


def _resolve_choice(tool_choice, tools: list[dict]) -> tuple[str, str | None]:
    names = [t["function"]["name"] for t in tools]
    if tool_choice is None:
        return ("auto" if tools else "none"), None
    if tool_choice in ("none", "auto", "required"):
        if tool_choice == "required" and not tools:
            raise InvalidRequest("tool_choice 'required' needs tools", param="tool_choice")
        return tool_choice, None
    if isinstance(tool_choice, dict) and tool_choice.get("type") == "function":
        fn = tool_choice.get("function")
        name = fn.get("name") if isinstance(fn, dict) else None
        if not isinstance(name, str):
            raise InvalidRequest("tool_choice.function.name must be a string",
                                 param="tool_choice.function.name")
        if name not in names:
            raise InvalidRequest(f"tool_choice names function {name!r}, which is not in tools"
                                 + (f" ({', '.join(names)})" if names else ""),
                                 param="tool_choice.function.name")
        return "function", name
    raise InvalidRequest("tool_choice must be 'none', 'auto', 'required' or "
                         "{\"type\": \"function\", \"function\": {\"name\": ...}}",
                         param="tool_choice")


def _call_schema(tool: dict) -> dict:
    fn = tool["function"]
    return {"type": "object",
            "properties": {"name": {"const": fn["name"]},
                           "arguments": fn.get("parameters") or NO_PARAMETERS},
            "required": ["name", "arguments"], "additionalProperties": False}


def required_schema(tools: list[dict] | tuple[dict, ...], tool_choice, parallel: bool = True,
                    max_calls: int | None = None) -> dict:
    """JSON schema of a forced call: for `required` an array of 1..max_calls (1 without
    `parallel`) calls of any tool, for a named function that function's call object."""
    if isinstance(tool_choice, dict):
        name = tool_choice["function"]["name"]
        tool = next((t for t in tools if t["function"]["name"] == name), None)
        if tool is None:
            raise InvalidRequest(f"tool_choice names function {name!r}, which is not in tools",
                                 param="tool_choice.function.name")
        return _call_schema(tool)
    if tool_choice != "required":
        raise ValueError(f"only 'required' or a named function force a call, not {tool_choice!r}")
    calls = [_call_schema(t) for t in tools]
    schema = {"type": "array", "items": calls[0] if len(calls) == 1 else {"anyOf": calls},
              "minItems": 1}
    limit = 1 if not parallel else max_calls
    if limit is not None:
        schema["maxItems"] = limit
    return schema


class ForcedParser(ToolParser):
    """Reads the output of a forced call (`required_schema`) back into calls, whole or streamed:
    an array of call objects, or one object for a named function. Output the grammar did not let
    finish (cut by max_tokens) is returned as content."""

    name = "forced"

    def __init__(self, single: bool, names=None, max_calls: int | None = None) -> None:
        super().__init__(names, max_calls)
        self._state = "object" if single else "open"  # open -> items -> done | content

    def _next(self, buf: str, final: bool):
        if self._state == "content":
            return len(buf), [buf]
        lead = _ws_end(buf, 0)
        if lead == len(buf):
            return lead, []  # whitespace between JSON tokens
        c = buf[lead]
        if self._state == "open" and c == "[":
            self._state = "items"
            return lead + 1, []
        if self._state == "items" and c in ",]":
            self._state = "items" if c == "," else "done"
            return lead + 1, []
        if self._state in ("object", "items") and c == "{":
            if self._scan is None or self._scan.start != lead:
                self._scan = _JsonScan(lead)
            end = self._scan.end(buf)
            if end is None and not final:
                return None
            call = load_call(buf[lead:end], ("arguments",), self.names) if end and end > 0 else None
            if call is not None:
                self._state = "done" if self._state == "object" else "items"
                return end, [call]
        self._state = "content"
        return lead, []


def parse_forced(text: str, single: bool, names=None) -> list[ToolCall]:
    """The calls in a forced output (see ForcedParser); output that is not a call is ignored."""
    return ForcedParser(single, names).parse(text).calls
