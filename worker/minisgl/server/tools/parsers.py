"""Tool-call parsers per model family, chosen by `--tool-call-parser` (default: from the chat
template, `default_parser_for_template`).

`hermes` (Qwen2.5 / Qwen3): `<tool_call>\n{"name": ..., "arguments": {...}}\n</tool_call>`, any
number of them, with content around them; whitespace next to a call is dropped. `llama3_json`
(Llama 3.1-3.3): output that starts (after an optional `<|python_tag|>`) with
`{"name": ..., "parameters": {...}}` objects separated by `;`. `mistral` (v3 tokenizers): content,
then `[TOOL_CALLS][{"name": ..., "arguments": ...}]`. Markup that is not a valid call is content.
`<|python_tag|>` and `[TOOL_CALLS]` are special tokens: detokenize with skip_special_tokens off
to see them (llama3_json works without the tag).
"""

from __future__ import annotations

from minisgl.server.tools.base import (ParseResult, ToolParser, _Call, _partial_suffix,
                                       _rstrip_len, _ws_end, call_from_obj, load_call, loads)


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
        return _text_before(buf, self.START, final)

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
            return self._object(buf, q, final)
        # after a call: whitespace is dropped; ";" (or nothing) then another object continues
        if lead == len(buf):
            return (lead, []) if lead or final else None
        q = lead + 1 if buf[lead] == ";" else lead
        q = _ws_end(buf, q)
        if q == len(buf):
            return (len(buf), []) if final else None  # a trailing ";" is not content
        return self._object(buf, q, final, text_from=lead)

    def _object(self, buf: str, q: int, final: bool, text_from: int = 0):
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
        self._state = "content"  # not a call: from here (the whole text if first) it is text
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
        return _text_before(buf, self.TAG, final)

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
        ok, obj = loads(text)
        if not ok:
            return None
        items = obj if isinstance(obj, list) else [obj]
        calls = [call_from_obj(item, ("arguments",), self.names) for item in items]
        return calls if calls and all(calls) else None


def _text_before(buf: str, tag: str, final: bool):
    """buf does not start with tag: its text up to the next tag (or, streaming, up to a possible
    partial tag at its end) is content, without the whitespace before the tag."""
    at = buf.find(tag)
    if at >= 0:
        keep = _rstrip_len(buf, at)
        return keep, [buf[:keep]]
    if final:
        return len(buf), [buf]
    keep = _rstrip_len(buf, len(buf) - _partial_suffix(buf, tag))
    return (keep, [buf[:keep]]) if keep else None


PARSERS: dict[str, type[ToolParser]] = {
    p.name: p for p in (HermesParser, Llama3JsonParser, MistralParser)}


def create_tool_parser(name: str, names=None, max_calls: int | None = None) -> ToolParser:
    if name not in PARSERS:
        raise ValueError(f"--tool-call-parser must be one of {', '.join(PARSERS)}, got {name!r}")
    return PARSERS[name](names, max_calls)


def parse_tool_calls(name: str, text: str, names=None, max_calls: int | None = None
                     ) -> ParseResult:
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
