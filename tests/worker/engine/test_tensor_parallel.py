"""Tensor parallelism on CPU (gloo): TP=2 gives the same greedy tokens as TP=1."""

from __future__ import annotations

import multiprocessing as mp
import random

import pytest

from minisgl import LLM, SamplingParams

PARAMS = SamplingParams(max_tokens=10, temperature=0.0, ignore_eos=True)


def _prompts() -> list[list[int]]:
    rng = random.Random(11)
    return [[rng.randrange(3, 400) for _ in range(rng.randint(2, 40))] for _ in range(4)]


def _rank_main(model: str, rank: int, init: str, arch_kw: dict, q) -> None:
    try:
        llm = LLM(model, dtype="float32", tp_rank=rank, tp_size=2, dist_init_method=init,
                  max_prefill_length=32, **arch_kw)
        outs = llm.generate(_prompts(), PARAMS)
        q.put((rank, [o.token_ids for o in outs]))
        llm.scheduler.shutdown()
    except BaseException as e:  # report instead of hanging the parent
        q.put((rank, repr(e)))


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_tp2_matches_tp1(arch, tiny_models, tmp_path):
    expected = [o.token_ids for o in LLM(tiny_models[arch], dtype="float32").generate(_prompts(), PARAMS)]
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    init = f"file://{tmp_path}/dist"
    procs = [ctx.Process(target=_rank_main, args=(tiny_models[arch], r, init, {}, q)) for r in range(2)]
    for p in procs:
        p.start()
    try:
        results = dict(q.get(timeout=120) for _ in procs)
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
    assert results[0] == expected, results
    assert results[1] == expected
