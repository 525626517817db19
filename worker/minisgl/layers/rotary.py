"""Rotary position embedding (NeoX half-rotation), with Llama-3 frequency scaling."""

from __future__ import annotations

import math

import torch
from torch import nn

from minisgl.layers.fused import flashinfer_ops, use_fused


def _llama3_inv_freq(inv_freq: torch.Tensor, scaling: dict) -> torch.Tensor:
    factor = scaling["factor"]
    low, high = scaling.get("low_freq_factor", 1.0), scaling.get("high_freq_factor", 4.0)
    old_ctx = scaling["original_max_position_embeddings"]
    low_wavelen, high_wavelen = old_ctx / low, old_ctx / high
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_ctx / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return torch.where(medium, smoothed, scaled)


def rope_inv_freq(head_dim: int, theta: float, scaling: dict | None) -> torch.Tensor:
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
    if scaling is None:
        return inv_freq
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind == "llama3":
        return _llama3_inv_freq(inv_freq, scaling)
    if kind == "linear":
        return inv_freq / scaling["factor"]
    if kind == "default":
        return inv_freq
    raise ValueError(f"unsupported rope scaling {kind!r}")


class RotaryEmbedding(nn.Module):
    def __init__(self, head_dim: int, max_positions: int, theta: float, scaling: dict | None):
        super().__init__()
        inv_freq = rope_inv_freq(head_dim, theta, scaling)
        pos = torch.arange(max_positions, dtype=torch.float32)
        freqs = torch.outer(pos, inv_freq)  # [max_pos, head_dim / 2] f32
        self.register_buffer("cos", freqs.cos(), persistent=False)
        self.register_buffer("sin", freqs.sin(), persistent=False)
        self.head_dim = head_dim
        self._cos_sin = None  # [max_pos, D] f32: cos | sin, for the fused kernel

    def cos_sin(self, device: torch.device) -> torch.Tensor:
        """[max_pos, D] f32: cos | sin, for the fused kernels."""
        if self._cos_sin is None or self._cos_sin.device != device:
            self._cos_sin = torch.cat([self.cos, self.sin], dim=-1).float().contiguous().to(device)
        return self._cos_sin

    def forward(self, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor):
        # positions [T] int64; q [T, H, D]; k [T, Hkv, D]
        if use_fused(q):
            t = q.shape[0]
            flashinfer_ops().rope.apply_rope_with_cos_sin_cache_inplace(
                positions, q.view(t, -1), k.view(t, -1), self.head_dim, self.cos_sin(q.device),
                is_neox=True)
            return q, k
        cos = self.cos[positions].unsqueeze(1)  # [T, 1, D/2] f32
        sin = self.sin[positions].unsqueeze(1)
        return _rotate(q, cos, sin), _rotate(k, cos, sin)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.float().chunk(2, dim=-1)
    out = torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)
    return out.to(x.dtype)
