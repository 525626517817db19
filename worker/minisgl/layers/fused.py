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


@functools.cache
def _pdl_supported(device_index: int) -> bool:
    import os

    if os.environ.get("TRITON_INTERPRET") == "1" or not _has_triton():
        return False
    import triton.language as tl
    from triton.backends.nvidia.compiler import CUDAOptions

    return (torch.cuda.get_device_capability(device_index)[0] >= 9
            and hasattr(tl.extra.cuda, "gdc_wait")
            and "launch_pdl" in CUDAOptions.__dataclass_fields__)


def pdl_launch(x: torch.Tensor) -> dict:
    """Launch options for a Triton kernel that calls gdc_launch_dependents / gdc_wait under
    its PDL flag: programmatic dependent launch (Hopper+, $MINISGL_PDL): the kernel may start
    while the previous one drains and waits (griddepcontrol.wait) before reading its
    outputs. Every write and every read of a previous kernel's output in such a kernel comes
    after the wait, so the overlap only covers loads of weights and its own launch."""
    from minisgl.env import ENV

    if x.is_cuda and ENV.pdl and _pdl_supported(x.device.index or 0):
        return {"launch_pdl": True}
    return {}
