"""Decode GEMVs with a layer's small ops folded in (Triton), for one-token steps.

At one decode token a Llama-3.1-8B layer streams 436 MB of weights (104 us at the card's
4.19 TB/s). cuBLAS spends ~116 us on the four GEMVs, two of them with a split-K reduce
kernel, and the layer adds small kernels around them: two add+RMSNorms, SiLU-and-mul. Each
small kernel is only a few microseconds, but together they are a tenth of the step. Here each
projection is one kernel that also does its neighbour's work:

  norm_gemv(x, g, W)             y = RMSNorm(x; g) W^T            qkv (+ bias)
  norm_gemv(x, g, W, silu=True)  y = silu(a) * b, [a | b] = RMSNorm(x; g) W^T   gate_up
  gemv_add(a, W, r)              r += a W^T  (in place)           o_proj, down_proj

so a layer is norm_gemv -> q/k rope + KV store -> attention -> gemv_add -> norm_gemv(silu)
-> gemv_add, with the residual stream updated in place (the models' `forward_fused`). It is
close to, not bit-identical with, the unfused layers: the GEMV sums are added to the residual
and fed to SiLU-and-mul in float32 without first rounding them to bf16 (one rounding fewer).
A program computes BLOCK_N outputs over the whole K (no split-K): it re-derives its rows'
RMS from x (a few KB from L2) and streams BLOCK_N rows of W once. One token takes a
GEMV kernel (elementwise products, tuned on an H200); 2 to 16 tokens a tl.dot kernel over a
16-row tile, which on an H200 at 4 tokens is 2.0-2.4x slower than cuBLAS (its tiles are too
small to stream W at speed; decode-gemv-4-tokens-*.json), so the models use the fused path
only at one token (MINISGL_FUSED_GEMV_MAX_TOKENS=1); it is correct (GPU and interpreter tests)
and left as the starting point for multi-token steps. The `*_reference` functions are the same math
in PyTorch (the kernels' tests).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import torch

from minisgl.env import ENV
from minisgl.layers.fused import _has_triton, pdl_launch, use_fused


MAX_TOKENS = 16  # tokens a step the kernels take (one tl.dot tile of rows)


class GemvConfig(NamedTuple):
    block_n: int
    block_k: int
    num_warps: int


def default_config(n_out: int, k: int, silu: bool = False) -> GemvConfig:
    """Blocks by shape, from benchmarks/decode_gemv.py --sweep on an H200: 4 rows a program
    and 1,024-wide K runs (Llama-3.1-8B's qkv / o / down, all of Qwen3-0.6B's); a wide
    gate_up (8B: 28,672 rows, two double-buffered tiles a program) runs 8 x 256 blocks
    ($MINISGL_GEMV_SILU_BLOCKS overrides gate_up's)."""
    if silu and ENV.gemv_silu_blocks:
        return GemvConfig(*ENV.gemv_silu_blocks)
    if silu and n_out >= 8192:
        return GemvConfig(8, 256, 4)
    return GemvConfig(4, min(1024, _pow2(k)), 4)


def small_config(k: int) -> GemvConfig:
    """2..MAX_TOKENS tokens (tl.dot tiles need 16 rows and columns); the sweep's best at 4
    tokens on an H200 (32 x 256 x 4) was still 1.4x cuBLAS for gate_up."""
    return GemvConfig(16, min(256, max(16, _pow2(k))), 4)


def _pow2(n: int) -> int:
    return 1 << (n - 1).bit_length()


def use_fused_gemv(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """CUDA, half precision, Triton installed, rows contiguous."""
    return use_fused(x) and _has_triton() and x.is_contiguous() and weight.is_contiguous()


@functools.cache
def _kernel():
    import triton
    import triton.language as tl

    @triton.jit
    def gemv(x_ptr, g_ptr, w_ptr, b_ptr, y_ptr, n_out, eps, K: tl.constexpr,
             BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, NORM: tl.constexpr,
             SILU: tl.constexpr, ADD: tl.constexpr, HAS_BIAS: tl.constexpr,
             PDL: tl.constexpr):
        m = tl.program_id(1)  # the token
        rn = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        mn = rn < n_out
        rk = tl.arange(0, BLOCK_K)
        x_row = x_ptr + m * K
        w_rows = w_ptr + rn[:, None] * K
        # the first W tiles do not depend on the previous kernel: load them before waiting
        w_mask = mn[:, None] & (rk < K)[None, :]
        w = tl.load(w_rows + rk[None, :], mask=w_mask, other=0.0)
        w2 = w
        if SILU:
            w2 = tl.load(w_rows + n_out * K + rk[None, :], mask=w_mask, other=0.0)
        if PDL:
            tl.extra.cuda.gdc_launch_dependents()
            tl.extra.cuda.gdc_wait()  # x / the residual are the previous kernels' outputs
        rstd = 1.0
        if NORM:
            ss = tl.zeros([BLOCK_K], tl.float32)
            for k0 in range(0, K, BLOCK_K):
                xv = tl.load(x_row + k0 + rk, mask=k0 + rk < K, other=0.0).to(tl.float32)
                ss += xv * xv
            rstd = 1.0 / tl.sqrt(tl.sum(ss, 0) / K + eps)
        acc = tl.zeros([BLOCK_N], tl.float32)
        acc2 = tl.zeros([BLOCK_N], tl.float32)  # the up half (SILU)
        for k0 in range(0, K, BLOCK_K):
            kk = k0 + rk
            mk = kk < K
            # the next tiles load while this one is summed (a two-stage pipeline by hand)
            nk = kk + BLOCK_K
            nm = mn[:, None] & (nk < K)[None, :]
            w_next = tl.load(w_rows + nk[None, :], mask=nm, other=0.0)
            w2_next = w_next
            if SILU:
                w2_next = tl.load(w_rows + n_out * K + nk[None, :], mask=nm, other=0.0)
            xv = tl.load(x_row + kk, mask=mk, other=0.0)
            if NORM:  # RMSNorm's output, rounded to the activation dtype as a norm kernel's
                g = tl.load(g_ptr + kk, mask=mk, other=0.0).to(tl.float32)
                xv = (xv.to(tl.float32) * rstd * g).to(x_ptr.dtype.element_ty)
            xf = xv.to(tl.float32)[None, :]
            acc += tl.sum(w.to(tl.float32) * xf, 1)
            if SILU:
                acc2 += tl.sum(w2.to(tl.float32) * xf, 1)
            w, w2 = w_next, w2_next
        if HAS_BIAS:
            acc += tl.load(b_ptr + rn, mask=mn, other=0.0).to(tl.float32)
            if SILU:
                acc2 += tl.load(b_ptr + n_out + rn, mask=mn, other=0.0).to(tl.float32)
        if SILU:
            acc = acc / (1.0 + tl.exp(-acc)) * acc2
        y = y_ptr + m * n_out + rn
        if ADD:
            acc += tl.load(y, mask=mn, other=0.0).to(tl.float32)
        tl.store(y, acc.to(y_ptr.dtype.element_ty), mask=mn)

    @triton.jit
    def gemm_small(x_ptr, g_ptr, w_ptr, b_ptr, y_ptr, t, n_out, eps, K: tl.constexpr,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                   NORM: tl.constexpr, SILU: tl.constexpr, ADD: tl.constexpr,
                   HAS_BIAS: tl.constexpr, PDL: tl.constexpr):
        """The same for 2..BLOCK_M tokens: W read once for all of them (tl.dot tiles)."""
        rn = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        mn = rn < n_out
        rm = tl.arange(0, BLOCK_M)
        mm = rm < t
        rk = tl.arange(0, BLOCK_K)
        w_rows = w_ptr + rn[:, None] * K
        x_rows = x_ptr + rm[:, None] * K
        w_mask = mn[:, None] & (rk < K)[None, :]
        w = tl.load(w_rows + rk[None, :], mask=w_mask, other=0.0)
        w2 = w
        if SILU:
            w2 = tl.load(w_rows + n_out * K + rk[None, :], mask=w_mask, other=0.0)
        if PDL:
            tl.extra.cuda.gdc_launch_dependents()
            tl.extra.cuda.gdc_wait()
        rstd = tl.full([BLOCK_M], 1.0, tl.float32)
        if NORM:
            ss = tl.zeros([BLOCK_M], tl.float32)
            for k0 in range(0, K, BLOCK_K):
                xm = mm[:, None] & (k0 + rk < K)[None, :]
                xv = tl.load(x_rows + k0 + rk[None, :], mask=xm, other=0.0).to(tl.float32)
                ss += tl.sum(xv * xv, 1)
            rstd = 1.0 / tl.sqrt(ss / K + eps)
        acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
        acc2 = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
        for k0 in range(0, K, BLOCK_K):
            kk = k0 + rk
            mk = kk < K
            nk = kk + BLOCK_K
            nm = mn[:, None] & (nk < K)[None, :]
            w_next = tl.load(w_rows + nk[None, :], mask=nm, other=0.0)
            w2_next = w_next
            if SILU:
                w2_next = tl.load(w_rows + n_out * K + nk[None, :], mask=nm, other=0.0)
            xv = tl.load(x_rows + kk[None, :], mask=mm[:, None] & mk[None, :], other=0.0)
            if NORM:
                g = tl.load(g_ptr + kk, mask=mk, other=0.0).to(tl.float32)
                xv = (xv.to(tl.float32) * rstd[:, None] * g[None, :]).to(x_ptr.dtype.element_ty)
            acc += tl.dot(xv, tl.trans(w))  # [M, K] x [K, N]
            if SILU:
                acc2 += tl.dot(xv, tl.trans(w2))
            w, w2 = w_next, w2_next
        if HAS_BIAS:
            acc += tl.load(b_ptr + rn, mask=mn, other=0.0).to(tl.float32)[None, :]
            if SILU:
                acc2 += tl.load(b_ptr + n_out + rn, mask=mn, other=0.0).to(tl.float32)[None, :]
        if SILU:
            acc = acc / (1.0 + tl.exp(-acc)) * acc2
        y = y_ptr + rm[:, None] * n_out + rn[None, :]
        ym = mm[:, None] & mn[None, :]
        if ADD:
            acc += tl.load(y, mask=ym, other=0.0).to(tl.float32)
        tl.store(y, acc.to(y_ptr.dtype.element_ty), mask=ym)

    return gemv, gemm_small


def _launch(x: torch.Tensor, weight: torch.Tensor, y: torch.Tensor, n_out: int, *,
            norm_weight: torch.Tensor | None = None, eps: float = 0.0,
            bias: torch.Tensor | None = None, silu: bool = False, add: bool = False,
            config: GemvConfig | None = None) -> torch.Tensor:
    t, k = x.shape
    rows = 2 * n_out if silu else n_out
    if weight.shape != (rows, k):
        raise ValueError(f"weight {tuple(weight.shape)} does not fit x {tuple(x.shape)} "
                         f"and {n_out} outputs (silu={silu})")
    if norm_weight is not None and norm_weight.shape != (k,):
        raise ValueError(f"norm weight {tuple(norm_weight.shape)} must be [{k}]")
    if bias is not None and bias.shape != (rows,):
        raise ValueError(f"bias {tuple(bias.shape)} must be [{rows}]")
    # the kernel indexes rows densely (x + m * K, W + n * K)
    if not all(a is None or a.is_contiguous() for a in (x, weight, y, norm_weight, bias)):
        raise ValueError("the fused GEMV takes contiguous x, weight, output, norm weight, bias")
    if t == 0:
        return y
    if t > MAX_TOKENS:
        raise ValueError(f"the fused GEMV takes at most {MAX_TOKENS} tokens, got {t}")
    cfg = config or (default_config(n_out, k, silu) if t == 1 else small_config(k))
    pdl = pdl_launch(x)
    unused = weight  # a pointer the kernel never reads when its flag is off
    args = (x, unused if norm_weight is None else norm_weight, weight,
            unused if bias is None else bias, y)
    flags = dict(K=k, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, NORM=norm_weight is not None,
                 SILU=silu, ADD=add, HAS_BIAS=bias is not None, PDL=bool(pdl),
                 num_warps=cfg.num_warps, **pdl)
    gemv, gemm_small = _kernel()
    grid = -(-n_out // cfg.block_n)
    if t == 1:
        gemv[(grid, 1)](*args, n_out, eps, **flags)
    else:
        gemm_small[(grid,)](*args, t, n_out, eps, BLOCK_M=MAX_TOKENS, **flags)
    return y


def norm_gemv(x: torch.Tensor, norm_weight: torch.Tensor, eps: float, weight: torch.Tensor,
              bias: torch.Tensor | None = None, silu: bool = False,
              config: GemvConfig | None = None) -> torch.Tensor:
    """x [T, K] -> RMSNorm(x) W^T + b [T, N]; with silu, W is [gate; up] ([2N, K]) and the
    result silu(gate) * up [T, N]."""
    n_out = weight.shape[0] // 2 if silu else weight.shape[0]
    y = torch.empty(x.shape[0], n_out, dtype=x.dtype, device=x.device)
    return _launch(x, weight, y, n_out, norm_weight=norm_weight, eps=eps, bias=bias, silu=silu,
                   config=config)


def gemv_add(x: torch.Tensor, weight: torch.Tensor, residual: torch.Tensor,
             config: GemvConfig | None = None) -> torch.Tensor:
    """residual [T, N] += x [T, K] W^T, in place; returns residual."""
    if residual.shape != (x.shape[0], weight.shape[0]) or not residual.is_contiguous():
        raise ValueError(f"residual {tuple(residual.shape)} must be a contiguous "
                         f"[{x.shape[0]}, {weight.shape[0]}]")
    return _launch(x, weight, residual, weight.shape[0], add=True, config=config)


def norm_gemv_reference(x: torch.Tensor, norm_weight: torch.Tensor, eps: float,
                        weight: torch.Tensor, bias: torch.Tensor | None = None,
                        silu: bool = False) -> torch.Tensor:
    """The kernel's math in PyTorch: float32 inside, the normed x rounded to x's dtype."""
    x32 = x.float()
    normed = (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
              * norm_weight.float()).to(x.dtype)
    y = normed.float() @ weight.float().t()
    if bias is not None:
        y = y + bias.float()
    if silu:
        gate, up = y.chunk(2, dim=-1)
        y = torch.nn.functional.silu(gate) * up
    return y.to(x.dtype)


def gemv_add_reference(x: torch.Tensor, weight: torch.Tensor, residual: torch.Tensor
                       ) -> torch.Tensor:
    return (residual.float() + x.float() @ weight.float().t()).to(residual.dtype)
