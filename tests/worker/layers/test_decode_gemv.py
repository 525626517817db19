"""The fused decode GEMV kernels (norm + GEMV, norm + GEMV + SiLU-and-mul, GEMV + residual
add) equal their PyTorch references.

On a CPU machine the kernels run under Triton's interpreter (TRITON_INTERPRET=1, set before
triton is imported, hence a subprocess) in float32 and float16; bf16 inside the model runs on
the GPU (tests/worker/engine/test_gpu_backends.py).
"""

from __future__ import annotations

import pytest

from tests.helpers.triton_interpreter import run_interpreted

pytest.importorskip("triton")

SCRIPT = r"""
import json, torch
from minisgl.layers.decode_gemv import (GemvConfig, gemv_add, gemv_add_reference, norm_gemv,
                                        norm_gemv_reference)
torch.manual_seed(0)
results = []
diff = lambda a, b: (a.float() - b.float()).abs().max().item()
# K = 200 and N = 37 are no multiple of the blocks: the masked tails; T = 1: the GEMV kernel,
# T = 3 and 16 (a full tile of rows): the tl.dot kernel
for dtype in (torch.float32, torch.float16):
    for t, k, n, cfg in ((1, 200, 37, GemvConfig(8, 64, 4)), (3, 128, 16, GemvConfig(16, 128, 4)),
                         (16, 200, 37, None)):
        x = torch.randn(t, k).to(dtype)
        g = (1 + 0.1 * torch.randn(k)).to(dtype)
        for silu in (False, True):
            for bias in (None, torch.randn(n * (2 if silu else 1)).to(dtype)):
                w = (torch.randn(n * (2 if silu else 1), k) / k**0.5).to(dtype)
                got = norm_gemv(x, g, 1e-6, w, bias, silu=silu, config=cfg)
                ref = norm_gemv_reference(x, g, 1e-6, w, bias, silu=silu)
                results.append(dict(op="norm_gemv", dtype=str(dtype), t=t, silu=silu,
                                    bias=bias is not None, diff=diff(got, ref),
                                    scale=ref.float().abs().max().item()))
        w = (torch.randn(n, k) / k**0.5).to(dtype)
        res = torch.randn(t, n).to(dtype)
        ref = gemv_add_reference(x, w, res)
        out = gemv_add(x, w, res, config=cfg)
        results.append(dict(op="gemv_add", dtype=str(dtype), t=t, in_place=out is res,
                            diff=diff(res, ref), scale=ref.float().abs().max().item()))
errors = []
for bad in (lambda: gemv_add(x, w, torch.randn(t, n + 1).to(dtype)),
            lambda: gemv_add(x.t().contiguous().t(), w, torch.randn(t, n).to(dtype)),
            lambda: norm_gemv(x, g[:-1], 1e-6, w),
            lambda: norm_gemv(x, g, 1e-6, w, torch.randn(n + 1).to(dtype)),
            lambda: norm_gemv(torch.randn(17, k).to(dtype), g, 1e-6, w)):
    try:
        bad()
        errors.append("no error")
    except ValueError as e:
        errors.append(str(e))
results.append(errors)
print(json.dumps(results))
"""


def test_kernels_match_reference_under_the_triton_interpreter():
    results = run_interpreted(SCRIPT, timeout=600)
    *cases, error = results
    assert len(cases) == 30
    for r in cases:
        # float16: the same float32 sums rounded once; the order of the sums differs
        tol = 1e-4 * max(1.0, r["scale"]) if r["dtype"] == "torch.float32" else r["scale"] * 2**-9
        assert r["diff"] <= tol, r
    assert all(r["in_place"] for r in cases if r["op"] == "gemv_add")
    shape, strided, norm, bias, too_many = error
    assert "residual" in shape and "[16, 37]" in shape, shape
    assert "contiguous x" in strided, strided
    assert norm.startswith("norm weight"), norm
    assert bias.startswith("bias"), bias
    assert "at most 16 tokens" in too_many, too_many


def test_default_config_keeps_the_gpu_busy_on_llama_shapes():
    from minisgl.layers.decode_gemv import default_config

    for n, k in ((6144, 4096), (4096, 4096), (14336, 4096), (4096, 14336), (1024, 1024)):
        cfg = default_config(n, k)
        assert -(-n // cfg.block_n) >= 128, (n, k, cfg)  # programs for 132 SMs
        assert cfg.block_k & (cfg.block_k - 1) == 0 and cfg.block_k <= k


def test_gate_up_blocks_come_from_the_environment_or_fail_clearly(monkeypatch):
    from minisgl.layers.decode_gemv import GemvConfig, default_config

    assert default_config(14336, 4096, silu=True) == GemvConfig(8, 256, 4)  # wide gate_up
    assert default_config(3072, 1024, silu=True) == GemvConfig(4, 1024, 4)
    monkeypatch.setenv("MINISGL_GEMV_SILU_BLOCKS", "16,512,8")
    assert default_config(14336, 4096, silu=True) == GemvConfig(16, 512, 8)
    assert default_config(4096, 4096) == GemvConfig(4, 1024, 4)  # only gate_up's
    for bad in ("16,500,8", "16,512", "a,b,c", "0,512,4"):
        monkeypatch.setenv("MINISGL_GEMV_SILU_BLOCKS", bad)
        with pytest.raises(ValueError, match="MINISGL_GEMV_SILU_BLOCKS"):
            default_config(14336, 4096, silu=True)


def test_fused_path_and_pdl_stay_off_on_the_cpu(monkeypatch):
    import torch

    from minisgl.layers.decode_gemv import use_fused_gemv
    from minisgl.layers.fused import pdl_launch

    x = torch.zeros(1, 64, dtype=torch.bfloat16)
    assert not use_fused_gemv(x, torch.zeros(64, 64, dtype=torch.bfloat16))
    assert pdl_launch(x) == {}
    monkeypatch.setenv("MINISGL_PDL", "maybe")
    from minisgl.env import ENV

    with pytest.raises(ValueError, match="MINISGL_PDL"):
        ENV.pdl
