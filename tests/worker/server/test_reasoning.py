"""Reasoning parsers split <think>...</think> from the answer, whole and chunk by chunk."""

from __future__ import annotations

import pytest

from minisgl.server.reasoning import create_reasoning_parser, split_reasoning

TEXT = "<think>step 1, step 2</think>The answer is 4."


def stream(name: str, text: str, size: int) -> tuple[str, str]:
    parser = create_reasoning_parser(name)
    pieces = [text[i:i + size] for i in range(0, len(text), size)]
    r, c = [], []
    for i, piece in enumerate(pieces):
        dr, dc = parser.feed(piece, final=i == len(pieces) - 1)
        r.append(dr)
        c.append(dc)
    return "".join(r), "".join(c)


@pytest.mark.parametrize("size", [1, 2, 3, 5, 7, 100])
def test_tags_split_across_chunks_give_the_whole_texts_split(size):
    assert stream("qwen3", TEXT, size) == ("step 1, step 2", "The answer is 4.")
    assert stream("deepseek_r1", "step 1</think>42", size) == ("step 1", "42")
    assert stream("deepseek_r1", "<think>step 1</think>42", size) == ("step 1", "42")


def test_whole_texts():
    assert split_reasoning("qwen3", TEXT) == ("step 1, step 2", "The answer is 4.")
    assert split_reasoning("qwen3", "no thinking here") == (None, "no thinking here")
    assert split_reasoning("qwen3", "<think>cut off by max_tokens") == ("cut off by max_tokens", "")
    assert split_reasoning("qwen3", "a < b <thi") == (None, "a < b <thi")  # a partial tag at the end is text
    assert split_reasoning("deepseek_r1", "all reasoning") == ("all reasoning", "")
    # Only one block: a later <think> is part of the answer.
    assert split_reasoning("qwen3", "<think>x</think>y<think>z") == ("x", "y<think>z")


def test_unknown_parser_is_a_clear_error():
    with pytest.raises(ValueError, match="qwen3"):
        create_reasoning_parser("o1")


def test_chat_stream_and_whole_response_carry_reasoning_content():
    """ResponseBuilder + stream_events (the server's response shaping) on chunks whose tag
    boundaries fall mid-chunk."""
    import asyncio
    import json

    from minisgl.message.frontend import ReplyChunk
    from minisgl.sampling_params import SamplingParams
    from minisgl.server.openai_serving import ResponseBuilder, stream_events

    pieces = ["<thi", "nk>I should", " add.</th", "ink>", "4", "."]

    class Run:  # what ResponseBuilder reads of a GenerationRun
        params, prompts, request_id = SamplingParams(max_tokens=8), [[1, 2]], "chatcmpl-x"

        async def chunks(self):
            for i, text in enumerate(pieces):
                yield 0, ReplyChunk(uid=0, index=0, text=text, token_ids=[i + 3],
                                    finished=i == len(pieces) - 1,
                                    finish_reason="stop" if i == len(pieces) - 1 else None,
                                    num_prompt_tokens=2, num_output_tokens=i + 1)

    async def collect(builder):
        return [e async for e in stream_events(builder, False, False)]

    events = asyncio.run(collect(ResponseBuilder(Run(), "m", True, None, reasoning_parser="qwen3")))
    lines = [ln for e in events for ln in e.decode().split("\n\n") if ln and ln != "data: [DONE]"]
    deltas = [json.loads(ln[6:])["choices"][0]["delta"] for ln in lines]
    assert "".join(d.get("reasoning_content", "") for d in deltas) == "I should add."
    assert "".join(d.get("content", "") for d in deltas) == "4."
    whole = ResponseBuilder(Run(), "m", True, None, reasoning_parser="deepseek_r1")
    for text in ("plan", "</think>", "42"):
        whole.choices[0].text.append(text)
    message = whole.response()["choices"][0]["message"]
    assert (message["reasoning_content"], message["content"]) == ("plan", "42")
