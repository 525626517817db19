"""The scheduler's sockets: rank 0 receives from the detokenizer and broadcasts to ranks > 0.

Every rank must call `add_request` / `abort` in the same order before the same `step()`,
so rank 0 sends each iteration's (possibly empty) message list to every other rank, and a
rank > 0 steps exactly once per list it receives. Only rank 0 sends outputs and stats.
"""

from __future__ import annotations

import logging

from minisgl.message.backend import BackendMsg, BatchBackendMsg
from minisgl.message.frontend import ErrorMsg, FlushedMsg, StatsMsg
from minisgl.message.tokenizer import BatchTokenOutputMsg
from minisgl.scheduler.types import SchedulerStats, TokenOutput
from minisgl.server.endpoints import Endpoints
from minisgl.utils.zmq import PullQueue, PushQueue

logger = logging.getLogger(__name__)


class SchedulerIO:
    def __init__(self, endpoints: Endpoints, tp_rank: int) -> None:
        self.is_driver = tp_rank == 0
        if self.is_driver:
            self._inbox: PullQueue[BatchBackendMsg] = PullQueue(endpoints.scheduler, bind=True)
            self._peers: list[PushQueue[BatchBackendMsg]] = [
                PushQueue(endpoints.scheduler_rank(r), bind=False)
                for r in range(1, endpoints.tp_size)
            ]
            self._detokenizer: PushQueue = PushQueue(endpoints.detokenizer, bind=False)
            self._frontend: PushQueue[StatsMsg] = PushQueue(endpoints.frontend, bind=False)
        else:
            self._inbox = PullQueue(endpoints.scheduler_rank(tp_rank), bind=True)

    def receive(self, wait: float | None) -> list[BackendMsg]:
        """Rank 0: whatever arrived, waiting up to `wait` s for the first message (None: forever)."""
        msgs: list[BackendMsg] = []
        for batch in self._inbox.drain(timeout=wait):
            msgs.extend(batch.msgs)
        return msgs

    def broadcast(self, msgs: list[BackendMsg]) -> None:
        """Rank 0: tell every other rank what to apply before this iteration's step."""
        batch = BatchBackendMsg(msgs)
        for peer in self._peers:
            peer.put(batch)

    def receive_broadcast(self) -> list[BackendMsg]:
        """Rank > 0: block until rank 0's next iteration."""
        batch = self._inbox.get()
        return batch.msgs if batch is not None else []

    def send_outputs(self, outputs: list[TokenOutput]) -> None:
        self._detokenizer.put(BatchTokenOutputMsg(outputs))

    def send_error(self, uid: int, exc: Exception) -> None:
        self._detokenizer.put(ErrorMsg.from_exception(uid, exc))

    def send_stats(self, stats: SchedulerStats) -> None:
        self._frontend.put(StatsMsg(stats))

    def send_flushed(self, seq: int, dropped_tokens: int | None) -> None:
        self._frontend.put(FlushedMsg(seq, dropped_tokens))

    def close(self) -> None:
        self._inbox.close()
        if self.is_driver:
            for q in (*self._peers, self._detokenizer, self._frontend):
                q.close()
