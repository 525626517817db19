"""Per-request sampling parameters (shared by the API, the scheduler and the sampler)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from minisgl.errors import InvalidRequest
from minisgl.grammar import check_grammar

MAX_N = 16
MAX_LOGIT_BIAS = 300  # OpenAI's limit on logit_bias entries
MAX_STOP_TOKEN_IDS = 256
GREEDY_TEMPERATURE = 1e-5
MAX_TOP_LOGPROBS = 20


@dataclass(frozen=True)
class SamplingParams:
    """What to generate and when to stop.

    temperature 0 (or top_k 1) means greedy. top_k <= 0 disables top-k.
    logprobs: None = no logprobs; 0 = logprob of the chosen token; k > 0 = also the top-k.
    grammar: (kind, source) constraining the output (see minisgl.grammar), None = free text.
    logit_bias: (token id, bias in [-100, 100]) pairs added to the logits before sampling.
    """

    max_tokens: int = 16
    min_tokens: int = 0
    temperature: float = 1.0
    top_k: int = -1
    top_p: float = 1.0
    min_p: float = 0.0
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    n: int = 1
    logprobs: int | None = None
    prompt_logprobs: bool = False
    skip_special_tokens: bool = True
    include_stop_str_in_output: bool = False
    grammar: tuple[str, str] | None = None
    logit_bias: tuple[tuple[int, float], ...] = ()
    extra: dict = field(default_factory=dict, compare=False, hash=False)

    @property
    def greedy(self) -> bool:
        # Below GREEDY_TEMPERATURE, logits / temperature overflows float32 to inf (NaN after
        # softmax): such a temperature means greedy, as vLLM treats it.
        return self.temperature < GREEDY_TEMPERATURE or self.top_k == 1

    @property
    def needs_penalties(self) -> bool:
        return (
            self.presence_penalty != 0.0
            or self.frequency_penalty != 0.0
            or self.repetition_penalty != 1.0
        )

    def validate(self) -> "SamplingParams":
        """Raise InvalidRequest naming the offending field; return self for chaining."""
        checks = [
            (self.max_tokens >= 0, "max_tokens", "max_tokens must be >= 0"),
            (self.min_tokens >= 0, "min_tokens", "min_tokens must be >= 0"),
            (self.min_tokens <= self.max_tokens or self.max_tokens == 0, "min_tokens",
             "min_tokens must be <= max_tokens"),
            (self.temperature >= 0.0, "temperature", "temperature must be >= 0"),
            (self.temperature <= 100.0, "temperature", "temperature must be <= 100"),
            (0.0 < self.top_p <= 1.0, "top_p", "top_p must be in (0, 1]"),
            (0.0 <= self.min_p <= 1.0, "min_p", "min_p must be in [0, 1]"),
            (self.top_k >= -1, "top_k", "top_k must be -1 (disabled) or >= 0"),
            (-2.0 <= self.presence_penalty <= 2.0, "presence_penalty",
             "presence_penalty must be in [-2, 2]"),
            (-2.0 <= self.frequency_penalty <= 2.0, "frequency_penalty",
             "frequency_penalty must be in [-2, 2]"),
            (0.0 < self.repetition_penalty <= 10.0, "repetition_penalty",
             "repetition_penalty must be in (0, 10]"),
            (1 <= self.n <= MAX_N, "n", f"n must be in [1, {MAX_N}]"),
            (self.logprobs is None or 0 <= self.logprobs <= MAX_TOP_LOGPROBS, "logprobs",
             f"logprobs must be in [0, {MAX_TOP_LOGPROBS}]"),
            (all(isinstance(s, str) and s for s in self.stop), "stop",
             "stop must be non-empty strings"),
            (len(self.stop) <= 16, "stop", "at most 16 stop strings"),
            (all(isinstance(t, int) and t >= 0 for t in self.stop_token_ids), "stop_token_ids",
             "stop_token_ids must be non-negative integers"),
            (len(self.stop_token_ids) <= MAX_STOP_TOKEN_IDS, "stop_token_ids",
             f"at most {MAX_STOP_TOKEN_IDS} stop_token_ids"),
        ]
        for ok, param, message in checks:
            if not ok:
                raise InvalidRequest(message, param=param)
        if len(self.logit_bias) > MAX_LOGIT_BIAS:
            raise InvalidRequest(f"at most {MAX_LOGIT_BIAS} logit_bias entries", param="logit_bias")
        for token, bias in self.logit_bias:
            if not (isinstance(token, int) and token >= 0):
                raise InvalidRequest(f"logit_bias token {token!r} is not a token id", "logit_bias")
            if not -100.0 <= bias <= 100.0:
                raise InvalidRequest(f"logit_bias for token {token} must be in [-100, 100]",
                                     param="logit_bias")
        check_grammar(self.grammar)
        return self

    def replace(self, **changes) -> "SamplingParams":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["stop"] = list(self.stop)
        d["stop_token_ids"] = list(self.stop_token_ids)
        d["grammar"] = list(self.grammar) if self.grammar is not None else None
        d["logit_bias"] = [list(pair) for pair in self.logit_bias]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "SamplingParams":
        d = dict(d)
        d["stop"] = tuple(d.get("stop") or ())
        d["stop_token_ids"] = tuple(d.get("stop_token_ids") or ())
        d["grammar"] = tuple(d["grammar"]) if d.get("grammar") else None
        d["logit_bias"] = tuple((int(t), float(b)) for t, b in d.get("logit_bias") or ())
        return cls(**d)
