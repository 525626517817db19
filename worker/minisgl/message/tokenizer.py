"""Messages received by the tokenizer workers and the detokenizer."""

from __future__ import annotations

from dataclasses import dataclass, field

from minisgl.sampling_params import SamplingParams
from minisgl.scheduler.types import TokenOutput


@dataclass(frozen=True)
class TokenizeMsg:
    """A new request from the API process: text (chat template already applied) or token ids."""

    uid: int
    prompt: str | list[int]
    params: SamplingParams
    arrival_time: float
    add_special_tokens: bool = True


@dataclass(frozen=True)
class AbortMsg:
    """The client went away: drop the request (API -> tokenizer -> detokenizer -> scheduler)."""

    uid: int


@dataclass(frozen=True)
class PingMsg:
    """API process -> each tokenizer and the detokenizer, every second: answer with a PongMsg
    (a worker stuck on something fails /health instead of silently holding requests)."""

    seq: int


@dataclass(frozen=True)
class TokenizedMsg:
    """Tokenizer worker -> detokenizer: register the request, then forward it to the scheduler.

    Routing every request through the detokenizer means it always knows a uid before the
    scheduler's first output for it, and aborts stay ordered after their request.
    """

    uid: int
    input_ids: list[int]
    params: SamplingParams
    arrival_time: float


@dataclass(frozen=True)
class BatchTokenOutputMsg:
    """Scheduler rank 0 -> detokenizer: everything one `Scheduler.step()` produced."""

    outputs: list[TokenOutput] = field(default_factory=list)
