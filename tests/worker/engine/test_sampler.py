"""Sampler: greedy, seeds, temperature, top-k/top-p/min-p support, logprobs, padded vocab."""

from __future__ import annotations

import pytest
import torch

from minisgl.engine.sampler import Sampler, filter_logits, make_generator, token_logprobs
from tests.worker.engine.sampler_rows import row

INF = float("inf")




def frequencies(tokens: torch.Tensor, V: int) -> torch.Tensor:
    return torch.bincount(tokens, minlength=V).float() / tokens.numel()


def support(tokens: torch.Tensor) -> set[int]:
    return set(tokens.unique().tolist())


def test_all_greedy_batch_is_argmax():
    torch.manual_seed(0)
    logits = torch.randn(8, 50)
    out = Sampler(50, [0], "cpu")(logits, [row(temperature=0.0) for _ in range(8)])
    assert torch.equal(out.token_ids, logits.argmax(-1))
    assert out.token_ids.dtype == torch.int64
    assert out.logprobs is None and out.top_ids is None and out.top_logprobs is None


def test_greedy_rows_in_mixed_batch_take_argmax():
    torch.manual_seed(1)
    logits = torch.randn(6, 40)
    rows = [row(temperature=0.0), row(temperature=1.0), row(top_k=1),
            row(temperature=0.7, seed=3), row(temperature=0.0), row(temperature=2.0)]
    out = Sampler(40, [], "cpu")(logits, rows)
    for i in (0, 2, 4):
        assert out.token_ids[i].item() == logits[i].argmax().item()


def test_padded_vocab_columns_are_never_sampled_or_reported():
    V, padded = 10, 16
    logits = torch.zeros(400, padded)
    logits[:, V:] = 100.0  # padding would win everything if it were looked at
    rows = [row(temperature=0.0, logprobs=3)] + [row(temperature=1.5, logprobs=5)] * 399
    out = Sampler(V, [], "cpu")(logits, rows)
    assert int(out.token_ids.max()) < V
    assert int(out.top_ids.max()) < V
    assert torch.allclose(out.logprobs, torch.full((400,), -torch.log(torch.tensor(10.0))))


def test_same_seed_gives_same_tokens_whatever_the_batch():
    V = 500
    torch.manual_seed(2)
    step_logits = [torch.randn(V) for _ in range(12)]
    sampler = Sampler(V, [], "cpu")

    def run(batch_size: int, position: int, seed: int) -> list[int]:
        target = row(seed=seed, temperature=1.0, top_p=0.9)
        others = [row(temperature=1.0), row(seed=99, temperature=0.8), row(temperature=0.0)]
        rows = [others[i % 3] for i in range(batch_size - 1)]
        rows.insert(position, target)
        tokens = []
        for logits in step_logits:
            batch = torch.randn(batch_size, V)
            batch[position] = logits
            tokens.append(sampler(batch, rows).token_ids[position].item())
        return tokens

    alone = run(1, 0, seed=1234)
    assert run(5, 3, seed=1234) == alone
    assert run(9, 0, seed=1234) == alone
    assert run(4, 3, seed=4321) != alone


def test_make_generator_accepts_any_int_seed():
    a = torch.rand(4, generator=make_generator(-1, "cpu"))
    b = torch.rand(4, generator=make_generator(2**64 - 1, "cpu"))
    assert torch.equal(a, b)  # -1 and 2**64 - 1 are the same 64-bit seed


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0])
def test_temperature_reshapes_distribution(temperature):
    p = torch.tensor([0.5, 0.3, 0.15, 0.05])
    n = 20000
    torch.manual_seed(3)
    out = Sampler(4, [], "cpu")(p.log().expand(n, 4).clone(), [row(temperature=temperature)] * n)
    expected = torch.softmax(p.log() / temperature, dim=0)
    assert torch.allclose(frequencies(out.token_ids, 4), expected, atol=0.015)


def test_filter_logits_top_k_keeps_exactly_k_best():
    logits = torch.tensor([[0.1, 3.0, 2.0, -1.0, 1.0], [5.0, 4.0, 3.0, 2.0, 1.0]])
    out = filter_logits(logits, top_k=torch.tensor([2, 5]))
    assert torch.isfinite(out[0]).tolist() == [False, True, True, False, False]
    assert torch.equal(out[1], logits[1])  # k = V is off
    assert torch.equal(out[0, [1, 2]], logits[0, [1, 2]])  # kept logits untouched


@pytest.mark.parametrize(
    "top_p, kept",
    [(0.3, [0]), (0.65, [0, 1]), (0.75, [0, 1, 2]), (0.95, [0, 1, 2, 3]), (1.0, [0, 1, 2, 3])],
)
def test_filter_logits_top_p_keeps_smallest_prefix_reaching_p(top_p, kept):
    probs = torch.tensor([[0.1, 0.4, 0.2, 0.3]])  # sorted: 1, 3, 2, 0
    out = filter_logits(probs.log(), top_p=torch.tensor([top_p]))
    order = [1, 3, 2, 0]
    kept_ids = torch.isfinite(out[0]).nonzero().flatten().tolist()
    assert sorted(kept_ids) == sorted(order[j] for j in kept)


def test_filter_logits_k_bound_gives_same_support_as_full_sort():
    torch.manual_seed(7)
    logits = torch.randn(16, 300)
    top_k = torch.randint(1, 40, (16,))
    top_p = torch.rand(16) * 0.9 + 0.05
    full = filter_logits(logits, top_k, top_p)
    bounded = filter_logits(logits, top_k, top_p, k_bound=int(top_k.max()))
    assert torch.equal(full, bounded)


