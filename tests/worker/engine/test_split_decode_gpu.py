"""The Triton split-KV decode kernel in bfloat16 on the GPU equals float32 attention."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from minisgl.attention.split_decode import (LARGE_SPLITS, LONG_CHUNK, SplitDecode, TileConfig,
                                            split_decode_reference)

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("tile", [TileConfig(), TileConfig(64, 4, 3, True), TileConfig(128, 8, 2, True)],
                         ids=["default", "64x4x3h", "128x8x2h"])
@pytest.mark.parametrize("kv_dtype", [torch.bfloat16, torch.float8_e4m3fn], ids=["bf16", "fp8"])
@pytest.mark.parametrize("splits,min_chunk", [(32, 32), (8, 32), (LARGE_SPLITS, LONG_CHUNK)])
def test_split_decode_bf16_matches_float32_attention(splits, min_chunk, tile, kv_dtype):
    """bf16 queries over a bf16 or an FP8 cache (the reference reads the FP8 values exactly)."""
    torch.manual_seed(0)
    H, HKV, D, NS, W = 32, 8, 128, 40_000, 9_000
    seq = torch.tensor([1, 31, LONG_CHUNK - 1, LONG_CHUNK + 1, 8_500])  # one token to many chunks
    B = len(seq)
    k = torch.randn(NS, HKV, D, device="cuda").to(kv_dtype)
    v = torch.randn(NS, HKV, D, device="cuda").to(kv_dtype)
    table = torch.stack([torch.randperm(NS)[:W] for _ in range(B)]).to(torch.int32).cuda()
    state = torch.arange(B, device="cuda")
    q = torch.randn(B, H, D, dtype=torch.bfloat16, device="cuda")
    sd = SplitDecode(B, H, HKV, D, splits, torch.device("cuda"), torch.bfloat16, min_chunk, tile)
    # As the engine runs it: captured on a placeholder batch, then planned and replayed for
    # real ones (the graph reads the fixed buffers that plan() fills).
    sd.plan(SimpleNamespace(size=B, state_slots=torch.zeros(B, dtype=torch.int64, device="cuda"),
                            seq_lens_dev=torch.ones(B, dtype=torch.int64, device="cuda"),
                            slot_table=table))
    sd.run(q, k, v, D**-0.5)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = sd.run(q, k, v, D**-0.5)
    for rows, lens in ((state, seq), (state.flip(0), seq.flip(0) // 2 + 1)):
        sd.plan(SimpleNamespace(size=B, state_slots=rows, seq_lens_dev=lens.cuda(), slot_table=table))
        out.fill_(float("nan"))
        graph.replay()
        ref = split_decode_reference(q.cpu(), k.cpu(), v.cpu(), table.cpu(), rows.cpu(), lens,
                                     D**-0.5)
        err = (out.cpu().float() - ref.float()).abs()
        # bf16 output rounding (2**-8 relative) plus fp32-accumulated bf16 probabilities
        assert err.max().item() <= 2e-2, err.max().item()
        assert err.mean().item() <= 2e-3, err.mean().item()
