"""Model registry: architecture name -> lazily imported model class."""

from __future__ import annotations

from pathlib import Path

from minisgl.distributed import TPGroup
from minisgl.models.config import ModelConfig

_ARCHITECTURES = {"llama": "minisgl.models.llama:CausalLM", "qwen2": "minisgl.models.llama:CausalLM",
                  "qwen3": "minisgl.models.llama:CausalLM"}
BUILTIN_MODELS = {"demo": Path(__file__).parent / "demo"}


def resolve_model_path(model_path: str) -> Path:
    """A built-in model name (e.g. 'demo') or a local directory holding config.json."""
    if model_path in BUILTIN_MODELS:
        return BUILTIN_MODELS[model_path]
    path = Path(model_path).expanduser()
    if not (path / "config.json").is_file():
        raise ValueError(
            f"--model-path {model_path!r} is not a directory with config.json (no model hub is "
            f"contacted; built-in models: {', '.join(BUILTIN_MODELS)})"
        )
    return path


def create_model(cfg: ModelConfig, tp: TPGroup):
    import importlib

    if cfg.architecture not in _ARCHITECTURES:
        raise ValueError(f"unsupported architecture {cfg.architecture!r}; "
                         f"supported: {', '.join(sorted(_ARCHITECTURES))}")
    module, cls = _ARCHITECTURES[cfg.architecture].split(":")
    return getattr(importlib.import_module(module), cls)(cfg, tp)
