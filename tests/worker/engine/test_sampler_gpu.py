"""Sampler on CUDA: no host syncs in a full-featured step, seeds independent of the batch."""

from __future__ import annotations

import pytest
import torch

from minisgl.engine.sampler import Sampler
from tests.worker.engine.sampler_rows import Row
from tests.worker.engine.sampler_rows import row as cpu_row

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


def row(output_ids=(), prompt_ids=(), **params) -> Row:
    return cpu_row(output_ids, prompt_ids, device="cuda", **params)


def mixed_rows() -> list[Row]:
    return [
        row(temperature=0.0),
        row(temperature=0.8, top_k=50, top_p=0.9, seed=1),
        row(temperature=1.0, min_p=0.05, logprobs=5),
        row(temperature=0.7, prompt_ids=[1, 2, 3], output_ids=[4, 4, 5], repetition_penalty=1.3,
            frequency_penalty=0.5, presence_penalty=0.2),
        row(temperature=1.2, min_tokens=4, output_ids=[7], stop_token_ids=(9,), logprobs=0),
    ]


def test_full_featured_step_does_not_sync_the_host():
    V = 1000
    sampler = Sampler(V, [2], "cuda")
    rows = mixed_rows()
    logits = torch.randn(len(rows), V + 24, device="cuda")
    sampler(logits, rows)  # warm-up: lazy CUDA init may sync
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = sampler(logits, rows)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert out.token_ids.is_cuda and out.top_ids.shape == (len(rows), 5)
    assert int(out.token_ids.max()) < V


def test_seeded_row_on_cuda_is_independent_of_batch():
    V = 2000
    torch.manual_seed(0)
    steps = [torch.randn(V, device="cuda") for _ in range(8)]
    sampler = Sampler(V, [], "cuda")

    def run(batch_size: int, position: int) -> list[int]:
        target = row(seed=77, temperature=1.0)
        rows = [row(temperature=1.0) for _ in range(batch_size - 1)]
        rows.insert(position, target)
        tokens = []
        for logits in steps:
            batch = torch.randn(batch_size, V, device="cuda")
            batch[position] = logits
            tokens.append(sampler(batch, rows).token_ids[position].item())
        return tokens

    assert run(1, 0) == run(7, 4) == run(33, 32)
