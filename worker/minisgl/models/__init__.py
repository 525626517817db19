"""Model registry: architecture name -> lazily imported model class; where models come
from (built-in, local, the Hugging Face Hub) is models/hub.py."""

from __future__ import annotations

from minisgl.distributed import TPGroup
from minisgl.models.config import ModelConfig
from minisgl.models.hub import (BUILTIN_MODELS, TOKENIZER_FILES, resolve_model_path,
                                resolve_tokenizer_path)

__all__ = ["BUILTIN_MODELS", "TOKENIZER_FILES", "create_model", "resolve_model_path",
           "resolve_tokenizer_path"]

_ARCHITECTURES = {"llama": "minisgl.models.llama:CausalLM", "qwen2": "minisgl.models.llama:CausalLM",
                  "qwen3": "minisgl.models.llama:CausalLM"}


def create_model(cfg: ModelConfig, tp: TPGroup):
    import importlib

    if cfg.architecture not in _ARCHITECTURES:
        raise ValueError(f"unsupported architecture {cfg.architecture!r}; "
                         f"supported: {', '.join(sorted(_ARCHITECTURES))}")
    module, cls = _ARCHITECTURES[cfg.architecture].split(":")
    return getattr(importlib.import_module(module), cls)(cfg, tp)
