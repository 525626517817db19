"""Request parsing and mapping to SamplingParams, without a server (fast unit tests)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from minisgl.errors import ContextTooLong, InvalidRequest
from minisgl.server.errors import validation_error_body
from minisgl.server.metrics import ServerMetrics
from minisgl.server.openai_serving import build_chat, build_completion
from minisgl.server.protocol import ChatCompletionRequest, CompletionRequest, unknown_fields
from minisgl.scheduler.types import SchedulerStats


@pytest.fixture(scope="module")
def tok(tiny_llama):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_llama)


def chat(**kw) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate(
        {"messages": [{"role": "user", "content": "hello"}], **kw})


def test_completion_prompt_shapes():
    for prompt, expected in [("hi", ["hi"]), (["a", "b"], ["a", "b"]), ([1, 2], [[1, 2]]),
                             ([[1], [2, 3]], [[1], [2, 3]])]:
        prompts, _ = build_completion(CompletionRequest(prompt=prompt), 64)
        assert prompts == expected


def test_completion_params_map_openai_and_extension_fields():
    req = CompletionRequest.model_validate({
        "prompt": "hi", "max_tokens": 7, "temperature": 0.5, "top_p": 0.9, "top_k": 5,
        "min_p": 0.1, "seed": 3, "stop": "x", "stop_token_ids": [4], "n": 2, "logprobs": 2,
        "echo": True, "ignore_eos": True, "min_tokens": 1, "repetition_penalty": 1.2,
        "presence_penalty": 0.1, "frequency_penalty": 0.2, "skip_special_tokens": False,
        "include_stop_str_in_output": True})
    _, p = build_completion(req, 64)
    assert (p.max_tokens, p.temperature, p.top_p, p.top_k, p.min_p, p.seed) == (7, 0.5, 0.9, 5,
                                                                                 0.1, 3)
    assert p.stop == ("x",) and p.stop_token_ids == (4,) and p.n == 2
    assert p.logprobs == 2 and p.prompt_logprobs and p.ignore_eos and p.min_tokens == 1
    assert (p.repetition_penalty, p.presence_penalty, p.frequency_penalty) == (1.2, 0.1, 0.2)
    assert not p.skip_special_tokens and p.include_stop_str_in_output


def test_completion_defaults_follow_openai():
    _, p = build_completion(CompletionRequest(prompt="hi", stop=None), 64)
    assert p.max_tokens == 16 and p.temperature == 1.0 and p.stop == () and p.logprobs is None


def test_max_tokens_zero_only_with_echo():
    with pytest.raises(InvalidRequest):
        build_completion(CompletionRequest(prompt="hi", max_tokens=0), 64)
    _, p = build_completion(CompletionRequest(prompt="hi", max_tokens=0, echo=True), 64)
    assert p.max_tokens == 0


def test_chat_template_and_default_budget(tok):
    ids, p, _ = build_chat(chat(), tok, 64)
    text = tok.apply_chat_template([{"role": "user", "content": "hello"}], tokenize=False,
                                   add_generation_prompt=True)
    assert ids == tok.encode(text, add_special_tokens=False)
    assert p.max_tokens == 64 - len(ids)
    _, p, _ = build_chat(chat(max_tokens=5, max_completion_tokens=3), tok, 64)
    assert p.max_tokens == 3


def test_chat_logprobs_mapping(tok):
    assert build_chat(chat(logprobs=True), tok, 64)[1].logprobs == 0
    assert build_chat(chat(logprobs=True, top_logprobs=3), tok, 64)[1].logprobs == 3
    assert build_chat(chat(), tok, 64)[1].logprobs is None
    with pytest.raises(InvalidRequest):
        build_chat(chat(top_logprobs=3), tok, 64)


def test_chat_context_limits(tok):
    with pytest.raises(ContextTooLong):
        build_chat(chat(max_tokens=60), tok, 64)
    with pytest.raises(ContextTooLong):
        build_chat(chat(messages=[{"role": "user", "content": "hello " * 100}]), tok, 64)


def test_strict_types_and_error_param_paths():
    with pytest.raises(ValidationError) as info:
        ChatCompletionRequest.model_validate({"messages": [{"role": "user", "content": 5}]})
    assert validation_error_body(info.value)["error"]["param"] == "messages.0.content"
    with pytest.raises(ValidationError) as info:
        CompletionRequest.model_validate({"prompt": "x", "stream": "yes"})
    assert validation_error_body(info.value)["error"]["param"] == "stream"
    with pytest.raises(ValidationError):
        CompletionRequest.model_validate({"prompt": "x", "max_tokens": "5"})


def test_unknown_fields_are_kept_and_named():
    req = CompletionRequest.model_validate({"prompt": "x", "foo": 1,
                                            "stream_options": {"bar": 2}})
    assert unknown_fields(req) == ["foo", "stream_options.bar"]


def test_each_app_has_its_own_registry():
    a = ServerMetrics("a", SchedulerStats, lambda: True)
    b = ServerMetrics("b", SchedulerStats, lambda: False)
    a.request_finished("success")
    assert b'minisgl_requests_total{model="a",status="success"} 1.0' in a.render()
    assert b'model="a"' not in b.render()
    assert b'minisgl_server_ready{model="b"} 0.0' in b.render()
    with pytest.raises(ValueError):
        a.request_finished("weird")


def test_integers_beyond_int64_are_rejected_naming_the_field():
    import pydantic
    import pytest as _pytest

    from minisgl.server.protocol import CompletionRequest

    with _pytest.raises(pydantic.ValidationError, match="seed"):
        CompletionRequest(model="m", prompt="x", seed=2**65)
    assert CompletionRequest(model="m", prompt="x", seed=2**63 - 1).seed == 2**63 - 1


def test_null_takes_the_default_and_required_fields_stay_required():
    req = ChatCompletionRequest.model_validate({
        "messages": [{"role": "user", "content": "x"}], "n": None, "stream": None,
        "logprobs": None, "ignore_eos": None, "min_tokens": None, "max_tokens": None,
        "temperature": None, "stream_options": None, "add_generation_prompt": None})
    assert (req.n, req.stream, req.logprobs, req.ignore_eos, req.min_tokens) == (1, False, False, False, 0)
    assert req.add_generation_prompt is True and req.max_tokens is None
    with pytest.raises(ValidationError):
        ChatCompletionRequest.model_validate({"messages": None})
    with pytest.raises(ValidationError):
        CompletionRequest.model_validate({"prompt": None})


def test_tiny_temperature_is_greedy_and_stop_token_ids_are_bounded():
    from minisgl.sampling_params import MAX_STOP_TOKEN_IDS, SamplingParams

    assert SamplingParams(temperature=1e-8).greedy and not SamplingParams(temperature=1e-3).greedy
    with pytest.raises(InvalidRequest) as info:
        SamplingParams(stop_token_ids=tuple(range(MAX_STOP_TOKEN_IDS + 1))).validate()
    assert info.value.param == "stop_token_ids"
