"""Decode selection: which running requests take a decode step, and preemption under KV pressure."""

from __future__ import annotations

import logging

from minisgl.scheduler.cache import CacheManager
from minisgl.scheduler.prefill import PrefillManager
from minisgl.scheduler.request import Req

logger = logging.getLogger(__name__)


class NeedSync(Exception):
    """Selection would preempt while a step is in flight: process that step first."""


class DecodeManager:
    def __init__(self, cache: CacheManager, prefill: PrefillManager, max_model_len: int) -> None:
        self.cache = cache
        self.prefill = prefill
        self.max_model_len = max_model_len
        self.num_preemptions = 0

    def can_decode(self, req: Req) -> bool:
        """Admitted, prompt launched, and not certain to stop on length with the tokens
        already launched (so overlap never launches a step it knows will be dropped).
        A constrained request's mask needs its last token: the scheduler commits the step in
        flight before it fills the mask (Scheduler._mask)."""
        launched = req.num_tokens_launched
        return (req.admitted and not req.finished and req.prefill_done
                and launched < req.params.max_tokens
                and req.prompt_len + launched < self.max_model_len)

    def select(self, running: list[Req], in_flight: bool) -> list[Req]:
        """Rows of the next decode step, each with a KV slot for its next position.

        Preempts the most recently admitted other requests while the pool is short; with a
        step in flight it raises NeedSync instead (a victim's launched token must be known)."""
        decode: list[Req] = []
        for req in running:
            if not self.can_decode(req):
                continue
            if self.cache.ensure_slots(req, req.kv_len + 1):
                decode.append(req)
            elif in_flight:
                raise NeedSync
            elif self._make_room(req, running, decode):
                decode.append(req)
        return decode

    def _make_room(self, req: Req, running: list[Req], keep: list[Req]) -> bool:
        """Preempt until req has a slot for its next token; False: req itself was preempted."""
        while not self.cache.ensure_slots(req, req.kv_len + 1):
            victims = [r for r in running if r.admitted and not r.finished and r is not req
                       and r not in keep]
            victim = victims[-1] if victims else req
            self._preempt(victim)
            if victim is req:
                return False
        return True

    def _preempt(self, req: Req) -> None:
        """Free req's pages (its KV stays in the prefix cache) and queue it for recompute."""
        self.cache.release(req)
        req.num_preemptions += 1
        self.num_preemptions += 1
        self.prefill.requeue(req)
        logger.info("preempted request %d (%d tokens) under KV pressure", req.uid,
                    req.prompt_len + len(req.output_ids))
