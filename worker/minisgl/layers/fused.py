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
