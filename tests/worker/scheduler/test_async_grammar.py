"""Grammars compile aside (the server's async_grammar): running requests keep stepping while a
new grammar compiles, the request is admitted when rank 0 says so, bad grammars and aborts of
compiling requests end cleanly. In-process, with the tiny test model and its real tokenizer."""

from __future__ import annotations

import json

import pytest

from minisgl.config import SchedulerConfig
from minisgl.errors import InvalidRequest
from minisgl.sampling_params import SamplingParams
from minisgl.scheduler.scheduler import Scheduler
from tests.helpers.pages import assert_no_leak

pytest.importorskip("xgrammar")

SCHEMA = {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "boolean"}},
          "required": ["a", "b"], "additionalProperties": False}


def make(model: str) -> Scheduler:
    return Scheduler(SchedulerConfig(model_path=model, dtype="float32"), async_grammar=True)


def drive(s: Scheduler, max_steps: int = 5_000):
    """Rank 0's loop (scheduler/process.py run_loop): admit what compiled, step. Returns the
    outputs by uid, each uid's admission iteration, and the errors."""
    outs, admitted, errors = {}, {}, []
    for it in range(max_steps):
        if not (s.has_work or s.compiling):
            return outs, admitted, errors
        ready = s.poll_compiled()
        s.admit_compiled(ready)
        admitted.update({uid: it for uid in ready})
        errors += s.take_errors()
        for o in s.step():
            outs.setdefault(o.uid, []).append((it, o))
    raise AssertionError("scheduler did not drain")


def test_free_requests_run_while_a_grammar_compiles_and_the_constrained_one_follows(tiny_llama):
    from transformers import AutoTokenizer

    s = make(tiny_llama)
    free = SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True)
    s.add_request(0, [5, 6, 7], free)
    s.add_request(1, [5, 6, 7], SamplingParams(max_tokens=60, temperature=1.0, seed=3,
                                               grammar=("json", json.dumps(SCHEMA))))
    assert s.compiling and s.stats().num_waiting == 2  # the free one queued, the other aside
    outs, admitted, errors = drive(s)
    assert errors == []
    first_free = outs[0][0][0]
    assert first_free < admitted[1]  # the free request did not wait for the compile
    tokens = [o.token_id for _, o in outs[1] if o.token_id is not None]
    assert outs[1][-1][1].finish_reason == "stop"
    text = AutoTokenizer.from_pretrained(tiny_llama).decode(tokens, skip_special_tokens=True)
    value = json.loads(text)
    assert set(value) == {"a", "b"} and isinstance(value["b"], bool)
    # The same grammar again is a cache hit: admitted in add_request, nothing compiles aside.
    s.add_request(2, [9], SamplingParams(max_tokens=60, grammar=("json", json.dumps(SCHEMA))))
    assert not s.compiling
    drive(s)
    assert_no_leak(s)


def test_a_grammar_that_cannot_compile_is_an_error_after_add_request(tiny_llama):
    s = make(tiny_llama)
    s.add_request(4, [5, 6], SamplingParams(max_tokens=4, grammar=("regex", "(unclosed")))
    s.add_request(5, [5, 6], SamplingParams(max_tokens=4, temperature=0.0, ignore_eos=True))
    outs, _, errors = drive(s)
    assert [uid for uid, _ in errors] == [4] and isinstance(errors[0][1], InvalidRequest)
    assert "cannot compile the regex" in str(errors[0][1])
    assert 4 not in outs and outs[5][-1][1].finish_reason == "length"
    # the uid is free again (a client may retry with the same id)
    s.add_request(4, [5, 6], SamplingParams(max_tokens=2, temperature=0.0, ignore_eos=True))
    assert drive(s)[0][4][-1][1].finished
    assert_no_leak(s)


def test_aborting_a_compiling_request_ends_each_choice_and_its_ready_word_is_ignored(tiny_llama):
    s = make(tiny_llama)
    s.add_request(7, [5, 6], SamplingParams(n=2, max_tokens=4, temperature=1.0,
                                            grammar=("regex", "[ab]{3}")))
    assert s.compiling
    s.abort(7)
    assert not s.compiling
    outs = s.step()
    assert sorted((o.uid, o.index, o.finish_reason) for o in outs) == [(7, 0, "abort"), (7, 1, "abort")]
    s.admit_compiled([7])  # rank 0 saw it ready before the abort reached it: nothing happens
    assert not s.has_work and s.take_errors() == []
    assert_no_leak(s)
