"""minisgl: a fast, small, readable LLM inference server."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["LLM", "SamplingParams", "__version__"]


def __getattr__(name: str):
    # Lazy: `import minisgl` must stay cheap for the CLI and the operator.
    if name == "LLM":
        from minisgl.llm import LLM

        return LLM
    if name == "SamplingParams":
        from minisgl.sampling_params import SamplingParams

        return SamplingParams
    raise AttributeError(name)
