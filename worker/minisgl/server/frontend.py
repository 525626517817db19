"""FrontendManager: the API process's view of the server's other processes.

It owns the HF tokenizer (chat templates), sends each request to a tokenizer worker,
routes every ReplyChunk coming back to the request's asyncio queue, and keeps the latest
SchedulerStats for /metrics and /health.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import time
from typing import Any, AsyncIterator

from minisgl.env import ENV
from minisgl.errors import InvalidRequest, ServiceUnavailable
from minisgl.message.backend import FlushCacheMsg
from minisgl.message.frontend import (BatchReplyMsg, ErrorMsg, FlushedMsg, PongMsg, ReplyChunk,
                                      StatsMsg, make_chunk)
from minisgl.message.tokenizer import AbortMsg, PingMsg, TokenizeMsg
from minisgl.sampling_params import SamplingParams
from minisgl.scheduler.types import SchedulerStats
from minisgl.server.endpoints import Endpoints
from minisgl.utils.zmq import AsyncPullQueue, PushQueue

logger = logging.getLogger(__name__)

PING_INTERVAL_S = 1.0  # how often the tokenizers and the detokenizer are asked to answer
FLUSH_TIMEOUT_S = 30.0  # the scheduler answers a flush at its next iteration


class _Failed:
    """Put on a request's queue when the server can no longer answer it."""

    def __init__(self, reason: str) -> None:
        self.reason = reason


def merge_chunks(chunks: list[ReplyChunk]) -> ReplyChunk:
    """Consecutive chunks of one choice as one (the last one's counters and finish)."""
    if len(chunks) == 1:
        return chunks[0]

    def cat(name: str) -> list | None:
        parts = [getattr(c, name) for c in chunks]
        if all(p is None for p in parts):
            return None
        return [x for p in parts if p for x in p]

    def first(name: str):
        return next((v for c in chunks if (v := getattr(c, name)) is not None), None)

    return make_chunk(**{
        **chunks[-1].__dict__, "text": "".join(c.text for c in chunks),
        "token_ids": [t for c in chunks for t in c.token_ids],
        "logprobs": cat("logprobs"), "top_logprobs": cat("top_logprobs"),
        "prompt_token_ids": first("prompt_token_ids"), "prompt_logprobs": first("prompt_logprobs"),
        "prompt_top_logprobs": first("prompt_top_logprobs"),
        "queue_time_s": first("queue_time_s")})


class _Mailbox:
    """One request's inbox: what `asyncio.Queue` does here at a fraction of its cost per item
    (the receive loop puts one chunk per request per scheduler step), and the consumer takes
    everything queued at once."""

    __slots__ = ("items", "_waiter")

    def __init__(self) -> None:
        self.items: collections.deque = collections.deque()
        self._waiter: asyncio.Future | None = None

    def put(self, item: Any) -> None:
        self.items.append(item)
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    async def wait(self) -> None:
        """Until at least one item is queued."""
        while not self.items:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None


