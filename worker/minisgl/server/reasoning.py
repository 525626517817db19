"""Reasoning parsers: split a reasoning model's `<think>...</think>` from its answer, into
`reasoning_content` and `content` of chat responses (whole and streamed).

`--reasoning-parser qwen3`: the model opens `<think>` itself (Qwen3 with enable_thinking);
text before any `<think>` is answer. `--reasoning-parser deepseek_r1`: the chat template
opens the block, so output starts inside the reasoning; a leading `<think>` is dropped.
Tags may arrive split across chunks: a tail that could still become a tag is held back.
"""

from __future__ import annotations

START, END = "<think>", "</think>"


class ReasoningParser:
    def __init__(self, starts_in_reasoning: bool) -> None:
        self.in_reasoning = starts_in_reasoning
        self._strip_leading_start = starts_in_reasoning
        self._seen_start = starts_in_reasoning
        self._held = ""

    def feed(self, text: str, final: bool = False) -> tuple[str, str]:
        """New text -> (reasoning delta, content delta)."""
        buf, self._held = self._held + text, ""
        reasoning, content = [], []
        while buf:
            if self._strip_leading_start:
                stripped = buf.lstrip()
                if START.startswith(stripped) and not final and len(stripped) < len(START):
                    self._held = buf
                    return "".join(reasoning), "".join(content)
                self._strip_leading_start = False
                if stripped.startswith(START):
                    buf = stripped[len(START):]
                    continue
            tag = END if self.in_reasoning else START
            if not self.in_reasoning and self._seen_start:
                content.append(buf)  # one reasoning block: the rest is the answer
                break
            out = reasoning if self.in_reasoning else content
            at = buf.find(tag)
            if at >= 0:
                out.append(buf[:at])
                buf = buf[at + len(tag):]
                self.in_reasoning = not self.in_reasoning
                self._seen_start = True
                continue
            keep = 0 if final else _partial_suffix(buf, tag)
            out.append(buf[: len(buf) - keep])
            self._held = buf[len(buf) - keep:]
            break
        return "".join(reasoning), "".join(content)


def _partial_suffix(text: str, tag: str) -> int:
    """Length of the longest suffix of text that is a proper prefix of tag."""
    for n in range(min(len(tag) - 1, len(text)), 0, -1):
        if tag.startswith(text[-n:]):
            return n
    return 0


PARSERS = {"qwen3": False, "deepseek_r1": True}  # name -> output starts inside the reasoning


def create_reasoning_parser(name: str | None) -> ReasoningParser | None:
    if name is None:
        return None
    if name not in PARSERS:
        raise ValueError(f"--reasoning-parser must be one of {', '.join(PARSERS)}, got {name!r}")
    return ReasoningParser(PARSERS[name])


def split_reasoning(name: str, text: str) -> tuple[str | None, str]:
    """Whole text -> (reasoning or None when there was none, content)."""
    parser = create_reasoning_parser(name)
    reasoning, content = parser.feed(text, final=True)
    return (reasoning if parser._seen_start else None), content
