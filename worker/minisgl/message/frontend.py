"""Messages received by the API server process (FrontendManager)."""

from __future__ import annotations

from dataclasses import dataclass, field

from minisgl import errors
from minisgl.scheduler.types import SchedulerStats


@dataclass(frozen=True)
class ReplyChunk:
    """New output of one choice of one request, already detokenized.

    `prompt_token_ids`, `prompt_logprobs` and `queue_time_s` are set on the first chunk
    of each choice only. `text` never contains a stop string (unless the request set
    include_stop_str_in_output).
    """

    uid: int
    index: int
    text: str
    token_ids: list[int]
    logprobs: list[float] | None = None
    top_logprobs: list[list[tuple[int, float]]] | None = None
    prompt_token_ids: list[int] | None = None
    prompt_logprobs: list[float | None] | None = None
    prompt_top_logprobs: list[list[tuple[int, float]] | None] | None = None
    finished: bool = False
    finish_reason: str | None = None  # "stop" | "length" | "abort"
    num_prompt_tokens: int = 0
    num_cached_tokens: int = 0
    num_output_tokens: int = 0
    queue_time_s: float | None = None


_REPLY_FIELDS = frozenset(ReplyChunk.__dataclass_fields__)


def make_chunk(**fields) -> ReplyChunk:
    """`ReplyChunk(**fields)` with every field given, without the frozen `__init__`'s
    per-field `object.__setattr__` (one chunk per request per step: it adds up)."""
    if fields.keys() != _REPLY_FIELDS:
        return ReplyChunk(**fields)  # a field missing or unknown: let __init__ say which
    chunk = object.__new__(ReplyChunk)
    chunk.__dict__.update(fields)
    return chunk


@dataclass(frozen=True)
class BatchReplyMsg:
    chunks: list[ReplyChunk] = field(default_factory=list)


# The error types a worker may report for a request, by name (no reflection over modules).
ERROR_TYPES: dict[str, type[errors.MiniSGLError]] = {
    "InvalidRequest": errors.InvalidRequest,
    "ContextTooLong": errors.ContextTooLong,
    "ServiceUnavailable": errors.ServiceUnavailable,
    "MiniSGLError": errors.MiniSGLError,
}


@dataclass(frozen=True)
class ErrorMsg:
    """A request failed before producing output (tokenizer validation or Scheduler.add_request)."""

    uid: int
    kind: str  # a key of ERROR_TYPES
    message: str
    param: str | None = None

    @classmethod
    def from_exception(cls, uid: int, exc: Exception) -> "ErrorMsg":
        kind = type(exc).__name__ if type(exc).__name__ in ERROR_TYPES else "MiniSGLError"
        return cls(uid=uid, kind=kind, message=str(exc), param=getattr(exc, "param", None))

    def to_exception(self) -> errors.MiniSGLError:
        cls = ERROR_TYPES.get(self.kind, errors.MiniSGLError)
        if issubclass(cls, errors.InvalidRequest):
            return cls(self.message, param=self.param)
        return cls(self.message)


@dataclass(frozen=True)
class PongMsg:
    """A tokenizer or the detokenizer -> API process: the answer to PingMsg `seq`."""

    name: str
    seq: int


@dataclass(frozen=True)
class StatsMsg:
    """Scheduler rank 0 -> API process, at least once a second."""

    stats: SchedulerStats


@dataclass(frozen=True)
class FlushedMsg:
    """Scheduler rank 0 -> API process: the answer to FlushCacheMsg `seq` — the cached tokens
    dropped, or None when requests were running (nothing was dropped)."""

    seq: int
    dropped_tokens: int | None
