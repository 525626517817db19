"""Warm-up before the server reports ready: every kernel the first traffic will need is
compiled (FlashInfer JIT modules, Triton autotuning) and cached by one throwaway run each.

Without it the first burst after /ready waits for JIT compilation (over a minute on a fresh
machine). Warm-up batches read and write only the scratch KV slot (the engine state's pad
row), so they touch no request's KV and leave the prefix cache empty.

`begin()` marks the start of the phase: the scheduler process reports `warming` to the launcher
through `announcing(...)` (a context variable, so nothing process-wide), and tests hold the
phase open with MINISGL_STARTUP_GATE=<dir> (`hold(phase)` waits until <dir>/<phase> exists)
to watch /health without timing assumptions.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch

from minisgl.engine.batch import Batch
from minisgl.env import ENV
from minisgl.sampling_params import SamplingParams

logger = logging.getLogger(__name__)

GATE_ENV = "MINISGL_STARTUP_GATE"
_GATE_POLL_S = 0.05
_on_begin: ContextVar[Callable[[], None] | None] = ContextVar("minisgl_warmup_on_begin", default=None)


@contextlib.contextmanager
def announcing(on_begin: Callable[[], None]) -> Iterator[None]:
    """Within this block, `begin()` (the start of any warm-up) calls `on_begin()` first."""
    token = _on_begin.set(on_begin)
    try:
        yield
    finally:
        _on_begin.reset(token)


def begin() -> None:
    """The warm-up phase starts: announce it, then wait for the test gate if one is set."""
    on_begin = _on_begin.get()
    if on_begin is not None:
        on_begin()
    hold("warming")


def hold(phase: str) -> None:
    """Tests only: with MINISGL_STARTUP_GATE=<dir>, wait here until <dir>/<phase> exists."""
    directory = ENV.startup_gate
    if not directory:
        return
    gate = os.path.join(directory, phase)
    logger.info("start-up phase %s waits for %s to exist (%s)", phase, gate, GATE_ENV)
    while not os.path.exists(gate):
        time.sleep(_GATE_POLL_S)


@dataclass(eq=False)
class _Row:
    """A SampleRow that no request owns."""

    params: SamplingParams
    prompt_ids: list[int] = field(default_factory=lambda: [0])
    output_ids: list[int] = field(default_factory=list)
    generator: torch.Generator | None = None


def warm_up(engine, max_prefill_tokens: int) -> None:
    """Run a full-size prefill chunk, a multi-row prefill over a cached prefix, decode
    without graphs, and the sampling kernels once each, logging each phase's time."""
    begin()
    state = engine.state
    pad = state.pad_slot
    chunk = max(1, min(max_prefill_tokens, state.width - 1))
    greedy = SamplingParams(max_tokens=1, temperature=0.0)
    sampled = SamplingParams(max_tokens=1, temperature=0.8, top_k=20, top_p=0.9, min_p=0.05)

    def run(name: str, rows: list[_Row], chunks: list[list[int]], prefixes: list[int]) -> None:
        start = time.perf_counter()
        batch = Batch.build(phase="prefill" if any(len(c) > 1 for c in chunks) else "decode",
                            rows=rows, token_chunks=chunks, prefix_lens=prefixes,
                            state_slots=[pad] * len(rows), sample_rows=list(range(len(rows))),
                            device=engine.device)
        engine.launch(batch).result()
        logger.info("warm-up %s: %.2f s", name, time.perf_counter() - start)

    run(f"prefill of {chunk} tokens", [_Row(greedy)], [[0] * chunk], [0])
    half = max(1, chunk // 4)
    run("prefill over cached prefixes, sampled", [_Row(greedy), _Row(sampled)],
        [[0] * half, [0] * half], [half, 1])
    graph_max = engine.graphs.max_bs if engine.graphs is not None else 0
    bs = min(state.num_slots, max(graph_max + 1, 4))  # past the graphs: the eager decode path
    run(f"eager decode of {bs} rows", [_Row(greedy if i % 2 else sampled) for i in range(bs)],
        [[0]] * bs, [1] * bs)
    if engine.device.type == "cuda":
        torch.cuda.synchronize(engine.device)
