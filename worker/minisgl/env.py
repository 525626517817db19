"""Every environment variable the worker reads, typed, in one place.

Read through `ENV.<name>` (each access reads the environment, so tests and child processes
see changes). A malformed value raises ValueError naming the variable.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


def _text(name: str) -> str | None:
    value = os.environ.get(name, "").strip()
    return value or None


def _number(name: str, default: float, kind: type = float, minimum: float = 0) -> float:
    raw = _text(name)
    if raw is None:
        return default
    try:
        value = kind(raw)
    except ValueError:
        raise ValueError(f"{name} must be a {kind.__name__}, got {raw!r}") from None
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {raw!r}")
    return value


@dataclass(frozen=True)
class _Env:
    @property
    def api_key(self) -> str | None:
        """MINISGL_API_KEY: the one API key clients must send (--api-key wins)."""
        return _text("MINISGL_API_KEY")

    @property
    def model_revision(self) -> str | None:
        """MINISGL_MODEL_REVISION: the Hub revision to download (the operator pins it)."""
        return _text("MINISGL_MODEL_REVISION")

    @property
    def hf_token(self) -> str | None:
        """HF_TOKEN: Hugging Face Hub token for gated models."""
        return _text("HF_TOKEN")

    @property
    def health_stall_timeout_s(self) -> float:
        """MINISGL_HEALTH_STALL_TIMEOUT_S: /health fails when the scheduler, a tokenizer or
        the detokenizer has not answered for this long (default 60)."""
        return _number("MINISGL_HEALTH_STALL_TIMEOUT_S", 60.0, float, minimum=0.5)

    @property
    def startup_gate(self) -> str | None:
        """MINISGL_STARTUP_GATE (tests): a directory; each start-up phase waits for a file
        named after it there, so a test sees every phase without timing assumptions."""
        return _text("MINISGL_STARTUP_GATE")

    @property
    def shell_max_tokens(self) -> int | None:
        """MINISGL_SHELL_MAX_TOKENS: the shell's default max_tokens per answer."""
        raw = _text("MINISGL_SHELL_MAX_TOKENS")
        return None if raw is None else int(_number("MINISGL_SHELL_MAX_TOKENS", 0, int, 1))

    @property
    def fused_gemv_max_tokens(self) -> int:
        """MINISGL_FUSED_GEMV_MAX_TOKENS: CUDA steps of at most this many tokens (one rank)
        run the fused-GEMV decoder layers (layers/decode_gemv.py); 0 = never (default 1,
        at most 16)."""
        value = int(_number("MINISGL_FUSED_GEMV_MAX_TOKENS", 1, int, 0))
        if value > 16:
            raise ValueError(f"MINISGL_FUSED_GEMV_MAX_TOKENS must be <= 16, got {value}")
        return value

    @property
    def pdl(self) -> bool:
        """MINISGL_PDL: launch the decode-path Triton kernels with programmatic dependent
        launch on Hopper and newer, so each starts streaming its weights while the previous
        kernel finishes (default 1; 0 = plain launches)."""
        return bool(_number("MINISGL_PDL", 1, int, 0))

    @property
    def gemv_silu_blocks(self) -> tuple[int, int, int] | None:
        """MINISGL_GEMV_SILU_BLOCKS (tuning): "block_n,block_k,num_warps" of the fused
        gate_up GEMV kernel instead of its default (powers of two)."""
        raw = _text("MINISGL_GEMV_SILU_BLOCKS")
        if raw is None:
            return None
        try:
            parts = tuple(int(p) for p in raw.split(","))
        except ValueError:
            parts = ()
        if len(parts) != 3 or any(p < 1 or p & (p - 1) for p in parts):
            raise ValueError(f"MINISGL_GEMV_SILU_BLOCKS must be three powers of two "
                             f"'block_n,block_k,num_warps', got {raw!r}")
        return parts


ENV = _Env()
