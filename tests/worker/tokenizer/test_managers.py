from __future__ import annotations

import pytest

from minisgl.errors import ContextTooLong, InvalidRequest
from minisgl.message.frontend import ErrorMsg
from minisgl.message.tokenizer import TokenizedMsg, TokenizeMsg
from minisgl.sampling_params import SamplingParams
from minisgl.scheduler.types import TokenOutput
from minisgl.tokenizer.detokenize import DetokenizeManager
from minisgl.tokenizer.tokenize import AUTO_MAX_TOKENS, TokenizeManager


def _msg(prompt, **params) -> TokenizeMsg:
    return TokenizeMsg(1, prompt, SamplingParams(**params), 0.0)


def test_tokenize_text_and_token_ids(tokenizer):
    tm = TokenizeManager(tokenizer, max_model_len=64)
    out = tm.tokenize(_msg("hello world", max_tokens=4))
    assert out.input_ids == tokenizer.encode("hello world") and out.uid == 1
    assert tm.tokenize(_msg([5, 6, 7], max_tokens=4)).input_ids == [5, 6, 7]


@pytest.mark.parametrize("prompt, params, error, param", [
    ("", {}, InvalidRequest, "prompt"),
    ([], {}, InvalidRequest, "prompt"),
    ([1, 10_000], {}, InvalidRequest, "prompt"),
    ([1, -1], {}, InvalidRequest, "prompt"),
    ([1] * 64, {"max_tokens": 1}, ContextTooLong, "messages"),
    ([1] * 60, {"max_tokens": 5}, ContextTooLong, "max_tokens"),
    ("hello", {"top_p": 0.0}, InvalidRequest, "top_p"),
])
def test_bad_requests_are_rejected_early_with_the_field(tokenizer, prompt, params, error, param):
    tm = TokenizeManager(tokenizer, max_model_len=64)
    with pytest.raises(error) as info:
        tm.tokenize(_msg(prompt, **params))
    assert info.value.param == param
    reply = tm.try_tokenize(_msg(prompt, **params))
    assert isinstance(reply, ErrorMsg) and type(reply.to_exception()) is error


def test_auto_max_tokens_fills_the_context(tokenizer):
    tm = TokenizeManager(tokenizer, max_model_len=64)
    out = tm.tokenize(_msg([1] * 60, max_tokens=1000, extra={AUTO_MAX_TOKENS: True}))
    assert out.params.max_tokens == 4


def _register(dm: DetokenizeManager, tokenizer, uid: int, **params) -> list[int]:
    prompt = tokenizer.encode("hello")
    dm.register(TokenizedMsg(uid, prompt, SamplingParams(**params), 0.0))
    return prompt


def _out(uid, token, index=0, finished=False, reason=None, **kw) -> TokenOutput:
    return TokenOutput(uid=uid, index=index, token_id=token, finished=finished,
                       finish_reason=reason, **kw)


def test_detokenize_manager_streams_and_finishes(tokenizer):
    dm = DetokenizeManager(tokenizer, eos_token_ids=[tokenizer.eos_token_id])
    prompt = _register(dm, tokenizer, 7, logprobs=1)
    ids = tokenizer.encode(" world 🙂")
    outs = [_out(7, t, logprob=-0.5, top_logprobs=[(t, -0.5)], num_output_tokens=i + 1)
            for i, t in enumerate(ids)]
    outs[0].prompt_logprobs, outs[0].queue_time_s = [None, -1.0], 0.25
    outs.append(_out(7, tokenizer.eos_token_id, finished=True, reason="stop", logprob=-0.1))
    chunks, aborts = dm.process(outs)
    assert aborts == [] and len(dm) == 0
    assert "".join(c.text for c in chunks) == " world 🙂"  # EOS adds no text
    assert [t for c in chunks for t in c.token_ids] == ids + [tokenizer.eos_token_id]
    first, last = chunks[0], chunks[-1]
    assert first.prompt_token_ids == prompt and first.prompt_logprobs == [None, -1.0]
    assert first.queue_time_s == 0.25 and chunks[1].prompt_token_ids is None
    assert first.logprobs == [-0.5] and first.top_logprobs == [[(ids[0], -0.5)]]
    assert last.finished and last.finish_reason == "stop"
    assert dm.process([_out(7, 5)]) == ([], [])  # late outputs for a finished uid are dropped


def test_stop_string_aborts_just_that_choice_at_once(tokenizer):
    dm = DetokenizeManager(tokenizer)
    _register(dm, tokenizer, 3, stop=("model",), n=2)
    a, b = tokenizer.encode(" the model is"), tokenizer.encode(" the")
    chunks, aborts = dm.process([_out(3, t, index=0) for t in a])
    assert "".join(c.text for c in chunks) == " the " and chunks[-1].finish_reason == "stop"
    assert aborts == [(3, 0)]  # choice 0 stops decoding now; choice 1 goes on
    more, aborts = dm.process([_out(3, t, index=0) for t in a])  # choice 0 is over: ignored
    assert more == [] and aborts == []
    chunks, aborts = dm.process([_out(3, t, index=1) for t in b]
                                + [_out(3, None, index=1, finished=True, reason="length")])
    assert "".join(c.text for c in chunks) == " the" and chunks[-1].finish_reason == "length"
    assert aborts == [] and len(dm) == 0


def test_drop_reports_whether_the_request_was_live(tokenizer):
    dm = DetokenizeManager(tokenizer)
    _register(dm, tokenizer, 1)
    assert dm.drop(1) and not dm.drop(1) and not dm.drop(2)


def test_one_step_of_many_requests_matches_request_by_request(tokenizer):
    """process() decodes a whole step in one batch; the chunks equal those of feeding every
    request on its own (stop strings, special-token skipping, a repeated output included)."""
    import random

    rng = random.Random(3)
    vocab = tokenizer.encode("héllo wörld 🙂 the end. stop here, then more text")
    reqs = {u: (SamplingParams(max_tokens=40, stop=("end",) if u % 3 == 0 else (),
                               skip_special_tokens=u % 2 == 0),
                [rng.choice(vocab) for _ in range(rng.randint(1, 8))]) for u in range(12)}
    steps = [[TokenOutput(uid=u, token_id=rng.choice(vocab), finished=s == 9,
                          finish_reason="length" if s == 9 else None) for u in reqs]
             for s in range(10)]
    steps[4].append(TokenOutput(uid=5, token_id=vocab[0]))  # the same choice twice in one step

    def managers():
        m = DetokenizeManager(tokenizer, [tokenizer.eos_token_id])
        for u, (p, ids) in reqs.items():
            m.register(TokenizedMsg(u, ids, p, 0.0))
        return m

    batched, alone = managers(), managers()
    for step in steps:
        got = batched.process(step)
        want = ([], [])
        for out in step:
            c, a = alone.process([out])
            want[0].extend(c)
            want[1].extend(a)
        assert got == want
