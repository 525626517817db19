"""One kernel from the qkv projection to the KV cache: per-head q/k RMSNorm (Qwen3),
NeoX rotary embedding, and the K/V store at each token's slot.

Unfused this is up to seven kernels per layer (two norms, rope, two index copies, the
q/k/v split copies); at decode batch sizes each is a few microseconds of a step that
should be streaming weights. The Triton kernel runs one program per token over all its heads
(a [heads, D/2] tile; a program per (token, head) was 4x slower in prefill): it writes the
rotated query, the rotated key and the value into the cache (an FP8 cache gets them
clamped to its range and rounded).
`qk_rope_store_reference` is the same computation in PyTorch (CPU, and the kernel's test).
"""

from __future__ import annotations

import functools

import torch

from minisgl.kvcache.storage import FP8_MAX, store_rows
from minisgl.layers.fused import pdl_launch
from minisgl.layers.rotary import _rotate


@functools.cache
def _kernel():
    import triton
    import triton.language as tl

    @triton.jit
    def qk_rope_store(qkv_ptr, qkv_stride, pos_ptr, cos_sin_ptr, qw_ptr, kw_ptr, slots_ptr,
                      q_out_ptr, k_cache_ptr, v_cache_ptr, eps,
                      H: tl.constexpr, HKV: tl.constexpr, D: tl.constexpr, BH: tl.constexpr,
                      BKV: tl.constexpr, HAS_NORM: tl.constexpr, PDL: tl.constexpr,
                      FP8_MAX: tl.constexpr):
        if PDL:  # launched early (layers/fused.py: pdl_launch): wait for qkv
            tl.extra.cuda.gdc_launch_dependents()
            tl.extra.cuda.gdc_wait()
        t = tl.program_id(0)
        half: tl.constexpr = D // 2
        offs = tl.arange(0, half)[None, :]  # [1, D/2]
        pos = tl.load(pos_ptr + t)
        cos = tl.load(cos_sin_ptr + pos * D + offs)
        sin = tl.load(cos_sin_ptr + pos * D + half + offs)
        row = qkv_ptr + t * qkv_stride
        # q heads: [BH, D/2] halves, normed, rotated, written to q_out
        hq = tl.arange(0, BH)[:, None]
        mq = hq < H
        src = row + hq * D + offs
        x1 = tl.load(src, mask=mq, other=0.0).to(tl.float32)
        x2 = tl.load(src + half, mask=mq, other=0.0).to(tl.float32)
        if HAS_NORM:
            rstd = 1.0 / tl.sqrt((tl.sum(x1 * x1, 1) + tl.sum(x2 * x2, 1)) / D + eps)[:, None]
            x1 = x1 * rstd * tl.load(qw_ptr + offs).to(tl.float32)
            x2 = x2 * rstd * tl.load(qw_ptr + half + offs).to(tl.float32)
        dst = q_out_ptr + (t * H + hq) * D + offs
        tl.store(dst, (x1 * cos - x2 * sin).to(q_out_ptr.dtype.element_ty), mask=mq)
        tl.store(dst + half, (x2 * cos + x1 * sin).to(q_out_ptr.dtype.element_ty), mask=mq)
        # k heads: the same, written to the cache at the token's slot; v copied beside it
        hk = tl.arange(0, BKV)[:, None]
        mk = hk < HKV
        src = row + (H + hk) * D + offs
        x1 = tl.load(src, mask=mk, other=0.0).to(tl.float32)
        x2 = tl.load(src + half, mask=mk, other=0.0).to(tl.float32)
        if HAS_NORM:
            rstd = 1.0 / tl.sqrt((tl.sum(x1 * x1, 1) + tl.sum(x2 * x2, 1)) / D + eps)[:, None]
            x1 = x1 * rstd * tl.load(kw_ptr + offs).to(tl.float32)
            x2 = x2 * rstd * tl.load(kw_ptr + half + offs).to(tl.float32)
        slot = tl.load(slots_ptr + t)
        dst = k_cache_ptr + (slot * HKV + hk) * D + offs
        k1, k2 = x1 * cos - x2 * sin, x2 * cos + x1 * sin
        full = tl.arange(0, D)[None, :]
        v = tl.load(row + (H + HKV + hk) * D + full, mask=mk, other=0.0)
        if FP8_MAX > 0:  # an FP8 cache: saturate explicitly, not by the cast's rounding mode
            k1 = tl.clamp(k1, -FP8_MAX, FP8_MAX)
            k2 = tl.clamp(k2, -FP8_MAX, FP8_MAX)
            v = tl.clamp(v.to(tl.float32), -FP8_MAX, FP8_MAX)
        tl.store(dst, k1.to(k_cache_ptr.dtype.element_ty), mask=mk)
        tl.store(dst + half, k2.to(k_cache_ptr.dtype.element_ty), mask=mk)
        tl.store(v_cache_ptr + (slot * HKV + hk) * D + full, v.to(v_cache_ptr.dtype.element_ty),
                 mask=mk)

    return qk_rope_store


