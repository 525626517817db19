"""Scheduler behaviour: page accounting, aborts, memory pressure, finish reasons, n > 1."""

from __future__ import annotations

import random

import pytest

from minisgl.config import SchedulerConfig
from minisgl.errors import ContextTooLong, InvalidRequest
from minisgl.sampling_params import SamplingParams
from minisgl.scheduler.scheduler import Scheduler
from tests.helpers.pages import assert_no_leak


_OVERLAP = {"on": False}


@pytest.fixture(autouse=True, params=[False, True], ids=["sync", "overlap"])
def overlap(request):
    """Every scheduler test runs with and without overlap scheduling (launch step N+1
    before processing step N), which on the CPU changes the order, not the result."""
    _OVERLAP["on"] = request.param
    yield request.param
    _OVERLAP["on"] = False


def make(model: str, **kw) -> Scheduler:
    kw.setdefault("overlap", _OVERLAP["on"])
    return Scheduler(SchedulerConfig(model_path=model, dtype="float32", **kw))


def run_all(s: Scheduler, max_steps: int = 10_000) -> dict[tuple[int, int], list]:
    """Step until idle; return (uid, index) -> list of outputs."""
    outs: dict[tuple[int, int], list] = {}
    for _ in range(max_steps):
        if not s.has_work:
            return outs
        for o in s.step():
            outs.setdefault((o.uid, o.index), []).append(o)
    raise AssertionError("scheduler did not drain")


def prompts(n: int, lo: int, hi: int, seed: int = 0) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(3, 400) for _ in range(rng.randint(lo, hi))] for _ in range(n)]


@pytest.mark.parametrize("cache_type", ["radix", "naive"])
def test_pages_never_leak_after_mixed_workload(tiny_llama, cache_type):
    s = make(tiny_llama, cache_type=cache_type, page_size=2, max_prefill_length=32)
    for uid, p in enumerate(prompts(12, 1, 50)):
        s.add_request(uid, p, SamplingParams(max_tokens=uid % 7, temperature=0.0, ignore_eos=True))
    outs = run_all(s)
    assert len(outs) == 12
    for (uid, _), seq in outs.items():
        assert seq[-1].finished and seq[-1].finish_reason == "length"
        assert len([o for o in seq if o.token_id is not None]) == uid % 7
    assert_no_leak(s)


@pytest.mark.parametrize("cache_type", ["radix", "naive"])
def test_abort_mid_prefill_frees_everything(tiny_llama, cache_type):
    s = make(tiny_llama, cache_type=cache_type, max_prefill_length=16)
    s.add_request(1, prompts(1, 100, 100)[0], SamplingParams(max_tokens=20))
    s.step()  # first 16-token chunk only
    assert s.running and not s.running[0].prefill_done
    assert s.cache.pool.num_used > 0
    s.abort(1)
    out = s.step()
    assert [(o.uid, o.finished, o.finish_reason) for o in out] == [(1, True, "abort")]
    assert not s.has_work
    assert_no_leak(s)


def test_abort_mid_decode_frees_everything(tiny_llama):
    s = make(tiny_llama)
    s.add_request(1, [5, 6, 7, 8], SamplingParams(max_tokens=50, ignore_eos=True))
    s.add_request(2, [9, 10], SamplingParams(max_tokens=5, ignore_eos=True, temperature=0))
    for _ in range(4):
        s.step()
    s.abort(1)
    outs = run_all(s)
    assert outs[(1, 0)][-1].finish_reason == "abort"
    assert outs[(2, 0)][-1].finish_reason == "length"
    assert_no_leak(s)


def test_abort_of_waiting_request_and_unknown_uid(tiny_llama):
    s = make(tiny_llama)
    s.add_request(1, [5, 6], SamplingParams(max_tokens=3))
    s.abort(1)
    s.abort(999)  # unknown: ignored
    outs = run_all(s)
    assert outs[(1, 0)][-1].finish_reason == "abort"
    assert_no_leak(s)


def test_memory_pressure_finishes_every_request(tiny_llama):
    # 48 pages x 4 tokens = 192 token slots; each request needs up to 90.
    s = make(tiny_llama, page_size=4, num_pages=48, max_prefill_length=64)
    ps = prompts(24, 20, 60, seed=1)
    for uid, p in enumerate(ps):
        s.add_request(uid, p, SamplingParams(max_tokens=30, ignore_eos=True))
    peak = 0
    outs: dict = {}
    while s.has_work:
        for o in s.step():
            outs.setdefault(o.uid, []).append(o)
        peak = max(peak, s.cache.pool.num_used)
        assert s.cache.pool.num_used <= s.cache.pool.num_total
    assert len(outs) == 24
    assert all(seq[-1].finish_reason == "length" and seq[-1].num_output_tokens == 30
               for seq in outs.values())
    assert peak > 24  # the pool was really under pressure
    assert_no_leak(s)


