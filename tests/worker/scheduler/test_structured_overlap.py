"""Structured output under overlap scheduling: a constrained row takes every decode step (the
mask callback commits the step in flight before it fills the bitmask), its tokens equal the
synchronous loop's, and rows that end at the committed step get no mask. On the CPU with the
tiny test model and its real tokenizer; overlap forced on."""

from __future__ import annotations

import json

import pytest

from minisgl import LLM, SamplingParams
from tests.helpers.pages import assert_no_leak

pytest.importorskip("xgrammar")

SCHEMA = {"type": "object", "properties": {
    "name": {"type": "string", "maxLength": 12}, "n": {"type": "integer"},
    "ok": {"type": "boolean"}}, "required": ["name", "n", "ok"], "additionalProperties": False}


def _run(model: str, overlap: bool, params: list[SamplingParams]):
    llm = LLM(model, dtype="float32", overlap=overlap)
    sched = llm.scheduler
    assert sched.overlap is overlap
    steps = []  # per launched decode step: the uids of its rows
    launch = sched.engine.launch

    def recording(batch, mask=None):
        if batch.phase == "decode":
            steps.append(sorted(r.uid for r in batch.rows))
        return launch(batch, mask)
    sched.engine.launch = recording
    outs = llm.generate([f"record {i}:" for i in range(len(params))], params)
    assert_no_leak(sched)
    return outs, steps


def test_constrained_rows_take_every_step_under_overlap(tiny_llama):
    grammar = ("json", json.dumps(SCHEMA))
    params = [SamplingParams(max_tokens=80, temperature=1.0, seed=i, grammar=grammar)
              for i in range(6)]
    params.append(SamplingParams(max_tokens=40, temperature=1.0, seed=99))  # a free row beside
    sync_outs, _ = _run(tiny_llama, False, params)
    outs, steps = _run(tiny_llama, True, params)
    for a, b in zip(outs, sync_outs):
        assert a.token_ids == b.token_ids  # the same masks, in the same grammar states
    for out in outs[:-1]:
        assert out.finish_reason == "stop", out.text
        json.loads(out.text)
    # every decode step carries every request that still runs: a row joining every other step
    # (as before) would take about twice the steps of the longest output
    longest = max(len(o.token_ids) for o in outs)
    assert len(steps) <= longest + 1, (len(steps), longest)
    assert len(steps[0]) == len(params)  # all rows, constrained or not, in the first step
    for uid in {u for step in steps for u in step}:  # from its first step to its last, no gap
        taken = [i for i, step in enumerate(steps) if uid in step]
        assert taken == list(range(taken[0], taken[-1] + 1)), (uid, taken)
