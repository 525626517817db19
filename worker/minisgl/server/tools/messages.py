"""OpenAI tool messages -> what Hugging Face chat templates read.

OpenAI sends an assistant's `tool_calls[*].function.arguments` as a JSON string; the Qwen2.5,
Qwen3 and Llama 3.1 templates write `arguments | tojson` (Qwen3 passes a string through), so a
string would be written as a quoted string. The arguments become a dict; ids, names and
`tool_call_id` stay. A `tool` message without a `name` gets the one of the call it answers
(templates such as Llama's and Granite's print it).
"""

from __future__ import annotations

import json

from minisgl.errors import InvalidRequest


def _text(content, where: str):
    if content is None or isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for j, part in enumerate(content):
            if not (isinstance(part, dict) and part.get("type") == "text"
                    and isinstance(part.get("text"), str)):
                raise InvalidRequest(f"{where}.content[{j}] must be a text part",
                                     param=f"{where}.content")
            parts.append(part["text"])
        return "".join(parts)
    raise InvalidRequest(f"{where}.content must be a string or text parts",
                         param=f"{where}.content")


def _call(call, where: str) -> dict:
    if not isinstance(call, dict) or not isinstance(call.get("function"), dict):
        raise InvalidRequest(f"{where} must be an object with a function", param=where)
    if call.get("type", "function") != "function":
        raise InvalidRequest(f"{where}.type must be 'function'", param=f"{where}.type")
    fn = call["function"]
    if not isinstance(fn.get("name"), str):
        raise InvalidRequest(f"{where}.function.name must be a string",
                             param=f"{where}.function.name")
    args = fn.get("arguments", {})
    if isinstance(args, str):
        try:
            args = json.loads(args) if args.strip() else {}
        except ValueError as e:
            raise InvalidRequest(f"{where}.function.arguments is not valid JSON: {e}",
                                 param=f"{where}.function.arguments") from e
    if not isinstance(args, dict):
        raise InvalidRequest(f"{where}.function.arguments must be a JSON object",
                             param=f"{where}.function.arguments")
    out = {"type": "function", "function": {"name": fn["name"], "arguments": args}}
    if call.get("id") is not None:
        if not isinstance(call["id"], str):
            raise InvalidRequest(f"{where}.id must be a string", param=f"{where}.id")
        out["id"] = call["id"]
    return out


def normalize_messages(messages: list) -> list[dict]:
    """Chat messages (dicts, or pydantic models with extra fields) -> template-ready dicts."""
    names: dict[str, str] = {}  # tool_call_id -> function name
    out = []
    for i, msg in enumerate(messages):
        where = f"messages[{i}]"
        msg = msg.model_dump(exclude_none=True) if hasattr(msg, "model_dump") else dict(msg)
        msg.setdefault("content", None)
        if msg["content"] is not None:
            msg["content"] = _text(msg["content"], where)
        calls = msg.get("tool_calls")
        if calls is not None:
            if msg.get("role") != "assistant":
                raise InvalidRequest(f"{where}: only assistant messages carry tool_calls",
                                     param=f"{where}.tool_calls")
            if not isinstance(calls, list):
                raise InvalidRequest(f"{where}.tool_calls must be an array",
                                     param=f"{where}.tool_calls")
            msg["tool_calls"] = [_call(c, f"{where}.tool_calls[{j}]") for j, c in enumerate(calls)]
            for c in msg["tool_calls"]:
                if "id" in c:
                    names[c["id"]] = c["function"]["name"]
        if msg.get("role") == "tool":
            call_id = msg.get("tool_call_id")
            if not isinstance(call_id, str):
                raise InvalidRequest(f"{where}: a tool message needs tool_call_id (a string)",
                                     param=f"{where}.tool_call_id")
            if msg.get("name") is None and call_id in names:
                msg["name"] = names[call_id]
        out.append(msg)
    return out