def test_request_larger_than_kv_cache_is_rejected(tiny_llama):
    s = make(tiny_llama, page_size=4, num_pages=8)
    with pytest.raises(ContextTooLong, match="KV cache"):
        s.add_request(1, list(range(3, 30)), SamplingParams(max_tokens=10))
    assert not s.has_work


def test_context_length_and_bad_input_rejected(tiny_llama):
    s = make(tiny_llama)
    with pytest.raises(ContextTooLong, match="context length"):
        s.add_request(1, [5] * 500, SamplingParams(max_tokens=100))
    with pytest.raises(InvalidRequest, match="empty"):
        s.add_request(2, [], SamplingParams())
    with pytest.raises(InvalidRequest, match="out of range"):
        s.add_request(3, [10**6], SamplingParams())
    with pytest.raises(InvalidRequest, match="temperature"):
        s.add_request(4, [5], SamplingParams(temperature=-1))
    s.add_request(5, [5, 6], SamplingParams(max_tokens=2))
    with pytest.raises(InvalidRequest, match="duplicate"):
        s.add_request(5, [5, 6], SamplingParams(max_tokens=2))
    assert run_all(s)[(5, 0)][-1].finished


def test_stop_token_ids_and_eos_end_with_stop(tiny_llama):
    s = make(tiny_llama)
    p = [5, 6, 7]
    s.add_request(1, p, SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True))
    greedy = [o.token_id for o in run_all(s)[(1, 0)] if o.token_id is not None]
    stop_at = greedy[3]
    s.add_request(2, p, SamplingParams(max_tokens=8, temperature=0.0, stop_token_ids=(stop_at,)))
    seq = run_all(s)[(2, 0)]
    assert [o.token_id for o in seq] == greedy[: greedy.index(stop_at) + 1]
    assert seq[-1].finish_reason == "stop"
    s.eos_token_ids.append(stop_at)  # the same token as EOS: stops unless ignore_eos
    s.add_request(3, p, SamplingParams(max_tokens=8, temperature=0.0))
    assert run_all(s)[(3, 0)][-1].finish_reason == "stop"
    s.add_request(4, p, SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True))
    assert run_all(s)[(4, 0)][-1].finish_reason == "length"
    s.add_request(5, p, SamplingParams(max_tokens=8, temperature=0.0, min_tokens=8))
    assert run_all(s)[(5, 0)][-1].num_output_tokens == 8
    assert_no_leak(s)


def test_n_choices_share_the_prompt_kv(tiny_llama):
    s = make(tiny_llama)
    prompt = prompts(1, 40, 40)[0]
    s.add_request(7, prompt, SamplingParams(n=4, max_tokens=10, seed=123, ignore_eos=True))
    outs = run_all(s)
    assert sorted(outs) == [(7, i) for i in range(4)]
    texts = {tuple(o.token_id for o in seq if o.token_id is not None) for seq in outs.values()}
    assert len(texts) > 1  # different seeds per choice
    cached = sorted(seq[0].num_cached_tokens for seq in outs.values())
    assert cached[0] == 0 and all(c == 39 for c in cached[1:])
    assert_no_leak(s)


def test_seeded_sampling_is_deterministic(tiny_llama):
    def run(extra: int) -> list[int]:
        s = make(tiny_llama)
        s.add_request(1, [5, 6, 7], SamplingParams(max_tokens=12, seed=42, top_p=0.9))
        for uid in range(extra):  # other traffic must not change a seeded request
            s.add_request(100 + uid, [8, 9], SamplingParams(max_tokens=12))
        return [o.token_id for o in run_all(s)[(1, 0)] if o.token_id is not None]

    assert run(0) == run(3)


def test_stats_report_queue_and_usage(tiny_llama):
    s = make(tiny_llama, max_running_requests=2)
    for uid in range(5):
        s.add_request(uid, [5, 6, 7], SamplingParams(max_tokens=5, ignore_eos=True))
    assert s.stats().num_waiting == 5
    s.step()
    st = s.stats()
    assert st.num_running == 2 and st.num_waiting == 3 and st.kv_used_pages > 0
    run_all(s)
    st = s.stats()
    assert st.num_running == 0 and st.num_waiting == 0 and st.kv_used_pages == 0
    assert st.prefix_hit_tokens_total > 0 and st.prefix_query_tokens_total == 15


