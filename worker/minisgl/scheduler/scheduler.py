"""The scheduler decides: which requests run, in which batch, and when they finish.

Continuous batching, prefill first: each step runs either one prefill batch (chunked
under --max-prefill-length) or one decode batch of every running request.
"""

from __future__ import annotations

import logging
import time

from minisgl.config import SchedulerConfig
from minisgl.engine.batch import Batch
from minisgl.engine.engine import Engine, ForwardOutput
from minisgl.engine.sampler import make_generator
from minisgl.errors import ContextTooLong, InvalidRequest
from minisgl.sampling_params import SamplingParams
from minisgl.scheduler.cache import CacheManager
from minisgl.scheduler.prefill import PrefillManager
from minisgl.scheduler.request import Req
from minisgl.scheduler.types import SchedulerStats, TokenOutput

logger = logging.getLogger(__name__)


class Scheduler:
    def __init__(self, config: SchedulerConfig) -> None:
        self.config = config
        self.engine = Engine(config)
        self.max_model_len = self.engine.max_model_len
        self.vocab_size = self.engine.model_config.vocab_size
        self.eos_token_ids = list(self.engine.model_config.eos_token_ids)
        self.cache = CacheManager(self.engine.num_pages, config.page_size, config.cache_type)
        self.prefill = PrefillManager(self.cache, config.max_prefill_length,
                                      config.max_running_requests)
        self.running: list[Req] = []
        self._pending: list[TokenOutput] = []
        self._live_uids: set[int] = set()
        self._hit_tokens = 0
        self._query_tokens = 0
        self._preemptions = 0
        self.last_step_time = time.time()

    # ---- requests in -------------------------------------------------------------------
    def add_request(self, uid: int, input_ids: list[int], params: SamplingParams,
                    arrival_time: float | None = None) -> None:
        params.validate()
        if uid in self._live_uids:
            raise InvalidRequest(f"duplicate request id {uid}")
        if not input_ids:
            raise InvalidRequest("prompt is empty", param="prompt")
        bad = [t for t in input_ids if not 0 <= t < self.vocab_size]
        if bad:
            raise InvalidRequest(f"token id {bad[0]} out of range [0, {self.vocab_size})", "prompt")
        total = len(input_ids) + params.max_tokens
        if total > self.max_model_len:
            raise ContextTooLong(
                f"prompt ({len(input_ids)} tokens) + max_tokens ({params.max_tokens}) = {total} "
                f"exceeds the model's context length of {self.max_model_len} tokens"
            )
        self.cache.check_fits(total)
        now = arrival_time if arrival_time is not None else time.time()
        first = None
        for i in range(params.n):
            p = params if params.seed is None else params.replace(seed=params.seed + i)
            gen = make_generator(p.seed, self.engine.device) if p.seed is not None else None
            req = Req(uid, i, list(input_ids), p, gen, now, parent=first)
            first = first or req
            self.prefill.add(req)
        self._live_uids.add(uid)

    def abort(self, uid: int, index: int | None = None) -> None:
        """Abort every choice of uid, or only choice `index` (n > 1 stop strings)."""
        reqs = self.prefill.remove(uid, index) + [
            r for r in self.running if r.uid == uid and index in (None, r.index)]
        for req in reqs:
            self._pending.append(self._finish(req, "abort"))
        self.running = [r for r in self.running if not r.finished]

    # ---- one step ----------------------------------------------------------------------
    @property
    def has_work(self) -> bool:
        return bool(self.running or self.prefill.waiting or self._pending)

    def step(self) -> list[TokenOutput]:
        outputs, self._pending = self._pending, []
        batch = self._schedule()
        if batch is None:
            return outputs
        result = self.engine.forward_batch(batch)
        outputs += self._process(batch, result)
        self.running = [r for r in self.running if not r.finished]
        self.last_step_time = time.time()
        return outputs

    def _schedule(self) -> Batch | None:
        plan = self.prefill.schedule(self.running)
        if plan is not None:
            now = time.time()
            for req in plan.reqs:
                if req.first_scheduled_time is None:
                    req.first_scheduled_time = now
                    if not req.params.prompt_logprobs:
                        self._hit_tokens += req.num_cached
                        self._query_tokens += req.prompt_len
            # Rows recomputing after a preemption already have their next token: no sampling.
            sample = [i for i, (r, n) in enumerate(zip(plan.reqs, plan.chunks))
                      if not r.output_ids and r.kv_len + n >= r.prompt_len and r.params.max_tokens > 0]
            lp_rows = [i for i, r in enumerate(plan.reqs)
                       if r.params.prompt_logprobs and not r.output_ids]
            return Batch.build(
                "prefill", plan.reqs,
                [r.tokens(r.kv_len, r.kv_len + n) for r, n in zip(plan.reqs, plan.chunks)],
                [r.kv_len for r in plan.reqs], [r.slots for r in plan.reqs], sample,
                self.engine.device, lp_rows,
            )
        decode: list[Req] = []
        for req in [r for r in self.running if r.prefill_done and not r.finished]:
            if req.admitted and self._make_room(req, decode):
                decode.append(req)
        if not decode:
            return None
        return Batch.build(
            "decode", decode, [[r.output_ids[-1]] for r in decode], [r.kv_len for r in decode],
            [r.slots for r in decode], list(range(len(decode))), self.engine.device,
        )

    def _make_room(self, req: Req, keep: list[Req]) -> bool:
        """Give req a slot for its next token, preempting the most recently admitted other
        requests (never those in `keep`) while the pool is short. False: req itself was."""
        while not self.cache.ensure_slots(req, req.kv_len + 1):
            victims = [r for r in self.running if r.admitted and r is not req and r not in keep]
            victim = victims[-1] if victims else req
            self._preempt(victim)
            if victim is req:
                return False
        return True

    def _preempt(self, req: Req) -> None:
        """Free req's pages (its KV stays in the prefix cache) and queue it for recompute."""
        self.cache.release(req)
        req.num_preemptions += 1
        self._preemptions += 1
        self.running = [r for r in self.running if r is not req]
        self.prefill.requeue(req)
        logger.info("preempted request %d (%d tokens) under KV pressure", req.uid,
                    req.prompt_len + len(req.output_ids))

    def _process(self, batch: Batch, result: ForwardOutput) -> list[TokenOutput]:
        outputs: list[TokenOutput] = []
        sampled = {row: k for k, row in enumerate(batch.sample_rows)}
        for b, req in enumerate(batch.rows):
            was_done = req.prefill_done
            req.kv_len += batch.extend_lens[b]
            if b in result.prompt_logprobs:
                if req.prompt_logprobs is None:
                    req.prompt_logprobs = [None]
                req.prompt_logprobs += result.prompt_logprobs[b]
            if not was_done and req.prefill_done:
                self.cache.cache_prompt(req)
            if b not in sampled:
                if req.prefill_done and req.params.max_tokens == 0:
                    outputs.append(self._finish(req, "length"))
                continue
            k = sampled[b]
            out = self._output(req, result.token_ids[k])
            if result.logprobs is not None:
                out.logprob = result.logprobs[k]
            if result.top_logprobs is not None and req.params.logprobs:
                out.top_logprobs = result.top_logprobs[k][: req.params.logprobs]
            reason = self._stop_reason(req)
            if reason:
                self._release(req, reason)
                out.finished, out.finish_reason = True, reason
            outputs.append(out)
        return outputs

    def _output(self, req: Req, token: int | None) -> TokenOutput:
        if token is not None:
            req.output_ids.append(token)
        out = TokenOutput(uid=req.uid, index=req.index, token_id=token,
                          num_prompt_tokens=req.prompt_len, num_cached_tokens=req.num_cached,
                          num_output_tokens=len(req.output_ids))
        if not req.sent_first:
            req.sent_first = True
            out.prompt_logprobs = req.prompt_logprobs
            if req.first_scheduled_time is not None:
                out.queue_time_s = max(0.0, req.first_scheduled_time - req.arrival_time)
        return out

    def _stop_reason(self, req: Req) -> str | None:
        token = req.output_ids[-1]
        p = req.params
        if len(req.output_ids) >= p.min_tokens:
            if token in p.stop_token_ids or (not p.ignore_eos and token in self.eos_token_ids):
                return "stop"
        if len(req.output_ids) >= p.max_tokens or req.prompt_len + len(req.output_ids) >= self.max_model_len:
            return "length"
        return None

    def _finish(self, req: Req, reason: str) -> TokenOutput:
        """End req without a new token; the returned output tells the client."""
        out = self._output(req, None)
        out.finished, out.finish_reason = True, reason
        self._release(req, reason)
        return out

    def _release(self, req: Req, reason: str) -> None:
        req.finished, req.finish_reason = True, reason
        self.cache.release(req)
        if not any(r.uid == req.uid and not r.finished
                   for r in list(self.prefill.waiting) + self.running):
            self._live_uids.discard(req.uid)

    # ---- reporting ---------------------------------------------------------------------
    def stats(self) -> SchedulerStats:
        used, total = self.cache.stats()
        return SchedulerStats(
            num_running=len(self.running), num_waiting=len(self.prefill.waiting),
            kv_used_pages=used, kv_total_pages=total, prefix_hit_tokens_total=self._hit_tokens,
            prefix_query_tokens_total=self._query_tokens, last_step_time=self.last_step_time,
            has_work=self.has_work, extra={"preemptions_total": self._preemptions},
        )

    def shutdown(self) -> None:
        self.engine.shutdown()
