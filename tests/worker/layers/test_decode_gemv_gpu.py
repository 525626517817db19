"""The fused decode GEMVs on the GPU at Llama-3.1-8B's shapes (several K tiles: the double
buffer; the wide gate_up blocks) and a ragged one, one token (the GEMV kernel) and five (the
tl.dot kernel), bf16, inside a CUDA graph, with and without programmatic dependent launch:
equal to the float32 reference within bf16's rounding."""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.gpu

# (kind, n_out, k): 8B's gate_up (8 x 256 blocks), down (K = 14,336), qkv, and a ragged shape
SHAPES = [("silu", 14336, 4096), ("add", 4096, 14336), ("norm", 6144, 4096), ("norm", 37, 200),
          ("silu", 37, 200), ("add", 37, 2000)]


@pytest.fixture(autouse=True)
def _cuda():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")


@pytest.mark.parametrize("tokens", [1, 5])  # the GEMV kernel; the tl.dot kernel
@pytest.mark.parametrize("pdl", ["1", "0"])
@pytest.mark.parametrize("kind,n,k", SHAPES)
def test_fused_gemv_in_a_graph_matches_float32(monkeypatch, pdl, kind, n, k, tokens):
    from minisgl.layers.decode_gemv import (gemv_add, gemv_add_reference, norm_gemv,
                                            norm_gemv_reference)

    monkeypatch.setenv("MINISGL_PDL", pdl)
    torch.manual_seed(0)
    dev, bf = "cuda", torch.bfloat16
    rows = 2 * n if kind == "silu" else n
    x = torch.randn(tokens, k, dtype=bf, device=dev)
    w = (torch.randn(rows, k, device=dev) / k**0.5).to(bf)
    g = (1 + 0.2 * torch.randn(k, device=dev)).to(bf)
    b = (0.5 * torch.randn(rows, device=dev)).to(bf)
    res = torch.randn(tokens, n, dtype=bf, device=dev)
    if kind == "add":
        ref = gemv_add_reference(x, w, res)
        out = res.clone()
        run = lambda: gemv_add(x, w, out)  # noqa: E731
    else:
        ref = norm_gemv_reference(x, g, 1e-6, w, b, silu=kind == "silu")
        run = lambda: norm_gemv(x, g, 1e-6, w, b, silu=kind == "silu")  # noqa: E731
    run()  # compile outside the graph
    if kind == "add":
        out.copy_(res)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y = run()
    graph.replay()  # capture ran nothing: out holds res again
    torch.cuda.synchronize()
    got = out if kind == "add" else y
    scale = ref.float().abs().max().item()
    err = (got.float() - ref.float()).abs().max().item()
    assert err <= scale * 2**-7 + 1e-3, (kind, n, k, err, scale)
