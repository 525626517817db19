"""/v1/completions through the openai client against the real server, checked against the
offline LLM (greedy) and Hugging Face transformers (prompt log-probabilities)."""

from __future__ import annotations

import json

import httpx
import pytest
import torch

from minisgl.sampling_params import SamplingParams
from tests.worker.server.conftest import SERVED_NAME

PROMPT = "the model server is"


def greedy(llm, prompt, max_tokens: int, **kw):
    return llm.generate([prompt], SamplingParams(temperature=0.0, max_tokens=max_tokens,
                                                 ignore_eos=True, **kw))[0]


def test_text_equals_offline_greedy(client, llm):
    ref = greedy(llm, PROMPT, 12)
    r = client.completions.create(model=SERVED_NAME, prompt=PROMPT, max_tokens=12,
                                  temperature=0, extra_body={"ignore_eos": True})
    assert r.choices[0].text == ref.text
    assert r.choices[0].finish_reason == "length"
    assert r.usage.prompt_tokens == ref.num_prompt_tokens
    assert r.usage.completion_tokens == 12
    assert r.usage.total_tokens == ref.num_prompt_tokens + 12


def test_stream_concatenates_to_offline_greedy(client, llm):
    ref = greedy(llm, PROMPT, 10)
    stream = client.completions.create(model=SERVED_NAME, prompt=PROMPT, max_tokens=10,
                                       temperature=0, stream=True,
                                       stream_options={"include_usage": True},
                                       extra_body={"ignore_eos": True})
    chunks = list(stream)
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == ref.text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    # usage arrives alone in the last chunk
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 10


def test_stream_ends_with_done_and_continuous_usage(server):
    body = {"prompt": PROMPT, "max_tokens": 4, "temperature": 0, "stream": True,
            "ignore_eos": True, "stream_options": {"continuous_usage_stats": True}}
    with httpx.stream("POST", f"{server.base_url}/v1/completions", json=body, timeout=60) as r:
        lines = [ln for ln in r.iter_lines() if ln]
    assert lines[-1] == "data: [DONE]"
    import json

    objs = [json.loads(ln[6:]) for ln in lines[:-1]]
    completion = [o["usage"]["completion_tokens"] for o in objs]
    assert completion == sorted(completion) and completion[-1] == 4


def test_token_id_prompts_and_prompt_lists(client, llm, tokenizer):
    ids = tokenizer.encode(PROMPT)
    ref = greedy(llm, ids, 6)
    r = client.completions.create(model=SERVED_NAME, prompt=ids, max_tokens=6, temperature=0,
                                  extra_body={"ignore_eos": True})
    assert r.choices[0].text == ref.text
    other = "hello world"
    ref2 = greedy(llm, other, 6)
    r = client.completions.create(model=SERVED_NAME, prompt=[PROMPT, other], max_tokens=6,
                                  temperature=0, extra_body={"ignore_eos": True})
    assert [c.text for c in sorted(r.choices, key=lambda c: c.index)] == [ref.text, ref2.text]
    r = client.completions.create(model=SERVED_NAME, prompt=[ids, tokenizer.encode(other)],
                                  max_tokens=6, temperature=0, extra_body={"ignore_eos": True})
    assert [c.text for c in sorted(r.choices, key=lambda c: c.index)] == [ref.text, ref2.text]
    assert r.usage.prompt_tokens == len(ids) + len(tokenizer.encode(other))


def test_n_choices_are_indexed_and_counted(client):
    r = client.completions.create(model=SERVED_NAME, prompt=PROMPT, max_tokens=5, n=3,
                                  temperature=1.0, seed=7, extra_body={"ignore_eos": True})
    assert sorted(c.index for c in r.choices) == [0, 1, 2]
    assert r.usage.completion_tokens == 15
    stream = client.completions.create(model=SERVED_NAME, prompt=PROMPT, max_tokens=5, n=2,
                                       stream=True, extra_body={"ignore_eos": True})
    finished = {c.choices[0].index for c in stream if c.choices and c.choices[0].finish_reason}
    assert finished == {0, 1}


def test_stop_string_across_token_boundary_is_cut(client, llm, tokenizer):
    ref = greedy(llm, PROMPT, 24)
    pieces = [tokenizer.decode([t]) for t in ref.token_ids]
    # a stop string made of the end of one token and the start of the next
    k = next(i for i in range(2, len(pieces) - 1) if pieces[i].strip() and pieces[i + 1].strip())
    stop = pieces[k][-1] + pieces[k + 1][0]
    expected = ref.text[: ref.text.find(stop)]
    for stream in (False, True):
        r = client.completions.create(model=SERVED_NAME, prompt=PROMPT, max_tokens=24,
                                      temperature=0, stop=[stop], stream=stream,
                                      extra_body={"ignore_eos": True})
        if stream:
            chunks = [c for c in r if c.choices]
            text = "".join(c.choices[0].text for c in chunks)
            reason = chunks[-1].choices[0].finish_reason
        else:
            text, reason = r.choices[0].text, r.choices[0].finish_reason
        assert text == expected and stop not in text
        assert reason == "stop"


