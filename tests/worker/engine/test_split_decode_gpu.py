"""The Triton split-KV decode kernel in bfloat16 on the GPU equals float32 attention."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from minisgl.attention.split_decode import (LARGE_SPLITS, LONG_CHUNK, SplitDecode,
                                            split_decode_reference)

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("splits,min_chunk", [(32, 32), (8, 32), (LARGE_SPLITS, LONG_CHUNK)])
def test_split_decode_bf16_matches_float32_attention(splits, min_chunk):
    torch.manual_seed(0)
    H, HKV, D, NS, W = 32, 8, 128, 40_000, 9_000
    seq = torch.tensor([1, 31, LONG_CHUNK - 1, LONG_CHUNK + 1, 8_500])  # one token to many chunks
    B = len(seq)
    k = torch.randn(NS, HKV, D, dtype=torch.bfloat16, device="cuda")
    v = torch.randn_like(k)
    table = torch.stack([torch.randperm(NS)[:W] for _ in range(B)]).to(torch.int32).cuda()
    state = torch.arange(B, device="cuda")
    q = torch.randn(B, H, D, dtype=torch.bfloat16, device="cuda")
    sd = SplitDecode(B, H, HKV, D, splits, torch.device("cuda"), torch.bfloat16, min_chunk)
    sd.plan(SimpleNamespace(size=B, state_slots=state, seq_lens_dev=seq.cuda(), slot_table=table))
    graph = torch.cuda.CUDAGraph()  # as the engine runs it: captured once, replayed
    sd.run(q, k, v, D**-0.5)
    with torch.cuda.graph(graph):
        out = sd.run(q, k, v, D**-0.5)
    graph.replay()
    ref = split_decode_reference(q.cpu(), k.cpu(), v.cpu(), table.cpu(), state.cpu(), seq,
                                 D**-0.5)
    err = (out.cpu().float() - ref.float()).abs()
    # bf16 output rounding (2**-8 relative) plus fp32-accumulated bf16 probabilities
    assert err.max().item() <= 2e-2, err.max().item()
    assert err.mean().item() <= 2e-3, err.mean().item()
