"""What every tool-call parser shares: the call type, a resumable JSON bracket scanner, and
`ToolParser`, which turns a family's `_next` decisions into OpenAI chat deltas.

Streaming and whole parsing are one code path: `_next(buf, final)` decides the next piece at the
head of the undecided text, or returns None when a longer text could decide differently. Every
decision is therefore the same whatever the chunking, and `parse(text)` is one `feed` plus
`finish`. The cost: a call is sent only once its JSON has closed and validated (so an invalid
call can still become content), its arguments as one fragment; content streams as it comes,
less a tail that could still become markup and trailing whitespace (dropped next to a call).
"""

from __future__ import annotations

import json
import re
import secrets
import string
from abc import ABC, abstractmethod
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


def loads(text: str) -> tuple[bool, object]:
    """Strict JSON (no NaN / Infinity, bounded nesting) -> (ok, value)."""
    try:
        return True, json.loads(text, parse_constant=_no_constant)
    except (ValueError, RecursionError):
        return False, None


def load_call(text: str, args_keys: tuple[str, ...] = ("arguments", "parameters"),
              names: frozenset[str] | None = None) -> _Call | None:
    """`{"name": str, "arguments": {...}}` as JSON text -> the call, or None if it is not one.
    Arguments may be missing (no parameters) or a string holding a JSON object."""
    ok, obj = loads(text)
    return call_from_obj(obj, args_keys, names) if ok else None


def call_from_obj(obj, args_keys: tuple[str, ...] = ("arguments", "parameters"),
                  names: frozenset[str] | None = None) -> _Call | None:
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str) or not obj["name"]:
        return None
    if names is not None and obj["name"] not in names:
        return None
    present = [k for k in args_keys if k in obj]
    args = obj[present[0]] if present else {}
    if isinstance(args, str):
        args = loads(args)[1]
    if not isinstance(args, dict):
        return None
    return _Call(obj["name"], json.dumps(args, ensure_ascii=False, separators=(",", ":")))


class _JsonScan:
    """Finds where a JSON object or array starting at `start` closes, resumably: the text may
    grow between calls (streaming) without rescanning what was seen."""

    _CLOSE = {"{": "}", "[": "]"}
    _IN_STRING = re.compile(r'["\\]')  # what ends or escapes inside a string
    _OUTSIDE = re.compile(r'["{}\[\]]')

    def __init__(self, start: int) -> None:
        self.start, self.pos = start, start
        self.stack: list[str] = []
        self.in_string = False
        self.result: int | None = None

    def end(self, text: str) -> int | None:
        """Index just past the closing bracket; -1 if brackets mismatch; None if not closed yet."""
        if self.result is not None:
            return self.result
        pos = self.pos
        while True:
            m = (self._IN_STRING if self.in_string else self._OUTSIDE).search(text, pos)
            if m is None:
                break
            c, at = m.group(), m.start()
            if c == "\\":
                if at + 1 >= len(text):  # the escaped character has not arrived yet
                    pos = at
                    break
                pos = at + 2
                continue
            pos = at + 1
            if c == '"':
                self.in_string = not self.in_string
            elif c in self._CLOSE:
                self.stack.append(self._CLOSE[c])
            elif not self.stack or self.stack.pop() != c:
                self.result = -1
                return -1
            elif not self.stack:
                self.result = pos
                return pos
        self.pos = len(text) if m is None else pos
        return None


_WS = re.compile(r"\s*")


def _ws_end(text: str, i: int) -> int:
    return _WS.match(text, i).end()


def _partial_suffix(text: str, tag: str) -> int:
    """Length of the longest suffix of text that is a proper prefix of tag."""
    if text.find(tag[0], max(0, len(text) - len(tag) + 1)) < 0:
        return 0
    for n in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:n]):
            return n
    return 0


def _rstrip_len(text: str, end: int) -> int:
    return len(text[:end].rstrip())


class ToolParser(ABC):
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
        self._content: list[str] = []

    def feed(self, text: str) -> list[dict]:
        self._buf += text
        return self._run(final=False)

    def finish(self) -> list[dict]:
        return self._run(final=True)

    def result(self) -> ParseResult:
        content = "".join(self._content)
        return ParseResult(content if content or not self.calls else None, list(self.calls))

    def parse(self, text: str) -> ParseResult:
        self.feed(text)
        self.finish()
        return self.result()

    def _run(self, final: bool) -> list[dict]:
        events: list[dict] = []
        idle = 0
        while self._buf:
            step = self._next(self._buf, final)
            if step is None:
                break
            used, pieces = step
            if used:
                self._buf = self._buf[used:]
                self._scan = None
            idle = 0 if used or pieces else idle + 1
            if idle > 1:  # (0, []) twice: a parser bug that would spin forever
                raise RuntimeError(f"{type(self).__name__} made no progress")
            for piece in pieces:  # (0, []) means the state changed: decide again
                events += self._emit(piece)
        return events

    def _emit(self, piece: str | _Call) -> list[dict]:
        if isinstance(piece, str):
            if not piece:
                return []
            self._content.append(piece)
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

    @abstractmethod
    def _next(self, buf: str, final: bool) -> tuple[int, list[str | _Call]] | None:
        """Decide the head of the undecided text `buf`: (characters consumed, pieces: content
        strings and calls), or None if more text could change the decision (never None when
        `final`). The same decision must come out of every longer `buf`: that is what makes
        streamed and whole parses agree. (0, []) is allowed only after a state change."""