class FrontendManager:
    def __init__(
        self,
        endpoints: Endpoints,
        model_name: str,
        max_model_len: int,
        tokenizer: Any,
        stuck_timeout_s: float | None = None,  # None: MINISGL_HEALTH_STALL_TIMEOUT_S (60 s)
    ) -> None:
        self.endpoints = endpoints
        self.model_name = model_name
        self.max_model_len = max_model_len
        self.tokenizer = tokenizer
        self.stuck_timeout_s = ENV.health_stall_timeout_s if stuck_timeout_s is None else stuck_timeout_s
        self.draining = False
        self.startup_seconds: float | None = None  # process start -> serving (set by launch)
        self.failure: str | None = None
        self._started = False
        self._uids = itertools.count()
        self._queues: dict[int, _Mailbox] = {}
        self._stats = SchedulerStats()
        self._stats_at = time.monotonic()
        self._inbox: AsyncPullQueue | None = None
        self._outboxes: dict[str, PushQueue] = {}
        self._receiver: asyncio.Task | None = None
        self._pinger: asyncio.Task | None = None
        self._pong_at: dict[str, float] = {}  # worker name -> when it last answered a ping
        self._flushes: dict[int, asyncio.Future] = {}  # FlushCacheMsg seq -> its answer
        self._flush_seq = itertools.count()

    # --- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        """Bind the reply socket and start routing replies (call inside the serving loop)."""
        if self._started:
            return
        self._inbox = AsyncPullQueue(self.endpoints.frontend, bind=True)
        self._stats_at = time.monotonic()
        loop = asyncio.get_running_loop()
        self._receiver = loop.create_task(self._receive_loop(self._inbox))
        self._pong_at = dict.fromkeys(self._workers(), time.monotonic())
        self._pinger = loop.create_task(self._ping_loop())
        self._started = True

    async def stop(self) -> None:
        if not self._started:
            return
        self._started = False
        self._fail_all("the server is shutting down")
        tasks = [t for t in (self._receiver, self._pinger) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for q in (self._inbox, *self._outboxes.values()):
            if q is not None:
                q.close()
        self._outboxes.clear()

    def mark_failed(self, reason: str) -> None:
        """A child process died: fail health checks and every live request."""
        if self.failure is None:
            self.failure = reason
            logger.error("server failed: %s", reason)
        self._fail_all(reason)

    def cut_off(self, reason: str) -> None:
        """Stop admitting requests and end every live one with ServiceUnavailable."""
        self.draining = True
        self._fail_all(reason)

    @property
    def ready(self) -> bool:
        return self._started and not self.draining and self.failure is None

    @property
    def in_flight(self) -> int:
        return len(self._queues)

    # --- requests ----------------------------------------------------------------------------
    async def generate(
        self, prompt: str | list[int], params: SamplingParams, *, add_special_tokens: bool = True
    ) -> AsyncIterator[ReplyChunk]:
        """Stream one request's chunks until all `params.n` choices finish.

        Errors (InvalidRequest, ContextTooLong, ServiceUnavailable) are raised before the
        first chunk. Closing the iterator early aborts the request end to end.
        `add_special_tokens=False` for text that already went through a chat template.
        """
        if not self._started or self.draining or self.failure:
            raise ServiceUnavailable(self.failure or "the server is not accepting requests")
        uid = next(self._uids)
        box = self._queues[uid] = _Mailbox()
        outbox = self._outbox(self.endpoints.tokenizer_for(uid))
        try:
            outbox.put(TokenizeMsg(uid, prompt, params, time.time(), add_special_tokens))
        except (UnicodeEncodeError, TypeError, ValueError) as exc:  # e.g. a lone surrogate "\ud800"
            self._queues.pop(uid, None)
            raise InvalidRequest(f"the request cannot be encoded: {exc}", param="prompt") from exc
        remaining = params.n
        items = box.items
        try:
            while remaining:
                if not items:
                    await box.wait()
                item = items.popleft()
                if isinstance(item, ErrorMsg):
                    remaining = 0  # never registered downstream: nothing to abort
                    raise item.to_exception()
                if isinstance(item, _Failed):
                    remaining = 0
                    raise ServiceUnavailable(item.reason)
                # A consumer that fell behind (many streams, one event loop) gets the queued
                # tokens of a choice as one chunk: one SSE event instead of one per token.
                if items and not item.finished:
                    run = [item]
                    while items and not run[-1].finished:
                        nxt = items[0]
                        if type(nxt) is not ReplyChunk or nxt.index != item.index:
                            break
                        run.append(items.popleft())
                    item = merge_chunks(run)
                if item.finished:
                    remaining -= 1
                yield item
        finally:
            self._queues.pop(uid, None)
            if remaining and self._started:
                logger.info("request %d closed early: aborting", uid)
                outbox.put(AbortMsg(uid))

    def stats(self) -> SchedulerStats:
        return self._stats

    def health(self) -> tuple[bool, str]:
        if self.failure is not None:
            return False, self.failure
        if not self._started:
            return False, "not started"
        now = time.monotonic()
        silent = now - self._stats_at
        if silent > self.stuck_timeout_s:
            return False, f"no word from the scheduler for {silent:.0f}s"
        for name, at in self._pong_at.items():
            if now - at > self.stuck_timeout_s:
                return False, f"{name} has not answered a ping for {now - at:.0f}s"
        stats = self._stats
        stalled = time.time() - stats.last_step_time
        if stats.has_work and stats.last_step_time > 0 and stalled > self.stuck_timeout_s:
            return False, f"the scheduler has work but made no step for {stalled:.0f}s"
        return True, "ok"

    async def flush_cache(self, timeout: float = FLUSH_TIMEOUT_S) -> int | None:
        """Ask the scheduler to empty its prefix cache: the cached tokens dropped, or None
        when requests were running. Raises TimeoutError when no answer comes in time."""
        seq = next(self._flush_seq)
        answer = self._flushes[seq] = asyncio.get_running_loop().create_future()
        try:
            # through the detokenizer, the scheduler's one sender: after every request sent
            self._outbox(self.endpoints.detokenizer).put(FlushCacheMsg(seq))
            return await asyncio.wait_for(answer, timeout)
        finally:
            self._flushes.pop(seq, None)

    # --- internals ---------------------------------------------------------------------------
    def _workers(self) -> dict[str, str]:
        """name -> endpoint of every process that tokenizes or detokenizes."""
        workers = {f"tokenizer{i}": self.endpoints.tokenizer(i)
                   for i in range(self.endpoints.num_tokenizer)}
        workers["detokenizer"] = self.endpoints.detokenizer
        return workers

    async def _ping_loop(self) -> None:
        workers = self._workers()
        for seq in itertools.count():
            for endpoint in workers.values():
                self._outbox(endpoint).put(PingMsg(seq))
            await asyncio.sleep(PING_INTERVAL_S)

    def _outbox(self, endpoint: str) -> PushQueue:
        outbox = self._outboxes.get(endpoint)
        if outbox is None:
            outbox = self._outboxes[endpoint] = PushQueue(endpoint, bind=False)
        return outbox

    def _fail_all(self, reason: str) -> None:
        for box in self._queues.values():
            box.put(_Failed(reason))

    async def _receive_loop(self, inbox: AsyncPullQueue) -> None:
        while True:
            try:
                msg = await inbox.get()
            except asyncio.CancelledError:
                raise
            except Exception:  # a corrupt message must not stop every other request
                logger.exception("dropping an undecodable message")
                continue
            if isinstance(msg, BatchReplyMsg):
                boxes = self._queues
                for chunk in msg.chunks:
                    box = boxes.get(chunk.uid)
                    if box is not None:
                        box.put(chunk)
            elif isinstance(msg, ErrorMsg):
                box = self._queues.get(msg.uid)
                if box is not None:
                    box.put(msg)
            elif isinstance(msg, StatsMsg):
                self._stats = msg.stats
                self._stats_at = time.monotonic()
            elif isinstance(msg, PongMsg):
                self._pong_at[msg.name] = time.monotonic()
            elif isinstance(msg, FlushedMsg):
                answer = self._flushes.get(msg.seq)
                if answer is not None and not answer.done():
                    answer.set_result(msg.dropped_tokens)
            else:
                logger.warning("ignoring unexpected %s", type(msg).__name__)
