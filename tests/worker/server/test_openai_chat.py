"""/v1/chat/completions through the openai client against the real server."""

from __future__ import annotations

import json

import httpx

from minisgl.sampling_params import SamplingParams
from tests.worker.server.conftest import SERVED_NAME

MESSAGES = [{"role": "system", "content": "you are a kernel"},
            {"role": "user", "content": "hello model, what is a radix cache?"}]


def chat_ids(tokenizer, messages) -> list[int]:
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return tokenizer.encode(text, add_special_tokens=False)


def greedy(llm, ids, max_tokens: int):
    return llm.generate([ids], SamplingParams(temperature=0.0, max_tokens=max_tokens,
                                              ignore_eos=True))[0]


def test_chat_equals_offline_greedy_on_templated_prompt(client, llm, tokenizer):
    ids = chat_ids(tokenizer, MESSAGES)
    ref = greedy(llm, ids, 10)
    r = client.chat.completions.create(model=SERVED_NAME, messages=MESSAGES, max_tokens=10,
                                       temperature=0, extra_body={"ignore_eos": True})
    msg = r.choices[0]
    assert msg.message.role == "assistant"
    assert msg.message.content == ref.text
    assert msg.finish_reason == "length"
    assert r.usage.prompt_tokens == len(ids) and r.usage.completion_tokens == 10


def test_chat_stream_role_first_then_content_then_usage(client, llm, tokenizer):
    ref = greedy(llm, chat_ids(tokenizer, MESSAGES), 8)
    stream = client.chat.completions.create(model=SERVED_NAME, messages=MESSAGES, max_tokens=8,
                                            temperature=0, stream=True,
                                            stream_options={"include_usage": True},
                                            extra_body={"ignore_eos": True})
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert content == ref.text
    assert [c for c in chunks if c.choices][-1].choices[0].finish_reason == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 8


def test_multi_turn_history_goes_through_the_template(client, llm, tokenizer):
    turns = MESSAGES + [{"role": "assistant", "content": "a tree of prefixes"},
                        {"role": "user", "content": "and a page?"}]
    ref = greedy(llm, chat_ids(tokenizer, turns), 6)
    r = client.chat.completions.create(model=SERVED_NAME, messages=turns, max_tokens=6,
                                       temperature=0, extra_body={"ignore_eos": True})
    assert r.choices[0].message.content == ref.text
    assert r.usage.prompt_tokens == len(chat_ids(tokenizer, turns))


def test_max_completion_tokens_and_default_budget(client):
    r = client.chat.completions.create(model=SERVED_NAME, messages=MESSAGES,
                                       max_completion_tokens=3, temperature=0,
                                       extra_body={"ignore_eos": True})
    assert r.usage.completion_tokens == 3
    # no max_tokens: the budget is the rest of the context, so the request is accepted
    r = client.chat.completions.create(model=SERVED_NAME, messages=MESSAGES, temperature=0,
                                       stop=["e"], n=1)
    assert r.choices[0].finish_reason in ("stop", "length")


def test_chat_logprobs_shape(client):
    r = client.chat.completions.create(model=SERVED_NAME, messages=MESSAGES, max_tokens=3,
                                       temperature=0, logprobs=True, top_logprobs=2,
                                       extra_body={"ignore_eos": True})
    content = r.choices[0].logprobs.content
    assert len(content) == 3
    for item in content:
        assert len(item.top_logprobs) == 2
        # greedy: the chosen token is the most likely one
        assert item.logprob == max(t.logprob for t in item.top_logprobs)
        assert bytes(item.bytes).decode("utf-8", "replace") == item.token


def test_n_choices_stream_each_finish(server):
    body = {"messages": MESSAGES, "max_tokens": 4, "n": 3, "stream": True, "ignore_eos": True}
    with httpx.stream("POST", f"{server.base_url}/v1/chat/completions", json=body,
                      timeout=60) as r:
        lines = [ln for ln in r.iter_lines() if ln]
    assert lines[-1] == "data: [DONE]"
    objs = [json.loads(ln[6:]) for ln in lines[:-1]]
    done = {o["choices"][0]["index"] for o in objs if o["choices"][0]["finish_reason"]}
    assert done == {0, 1, 2}
    assert all(o["object"] == "chat.completion.chunk" for o in objs)


def test_content_parts_and_extension_fields(client):
    r = client.chat.completions.create(
        model=SERVED_NAME, max_tokens=4, temperature=0.8, top_p=0.9, seed=3,
        messages=[{"role": "user", "content": [{"type": "text", "text": "hello"},
                                               {"type": "text", "text": " world"}]}],
        presence_penalty=0.5, frequency_penalty=0.5,
        extra_body={"top_k": 20, "min_p": 0.05, "repetition_penalty": 1.1, "min_tokens": 2,
                    "ignore_eos": False, "skip_special_tokens": True, "stop_token_ids": [3],
                    "include_stop_str_in_output": False})
    assert r.usage.completion_tokens >= 1
