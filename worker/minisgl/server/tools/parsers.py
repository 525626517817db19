"""Tool-call parsers: find a model family's tool-call markup in generated text, whole or streamed.

`hermes` (Qwen2.5 / Qwen3): `<tool_call>\n{"name": ..., "arguments": {...}}\n</tool_call>`, any
number of them, with content around them. `llama3_json` (Llama 3.1-3.3): output that starts
(after an optional `<|python_tag|>`) with `{"name": ..., "parameters": {...}}` objects separated
by `;`. `mistral` (v3 tokenizers): content, then `[TOOL_CALLS][{"name": ..., "arguments": ...}]`.

Streaming and whole parsing are one code path: `_next(buf, final)` decides the next piece at the
head of the undecided text, or returns None when a longer text could decide differently. Every
decision is therefore the same whatever the chunking, and `parse(text)` is one `feed` plus
`finish`. The cost: a call is sent only once its JSON has closed and validated (so an invalid
call can still become content), its arguments as one fragment; content streams as it comes,
less a tail that could still become markup and trailing whitespace (dropped next to a call).
"""

from __future__ import annotations

import json
import secrets
import string
from dataclasses import dataclass
from typing import NamedTuple

_ALNUM = string.ascii_letters + string.digits


def new_call_id() -> str:
    """An id shaped like OpenAI's: `call_` and 24 random letters and digits."""
    return "call_" + "".join(secrets.choice(_ALNUM) for _ in range(24))


@dataclass(frozen=True)
class ToolCall:
    id: str
    name: str
    arguments: str  # the arguments object as compact JSON

    def to_openai(self) -> dict:
        return {"id": self.id, "type": "function",
                "function": {"name": self.name, "arguments": self.arguments}}


class ParseResult(NamedTuple):
    content: str | None  # None when there were calls and no other text
    calls: list[ToolCall]


class _Call(NamedTuple):
    name: str
    arguments: str


def _no_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def load_call(text: str, args_keys: tuple[str, ...] = ("arguments", "parameters"),
              names: frozenset[str] | None = None) -> _Call | None:
    """`{"name": str, "arguments": {...}}` as JSON text -> the call, or None if it is not one.
    Arguments may be missing (no parameters) or a string holding a JSON object."""
    try:
        obj = json.loads(text, parse_constant=_no_constant)
    except (ValueError, RecursionError):
        return None
    return call_from_obj(obj, args_keys, names)


def call_from_obj(obj, args_keys: tuple[str, ...] = ("arguments", "parameters"),
                  names: frozenset[str] | None = None) -> _Call | None:
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str) or not obj["name"]:
        return None
    if names is not None and obj["name"] not in names:
        return None
    present = [k for k in args_keys if k in obj]
    args = obj[present[0]] if present else {}
    if isinstance(args, str):
        try:
            args = json.loads(args, parse_constant=_no_constant)
        except (ValueError, RecursionError):
            return None
    if not isinstance(args, dict):
        return None
    return _Call(obj["name"], json.dumps(args, ensure_ascii=False, separators=(",", ":")))


class _JsonScan:
    """Finds where a JSON object or array starting at `start` closes, resumably: the text may
    grow between calls (streaming) without rescanning what was seen."""

    _CLOSE = {"{": "}", "[": "]"}

    def __init__(self, start: int) -> None:
        self.start, self.pos = start, start
        self.stack: list[str] = []
        self.in_string = self.escape = False
        self.result: int | None = None

    def end(self, text: str) -> int | None:
        """Index just past the closing bracket; -1 if brackets mismatch; None if not closed yet."""
        if self.result is not None:
            return self.result
        pos = self.pos
        while pos < len(text):
            c = text[pos]
            pos += 1
            if self.in_string:
                if self.escape:
                    self.escape = False
                elif c == "\\":
                    self.escape = True
                elif c == '"':
                    self.in_string = False
            elif c == '"':
                self.in_string = True
            elif c in self._CLOSE:
                self.stack.append(self._CLOSE[c])
            elif c in "}]":
                if not self.stack or self.stack.pop() != c:
                    self.result = -1
                    return -1
                if not self.stack:
                    self.result = pos
                    return pos
        self.pos = pos
        return None


def _ws_end(text: str, i: int) -> int:
    while i < len(text) and text[i].isspace():
        i += 1
    return i


def _partial_suffix(text: str, tag: str) -> int:
    """Length of the longest suffix of text that is a proper prefix of tag."""
    for n in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:n]):
            return n
    return 0