def _pow2(n: int) -> int:
    return 1 << (n - 1).bit_length()


def qk_rope_store(qkv: torch.Tensor, positions: torch.Tensor, cos_sin: torch.Tensor,
                  q_weight: torch.Tensor | None, k_weight: torch.Tensor | None, eps: float,
                  slots: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                  num_heads: int, num_kv_heads: int, head_dim: int) -> torch.Tensor:
    """qkv [T, (H + 2 Hkv) D] (rows contiguous); positions, slots [T] int64; cos_sin
    [max_pos, D] f32 (cos | sin); k_cache, v_cache [num_slots, Hkv, D]. Writes K/V of every
    token at its slot and returns q [T, H, D] (normed, rotated)."""
    t = qkv.shape[0]
    q = torch.empty(t, num_heads, head_dim, dtype=qkv.dtype, device=qkv.device)
    if t == 0:
        return q
    has_norm = q_weight is not None
    w = q_weight if has_norm else cos_sin  # unused pointer when there is no norm
    pdl = pdl_launch(qkv)
    _kernel()[(t,)](
        qkv, qkv.stride(0), positions, cos_sin, w, k_weight if has_norm else w, slots, q,
        k_cache, v_cache, eps, H=num_heads, HKV=num_kv_heads, D=head_dim,
        BH=_pow2(num_heads), BKV=_pow2(num_kv_heads), HAS_NORM=has_norm, PDL=bool(pdl),
        FP8_MAX=FP8_MAX if k_cache.dtype == torch.float8_e4m3fn else 0.0, **pdl)
    return q


def qk_rope_store_reference(qkv: torch.Tensor, positions: torch.Tensor, cos_sin: torch.Tensor,
                            q_weight: torch.Tensor | None, k_weight: torch.Tensor | None,
                            eps: float, slots: torch.Tensor, k_cache: torch.Tensor,
                            v_cache: torch.Tensor, num_heads: int, num_kv_heads: int,
                            head_dim: int) -> torch.Tensor:
    """The kernel's computation in PyTorch (float32 inside, like the kernel)."""
    t, d = qkv.shape[0], head_dim
    q, k, v = qkv.float().split([num_heads * d, num_kv_heads * d, num_kv_heads * d], dim=-1)
    q, k = q.reshape(t, num_heads, d), k.reshape(t, num_kv_heads, d)
    if q_weight is not None:
        q = q * torch.rsqrt(q.pow(2).mean(-1, keepdim=True) + eps) * q_weight.float()
        k = k * torch.rsqrt(k.pow(2).mean(-1, keepdim=True) + eps) * k_weight.float()
    cos, sin = cos_sin[positions].float().chunk(2, dim=-1)  # [T, D/2] each
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    store_rows(k_cache, slots, _rotate(k, cos, sin))  # float32 in, the cache's dtype out
    store_rows(v_cache, slots, v.reshape(t, num_kv_heads, d))
    return _rotate(q, cos, sin).to(qkv.dtype)
