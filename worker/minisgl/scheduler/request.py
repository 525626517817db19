"""A request as the scheduler tracks it (one per choice when n > 1)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from minisgl.sampling_params import SamplingParams


@dataclass(eq=False)
class Req:
    uid: int
    index: int
    prompt_ids: list[int]
    params: SamplingParams
    generator: torch.Generator | None = None
    arrival_time: float = field(default_factory=time.time)
    parent: "Req | None" = None  # n > 1: wait for the first choice's prefill, then share its KV
    output_ids: list[int] = field(default_factory=list)
    # KV bookkeeping (see CacheManager)
    slots: torch.Tensor = field(default_factory=lambda: torch.empty(0, dtype=torch.int64))
    kv_len: int = 0  # positions whose K/V is stored or being written by a launched step
    kv_committed: int = 0  # positions whose step has been processed (what the radix cache may take)
    inflight: int = 0  # tokens sampled by launched steps whose results are not processed yet
    state_slot: int = -1  # row of the engine's per-request device state while admitted
    table_synced: int = 0  # leading slots already written to the engine's slot table
    matched_len: int = 0  # leading slots owned by the prefix cache
    num_cached: int = 0  # prompt tokens served from the prefix cache at admission
    handle: object = None  # locked prefix-cache node
    reserved_pages: int = 0  # pages promised at admission but not yet allocated
    admitted: bool = False
    first_scheduled_time: float | None = None
    prompt_logprobs: list[float | None] | None = None
    prompt_top_logprobs: list[list[tuple[int, float]] | None] | None = None
    sent_first: bool = False
    finished: bool = False
    finish_reason: str | None = None
    num_preemptions: int = 0
    matcher: object = None  # structured output: the xgrammar GrammarMatcher of this choice

    @property
    def prompt_len(self) -> int:
        return len(self.prompt_ids)

    @property
    def fill_target(self) -> int:
        """Tokens whose KV must exist before decoding: the prompt, or after a preemption the
        prompt plus every output but the last (which is the next decode input)."""
        return self.prompt_len + max(0, len(self.output_ids) - 1)

    @property
    def prefill_done(self) -> bool:
        return self.kv_len >= self.fill_target

    @property
    def committed_prefill(self) -> bool:
        return self.kv_committed >= self.fill_target

    @property
    def num_tokens_launched(self) -> int:
        """Outputs including those still in flight."""
        return len(self.output_ids) + self.inflight

    @property
    def max_total_len(self) -> int:
        return self.prompt_len + self.params.max_tokens

    def all_ids(self) -> list[int]:
        return self.prompt_ids + self.output_ids

    def tokens(self, start: int, end: int) -> list[int]:
        """all_ids()[start:end] without copying the prompt when there is no output yet."""
        return (self.all_ids() if self.output_ids else self.prompt_ids)[start:end]
