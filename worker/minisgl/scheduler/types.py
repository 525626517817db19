"""What the scheduler hands back each step and what it reports about itself."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class TokenOutput:
    """One request's progress in one scheduler step.

    `token_id` is None only for an output that carries no new token (abort, or a
    request that ended with max_tokens == 0). `prompt_logprobs` (one float per prompt
    token, the first None) arrives once, on the request's first output, when asked for;
    with logprobs k > 0 so does `prompt_top_logprobs`, each position's top k (id, logprob).
    `index` is the choice index for n > 1 (uid identifies the user request).
    """

    uid: int
    index: int = 0
    token_id: int | None = None
    logprob: float | None = None
    top_logprobs: list[tuple[int, float]] | None = None
    prompt_logprobs: list[float | None] | None = None
    prompt_top_logprobs: list[list[tuple[int, float]] | None] | None = None
    finished: bool = False
    finish_reason: str | None = None  # "stop" | "length" | "abort"
    num_prompt_tokens: int = 0
    num_cached_tokens: int = 0
    num_output_tokens: int = 0
    queue_time_s: float | None = None  # set on the first output: arrival -> first scheduled


@dataclass
class SchedulerStats:
    num_running: int = 0
    num_waiting: int = 0
    kv_used_pages: int = 0
    kv_total_pages: int = 0
    prefix_hit_tokens_total: int = 0
    prefix_query_tokens_total: int = 0
    last_step_time: float = 0.0  # time.time() of the last completed step
    has_work: bool = False
    extra: dict = field(default_factory=dict)

    @property
    def kv_usage(self) -> float:
        return self.kv_used_pages / self.kv_total_pages if self.kv_total_pages else 0.0