def _rstrip_len(text: str, end: int) -> int:
    while end > 0 and text[end - 1].isspace():
        end -= 1
    return end


class ToolParser:
    """Incremental parser. `feed(delta)` and `finish()` return OpenAI chat delta dicts:
    `{"content": ...}` and `{"tool_calls": [...]}` (first id/type/name with empty arguments, then
    the arguments). `names`, if given, are the request's tools: a call to another name is text.
    `max_calls` (1 for `parallel_tool_calls: false`) drops the calls after that many."""

    name = ""

    def __init__(self, names: frozenset[str] | set[str] | None = None,
                 max_calls: int | None = None) -> None:
        self.names = frozenset(names) if names is not None else None
        self.max_calls = max_calls
        self._buf = ""
        self._scan: _JsonScan | None = None
        self.calls: list[ToolCall] = []
        self.content: list[str] = []

    def feed(self, text: str) -> list[dict]:
        self._buf += text
        return self._run(final=False)

    def finish(self) -> list[dict]:
        return self._run(final=True)

    def result(self) -> ParseResult:
        content = "".join(self.content)
        return ParseResult(content if content or not self.calls else None, list(self.calls))

    def parse(self, text: str) -> ParseResult:
        self.feed(text)
        self.finish()
        return self.result()

    def _run(self, final: bool) -> list[dict]:
        events: list[dict] = []
        while self._buf:
            step = self._next(self._buf, final)
            if step is None:
                break
            used, pieces = step
            if used:
                self._buf = self._buf[used:]
                self._scan = None
            for piece in pieces:  # (0, []) means the state changed: decide again
                events += self._emit(piece)
        return events

    def _emit(self, piece: str | _Call) -> list[dict]:
        if isinstance(piece, str):
            if not piece:
                return []
            self.content.append(piece)
            return [{"content": piece}]
        if self.max_calls is not None and len(self.calls) >= self.max_calls:
            return []
        call = ToolCall(new_call_id(), piece.name, piece.arguments)
        index = len(self.calls)
        self.calls.append(call)
        return [{"tool_calls": [{"index": index, "id": call.id, "type": "function",
                                 "function": {"name": call.name, "arguments": ""}}]},
                {"tool_calls": [{"index": index, "function": {"arguments": call.arguments}}]}]

    def _json_end(self, buf: str, start: int) -> int | None:
        if self._scan is None or self._scan.start != start:
            self._scan = _JsonScan(start)
        return self._scan.end(buf)

    def _next(self, buf: str, final: bool) -> tuple[int, list] | None:
        raise NotImplementedError


class HermesParser(ToolParser):
    name = "hermes"
    START, END = "<tool_call>", "</tool_call>"

    def __init__(self, names=None, max_calls: int | None = None) -> None:
        super().__init__(names, max_calls)
        self._after_call = False

    def _next(self, buf: str, final: bool):
        lead = _ws_end(buf, 0)
        if self._after_call and lead:  # whitespace next to a call is not content
            return lead, []
        self._after_call = False
        if buf.startswith(self.START, lead):
            return self._block(buf, lead + len(self.START), final)
        at = buf.find(self.START)
        if at >= 0:
            keep = _rstrip_len(buf, at)
            return keep, [buf[:keep]]
        if final:
            return len(buf), [buf]
        keep = _rstrip_len(buf, len(buf) - _partial_suffix(buf, self.START))
        return (keep, [buf[:keep]]) if keep else None

    def _block(self, buf: str, body: int, final: bool):
        q = _ws_end(buf, body)
        if q == len(buf) and not final:
            return None
        if q < len(buf) and buf[q] == "{":
            end = self._json_end(buf, q)
            if end is None and not final:
                return None
            if end is not None and end > 0:
                r = _ws_end(buf, end)
                closed = buf.startswith(self.END, r)
                if not closed and not final and self.END.startswith(buf[r:]):
                    return None
                if closed or (final and r == len(buf)):  # EOS right after the JSON: a call too
                    call = load_call(buf[q:end], ("arguments",), self.names)
                    if call is not None:
                        self._after_call = True
                        return (r + len(self.END) if closed else r), [call]
        return self._invalid(buf, body, final)

    def _invalid(self, buf: str, body: int, final: bool):
        """Not a call: text up to its end tag (or the next start tag) is content."""
        end, start = buf.find(self.END, body), buf.find(self.START, body)
        if end >= 0 and (start < 0 or end < start):
            return end + len(self.END), [buf[:end + len(self.END)]]
        if start >= 0:
            keep = _rstrip_len(buf, start)
            return keep, [buf[:keep]]
        return (len(buf), [buf]) if final else None


