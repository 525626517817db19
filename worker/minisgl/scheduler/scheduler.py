"""The scheduler decides: which requests run, in which batch, and when they finish.

Continuous batching, prefill first: each step runs either one prefill batch (chunked
under --max-prefill-length) or one decode batch of every running request.

Overlap (on CUDA): step() launches step N+1 before it processes step N's results, so the
CPU's scheduling and batch building hide behind the GPU. Requests advance (kv_len,
inflight) when a step is launched and commit (kv_committed, output_ids) when it is
processed; decode inputs not yet on the host come from the engine's device state. A
request that finishes at step N has one speculative token in step N+1, dropped on
processing. Steps whose rows need the exact output history on the host (penalties,
min_tokens) or a preemption process the in-flight step first.

Structured output: in the server (async_grammar) a grammar that is not in the cache compiles
on a worker thread — the first one also builds xgrammar's tokenizer info, seconds at a large
vocabulary — while running requests keep stepping; the request waits aside (`compiling`) until
rank 0 sees its compile done and every rank admits it at the same point of the message stream
(GrammarReadyMsg: each rank replays rank 0's messages, so they must agree). A grammar that
cannot compile is reported through take_errors(). `LLM` compiles in add_request.
A constrained request's matcher advances as its tokens are processed;
the step that samples it fills its bitmask on the host after the forward is enqueued
(overlapping the GPU). Under overlap its previous token may still be in flight: that step's
mask callback first commits the step in flight (the GPU already runs the new forward), so a
constrained row takes every step, as the others do.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from minisgl.config import SchedulerConfig
from minisgl.engine.batch import Batch
from minisgl.engine.engine import Engine, ForwardOutput, PendingForward
from minisgl.engine.sampler import make_generator
from minisgl.errors import ContextTooLong, InvalidRequest
from minisgl.grammar import GrammarBackend
from minisgl.sampling_params import SamplingParams
from minisgl.scheduler.cache import CacheManager
from minisgl.scheduler.decode import DecodeManager, NeedSync
from minisgl.scheduler.prefill import PrefillManager
from minisgl.scheduler.request import Req
from minisgl.scheduler.types import SchedulerStats, TokenOutput

logger = logging.getLogger(__name__)


@dataclass
class _Compiling:
    """A request whose grammar compiles on the worker thread: admitted when it is ready."""

    input_ids: list[int]
    params: SamplingParams
    arrival_time: float
    future: Future


class Scheduler:
    def __init__(self, config: SchedulerConfig, async_grammar: bool = False) -> None:
        self.config = config
        self.async_grammar = async_grammar
        self.engine = Engine(config)
        self.max_model_len = self.engine.max_model_len
        self.vocab_size = self.engine.model_config.vocab_size
        self.eos_token_ids = list(self.engine.model_config.eos_token_ids)
        self.cache = CacheManager(self.engine.num_pages, config.page_size, config.cache_type,
                                  config.max_running_requests, self.engine.state.width)
        self.prefill = PrefillManager(self.cache, config.max_prefill_length,
                                      config.max_running_requests)
        self.decode = DecodeManager(self.cache, self.prefill, self.max_model_len)
        if config.device == "cuda":  # compile every kernel before the first request
            from minisgl.engine.warmup import warm_up

            warm_up(self.engine, config.max_prefill_length)
        self.overlap = config.use_overlap
        self.running: list[Req] = []  # admitted requests
        self._pending: list[TokenOutput] = []
        self._in_flight: tuple[Batch, PendingForward] | None = None
        self._live_uids: set[int] = set()
        self._hit_tokens = 0
        self._query_tokens = 0
        self._grammar: GrammarBackend | None = None  # built on the first constrained request
        self._grammar_lock = threading.Lock()  # the compile thread may build it
        self._compiling: dict[int, _Compiling] = {}  # uid -> waiting for its grammar, in order
        self._compile_pool: ThreadPoolExecutor | None = None
        self._errors: list[tuple[int, Exception]] = []
        self.last_step_time = time.time()

    def _grammar_backend(self) -> GrammarBackend:
        with self._grammar_lock:
            if self._grammar is None:
                from minisgl.tokenizer.tokenize import load_tokenizer

                path = self.config.tokenizer_path or self.config.model_path
                self._grammar = GrammarBackend(load_tokenizer(path), self.vocab_size,
                                               self.eos_token_ids)
            return self._grammar

    def _compile(self, grammar: tuple[str, str]):
        return self._grammar_backend().compile(grammar)

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
        compiled = None
        if params.grammar is not None:
            compiled = self._grammar.cached(params.grammar) if self._grammar is not None else None
            if compiled is None and self.async_grammar:
                if self._compile_pool is None:
                    self._compile_pool = ThreadPoolExecutor(1, thread_name_prefix="grammar")
                future = self._compile_pool.submit(self._compile, params.grammar)
                self._compiling[uid] = _Compiling(list(input_ids), params, now, future)
                self._live_uids.add(uid)
                return
            if compiled is None:
                compiled = self._compile(params.grammar)
        self._admit(uid, input_ids, params, now, compiled)

    def _admit(self, uid: int, input_ids: list[int], params: SamplingParams, now: float,
               compiled) -> None:
        first = None
        for i in range(params.n):
            p = params if params.seed is None else params.replace(seed=params.seed + i)
            gen = make_generator(p.seed, self.engine.device) if p.seed is not None else None
            req = Req(uid, i, list(input_ids), p, gen, now, parent=first)
            if compiled is not None:
                req.matcher = self._grammar.matcher(compiled)
            first = first or req
            self.prefill.add(req)
        self._live_uids.add(uid)

    # ---- grammars compiling aside (async_grammar) ----------------------------------------
    @property
    def compiling(self) -> bool:
        return bool(self._compiling)

    def poll_compiled(self) -> list[int]:
        """Rank 0: the requests whose grammar is ready (compiled or failed), oldest first."""
        return [uid for uid, c in self._compiling.items() if c.future.done()]

    def admit_compiled(self, uids: list[int]) -> None:
        """Every rank, at the same point of rank 0's messages: admit these requests (waiting
        for this rank's own compile to finish); a failed compile goes to take_errors()."""
        for uid in uids:
            pending = self._compiling.pop(uid, None)
            if pending is None:  # aborted meanwhile
                continue
            try:
                compiled = pending.future.result()
            except Exception as exc:  # noqa: BLE001 - InvalidRequest, or a bug reported as one
                self._live_uids.discard(uid)
                self._errors.append((uid, exc))
                continue
            self._admit(uid, pending.input_ids, pending.params, pending.arrival_time, compiled)

    def take_errors(self) -> list[tuple[int, Exception]]:
        """(uid, exception) of requests refused after add_request returned (their grammar)."""
        errors, self._errors = self._errors, []
        return errors

    def abort(self, uid: int, index: int | None = None) -> None:
        """Abort every choice of uid, or only choice `index` (n > 1 stop strings)."""
        pending = self._compiling.pop(uid, None)
        if pending is not None:  # not admitted yet: nothing allocated, each choice ends here
            self._live_uids.discard(uid)
            self._pending += [TokenOutput(uid, i, finished=True, finish_reason="abort",
                                          num_prompt_tokens=len(pending.input_ids))
                              for i in range(pending.params.n)]
            return
        reqs = self.prefill.remove(uid, index) + [
            r for r in self.running if r.uid == uid and not r.finished and index in (None, r.index)]
        for req in reqs:
            self._pending.append(self._finish(req, "abort"))
        self.running = [r for r in self.running if r.admitted]

    # ---- one step ----------------------------------------------------------------------
    @property
    def has_work(self) -> bool:
        return bool(self.running or self.prefill.waiting or self._pending or self._in_flight)

    def step(self) -> list[TokenOutput]:
        """Launch the next batch; return the outputs of the previous one (overlap) or of this one."""
        outputs, self._pending = self._pending, []
        if self._in_flight is not None and self._needs_history():
            outputs += self._finish_in_flight()
        try:
            batch = self._schedule(in_flight=self._in_flight is not None)
        except NeedSync:
            outputs += self._finish_in_flight()
            batch = self._schedule(in_flight=False)
        previous, self._in_flight = self._in_flight, None
        committed: list[bool] = []  # the previous step was committed inside the launch
        if batch is not None:
            mask = self._mask(batch, previous, outputs, committed)
            self._in_flight = (batch, self.engine.launch(batch, mask))
        if previous is not None and not committed:
            outputs += self._commit(*previous)
        if not self.overlap and self._in_flight is not None:
            outputs += self._finish_in_flight()
        self.last_step_time = time.time()
        return outputs

    def _finish_in_flight(self) -> list[TokenOutput]:
        previous, self._in_flight = self._in_flight, None
        return self._commit(*previous)

    def _commit(self, batch: Batch, pending: PendingForward) -> list[TokenOutput]:
        outputs = self._process(batch, pending.result())
        self.running = [r for r in self.running if r.admitted]  # drop finished requests
        return outputs

    def _needs_history(self) -> bool:
        """Penalties and min_tokens read every output token on the host: no step may be in flight."""
        return any(r.params.needs_penalties or len(r.output_ids) < r.params.min_tokens
                   for r in self.running)

    def _schedule(self, in_flight: bool) -> Batch | None:
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
            batch = Batch.build(
                phase="prefill", rows=plan.reqs,
                token_chunks=[r.tokens(r.kv_len, r.kv_len + n) for r, n in zip(plan.reqs, plan.chunks)],
                prefix_lens=[r.kv_len for r in plan.reqs],
                state_slots=[r.state_slot for r in plan.reqs], sample_rows=sample,
                table_updates=self.cache.table_updates(plan.reqs), device=self.engine.device,
                prompt_logprob_rows=lp_rows,
            )
        else:
            rows = self.decode.select(self.running, in_flight)
            self.running = [r for r in self.running if r.admitted]  # drop preempted requests
            if not rows:
                return None
            # A row whose last token is still in flight reads it from the device.
            batch = Batch.build(
                phase="decode", rows=rows,
                token_chunks=[[r.output_ids[-1] if not r.inflight else 0] for r in rows],
                from_gpu=[r.inflight > 0 for r in rows], prefix_lens=[r.kv_len for r in rows],
                state_slots=[r.state_slot for r in rows], sample_rows=list(range(len(rows))),
                table_updates=self.cache.table_updates(rows), device=self.engine.device,
            )
        for req, n in zip(batch.rows, batch.extend_lens):
            req.kv_len += n
        for r in batch.sample_rows:
            batch.rows[r].inflight += 1
        return batch

    def _mask(self, batch: Batch, previous: tuple[Batch, PendingForward] | None = None,
              outputs: list[TokenOutput] | None = None, committed: list[bool] | None = None):
        """The grammar bitmask callback of a batch with constrained sample rows, else None.

        Under overlap a constrained row's last token may come from the step still in flight
        (`previous`): the callback runs once the new step's forward is enqueued, so it first
        commits the previous step (its outputs go to `outputs`, and its grammars advance),
        then fills the mask while the GPU runs the forward. Rows that ended with that commit
        get no mask: their token is dropped. (The sampler reads output_ids for penalties and
        min_tokens before calling the mask: safe because _needs_history commits first.)"""
        rows = [batch.rows[r] for r in batch.sample_rows]
        if self._grammar is None or not any(r.matcher is not None for r in rows):
            return None
        waits = previous is not None and any(r.matcher is not None and r.inflight > 1 for r in rows)

        def fill():
            if waits:
                outputs.extend(self._commit(*previous))
                committed.append(True)
            return self._grammar.fill([None if r.finished else r.matcher for r in rows])
        return fill

    def _process(self, batch: Batch, result: ForwardOutput) -> list[TokenOutput]:
        outputs: list[TokenOutput] = []
        sampled = {row: k for k, row in enumerate(batch.sample_rows)}
        for b, req in enumerate(batch.rows):
            if req.finished:  # ended while this step was in flight: its token is dropped
                continue
            target = req.fill_target
            was_filled = req.kv_committed >= target
            req.kv_committed += batch.extend_lens[b]
            if b in result.prompt_logprobs:
                if req.prompt_logprobs is None:
                    req.prompt_logprobs = [None]
                req.prompt_logprobs += result.prompt_logprobs[b]
            if b in result.prompt_top_logprobs:
                if req.prompt_top_logprobs is None:
                    req.prompt_top_logprobs = [None]
                req.prompt_top_logprobs += result.prompt_top_logprobs[b]
            if not was_filled and req.kv_committed >= target:
                self.cache.cache_prompt(req)
            if b not in sampled:
                if req.committed_prefill and req.params.max_tokens == 0:
                    outputs.append(self._finish(req, "length"))
                continue
            k = sampled[b]
            req.inflight -= 1
            out = self._output(req, result.token_ids[k])
            if result.logprobs is not None:
                out.logprob = result.logprobs[k]
            if result.top_logprobs is not None and req.params.logprobs:
                out.top_logprobs = result.top_logprobs[k][: req.params.logprobs]
            reason = self._stop_reason(req)
            if req.matcher is not None:
                reason = self._advance_grammar(req) or reason
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
            out.prompt_top_logprobs = req.prompt_top_logprobs
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

    def _advance_grammar(self, req: Req) -> str | None:
        """Feed the new token to the matcher; "stop" once the grammar is complete."""
        token = req.output_ids[-1]
        if not req.matcher.accept_token(token):  # the mask allowed only accepted tokens
            logger.error("request %d: grammar rejected token %d; stopping it", req.uid, token)
            return "stop"
        return "stop" if req.matcher.is_terminated() else None

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

    def flush_cache(self) -> int | None:
        """Empty the prefix cache when idle: the cached tokens dropped, or None (work left)."""
        if self.has_work or self._compiling:
            return None
        return self.cache.flush()

    # ---- reporting ---------------------------------------------------------------------
    def stats(self) -> SchedulerStats:
        used, total = self.cache.stats()
        return SchedulerStats(
            num_running=len(self.running),
            num_waiting=len(self.prefill.waiting) + len(self._compiling),
            kv_used_pages=used, kv_total_pages=total, prefix_hit_tokens_total=self._hit_tokens,
            prefix_query_tokens_total=self._query_tokens, last_step_time=self.last_step_time,
            has_work=self.has_work,
            extra={"preemptions_total": self.decode.num_preemptions,
                   **(self._grammar.stats() if self._grammar is not None else {})},
        )

    def shutdown(self) -> None:
        self._in_flight = None
        if self._compile_pool is not None:
            self._compile_pool.shutdown(wait=False, cancel_futures=True)
        self.engine.shutdown()
