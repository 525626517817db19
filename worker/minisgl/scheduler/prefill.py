"""Prefill selection: FIFO admission under a token budget, chunking long prompts."""

from __future__ import annotations

from collections import deque
from typing import NamedTuple

from minisgl.scheduler.cache import CacheManager
from minisgl.scheduler.request import Req


class PrefillPlan(NamedTuple):
    reqs: list[Req]
    chunks: list[int]  # new tokens per request this step


class PrefillManager:
    def __init__(self, cache: CacheManager, max_prefill_tokens: int, max_running: int) -> None:
        self.cache = cache
        self.max_prefill_tokens = max_prefill_tokens
        self.max_running = max_running
        self.waiting: deque[Req] = deque()

    def add(self, req: Req) -> None:
        self.waiting.append(req)

    def requeue(self, req: Req) -> None:
        """A preempted request goes back to the head of the queue."""
        self.waiting.appendleft(req)

    def remove(self, uid: int, index: int | None = None) -> list[Req]:
        """Take uid's waiting choices (only choice `index` when given) out of the queue."""
        gone = [r for r in self.waiting if r.uid == uid and index in (None, r.index)]
        self.waiting = deque(r for r in self.waiting if r not in gone)
        return gone

    def schedule(self, running: list[Req]) -> PrefillPlan | None:
        """Continue partially prefilled requests first, then admit waiting ones in order."""
        budget = self.max_prefill_tokens
        reqs: list[Req] = []
        chunks: list[int] = []

        def take(req: Req) -> None:
            nonlocal budget
            n = min(req.fill_target - req.kv_len, budget)
            if not self.cache.ensure_slots(req, req.kv_len + n):
                raise RuntimeError(f"request {req.uid}: prefill outside its reservation")  # bug
            reqs.append(req)
            chunks.append(n)
            budget -= n

        for req in running:
            if budget <= 0:
                break
            if not req.prefill_done:
                take(req)
        num_running = len(running)
        skipped: list[Req] = []
        while self.waiting and budget > 0 and num_running < self.max_running:
            req = self.waiting[0]
            if req.parent is not None and req.parent.admitted and not req.parent.committed_prefill:
                skipped.append(self.waiting.popleft())  # sibling waits for the shared prompt
                continue
            if not self.cache.try_admit(req):
                break  # FIFO: no overtaking, so long prompts cannot starve
            self.waiting.popleft()
            running.append(req)
            num_running += 1
            if not req.prefill_done:  # a preempted request may be fully cached already
                take(req)
        self.waiting.extendleft(reversed(skipped))
        return PrefillPlan(reqs, chunks) if reqs else None
