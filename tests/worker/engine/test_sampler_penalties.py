"""Penalties and min_tokens change logits exactly as their formulas say."""

from __future__ import annotations

import torch

from minisgl.engine.penalties import TokenHistory, apply_min_tokens, apply_penalties
from minisgl.engine.sampler import Sampler
from tests.worker.engine.sampler_rows import row




LOGITS = torch.tensor([2.0, -1.0, 0.5, -3.0, 4.0, 1.0])


def test_repetition_penalty_divides_positive_multiplies_negative_seen_tokens():
    rows = [row(prompt_ids=[0, 1], output_ids=[3, 3], repetition_penalty=2.0), row()]
    logits = LOGITS.expand(2, 6).clone()
    out = apply_penalties(logits, rows, [0])
    assert out[0].tolist() == [1.0, -2.0, 0.5, -6.0, 4.0, 1.0]
    assert torch.equal(out[1], LOGITS)  # rows not listed are untouched
    assert torch.equal(logits[0], LOGITS)  # input stays raw


def test_repetition_penalty_below_one_boosts_seen_tokens():
    r = row(output_ids=[2, 3], repetition_penalty=0.5)
    out = apply_penalties(LOGITS[None].clone(), [r], [0])
    assert out[0].tolist() == [2.0, -1.0, 1.0, -1.5, 4.0, 1.0]


def test_frequency_and_presence_penalties_count_output_only():
    r = row(prompt_ids=[4, 5], output_ids=[0, 0, 0, 2],
            frequency_penalty=0.5, presence_penalty=0.25)
    out = apply_penalties(LOGITS[None].clone(), [r], [0])
    expected = LOGITS.clone()
    expected[0] -= 0.5 * 3 + 0.25
    expected[2] -= 0.5 * 1 + 0.25
    assert torch.allclose(out[0], expected)  # prompt tokens 4, 5 unchanged


def test_penalties_combine_repetition_first_then_frequency():
    r = row(output_ids=[4], repetition_penalty=2.0, frequency_penalty=1.0)
    out = apply_penalties(LOGITS[None].clone(), [r], [0])
    assert out[0, 4].item() == 4.0 / 2.0 - 1.0


def test_penalty_changes_greedy_choice_in_sampler():
    logits = torch.tensor([[1.0, 3.0, 2.5]])
    sampler = Sampler(3, [], "cpu")
    assert sampler(logits, [row(temperature=0.0)]).token_ids.item() == 1
    penalised = row(temperature=0.0, output_ids=[1], presence_penalty=1.0)
    assert sampler(logits, [penalised]).token_ids.item() == 2


def test_penalty_shifts_sampled_distribution():
    # presence 2 on token 0 of [ln 2, 0]: probs 2/3, 1/3 -> e^(ln2-2)=0.27 vs 1 -> 0.213, 0.787
    n = 20000
    logits = torch.tensor([[2.0, 1.0]]).log().expand(n, 2).clone()
    torch.manual_seed(0)
    out = Sampler(2, [], "cpu")(logits, [row(output_ids=[0], presence_penalty=2.0)] * n)
    share = out.token_ids.float().mean().item()  # fraction that picked token 1
    p0 = 2 * torch.exp(torch.tensor(-2.0)).item()
    assert abs(share - 1 / (1 + p0)) < 0.015


def test_min_tokens_masks_eos_and_stop_ids_until_reached():
    V, eos = 6, 4
    logits = torch.zeros(1, V)
    logits[0, eos] = 10.0
    logits[0, 1] = 9.0
    logits[0, 2] = 8.0
    sampler = Sampler(V, [eos], "cpu")
    early = row(temperature=0.0, min_tokens=3, stop_token_ids=(1,), output_ids=[0, 0])
    assert sampler(logits, [early]).token_ids.item() == 2
    done = row(temperature=0.0, min_tokens=3, stop_token_ids=(1,), output_ids=[0, 0, 0])
    assert sampler(logits, [done]).token_ids.item() == eos


def test_min_tokens_masks_eos_in_sampled_rows():
    V, eos = 4, 3
    n = 2000
    logits = torch.tensor([0.0, 0.0, 0.0, 5.0]).expand(n, V).clone()
    torch.manual_seed(1)
    out = Sampler(V, [eos, 99], "cpu")(logits, [row(min_tokens=1)] * n)  # 99: outside vocab
    assert eos not in out.token_ids.tolist()


def test_min_tokens_leaves_eos_alone_when_ignore_eos():
    logits = LOGITS[None].clone()
    r = row(min_tokens=2, ignore_eos=True, stop_token_ids=(0,))
    out = apply_min_tokens(logits, [r], [0], [4])
    assert out[0, 4].item() == 4.0
    assert out[0, 0].item() == float("-inf")


def test_logprobs_ignore_penalties():
    logits = torch.tensor([[1.0, 3.0, 2.5]])
    r = row(temperature=0.0, output_ids=[1], presence_penalty=1.0, logprobs=0)
    out = Sampler(3, [], "cpu")(logits, [r])
    assert out.token_ids.item() == 2
    assert torch.allclose(out.logprobs, torch.log_softmax(logits, -1)[:, 2])


def test_token_history_reused_across_steps_matches_fresh_computation():
    torch.manual_seed(2)
    V = 50
    history = TokenHistory()
    rows = [row(prompt_ids=[1, 2, 3], repetition_penalty=1.5, frequency_penalty=0.4),
            row(prompt_ids=[7], presence_penalty=0.3), row()]
    for step in range(6):
        logits = torch.randn(3, V)
        cached = apply_penalties(logits, rows, [0, 1], history)
        fresh = apply_penalties(logits, rows, [0, 1])
        assert torch.equal(cached, fresh)
        for r in rows:
            r.output_ids.extend([(step * 7 + len(r.output_ids)) % V] * (step % 3))
    assert len(history) == 2


def test_token_history_rebuilds_when_output_shrinks_and_forgets_dead_rows():
    history = TokenHistory()
    r = row(output_ids=[0, 0, 1], frequency_penalty=1.0)
    logits = LOGITS[None].clone()
    apply_penalties(logits, [r], [0], history)
    r.output_ids = [2]  # e.g. a request reset by the scheduler
    out = apply_penalties(logits, [r], [0], history)
    expected = LOGITS.clone()
    expected[2] -= 1.0
    assert torch.equal(out[0], expected)
    assert len(history) == 1
    del r
    assert len(history) == 0
