"""FrontendManager: the API process's view of the server's other processes.

It owns the HF tokenizer (chat templates), sends each request to a tokenizer worker,
routes every ReplyChunk coming back to the request's asyncio queue, and keeps the latest
SchedulerStats for /metrics and /health.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import time
from typing import Any, AsyncIterator

from minisgl.errors import InvalidRequest, ServiceUnavailable
from minisgl.message.frontend import BatchReplyMsg, ErrorMsg, ReplyChunk, StatsMsg
from minisgl.message.tokenizer import AbortMsg, TokenizeMsg
from minisgl.sampling_params import SamplingParams
from minisgl.scheduler.types import SchedulerStats
from minisgl.server.endpoints import Endpoints
from minisgl.utils.zmq import AsyncPullQueue, PushQueue

logger = logging.getLogger(__name__)

DEFAULT_STUCK_TIMEOUT_S = 60.0


class _Failed:
    """Put on a request's queue when the server can no longer answer it."""

    def __init__(self, reason: str) -> None:
        self.reason = reason


def merge_chunks(a: ReplyChunk, b: ReplyChunk) -> ReplyChunk:
    """b following a (same choice) as one chunk."""
    def cat(x, y):
        return None if x is None and y is None else (x or []) + (y or [])

    return dataclasses.replace(
        b, text=a.text + b.text, token_ids=a.token_ids + b.token_ids,
        logprobs=cat(a.logprobs, b.logprobs), top_logprobs=cat(a.top_logprobs, b.top_logprobs),
        prompt_token_ids=a.prompt_token_ids if a.prompt_token_ids is not None else b.prompt_token_ids,
        prompt_logprobs=a.prompt_logprobs if a.prompt_logprobs is not None else b.prompt_logprobs,
        queue_time_s=a.queue_time_s if a.queue_time_s is not None else b.queue_time_s)


class FrontendManager:
    def __init__(
        self,
        endpoints: Endpoints,
        model_name: str,
        max_model_len: int,
        tokenizer: Any,
        stuck_timeout_s: float = DEFAULT_STUCK_TIMEOUT_S,
    ) -> None:
        self.endpoints = endpoints
        self.model_name = model_name
        self.max_model_len = max_model_len
        self.tokenizer = tokenizer
        self.stuck_timeout_s = stuck_timeout_s
        self.draining = False
        self.failure: str | None = None
        self._started = False
        self._uids = itertools.count()
        self._queues: dict[int, asyncio.Queue] = {}
        self._stats = SchedulerStats()
        self._stats_at = time.monotonic()
        self._inbox: AsyncPullQueue | None = None
        self._outboxes: dict[str, PushQueue] = {}
        self._receiver: asyncio.Task | None = None

    # --- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        """Bind the reply socket and start routing replies (call inside the serving loop)."""
        if self._started:
            return
        self._inbox = AsyncPullQueue(self.endpoints.frontend, bind=True)
        self._stats_at = time.monotonic()
        self._receiver = asyncio.get_running_loop().create_task(self._receive_loop(self._inbox))
        self._started = True

    async def stop(self) -> None:
        if not self._started:
            return
        self._started = False
        self._fail_all("the server is shutting down")
        if self._receiver is not None:
            self._receiver.cancel()
            await asyncio.gather(self._receiver, return_exceptions=True)
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
        queue: asyncio.Queue = asyncio.Queue()
        self._queues[uid] = queue
        outbox = self._outbox(self.endpoints.tokenizer_for(uid))
        try:
            outbox.put(TokenizeMsg(uid, prompt, params, time.time(), add_special_tokens))
        except (UnicodeEncodeError, TypeError, ValueError) as exc:  # e.g. a lone surrogate "\ud800"
            self._queues.pop(uid, None)
            raise InvalidRequest(f"the request cannot be encoded: {exc}", param="prompt") from exc
        remaining = params.n
        held = None  # an item taken while coalescing that belongs to the next yield
        try:
            while remaining:
                item, held = (held, None) if held is not None else (await queue.get(), None)
                if isinstance(item, ErrorMsg):
                    remaining = 0  # never registered downstream: nothing to abort
                    raise item.to_exception()
                if isinstance(item, _Failed):
                    remaining = 0
                    raise ServiceUnavailable(item.reason)
                # A consumer that fell behind (many streams, one event loop) gets the queued
                # tokens of a choice as one chunk: one SSE event instead of one per token.
                while not item.finished and not queue.empty():
                    nxt = queue.get_nowait()
                    if not isinstance(nxt, ReplyChunk) or nxt.index != item.index:
                        held = nxt
                        break
                    item = merge_chunks(item, nxt)
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
        silent = time.monotonic() - self._stats_at
        if silent > self.stuck_timeout_s:
            return False, f"no word from the scheduler for {silent:.0f}s"
        stats = self._stats
        stalled = time.time() - stats.last_step_time
        if stats.has_work and stats.last_step_time > 0 and stalled > self.stuck_timeout_s:
            return False, f"the scheduler has work but made no step for {stalled:.0f}s"
        return True, "ok"

    # --- internals ---------------------------------------------------------------------------
    def _outbox(self, endpoint: str) -> PushQueue:
        outbox = self._outboxes.get(endpoint)
        if outbox is None:
            outbox = self._outboxes[endpoint] = PushQueue(endpoint, bind=False)
        return outbox

    def _fail_all(self, reason: str) -> None:
        for queue in self._queues.values():
            queue.put_nowait(_Failed(reason))

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
                for chunk in msg.chunks:
                    queue = self._queues.get(chunk.uid)
                    if queue is not None:
                        queue.put_nowait(chunk)
            elif isinstance(msg, ErrorMsg):
                queue = self._queues.get(msg.uid)
                if queue is not None:
                    queue.put_nowait(msg)
            elif isinstance(msg, StatsMsg):
                self._stats = msg.stats
                self._stats_at = time.monotonic()
            else:
                logger.warning("ignoring unexpected %s", type(msg).__name__)