def test_stop_null_and_unknown_fields_are_accepted(server):
    body = {"prompt": PROMPT, "max_tokens": 2, "stop": None, "best_of_unknown_field": 3,
            "stream_options": {"include_usage": True, "mystery": 1}}
    r = httpx.post(f"{server.base_url}/v1/completions", json=body, timeout=60)
    assert r.status_code == 200, r.text


@pytest.fixture(scope="module")
def hf_model(tiny_model):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(tiny_model), dtype=torch.float32).eval()


def hf_logprobs(hf_model, ids: list[int]) -> list[float]:
    """log P(ids[i] | ids[:i]) for i >= 1."""
    with torch.no_grad():
        logits = hf_model(torch.tensor([ids])).logits[0].float()
    lp = torch.log_softmax(logits, dim=-1)
    return [lp[i - 1, ids[i]].item() for i in range(1, len(ids))]


@pytest.mark.parametrize("max_tokens", [0, 1])
def test_echo_prompt_logprobs_match_transformers(client, tokenizer, hf_model, max_tokens):
    ids = tokenizer.encode(PROMPT + " and the cache")
    r = client.completions.create(model=SERVED_NAME, prompt=ids, max_tokens=max_tokens, echo=True,
                                  logprobs=1, temperature=0, extra_body={"ignore_eos": True})
    lp = r.choices[0].logprobs
    assert r.choices[0].text.startswith(tokenizer.decode(ids))
    assert len(lp.token_logprobs) == len(ids) + max_tokens
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    assert lp.tokens[: len(ids)] == [tokenizer.decode([t]) for t in ids]
    assert lp.token_logprobs[1:len(ids)] == pytest.approx(hf_logprobs(hf_model, ids), abs=2e-4)
    if max_tokens:  # greedy: the generated token is the most likely one after the prompt
        with torch.no_grad():
            last = torch.log_softmax(hf_model(torch.tensor([ids])).logits[0, -1].float(), -1)
        assert lp.token_logprobs[-1] == pytest.approx(last.max().item(), abs=2e-4)


def test_generated_logprobs_and_top_logprobs(client, tokenizer, hf_model):
    ids = tokenizer.encode(PROMPT)
    r = client.completions.create(model=SERVED_NAME, prompt=ids, max_tokens=1, logprobs=3,
                                  temperature=0, extra_body={"ignore_eos": True})
    lp = r.choices[0].logprobs
    with torch.no_grad():
        ref = torch.log_softmax(hf_model(torch.tensor([ids])).logits[0, -1].float(), dim=-1)
    top = torch.topk(ref, 3)
    assert lp.token_logprobs[0] == pytest.approx(top.values[0].item(), abs=2e-4)
    expected = {tokenizer.decode([i]): v for i, v in zip(top.indices.tolist(),
                                                         top.values.tolist())}
    assert lp.top_logprobs[0] == pytest.approx(expected, abs=2e-4)


def test_echo_prompt_positions_carry_top_logprobs(client, tokenizer, hf_model):
    """lm-eval's is_greedy: each prompt position's top_logprobs, as HF computes them."""
    ids = tokenizer.encode(PROMPT + " and the cache")
    r = client.completions.create(model=SERVED_NAME, prompt=ids, max_tokens=0, echo=True,
                                  logprobs=3, temperature=0)
    lp = r.choices[0].logprobs
    with torch.no_grad():
        ref = torch.log_softmax(hf_model(torch.tensor([ids])).logits[0].float(), dim=-1)
    for i in range(1, len(ids)):
        top = torch.topk(ref[i - 1], 3)
        expected = {tokenizer.decode([t]): v for t, v in zip(top.indices.tolist(),
                                                             top.values.tolist())}
        expected.setdefault(tokenizer.decode([ids[i]]), ref[i - 1, ids[i]].item())
        assert lp.top_logprobs[i] == pytest.approx(expected, abs=2e-4), i


def test_streamed_text_offset_counts_the_echo(server):
    body = {"model": SERVED_NAME, "prompt": PROMPT, "max_tokens": 6, "echo": True, "logprobs": 0,
            "temperature": 0, "ignore_eos": True}
    whole = httpx.post(f"{server.base_url}/v1/completions", json=body, timeout=60).json()
    offsets = []
    with httpx.stream("POST", f"{server.base_url}/v1/completions", json={**body, "stream": True},
                      timeout=60) as s:
        for line in s.iter_lines():
            if line.startswith("data: {"):
                lp = json.loads(line[6:])["choices"][0]["logprobs"]
                offsets += lp["text_offset"] if lp else []
    assert offsets == whole["choices"][0]["logprobs"]["text_offset"]
    assert offsets[len(offsets) - 6] >= len(PROMPT)  # generated text starts after the echo
