"""The Triton split-KV decode kernel equals plain softmax attention over each row's slots.

On a CPU machine the kernel runs under Triton's interpreter (TRITON_INTERPRET=1, set before
triton is imported, hence a subprocess) in float32 and float16 (the interpreter's bf16
tl.dot is wrong); bf16 on the GPU is covered by tests/worker/engine/test_gpu_backends.py.
"""

from __future__ import annotations

import pytest

from tests.helpers.triton_interpreter import run_interpreted

pytest.importorskip("triton")

SCRIPT = r"""
import json, torch
from types import SimpleNamespace
from minisgl.attention.split_decode import SplitDecode, TileConfig, split_decode_reference
torch.manual_seed(0)
results = []
NS, W = 1600, 300
# (H, Hkv, D): GQA 4 (a [16, D] query tile, 4 rows used), 2 odd heads a KV head, MHA
for H, HKV, D in [(8, 2, 64), (6, 3, 32), (4, 4, 16)]:
    for dtype in (torch.float32, torch.float16):
        k = torch.randn(NS, HKV, D).to(dtype)
        v = torch.randn(NS, HKV, D).to(dtype)
        table = torch.randperm(NS)[: 5 * W].view(5, W).to(torch.int32)  # each row its own slots
        state = torch.tensor([4, 0, 2, 1])
        seq = torch.tensor([1, 31, 33, 300])  # one token; under, just over one tile; many tiles
        q = torch.randn(4, H, D).to(dtype)
        ref = split_decode_reference(q, k, v, table, state, seq, D**-0.5)
        # 16 x 32-token minimum chunks: later splits are empty; (4, 128): the large-batch
        # shape, where rows up to the minimum chunk are one split written without a merge
        # the last case: 64-key tiles (a tile wider than a 32-token chunk) in the
        # heads-inner grid order
        for splits, min_chunk, tile in ((1, 32, None), (4, 32, None), (16, 32, None),
                                        (4, 128, None), (4, 32, TileConfig(64, 4, 2, True))):
            sd = SplitDecode(4, H, HKV, D, splits, torch.device("cpu"), dtype, min_chunk, tile)
            sd.plan(SimpleNamespace(size=4, state_slots=state, seq_lens_dev=seq, slot_table=table))
            sd.out.fill_(float("nan"))  # every row must be written (by the merge or directly)
            out = sd.run(q, k, v, D**-0.5)
            results.append(dict(heads=[H, HKV, D], dtype=str(dtype), splits=[splits, min_chunk],
                                diff=(out.float() - ref.float()).abs().max().item(),
                                scale=ref.float().abs().max().item()))
print(json.dumps(results))
"""


def test_split_decode_matches_reference_under_the_triton_interpreter():
    results = run_interpreted(SCRIPT, timeout=600)
    assert len(results) == 30
    for r in results:
        # float16: the kernel rounds the probabilities to fp16 for the P.V product (as
        # FlashAttention does) and the output once; the reference only the output.
        tol = 1e-5 if r["dtype"] == "torch.float32" else 4e-3 * max(1.0, r["scale"])
        assert r["diff"] <= tol, r


def test_num_splits_cover_the_gpu_and_stay_bounded():
    from minisgl.attention.split_decode import (LARGE_SPLITS, LONG_CHUNK, MAX_SPLITS, MIN_CHUNK,
                                                num_splits, split_shape)

    assert num_splits(1, 8, 132) == 32  # 8 KV heads x 32 = 256 programs for 264 slots
    assert num_splits(4, 8, 132) == 8
    assert num_splits(1, 1, 132) == MAX_SPLITS
    assert num_splits(64, 8, 132) == 1
    for bs in range(1, 40):
        s = num_splits(bs, 8, 132)
        assert s & (s - 1) == 0 and 1 <= s <= MAX_SPLITS
        assert bs * 8 * s <= max(2 * 132, bs * 8)
    assert split_shape(1, 8, 132) == (32, MIN_CHUNK)
    assert split_shape(64, 8, 132) == (LARGE_SPLITS, LONG_CHUNK)  # only long rows split


def test_tile_config_parses_and_rejects(monkeypatch):
    from minisgl.attention.split_decode import TileConfig, default_tile

    assert TileConfig.parse("64,8,2,1") == TileConfig(64, 8, 2, True)
    assert TileConfig.parse("128,4,3") == TileConfig(128, 4, 3, False)
    for bad in ("64,8", "48,4,3", "512,4,3", "64,3,3", "64,4,0", "a,b,c", "64,4,3,1,1", "64,4,3,2"):
        with pytest.raises(ValueError, match="MINISGL_SPLIT_DECODE_TILE|block_n|warps"):
            TileConfig.parse(bad)
    assert default_tile(4) == TileConfig()  # the latency path's tile
    assert default_tile(256).block_n > default_tile(4).block_n and default_tile(256).heads_inner
    monkeypatch.setenv("MINISGL_SPLIT_DECODE_TILE", "32,4,4,1")
    assert default_tile(256) == TileConfig(32, 4, 4, True)


SHARED_SCRIPT = r"""
import json, torch
from types import SimpleNamespace
from minisgl.attention.split_decode import SplitDecode, SplitWorkspace, split_decode_reference
torch.manual_seed(0)
NS, H, HKV, D = 900, 8, 2, 32
k, v = torch.randn(NS, HKV, D), torch.randn(NS, HKV, D)
table = torch.randperm(NS)[: 6 * 150].view(6, 150).to(torch.int32)
ws = SplitWorkspace(torch.device("cpu"))
# largest first, as graphs are captured: the smaller ones share its buffers
big = SplitDecode(4, H, HKV, D, 4, torch.device("cpu"), torch.float32, 32, workspace=ws)
small = SplitDecode(2, H, HKV, D, 8, torch.device("cpu"), torch.float32, 32, workspace=ws)
shared = small.part_o.data_ptr() == big.part_o.data_ptr() and small.out.data_ptr() == big.out.data_ptr()
nbytes = ws.nbytes()
grown = SplitDecode(8, H, HKV, D, 4, torch.device("cpu"), torch.float32, 32, workspace=ws)
diffs = []
for sd, state, seq in ((small, [5, 1], [150, 7]), (big, [0, 2, 3, 4], [1, 64, 150, 33]),
                       (small, [3, 0], [40, 150]), (grown, list(range(6)) + [0, 1], [150] * 8)):
    state, seq = torch.tensor(state), torch.tensor(seq)
    q = torch.randn(len(state), H, D)
    sd.plan(SimpleNamespace(size=len(state), state_slots=state, seq_lens_dev=seq, slot_table=table))
    out = sd.run(q, k, v, D**-0.5).clone()
    diffs.append((out - split_decode_reference(q, k, v, table, state, seq, D**-0.5)).abs().max().item())
print(json.dumps(dict(shared=shared, nbytes=nbytes, grown_nbytes=ws.nbytes(), diffs=diffs)))
"""


def test_split_decodes_share_one_workspace_and_stay_exact():
    r = run_interpreted(SHARED_SCRIPT, timeout=600)
    assert r["shared"]  # the smaller instance is views of the larger one's buffers
    # part_o (4 x 8 x 4 x 32) + part_lse (4 x 8 x 4) + out (4 x 8 x 32), float32
    assert r["nbytes"] == 4 * (4 * 8 * 4 * 32 + 4 * 8 * 4 + 4 * 8 * 32)
    assert r["grown_nbytes"] > r["nbytes"]  # a larger batch grows it; the old views still work
    assert max(r["diffs"]) <= 1e-5, r
