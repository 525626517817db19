"""Attention backend registry: name -> lazily imported factory."""

from __future__ import annotations

import importlib

from minisgl.attention.base import AttentionBackend

_BACKENDS = {
    "torch": "minisgl.attention.torch_backend:TorchBackend",
    "fi": "minisgl.attention.flashinfer_backend:fi",
    "fa3": "minisgl.attention.flashinfer_backend:fa3",
    "fa3,fi": "minisgl.attention.flashinfer_backend:fa3_fi",
}


def backend_names() -> list[str]:
    return list(_BACKENDS)


def create_attention_backend(name: str, *args, **kwargs) -> AttentionBackend:
    if name not in _BACKENDS:
        raise ValueError(f"unknown attention backend {name!r}; valid: {', '.join(_BACKENDS)}")
    module, cls = _BACKENDS[name].split(":")
    try:
        mod = importlib.import_module(module)
    except ImportError as e:
        raise ValueError(f"attention backend {name!r} is unavailable here: {e}") from e
    return getattr(mod, cls)(*args, **kwargs)
