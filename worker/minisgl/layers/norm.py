from __future__ import annotations

import torch
from torch import nn

from minisgl.layers.fused import flashinfer_ops, use_fused


class RMSNorm(nn.Module):
    """RMSNorm computed in float32, as in Llama / Qwen reference code.

    forward(x) -> normed; forward(x, residual) -> (normed(x + residual), x + residual),
    the fused add-and-norm between sublayers.
    """

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None):
        if use_fused(x):
            fi = flashinfer_ops()
            if residual is None:
                shape = x.shape
                return fi.norm.rmsnorm(x.reshape(-1, shape[-1]), self.weight, self.eps).view(shape)
            fi.norm.fused_add_rmsnorm(x, residual, self.weight, self.eps)  # in place
            return x, residual
        if residual is None:
            return self._norm(x)
        residual = x + residual
        return self._norm(residual), residual

    def _norm(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(dtype)