def test_filter_logits_top_p_applies_after_top_k_renormalisation():
    logits = torch.tensor([[0.4, 0.3, 0.2, 0.1]]).log()
    # without top-k: mass before token 2 is 0.7 < 0.75, so it stays
    assert torch.isfinite(filter_logits(logits, top_p=torch.tensor([0.75]))).sum() == 3
    # with top_k 3 the three are renormalised to .44/.33/.22: mass before token 2 is .78
    both = filter_logits(logits, top_k=torch.tensor([3]), top_p=torch.tensor([0.75]))
    assert torch.isfinite(both[0]).tolist() == [True, True, False, False]


@pytest.mark.parametrize("min_p, kept", [(0.0, 4), (0.05, 4), (0.2, 3), (0.7, 1)])
def test_filter_logits_min_p_keeps_tokens_above_fraction_of_max(min_p, kept):
    logits = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log() / 0.9
    out = filter_logits(logits, min_p=torch.tensor([min_p]))
    assert torch.isfinite(out[0]).tolist() == [True] * kept + [False] * (4 - kept)


def test_sampling_respects_top_k_top_p_min_p_support_per_row():
    p = torch.tensor([0.35, 0.25, 0.2, 0.12, 0.08])
    configs = [dict(top_k=2), dict(top_p=0.7), dict(min_p=0.5), dict(), dict(top_k=4, min_p=0.3)]
    expected = [{0, 1}, {0, 1, 2}, {0, 1, 2}, {0, 1, 2, 3, 4}, {0, 1, 2, 3}]
    per = 3000
    rows = [row(**configs[i % 5]) for i in range(5 * per)]
    torch.manual_seed(4)
    out = Sampler(5, [], "cpu")(p.log().expand(5 * per, 5).clone(), rows)
    for j in range(5):
        tokens = out.token_ids[j::5]
        assert support(tokens) == expected[j]
        renormalised = torch.zeros(5)
        renormalised[list(expected[j])] = p[list(expected[j])]
        renormalised /= renormalised.sum()
        assert torch.allclose(frequencies(tokens, 5), renormalised, atol=0.035)


def test_logprobs_are_raw_log_softmax_at_chosen_token():
    torch.manual_seed(5)
    logits = torch.randn(4, 30)
    rows = [
        row(temperature=0.0, logprobs=0),
        row(temperature=0.5, logprobs=0, repetition_penalty=2.0, prompt_ids=[1, 2, 3]),
        row(temperature=1.0),
        row(top_k=3, logprobs=0, seed=7),
    ]
    out = Sampler(30, [], "cpu")(logits, rows)
    raw = torch.log_softmax(logits, dim=-1)
    assert out.logprobs.dtype == torch.float32
    assert torch.allclose(out.logprobs, raw.gather(1, out.token_ids[:, None]).squeeze(1))
    assert out.top_ids is None and out.top_logprobs is None  # no row asked for top logprobs


def test_top_logprobs_are_sorted_and_match_log_softmax():
    torch.manual_seed(6)
    logits = torch.randn(3, 64)
    rows = [row(logprobs=2), row(logprobs=5, temperature=0.0), row()]
    out = Sampler(64, [], "cpu")(logits, rows)
    assert out.top_ids.shape == (3, 5) and out.top_ids.dtype == torch.int64
    assert out.top_logprobs.shape == (3, 5) and out.top_logprobs.dtype == torch.float32
    raw = torch.log_softmax(logits, dim=-1)
    expected_ids = raw.argsort(dim=-1, descending=True)[:, :5]
    assert torch.equal(out.top_ids, expected_ids)
    assert torch.allclose(out.top_logprobs, raw.gather(1, expected_ids))
    assert (out.top_logprobs[:, :-1] >= out.top_logprobs[:, 1:]).all()


def test_wrong_logits_shape_raises_value_error():
    sampler = Sampler(10, [], "cpu")
    with pytest.raises(ValueError, match="num_rows"):
        sampler(torch.zeros(3, 10), [row()] * 2)
    with pytest.raises(ValueError, match="fewer than vocab_size"):
        sampler(torch.zeros(2, 8), [row()] * 2)


def test_token_logprobs_ignore_padded_columns():
    logits = torch.tensor([[1.0, 2.0, 3.0, 50.0], [0.0, 0.0, 0.0, 50.0]])
    out = token_logprobs(logits, torch.tensor([2, 0]), vocab_size=3)
    expected = torch.log_softmax(logits[:, :3], dim=-1)[[0, 1], [2, 0]]
    assert out.dtype == torch.float32 and torch.allclose(out, expected)


def test_two_stage_argmax_equals_argmax_with_ties_and_masked_columns():
    from minisgl.engine.sampler import _argmax_chunk, two_stage_argmax

    assert _argmax_chunk(128256) == 1002 and _argmax_chunk(151936) == 1187  # Llama 3, Qwen
    assert _argmax_chunk(65521) == 0  # a prime: no chunking
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 4096, generator=g)
    x[1] = 0.0  # all tied: the first index
    x[2, 100] = x[2, 3000] = 50.0  # tied across chunks: the earlier one
    x[3, 5] = x[3, 6] = 50.0  # tied within a chunk
    x[4, :4000] = float("-inf")  # masked (grammar, top-k): the best of the rest
    padded = torch.cat([x, torch.full((6, 64), float("-inf"))], dim=1)[:, :4096]  # a strided view
    for t in (x, padded):
        assert two_stage_argmax(t, 256).tolist() == t.argmax(dim=-1).tolist()
    assert two_stage_argmax(x, 256)[1:5].tolist() == [0, 100, 5, x[4, 4000:].argmax().item() + 4000]