class Llama3JsonParser(ToolParser):
    name = "llama3_json"
    TAG = "<|python_tag|>"

    def __init__(self, names=None, max_calls: int | None = None) -> None:
        super().__init__(names, max_calls)
        self._state = "start"  # start -> (after_call <-> call) | content

    def _next(self, buf: str, final: bool):
        if self._state == "content":
            return len(buf), [buf]
        lead = _ws_end(buf, 0)
        if self._state == "start":
            rest = buf[lead:]
            if not final and (not rest or (self.TAG.startswith(rest) and rest != self.TAG)):
                return None
            q = _ws_end(buf, lead + len(self.TAG)) if rest.startswith(self.TAG) else lead
            return self._object(buf, q, final, first=True)
        # after a call: whitespace is dropped; ";" (or nothing) then another object continues
        if lead == len(buf):
            return (lead, []) if lead or final else None
        q = lead + 1 if buf[lead] == ";" else lead
        q = _ws_end(buf, q)
        if q == len(buf):
            return (len(buf), []) if final else None  # a trailing ";" is not content
        return self._object(buf, q, final, first=False, text_from=lead)

    def _object(self, buf: str, q: int, final: bool, first: bool, text_from: int = 0):
        if q == len(buf) and not final:
            return None
        if q < len(buf) and buf[q] == "{":
            end = self._json_end(buf, q)
            if end is None and not final:
                return None
            if end is not None and end > 0:
                call = load_call(buf[q:end], ("parameters", "arguments"), self.names)
                if call is not None:
                    self._state = "after_call"
                    return end, [call]
        self._state = "content"  # the first object is not a call: the whole text is content
        return text_from, []


class MistralParser(ToolParser):
    name = "mistral"
    TAG = "[TOOL_CALLS]"

    def __init__(self, names=None, max_calls: int | None = None) -> None:
        super().__init__(names, max_calls)
        self._state = "before"  # before -> after_calls -> content, or before -> content

    def _next(self, buf: str, final: bool):
        lead = _ws_end(buf, 0)
        if self._state == "after_calls":
            self._state = "content" if lead < len(buf) else self._state
            if lead:
                return lead, []
        if self._state == "content":
            return len(buf), [buf]
        if buf.startswith(self.TAG, lead):
            return self._calls(buf, _ws_end(buf, lead + len(self.TAG)), final)
        at = buf.find(self.TAG)
        if at >= 0:
            keep = _rstrip_len(buf, at)
            return keep, [buf[:keep]]
        if final:
            return len(buf), [buf]
        keep = _rstrip_len(buf, len(buf) - _partial_suffix(buf, self.TAG))
        return (keep, [buf[:keep]]) if keep else None

    def _calls(self, buf: str, q: int, final: bool):
        if q == len(buf) and not final:
            return None
        if q < len(buf) and buf[q] in "[{":
            end = self._json_end(buf, q)
            if end is None and not final:
                return None
            calls = self._load(buf[q:end]) if end is not None and end > 0 else None
            if calls:
                self._state = "after_calls"
                return end, calls
        self._state = "content"  # not a call list: the tag and what follows are text
        return 0, []

    def _load(self, text: str) -> list[_Call] | None:
        try:
            obj = json.loads(text, parse_constant=_no_constant)
        except (ValueError, RecursionError):
            return None
        items = obj if isinstance(obj, list) else [obj]
        calls = [call_from_obj(item, ("arguments",), self.names) for item in items]
        return calls if calls and all(calls) else None


PARSERS: dict[str, type[ToolParser]] = {
    p.name: p for p in (HermesParser, Llama3JsonParser, MistralParser)}


def create_tool_parser(name: str, names=None, max_calls: int | None = None) -> ToolParser:
    if name not in PARSERS:
        raise ValueError(f"--tool-call-parser must be one of {', '.join(PARSERS)}, got {name!r}")
    return PARSERS[name](names, max_calls)


def parse_tool_calls(name: str, text: str, names=None, max_calls: int | None = None) -> ParseResult:
    return create_tool_parser(name, names, max_calls).parse(text)


def default_parser_for_template(template: str | None) -> str | None:
    """Which parser the chat template's own tool-call format needs, or None if it has none."""
    if not template:
        return None
    if "<tool_call>" in template:
        return "hermes"
    if "<|python_tag|>" in template or '"parameters":' in template:  # Llama 3.1 / 3.2 wording
        return "llama3_json"
    if "[TOOL_CALLS]" in template:
        return "mistral"
    return None