def test_offline_llm_stop_strings_cut_text_and_free_kv(tiny_llama):
    from minisgl import LLM

    llm = LLM(tiny_llama, dtype="float32", overlap=_OVERLAP["on"])
    prompt = [5, 6, 7, 8]
    full = llm.generate([prompt], SamplingParams(max_tokens=24, temperature=0.0, ignore_eos=True))[0]
    assert full.finish_reason == "length" and len(full.text) > 6
    stop = full.text[3:6]
    cut = llm.generate([prompt], SamplingParams(max_tokens=24, temperature=0.0, ignore_eos=True,
                                                stop=[stop]))[0]
    assert cut.finish_reason == "stop"
    assert cut.text == full.text[: full.text.index(stop)]
    kept = llm.generate([prompt], SamplingParams(max_tokens=24, temperature=0.0, ignore_eos=True,
                                                 stop=[stop], include_stop_str_in_output=True))[0]
    assert kept.text == full.text[: full.text.index(stop) + len(stop)]
    assert not llm.scheduler.has_work
    assert_no_leak(llm.scheduler)


def test_preemption_under_pressure_recomputes_identical_tokens(tiny_llama, monkeypatch):
    import minisgl.scheduler.cache as cache_mod

    ps = prompts(10, 10, 40, seed=4)
    params = SamplingParams(max_tokens=120, temperature=0.0, ignore_eos=True)
    roomy = make(tiny_llama)
    for uid, p in enumerate(ps):
        roomy.add_request(uid, p, params)
    expected = {k: [o.token_id for o in v if o.token_id is not None] for k, v in run_all(roomy).items()}

    # 40 pages x 4 tokens: no request's full reservation (up to 160 tokens) fits beside another,
    # so requests are admitted with a small window and must be preempted to grow.
    monkeypatch.setattr(cache_mod, "RESERVE_WINDOW", 8)
    tight = make(tiny_llama, page_size=4, num_pages=40, max_prefill_length=32)
    for uid, p in enumerate(ps):
        tight.add_request(uid, p, params)
    got = {k: [o.token_id for o in v if o.token_id is not None] for k, v in run_all(tight).items()}
    assert tight.stats().extra["preemptions_total"] > 0
    assert got == expected
    assert_no_leak(tight)


def test_preemption_with_naive_cache_and_aborts(tiny_llama, monkeypatch):
    import minisgl.scheduler.cache as cache_mod

    monkeypatch.setattr(cache_mod, "RESERVE_WINDOW", 4)
    s = make(tiny_llama, cache_type="naive", page_size=2, num_pages=60)
    for uid, p in enumerate(prompts(8, 5, 30, seed=5)):
        s.add_request(uid, p, SamplingParams(max_tokens=80, ignore_eos=True, temperature=0.0))
    for _ in range(60):
        s.step()
    s.abort(3)
    outs = run_all(s)
    assert outs[(3, 0)][-1].finish_reason == "abort"
    assert all(v[-1].finish_reason == "length" and v[-1].num_output_tokens == 80
               for k, v in outs.items() if k != (3, 0))
    assert s.stats().extra["preemptions_total"] > 0
    assert_no_leak(s)


def test_abort_of_one_choice_leaves_its_siblings_running(tiny_llama):
    s = make(tiny_llama)
    s.add_request(9, [5, 6, 7], SamplingParams(n=3, max_tokens=30, ignore_eos=True, seed=1))
    for _ in range(4):
        s.step()
    s.abort(9, index=1)
    outs = run_all(s)
    assert outs[(9, 1)][-1].finish_reason == "abort"
    assert outs[(9, 1)][-1].num_output_tokens < 30
    assert outs[(9, 0)][-1].finish_reason == outs[(9, 2)][-1].finish_reason == "length"
    assert_no_leak(s)


def test_flush_cache_empties_the_prefix_cache_only_when_idle(tiny_llama):
    from minisgl import LLM

    llm = LLM(tiny_llama, dtype="float32", overlap=_OVERLAP["on"])
    prompt = list(range(5, 45))
    greedy = SamplingParams(max_tokens=4, temperature=0.0, ignore_eos=True)
    first = llm.generate([prompt], greedy)[0]
    assert llm.generate([prompt], greedy)[0].num_cached_tokens > 0  # the prefix is cached
    sched = llm.scheduler
    sched.add_request(999, prompt, greedy)
    assert sched.flush_cache() is None  # a request waits: nothing is dropped
    while sched.has_work:
        sched.step()
    dropped = llm.flush_cache()
    assert dropped >= len(prompt) - 1
    assert sched.cache.cache.evictable_size == 0 and sched.cache.pool.num_used == 0
    again = llm.generate([prompt], greedy)[0]
    assert again.num_cached_tokens == 0 and again.token_ids == first.token_ids
    assert_no_leak(sched)
