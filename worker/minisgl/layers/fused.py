"""Fused CUDA kernels (FlashInfer) for the small ops of a decoder layer.

Unfused, RMSNorm, residual add, rotary and SiLU-and-mul are ~40 tiny kernels per layer,
which dominate a decode step of a small model. On CUDA with FlashInfer installed (and a
half-precision dtype) each becomes one kernel; elsewhere the PyTorch reference runs.
"""

from __future__ import annotations

import functools

import torch


@functools.cache
def flashinfer_ops():
    """The flashinfer module, or None when it is not installed."""
    try:
        import flashinfer

        return flashinfer
    except ImportError:
        return None


def use_fused(x: torch.Tensor) -> bool:
    return x.is_cuda and x.dtype != torch.float32 and flashinfer_ops() is not None


@functools.cache
def _has_triton() -> bool:
    try:
        import triton  # noqa: F401

        return True
    except ImportError:
        return False


def use_fused_qk_rope_store(qkv: torch.Tensor, head_dim: int) -> bool:
    """The Triton norm + rope + KV-store kernel (layers/qk_rope_store.py) runs: CUDA, half
    precision, a power-of-two head_dim, Triton installed."""
    return (use_fused(qkv) and head_dim >= 32 and head_dim & (head_dim - 1) == 0
            and qkv.stride(-1) == 1 and _has_triton())
