"""Messages received by the scheduler (rank 0 from the detokenizer; ranks > 0 from rank 0)."""

from __future__ import annotations

from dataclasses import dataclass, field

from minisgl.sampling_params import SamplingParams


@dataclass(frozen=True)
class UserMsg:
    """A tokenized, validated request ready for `Scheduler.add_request`."""

    uid: int
    input_ids: list[int]
    params: SamplingParams
    arrival_time: float | None = None


@dataclass(frozen=True)
class AbortBackendMsg:
    """Free what the scheduler holds for `uid` (client gone), or for one choice `index` of it
    (that choice hit a stop string while its siblings go on)."""

    uid: int
    index: int | None = None


@dataclass(frozen=True)
class GrammarReadyMsg:
    """Rank 0's word that these requests' grammars are compiled (or failed): every rank admits
    them here, so all ranks schedule the same batches (scheduler.admit_compiled)."""

    uids: list[int]


@dataclass(frozen=True)
class FlushCacheMsg:
    """API process -> detokenizer -> scheduler (every rank, through rank 0's broadcast): empty
    the prefix cache if no request is running; rank 0 answers with FlushedMsg `seq`."""

    seq: int


BackendMsg = UserMsg | AbortBackendMsg | GrammarReadyMsg | FlushCacheMsg


@dataclass(frozen=True)
class BatchBackendMsg:
    """What rank 0 applied in one iteration (maybe nothing), broadcast to every other rank."""

    msgs: list[BackendMsg] = field(default_factory=list)
